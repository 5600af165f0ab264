//! Fault tests: "nothing lost". The server killed with SIGKILL in the middle of a download, a
//! worker killed when no retry is allowed, a corrupted newest checkpoint, a disk that fills up
//! while a checkpoint is written. (A kill -9 mid-upload is in `upload_resume.rs`; SQLite busy
//! under concurrent writers in `server/tests/sqlite_busy.rs`; a killed worker's retry, a kill -9
//! restart mid-job, SIGTERM and download offsets in `service_e2e.rs`.)
//!
//! Build the binaries first: `cargo build -p prune-server`. Nothing here sleeps to
//! synchronise: every wait polls with a deadline. Checkpoint records are read from the
//! server's database through a read-only SQLite connection.

use std::path::Path;
use std::time::Duration;

use prune_proto as pb;
use prune_tests::*;
use tempfile::TempDir;
use tokio::time::Instant;

const JOB_TIMEOUT: Duration = Duration::from_secs(300);

fn one_shot_with(blob: &str, compression: &str) -> pb::JobSpec {
    let export = pb::ExportSpec { compression: Some(compression.into()), ..Default::default() };
    pb::JobSpec { export: Some(export), ..one_shot_spec(blob) }
}

async fn create(client: &mut Client, spec: pb::JobSpec) -> pb::Job {
    let source = pb::create_job_request::Source::Spec(spec);
    client
        .create_job(pb::CreateJobRequest { source: Some(source), ..Default::default() })
        .await
        .expect("CreateJob")
        .into_inner()
}

async fn get(client: &mut Client, id: &str) -> pb::Job {
    client.get_job(pb::GetJobRequest { id: id.into() }).await.expect("GetJob").into_inner()
}

/// Server starts go one at a time, so that the one test that sets an environment variable for
/// its server (the checkpoint test hook) cannot leak it into another test's server.
static STARTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn start(dir: &Path, args: &[&str]) -> Server {
    let _one_at_a_time = STARTS.lock().await;
    Server::start(dir, args).await
}

/// Starts a server whose environment (and so its workers') has `name=value`.
async fn start_with_env(dir: &Path, args: &[&str], name: &str, value: &str) -> Server {
    let _one_at_a_time = STARTS.lock().await;
    std::env::set_var(name, value);
    let server = Server::start(dir, args).await;
    std::env::remove_var(name);
    server
}

/// Restarts on the address the previous server listened on (clients keep their address).
async fn restart(dir: &Path, addr: &str) -> Server {
    let server = start(dir, &["--listen", addr]).await;
    assert_eq!(server.addr, addr);
    server
}

/// Deterministic pseudo-random bytes (xorshift64*): incompressible, like a real model file.
fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Files in `dir` (not directories), with their sizes.
fn files_in(dir: &Path) -> Vec<(String, u64)> {
    let mut files: Vec<(String, u64)> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.metadata().map(|m| m.len()).unwrap_or(0)))
        .collect();
    files.sort();
    files
}

/// Pids of the live children of `parent`, from `/proc/<pid>/stat`.
fn children_of(parent: i32) -> Vec<i32> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // After the parenthesised command name: state, then ppid.
        let mut fields = stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace()).into_iter().flatten();
        let (state, ppid) = (fields.next(), fields.next().and_then(|p| p.parse::<i32>().ok()));
        if ppid == Some(parent) && state != Some("Z") {
            children.push(pid);
        }
    }
    children
}

/// A checkpoint as the server recorded it.
#[derive(Debug, Clone, PartialEq)]
struct Recorded {
    step: i64,
    /// Relative to the data directory.
    path: String,
    sha256: String,
}

/// The job's checkpoint records, newest first, read through a read-only connection.
async fn recorded_checkpoints(data_dir: &Path, job_id: &str) -> Vec<Recorded> {
    use sqlx::{ConnectOptions, Row};
    let mut db = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(data_dir.join("prune.db"))
        .read_only(true)
        .connect()
        .await
        .expect("opening the server's database read-only");
    let rows = sqlx::query("SELECT step, path, sha256 FROM checkpoints WHERE job_id = $1 ORDER BY step DESC")
        .bind(job_id)
        .fetch_all(&mut db)
        .await
        .expect("reading the checkpoint records");
    rows.iter().map(|r| Recorded { step: r.get("step"), path: r.get("path"), sha256: r.get("sha256") }).collect()
}

/// The value of `name=` in a log line (`tracing`'s plain format).
fn log_field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|w| w.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
}

