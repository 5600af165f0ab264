//! Big-checkpoint benchmark (`make bench-big`, not part of `make test`; issue 18). A 1 GB f32
//! state dict (16 tensors 4096x4096, `--tensors N` to change), one-shot constant sparsity 0.8,
//! bitmask + zstd, through the real `prunectl` and `prune-server` (one worker, 2 threads), side
//! by side with a PyTorch script doing the same (load, exact-k masks via kthvalue, save_file)
//! followed by the `zstd -3 -T2` CLI. Prints:
//!
//! * first submit (validate, hash, upload, prune; `--wait`) and the time of one plain read of
//!   the file with sha256 (what hashing alone costs);
//! * a second submit of the same file (already uploaded: nothing sent), submit to SUCCEEDED;
//! * the worker's peak memory (its logged `VmHWM`) against largest tensor x 3 + 300 MB;
//! * artifact bytes against the PyTorch output + zstd -3 and against `zstd -3` of our own
//!   packed file (bitmask + zstd-3 of the same tensors);
//! * transfer rates on loopback: `prunectl upload` of a second file of the model's size (other
//!   values: nothing of it is on the server yet) and `prunectl download` of the artifact, as
//!   sent (`--raw`) and unpacked to a file, in MB/s (10^6 bytes); the same upload into a second
//!   server whose store is S3 (s3s-fs on loopback, `make setup` installs it).
//!
//! Needs `PRUNE_VENV` (PyTorch) and the `zstd` CLI. Temporary files (about 4 GB) live under
//! `--dir` (default: the system temp dir) and are removed at the end.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use prune_tests::{binary, write_f32_layers, xorshift, Server};
use sha2::{Digest, Sha256};

const SIDE: usize = 4096;

fn values(seed: u64, n: usize) -> Vec<f32> {
    xorshift(seed)
        .take(n)
        .map(|x| {
            // Roughly normal-looking weights: the sum of two uniforms.
            let a = (x >> 40) as f32 / (1u64 << 24) as f32;
            let b = (x & 0xff_ffff) as f32 / (1u64 << 24) as f32;
            (a + b - 1.0) * 0.05
        })
        .collect()
}

fn prunectl(addr: &str, args: &[&str]) -> (String, String) {
    let out =
        Command::new(binary("prunectl")).args(args).env("PRUNE_ADDR", addr).stdin(Stdio::null()).output().unwrap();
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(out.status.success(), "prunectl {args:?}: {stdout}\n{stderr}");
    (stdout, stderr)
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let out = f();
    (out, start.elapsed())
}

fn sha_read(path: &Path) -> Duration {
    timed(|| {
        let mut f = std::fs::File::open(path).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut sha = Sha256::new();
        loop {
            let n = f.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            sha.update(&buf[..n]);
        }
        sha.finalize()
    })
    .1
}

const PYTORCH: &str = r#"
import sys, torch
from safetensors.torch import load_file, save_file
torch.set_num_threads(2)
sd = load_file(sys.argv[1])
out = {}
for name, w in sd.items():
    n = w.numel()
    k = max(round(n * (1 - 0.8)), 1)
    flat = w.abs().flatten()
    # Exact k: the k largest |w| (topk breaks ties its own way; the values are tie-free here).
    keep = torch.zeros(n, dtype=torch.bool)
    keep[flat.kthvalue(n - k + 1).values <= flat] = True
    out[name] = (w * keep.view_as(w)).contiguous()
save_file(out, sys.argv[2])
"#;

