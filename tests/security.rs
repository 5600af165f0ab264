//! Access and limits against the real server: bearer tokens name tenants, a tenant sees nothing
//! of another's (its ids answer NOT_FOUND exactly like ids that do not exist), TLS with rustls,
//! no open server on a non-loopback address, and the size and queue limits.
//! Build the binaries first: `cargo build -p prune-server -p prune-client`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use prune_client::{Client as LibClient, ClientError, ConnectOptions};
use prune_proto as pb;
use prune_proto::pruning_service_client::PruningServiceClient;
use prune_tests::*;
use tokio_stream::StreamExt;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

const JOB_TIMEOUT: Duration = Duration::from_secs(300);
const ALICE: &str = "alice-token-0123456789abcdef";
const BOB: &str = "bob-token-0123456789abcdef";
const TOKENS: &str =
    "# test tenants\nalice-token-0123456789abcdef alice\nbob-token-0123456789abcdef   bob # a comment\n";

/// Adds `authorization: Bearer <token>` (or whatever header value a case needs).
#[derive(Clone)]
struct Auth(Option<String>);

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.parse().unwrap());
        }
        Ok(request)
    }
}

type Rpc = PruningServiceClient<InterceptedService<Channel, Auth>>;

async fn rpc(server: &Server, header: Option<&str>) -> Rpc {
    PruningServiceClient::with_interceptor(server.channel().await, Auth(header.map(str::to_string)))
}

async fn as_tenant(server: &Server, token: &str) -> Rpc {
    rpc(server, Some(&format!("Bearer {token}"))).await
}

fn tokens_file(dir: &Path) -> PathBuf {
    let path = dir.join("tokens");
    std::fs::write(&path, TOKENS).unwrap();
    path
}

fn certs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("certs")
}

async fn upload(client: &mut Rpc, data: &[u8]) -> Result<String, Status> {
    use pb::upload_blob_request::Part;
    let mut messages = vec![pb::UploadBlobRequest {
        part: Some(Part::Header(pb::BlobHeader { size: data.len() as u64, sha256: sha256_hex(data), offset: 0 })),
    }];
    messages.extend(data.chunks(60 * 1024).map(|c| pb::UploadBlobRequest { part: Some(Part::Data(c.to_vec())) }));
    Ok(client.upload_blob(tokio_stream::iter(messages)).await?.into_inner().id)
}

async fn create(client: &mut Rpc, toml: String) -> Result<pb::Job, Status> {
    let source = pb::create_job_request::Source::SpecToml(toml);
    Ok(client.create_job(pb::CreateJobRequest { source: Some(source), ..Default::default() }).await?.into_inner())
}

fn one_shot(blob: &str) -> String {
    format!(
        "name = \"one-shot\"\n[model]\nblob = \"{blob}\"\n[pruning]\n\
         schedule = {{ kind = \"constant_sparsity\", target_sparsity = 0.5 }}\n"
    )
}

/// Runs for minutes unless cancelled: keeps the only worker busy.
fn long_training() -> String {
    r#"
name = "long"
[model]
sequential = [{ type = "linear", in = 64, out = 512 }, { type = "relu" }, { type = "linear", in = 512, out = 10 }]
[data]
builtin = "digits"
[training]
epochs = 500
batch_size = 32
[pruning]
schedule = { kind = "constant_sparsity", target_sparsity = 0.5 }
"#
    .to_string()
}

async fn wait_state(client: &mut Rpc, id: &str, want: pb::JobState) -> pb::Job {
    let deadline = tokio::time::Instant::now() + JOB_TIMEOUT;
    let mut stream = client.watch_job(pb::WatchJobRequest { id: id.into() }).await.unwrap().into_inner();
    loop {
        let event = tokio::time::timeout_at(deadline, stream.next()).await.expect("job state within the timeout");
        let event = event.expect("the watch ended early").unwrap();
        if let Some(pb::job_event::Event::Job(job)) = event.event {
            if state(&job) == want {
                return job;
            }
            assert!(!is_terminal(&job), "job ended {:?} waiting for {want:?}: {:?}", state(&job), job.error);
        }
    }
}

fn code_and_message<T: std::fmt::Debug>(result: Result<T, Status>) -> (Code, String) {
    let status = result.expect_err("the call must fail");
    (status.code(), status.message().to_string())
}

