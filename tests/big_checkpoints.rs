//! Big checkpoints end to end (issue 18): a one-shot state dict much larger than the memory
//! bound the worker is held to is pruned a tensor at a time, by the real `prunectl` and
//! `prune-server` binaries; the worker's own peak memory (`VmHWM`, which it logs) stays under
//! `largest tensor x 3 + 300 MB`, the masks are exactly core's in-memory masks, and a second
//! submit of the same file sends nothing.

use std::path::Path;
use std::time::Duration;

use prune_core::bitmask::read_safetensors;
use prune_core::mask;
use prune_tests::{prunectl_at, write_f32_layers, xorshift, PrunectlRun, Server};

const CALL_TIMEOUT: Duration = Duration::from_secs(300);
const ROWS: usize = 2048;
const COLS: usize = 4608;
const TENSORS: usize = 8;

/// Deterministic weights with ties: 4096 distinct magnitudes, both signs.
fn values(seed: u64) -> Vec<f32> {
    xorshift(seed).take(ROWS * COLS).map(|x| ((x >> 40) % 8192) as f32 / 4096.0 - 1.0).collect()
}

async fn prunectl(addr: &str, args: &[&str]) -> PrunectlRun {
    let run = prunectl_at(addr, args, CALL_TIMEOUT).await;
    assert!(run.ok(), "prunectl {args:?} failed:\n{}\n{}", run.stdout, run.stderr);
    run
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The `VmHWM` figures the server's workers logged, in order.
fn worker_peaks(log: &str) -> Vec<u64> {
    log.lines()
        .filter_map(|l| l.split("peak memory: VmHWM ").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_checkpoint_bigger_than_the_memory_bound_is_pruned_a_tensor_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("var"), &["--workers", "1", "--threads-per-job", "2"]).await;
    let addr = format!("http://{}", server.addr);
    let model = dir.path().join("model.safetensors");
    let model_bytes = write_f32_layers(&model, TENSORS, [ROWS, COLS], |i| values(i as u64));
    let largest = (ROWS * COLS * 4) as u64;
    let bound = 3 * largest + 300_000_000;
    // Twice what three of its tensors take: a path that loads it whole cannot stay in bound.
    assert!(model_bytes > 2 * 3 * largest, "the checkpoint must be big enough to matter");

    let job_file = dir.path().join("job.toml");
    std::fs::write(
        &job_file,
        "[model]\nfile = \"model.safetensors\"\n[training]\nepochs = 0\n[pruning]\nschedule = { kind = \"constant_sparsity\", target_sparsity = 0.8 }\n[export]\ncompression = \"zstd\"\nsparse_format = \"bitmask\"\n",
    )
    .unwrap();
    let first = prunectl(&addr, &["submit", s(&job_file), "--wait"]).await;
    let id = first.stdout.lines().next().unwrap().trim().to_string();
    assert!(first.stdout.contains("SUCCEEDED"), "{}", first.stdout);
    assert!(first.stderr.contains("uploaded"), "{}", first.stderr);

    let peaks = worker_peaks(&server.log());
    assert_eq!(peaks.len(), 1, "one worker logged its peak memory:\n{}", server.log());
    assert!(peaks[0] < bound, "worker VmHWM {} bytes over largest tensor x 3 + 300 MB = {bound}", peaks[0]);
    eprintln!("model {model_bytes} bytes, worker VmHWM {} bytes, bound {bound}", peaks[0]);

    // The artifact's weights are exactly core's in-memory exact-k masks applied to the input.
    let packed = dir.path().join("packed.safetensors");
    prunectl(&addr, &["download", &id, "-o", s(&packed)]).await;
    let dense = dir.path().join("dense.safetensors");
    prunectl(&addr, &["unpack", s(&packed), "-o", s(&dense)]).await;
    let (tensors, _) = read_safetensors(&std::fs::read(&dense).unwrap()).unwrap();
    assert_eq!(tensors.len(), TENSORS);
    for i in [0, TENSORS - 1] {
        let original = values(i as u64);
        let want = mask::element_mask(&original, 0.8);
        let got = tensors.iter().find(|t| t.name == format!("layers.{i}.weight")).unwrap();
        let kept = got.data.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap()));
        for (j, ((g, w), m)) in kept.zip(&original).zip(&want).enumerate() {
            let expected = if *m == 1.0 { *w } else { 0.0 };
            assert!(g == expected, "layers.{i}.weight[{j}]: {g}, want {expected}");
        }
        assert_eq!(want.iter().filter(|&&m| m == 1.0).count(), mask::keep_count(ROWS * COLS, 0.8));
    }

    // The same checkpoint again: nothing is uploaded a second time.
    let again = prunectl(&addr, &["submit", s(&job_file), "--wait"]).await;
    assert!(again.stderr.contains("already on the server"), "{}", again.stderr);
    assert!(again.stdout.contains("SUCCEEDED"), "{}", again.stdout);
    drop(server);
}

/// A half-precision tensor whose f32 copy and f32 mask would each be twice its size: 5x it
/// would break `largest x 3 + 300 MB` (at 168 MB, 840 MB against 804 MB); element-wise masks
/// are decided a chunk at a time in place, so the worker stays far below.
#[tokio::test(flavor = "multi_thread")]
async fn a_big_bf16_tensor_is_masked_in_place_within_the_bound() {
    use prune_core::tensorstream::{header_bytes, Entry};
    use std::io::Write;
    const SHAPE: [usize; 2] = [8192, 10240];
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("var"), &["--workers", "1", "--threads-per-job", "2"]).await;
    let addr = format!("http://{}", server.addr);
    let model = dir.path().join("model.safetensors");
    let numel = SHAPE[0] * SHAPE[1];
    let entry = Entry {
        name: "embed.weight".into(),
        dtype: safetensors::Dtype::BF16,
        shape: SHAPE.to_vec(),
        len: numel as u64 * 2,
    };
    {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&model).unwrap());
        out.write_all(&header_bytes(&[entry], None).unwrap()).unwrap();
        // bf16 of values on a 1/4096 grid: many ties.
        for x in xorshift(7).take(numel) {
            let v = ((x >> 40) % 8192) as f32 / 4096.0 - 1.0;
            out.write_all(&((v.to_bits() >> 16) as u16).to_le_bytes()).unwrap();
        }
        out.flush().unwrap();
    }
    let largest = numel as u64 * 2;
    let bound = 3 * largest + 300_000_000;

    let job_file = dir.path().join("job.toml");
    std::fs::write(
        &job_file,
        "[model]\nfile = \"model.safetensors\"\n[training]\nepochs = 0\n[pruning]\nschedule = { kind = \"constant_sparsity\", target_sparsity = 0.8 }\n[export]\ncompression = \"zstd\"\nsparse_format = \"bitmask\"\n",
    )
    .unwrap();
    let run = prunectl(&addr, &["submit", s(&job_file), "--wait"]).await;
    assert!(run.stdout.contains("SUCCEEDED"), "{}", run.stdout);
    let peaks = worker_peaks(&server.log());
    assert_eq!(peaks.len(), 1, "one worker logged its peak memory:\n{}", server.log());
    assert!(peaks[0] < bound, "worker VmHWM {} bytes over largest tensor x 3 + 300 MB = {bound}", peaks[0]);
    eprintln!("bf16 tensor {largest} bytes, worker VmHWM {} bytes, bound {bound}", peaks[0]);
    let report = prunectl(&addr, &["report", run.stdout.lines().next().unwrap().trim(), "--json"]).await.json();
    assert_eq!(report["tensors"][0]["nonzero"].as_u64().unwrap(), mask::keep_count(numel, 0.8) as u64);
}
