//! The dashboard's routes on a real database and service (a scheduler with no workers, so jobs
//! stay QUEUED), through `tower::ServiceExt::oneshot`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use clap::Parser;
use tower::ServiceExt;

use super::*;
use crate::api::auth::Tokens;
use crate::api::service::{Facts, Shared};
use crate::files::uploads::BlobStore;
use crate::jobs::admission::Defaults;
use crate::jobs::attempt::Deps;
use crate::jobs::live::Live;
use crate::jobs::scheduler::{self, SchedulerConfig};
use crate::launch::scripted::ScriptedLauncher;
use crate::storage::test_support::{db, new_job};

const ALICE: &str = "alice-0123456789abcdef";
const BOB: &str = "bob-0123456789abcdef-x";
const JOB: &str = "job-0123456789abcdef";
const MISSING: &str = "job-fedcba9876543210";

struct Harness {
    router: Router,
    _tmp: tempfile::TempDir,
}

async fn harness(tokens: bool) -> Harness {
    let (db, tmp) = db().await;
    let mut job = new_job(JOB);
    if tokens {
        job.tenant = "alice".into();
    }
    assert!(db.insert_job(&job, 100).await.unwrap());
    std::fs::create_dir_all(tmp.path().join("tmp")).unwrap();
    let store: Arc<dyn prune_store::FileStore> = Arc::new(prune_store::LocalStore::new(tmp.path().join("store")));
    let live = Live::default();
    let deps = Deps { db: db.clone(), live: live.clone(), store: store.clone() };
    let config = SchedulerConfig {
        workers: 0,
        shutdown_grace: Duration::from_secs(1),
        node: "node-a".into(),
        lease: Duration::from_secs(60),
        release_all_at_start: false,
        max_running_per_tenant: 0,
    };
    let (scheduler, _task) = scheduler::start(deps, Arc::new(ScriptedLauncher::new().0), config);
    let args = crate::config::Cli::parse_from(["prune-server"]).serve;
    let service = Service::new(Shared {
        db,
        blobs: BlobStore::new(store.clone(), tmp.path().join("tmp")),
        live,
        scheduler,
        defaults: Defaults { threads: 1, max_attempts: 3 },
        limits: args.limits,
        shutdown: tokio_util::sync::CancellationToken::new(),
        facts: Facts {
            node: "node-a".into(),
            database: "sqlite",
            store: store.url(),
            data_dir: tmp.path().to_path_buf(),
            workers: 0,
            max_attempts: 3,
            max_running_per_tenant: 0,
            retention_days: 0,
            devices: Arc::default(),
        },
    });
    let tokens = tokens.then(|| Tokens::parse(&format!("{ALICE} alice\n{BOB} bob\n")).unwrap());
    Harness { router: router(service, Authenticator::new(tokens)), _tmp: tmp }
}

impl Harness {
    async fn call(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
    ) -> (StatusCode, String, axum::http::HeaderMap) {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let response = self.router.clone().oneshot(request.body(Body::empty()).unwrap()).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), 1 << 24).await.unwrap();
        (status, String::from_utf8_lossy(&body).into_owned(), headers)
    }

    async fn get(&self, uri: &str, token: Option<&str>) -> (StatusCode, serde_json::Value) {
        let (status, body, _) = self.call(Method::GET, uri, token).await;
        (status, serde_json::from_str(&body).unwrap_or_else(|e| panic!("{uri}: {e}: {body}")))
    }
}

#[tokio::test]
async fn the_page_and_its_assets_are_embedded() {
    let h = harness(false).await;
    for (uri, kind, needle) in [
        ("/", "text/html", "/assets/app.js"),
        (&format!("/jobs/{JOB}"), "text/html", "/assets/app.css"),
        ("/assets/app.js", "text/javascript", "history.replaceState"),
        ("/assets/app.css", "text/css", "font-family"),
    ] {
        let (status, body, headers) = h.call(Method::GET, uri, None).await;
        assert_eq!(status, StatusCode::OK, "{uri}");
        assert!(headers["content-type"].to_str().unwrap().starts_with(kind), "{uri}: {headers:?}");
        assert!(body.contains(needle), "{uri}");
        assert!(!body.contains("http://") && !body.contains("https://"), "{uri}: nothing external");
    }
}

