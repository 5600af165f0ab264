//! The `pruning.v1.PruningService` gRPC service: argument checks and status codes over the
//! storage, blob store, scheduler and live state. No job logic lives here.

mod download;
mod errors;
mod watch;

use std::pin::Pin;
use std::sync::Arc;

use prune_proto as pb;
use prune_proto::pruning_service_server::PruningService;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::api::auth::{tenant, Tenant};
use crate::api::views;
use crate::config::LimitArgs;
use crate::files::uploads::{BlobId, BlobStore};
use crate::jobs::admission::{self, Defaults};
use crate::jobs::ids::is_job_id;
use crate::jobs::live::Live;
use crate::jobs::scheduler::SchedulerHandle;
use crate::storage::{BlobRecord, Db, JobRecord, JobState};

pub use errors::job_not_found;

const DEFAULT_PAGE_SIZE: u32 = 50;
const MAX_PAGE_SIZE: u32 = 1000;

/// Everything the service needs; cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct Service {
    shared: Arc<Shared>,
}

pub struct Shared {
    pub db: Db,
    pub blobs: BlobStore,
    pub live: Live,
    pub scheduler: SchedulerHandle,
    pub defaults: Defaults,
    pub limits: LimitArgs,
    /// Cancelled at shutdown: ends long-lived streams so the server can drain.
    pub shutdown: CancellationToken,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

impl Service {
    pub fn new(shared: Shared) -> Self {
        Service { shared: Arc::new(shared) }
    }

    /// The tenant's stored job; NOT_FOUND when there is none, or when it is someone else's
    /// (with the same message: ids must not leak what other tenants have).
    async fn record(&self, tenant: &Tenant, id: &str) -> Result<JobRecord, Status> {
        if id.is_empty() {
            return Err(Status::invalid_argument("id: required"));
        }
        if !is_job_id(id) {
            return Err(job_not_found(id));
        }
        self.shared.db.tenant_job(tenant.as_str(), id).await?.ok_or_else(|| job_not_found(id))
    }

    /// The job as clients see it: row, live progress, artifacts.
    async fn view(&self, record: &JobRecord) -> Result<pb::Job, Status> {
        let artifacts =
            if record.state == JobState::Succeeded { self.shared.db.artifacts(&record.id).await? } else { Vec::new() };
        let attempts = if record.attempts > 0 { self.shared.db.attempts(&record.id).await? } else { Vec::new() };
        Ok(views::job(record, self.shared.live.get(&record.id).as_ref(), &artifacts, &attempts))
    }

    async fn job(&self, tenant: &Tenant, id: &str) -> Result<pb::Job, Status> {
        let record = self.record(tenant, id).await?;
        self.view(&record).await
    }

    async fn blob(&self, tenant: &Tenant, id: &str) -> Result<Option<BlobRecord>, Status> {
        let id = BlobId::parse(id)?;
        Ok(self.shared.db.tenant_blob(tenant.as_str(), id.as_str()).await?)
    }
}

fn blob_message(b: BlobRecord) -> pb::Blob {
    pb::Blob { id: b.id, size: b.size }
}

#[tonic::async_trait]
impl PruningService for Service {
    async fn upload_blob(
        &self,
        request: Request<Streaming<pb::UploadBlobRequest>>,
    ) -> Result<Response<pb::Blob>, Status> {
        use pb::upload_blob_request::Part;
        let tenant = tenant(&request)?;
        let mut stream = request.into_inner();
        let header = match stream.message().await? {
            Some(pb::UploadBlobRequest { part: Some(Part::Header(h)) }) => h,
            _ => return Err(Status::invalid_argument("the first message must be the header (size and sha256)")),
        };
        let max = self.shared.limits.max_upload_bytes;
        if header.size > max {
            return Err(Status::resource_exhausted(format!(
                "upload of {} bytes: this server takes blobs of at most {max} bytes",
                header.size
            )));
        }
        // Accept `sha256:<hex>` and upper case too: clients print ids, not bare digests.
        let sha256 = header.sha256.trim_start_matches("sha256:").to_ascii_lowercase();
        let mut upload = self.shared.blobs.begin(tenant.as_str(), header.size, &sha256, header.offset).await?;
        loop {
            let message = match stream.message().await {
                Ok(Some(message)) => message,
                Ok(None) => break,
                Err(status) => {
                    // Broken off: keep what arrived where any node can resume it.
                    upload.suspend().await;
                    return Err(status);
                }
            };
            match message.part {
                Some(Part::Data(data)) => upload.write(&data).await?,
                Some(Part::Header(_)) => {
                    return Err(Status::invalid_argument("only the first message may be a header"))
                }
                None => {}
            }
        }
        let (id, size, key) = upload.finish().await?;
        let record = BlobRecord { id: id.to_string(), size, path: key.to_string() };
        self.shared.db.insert_blob(tenant.as_str(), &record).await?;
        tracing::info!(blob = %id, size, %tenant, "blob stored");
        Ok(Response::new(blob_message(record)))
    }

