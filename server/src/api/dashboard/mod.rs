//! The browser dashboard (`prune-server --http ADDR`): one embedded page (HTML, JS, CSS) and a
//! small JSON API under `/api/` for it.
//!
//! The JSON handlers hold no job logic: each one authenticates with the gRPC [`Authenticator`]
//! (same tokens, same tenants), calls the [`PruningService`] method of [`Service`] in-process and
//! serialises the reply (the `pruning.v1` messages derive `serde::Serialize`). gRPC statuses
//! become HTTP statuses with a JSON body `{"code": "NOT_FOUND", "error": "job X not found"}`.

#[cfg(test)]
mod tests;

use axum::body::Body;
use axum::extract::{Path, Query, Request as HttpRequest, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use prune_proto as pb;
use prune_proto::download_artifact_response::Part;
use prune_proto::pruning_service_server::PruningService;
use serde::Deserialize;
use tokio_stream::StreamExt;
use tonic::service::Interceptor;
use tonic::{Code, Status};

use crate::api::auth::{Authenticator, Tenant};
use crate::api::service::Service;

/// Longest request target (path and query) accepted; longer ones are 414.
pub const MAX_URI_BYTES: usize = 4096;
/// Most metric points one `/api/jobs/ID/metrics` answer carries.
const MAX_METRIC_POINTS: usize = 1_000_000;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

#[derive(Clone)]
struct Api {
    service: Service,
    auth: Authenticator,
}

/// The dashboard's routes: the page at `/` and `/jobs/ID`, its assets, and the JSON API.
pub fn router(service: Service, auth: Authenticator) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/jobs/{id}", get(page))
        .route("/assets/app.js", get(|| asset("text/javascript; charset=utf-8", APP_JS)))
        .route("/assets/app.css", get(|| asset("text/css; charset=utf-8", APP_CSS)))
        .route("/api/jobs", get(list_jobs))
        .route("/api/jobs/{id}", get(get_job))
        .route("/api/jobs/{id}/metrics", get(get_metrics))
        .route("/api/jobs/{id}/report", get(get_report))
        .route("/api/jobs/{id}/cancel", post(cancel_job))
        .route("/api/jobs/{id}/artifacts/{format}", get(download))
        .fallback(not_found)
        .layer(middleware::from_fn(limit_uri))
        .with_state(Api { service, auth })
}

async fn limit_uri(request: HttpRequest, next: Next) -> Response {
    let target = request.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if target > MAX_URI_BYTES {
        let message = format!("request target of {target} bytes: at most {MAX_URI_BYTES}");
        return error(StatusCode::URI_TOO_LONG, "URI_TOO_LONG", &message);
    }
    next.run(request).await
}

async fn page() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML).await
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    (asset_headers(content_type), body).into_response()
}

fn asset_headers(content_type: &'static str) -> [(header::HeaderName, &'static str); 4] {
    [
        (header::CONTENT_TYPE, content_type),
        (header::CACHE_CONTROL, "no-cache"),
        // Everything is embedded: the page may load nothing from elsewhere.
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ]
}

/// The JSON API answers in JSON; a person who mistyped a page's address gets a page.
async fn not_found(request: HttpRequest) -> Response {
    let path = request.uri().path();
    let message = format!("no such page: {path}");
    if path.starts_with("/api/") {
        return error(StatusCode::NOT_FOUND, "NOT_FOUND", &message);
    }
    let escaped: String = path
        .chars()
        .map(|c| match c {
            '<' => "&lt;".to_string(),
            '>' => "&gt;".to_string(),
            '&' => "&amp;".to_string(),
            '"' => "&quot;".to_string(),
            '\'' => "&#39;".to_string(),
            c => c.to_string(),
        })
        .collect();
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Not found · prune</title>\
         <link rel=\"stylesheet\" href=\"/assets/app.css\"></head><body><main><h1>Not found</h1>\
         <p>There is no page at <code>{escaped}</code>.</p><p><a href=\"/\">All jobs</a></p></main></body></html>"
    );
    (StatusCode::NOT_FOUND, asset_headers("text/html; charset=utf-8"), body).into_response()
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(serde_json::json!({ "code": code, "error": message }))).into_response()
}

