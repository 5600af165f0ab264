//! The browser dashboard (`prune-server --http`) against the real server, looked at with headless
//! Chromium (`make setup` installs it): a finished job's page shows its state, the per-tensor
//! table and drawn charts; without a token the page shows no job data; a running job's page
//! changes while it runs. The JSON API's access rules are checked over plain HTTP.

use std::path::{Path, PathBuf};
use std::time::Duration;

use prune_proto as pb;
use prune_proto::pruning_service_client::PruningServiceClient;
use prune_tests::{digits_mlp, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status};

const ALICE: &str = "alice-dashboard-0123456789";
const BOB: &str = "bob-dashboard-0123456789";

#[derive(Clone)]
struct Bearer(&'static str);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request.metadata_mut().insert("authorization", format!("Bearer {}", self.0).parse().unwrap());
        Ok(request)
    }
}

type Rpc = PruningServiceClient<InterceptedService<Channel, Bearer>>;

async fn start(dir: &Path) -> (Server, Rpc) {
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, format!("{ALICE} alice\n{BOB} bob\n")).unwrap();
    let server =
        Server::start(&dir.join("data"), &["--http", "127.0.0.1:0", "--tokens", tokens.to_str().unwrap()]).await;
    assert!(server.dashboard.is_some(), "no `dashboard on` line");
    let client = PruningServiceClient::with_interceptor(server.channel().await, Bearer(ALICE));
    (server, client)
}

async fn create(client: &mut Rpc, toml: &str) -> pb::Job {
    let source = pb::create_job_request::Source::SpecToml(toml.to_string());
    client.create_job(pb::CreateJobRequest { source: Some(source), ..Default::default() }).await.unwrap().into_inner()
}

async fn get(client: &mut Rpc, id: &str) -> pb::Job {
    client.get_job(pb::GetJobRequest { id: id.into() }).await.unwrap().into_inner()
}