    async fn stat_blob(&self, request: Request<pb::StatBlobRequest>) -> Result<Response<pb::Blob>, Status> {
        let tenant = tenant(&request)?;
        let id = request.into_inner().id;
        let blob = self.blob(&tenant, &id).await?.ok_or_else(|| Status::not_found(format!("blob {id} not found")))?;
        Ok(Response::new(blob_message(blob)))
    }

    async fn has_blob(&self, request: Request<pb::HasBlobRequest>) -> Result<Response<pb::HasBlobResponse>, Status> {
        let tenant = tenant(&request)?;
        let id = request.into_inner().id;
        let reply = match self.blob(&tenant, &id).await? {
            Some(blob) => pb::HasBlobResponse { exists: true, size: blob.size, uploaded: blob.size },
            None => {
                let hex = BlobId::parse(&id)?.hex().to_string();
                let uploaded = self.shared.blobs.partial_len(tenant.as_str(), &hex).await;
                pb::HasBlobResponse { exists: false, size: 0, uploaded }
            }
        };
        Ok(Response::new(reply))
    }

    async fn create_job(&self, request: Request<pb::CreateJobRequest>) -> Result<Response<pb::Job>, Status> {
        use pb::create_job_request::Source;
        let tenant = tenant(&request)?;
        let s = &self.shared;
        let source = request.into_inner().source;
        let size = match &source {
            Some(Source::Spec(spec)) => prost::Message::encoded_len(spec),
            Some(Source::SpecToml(text)) => text.len(),
            None => 0,
        };
        if size > s.limits.max_spec_bytes {
            return Err(Status::resource_exhausted(format!(
                "job spec of {size} bytes: this server takes specs of at most {} bytes",
                s.limits.max_spec_bytes
            )));
        }
        let spec = match source {
            Some(Source::Spec(spec)) => crate::api::convert::spec_from_proto(spec),
            Some(Source::SpecToml(text)) => admission::parse_text(&text),
            None => return Err(Status::invalid_argument("spec: required (or spec_toml)")),
        }
        .map_err(admission::AdmissionError::Spec)?;
        let queue = admission::Queue { tenant: &tenant, max_queued: s.limits.max_queued_per_tenant };
        let record = admission::admit(&s.db, &s.blobs, s.defaults, queue, spec).await?;
        tracing::info!(job_id = record.id, name = record.name, %tenant, "job queued");
        s.scheduler.job_queued();
        Ok(Response::new(self.view(&record).await?))
    }

    async fn get_job(&self, request: Request<pb::GetJobRequest>) -> Result<Response<pb::Job>, Status> {
        let tenant = tenant(&request)?;
        Ok(Response::new(self.job(&tenant, &request.into_inner().id).await?))
    }