/// A gRPC status as the HTTP answer it stands for.
fn status_response(status: &Status) -> Response {
    let http = match status.code() {
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::FailedPrecondition | Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DataLoss | Code::Internal | Code::Unknown => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let code = format!("{:?}", status.code());
    error(http, &screaming(&code), status.message())
}

/// `NotFound` -> `NOT_FOUND`.
fn screaming(camel: &str) -> String {
    let mut out = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

impl Api {
    /// The caller's tenant, by the gRPC interceptor itself: the same tokens and the same errors.
    fn tenant(&self, headers: &HeaderMap) -> Result<Tenant, Status> {
        let mut probe = tonic::Request::new(());
        if let Some(value) = headers.get(header::AUTHORIZATION) {
            let value = tonic::metadata::MetadataValue::try_from(value.as_bytes())
                .map_err(|_| Status::unauthenticated("malformed authorization header"))?;
            probe.metadata_mut().insert("authorization", value);
        }
        let authenticated = self.auth.clone().call(probe)?;
        crate::api::auth::tenant(&authenticated)
    }

    /// A gRPC request as the interceptor would have passed it on; the HTTP error otherwise.
    fn request<T>(&self, headers: &HeaderMap, message: T) -> Result<tonic::Request<T>, Box<Response>> {
        let tenant = self.tenant(headers).map_err(|s| Box::new(status_response(&s)))?;
        let mut request = tonic::Request::new(message);
        request.extensions_mut().insert(tenant);
        Ok(request)
    }
}

/// A job as JSON, its state and kind by name (`SUCCEEDED`, `TRACKED`) rather than number.
fn job_json(job: &pb::Job) -> serde_json::Value {
    let mut value = serde_json::to_value(job).unwrap_or_default();
    let state = pb::JobState::try_from(job.state).map_or("STATE_UNSPECIFIED", |s| s.as_str_name());
    value["state"] = serde_json::Value::from(state.trim_start_matches("JOB_STATE_").trim_start_matches("STATE_"));
    let kind = pb::JobKind::from(prune_proto::conversions::job_kind(job.kind));
    value["kind"] = serde_json::Value::from(kind.as_str_name());
    // What proto3 sends as "" or 0 for "none" is null here, as in `prunectl --json`.
    null_when_unset(
        &mut value,
        &["error", "node", "client"],
        &["started_unix_ms", "finished_unix_ms", "worker_pid", "reported_unix_ms"],
    );
    if let Some(attempts) = value["attempt_history"].as_array_mut() {
        for attempt in attempts {
            null_when_unset(attempt, &["outcome", "error"], &["finished_unix_ms"]);
        }
    }
    value
}

fn null_when_unset(value: &mut serde_json::Value, texts: &[&str], numbers: &[&str]) {
    for key in texts {
        if value[*key].as_str() == Some("") {
            value[*key] = serde_json::Value::Null;
        }
    }
    for key in numbers {
        if value[*key].as_i64() == Some(0) {
            value[*key] = serde_json::Value::Null;
        }
    }
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    /// A state name (`RUNNING`); empty or absent: all.
    #[serde(default)]
    state: String,
    #[serde(default)]
    page_token: String,
}

async fn list_jobs(State(api): State<Api>, headers: HeaderMap, Query(query): Query<ListQuery>) -> Response {
    let state = match query.state.trim().to_ascii_uppercase().as_str() {
        "" | "ALL" => 0,
        name => {
            let found = pb::JobState::from_str_name(name)
                .or_else(|| pb::JobState::from_str_name(&format!("JOB_STATE_{name}")))
                .or_else(|| pb::JobState::from_str_name(&format!("STATE_{name}")));
            match found {
                Some(s) => s as i32,
                None => return error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", &format!("unknown state `{name}`")),
            }
        }
    };
    let message = pb::ListJobsRequest { page_size: 200, page_token: query.page_token, state, ..Default::default() };
    let request = match api.request(&headers, message) {
        Ok(r) => r,
        Err(response) => return *response,
    };
    match api.service.list_jobs(request).await {
        Ok(reply) => {
            let reply = reply.into_inner();
            let jobs: Vec<_> = reply.jobs.iter().map(job_json).collect();
            Json(serde_json::json!({ "jobs": jobs, "next_page_token": reply.next_page_token })).into_response()
        }
        Err(status) => status_response(&status),
    }
}

async fn get_job(State(api): State<Api>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let request = match api.request(&headers, pb::GetJobRequest { id }) {
        Ok(r) => r,
        Err(response) => return *response,
    };
    match api.service.get_job(request).await {
        Ok(job) => Json(job_json(job.get_ref())).into_response(),
        Err(status) => status_response(&status),
    }
}

async fn cancel_job(State(api): State<Api>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let request = match api.request(&headers, pb::CancelJobRequest { id }) {
        Ok(r) => r,
        Err(response) => return *response,
    };
    match api.service.cancel_job(request).await {
        Ok(job) => Json(job_json(job.get_ref())).into_response(),
        Err(status) => status_response(&status),
    }
}

/// Every page of GetMetrics, as `{"points": [{step, name, value}, ...]}`.
async fn get_metrics(State(api): State<Api>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let mut points = Vec::new();
    let mut page_token = String::new();
    loop {
        let message = pb::GetMetricsRequest { job_id: id.clone(), page_token, ..Default::default() };
        let request = match api.request(&headers, message) {
            Ok(r) => r,
            Err(response) => return *response,
        };
        let page = match api.service.get_metrics(request).await {
            Ok(reply) => reply.into_inner(),
            Err(status) => return status_response(&status),
        };
        points.extend(page.points);
        page_token = page.next_page_token;
        if page_token.is_empty() || points.len() >= MAX_METRIC_POINTS {
            break;
        }
    }
    Json(serde_json::json!({ "points": points })).into_response()
}

async fn get_report(State(api): State<Api>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let request = match api.request(&headers, pb::GetReportRequest { job_id: id }) {
        Ok(r) => r,
        Err(response) => return *response,
    };
    match api.service.get_report(request).await {
        Ok(report) => {
            let mut report = report.into_inner();
            report.json.clear(); // the same again as text: the page does not need it
            Json(report).into_response()
        }
        Err(status) => status_response(&status),
    }
}

/// The artifact's bytes, streamed from DownloadArtifact, as a file download.
async fn download(State(api): State<Api>, headers: HeaderMap, Path((id, format)): Path<(String, String)>) -> Response {
    // An export of several files (a sharded checkpoint) comes as one tar archive.
    let message = pb::DownloadArtifactRequest { job_id: id, format, read_offset: 0, file_name: String::new() };
    let request = match api.request(&headers, message) {
        Ok(r) => r,
        Err(response) => return *response,
    };
    let mut stream = match api.service.download_artifact(request).await {
        Ok(reply) => reply.into_inner(),
        Err(status) => return status_response(&status),
    };
    // The first message describes the artifact (download::stream puts it there).
    let info = match stream.next().await {
        Some(Ok(pb::DownloadArtifactResponse { part: Some(Part::Info(info)) })) => info,
        Some(Err(status)) => return status_response(&status),
        _ => return error(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", "the download did not start with its info"),
    };
    let body = stream.filter_map(|message| match message {
        Ok(pb::DownloadArtifactResponse { part: Some(Part::Data(data)) }) => Some(Ok(axum::body::Bytes::from(data))),
        Ok(_) => None,
        Err(status) => Some(Err(std::io::Error::other(status.message().to_string()))),
    });
    let file_name: String =
        info.file_name.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect();
    let disposition = format!("attachment; filename=\"{file_name}\"");
    let mut response = Response::new(Body::from_stream(body));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(info.size));
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    response
}

/// Serves the dashboard on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    service: Service,
    auth: Authenticator,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(service, auth)).with_graceful_shutdown(shutdown.cancelled_owned()).await
}
