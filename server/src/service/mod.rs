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

use crate::admission::{self, Defaults};
use crate::blobs::{BlobId, BlobStore};
use crate::config::DataDir;
use crate::ids::is_job_id;
use crate::live::Live;
use crate::scheduler::SchedulerHandle;
use crate::storage::{BlobRecord, Db, JobRecord, JobState};
use crate::views;

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
    pub data_dir: DataDir,
    pub scheduler: SchedulerHandle,
    pub defaults: Defaults,
    /// Cancelled at shutdown: ends long-lived streams so the server can drain.
    pub shutdown: CancellationToken,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

impl Service {
    pub fn new(shared: Shared) -> Self {
        Service { shared: Arc::new(shared) }
    }

    /// The stored job; NOT_FOUND when there is none.
    async fn record(&self, id: &str) -> Result<JobRecord, Status> {
        if id.is_empty() {
            return Err(Status::invalid_argument("id: required"));
        }
        if !is_job_id(id) {
            return Err(job_not_found(id));
        }
        self.shared.db.job(id).await?.ok_or_else(|| job_not_found(id))
    }

    /// The job as clients see it: row, live progress, artifacts.
    async fn view(&self, record: &JobRecord) -> Result<pb::Job, Status> {
        let artifacts =
            if record.state == JobState::Succeeded { self.shared.db.artifacts(&record.id).await? } else { Vec::new() };
        Ok(views::job(record, self.shared.live.get(&record.id).as_ref(), &artifacts))
    }

    async fn job(&self, id: &str) -> Result<pb::Job, Status> {
        let record = self.record(id).await?;
        self.view(&record).await
    }

    async fn blob(&self, id: &str) -> Result<Option<BlobRecord>, Status> {
        let id = BlobId::parse(id)?;
        Ok(self.shared.db.blob(id.as_str()).await?)
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
        let mut stream = request.into_inner();
        let header = match stream.message().await? {
            Some(pb::UploadBlobRequest { part: Some(Part::Header(h)) }) => h,
            _ => return Err(Status::invalid_argument("the first message must be the header (size and sha256)")),
        };
        // Accept `sha256:<hex>` and upper case too: clients print ids, not bare digests.
        let sha256 = header.sha256.trim_start_matches("sha256:").to_ascii_lowercase();
        let mut upload = self.shared.blobs.begin(header.size, &sha256).await?;
        while let Some(message) = stream.message().await? {
            match message.part {
                Some(Part::Data(data)) => upload.write(&data).await?,
                Some(Part::Header(_)) => {
                    return Err(Status::invalid_argument("only the first message may be a header"))
                }
                None => {}
            }
        }
        let (id, size, path) = upload.finish().await?;
        let record = BlobRecord { id: id.to_string(), size, path: self.shared.data_dir.relative(&path) };
        self.shared.db.insert_blob(&record).await?;
        tracing::info!(blob = %id, size, "blob stored");
        Ok(Response::new(blob_message(record)))
    }

    async fn stat_blob(&self, request: Request<pb::StatBlobRequest>) -> Result<Response<pb::Blob>, Status> {
        let id = request.into_inner().id;
        let blob = self.blob(&id).await?.ok_or_else(|| Status::not_found(format!("blob {id} not found")))?;
        Ok(Response::new(blob_message(blob)))
    }

    async fn has_blob(&self, request: Request<pb::HasBlobRequest>) -> Result<Response<pb::HasBlobResponse>, Status> {
        let blob = self.blob(&request.into_inner().id).await?;
        Ok(Response::new(pb::HasBlobResponse { exists: blob.is_some(), size: blob.map_or(0, |b| b.size) }))
    }

    async fn create_job(&self, request: Request<pb::CreateJobRequest>) -> Result<Response<pb::Job>, Status> {
        use pb::create_job_request::Source;
        let spec = match request.into_inner().source {
            Some(Source::Spec(spec)) => crate::convert::spec_from_proto(spec),
            Some(Source::SpecToml(text)) => admission::parse_text(&text),
            None => return Err(Status::invalid_argument("spec: required (or spec_toml)")),
        }
        .map_err(admission::AdmissionError::Spec)?;
        let s = &self.shared;
        let record = admission::admit(&s.db, &s.blobs, s.defaults, spec).await?;
        tracing::info!(job_id = record.id, name = record.name, "job queued");
        s.scheduler.job_queued();
        Ok(Response::new(self.view(&record).await?))
    }

    async fn get_job(&self, request: Request<pb::GetJobRequest>) -> Result<Response<pb::Job>, Status> {
        Ok(Response::new(self.job(&request.into_inner().id).await?))
    }

    async fn list_jobs(&self, request: Request<pb::ListJobsRequest>) -> Result<Response<pb::ListJobsResponse>, Status> {
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
        let state = views::state_from_proto(request.state);
        // One more than asked tells whether there is a next page.
        let mut records = self.shared.db.list_jobs(state, before, page_size + 1).await?;
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
        let id = request.into_inner().id;
        let record = self.record(&id).await?;
        if !record.state.is_terminal() {
            let s = &self.shared;
            if s.db.finish_job(&id, &[JobState::Queued, JobState::Running], JobState::Cancelled, None, None).await? {
                tracing::info!(job_id = id, was = %record.state, "job cancelled");
                s.scheduler.job_cancelled(&id);
                s.live.state_changed(&id);
            }
        }
        Ok(Response::new(self.job(&id).await?))
    }

    type WatchJobStream = BoxStream<pb::JobEvent>;

    async fn watch_job(&self, request: Request<pb::WatchJobRequest>) -> Result<Response<Self::WatchJobStream>, Status> {
        let id = request.into_inner().id;
        // Subscribe before reading the job, so that nothing happens unseen in between.
        let updates = self.shared.live.subscribe();
        let first = self.job(&id).await?;
        Ok(Response::new(Box::pin(watch::stream(self.clone(), id, first, updates))))
    }

    async fn get_metrics(
        &self,
        request: Request<pb::GetMetricsRequest>,
    ) -> Result<Response<pb::GetMetricsResponse>, Status> {
        let request = request.into_inner();
        let record = self.record(&request.job_id).await?;
        let points = self.shared.db.metrics(&record.id, &request.name_prefix).await?;
        let points =
            points.into_iter().map(|p| pb::MetricPoint { step: p.step, name: p.name, value: p.value }).collect();
        Ok(Response::new(pb::GetMetricsResponse { points }))
    }

    async fn get_report(&self, request: Request<pb::GetReportRequest>) -> Result<Response<pb::Report>, Status> {
        let record = self.record(&request.into_inner().job_id).await?;
        match (&record.state, &record.report) {
            (JobState::Succeeded, Some(report)) => Ok(Response::new(views::report(report))),
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
        let request = request.into_inner();
        let record = self.record(&request.job_id).await?;
        let stream =
            download::stream(&self.shared.db, &self.shared.data_dir, &record, &request.format, request.read_offset)
                .await?;
        Ok(Response::new(Box::pin(stream)))
    }
}