    async fn list_jobs(&self, request: Request<pb::ListJobsRequest>) -> Result<Response<pb::ListJobsResponse>, Status> {
        let tenant = tenant(&request)?;
        let request = request.into_inner();
        let page_size = match request.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        let before = match request.page_token.as_str() {
            "" => None,
            token if is_job_id(token) => Some(token),
            _ => return Err(Status::invalid_argument("page_token: not a token from ListJobs")),
        };
        // STATE_UNSPECIFIED (and unknown values): no filter.
        let state = prune_proto::conversions::job_state(request.state).ok();
        // One more than asked tells whether there is a next page.
        let mut records = self.shared.db.list_jobs(tenant.as_str(), state, before, page_size + 1).await?;
        let more = records.len() > page_size as usize;
        records.truncate(page_size as usize);
        let next_page_token =
            if more { records.last().map(|r| r.id.clone()).unwrap_or_default() } else { String::new() };
        let mut jobs = Vec::with_capacity(records.len());
        for record in &records {
            jobs.push(self.view(record).await?);
        }
        Ok(Response::new(pb::ListJobsResponse { jobs, next_page_token }))
    }

    async fn cancel_job(&self, request: Request<pb::CancelJobRequest>) -> Result<Response<pb::Job>, Status> {
        let tenant = tenant(&request)?;
        let id = request.into_inner().id;
        let record = self.record(&tenant, &id).await?;
        if !record.state.is_terminal() {
            let s = &self.shared;
            if s.db.finish_job(&id, &[JobState::Queued, JobState::Running], JobState::Cancelled, None, None).await? {
                tracing::info!(job_id = id, was = %record.state, "job cancelled");
                s.scheduler.job_cancelled(&id);
                s.live.state_changed(&id);
            }
        }
        Ok(Response::new(self.job(&tenant, &id).await?))
    }

    type WatchJobStream = BoxStream<pb::JobEvent>;

    async fn watch_job(&self, request: Request<pb::WatchJobRequest>) -> Result<Response<Self::WatchJobStream>, Status> {
        let tenant = tenant(&request)?;
        let id = request.into_inner().id;
        // Subscribe before reading the job, so that nothing happens unseen in between.
        let updates = self.shared.live.subscribe();
        let first = self.job(&tenant, &id).await?;
        Ok(Response::new(Box::pin(watch::stream(self.clone(), tenant, id, first, updates))))
    }

    async fn get_metrics(
        &self,
        request: Request<pb::GetMetricsRequest>,
    ) -> Result<Response<pb::GetMetricsResponse>, Status> {
        let tenant = tenant(&request)?;
        let request = request.into_inner();
        let record = self.record(&tenant, &request.job_id).await?;
        let points = self.shared.db.metrics(&record.id, &request.name_prefix).await?;
        let points =
            points.into_iter().map(|p| pb::MetricPoint { step: p.step, name: p.name, value: p.value }).collect();
        Ok(Response::new(pb::GetMetricsResponse { points }))
    }

    async fn get_report(&self, request: Request<pb::GetReportRequest>) -> Result<Response<pb::Report>, Status> {
        let tenant = tenant(&request)?;
        let record = self.record(&tenant, &request.into_inner().job_id).await?;
        match (&record.state, &record.report) {
            (JobState::Succeeded, Some(report)) => Ok(Response::new(pb::Report::from(report))),
            (state, _) => Err(Status::failed_precondition(format!(
                "job {} is {state}: a report exists once it has SUCCEEDED",
                record.id
            ))),
        }
    }

    type DownloadArtifactStream = BoxStream<pb::DownloadArtifactResponse>;

    async fn download_artifact(
        &self,
        request: Request<pb::DownloadArtifactRequest>,
    ) -> Result<Response<Self::DownloadArtifactStream>, Status> {
        let tenant = tenant(&request)?;
        let request = request.into_inner();
        let record = self.record(&tenant, &request.job_id).await?;
        let stream =
            download::stream(&self.shared.db, self.shared.blobs.store(), &record, &request.format, request.read_offset)
                .await?;
        Ok(Response::new(Box::pin(stream)))
    }
}
