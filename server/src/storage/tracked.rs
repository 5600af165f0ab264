//! Tracked runs' rows: a job of kind `tracked` that a training loop outside the service reports
//! to (see `migrations/sqlite/0006_tracked_runs.sql`).
//!
//! While its client reports, the run is RUNNING with `reported_ms` set and no lease: no node
//! claims it. Each start or re-attach opens a reporting session (`tracked_session`); every
//! write of a client names its session and happens only while that session is the run's
//! current one and the run still takes reports, as an attempt number fences a worker's writes.
//! Finishing hands the run to the scheduler (QUEUED, `reported_ms` cleared) for the export.

use std::collections::BTreeMap;

use prune_core::domain::{MetricPoint, TensorSparsity};

use super::jobs::{JobKind, JobRecord, JobState, RequestKey};
use super::rows::Columns;
use super::{now_ms, Db, Result};

/// What StartTrackedRun inserts (or re-attaches to, by request id).
#[derive(Debug, Clone)]
pub struct NewTrackedRun {
    pub id: String,
    pub tenant: String,
    pub name: String,
    pub spec_json: String,
    pub warnings: Vec<String>,
    pub max_attempts: u32,
    pub threads: u32,
    pub request: Option<RequestKey>,
    pub labels: BTreeMap<String, String>,
    /// 0: unknown.
    pub total_steps: i64,
    pub client: String,
}

/// What [`Db::start_tracked_run`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrackedStart {
    /// A new run, session 1.
    Started(String),
    /// The request id's run continues in a new session (RUNNING again).
    Reattached(String),
    /// The request id names a different request (another spec, name or labels; or a job).
    RequestIdReused(String),
    /// The request id's run no longer takes reports: it finished, is being exported, or was
    /// cancelled.
    Finished { id: String, state: JobState },
}

/// One report of a tracked run's client.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrackedReport {
    pub step: i64,
    pub total_steps: Option<i64>,
    pub epoch: Option<i64>,
    /// The latest `loss` / `accuracy` among the points, for the job's row.
    pub loss: Option<f64>,
    pub accuracy: Option<f64>,
    pub sparsity: Option<Vec<TensorSparsity>>,
    pub points: Vec<MetricPoint>,
}

/// Whether a session's write happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionWrite {
    Done,
    /// A newer session re-attached.
    Superseded,
    /// The run no longer takes reports; it is in this state.
    Ended(JobState),
    /// No such tracked run (or a service job).
    NotTracked,
}

/// The condition every session write checks (`$1` id, `$2` session, `$3` RUNNING), as a
/// literal for `concat!` (sqlx takes only static SQL).
macro_rules! current_session {
    () => {
        "id = $1 AND tracked_session = $2 AND state = $3 AND kind = 'tracked' AND reported_ms IS NOT NULL"
    };
}

