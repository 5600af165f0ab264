//! Tracked runs (docs/python.md): a training loop outside the service prunes in its own process
//! (the `prune` Python package) and reports to a job of kind `tracked`. Starting checks the spec
//! as admission checks a job's; reports become the job's progress and metrics; finishing hands
//! the uploaded weights to the scheduler, whose worker exports them as a one-shot job's
//! (`WorkerInputs.masks_applied`); a run whose client goes quiet fails after the timeout.

use std::collections::BTreeMap;
use std::time::Duration;

use prune_core::domain::{JobState, MetricPoint, TensorSparsity};
use prune_core::validate::{self, SpecErrors};
use prune_core::JobSpec;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::api::auth::Tenant;
use crate::jobs::admission::{self, AdmissionError, Defaults};
use crate::jobs::ids::new_job_id;
use crate::jobs::live::{Live, Progress};
use crate::storage::{
    now_ms, Db, JobRecord, NewTrackedRun, RequestKey, SessionWrite, StorageError, TrackedReport, TrackedStart,
};

/// Longest `client` description kept.
pub const MAX_CLIENT_CHARS: usize = 200;
/// Longest metric name a client may report.
pub const MAX_METRIC_NAME_CHARS: usize = 200;
/// Most points in one report.
pub const MAX_POINTS_PER_REPORT: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum TrackedError {
    /// The spec, the labels, the request id: as CreateJob's.
    #[error(transparent)]
    Admission(#[from] AdmissionError),
    /// A report field (points, names): INVALID_ARGUMENT.
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    /// Re-attaching a run that finished, is being exported or was cancelled.
    #[error("run {job_id} is {state}: it no longer takes reports; start a new run (another request id)")]
    Finished { job_id: String, state: JobState },
    /// A newer session re-attached to the run.
    #[error(
        "run {job_id} was re-attached by a newer session (now {current}); this session ({session}) no longer reports"
    )]
    Superseded { job_id: String, session: u32, current: u32 },
    #[error("run {job_id} is {state}: it takes no more reports")]
    Ended { job_id: String, state: JobState },
    /// No such tracked run for this tenant.
    #[error("tracked run {0} not found")]
    NotFound(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// A StartTrackedRun request, parsed.
#[derive(Debug, Clone, Default)]
pub struct StartRequest {
    pub spec: JobSpec,
    pub request_id: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub total_steps: i64,
    pub client: String,
}

/// A run started or re-attached: the job and the session that reports to it.
#[derive(Debug)]
pub struct Started {
    pub job: JobRecord,
    pub session: u32,
    pub reattached: bool,
}

/// Validates the run's spec (only name, pruning, export; every rule a job's follow) and starts
/// it, or re-attaches the run its request id made.
pub async fn start(
    db: &Db,
    live: &Live,
    defaults: Defaults,
    tenant: &Tenant,
    request: StartRequest,
) -> Result<Started, TrackedError> {
    let spec = &request.spec;
    validate::tracked(spec).map_err(AdmissionError::Spec)?;
    admission::check_request_id(request.request_id.as_deref())?;
    admission::check_labels(&request.labels)?;
    if request.total_steps < 0 {
        return Err(invalid("total_steps", format!("must be 0 (unknown) or more (got {})", request.total_steps)));
    }
    if request.client.chars().count() > MAX_CLIENT_CHARS || request.client.chars().any(char::is_control) {
        return Err(invalid("client", format!("at most {MAX_CLIENT_CHARS} printable characters")));
    }
    let spec_json = serde_json::to_string(spec).expect("specs serialise");
    let hash = {
        let asked = serde_json::json!({ "kind": "tracked", "spec": spec_json, "labels": request.labels });
        hex::encode(Sha256::digest(asked.to_string().as_bytes()))
    };
    let total_steps = (request.total_steps > 0).then_some(request.total_steps);
    let run = NewTrackedRun {
        id: new_job_id(),
        tenant: tenant.as_str().to_string(),
        name: spec.name.clone().unwrap_or_default(),
        spec_json,
        warnings: validate::warnings(spec, total_steps),
        // The export is one worker attempt, retried like any job's.
        max_attempts: defaults.max_attempts,
        threads: defaults.threads,
        request: request.request_id.clone().map(|id| RequestKey { id, hash }),
        labels: request.labels.clone(),
        total_steps: request.total_steps,
        client: request.client.clone(),
    };
    let (id, reattached) = match db.start_tracked_run(&run).await? {
        TrackedStart::Started(id) => (id, false),
        TrackedStart::Reattached(id) => (id, true),
        TrackedStart::RequestIdReused(job_id) => return Err(AdmissionError::RequestIdReused { job_id }.into()),
        TrackedStart::Finished { id, state } => return Err(TrackedError::Finished { job_id: id, state }),
    };
    let job = db.job(&id).await?.ok_or_else(|| TrackedError::NotFound(id.clone()))?;
    // A re-attached run's rate (for the ETA) starts over with the new session.
    live.attempt_ended(&id);
    live.state_changed(&id);
    let session = job.session;
    tracing::info!(job_id = id, session, reattached, client = request.client, "tracked run started");
    Ok(Started { job, session, reattached })
}

/// One report as the client sent it.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub step: i64,
    pub total_steps: Option<i64>,
    pub epoch: Option<i64>,
    pub points: Vec<MetricPoint>,
    pub sparsity: Vec<TensorSparsity>,
}

