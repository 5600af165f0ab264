//! [`Client`]: one connection to the server and a typed method per call. The longer operations
//! live in their own modules (`upload`, `download`, `watch`, `jobfile`) as further `impl Client`
//! blocks.

use std::time::Duration;

use prune_core::JobSpec;
use prune_proto as pb;
use prune_proto::pruning_service_client::PruningServiceClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::auth::BearerToken;
use crate::error::{error_chain, ClientError, Result};
use crate::retry::Backoff;
use crate::types::{JobInfo, MetricRecord, Report};

type Rpc = PruningServiceClient<InterceptedService<Channel, BearerToken>>;

/// Largest reply accepted: a page of jobs with their specs can exceed tonic's 4 MiB default.
const MAX_REPLY_BYTES: usize = 64 << 20;

/// Jobs fetched per `ListJobs` page.
const LIST_PAGE_SIZE: u32 = 500;

/// Retries of a CreateJob the server answered UNAVAILABLE.
const MAX_SUBMIT_RETRIES: u32 = 10;
/// The default deadline of a unary call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// A connection to a prune server. Cheap to clone: clones share the connection.
#[derive(Debug, Clone)]
pub struct Client {
    rpc: Rpc,
    addr: String,
    /// Deadline of each unary call (streams have none: a watch may last hours).
    pub(crate) timeout: Duration,
}

/// What comes with a job besides its spec.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SubmitOptions {
    pub labels: std::collections::BTreeMap<String, String>,
    pub priority: i32,
    /// The idempotency key; `None`: a fresh one per submission.
    pub request_id: Option<String>,
}

/// A random request id (128 bits, hex).
pub fn new_request_id() -> String {
    use sha2::{Digest, Sha256};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let seed = format!("{}:{}:{}", now.as_nanos(), std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
    hex::encode(&Sha256::digest(seed.as_bytes())[..16])
}

/// The endpoint `addr` names (`http://` or `https://`; bare `host:port` is plain HTTP) with the
/// TLS and keep-alive settings, the address as normalised, and the credentials of every call.
fn endpoint(addr: &str, options: &ConnectOptions) -> Result<(Endpoint, String, BearerToken)> {
    let addr = if addr.contains("://") { addr.to_string() } else { format!("http://{addr}") };
    let auth = BearerToken::new(options.token.as_deref())?;
    let bad_address = |reason: String| ClientError::BadAddress { addr: addr.clone(), reason };
    let mut endpoint = Endpoint::from_shared(addr.clone()).map_err(|e| bad_address(error_chain(&e)))?;
    if addr.starts_with("https://") {
        // Several rustls providers are compiled in where prune-store is: choose ring.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let tls = match &options.ca_cert {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| ClientError::io(path, e))?;
                // Otherwise rustls only says, at the first call, that no issuer is known.
                if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
                    return Err(ClientError::Format {
                        path: path.clone(),
                        reason: "no certificate in it (a CA certificate is a PEM file with a \
                                 `-----BEGIN CERTIFICATE-----` block)"
                            .into(),
                    });
                }
                ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem))
            }
            None => ClientTlsConfig::new().with_native_roots(),
        };
        endpoint = endpoint.tls_config(tls).map_err(|e| bad_address(error_chain(&e)))?;
    } else if options.ca_cert.is_some() {
        return Err(bad_address("a CA certificate was given: use an https:// address".into()));
    }
    let endpoint = endpoint
        .connect_timeout(Duration::from_secs(10))
        // Keep-alives notice a server that vanished while a watch waits quietly.
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_while_idle(true)
        .initial_stream_window_size(Some(prune_proto::HTTP2_STREAM_WINDOW))
        .initial_connection_window_size(Some(prune_proto::HTTP2_CONNECTION_WINDOW))
        .max_frame_size(Some(prune_proto::HTTP2_MAX_FRAME));
    Ok((endpoint, addr, auth))
}