fn sha256_file(path: &Path) -> String {
    prune_core::files::sha256_file(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A safetensors state dict of one 2048x1024 f32 matrix and a bias: an 8 MiB artifact.
fn large_state_dict() -> Vec<u8> {
    use safetensors::tensor::{Dtype, TensorView};
    let floats = |n: usize, seed: u64| -> Vec<u8> {
        random_bytes(n * 4, seed)
            .chunks_exact(4)
            .flat_map(|b| {
                ((u32::from_le_bytes(b.try_into().unwrap()) >> 8) as f32 / (1 << 24) as f32 - 0.5).to_le_bytes()
            })
            .collect()
    };
    let (weight, bias) = (floats(2048 * 1024, 2), floats(2048, 3));
    let views = [
        ("0.weight", TensorView::new(Dtype::F32, vec![2048, 1024], &weight).unwrap()),
        ("0.bias", TensorView::new(Dtype::F32, vec![2048], &bias).unwrap()),
    ];
    safetensors::serialize(views, None).expect("serialising the state dict")
}

/// 2. SIGKILL of the server while an artifact streams out: the real client, given the `.part`
/// file the broken stream left, retries while the server is down, resumes with `read_offset`
/// against the restarted server, and ends with the very bytes of a full download.
#[tokio::test]
async fn server_killed_mid_download_the_client_resumes_to_identical_bytes() {
    use pb::download_artifact_response::Part;
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("data");
    let server = start(&dir, &[]).await;
    let addr = server.addr.clone();
    let mut client = server.client().await;
    let blob = upload(&mut client, &large_state_dict()).await.expect("upload");
    let job = create(&mut client, one_shot_with(&blob, "none")).await;
    let (job, _) = wait_terminal(&mut client, &job.id, JOB_TIMEOUT).await;
    assert_eq!(state(&job), pb::JobState::Succeeded, "{}", job.error);
    let cli = prune_client::Client::connect(&addr, None).await.expect("prune_client connect");

    // Take the first MiB as the client would (appended to PATH.part), then kill the server
    // with the stream still open.
    let out = tmp.path().join("pruned.safetensors");
    let part = prune_client::download::part_path(&out);
    let request = pb::DownloadArtifactRequest {
        job_id: job.id.clone(),
        format: "safetensors".into(),
        read_offset: 0,
        ..Default::default()
    };
    let mut stream = client.download_artifact(request).await.expect("DownloadArtifact").into_inner();
    let Some(pb::DownloadArtifactResponse { part: Some(Part::Info(info)) }) = stream.message().await.unwrap() else {
        panic!("the download did not start with the info");
    };
    let mut got = Vec::new();
    while got.len() < 1 << 20 {
        match stream.message().await.expect("download stream") {
            Some(pb::DownloadArtifactResponse { part: Some(Part::Data(data)) }) => got.extend_from_slice(&data),
            other => panic!("the download ended after {} bytes: {other:?}", got.len()),
        }
    }
    assert!((got.len() as u64) < info.size / 2, "a {} byte artifact", info.size);
    std::fs::write(&part, &got).unwrap();
    server.kill9().await;
    // The stream breaks before the artifact's end.
    let mut rest = 0;
    let broken = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match stream.message().await {
                Ok(Some(m)) => {
                    rest += match m.part {
                        Some(Part::Data(d)) => d.len(),
                        _ => 0,
                    }
                }
                Ok(None) => return false,
                Err(_) => return true,
            }
        }
    })
    .await
    .expect("the download stream outlived the server");
    assert!(broken && (got.len() + rest) < info.size as usize, "the stream completed despite the kill");

    // The client retries while the server is down, then resumes from the .part file's length.
    let resuming = tokio::spawn({
        let (job_id, out) = (job.id.clone(), out.clone());
        async move { cli.download_to(&job_id, &out, Some("safetensors"), true).await }
    });
    let server = restart(&dir, &addr).await;
    let outcome = tokio::time::timeout(Duration::from_secs(120), resuming)
        .await
        .expect("the client's download did not finish after the restart")
        .unwrap()
        .expect("the resumed download");
    assert_eq!(outcome.resumed_from, got.len() as u64, "did not resume from the .part file");
    assert_eq!(outcome.artifact.sha256, info.sha256);
    assert!(!part.exists());

    let mut client = server.client().await;
    let (full_info, full) = download(&mut client, &job.id, "safetensors", 0).await.expect("a full download");
    assert_eq!(full_info.sha256, info.sha256);
    assert_eq!(sha256_hex(&full), info.sha256);
    assert_eq!(sha256_file(&out), info.sha256, "the resumed download differs from a full one");
    assert_eq!(std::fs::metadata(&out).unwrap().len(), info.size);
}

