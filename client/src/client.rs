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
use crate::types::{JobInfo, MetricRecord, Report};

type Rpc = PruningServiceClient<InterceptedService<Channel, BearerToken>>;

/// Largest reply accepted: a page of jobs with their specs can exceed tonic's 4 MiB default.
const MAX_REPLY_BYTES: usize = 64 << 20;

/// Jobs fetched per `ListJobs` page.
const LIST_PAGE_SIZE: u32 = 500;

/// A connection to a prune server. Cheap to clone: clones share the connection.
#[derive(Debug, Clone)]
pub struct Client {
    rpc: Rpc,
    addr: String,
}

/// How to reach the server beyond its address.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// Sent as `authorization: Bearer <token>` on every call.
    pub token: Option<String>,
    /// PEM certificate(s) of the authority that signed the server's TLS certificate, for a
    /// `https://` address; without it the system's trusted roots are used.
    pub ca_cert: Option<std::path::PathBuf>,
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
            .keep_alive_while_idle(true);
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| ClientError::Connect { addr: addr.clone(), reason: error_chain(&e) })?;
        let rpc = PruningServiceClient::with_interceptor(channel, auth).max_decoding_message_size(MAX_REPLY_BYTES);
        Ok(Client { rpc, addr })
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
        let json = serde_json::to_string(spec).expect("a JobSpec always serialises");
        let request = pb::CreateJobRequest { source: Some(pb::create_job_request::Source::SpecToml(json)) };
        self.rpc().create_job(request).await?.into_inner().try_into()
    }

    pub async fn get_job(&self, id: &str) -> Result<JobInfo> {
        self.rpc().get_job(pb::GetJobRequest { id: id.to_string() }).await?.into_inner().try_into()
    }

    /// Every job, newest first.
    pub async fn list_jobs(&self) -> Result<Vec<JobInfo>> {
        let mut jobs: Vec<JobInfo> = Vec::new();
        let mut page_token = String::new();
        loop {
            let request = pb::ListJobsRequest { page_size: LIST_PAGE_SIZE, page_token, state: 0 };
            let page = self.rpc().list_jobs(request).await?.into_inner();
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
        let request = pb::GetMetricsRequest {
            job_id: job_id.to_string(),
            name_prefix: name_prefix.unwrap_or_default().to_string(),
        };
        let reply = self.rpc().get_metrics(request).await?.into_inner();
        Ok(reply.points.into_iter().map(Into::into).collect())
    }

    /// What a SUCCEEDED job pruned and the sizes of its artifacts.
    pub async fn report(&self, job_id: &str) -> Result<Report> {
        let reply = self.rpc().get_report(pb::GetReportRequest { job_id: job_id.to_string() }).await?;
        Ok(reply.into_inner().into())
    }
}
