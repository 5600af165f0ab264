//! prune-server on an S3 file store (`--store s3://bucket/prefix`): s3s-fs on loopback, a real
//! S3 server installed once by `make setup` (scripts/setup-s3s.sh). Blobs, checkpoints and
//! artifacts go to the bucket; workers fetch their inputs to scratch and publish with `put`.

use std::path::Path;
use std::time::Duration;

use prune_proto as pb;
use prune_store::s3s::S3sServer;
use prune_tests::*;
use tempfile::TempDir;

const JOB_TIMEOUT: Duration = Duration::from_secs(300);
const BUCKET: &str = "prune-e2e";
const PREFIX: &str = "cluster/a";

async fn create(client: &mut Client, spec: pb::JobSpec) -> pb::Job {
    let source = pb::create_job_request::Source::Spec(spec);
    client
        .create_job(pb::CreateJobRequest { source: Some(source), ..Default::default() })
        .await
        .expect("CreateJob")
        .into_inner()
}

async fn start_on_s3(tmp: &TempDir, s3: &S3sServer) -> Server {
    binary("prune-worker");
    let url = s3.url(PREFIX);
    Server::start_with_env(&binary("prune-server"), &tmp.path().join("data"), &["--store", &url], &s3.env()).await
}

/// Files under `dir`, recursively (s3s-fs keeps each object as a file).
fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn one_shot_job_on_s3_matches_the_file_store() {
    let tmp = TempDir::new().unwrap();
    let s3_root = tmp.path().join("s3");
    let s3 = S3sServer::start(&s3_root, BUCKET);
    let server = start_on_s3(&tmp, &s3).await;
    let mut client = server.client().await;

    let state_dict = mlp_state_dict();
    let blob = upload(&mut client, &state_dict).await.expect("upload");
    let in_bucket = s3_root.join(BUCKET).join(PREFIX);
    let hex = blob.strip_prefix("sha256:").unwrap();
    assert_eq!(std::fs::read(in_bucket.join("blobs").join(hex)).unwrap(), state_dict, "the blob is in the bucket");
    let stat = client.stat_blob(pb::StatBlobRequest { id: blob.clone() }).await.unwrap().into_inner();
    assert_eq!(stat.size, state_dict.len() as u64);

    let job = create(&mut client, one_shot_spec(&blob)).await;
    let (job, _) = wait_terminal(&mut client, &job.id, JOB_TIMEOUT).await;
    assert_eq!(state(&job), pb::JobState::Succeeded, "{}\nserver log:\n{}", job.error, server.log());
    let (info, data) = download(&mut client, &job.id, "", 0).await.expect("download");
    assert_eq!(info.sha256, sha256_hex(&data));
    let artifacts = files(&in_bucket.join("artifacts").join(&job.id));
    assert!(!artifacts.is_empty(), "no artifact in the bucket: {:?}", files(&in_bucket));
    assert!(files(&server.data_dir.join("artifacts")).is_empty(), "artifacts written to the data dir");
    let staged = files(&server.data_dir.join("scratch").join("artifacts"));
    assert!(staged.is_empty(), "the worker's staged artifacts outlive it: {staged:?}");
    // A resumed download reads from an offset.
    let (_, tail) = download(&mut client, &job.id, "", 100).await.expect("download from 100");
    assert_eq!(tail, data[100..]);

    // The same job on the default (file) store: the same artifact, byte for byte.
    let file_server = Server::start(&tmp.path().join("file-data"), &[]).await;
    let mut file_client = file_server.client().await;
    let file_blob = upload(&mut file_client, &state_dict).await.expect("upload");
    let reference = create(&mut file_client, one_shot_spec(&file_blob)).await;
    assert_same_artifact_as(&mut file_client, &reference.id, &(info, data), JOB_TIMEOUT).await;
}

#[tokio::test]
async fn training_job_checkpoints_to_s3() {
    let tmp = TempDir::new().unwrap();
    let s3_root = tmp.path().join("s3");
    let s3 = S3sServer::start(&s3_root, BUCKET);
    let server = start_on_s3(&tmp, &s3).await;
    let mut client = server.client().await;

    let job = create_toml(&mut client, &digits_mlp("s3-digits", 32, 3, 10)).await.expect("CreateJob");
    let checkpoints = s3_root.join(BUCKET).join(PREFIX).join("checkpoints").join(&job.id);
    let mut seen = Vec::new();
    let (_, watched) = watch_until(&mut client, &job.id, JOB_TIMEOUT, |job, _| {
        for f in files(&checkpoints) {
            if !seen.contains(&f) {
                seen.push(f);
            }
        }
        is_terminal(job)
    })
    .await;
    let (job, _) = wait_terminal(&mut client, &job.id, JOB_TIMEOUT).await;
    assert_eq!(state(&job), pb::JobState::Succeeded, "{}\nserver log:\n{}", job.error, server.log());
    assert!(!watched.progress.is_empty());
    assert!(!seen.is_empty(), "no checkpoint seen in the bucket while the job ran");
    // Removed from the bucket once the job SUCCEEDED (delete_all over S3).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !files(&checkpoints).is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(files(&checkpoints).is_empty(), "checkpoints left: {:?}", files(&checkpoints));
    assert!(files(&server.data_dir.join("checkpoints")).is_empty(), "checkpoints written to the data dir");
    let (info, data) = download(&mut client, &job.id, "", 0).await.expect("download");
    assert_eq!(info.sha256, sha256_hex(&data));
}

#[tokio::test]
async fn an_unreachable_store_stops_the_server_with_one_line() {
    let tmp = TempDir::new().unwrap();
    let s3 = S3sServer::start(&tmp.path().join("s3"), BUCKET);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut env = s3.env();
    env.push(("AWS_ENDPOINT".into(), format!("http://127.0.0.1:{port}")));
    let url = s3.url(PREFIX);
    let out = tokio::process::Command::new(binary("prune-server"))
        .args(["--listen", "127.0.0.1:0", "--store", &url, "--data-dir"])
        .arg(tmp.path().join("data"))
        .envs(env)
        .env("RUST_LOG", "warn")
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out).await.expect("it stops").unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "it never listened: {}", String::from_utf8_lossy(&out.stdout));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<_> = stderr.lines().filter(|l| l.starts_with("prune-server:")).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains(&url), "{stderr}");
    assert!(!stderr.contains(prune_store::s3s::SECRET_KEY), "{stderr}");
}
