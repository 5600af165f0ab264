//! `jobs` and `attempts`: the job state machine's persistent half.
//!
//! Every state transition is a conditional `UPDATE ... WHERE state = <expected>`, so the
//! scheduler and a concurrent CancelJob cannot overwrite each other: whoever changes the row
//! first wins and the other sees `false`.

pub use prune_core::domain::{JobKind, JobState};
use prune_core::domain::{Report, TensorSparsity};
use std::collections::BTreeMap;

use prune_core::JobSpec;
use serde::de::DeserializeOwned;
use sqlx::QueryBuilder;

use super::artifacts::{ArtifactRecord, INSERT_ARTIFACT};
use super::leases::{fence, Fence};
use super::rows::{bigint, narrow, Columns};
use super::{now_ms, Db, Result, StorageError};

/// How one attempt (one worker process) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    Succeeded,
    /// The engine reported an error: deterministic, not retried.
    Failed,
    /// The worker died without reporting (signal, abort, OOM kill): retried.
    Crashed,
    /// Stopped by a server shutdown (or the server died); the job resumes at the next start.
    Interrupted,
    Cancelled,
    /// Its lease ran out and another attempt took the job over (node died, partitioned, paused).
    Superseded,
}

impl AttemptOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Succeeded => "succeeded",
            AttemptOutcome::Failed => "failed",
            AttemptOutcome::Crashed => "crashed",
            AttemptOutcome::Interrupted => "interrupted",
            AttemptOutcome::Cancelled => "cancelled",
            AttemptOutcome::Superseded => "superseded",
        }
    }
}

/// A row of `jobs`, with its JSON columns parsed.
#[derive(Debug, Clone)]
pub struct JobRecord {
    pub id: String,
    /// Who created it; nobody else sees it.
    pub tenant: String,
    pub name: String,
    pub state: JobState,
    pub spec: JobSpec,
    pub warnings: Vec<String>,
    pub error: Option<String>,
    pub attempts: u32,
    pub max_attempts: u32,
    pub threads: u32,
    pub step: i64,
    pub total_steps: i64,
    pub epoch: i64,
    pub loss: Option<f64>,
    pub accuracy: Option<f64>,
    pub sparsity: Vec<TensorSparsity>,
    pub report: Option<Report>,
    pub created_ms: i64,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    /// The node holding the lease of a RUNNING job, else the one that ran its last attempt.
    pub node: Option<String>,
    pub priority: i64,
    pub labels: BTreeMap<String, String>,
    pub kind: JobKind,
    /// A tracked run: its reporting session, who reports, and when it last did (set only while
    /// the client reports).
    pub session: u32,
    pub client: Option<String>,
    pub reported_ms: Option<i64>,
}

/// ListJobs' conditions, all of which a job must meet (AIP-160's AND).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobFilter {
    pub state: Option<JobState>,
    pub name: Option<String>,
    /// `labels.KEY = "VALUE"`, each.
    pub labels: Vec<(String, String)>,
    pub kind: Option<JobKind>,
}

/// How the current attempt ends its job ([`Db::finish_attempt_job`]).
#[derive(Debug, Clone, Copy)]
pub struct JobEnd<'a> {
    pub state: JobState,
    pub error: Option<&'a str>,
    pub report: Option<&'a Report>,
    pub artifacts: &'a [ArtifactRecord],
}

/// What CreateJob inserts.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: String,
    pub tenant: String,
    pub name: String,
    pub spec_json: String,
    pub warnings: Vec<String>,
    pub max_attempts: u32,
    pub threads: u32,
    pub created_ms: i64,
    /// The client's request id and the request's fingerprint (idempotent submit).
    pub request: Option<RequestKey>,
    /// Higher starts first within the tenant.
    pub priority: i64,
    pub labels: BTreeMap<String, String>,
}

/// A CreateJob request id (unique per tenant) and the sha256 of what the request asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestKey {
    pub id: String,
    pub hash: String,
}

/// What [`Db::submit_job`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submitted {
    Queued,
    /// The tenant already has the limit of jobs QUEUED; nothing was inserted.
    QueueFull,
    /// The same request (id and fingerprint) made this job before: a retry.
    Existing(String),
    /// The request id names an earlier, different request (this job id).
    RequestIdReused(String),
}