/// Every read and write of another tenant's job must look exactly like one of a job that
/// does not exist: same code, same message with the id swapped.
async fn assert_invisible(client: &mut Rpc, id: &str) {
    let missing = "job-00000000deadbeef";
    type Call = for<'a> fn(&'a mut Rpc, String) -> futures_like::BoxFuture<'a, Result<(), Status>>;
    let calls: [(&str, Call); 6] = [
        ("GetJob", |c, id| Box::pin(async move { c.get_job(pb::GetJobRequest { id }).await.map(drop) })),
        ("CancelJob", |c, id| Box::pin(async move { c.cancel_job(pb::CancelJobRequest { id }).await.map(drop) })),
        ("WatchJob", |c, id| Box::pin(async move { c.watch_job(pb::WatchJobRequest { id }).await.map(drop) })),
        ("GetMetrics", |c, job_id| {
            Box::pin(
                async move { c.get_metrics(pb::GetMetricsRequest { job_id, ..Default::default() }).await.map(drop) },
            )
        }),
        ("GetReport", |c, job_id| {
            Box::pin(async move { c.get_report(pb::GetReportRequest { job_id }).await.map(drop) })
        }),
        ("DownloadArtifact", |c, job_id| {
            Box::pin(async move {
                let request = pb::DownloadArtifactRequest { job_id, ..Default::default() };
                let mut stream = c.download_artifact(request).await?.into_inner();
                while let Some(message) = stream.next().await {
                    message?;
                }
                Ok(())
            })
        }),
    ];
    for (name, call) in calls {
        let theirs = code_and_message(call(client, id.to_string()).await);
        let nobodys = code_and_message(call(client, missing.to_string()).await);
        assert_eq!(theirs.0, Code::NotFound, "{name} on another tenant's job: {theirs:?}");
        assert_eq!(theirs.1.replace(id, missing), nobodys.1, "{name}: the message must not tell the two apart");
    }
}