/// Polls GetJob until `until` holds; panics after `timeout`.
async fn wait(client: &mut Rpc, id: &str, timeout: Duration, until: impl Fn(&pb::Job) -> bool) -> pb::Job {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let job = get(client, id).await;
        if until(&job) {
            return job;
        }
        assert!(tokio::time::Instant::now() < deadline, "job {id}: condition not met in {timeout:?}: {job:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn chromium() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("chromium"))
        .find(|p| p.is_file())
        .expect("chromium is not on PATH: run `make setup` (scripts/setup-chromium.sh)")
}

/// Headless Chromium on `url`, with `extra` arguments (`--dump-dom`, `--screenshot=...`); its stdout.
async fn browse(profile: &Path, url: &str, extra: &[&str]) -> String {
    let mut command = tokio::process::Command::new(chromium());
    command
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--virtual-time-budget=8000"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(90), command.output())
        .await
        .expect("chromium did not finish within 90 s")
        .expect("running chromium");
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One HTTP/1.1 request; the status code and the body (as text).
async fn http(addr: &str, method: &str, target: &str, token: Option<&str>) -> (u16, String) {
    let (status, body) = http_bytes(addr, method, target, token).await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn http_bytes(addr: &str, method: &str, target: &str, token: Option<&str>) -> (u16, Vec<u8>) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let head =
        format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head");
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, raw[end + 4..].to_vec())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_finished_job_in_the_browser() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, mut client) = start(tmp.path()).await;
    let dash = server.dashboard.clone().unwrap();
    let toml =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/constant_quick.toml")).unwrap();
    let id = create(&mut client, &toml).await.id;
    let job = wait(&mut client, &id, Duration::from_secs(300), |j| j.state >= pb::JobState::Succeeded as i32).await;
    assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:?}\n{}", server.log());

    // The JSON API: tokens as in gRPC; another tenant's job reads like a missing one.
    let (status, body) = http(&dash, "GET", &format!("/api/jobs/{id}"), None).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("\"error\""), "{body}");
    let (status, body) = http(&dash, "GET", &format!("/api/jobs/{id}"), Some("not-a-token-0123456789")).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = http(&dash, "GET", &format!("/api/jobs/{id}"), Some(ALICE)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"SUCCEEDED\""), "{body}");
    let (status, theirs) = http(&dash, "GET", &format!("/api/jobs/{id}"), Some(BOB)).await;
    assert_eq!(status, 404);
    assert!(theirs.contains(&format!("job {id} not found")), "{theirs}");
    let (status, _) = http(&dash, "GET", &format!("/api/jobs/{id}/artifacts/safetensors"), Some(BOB)).await;
    assert_eq!(status, 404);
    let (status, body) = http(&dash, "GET", "/api/jobs/job-0000000000000000", Some(ALICE)).await;
    assert_eq!((status, body.contains("job job-0000000000000000 not found")), (404, true), "{body}");
    let (status, _) = http(&dash, "GET", &format!("/api/jobs?state={}", "x".repeat(10_000)), Some(ALICE)).await;
    assert!(status == 414 || status == 400 || status == 431, "a very long query: {status}");
    let (status, _) = http(&dash, "GET", "/no/such/page", None).await;
    assert_eq!(status, 404);
    // The artifact streams with its file name.
    let (status, body) = http_bytes(&dash, "GET", &format!("/api/jobs/{id}/artifacts/safetensors"), Some(ALICE)).await;
    assert_eq!(status, 200);
    let size = job.artifacts.iter().find(|a| a.format == "safetensors").expect("a safetensors artifact").size;
    assert_eq!(body.len() as u64, size, "the artifact's bytes");

    // The page with the token in the fragment: the job, its table and its charts.
    let profile = tmp.path().join("chromium");
    let url = format!("http://{dash}/jobs/{id}#token={ALICE}");
    let dom = browse(&profile, &url, &["--dump-dom"]).await;
    assert!(dom.contains(&id), "the job id:\n{dom}");
    assert!(dom.contains("SUCCEEDED"), "the state:\n{dom}");
    assert!(dom.contains("id=\"report\"") && dom.contains("0.weight"), "the per-tensor table:\n{dom}");
    assert!(dom.contains("<svg") && dom.contains("<path") && dom.contains("<circle"), "drawn charts:\n{dom}");
    assert!(dom.contains("schedule target"), "the schedule's target line:\n{dom}");
    assert!(dom.contains("Download safetensors"), "download buttons:\n{dom}");
    // The default export is zstd-compressed: the page says what the download is.
    assert!(
        dom.contains("Downloads are the files as stored (zstd-compressed") && dom.contains("prunectl unpack"),
        "{dom}"
    );

    // Without a token: a form, no job data.
    let bare = browse(&tmp.path().join("chromium-bare"), &format!("http://{dash}/jobs/{id}"), &["--dump-dom"]).await;
    assert!(bare.contains("token-form"), "asks for a token:\n{bare}");
    assert!(!bare.contains("SUCCEEDED") && !bare.contains("0.weight"), "shows no job data:\n{bare}");
    let list = browse(&tmp.path().join("chromium-list"), &format!("http://{dash}/"), &["--dump-dom"]).await;
    assert!(list.contains("token-form") && !list.contains(&id), "the jobs page without a token:\n{list}");
    // A malformed id: a clear message on the page.
    let bad = format!("http://{dash}/jobs/nope#token={ALICE}");
    let bad = browse(&tmp.path().join("chromium-bad"), &bad, &["--dump-dom"]).await;
    assert!(bad.contains("job nope not found"), "{bad}");
    // The jobs page lists it, and a tracked run (a loop outside reporting) with its badge.
    let spec = "name = \"my-loop\"\n[pruning]\nschedule = { kind = \"constant_sparsity\", target_sparsity = 0.5 }\n";
    let start = pb::StartTrackedRunRequest {
        source: Some(pb::start_tracked_run_request::Source::SpecToml(spec.into())),
        client: "laptop:7".into(),
        ..Default::default()
    };
    let tracked = client.start_tracked_run(start).await.unwrap().into_inner().job.unwrap().id;
    let list = format!("http://{dash}/#token={ALICE}");
    let list = browse(&tmp.path().join("chromium-list2"), &list, &["--dump-dom"]).await;
    assert!(list.contains("jobs-table") && list.contains(&id) && list.contains("constant-quick"), "{list}");
    assert!(list.contains(&tracked) && list.contains("my-loop <span class=\"label\">tracked</span>"), "{list}");
    let page = format!("http://{dash}/jobs/{tracked}#token={ALICE}");
    let page = browse(&tmp.path().join("chromium-tracked"), &page, &["--dump-dom"]).await;
    assert!(page.contains("reported by laptop:7"), "{page}");

    // A screenshot of the job page.
    let png = tmp.path().join("job.png");
    let shot =
        [format!("--screenshot={}", png.display()), "--window-size=1280,1600".to_string(), "--hide-scrollbars".into()];
    let shot: Vec<&str> = shot.iter().map(String::as_str).collect();
    browse(&tmp.path().join("chromium-shot"), &url, &shot).await;
    let bytes = std::fs::read(&png).expect("the screenshot");
    assert!(bytes.len() > 10_000 && bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG of {} bytes", bytes.len());
    if let Some(keep) = std::env::var_os("PRUNE_DASHBOARD_SCREENSHOT") {
        std::fs::copy(&png, keep).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_job_page_changes_and_cancels() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, mut client) = start(tmp.path()).await;
    let dash = server.dashboard.clone().unwrap();
    let id = create(&mut client, &digits_mlp("long", 256, 200, 1000)).await.id;
    wait(&mut client, &id, Duration::from_secs(120), |j| j.step > 0).await;
    let url = format!("http://{dash}/jobs/{id}#token={ALICE}");
    let step = |dom: &str| {
        let at = dom.find("id=\"job-step\"").expect("the progress line");
        dom[at..].split_whitespace().nth(1).and_then(|s| s.parse::<i64>().ok()).expect("step N")
    };
    let first = step(&browse(&tmp.path().join("c1"), &url, &["--dump-dom"]).await);
    wait(&mut client, &id, Duration::from_secs(120), |j| j.step > first + 20).await;
    let dom = browse(&tmp.path().join("c2"), &url, &["--dump-dom"]).await;
    assert!(dom.contains("RUNNING") && dom.contains("Cancel job"), "{dom}");
    assert!(step(&dom) > first, "the step moved on: {first} -> {}", step(&dom));
    // The cancel button's endpoint.
    let (status, body) = http(&dash, "POST", &format!("/api/jobs/{id}/cancel"), Some(ALICE)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"CANCELLED\""), "{body}");
    assert_eq!(get(&mut client, &id).await.state, pb::JobState::Cancelled as i32);
}

#[tokio::test]
async fn plain_http_on_a_public_address_needs_insecure() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        let mut command = tokio::process::Command::new(prune_tests::binary("prune-server"));
        command
            .args(["--listen", "127.0.0.1:0", "--http", "0.0.0.0:0", "--data-dir"])
            .arg(tmp.path().join("data"))
            .args(extra)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        command
    };
    let out = tokio::time::timeout(Duration::from_secs(30), run(&[]).output()).await.unwrap().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("refusing to serve the dashboard on 0.0.0.0:0"), "{stderr}");
    assert!(!tmp.path().join("data").exists(), "refused before touching the data directory");
}