/// The latest training values, written to the job row now and then (the live values are in
/// memory; this is what survives a restart).
#[derive(Debug, Clone, PartialEq)]
pub struct ProgressUpdate {
    pub step: i64,
    pub epoch: i64,
    pub loss: Option<f64>,
    pub accuracy: Option<f64>,
    pub sparsity: Vec<TensorSparsity>,
}

/// Queues a job if its tenant has fewer than the limit QUEUED (`$2` tenant, `$4` QUEUED, `$10`
/// the limit). Portable; atomic only inside the backend's `begin_queue_write` transaction.
const INSERT_JOB_UNDER_LIMIT: &str = "INSERT INTO jobs (id, tenant, name, state, spec_json, warnings_json, attempts, \
     max_attempts, threads, step, total_steps, epoch, created_ms, request_id, request_hash, priority, labels_json) \
     SELECT $1, $2, $3, $4, $5, $6, 0, $7, $8, 0, 0, 0, $9, $11, $12, $13, $14 \
     WHERE (SELECT COUNT(*) FROM jobs WHERE tenant = $2 AND state = $4) < $10";

impl Db {
    /// Queues the job unless its tenant already has `max_queued` jobs QUEUED; `false` then.
    ///
    /// The count and the insert are one statement, in a transaction that first takes the
    /// backend's lock for the tenant's queue (SQLite: the write lock, `BEGIN IMMEDIATE`;
    /// PostgreSQL: an advisory lock on the tenant), so concurrent CreateJobs cannot both slip
    /// under the limit on either backend.
    pub async fn insert_job(&self, job: &NewJob, max_queued: u32) -> Result<bool> {
        Ok(self.submit_job(job, max_queued).await? == Submitted::Queued)
    }