fn main() {
    let mut tensors = 16;
    let mut base = std::env::temp_dir();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--tensors" => tensors = value.parse().expect("--tensors N"),
            "--dir" => base = PathBuf::from(value),
            _ => panic!("usage: prune-bench-big [--tensors 16] [--dir DIR]"),
        }
    }
    let dir = tempfile::tempdir_in(base).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server =
        runtime.block_on(Server::start(&dir.path().join("var"), &["--workers", "1", "--threads-per-job", "2"]));
    let addr = format!("http://{}", server.addr);
    let model = dir.path().join("model.safetensors");
    let model_bytes = write_f32_layers(&model, tensors, [SIDE, SIDE], |i| values(i as u64, SIDE * SIDE));
    let job = dir.path().join("job.toml");
    std::fs::write(
        &job,
        "[model]\nfile = \"model.safetensors\"\n[training]\nepochs = 0\n[pruning]\nschedule = { kind = \"constant_sparsity\", target_sparsity = 0.8 }\n[export]\ncompression = \"zstd\"\nsparse_format = \"bitmask\"\n",
    )
    .unwrap();
    let job_path = job.to_str().unwrap();
    println!("model: {tensors} f32 tensors {SIDE}x{SIDE}, {model_bytes} bytes; constant sparsity 0.8, bitmask + zstd");

    let read = sha_read(&model);
    let (_, first) = timed(|| prunectl(&addr, &["submit", job_path, "--wait"]));
    println!(
        "first submit (hash + upload + prune), --wait: {:.2} s; one sha256 read of the file: {:.2} s",
        first.as_secs_f64(),
        read.as_secs_f64()
    );
    let ((stdout, stderr), second) = timed(|| prunectl(&addr, &["submit", job_path, "--wait"]));
    assert!(stderr.contains("already on the server"), "{stderr}");
    let id = stdout.lines().next().unwrap().trim().to_string();
    println!("second submit (already uploaded) to SUCCEEDED: {:.2} s", second.as_secs_f64());

    let peak = server
        .log()
        .lines()
        .filter_map(|l| l.split("peak memory: VmHWM ").nth(1)?.split_whitespace().next()?.parse::<u64>().ok())
        .next_back()
        .expect("the worker logs its VmHWM");
    let bound = 3 * (SIDE * SIDE * 4) as u64 + 300_000_000;
    println!("worker VmHWM: {} MB (bound: largest tensor x 3 + 300 MB = {} MB)", peak / 1_000_000, bound / 1_000_000);

    let raw = dir.path().join("artifact.safetensors.zst");
    let (_, raw_time) = timed(|| prunectl(&addr, &["download", &id, "--raw", "-o", raw.to_str().unwrap()]));
    let artifact = std::fs::metadata(&raw).unwrap().len();
    let packed = dir.path().join("packed.safetensors");
    let (_, packed_time) = timed(|| prunectl(&addr, &["download", &id, "-o", packed.to_str().unwrap()]));
    let packed_bytes = std::fs::metadata(&packed).unwrap().len();
    let other = dir.path().join("other.safetensors");
    let other_bytes = write_f32_layers(&other, tensors, [SIDE, SIDE], |i| values(1000 + i as u64, SIDE * SIDE));
    let (_, upload_time) = timed(|| prunectl(&addr, &["upload", other.to_str().unwrap()]));
    let rate = |bytes: u64, t: Duration| bytes as f64 / 1e6 / t.as_secs_f64();
    println!(
        "upload (hash + send + store) {} MB: {:.2} s, {:.0} MB/s; download of the artifact as sent {} MB: {:.2} s, \
         {:.0} MB/s; unpacked to a file {} MB: {:.2} s, {:.0} MB/s",
        other_bytes / 1_000_000,
        upload_time.as_secs_f64(),
        rate(other_bytes, upload_time),
        artifact / 1_000_000,
        raw_time.as_secs_f64(),
        rate(artifact, raw_time),
        packed_bytes / 1_000_000,
        packed_time.as_secs_f64(),
        rate(packed_bytes, packed_time)
    );
    // The same file into a server on S3 (s3s-fs on loopback, its objects on the same disk).
    let s3_root = dir.path().join("s3");
    let s3 = prune_store::s3s::S3sServer::start(&s3_root, "bench");
    let s3_server = runtime.block_on(Server::start_with_env(
        &binary("prune-server"),
        &dir.path().join("var-s3"),
        &["--store", &s3.url("prune")],
        &s3.env(),
    ));
    let (_, s3_time) = timed(|| prunectl(&format!("http://{}", s3_server.addr), &["upload", other.to_str().unwrap()]));
    println!(
        "upload to a server on S3 (s3s-fs on loopback, same disk) {} MB: {:.2} s, {:.0} MB/s",
        other_bytes / 1_000_000,
        s3_time.as_secs_f64(),
        rate(other_bytes, s3_time)
    );
    drop(s3_server);
    drop(s3);
    std::fs::remove_dir_all(&s3_root).unwrap();
    std::fs::remove_file(&other).unwrap();
    run_zstd(&packed);
    let packed_zstd3 = std::fs::metadata(packed.with_extension("safetensors.zst")).unwrap().len();

    let venv = std::env::var("PRUNE_VENV").expect("PRUNE_VENV (eval \"$(scripts/libtorch-env.sh)\")");
    let dense = dir.path().join("torch.safetensors");
    let (status, torch_time) = timed(|| {
        Command::new(Path::new(&venv).join("bin/python"))
            .args(["-c", PYTORCH, model.to_str().unwrap(), dense.to_str().unwrap()])
            .status()
            .unwrap()
    });
    assert!(status.success());
    let (_, zstd_time) = timed(|| run_zstd(&dense));
    let torch_zst = std::fs::metadata(dense.with_extension("safetensors.zst")).unwrap().len();
    let reference = torch_time + zstd_time;
    println!(
        "PyTorch script {:.2} s + zstd -3 -T2 {:.2} s = {:.2} s, {} MB",
        torch_time.as_secs_f64(),
        zstd_time.as_secs_f64(),
        reference.as_secs_f64(),
        torch_zst / 1_000_000
    );
    println!(
        "prune: {:.2} s ({:.2}x the PyTorch script + zstd), artifact {} MB; bitmask + zstd -3 CLI of the same tensors: {} MB",
        second.as_secs_f64(),
        second.as_secs_f64() / reference.as_secs_f64(),
        artifact / 1_000_000,
        packed_zstd3 / 1_000_000
    );
    drop(server);
}

fn run_zstd(path: &Path) {
    let status = Command::new("zstd").args(["-3", "-T2", "-q", "-f"]).arg(path).status().expect("the zstd CLI");
    assert!(status.success());
}