/// Checks and records a report of `session`, and tells watchers.
pub async fn report(
    db: &Db,
    live: &Live,
    tenant: &Tenant,
    id: &str,
    session: u32,
    report: Report,
) -> Result<JobState, TrackedError> {
    check_report(&report)?;
    let job = own_run(db, tenant, id).await?;
    // The row keeps the latest loss and accuracy: the points at the highest step.
    let latest = |name: &str| {
        report.points.iter().filter(|p| p.name == name && p.value.is_finite()).max_by_key(|p| p.step).map(|p| p.value)
    };
    let record = TrackedReport {
        step: report.step,
        total_steps: report.total_steps.filter(|&t| t > 0),
        epoch: report.epoch,
        loss: latest("loss"),
        accuracy: latest("accuracy"),
        sparsity: (!report.sparsity.is_empty()).then(|| report.sparsity.clone()),
        points: report.points,
    };
    session_write(&job, session, db.report_tracked_run(id, session, &record).await?)?;
    if let Some(now) = db.job(id).await? {
        live.progress(
            id,
            Progress {
                step: now.step,
                total_steps: now.total_steps,
                epoch: now.epoch,
                loss: now.loss.unwrap_or(f64::NAN),
                accuracy: now.accuracy.unwrap_or(f64::NAN),
                sparsity: now.sparsity,
                eta_seconds: None,
            },
        );
    }
    Ok(JobState::Running)
}

fn check_report(report: &Report) -> Result<(), TrackedError> {
    if report.points.len() > MAX_POINTS_PER_REPORT {
        return Err(invalid(
            "points",
            format!("at most {MAX_POINTS_PER_REPORT} per report (got {}): report more often", report.points.len()),
        ));
    }
    for (i, p) in report.points.iter().enumerate() {
        let chars = p.name.chars().count();
        if chars == 0 || chars > MAX_METRIC_NAME_CHARS || p.name.chars().any(char::is_control) {
            return Err(invalid(
                &format!("points[{i}].name"),
                format!("`{}`: names are 1-{MAX_METRIC_NAME_CHARS} printable characters", p.name.escape_debug()),
            ));
        }
    }
    if let Some(bad) = report.sparsity.iter().position(|s| !(0.0..=1.0).contains(&s.sparsity)) {
        return Err(invalid(&format!("sparsity[{bad}].sparsity"), "a fraction from 0 to 1".to_string()));
    }
    Ok(())
}