    /// [`Db::insert_job`] that also honours the request id: the lookup of an earlier job with
    /// the same tenant and request id and the insert happen under the same lock, so two
    /// concurrent retries of one request make one job.
    pub async fn submit_job(&self, job: &NewJob, max_queued: u32) -> Result<Submitted> {
        let warnings = serde_json::to_string(&job.warnings).expect("strings serialise");
        let labels = serde_json::to_string(&job.labels).expect("labels serialise");
        with_pool!(self, |pool, backend| {
            let mut tx = backend::begin_queue_write(pool, &job.tenant).await?;
            if let Some(request) = &job.request {
                let earlier = sqlx::query("SELECT id, request_hash FROM jobs WHERE tenant = $1 AND request_id = $2")
                    .bind(&job.tenant)
                    .bind(&request.id)
                    .fetch_optional(&mut *tx)
                    .await?;
                if let Some(row) = earlier {
                    let id = row.text("id")?;
                    let same = row.text_opt("request_hash")?.as_deref() == Some(request.hash.as_str());
                    return Ok(if same { Submitted::Existing(id) } else { Submitted::RequestIdReused(id) });
                }
            }
            let inserted = sqlx::query(INSERT_JOB_UNDER_LIMIT)
                .bind(&job.id)
                .bind(&job.tenant)
                .bind(&job.name)
                .bind(JobState::Queued.as_str())
                .bind(&job.spec_json)
                .bind(&warnings)
                .bind(i64::from(job.max_attempts))
                .bind(i64::from(job.threads))
                .bind(job.created_ms)
                .bind(i64::from(max_queued))
                .bind(job.request.as_ref().map(|r| r.id.clone()))
                .bind(job.request.as_ref().map(|r| r.hash.clone()))
                .bind(job.priority)
                .bind(&labels)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if inserted != 1 {
                return Ok(Submitted::QueueFull);
            }
            for (key, value) in &job.labels {
                sqlx::query("INSERT INTO job_labels (job_id, key, value) VALUES ($1, $2, $3)")
                    .bind(&job.id)
                    .bind(key)
                    .bind(value)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(Submitted::Queued)
        })
    }

    /// The tenant's job `id`; `None` when it does not exist or belongs to someone else: callers
    /// must not be able to tell the two apart.
    pub async fn tenant_job(&self, tenant: &str, id: &str) -> Result<Option<JobRecord>> {
        Ok(self.job(id).await?.filter(|job| job.tenant == tenant))
    }

    pub async fn job(&self, id: &str) -> Result<Option<JobRecord>> {
        with_pool!(self, |pool| {
            sqlx::query(concat!("SELECT ", job_columns!(), " FROM jobs WHERE id = $1"))
                .bind(id)
                .fetch_optional(pool)
                .await?
                .map(|row| job_from_row(&row))
                .transpose()
        })
    }

    /// The tenant's jobs newest first (ids sort by creation) that pass `filter`, only ids below
    /// `before`.
    pub async fn list_jobs(
        &self,
        tenant: &str,
        filter: &JobFilter,
        before: Option<&str>,
        limit: u32,
    ) -> Result<Vec<JobRecord>> {
        // Built per call (QueryBuilder writes each backend's placeholders) so that every filter
        // is a plain condition the index (tenant, state, id) or (tenant, id) can serve; a label
        // is an EXISTS on `job_labels`' primary key.
        with_pool!(self, |pool| {
            let mut q = QueryBuilder::new(concat!("SELECT ", job_columns!(), " FROM jobs WHERE tenant = "));
            q.push_bind(tenant.to_string());
            if let Some(state) = filter.state {
                q.push(" AND state = ").push_bind(state.as_str());
            }
            if let Some(name) = &filter.name {
                q.push(" AND name = ").push_bind(name.clone());
            }
            if let Some(kind) = filter.kind {
                q.push(" AND kind = ").push_bind(kind.as_str());
            }
            for (key, value) in &filter.labels {
                q.push(" AND EXISTS (SELECT 1 FROM job_labels l WHERE l.job_id = jobs.id AND l.key = ");
                q.push_bind(key.clone()).push(" AND l.value = ").push_bind(value.clone()).push(")");
            }
            if let Some(before) = before {
                q.push(" AND id < ").push_bind(before.to_string());
            }
            q.push(" ORDER BY id DESC LIMIT ").push_bind(i64::from(limit));
            q.build().fetch_all(pool).await?.iter().map(job_from_row).collect()
        })
    }

    /// Ids of the jobs in `state`, oldest first: the run order.
    pub async fn job_ids_in_state(&self, state: JobState) -> Result<Vec<String>> {
        with_pool!(self, |pool| {
            let rows = sqlx::query("SELECT id FROM jobs WHERE state = $1 ORDER BY id")
                .bind(state.as_str())
                .fetch_all(pool)
                .await?;
            rows.iter().map(|r| r.text("id")).collect()
        })
    }

    /// Moves a job from `from` to the terminal state `to`; `false` if it was not in `from`.
    pub async fn finish_job(
        &self,
        id: &str,
        from: &[JobState],
        to: JobState,
        error: Option<&str>,
        report: Option<&Report>,
    ) -> Result<bool> {
        debug_assert!(to.is_terminal());
        let report = report.map(|r| serde_json::to_string(r).expect("report serialises"));
        if from.is_empty() {
            return Ok(false); // `IN ()` is not SQL
        }
        with_pool!(self, |pool| {
            let mut q = QueryBuilder::new("UPDATE jobs SET state = ");
            q.push_bind(to.as_str());
            q.push(", error = ").push_bind(error.map(str::to_string));
            q.push(", report_json = COALESCE(").push_bind(report).push(", report_json)");
            q.push(", finished_ms = ").push_bind(now_ms());
            // A tracked run's client reports no more.
            q.push(", reported_ms = NULL");
            q.push(" WHERE id = ").push_bind(id.to_string());
            q.push(" AND state IN (");
            let mut states = q.separated(", ");
            for st in from {
                states.push_bind(st.as_str());
            }
            q.push(")");
            Ok(q.build().execute(pool).await?.rows_affected() == 1)
        })
    }

    /// Fenced: `NotCurrent` once the attempt is superseded or the job ended.
    pub async fn set_total_steps(&self, fence: Fence<'_>, total_steps: i64) -> Result<()> {
        let updated = with_pool!(self, |pool| {
            sqlx::query("UPDATE jobs SET total_steps = $1 WHERE id = $2 AND attempts = $3 AND state = $4")
                .bind(total_steps)
                .bind(fence.job_id)
                .bind(i64::from(fence.attempt))
                .bind(JobState::Running.as_str())
                .execute(pool)
                .await?
                .rows_affected()
        });
        if updated == 1 {
            Ok(())
        } else {
            Err(fence.rejected())
        }
    }

    /// Adds warnings the worker reported (each once) to the job's. Fenced.
    pub async fn add_warnings(&self, fence: Fence<'_>, warnings: &[String]) -> Result<()> {
        with_pool!(self, |pool, backend| {
            let mut tx = backend::begin_write(pool).await?;
            fence!(tx, fence);
            let row = sqlx::query("SELECT warnings_json FROM jobs WHERE id = $1")
                .bind(fence.job_id)
                .fetch_one(&mut *tx)
                .await?;
            let mut all: Vec<String> = parse_json(&row.text("warnings_json")?).map_err(|reason| {
                StorageError::Corrupt { job_id: fence.job_id.to_string(), what: "warnings", reason }
            })?;
            for w in warnings {
                if !all.contains(w) {
                    all.push(w.clone());
                }
            }
            sqlx::query("UPDATE jobs SET warnings_json = $1 WHERE id = $2")
                .bind(serde_json::to_string(&all).expect("strings serialise"))
                .bind(fence.job_id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// Fenced: `NotCurrent` once the attempt is superseded or the job ended.
    pub async fn update_progress(&self, fence: Fence<'_>, p: &ProgressUpdate) -> Result<()> {
        let sparsity = serde_json::to_string(&p.sparsity).expect("sparsity serialises");
        let updated = with_pool!(self, |pool| {
            sqlx::query(
                "UPDATE jobs SET step = $1, epoch = $2, loss = COALESCE($3, loss), accuracy = COALESCE($4, accuracy), \
                 sparsity_json = $5 WHERE id = $6 AND attempts = $7 AND state = $8",
            )
            .bind(p.step)
            .bind(p.epoch)
            .bind(p.loss.filter(|v| v.is_finite()))
            .bind(p.accuracy.filter(|v| v.is_finite()))
            .bind(&sparsity)
            .bind(fence.job_id)
            .bind(i64::from(fence.attempt))
            .bind(JobState::Running.as_str())
            .execute(pool)
            .await?
            .rows_affected()
        });
        if updated == 1 {
            Ok(())
        } else {
            Err(fence.rejected())
        }
    }

    /// Ends the job as its current attempt `fence` decided (SUCCEEDED with its artifacts,
    /// FAILED, CANCELLED), in one transaction that first checks the attempt is still current:
    /// a superseded attempt commits nothing (`NotCurrent`), so a job has exactly one committed
    /// set of artifacts.
    pub async fn finish_attempt_job(&self, fence: Fence<'_>, end: &JobEnd<'_>) -> Result<()> {
        debug_assert!(end.state.is_terminal());
        let report = end.report.map(|r| serde_json::to_string(r).expect("report serialises"));
        let sizes = end.artifacts.iter().map(|a| bigint("artifact bytes", a.bytes)).collect::<Result<Vec<_>>>()?;
        with_pool!(self, |pool, backend| {
            let mut tx = backend::begin_write(pool).await?;
            fence!(tx, fence);
            for (a, bytes) in end.artifacts.iter().zip(&sizes) {
                sqlx::query(INSERT_ARTIFACT)
                    .bind(fence.job_id)
                    .bind(&a.format)
                    .bind(&a.path)
                    .bind(&a.sha256)
                    .bind(*bytes)
                    .bind(&a.compression)
                    .bind(&a.sparse_format)
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query(
                "UPDATE jobs SET state = $1, error = $2, report_json = COALESCE($3, report_json), finished_ms = $4, \
                 lease_expires_ms = NULL WHERE id = $5",
            )
            .bind(end.state.as_str())
            .bind(end.error)
            .bind(report)
            .bind(now_ms())
            .bind(fence.job_id)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        });
        Ok(())
    }

    pub async fn finish_attempt(
        &self,
        id: &str,
        attempt: u32,
        outcome: AttemptOutcome,
        error: Option<&str>,
    ) -> Result<()> {
        with_pool!(self, |pool| {
            sqlx::query(
                "UPDATE attempts SET outcome = $1, error = $2, finished_ms = $3 WHERE job_id = $4 AND attempt = $5 \
                 AND outcome IS NULL",
            )
            .bind(outcome.as_str())
            .bind(error)
            .bind(now_ms())
            .bind(id)
            .bind(i64::from(attempt))
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Attempts of a job that ended with `outcome`.
    pub async fn count_attempts(&self, id: &str, outcome: AttemptOutcome) -> Result<u32> {
        // COUNT(*) is BIGINT on PostgreSQL and a 64-bit INTEGER on SQLite.
        let n: i64 = with_pool!(self, |pool| {
            sqlx::query_scalar("SELECT COUNT(*) FROM attempts WHERE job_id = $1 AND outcome = $2")
                .bind(id)
                .bind(outcome.as_str())
                .fetch_one(pool)
                .await?
        });
        narrow("attempt count", n)
    }
}

/// A row with the columns of `job_columns!()`, from any backend.
pub(super) fn job_from_row(row: &impl Columns) -> Result<JobRecord> {
    let id = row.text("id")?;
    let corrupt = |what: &'static str, reason: String| StorageError::Corrupt { job_id: id.clone(), what, reason };
    let count = |what: &'static str| -> Result<u32> {
        let value = row.int(what)?;
        u32::try_from(value).map_err(|_| corrupt(what, format!("{value} is not a u32")))
    };
    let state = row.text("state")?;
    let sparsity = row.text_opt("sparsity_json")?;
    let report = row.text_opt("report_json")?;
    Ok(JobRecord {
        tenant: row.text("tenant")?,
        name: row.text("name")?,
        state: state.parse().map_err(|e| corrupt("state", e))?,
        spec: parse_json(&row.text("spec_json")?).map_err(|e| corrupt("spec", e))?,
        warnings: parse_json(&row.text("warnings_json")?).map_err(|e| corrupt("warnings", e))?,
        error: row.text_opt("error")?,
        attempts: count("attempts")?,
        max_attempts: count("max_attempts")?,
        threads: count("threads")?,
        step: row.int("step")?,
        total_steps: row.int("total_steps")?,
        epoch: row.int("epoch")?,
        loss: row.float_opt("loss")?,
        accuracy: row.float_opt("accuracy")?,
        sparsity: sparsity
            .as_deref()
            .map(parse_json)
            .transpose()
            .map_err(|e| corrupt("sparsity", e))?
            .unwrap_or_default(),
        report: report.as_deref().map(parse_json).transpose().map_err(|e| corrupt("report", e))?,
        created_ms: row.int("created_ms")?,
        started_ms: row.int_opt("started_ms")?,
        finished_ms: row.int_opt("finished_ms")?,
        node: row.text_opt("lease_owner")?,
        priority: row.int("priority")?,
        labels: parse_json(&row.text("labels_json")?).map_err(|e| corrupt("labels", e))?,
        kind: row.text("kind")?.parse().map_err(|e| corrupt("kind", e))?,
        session: count("tracked_session")?,
        client: row.text_opt("tracked_client")?,
        reported_ms: row.int_opt("reported_ms")?,
        id,
    })
}

fn parse_json<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    serde_json::from_str(text).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{claim, new_job};
    use super::*;

    const LEASE: std::time::Duration = std::time::Duration::from_secs(60);

    on_both_backends!(
        claims_in_submission_order_and_lists_newest_first,
        tenants_see_only_their_jobs_and_queue_up_to_their_limit,
        transitions_are_conditional,
        attempts_and_progress,
    );

    async fn claims_in_submission_order_and_lists_newest_first(db: Db) {
        for id in ["job-a", "job-b", "job-c"] {
            assert!(db.insert_job(&new_job(id), 100).await.unwrap());
        }
        let listed: Vec<String> =
            db.list_jobs("default", &JobFilter::default(), None, 10).await.unwrap().into_iter().map(|j| j.id).collect();
        assert_eq!(listed, ["job-c", "job-b", "job-a"]);
        let page: Vec<String> = db
            .list_jobs("default", &JobFilter::default(), Some("job-c"), 1)
            .await
            .unwrap()
            .into_iter()
            .map(|j| j.id)
            .collect();
        assert_eq!(page, ["job-b"]);

        assert!(db.finish_job("job-a", &[JobState::Queued], JobState::Cancelled, None, None).await.unwrap());
        let first = db.claim_next("node-a", LEASE).await.unwrap().unwrap().job;
        assert_eq!((first.id.as_str(), first.state), ("job-b", JobState::Running));
        assert_eq!((first.attempts, first.node.as_deref()), (1, Some("node-a")));
        assert!(first.started_ms.is_some());
        let running: Vec<String> = db
            .list_jobs("default", &JobFilter { state: Some(JobState::Running), ..JobFilter::default() }, None, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|j| j.id)
            .collect();
        assert_eq!(running, ["job-b"]);
        assert_eq!(db.claim_next("node-b", LEASE).await.unwrap().unwrap().job.id, "job-c");
        assert!(db.claim_next("node-a", LEASE).await.unwrap().is_none());
    }

    async fn tenants_see_only_their_jobs_and_queue_up_to_their_limit(db: Db) {
        let job = |id: &str, tenant: &str| NewJob { tenant: tenant.to_string(), ..new_job(id) };
        assert!(db.insert_job(&job("job-a", "alice"), 2).await.unwrap());
        assert!(db.insert_job(&job("job-b", "alice"), 2).await.unwrap());
        assert!(!db.insert_job(&job("job-c", "alice"), 2).await.unwrap(), "alice has 2 queued");
        assert!(db.insert_job(&job("job-d", "bob"), 2).await.unwrap(), "the limit is per tenant");
        assert!(db.job("job-c").await.unwrap().is_none());

        assert_eq!(db.tenant_job("alice", "job-a").await.unwrap().unwrap().tenant, "alice");
        assert!(db.tenant_job("bob", "job-a").await.unwrap().is_none());
        let ids = |jobs: Vec<JobRecord>| jobs.into_iter().map(|j| j.id).collect::<Vec<_>>();
        assert_eq!(ids(db.list_jobs("alice", &JobFilter::default(), None, 10).await.unwrap()), ["job-b", "job-a"]);
        assert_eq!(ids(db.list_jobs("bob", &JobFilter::default(), None, 10).await.unwrap()), ["job-d"]);

        // Only QUEUED jobs count: once one runs, another may queue.
        db.claim_next("node-a", LEASE).await.unwrap().unwrap();
        assert!(db.insert_job(&job("job-c", "alice"), 2).await.unwrap());
    }

    async fn transitions_are_conditional(db: Db) {
        assert!(db.insert_job(&new_job("job-a"), 100).await.unwrap());
        assert!(!db.finish_job("job-a", &[JobState::Running], JobState::Succeeded, None, None).await.unwrap());
        assert!(db
            .finish_job("job-a", &[JobState::Queued, JobState::Running], JobState::Failed, Some("boom"), None)
            .await
            .unwrap());
        assert!(!db
            .finish_job("job-a", &[JobState::Queued, JobState::Running], JobState::Cancelled, None, None)
            .await
            .unwrap());
        let job = db.job("job-a").await.unwrap().unwrap();
        assert_eq!((job.state, job.error.as_deref()), (JobState::Failed, Some("boom")));
        assert!(job.finished_ms.is_some());
        assert!(db.job("job-zzz").await.unwrap().is_none());
    }

    async fn attempts_and_progress(db: Db) {
        assert!(db.insert_job(&new_job("job-a"), 100).await.unwrap());
        let first = Fence { job_id: "job-a", attempt: claim(&db, "job-a").await };
        assert_eq!(first.attempt, 1);
        db.finish_attempt("job-a", 1, AttemptOutcome::Crashed, Some("killed")).await.unwrap();
        assert!(db.release_lease(first).await.unwrap());
        let second = Fence { job_id: "job-a", attempt: claim(&db, "job-a").await };
        assert_eq!(second.attempt, 2);
        db.set_resumed_step(second, 100).await.unwrap();
        assert_eq!(db.release_node_leases(Some("node-test")).await.unwrap(), 1);
        assert_eq!(db.count_attempts("job-a", AttemptOutcome::Crashed).await.unwrap(), 1);
        assert_eq!(db.count_attempts("job-a", AttemptOutcome::Interrupted).await.unwrap(), 1);
        let attempts = db.attempts("job-a").await.unwrap();
        assert_eq!(attempts.len(), 2);
        assert_eq!((attempts[1].node.as_str(), attempts[1].resumed_step), ("node-test", Some(100)));
        assert_eq!(attempts[0].error.as_deref(), Some("killed"));

        let update = ProgressUpdate {
            step: 7,
            epoch: 1,
            loss: Some(f64::NAN),
            accuracy: Some(0.5),
            sparsity: vec![TensorSparsity { name: "0.weight".into(), sparsity: 0.25 }],
        };
        db.update_progress(second, &update).await.unwrap();
        db.set_total_steps(second, 100).await.unwrap();
        let job = db.job("job-a").await.unwrap().unwrap();
        assert_eq!((job.attempts, job.step, job.epoch, job.total_steps), (2, 7, 1, 100));
        assert_eq!((job.loss, job.accuracy), (None, Some(0.5)));
        assert_eq!(job.sparsity, update.sparsity);
        assert_eq!(job.warnings, ["a warning"]);
        // The first attempt is fenced off.
        assert!(matches!(db.update_progress(first, &update).await, Err(StorageError::NotCurrent { .. })));
    }
}
