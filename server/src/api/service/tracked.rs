//! The tracked-run calls (StartTrackedRun, ReportTrackedRun, FinishTrackedRun,
//! FailTrackedRun): proto -> `jobs::tracked` and back. Their logic is in `jobs/tracked.rs`.

use prune_core::domain::{MetricPoint, TensorSparsity};
use prune_proto as pb;
use tonic::Status;

use super::Service;
use crate::api::auth::Tenant;
use crate::api::status::{self, Reason};
use crate::jobs::admission::AdmissionError;
use crate::jobs::ids::is_job_id;
use crate::jobs::tracked::{self, Report, StartRequest};

impl Service {
    pub(super) async fn start_tracked(
        &self,
        tenant: &Tenant,
        r: pb::StartTrackedRunRequest,
    ) -> Result<pb::TrackedRun, Status> {
        use pb::start_tracked_run_request::Source;
        let s = &self.shared;
        let size = match &r.source {
            Some(Source::Spec(spec)) => prost::Message::encoded_len(spec),
            Some(Source::SpecToml(text)) => text.len(),
            None => 0,
        };
        if size > s.limits.max_spec_bytes {
            let message =
                format!("spec of {size} bytes: this server takes specs of at most {} bytes", s.limits.max_spec_bytes);
            return Err(status::quota(Reason::SpecTooLarge, message, "spec-size"));
        }
        let spec = match r.source {
            Some(Source::Spec(spec)) => crate::api::convert::spec_from_proto(spec),
            Some(Source::SpecToml(text)) => prune_core::validate::parse_tracked(&text),
            None => {
                return Err(status::invalid_argument(
                    Reason::SpecInvalid,
                    "spec",
                    "spec: required (or spec_toml): the [pruning] table the loop prunes with",
                ))
            }
        }
        .map_err(AdmissionError::Spec)?;
        let request = StartRequest {
            spec,
            request_id: Some(r.request_id).filter(|id| !id.is_empty()),
            labels: r.labels.into_iter().collect(),
            total_steps: r.total_steps,
            client: r.client,
        };
        let started = tracked::start(&s.db, &s.live, s.defaults, tenant, request).await?;
        Ok(pb::TrackedRun {
            job: Some(self.view(&started.job).await?),
            session: started.session,
            reattached: started.reattached,
        })
    }

    pub(super) async fn report_tracked(
        &self,
        tenant: &Tenant,
        r: pb::ReportTrackedRunRequest,
    ) -> Result<pb::ReportTrackedRunResponse, Status> {
        check_id(&r.job_id)?;
        let report = Report {
            step: r.step,
            total_steps: r.total_steps,
            epoch: r.epoch,
            points: r.points.into_iter().map(|p| MetricPoint { step: p.step, name: p.name, value: p.value }).collect(),
            sparsity: r.sparsity.into_iter().map(TensorSparsity::from).collect(),
        };
        let state = tracked::report(&self.shared.db, &self.shared.live, tenant, &r.job_id, r.session, report).await?;
        Ok(pb::ReportTrackedRunResponse { state: pb::JobState::from(state).into() })
    }

    pub(super) async fn finish_tracked(
        &self,
        tenant: &Tenant,
        r: pb::FinishTrackedRunRequest,
    ) -> Result<pb::Job, Status> {
        check_id(&r.job_id)?;
        let s = &self.shared;
        let job = tracked::finish(&s.db, &s.live, tenant, &r.job_id, r.session, &r.model_blob).await?;
        s.scheduler.job_queued();
        self.view(&job).await
    }

    pub(super) async fn fail_tracked(&self, tenant: &Tenant, r: pb::FailTrackedRunRequest) -> Result<pb::Job, Status> {
        check_id(&r.job_id)?;
        let s = &self.shared;
        let job = tracked::fail(&s.db, &s.live, tenant, &r.job_id, r.session, &r.reason).await?;
        self.view(&job).await
    }
}

fn check_id(id: &str) -> Result<(), Status> {
    if id.is_empty() {
        return Err(status::invalid_argument(Reason::ArgumentInvalid, "job_id", "job_id: required"));
    }
    if !is_job_id(id) {
        return Err(super::job_not_found(id));
    }
    Ok(())
}