/// The uploaded weights (`blob`, the tenant's) become the run's model and the run is QUEUED
/// for the export; the caller tells the scheduler.
pub async fn finish(
    db: &Db,
    live: &Live,
    tenant: &Tenant,
    id: &str,
    session: u32,
    blob: &str,
) -> Result<JobRecord, TrackedError> {
    let job = own_run(db, tenant, id).await?;
    let spec = validate::with_model(&job.spec, blob);
    // What the worker will run, checked now: a bad blob id is the client's error, not the export's.
    validate::validate(&spec).map_err(|SpecErrors(e)| AdmissionError::Spec(SpecErrors(relabel(e))))?;
    if db.tenant_blob(tenant.as_str(), blob).await?.is_none() {
        return Err(invalid("model_blob", format!("blob {blob} not found: upload the weights first (UploadBlob)")));
    }
    let spec_json = serde_json::to_string(&spec).expect("specs serialise");
    session_write(&job, session, db.finish_tracked_run(id, session, &spec_json).await?)?;
    live.attempt_ended(id);
    live.state_changed(id);
    tracing::info!(job_id = id, blob, "tracked run finished; exporting its weights");
    db.job(id).await?.ok_or_else(|| TrackedError::NotFound(id.to_string()))
}

/// `model.blob` is the request's `model_blob`.
fn relabel(errors: Vec<validate::FieldError>) -> Vec<validate::FieldError> {
    errors
        .into_iter()
        .map(|e| if e.field == "model.blob" { validate::FieldError { field: "model_blob".into(), ..e } } else { e })
        .collect()
}

/// Ends the run FAILED with the client's reason (one line).
pub async fn fail(
    db: &Db,
    live: &Live,
    tenant: &Tenant,
    id: &str,
    session: u32,
    reason: &str,
) -> Result<JobRecord, TrackedError> {
    let job = own_run(db, tenant, id).await?;
    let reason = prune_core::text::one_line(reason.trim());
    let reason = if reason.is_empty() { "the client reported a failure".to_string() } else { reason };
    session_write(&job, session, db.fail_tracked_run(id, session, &reason).await?)?;
    live.attempt_ended(id);
    live.state_changed(id);
    tracing::info!(job_id = id, reason, "tracked run failed by its client");
    db.job(id).await?.ok_or_else(|| TrackedError::NotFound(id.to_string()))
}

/// The tenant's tracked run `id`.
async fn own_run(db: &Db, tenant: &Tenant, id: &str) -> Result<JobRecord, TrackedError> {
    match db.tenant_job(tenant.as_str(), id).await? {
        Some(job) if job.kind == prune_core::domain::JobKind::Tracked => Ok(job),
        _ => Err(TrackedError::NotFound(id.to_string())),
    }
}

fn session_write(job: &JobRecord, session: u32, write: SessionWrite) -> Result<(), TrackedError> {
    match write {
        SessionWrite::Done => Ok(()),
        SessionWrite::Superseded => {
            Err(TrackedError::Superseded { job_id: job.id.clone(), session, current: job.session.max(session + 1) })
        }
        SessionWrite::Ended(state) => Err(TrackedError::Ended { job_id: job.id.clone(), state }),
        SessionWrite::NotTracked => Err(TrackedError::NotFound(job.id.clone())),
    }
}

fn invalid(field: &str, reason: String) -> TrackedError {
    TrackedError::Invalid { field: field.to_string(), reason }
}

/// Fails runs whose client stopped reporting, checking every quarter of the timeout (at most
/// every 10 s), until `shutdown`. Any node may do it: the update is conditional on the report
/// time, so a run is failed once, and a report that lands first keeps it.
pub fn start_expiry(db: Db, live: Live, timeout: Duration, shutdown: CancellationToken) {
    let every = (timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(10));
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            if let Err(e) = expire_once(&db, &live, timeout, now_ms()).await {
                tracing::warn!("expiring tracked runs: {e}");
            }
        }
    });
}