/// 3. A worker killed with SIGKILL when `--max-attempts 1` allows no retry: its job ends FAILED
/// with a one-line reason naming the crash, while the server and the other running job go on.
#[tokio::test]
async fn worker_killed_without_retries_fails_its_job_only() {
    let tmp = TempDir::new().unwrap();
    let server = start(&tmp.path().join("data"), &["--workers", "2", "--max-attempts", "1"]).await;
    let mut client = server.client().await;
    let victim = client_create_toml(&mut client, &digits_mlp("victim", 512, 60, 50)).await;
    let survivor = client_create_toml(&mut client, &digits_mlp("survivor", 512, 10, 50)).await;

    // Both running, the victim past its first steps.
    watch_until(&mut client, &victim.id, JOB_TIMEOUT, |job, progress| {
        assert!(!is_terminal(job), "{job:?}");
        progress.is_some_and(|p| p.step > 0)
    })
    .await;
    let deadline = Instant::now() + JOB_TIMEOUT;
    let (victim_pid, survivor_pid) = loop {
        let (v, s) = (get(&mut client, &victim.id).await, get(&mut client, &survivor.id).await);
        assert!(!is_terminal(&s), "the survivor ended before the kill: {s:?}");
        if state(&s) == pb::JobState::Running && v.worker_pid > 0 && s.worker_pid > 0 {
            break (v.worker_pid, s.worker_pid);
        }
        assert!(Instant::now() < deadline, "never both running");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // The workers are the server's children.
    let children = children_of(server.pid());
    assert!(children.contains(&victim_pid) && children.contains(&survivor_pid), "{children:?}");
    signal(victim_pid, libc::SIGKILL);

    let (failed, _) = wait_terminal(&mut client, &victim.id, JOB_TIMEOUT).await;
    assert_eq!(state(&failed), pb::JobState::Failed, "{failed:?}");
    assert_eq!(failed.attempts, 1);
    assert!(!failed.error.contains('\n'), "not one line: {:?}", failed.error);
    assert!(failed.error.contains("signal 9") && failed.error.contains("SIGKILL"), "{:?}", failed.error);
    assert_eq!(failed.worker_pid, 0);

    // The survivor was not disturbed: same worker, still progressing, and it succeeds.
    let at_kill = get(&mut client, &survivor.id).await;
    assert_eq!(at_kill.worker_pid, survivor_pid);
    watch_until(&mut client, &survivor.id, JOB_TIMEOUT, |job, progress| {
        is_terminal(job) || progress.is_some_and(|p| p.step > at_kill.step)
    })
    .await;
    let (done, _) = wait_terminal(&mut client, &survivor.id, JOB_TIMEOUT).await;
    assert_eq!(state(&done), pb::JobState::Succeeded, "{}", done.error);
    assert_eq!(done.attempts, 1);
    assert!(process_alive(server.pid()));
    let listed = client.list_jobs(pb::ListJobsRequest::default()).await.unwrap().into_inner().jobs;
    assert_eq!(listed.len(), 2);
}

async fn client_create_toml(client: &mut Client, toml: &str) -> pb::Job {
    create_toml(client, toml).await.expect("CreateJob")
}

/// 4. The newest checkpoint corrupted while the server is down: the next start skips it (its
/// sha256 no longer matches the record), resumes from the one before, and the job ends with
/// the artifact of an uninterrupted run.
#[tokio::test]
async fn corrupted_newest_checkpoint_resumes_from_the_previous_one() {
    const EVERY: i64 = 10;
    let tmp = TempDir::new().unwrap();
    let spec = digits_mlp("corrupt", 512, 8, EVERY);
    // The reference: the same job, uninterrupted, alongside.
    let reference = start(&tmp.path().join("reference"), &[]).await;
    let mut reference_client = reference.client().await;
    let reference_job = client_create_toml(&mut reference_client, &spec).await;

    let dir = tmp.path().join("data");
    let server = start(&dir, &[]).await;
    let mut client = server.client().await;
    let created = client_create_toml(&mut client, &spec).await;
    watch_until(&mut client, &created.id, JOB_TIMEOUT, |job, progress| {
        assert!(!is_terminal(job), "the job ended before it could be interrupted: {job:?}");
        progress.is_some_and(|p| p.step >= 3 * EVERY + 5)
    })
    .await;
    server.kill9().await;

    let recorded = recorded_checkpoints(&dir, &created.id).await;
    assert!(recorded.len() >= 2, "fewer than two checkpoints recorded: {recorded:?}");
    let (newest, previous) = (&recorded[0], &recorded[1]);
    let newest_file = dir.join(&newest.path);
    assert_eq!(sha256_file(&newest_file), newest.sha256);
    assert_eq!(sha256_file(&dir.join(&previous.path)), previous.sha256);
    // Torn, as by a crash or a bad disk.
    let bytes = std::fs::read(&newest_file).unwrap();
    std::fs::write(&newest_file, &bytes[..bytes.len() / 2]).unwrap();

    let server = start(&dir, &[]).await;
    let mut client = server.client().await;
    let (job, _) = wait_terminal(&mut client, &created.id, JOB_TIMEOUT).await;
    assert_eq!(state(&job), pb::JobState::Succeeded, "{}", job.error);
    assert_eq!(job.attempts, 2);
    let log = server.log();
    let skipped = log
        .lines()
        .filter(|l| l.contains("checkpoint sha256 mismatch"))
        .filter_map(|l| log_field(l, "step"))
        .collect::<Vec<_>>();
    assert_eq!(skipped, [newest.step.to_string()], "the torn checkpoint was not (only) skipped");
    let resumed = log
        .lines()
        .filter(|l| l.contains("starting attempt from a checkpoint"))
        .filter_map(|l| log_field(l, "step"))
        .collect::<Vec<_>>();
    assert_eq!(resumed, [previous.step.to_string()], "did not resume from the previous checkpoint");

    let artifact = download(&mut client, &job.id, "", 0).await.unwrap();
    assert_same_artifact_as(&mut reference_client, &reference_job.id, &artifact, JOB_TIMEOUT).await;

    // A SUCCEEDED job's checkpoints are removed (its artifact is what remains).
    let checkpoints = dir.join("checkpoints").join(&job.id);
    let deadline = Instant::now() + Duration::from_secs(30);
    while checkpoints.exists() {
        assert!(Instant::now() < deadline, "{} still there after the job succeeded", checkpoints.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// 5. The disk fills up while a checkpoint is written (the engine's test hook fails the second
/// checkpoint write with ENOSPC after writing half the temporary file): the job fails cleanly
/// with a one-line reason, no partial file is left as a checkpoint, the previous checkpoint
/// still verifies against its record, and the server goes on to run another job.
#[tokio::test]
async fn disk_full_while_checkpointing_fails_the_job_cleanly() {
    const EVERY: i64 = 20;
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("data");
    let server = start_with_env(&dir, &[], "PRUNE_TEST_FAIL_CHECKPOINT_WRITE", "2").await;
    let mut client = server.client().await;
    let created = client_create_toml(&mut client, &digits_mlp("disk-full", 32, 2, EVERY)).await;
    let (job, _) = wait_terminal(&mut client, &created.id, JOB_TIMEOUT).await;
    assert_eq!(state(&job), pb::JobState::Failed, "{job:?}");
    assert!(!job.error.contains('\n'), "not one line: {:?}", job.error);
    assert!(
        job.error.contains("No space left on device") && job.error.contains("checkpoint"),
        "the reason does not say the disk is full: {:?}",
        job.error
    );
    eprintln!("disk full: {} attempt(s), error: {}", job.attempts, job.error);

    // Only the first checkpoint is there, whole and as recorded; no temporary file is left.
    // Each attempt writes under its own prefix; this job had one.
    assert_eq!(job.attempts, 1);
    let checkpoint_dir = dir.join("checkpoints").join(&created.id).join("attempt-1");
    let files = files_in(&checkpoint_dir);
    assert_eq!(
        files.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        [format!("step-{EVERY:010}.ckpt")],
        "{files:?}"
    );
    let recorded = recorded_checkpoints(&dir, &created.id).await;
    assert_eq!(recorded.iter().map(|r| r.step).collect::<Vec<_>>(), [EVERY], "{recorded:?}");
    assert_eq!(sha256_file(&dir.join(&recorded[0].path)), recorded[0].sha256, "the previous checkpoint is damaged");

    // The server carries on: another job (one-shot, so no checkpoint write) succeeds.
    let blob = upload(&mut client, &mlp_state_dict()).await.expect("upload");
    let next = create(&mut client, one_shot_with(&blob, "zstd")).await;
    let (next, _) = wait_terminal(&mut client, &next.id, JOB_TIMEOUT).await;
    assert_eq!(state(&next), pb::JobState::Succeeded, "{}", next.error);
    assert!(process_alive(server.pid()));
}