impl Db {
    /// Starts a tracked run, or re-attaches to the one the request id made: a RUNNING run, or
    /// one that FAILED before its weights were uploaded, continues in a new session. The lookup
    /// and the write happen under the tenant's queue lock, so two concurrent starts with one
    /// request id make one run.
    pub async fn start_tracked_run(&self, run: &NewTrackedRun) -> Result<TrackedStart> {
        let now = now_ms();
        let warnings = serde_json::to_string(&run.warnings).expect("strings serialise");
        let labels = serde_json::to_string(&run.labels).expect("labels serialise");
        with_pool!(self, |pool, backend| {
            let mut tx = backend::begin_queue_write(pool, &run.tenant).await?;
            if let Some(request) = &run.request {
                let earlier = sqlx::query(
                    "SELECT id, request_hash, kind, state, spec_json FROM jobs WHERE tenant = $1 AND request_id = $2",
                )
                .bind(&run.tenant)
                .bind(&request.id)
                .fetch_optional(&mut *tx)
                .await?;
                if let Some(row) = earlier {
                    let id = row.text("id")?;
                    let same = row.text_opt("request_hash")?.as_deref() == Some(request.hash.as_str())
                        && row.text("kind")? == JobKind::Tracked.as_str();
                    if !same {
                        return Ok(TrackedStart::RequestIdReused(id));
                    }
                    let state: JobState = row
                        .text("state")?
                        .parse()
                        .map_err(|reason| super::StorageError::Corrupt { job_id: id.clone(), what: "state", reason })?;
                    // Uploaded weights are in the spec: from then on the run is the export's.
                    let spec: prune_core::JobSpec = serde_json::from_str(&row.text("spec_json")?).map_err(|e| {
                        super::StorageError::Corrupt { job_id: id.clone(), what: "spec", reason: e.to_string() }
                    })?;
                    let uploaded = spec.model.blob.is_some();
                    let reattachable = match state {
                        JobState::Running | JobState::Failed => !uploaded,
                        _ => false,
                    };
                    if !reattachable {
                        return Ok(TrackedStart::Finished { id, state });
                    }
                    sqlx::query(
                        "UPDATE jobs SET state = $1, error = NULL, finished_ms = NULL, \
                         tracked_session = tracked_session + 1, tracked_client = $2, reported_ms = $3, \
                         total_steps = CASE WHEN $4 > 0 THEN $4 ELSE total_steps END WHERE id = $5",
                    )
                    .bind(JobState::Running.as_str())
                    .bind(&run.client)
                    .bind(now)
                    .bind(run.total_steps)
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    return Ok(TrackedStart::Reattached(id));
                }
            }
            sqlx::query(
                "INSERT INTO jobs (id, tenant, name, state, spec_json, warnings_json, attempts, max_attempts, \
                 threads, step, total_steps, epoch, created_ms, started_ms, request_id, request_hash, priority, \
                 labels_json, kind, tracked_session, tracked_client, reported_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, 0, $7, $8, 0, $9, 0, $10, $10, $11, $12, 0, $13, $14, 1, $15, $10)",
            )
            .bind(&run.id)
            .bind(&run.tenant)
            .bind(&run.name)
            .bind(JobState::Running.as_str())
            .bind(&run.spec_json)
            .bind(&warnings)
            .bind(i64::from(run.max_attempts))
            .bind(i64::from(run.threads))
            .bind(run.total_steps)
            .bind(now)
            .bind(run.request.as_ref().map(|r| r.id.clone()))
            .bind(run.request.as_ref().map(|r| r.hash.clone()))
            .bind(&labels)
            .bind(JobKind::Tracked.as_str())
            .bind(&run.client)
            .execute(&mut *tx)
            .await?;
            for (key, value) in &run.labels {
                sqlx::query("INSERT INTO job_labels (job_id, key, value) VALUES ($1, $2, $3)")
                    .bind(&run.id)
                    .bind(key)
                    .bind(value)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(TrackedStart::Started(run.id.clone()))
        })
    }

    /// Records a report of session `session`: the row's step, epoch, latest values and
    /// sparsity, the time of the report, and the points (a step already recorded is replaced).
    pub async fn report_tracked_run(&self, id: &str, session: u32, report: &TrackedReport) -> Result<SessionWrite> {
        let sparsity = report.sparsity.as_ref().map(|s| serde_json::to_string(s).expect("sparsity serialises"));
        let written = with_pool!(self, |pool, backend| {
            let mut tx = backend::begin_write(pool).await?;
            let updated = sqlx::query(concat!(
                "UPDATE jobs SET step = $4, total_steps = COALESCE($5, total_steps), epoch = COALESCE($6, epoch), ",
                "loss = COALESCE($7, loss), accuracy = COALESCE($8, accuracy), ",
                "sparsity_json = COALESCE($9, sparsity_json), reported_ms = $10 WHERE ",
                current_session!()
            ))
            .bind(id)
            .bind(i64::from(session))
            .bind(JobState::Running.as_str())
            .bind(report.step)
            .bind(report.total_steps)
            .bind(report.epoch)
            .bind(report.loss.filter(|v| v.is_finite()))
            .bind(report.accuracy.filter(|v| v.is_finite()))
            .bind(sparsity)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if updated {
                upsert_points!(tx, id, report.points);
                tx.commit().await?;
            }
            updated
        });
        if written {
            Ok(SessionWrite::Done)
        } else {
            self.why_not_current(id, session).await
        }
    }

    /// Hands the run to the scheduler: the spec now names the uploaded weights (`spec_json`),
    /// the job is QUEUED for the export and takes no more reports.
    pub async fn finish_tracked_run(&self, id: &str, session: u32, spec_json: &str) -> Result<SessionWrite> {
        let updated = with_pool!(self, |pool| {
            sqlx::query(concat!(
                "UPDATE jobs SET state = $4, spec_json = $5, reported_ms = NULL WHERE ",
                current_session!()
            ))
            .bind(id)
            .bind(i64::from(session))
            .bind(JobState::Running.as_str())
            .bind(JobState::Queued.as_str())
            .bind(spec_json)
            .execute(pool)
            .await?
            .rows_affected()
        });
        if updated == 1 {
            Ok(SessionWrite::Done)
        } else {
            self.why_not_current(id, session).await
        }
    }

    /// Ends the run FAILED with the client's `reason`.
    pub async fn fail_tracked_run(&self, id: &str, session: u32, reason: &str) -> Result<SessionWrite> {
        let updated = with_pool!(self, |pool| {
            sqlx::query(concat!(
                "UPDATE jobs SET state = $4, error = $5, finished_ms = $6, reported_ms = NULL WHERE ",
                current_session!()
            ))
            .bind(id)
            .bind(i64::from(session))
            .bind(JobState::Running.as_str())
            .bind(JobState::Failed.as_str())
            .bind(reason)
            .bind(now_ms())
            .execute(pool)
            .await?
            .rows_affected()
        });
        if updated == 1 {
            Ok(SessionWrite::Done)
        } else {
            self.why_not_current(id, session).await
        }
    }

    /// Fails every run whose client has not reported since `before_ms` (unix ms) with `error`;
    /// returns their ids. Conditional on the same report time, so a report that arrives first
    /// keeps its run.
    pub async fn expire_tracked_runs(&self, before_ms: i64, error: &str) -> Result<Vec<String>> {
        with_pool!(self, |pool| {
            let rows = sqlx::query(
                "UPDATE jobs SET state = $1, error = $2, finished_ms = $3, reported_ms = NULL \
                 WHERE state = $4 AND reported_ms IS NOT NULL AND reported_ms < $5 RETURNING id",
            )
            .bind(JobState::Failed.as_str())
            .bind(error)
            .bind(now_ms())
            .bind(JobState::Running.as_str())
            .bind(before_ms)
            .fetch_all(pool)
            .await?;
            rows.iter().map(|r| r.text("id")).collect()
        })
    }

    /// Why a session's write matched no row.
    async fn why_not_current(&self, id: &str, session: u32) -> Result<SessionWrite> {
        let Some(job) = self.job(id).await? else { return Ok(SessionWrite::NotTracked) };
        Ok(match job {
            JobRecord { kind: JobKind::Service, .. } => SessionWrite::NotTracked,
            JobRecord { state: JobState::Running, reported_ms: Some(_), session: current, .. }
                if current != session =>
            {
                SessionWrite::Superseded
            }
            JobRecord { state, .. } => SessionWrite::Ended(state),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{claim, new_job};
    use super::*;

    on_both_backends!(start_report_reattach_finish, expiry_failures_and_fences);

    fn run(id: &str, request: Option<(&str, &str)>) -> NewTrackedRun {
        NewTrackedRun {
            id: id.into(),
            tenant: "default".into(),
            name: "loop".into(),
            spec_json:
                "{\"model\":{},\"pruning\":{\"schedule\":{\"kind\":\"constant_sparsity\",\"target_sparsity\":0.5}}}"
                    .into(),
            warnings: vec![],
            max_attempts: 3,
            threads: 1,
            request: request.map(|(id, hash)| RequestKey { id: id.into(), hash: hash.into() }),
            labels: [("team".to_string(), "vision".to_string())].into(),
            total_steps: 100,
            client: "host:1".into(),
        }
    }

    fn report(step: i64, loss: f64) -> TrackedReport {
        TrackedReport {
            step,
            loss: Some(loss),
            points: vec![MetricPoint { step, name: "loss".into(), value: loss }],
            ..TrackedReport::default()
        }
    }

    async fn start_report_reattach_finish(db: Db) {
        assert_eq!(
            db.start_tracked_run(&run("job-t", Some(("r1", "h")))).await.unwrap(),
            TrackedStart::Started("job-t".into())
        );
        let job = db.job("job-t").await.unwrap().unwrap();
        assert_eq!((job.kind, job.state, job.session, job.total_steps), (JobKind::Tracked, JobState::Running, 1, 100));
        assert!(job.reported_ms.is_some() && job.started_ms.is_some());
        assert_eq!(job.labels["team"], "vision");
        // A service job queued behind it is claimed; the run never is.
        assert!(db.insert_job(&new_job("job-s"), 100).await.unwrap());
        assert_eq!(claim(&db, "job-s").await, 1);
        assert!(db.claim_next("node-b", std::time::Duration::ZERO).await.unwrap().is_none());

        for step in 1..=3 {
            assert_eq!(
                db.report_tracked_run("job-t", 1, &report(step, 1.0 / step as f64)).await.unwrap(),
                SessionWrite::Done
            );
        }
        let sparsity = vec![TensorSparsity { name: "fc.weight".into(), sparsity: 0.5 }];
        let with_sparsity = TrackedReport { sparsity: Some(sparsity.clone()), epoch: Some(1), ..report(4, 0.2) };
        db.report_tracked_run("job-t", 1, &with_sparsity).await.unwrap();
        let job = db.job("job-t").await.unwrap().unwrap();
        assert_eq!((job.step, job.epoch, job.loss, job.sparsity.clone()), (4, 1, Some(0.2), sparsity.clone()));

        // The loop restarts from its step-2 checkpoint with the same request id.
        assert_eq!(
            db.start_tracked_run(&run("job-x", Some(("r1", "h")))).await.unwrap(),
            TrackedStart::Reattached("job-t".into())
        );
        assert_eq!(db.job("job-t").await.unwrap().unwrap().session, 2);
        assert_eq!(db.report_tracked_run("job-t", 1, &report(5, 0.1)).await.unwrap(), SessionWrite::Superseded);
        for step in 3..=5 {
            db.report_tracked_run("job-t", 2, &report(step, 0.5)).await.unwrap();
        }
        let losses: Vec<(i64, f64)> =
            db.metrics("job-t", "loss").await.unwrap().iter().map(|p| (p.step, p.value)).collect();
        assert_eq!(losses, [(1, 1.0), (2, 0.5), (3, 0.5), (4, 0.5), (5, 0.5)], "one point per step, the latest");
        // Another request under the id, or a finished run, is not re-attached.
        assert_eq!(
            db.start_tracked_run(&run("job-y", Some(("r1", "other")))).await.unwrap(),
            TrackedStart::RequestIdReused("job-t".into())
        );

        let spec = "{\"model\":{\"blob\":\"sha256:ab\"},\"pruning\":{\"schedule\":{\"kind\":\"constant_sparsity\",\"target_sparsity\":0.5}}}";
        assert_eq!(db.finish_tracked_run("job-t", 2, spec).await.unwrap(), SessionWrite::Done);
        let job = db.job("job-t").await.unwrap().unwrap();
        assert_eq!(
            (job.state, job.reported_ms, job.spec.model.blob.as_deref()),
            (JobState::Queued, None, Some("sha256:ab"))
        );
        assert_eq!(
            db.report_tracked_run("job-t", 2, &report(6, 0.1)).await.unwrap(),
            SessionWrite::Ended(JobState::Queued)
        );
        assert_eq!(
            db.start_tracked_run(&run("job-z", Some(("r1", "h")))).await.unwrap(),
            TrackedStart::Finished { id: "job-t".into(), state: JobState::Queued }
        );
        // Now it is the export's: claimed like any queued job.
        assert_eq!(db.claim_next("node-b", std::time::Duration::from_secs(60)).await.unwrap().unwrap().job.id, "job-t");
    }

    async fn expiry_failures_and_fences(db: Db) {
        db.start_tracked_run(&run("job-a", Some(("ra", "h")))).await.unwrap();
        db.start_tracked_run(&run("job-b", None)).await.unwrap();
        db.start_tracked_run(&run("job-c", None)).await.unwrap();
        assert!(db.expire_tracked_runs(now_ms() - 60_000, "late").await.unwrap().is_empty(), "all reported just now");
        let mut expired = db.expire_tracked_runs(now_ms() + 1, "client stopped reporting").await.unwrap();
        expired.sort();
        assert_eq!(expired, ["job-a", "job-b", "job-c"]);
        let job = db.job("job-a").await.unwrap().unwrap();
        assert_eq!(
            (job.state, job.error.as_deref(), job.reported_ms),
            (JobState::Failed, Some("client stopped reporting"), None)
        );
        assert_eq!(
            db.report_tracked_run("job-a", 1, &report(1, 1.0)).await.unwrap(),
            SessionWrite::Ended(JobState::Failed)
        );
        // The restarted loop re-attaches to its failed run.
        assert_eq!(
            db.start_tracked_run(&run("job-q", Some(("ra", "h")))).await.unwrap(),
            TrackedStart::Reattached("job-a".into())
        );
        let job = db.job("job-a").await.unwrap().unwrap();
        assert_eq!((job.state, job.error, job.session, job.finished_ms), (JobState::Running, None, 2, None));

        assert_eq!(db.fail_tracked_run("job-b", 1, "oops").await.unwrap(), SessionWrite::Ended(JobState::Failed));
        assert_eq!(db.fail_tracked_run("job-a", 2, "diverged").await.unwrap(), SessionWrite::Done);
        assert_eq!(db.job("job-a").await.unwrap().unwrap().error.as_deref(), Some("diverged"));
        assert_eq!(db.report_tracked_run("job-nope", 1, &report(1, 1.0)).await.unwrap(), SessionWrite::NotTracked);
        assert!(db.insert_job(&new_job("job-s"), 100).await.unwrap());
        assert_eq!(db.report_tracked_run("job-s", 0, &report(1, 1.0)).await.unwrap(), SessionWrite::NotTracked);
    }
}
