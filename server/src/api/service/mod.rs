//! The `pruning.v1.PruningService` gRPC service: argument checks and status codes over the
//! storage, blob store, scheduler and live state. No job logic lives here.

mod archive;
mod download;
mod errors;
mod info;
mod logs;
mod tracked;
mod watch;

use std::pin::Pin;
use std::sync::Arc;

use prune_proto as pb;
use prune_proto::pruning_service_server::PruningService;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::api::auth::{tenant, Tenant};
use crate::api::filter;
use crate::api::status::{self, Reason};
use crate::api::views;
use crate::config::LimitArgs;
use crate::files::uploads::{BlobError, BlobId, BlobStore};
use crate::jobs::admission::{self, Defaults};
use crate::jobs::ids::is_job_id;
use crate::jobs::live::Live;
use crate::jobs::retention;
use crate::jobs::scheduler::SchedulerHandle;
use crate::storage::{BlobRecord, Db, Deleted, JobRecord, JobState};

pub use errors::job_not_found;
pub use info::{probe_devices, Facts};

const DEFAULT_PAGE_SIZE: u32 = 50;
const MAX_PAGE_SIZE: u32 = 1000;
const DEFAULT_METRICS_PAGE: u32 = 10_000;
const MAX_METRICS_PAGE: u32 = 100_000;

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
    /// What GetServerInfo reports beyond the limits.
    pub facts: info::Facts,
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
            return Err(status::invalid_argument(Reason::ArgumentInvalid, "id", "id: required"));
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
            _ => {
                let message = "the first message must be the header (size and sha256)";
                return Err(status::invalid_argument(Reason::ArgumentInvalid, "header", message));
            }
        };
        let max = self.shared.limits.max_upload_bytes;
        if header.size > max {
            let message = format!("upload of {} bytes: this server takes blobs of at most {max} bytes", header.size);
            return Err(status::quota(Reason::UploadTooLarge, message, "upload-size"));
        }
        // Accept `sha256:<hex>` and upper case too: clients print ids, not bare digests.
        let normalize = |sha256: &str| sha256.trim_start_matches("sha256:").to_ascii_lowercase();
        let sha256 = normalize(&header.sha256);
        let blobs = &self.shared.blobs;
        let mut upload = if sha256.is_empty() {
            if header.offset != 0 {
                let message = "a resume (offset > 0) needs the sha256 in its header";
                return Err(status::invalid_argument(Reason::ArgumentInvalid, "header.offset", message));
            }
            blobs.begin_deferred(header.size)?
        } else {
            blobs.begin(tenant.as_str(), header.size, &sha256, header.offset).await?
        };
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
                Some(Part::Data(data)) => upload.write(data).await?,
                Some(Part::Checksum(checksum)) => {
                    if !upload.awaits_checksum() {
                        return Err(BlobError::ChecksumTwice.into());
                    }
                    let sha256 = normalize(&checksum);
                    if let Ok(id) = BlobId::parse(&format!("sha256:{sha256}")) {
                        // The caller has it already: no need for the rest.
                        if let Some(blob) = self.blob(&tenant, id.as_str()).await? {
                            tracing::info!(blob = %blob.id, %tenant, "upload ended early: the blob is stored already");
                            return Ok(Response::new(blob_message(blob)));
                        }
                    }
                    // An interrupted upload of that blob: the client resumes it instead (it
                    // sends again at most what it sent before its hash was done).
                    let held = blobs.resumable_len(tenant.as_str(), &sha256).await;
                    if held > 0 {
                        let message = format!(
                            "an interrupted upload of this blob holds {held} bytes: resume it (a header with the sha256 and offset {held})"
                        );
                        let metadata = [("uploaded".to_string(), held.to_string())].into();
                        return Err(status::detailed_with(
                            Code::Aborted,
                            Reason::UploadResumable,
                            message,
                            metadata,
                            |_| {},
                        ));
                    }
                    upload.set_checksum(blobs, tenant.as_str(), &sha256).await.map_err(|e| match e {
                        BlobError::InvalidChecksum(_) => {
                            status::invalid_argument(Reason::ArgumentInvalid, "checksum", e.to_string())
                        }
                        e => e.into(),
                    })?;
                }
                Some(Part::Header(_)) => {
                    let message = "only the first message may be a header";
                    return Err(status::invalid_argument(Reason::ArgumentInvalid, "header", message));
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
        let blob = self
            .blob(&tenant, &id)
            .await?
            .ok_or_else(|| status::error(Code::NotFound, Reason::BlobNotFound, format!("blob {id} not found")))?;
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
        let request = request.into_inner();
        let size = match &request.source {
            Some(Source::Spec(spec)) => prost::Message::encoded_len(spec),
            Some(Source::SpecToml(text)) => text.len(),
            None => 0,
        };
        if size > s.limits.max_spec_bytes {
            let message = format!(
                "job spec of {size} bytes: this server takes specs of at most {} bytes",
                s.limits.max_spec_bytes
            );
            return Err(status::quota(Reason::SpecTooLarge, message, "spec-size"));
        }
        let spec = match request.source {
            Some(Source::Spec(spec)) => crate::api::convert::spec_from_proto(spec),
            Some(Source::SpecToml(text)) => admission::parse_text(&text),
            None => return Err(status::invalid_argument(Reason::SpecInvalid, "spec", "spec: required (or spec_toml)")),
        }
        .map_err(admission::AdmissionError::Spec)?;
        let submission = admission::Submission {
            spec,
            request_id: Some(request.request_id).filter(|id| !id.is_empty()),
            labels: request.labels.into_iter().collect(),
            priority: request.priority,
            validate_only: request.validate_only,
        };
        let queue = admission::Queue { tenant: &tenant, max_queued: s.limits.max_queued_per_tenant };
        match admission::admit(&s.db, &s.blobs, s.defaults, queue, submission).await? {
            admission::Admitted::Queued(record) => {
                tracing::info!(job_id = record.id, name = record.name, %tenant, "job queued");
                s.scheduler.job_queued();
                Ok(Response::new(self.view(&record).await?))
            }
            admission::Admitted::Existing(record) => {
                tracing::info!(job_id = record.id, %tenant, "a retried CreateJob: returning the job it made");
                Ok(Response::new(self.view(&record).await?))
            }
            admission::Admitted::Validated { spec, warnings } => Ok(Response::new(pb::Job {
                name: spec.name.clone().unwrap_or_default(),
                spec: Some(crate::api::convert::spec_to_proto(&spec)),
                warnings,
                ..pb::Job::default()
            })),
        }
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
        let bad_filter = |message: String| status::invalid_argument(Reason::FilterInvalid, "filter", message);
        let mut job_filter = filter::parse(&request.filter).map_err(|e| bad_filter(e.to_string()))?;
        // STATE_UNSPECIFIED (and unknown values): no condition.
        if let Ok(state) = prune_proto::conversions::job_state(request.state) {
            if job_filter.state.is_some_and(|s| s != state) {
                return Err(bad_filter("filter: its state differs from the request's `state`".into()));
            }
            job_filter.state = Some(state);
        }
        let full = request.view == pb::JobView::Full as i32;
        let fingerprint = filter::fingerprint(&[&request.filter, &request.state.to_string(), &full.to_string()]);
        let before = filter::page_position(&request.page_token, &fingerprint)
            .map_err(|e| status::invalid_argument(Reason::PageTokenInvalid, "page_token", e))?;
        // One more than asked tells whether there is a next page.
        let mut records =
            self.shared.db.list_jobs(tenant.as_str(), &job_filter, before.as_deref(), page_size + 1).await?;
        let more = records.len() > page_size as usize;
        records.truncate(page_size as usize);
        let next_page_token = match records.last() {
            Some(last) if more => filter::page_token(&fingerprint, &last.id),
            _ => String::new(),
        };
        let mut jobs = Vec::with_capacity(records.len());
        for record in &records {
            let mut job = self.view(record).await?;
            if !full {
                job.spec = None;
            }
            jobs.push(job);
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
        let page_size = match request.page_size {
            0 => DEFAULT_METRICS_PAGE,
            n => n.min(MAX_METRICS_PAGE),
        };
        let fingerprint = filter::fingerprint(&[&record.id, &request.name_prefix]);
        let invalid = |e: String| status::invalid_argument(Reason::PageTokenInvalid, "page_token", e);
        let after = filter::page_position(&request.page_token, &fingerprint).map_err(invalid)?;
        // The position is `STEP NAME` (the name may hold anything; the step is an integer).
        let after = match &after {
            Some(position) => {
                let parsed = position.split_once(' ').and_then(|(step, name)| Some((name, step.parse::<i64>().ok()?)));
                Some(parsed.ok_or_else(|| invalid("page_token: not a token this call returned".into()))?)
            }
            None => None,
        };
        let mut points = self.shared.db.metrics_page(&record.id, &request.name_prefix, after, page_size + 1).await?;
        let more = points.len() > page_size as usize;
        points.truncate(page_size as usize);
        let next_page_token = match points.last() {
            Some(last) if more => filter::page_token(&fingerprint, &format!("{} {}", last.step, last.name)),
            _ => String::new(),
        };
        let points =
            points.into_iter().map(|p| pb::MetricPoint { step: p.step, name: p.name, value: p.value }).collect();
        Ok(Response::new(pb::GetMetricsResponse { points, next_page_token }))
    }

    async fn get_report(&self, request: Request<pb::GetReportRequest>) -> Result<Response<pb::Report>, Status> {
        let tenant = tenant(&request)?;
        let record = self.record(&tenant, &request.into_inner().job_id).await?;
        match (&record.state, &record.report) {
            (JobState::Succeeded, Some(report)) => Ok(Response::new(pb::Report::from(report))),
            (state, _) => Err(status::no_results(&record.id, *state, "report")),
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
        let stream = download::stream(
            &self.shared.db,
            self.shared.blobs.store(),
            &record,
            &request.format,
            &request.file_name,
            request.read_offset,
        )
        .await?;
        Ok(Response::new(Box::pin(stream)))
    }

    async fn delete_job(
        &self,
        request: Request<pb::DeleteJobRequest>,
    ) -> Result<Response<pb::DeleteJobResponse>, Status> {
        let tenant = tenant(&request)?;
        let id = request.into_inner().id;
        let record = self.record(&tenant, &id).await?;
        match retention::delete_job(&self.shared.db, self.shared.blobs.store(), tenant.as_str(), &record.id).await? {
            Deleted::Yes => Ok(Response::new(pb::DeleteJobResponse {})),
            Deleted::NotFound => Err(job_not_found(&id)),
            Deleted::Active(state) => {
                let message = format!("job {id} is {state}: cancel it first (CancelJob), then delete it");
                let metadata = [("job_id".to_string(), id.clone()), ("state".to_string(), state.to_string())].into();
                Err(status::detailed_with(Code::FailedPrecondition, Reason::JobActive, message, metadata, |_| {}))
            }
        }
    }

    type StreamJobLogsStream = BoxStream<pb::LogLine>;

    async fn stream_job_logs(
        &self,
        request: Request<pb::StreamJobLogsRequest>,
    ) -> Result<Response<Self::StreamJobLogsStream>, Status> {
        let tenant = tenant(&request)?;
        let request = request.into_inner();
        let record = self.record(&tenant, &request.job_id).await?;
        let after = (request.after_attempt > 0).then_some((request.after_attempt, request.after_line));
        Ok(Response::new(Box::pin(logs::stream(self.clone(), tenant, record.id, after, request.follow))))
    }

    async fn get_server_info(
        &self,
        request: Request<pb::GetServerInfoRequest>,
    ) -> Result<Response<pb::ServerInfo>, Status> {
        tenant(&request)?;
        Ok(Response::new(info::server_info(&self.shared).await))
    }

    async fn start_tracked_run(
        &self,
        request: Request<pb::StartTrackedRunRequest>,
    ) -> Result<Response<pb::TrackedRun>, Status> {
        let tenant = tenant(&request)?;
        Ok(Response::new(self.start_tracked(&tenant, request.into_inner()).await?))
    }

    async fn report_tracked_run(
        &self,
        request: Request<pb::ReportTrackedRunRequest>,
    ) -> Result<Response<pb::ReportTrackedRunResponse>, Status> {
        let tenant = tenant(&request)?;
        Ok(Response::new(self.report_tracked(&tenant, request.into_inner()).await?))
    }

    async fn finish_tracked_run(
        &self,
        request: Request<pb::FinishTrackedRunRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let tenant = tenant(&request)?;
        Ok(Response::new(self.finish_tracked(&tenant, request.into_inner()).await?))
    }

    async fn fail_tracked_run(&self, request: Request<pb::FailTrackedRunRequest>) -> Result<Response<pb::Job>, Status> {
        let tenant = tenant(&request)?;
        Ok(Response::new(self.fail_tracked(&tenant, request.into_inner()).await?))
    }
}