#[tokio::test]
async fn jobs_and_a_job_as_json() {
    let h = harness(false).await;
    let (status, list) = h.get("/api/jobs", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["jobs"][0]["id"], JOB);
    assert_eq!(list["jobs"][0]["state"], "QUEUED", "states by name");
    let (_, running) = h.get("/api/jobs?state=RUNNING", None).await;
    assert_eq!(running["jobs"].as_array().unwrap().len(), 0, "the state filter");
    let (status, bad) = h.get("/api/jobs?state=BORED", None).await;
    assert_eq!((status, bad["code"].as_str()), (StatusCode::BAD_REQUEST, Some("INVALID_ARGUMENT")));

    let (status, job) = h.get(&format!("/api/jobs/{JOB}"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!((job["id"].as_str(), job["name"].as_str()), (Some(JOB), Some("name of job-0123456789abcdef")));
    assert!(job["spec"].is_object(), "GetJob has the spec (the page draws the schedule from it)");
    assert_eq!(job["kind"], "SERVICE");
    for unset in ["error", "node", "finished_unix_ms", "started_unix_ms", "worker_pid", "reported_unix_ms"] {
        assert!(job[unset].is_null(), "{unset} is null, as in prunectl --json: {job}");
    }
    let (status, metrics) = h.get(&format!("/api/jobs/{JOB}/metrics"), None).await;
    assert_eq!((status, metrics["points"].as_array().map(Vec::len)), (StatusCode::OK, Some(0)));
    let (status, report) = h.get(&format!("/api/jobs/{JOB}/report"), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{report}");
    assert!(report["error"].as_str().unwrap().contains("is QUEUED"), "{report}");
    let (status, body, _) = h.call(Method::GET, &format!("/api/jobs/{JOB}/artifacts/safetensors"), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    let (status, body, _) = h.call(Method::POST, &format!("/api/jobs/{JOB}/cancel"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, job) = h.get(&format!("/api/jobs/{JOB}"), None).await;
    assert_eq!(job["state"], "CANCELLED");
}

#[tokio::test]
async fn bad_input_gets_a_clear_status() {
    let h = harness(false).await;
    for id in [MISSING, "not-a-job-id", "job-%3Cscript%3E"] {
        let (status, body) = h.get(&format!("/api/jobs/{id}"), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{id}: {body}");
        assert_eq!(body["code"], "NOT_FOUND");
        assert!(body["error"].as_str().unwrap().ends_with("not found"), "{body}");
    }
    let (status, body) = h.get("/api/nothing-here", None).await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::NOT_FOUND, Some("NOT_FOUND")));
    let (status, page, headers) = h.call(Method::GET, "/etc/%3Cb%3Epasswd", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(headers["content-type"].to_str().unwrap().starts_with("text/html"), "{headers:?}");
    assert!(page.contains("<code>/etc/%3Cb%3Epasswd</code>") && page.contains("href=\"/\""), "{page}");
    let long = format!("/api/jobs?state={}", "A".repeat(MAX_URI_BYTES));
    let (status, body) = h.get(&long, None).await;
    assert_eq!(status, StatusCode::URI_TOO_LONG, "{body}");
    let (status, _, _) = h.call(Method::DELETE, &format!("/api/jobs/{JOB}"), None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let (status, _) = h.get("/api/jobs", None).await;
    assert_eq!(status, StatusCode::OK, "nothing else affected");
}

#[tokio::test]
async fn tokens_guard_the_api_like_grpc() {
    let h = harness(true).await;
    for token in [None, Some("wrong-token-0123456789")] {
        let (status, body) = h.get("/api/jobs", token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}");
        assert_eq!(body["code"], "UNAUTHENTICATED");
        assert!(body["error"].is_string());
        let (status, _) = h.get(&format!("/api/jobs/{JOB}"), token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let (status, _, _) = h.call(Method::GET, "/", None).await;
    assert_eq!(status, StatusCode::OK, "the page itself holds no data: it asks for a token");

    let (status, list) = h.get("/api/jobs", Some(ALICE)).await;
    assert_eq!((status, list["jobs"][0]["id"].as_str()), (StatusCode::OK, Some(JOB)));
    let (_, list) = h.get("/api/jobs", Some(BOB)).await;
    assert_eq!(list["jobs"].as_array().unwrap().len(), 0, "bob sees none of alice's jobs");

    // Another tenant's job reads exactly like a missing one.
    let (status, theirs) = h.get(&format!("/api/jobs/{JOB}"), Some(BOB)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(theirs["error"], format!("job {JOB} not found"));
    let (_, missing) = h.get(&format!("/api/jobs/{MISSING}"), Some(BOB)).await;
    assert_eq!(missing["error"], format!("job {MISSING} not found"));
    let (status, _, _) = h.call(Method::POST, &format!("/api/jobs/{JOB}/cancel"), Some(BOB)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "bob cannot cancel it");
    let (_, job) = h.get(&format!("/api/jobs/{JOB}"), Some(ALICE)).await;
    assert_eq!(job["state"], "QUEUED");
}