/// One pass of [`start_expiry`] at time `now` (unix ms): the ids it failed.
pub async fn expire_once(db: &Db, live: &Live, timeout: Duration, now: i64) -> Result<Vec<String>, StorageError> {
    let secs = timeout.as_secs_f64();
    let error = format!("client stopped reporting: no report for {secs} s (--tracked-timeout-secs)");
    let expired = db.expire_tracked_runs(now - timeout.as_millis() as i64, &error).await?;
    for id in &expired {
        tracing::warn!(job_id = id, "tracked run failed: {error}");
        live.attempt_ended(id);
        live.state_changed(id);
    }
    Ok(expired)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::test_support::db;

    fn spec(text: &str) -> JobSpec {
        validate::parse_tracked(text).unwrap()
    }

    const PRUNING: &str = "[pruning]\nschedule = { kind = \"constant_sparsity\", target_sparsity = 0.5 }\n";
    const DEFAULTS: Defaults = Defaults { threads: 1, max_attempts: 3 };

    #[tokio::test]
    async fn start_checks_the_request_and_reports_check_points() {
        let (db, _tmp) = db().await;
        let live = Live::default();
        let tenant = Tenant::new(Tenant::DEFAULT);
        let bad =
            StartRequest { spec: spec("[training]\nepochs = 2\n[pruning]\nschedule = { kind = \"constant_sparsity\", target_sparsity = 1.5 }\n"), ..Default::default() };
        let err = start(&db, &live, DEFAULTS, &tenant, bad).await.unwrap_err().to_string();
        assert!(err.contains("training:") && err.contains("pruning.schedule.target_sparsity"), "{err}");
        let labels =
            StartRequest { spec: spec(PRUNING), labels: [("Bad".into(), "x".into())].into(), ..Default::default() };
        assert!(start(&db, &live, DEFAULTS, &tenant, labels).await.unwrap_err().to_string().contains("labels.Bad"));

        let ok = StartRequest { spec: spec(PRUNING), request_id: Some("r-1".into()), ..Default::default() };
        let started = start(&db, &live, DEFAULTS, &tenant, ok.clone()).await.unwrap();
        assert_eq!((started.session, started.reattached), (1, false));
        let id = started.job.id.clone();
        let long = "x".repeat(MAX_METRIC_NAME_CHARS + 1);
        for (points, field) in [
            (vec![MetricPoint { step: 1, name: String::new(), value: 1.0 }], "points[0].name"),
            (vec![MetricPoint { step: 1, name: long, value: 1.0 }], "points[0].name"),
            (vec![MetricPoint { step: 1, name: "a\nb".into(), value: 1.0 }], "points[0].name"),
        ] {
            let err = report(&db, &live, &tenant, &id, 1, Report { points, ..Default::default() }).await.unwrap_err();
            assert!(err.to_string().starts_with(field), "{err}");
        }
        let other = Tenant::new("someone-else");
        assert!(matches!(report(&db, &live, &other, &id, 1, Report::default()).await, Err(TrackedError::NotFound(_))));
        let again = start(&db, &live, DEFAULTS, &tenant, ok).await.unwrap();
        assert_eq!((again.job.id.as_str(), again.session, again.reattached), (id.as_str(), 2, true));
        assert!(matches!(
            report(&db, &live, &tenant, &id, 1, Report::default()).await,
            Err(TrackedError::Superseded { session: 1, current: 2, .. })
        ));
        let err = finish(&db, &live, &tenant, &id, 2, "sha256:nothex").await.unwrap_err().to_string();
        assert!(err.contains("model_blob"), "{err}");
        let missing = format!("sha256:{}", "a".repeat(64));
        let err = finish(&db, &live, &tenant, &id, 2, &missing).await.unwrap_err().to_string();
        assert!(err.contains("not found"), "{err}");
        let failed = fail(&db, &live, &tenant, &id, 2, "loss is NaN\nat step 7").await.unwrap();
        assert_eq!((failed.state, failed.error.as_deref()), (JobState::Failed, Some("loss is NaN; at step 7")));
    }

    #[tokio::test]
    async fn a_quiet_run_fails_after_the_timeout() {
        let (db, _tmp) = db().await;
        let live = Live::default();
        let tenant = Tenant::new(Tenant::DEFAULT);
        let started = start(&db, &live, DEFAULTS, &tenant, StartRequest { spec: spec(PRUNING), ..Default::default() })
            .await
            .unwrap();
        let timeout = Duration::from_secs(900);
        assert!(expire_once(&db, &live, timeout, now_ms()).await.unwrap().is_empty());
        let later = now_ms() + timeout.as_millis() as i64 + 1;
        assert_eq!(expire_once(&db, &live, timeout, later).await.unwrap(), vec![started.job.id.clone()]);
        let job = db.job(&started.job.id).await.unwrap().unwrap();
        assert_eq!(job.state, JobState::Failed);
        assert!(job.error.unwrap().starts_with("client stopped reporting"));
    }
}