/// How to reach the server beyond its address.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// Sent as `authorization: Bearer <token>` on every call.
    pub token: Option<String>,
    /// PEM certificate(s) of the authority that signed the server's TLS certificate, for a
    /// `https://` address; without it the system's trusted roots are used.
    pub ca_cert: Option<std::path::PathBuf>,
    /// Deadline of each unary call; `None`: [`DEFAULT_TIMEOUT`].
    pub timeout: Option<Duration>,
}

impl Client {
    /// Connects to `addr` (`http://host:port` or `https://host:port`; a bare `host:port` means
    /// plain HTTP). `token`, when given, is sent as `authorization: Bearer <token>` on every call.
    pub async fn connect(addr: &str, token: Option<&str>) -> Result<Client> {
        let options = ConnectOptions { token: token.map(str::to_string), ..ConnectOptions::default() };
        Client::connect_with(addr, &options).await
    }

    /// [`Client::connect`] with TLS settings.
    pub async fn connect_with(addr: &str, options: &ConnectOptions) -> Result<Client> {
        let (endpoint, addr, auth) = endpoint(addr, options)?;
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| ClientError::Connect { addr: addr.clone(), reason: error_chain(&e) })?;
        Ok(Client::over(channel, auth, addr, options))
    }

    /// [`Client::connect_with`] without connecting yet: the first call connects (and fails
    /// like any call while the server is down), so a client can be made before its server is up.
    pub fn connect_lazy(addr: &str, options: &ConnectOptions) -> Result<Client> {
        let (endpoint, addr, auth) = endpoint(addr, options)?;
        Ok(Client::over(endpoint.connect_lazy(), auth, addr, options))
    }

    fn over(channel: Channel, auth: BearerToken, addr: String, options: &ConnectOptions) -> Client {
        let rpc = PruningServiceClient::with_interceptor(channel, auth).max_decoding_message_size(MAX_REPLY_BYTES);
        Client { rpc, addr, timeout: options.timeout.unwrap_or(DEFAULT_TIMEOUT) }
    }

    /// The server address, as connected to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// A handle for one call: tonic's generated methods take `&mut self`.
    pub(crate) fn rpc(&self) -> Rpc {
        self.rpc.clone()
    }

    /// Whether the server already stores the blob `id` (`sha256:<hex>`).
    pub async fn has_blob(&self, id: &str) -> Result<bool> {
        let reply = self.rpc().has_blob(pb::HasBlobRequest { id: id.to_string() }).await?;
        Ok(reply.into_inner().exists)
    }

    /// Creates a job. Paths in `spec` are not resolved here: local files must already be
    /// uploaded and referred to by blob id (see [`Client::submit_file`]).
    ///
    /// The spec goes over the wire as JSON text (`CreateJobRequest.spec_toml` accepts TOML or
    /// JSON): it is serialised by the same serde types the server parses it with, so every field
    /// arrives exactly as written, without a second hand-written mapping to keep in step.
    pub async fn submit(&self, spec: &JobSpec) -> Result<JobInfo> {
        self.submit_with(spec, &SubmitOptions::default()).await
    }

    /// [`Client::submit`] with labels and a priority. The request carries an idempotency key
    /// (a fresh request id unless `options` gives one), so it is retried safely while the
    /// server is UNAVAILABLE (restarting, a node going away): a retry returns the job the first
    /// try made instead of making a second.
    pub async fn submit_with(&self, spec: &JobSpec, options: &SubmitOptions) -> Result<JobInfo> {
        let json = serde_json::to_string(spec).expect("a JobSpec always serialises");
        let request = pb::CreateJobRequest {
            source: Some(pb::create_job_request::Source::SpecToml(json)),
            request_id: options.request_id.clone().unwrap_or_else(new_request_id),
            labels: options.labels.clone().into_iter().collect(),
            priority: options.priority,
            validate_only: false,
        };
        let mut backoff = Backoff::new();
        loop {
            match self.rpc().create_job(self.deadline(request.clone())).await {
                Ok(reply) => return reply.into_inner().try_into(),
                Err(status) if status.code() == tonic::Code::Unavailable => {
                    let error = ClientError::from(status);
                    let Some(delay) = error.retry_delay().or_else(|| backoff.next_delay()) else { return Err(error) };
                    if backoff.attempt() > MAX_SUBMIT_RETRIES {
                        return Err(error);
                    }
                    tokio::time::sleep(delay).await;
                }
                Err(status) => return Err(status.into()),
            }
        }
    }

    /// A unary call's request with the client's deadline (`grpc-timeout`).
    pub(crate) fn deadline<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.timeout);
        request
    }

    pub async fn get_job(&self, id: &str) -> Result<JobInfo> {
        self.rpc().get_job(pb::GetJobRequest { id: id.to_string() }).await?.into_inner().try_into()
    }

    /// Every job, newest first.
    pub async fn list_jobs(&self) -> Result<Vec<JobInfo>> {
        self.list_jobs_filtered("").await
    }

    /// The jobs that pass an AIP-160 `filter` (e.g. `labels.team = "vision" AND state =
    /// RUNNING`; empty: all), newest first, without their specs.
    pub async fn list_jobs_filtered(&self, filter: &str) -> Result<Vec<JobInfo>> {
        let mut jobs: Vec<JobInfo> = Vec::new();
        let mut page_token = String::new();
        loop {
            let request = pb::ListJobsRequest {
                page_size: LIST_PAGE_SIZE,
                page_token,
                state: 0,
                filter: filter.to_string(),
                view: pb::JobView::Basic.into(),
            };
            let page = self.rpc().list_jobs(self.deadline(request)).await?.into_inner();
            for job in page.jobs {
                jobs.push(job.try_into()?);
            }
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        // The server already sends newest first; sorting again keeps that true across pages.
        jobs.sort_by(|a, b| b.created_unix_ms.cmp(&a.created_unix_ms).then_with(|| b.id.cmp(&a.id)));
        Ok(jobs)
    }

    /// Cancels a queued or running job; a finished job is returned unchanged.
    pub async fn cancel(&self, id: &str) -> Result<JobInfo> {
        self.rpc().cancel_job(pb::CancelJobRequest { id: id.to_string() }).await?.into_inner().try_into()
    }

    /// The job's recorded time series, ordered by name then step. `name_prefix` (e.g.
    /// `sparsity/`) keeps only the matching series.
    pub async fn metrics(&self, job_id: &str, name_prefix: Option<&str>) -> Result<Vec<MetricRecord>> {
        let mut points = Vec::new();
        let mut page_token = String::new();
        loop {
            let request = pb::GetMetricsRequest {
                job_id: job_id.to_string(),
                name_prefix: name_prefix.unwrap_or_default().to_string(),
                page_size: 0,
                page_token,
            };
            let reply = self.rpc().get_metrics(self.deadline(request)).await?.into_inner();
            points.extend(reply.points.into_iter().map(MetricRecord::from));
            if reply.next_page_token.is_empty() {
                return Ok(points);
            }
            page_token = reply.next_page_token;
        }
    }

    /// Deletes a finished job with its metrics, logs and files; a queued or running job is
    /// refused (cancel it first).
    pub async fn delete(&self, id: &str) -> Result<()> {
        self.rpc().delete_job(self.deadline(pb::DeleteJobRequest { id: id.to_string() })).await?;
        Ok(())
    }

    /// The job's worker log lines (every attempt, in order); with `follow`, the stream stays
    /// open until the job ends.
    pub async fn logs(&self, job_id: &str, follow: bool) -> Result<tonic::Streaming<pb::LogLine>> {
        let request = pb::StreamJobLogsRequest { job_id: job_id.to_string(), follow, after_attempt: 0, after_line: 0 };
        Ok(self.rpc().stream_job_logs(request).await?.into_inner())
    }

    /// What the server is and allows.
    pub async fn server_info(&self) -> Result<pb::ServerInfo> {
        Ok(self.rpc().get_server_info(self.deadline(pb::GetServerInfoRequest {})).await?.into_inner())
    }

    /// What a SUCCEEDED job pruned and the sizes of its artifacts.
    pub async fn report(&self, job_id: &str) -> Result<Report> {
        let reply = self.rpc().get_report(pb::GetReportRequest { job_id: job_id.to_string() }).await?;
        Ok(reply.into_inner().into())
    }
}