/// The boxed-future alias the call table above needs (no extra crate for one type).
mod futures_like {
    pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_make_tenants_and_tenants_see_only_their_own() {
    let tmp = tempfile::tempdir().unwrap();
    let tokens = tokens_file(tmp.path());
    let server = Server::start(&tmp.path().join("data"), &["--tokens", tokens.to_str().unwrap()]).await;

    // No token, a wrong one, a malformed header: UNAUTHENTICATED, whatever the call.
    for header in [None, Some("Bearer not-a-token-0123456789"), Some(ALICE), Some("Basic YWxpY2U6eA==")] {
        let mut anonymous = rpc(&server, header).await;
        let (code, _) = code_and_message(anonymous.list_jobs(pb::ListJobsRequest::default()).await);
        assert_eq!(code, Code::Unauthenticated, "{header:?}");
        let (code, _) = code_and_message(upload(&mut anonymous, b"data").await);
        assert_eq!(code, Code::Unauthenticated, "{header:?}");
    }
    // Health checks stay open.
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    let reply = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap();
    assert_eq!(reply.into_inner().status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);

    let mut alice = as_tenant(&server, ALICE).await;
    let mut bob = as_tenant(&server, BOB).await;
    let model = mlp_state_dict();
    let blob = upload(&mut alice, &model).await.unwrap();
    let job = create(&mut alice, one_shot(&blob)).await.unwrap();
    let done = wait_state(&mut alice, &job.id, pb::JobState::Succeeded).await;
    assert_eq!(done.id, job.id);

    // Bob: nothing of Alice's exists.
    assert_invisible(&mut bob, &job.id).await;
    assert!(bob.list_jobs(pb::ListJobsRequest::default()).await.unwrap().into_inner().jobs.is_empty());
    let has = bob.has_blob(pb::HasBlobRequest { id: blob.clone() }).await.unwrap().into_inner();
    assert!(!has.exists, "HasBlob must not reveal another tenant's upload");
    let (code, message) = code_and_message(bob.stat_blob(pb::StatBlobRequest { id: blob.clone() }).await);
    assert_eq!((code, message), (Code::NotFound, format!("blob {blob} not found")));
    let (code, message) = code_and_message(create(&mut bob, one_shot(&blob)).await);
    assert_eq!(code, Code::InvalidArgument);
    assert_eq!(message, format!("model.blob: blob {blob} not found: upload it first"));

    // Once Bob uploads the same bytes himself, the blob is his too (stored once on disk).
    assert_eq!(upload(&mut bob, &model).await.unwrap(), blob);
    let bobs = create(&mut bob, one_shot(&blob)).await.unwrap();
    wait_state(&mut bob, &bobs.id, pb::JobState::Succeeded).await;
    let listed = |jobs: pb::ListJobsResponse| jobs.jobs.into_iter().map(|j| j.id).collect::<Vec<_>>();
    assert_eq!(listed(bob.list_jobs(pb::ListJobsRequest::default()).await.unwrap().into_inner()), [bobs.id.as_str()]);
    assert_eq!(listed(alice.list_jobs(pb::ListJobsRequest::default()).await.unwrap().into_inner()), [job.id.as_str()]);
    assert_invisible(&mut alice, &bobs.id).await;

    // prunectl with the token sees exactly its tenant's jobs; without one it is refused (exit 1).
    let prunectl = |token: Option<&str>| {
        let mut command = tokio::process::Command::new(binary("prunectl"));
        command.args(["list", "--json"]).env("PRUNE_ADDR", &server.addr).env_remove("PRUNE_TOKEN");
        if let Some(token) = token {
            command.env("PRUNE_TOKEN", token);
        }
        command.stdin(Stdio::null()).output()
    };
    let out = prunectl(Some(ALICE)).await.unwrap();
    assert!(out.status.success(), "{out:?}");
    let jobs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<&str> = jobs.as_array().unwrap().iter().map(|j| j["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [job.id.as_str()]);
    let out = prunectl(None).await.unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).to_lowercase().contains("unauthenticated"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_answer_resource_exhausted() {
    let tmp = tempfile::tempdir().unwrap();
    let args = [
        "--workers",
        "1",
        "--max-upload-bytes",
        "1000000",
        "--max-spec-bytes",
        "4096",
        "--max-queued-per-tenant",
        "2",
        "--max-message-bytes",
        "65536",
    ];
    let server = Server::start(&tmp.path().join("data"), &args).await;
    let mut client = rpc(&server, None).await;

    // An upload announcing more than the limit is refused before any byte is stored.
    use pb::upload_blob_request::Part;
    let header = pb::BlobHeader { size: 1_000_001, sha256: "0".repeat(64), offset: 0 };
    let (code, message) = code_and_message(
        client.upload_blob(tokio_stream::iter([pb::UploadBlobRequest { part: Some(Part::Header(header)) }])).await,
    );
    assert_eq!(code, Code::ResourceExhausted, "{message}");
    assert!(message.contains("at most 1000000 bytes"), "{message}");
    // A single message above the gRPC limit, even within the upload limit.
    let big = vec![7u8; 100 * 1024];
    let messages = [
        pb::UploadBlobRequest {
            part: Some(Part::Header(pb::BlobHeader { size: big.len() as u64, sha256: sha256_hex(&big), offset: 0 })),
        },
        pb::UploadBlobRequest { part: Some(Part::Data(big.clone())) },
    ];
    let (code, _) = code_and_message(client.upload_blob(tokio_stream::iter(messages)).await);
    assert_eq!(code, Code::ResourceExhausted);
    // The same bytes in small chunks are fine.
    assert_eq!(upload(&mut client, &big).await.unwrap(), format!("sha256:{}", sha256_hex(&big)));

    // A spec over the size limit.
    let padded = format!("# {}\n{}", "x".repeat(5000), long_training());
    let (code, message) = code_and_message(create(&mut client, padded).await);
    assert_eq!(code, Code::ResourceExhausted, "{message}");
    assert!(message.contains("at most 4096 bytes"), "{message}");

    // The queue: one job runs, two wait, the third waiting one is refused.
    let running = create(&mut client, long_training()).await.unwrap();
    wait_state(&mut client, &running.id, pb::JobState::Running).await;
    let queued =
        [create(&mut client, long_training()).await.unwrap(), create(&mut client, long_training()).await.unwrap()];
    let (code, message) = code_and_message(create(&mut client, long_training()).await);
    assert_eq!(code, Code::ResourceExhausted, "{message}");
    assert!(message.contains("already has 2 jobs QUEUED"), "{message}");
    // Cancelling one frees a place.
    client.cancel_job(pb::CancelJobRequest { id: queued[0].id.clone() }).await.unwrap();
    let again = create(&mut client, long_training()).await.unwrap();
    for id in [&running.id, &queued[1].id, &again.id] {
        client.cancel_job(pb::CancelJobRequest { id: id.clone() }).await.unwrap();
    }
}

/// The server's exit and stderr when it refuses to start.
async fn refused_start(args: &[&str]) -> (Option<i32>, String) {
    let tmp = tempfile::tempdir().unwrap();
    let output = tokio::process::Command::new(binary("prune-server"))
        .arg("--data-dir")
        .arg(tmp.path().join("data"))
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), output).await.expect("the server exits").unwrap();
    assert!(String::from_utf8_lossy(&output.stdout).is_empty(), "it must not announce a port: {output:?}");
    (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_public_address_needs_tokens_or_insecure() {
    let (code, stderr) = refused_start(&["--listen", "0.0.0.0:0"]).await;
    assert_ne!(code, Some(0));
    assert!(stderr.contains("refusing to serve 0.0.0.0:0 without --tokens"), "{stderr}");

    let tmp = tempfile::tempdir().unwrap();
    let bad_tokens = tmp.path().join("bad-tokens");
    std::fs::write(&bad_tokens, "# ok\nshort alice\n").unwrap();
    let (code, stderr) = refused_start(&["--tokens", bad_tokens.to_str().unwrap()]).await;
    assert_ne!(code, Some(0));
    assert!(stderr.contains("line 2: the token is shorter than 16 characters"), "{stderr}");
    let (code, stderr) = refused_start(&["--tls-cert", "/nonexistent/cert.pem", "--tls-key", "/nonexistent/k"]).await;
    assert_ne!(code, Some(0));
    assert!(stderr.contains("TLS certificate /nonexistent/cert.pem"), "{stderr}");
    let not_a_key = certs().join("ca.pem");
    let (code, stderr) = refused_start(&[
        "--tls-cert",
        certs().join("server.pem").to_str().unwrap(),
        "--tls-key",
        not_a_key.to_str().unwrap(),
    ])
    .await;
    assert_ne!(code, Some(0));
    assert!(stderr.contains(&format!("--tls-key {}: ", not_a_key.display())), "{stderr}");
    assert!(stderr.contains("private key"), "{stderr}");

    // With tokens, or explicitly insecure, it serves.
    let tokens = tokens_file(tmp.path());
    let with_tokens =
        Server::start(&tmp.path().join("a"), &["--listen", "0.0.0.0:0", "--tokens", tokens.to_str().unwrap()]).await;
    let mut alice = as_tenant(&with_tokens, ALICE).await;
    alice.list_jobs(pb::ListJobsRequest::default()).await.unwrap();
    let insecure = Server::start(&tmp.path().join("b"), &["--listen", "0.0.0.0:0", "--insecure"]).await;
    rpc(&insecure, None).await.list_jobs(pb::ListJobsRequest::default()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_with_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    let tokens = tokens_file(tmp.path());
    let certs = certs();
    let (cert, key) = (certs.join("server.pem"), certs.join("server.key"));
    let args = [
        "--tokens",
        tokens.to_str().unwrap(),
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    let server = Server::start(&tmp.path().join("data"), &args).await;
    let port = server.addr.rsplit(':').next().unwrap();
    let https = format!("https://localhost:{port}");

    let trusted = ConnectOptions { token: Some(ALICE.into()), ca_cert: Some(certs.join("ca.pem")), timeout: None };
    let client = LibClient::connect_with(&https, &trusted).await.expect("TLS with the right CA");
    assert!(client.list_jobs().await.unwrap().is_empty());
    let model = tmp.path().join("model.safetensors");
    std::fs::write(&model, mlp_state_dict()).unwrap();
    let uploaded = client.upload_file(&model).await.unwrap();
    assert_eq!(uploaded.id, format!("sha256:{}", sha256_hex(&mlp_state_dict())));

    // The wrong CA, or plain text to a TLS port: no service.
    let untrusted =
        ConnectOptions { token: Some(ALICE.into()), ca_cert: Some(certs.join("other-ca.pem")), timeout: None };
    let wrong_ca = match LibClient::connect_with(&https, &untrusted).await {
        Ok(client) => client.list_jobs().await.map(drop),
        Err(e) => Err(e),
    };
    let refused = wrong_ca.expect_err("a server certificate from an untrusted CA must be refused").to_string();
    assert!(refused.contains("not signed by a CA this client trusts"), "{refused}");
    let plain = match LibClient::connect(&format!("http://127.0.0.1:{port}"), Some(ALICE)).await {
        Ok(client) => client.list_jobs().await.map(drop),
        Err(e) => Err(e),
    };
    assert!(plain.is_err(), "plain text to a TLS port must fail");

    // Over TLS, the token still decides: none is UNAUTHENTICATED.
    let anonymous = ConnectOptions { token: None, ca_cert: Some(certs.join("ca.pem")), timeout: None };
    match LibClient::connect_with(&https, &anonymous).await.unwrap().list_jobs().await {
        Err(ClientError::Rpc(status)) => assert_eq!(status.code(), Code::Unauthenticated),
        other => panic!("expected UNAUTHENTICATED, got {other:?}"),
    }

    // prunectl: https address, --ca-cert, token from the environment.
    let out = tokio::process::Command::new(binary("prunectl"))
        .args(["list", "--json", "--addr", &https, "--ca-cert", certs.join("ca.pem").to_str().unwrap()])
        .env("PRUNE_TOKEN", ALICE)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap(), serde_json::json!([]));

    // prunectl with a plain address for the TLS port says to use https://, not an h2 frame error.
    for plain in [format!("http://127.0.0.1:{port}"), format!("127.0.0.1:{port}")] {
        let out = prunectl_as(ALICE, &["list", "--addr", &plain]).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(&format!("is a TLS server: use https://127.0.0.1:{port}")), "{stderr}");
    }
}

/// `prunectl ARGS` with `token` in PRUNE_TOKEN.
async fn prunectl_as(token: &str, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(binary("prunectl"))
        .args(args)
        .env("PRUNE_TOKEN", token)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap()
}

/// The README's TLS recipe, exactly (`scripts/tls-certs.sh`): a private CA and a server
/// certificate it signs for `localhost` and `127.0.0.1`; prunectl reaches the server by either
/// name over a real rustls handshake.
#[tokio::test(flavor = "multi_thread")]
async fn the_readme_tls_recipe_works() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = tmp.path().join("certs");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/tls-certs.sh");
    let made = tokio::process::Command::new(&script).arg(&certs).output().await.unwrap();
    assert!(made.status.success(), "{made:?}");
    let tokens = tokens_file(tmp.path());
    let (cert, key) = (certs.join("server.pem"), certs.join("server.key"));
    let args = [
        "--tokens",
        tokens.to_str().unwrap(),
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    let server = Server::start(&tmp.path().join("data"), &args).await;
    let port = server.addr.rsplit(':').next().unwrap();
    for host in ["localhost", "127.0.0.1"] {
        let out = tokio::process::Command::new(binary("prunectl"))
            .args(["list", "--json", "--addr", &format!("https://{host}:{port}")])
            .args(["--ca-cert", certs.join("ca.pem").to_str().unwrap()])
            .env("PRUNE_TOKEN", ALICE)
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "{host}: {}", String::from_utf8_lossy(&out.stderr));
    }
    // A --ca-cert file without a certificate (the key, say): said so before any call.
    let https = format!("https://localhost:{port}");
    let out =
        prunectl_as(ALICE, &["list", "--addr", &https, "--ca-cert", certs.join("server.key").to_str().unwrap()]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("no certificate in it"), "{stderr}");
    // A token the server does not know: said so, without suggesting to pass one.
    let ca = certs.join("ca.pem");
    let out =
        prunectl_as("not-a-known-token-0123456789", &["list", "--addr", &https, "--ca-cert", ca.to_str().unwrap()])
            .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("the token is not accepted by this server") && !stderr.contains("pass --token"),
        "{stderr}"
    );
    // The usual mistake: the CA's own certificate served as the server's. Said in words.
    let ca_key = certs.join("ca.key");
    let args = ["--tls-cert", ca.to_str().unwrap(), "--tls-key", ca_key.to_str().unwrap()];
    let wrong = Server::start(&tmp.path().join("data2"), &args).await;
    let wrong_port = wrong.addr.rsplit(':').next().unwrap();
    let addr = format!("https://127.0.0.1:{wrong_port}");
    let out = prunectl_as(ALICE, &["list", "--addr", &addr, "--ca-cert", ca.to_str().unwrap()]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("the server's TLS certificate is a CA certificate"), "{stderr}");
}
