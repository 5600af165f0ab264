//! Leases and fencing: how several nodes share one database's jobs (see
//! `migrations/sqlite/0003_leases.sql` and `docs/cluster.md`).
//!
//! * A node **claims** a job ([`Db::claim_next`]): the oldest RUNNING job whose lease expired or
//!   was released (a node died, was partitioned, crashed a worker or shut down), else the oldest
//!   QUEUED one. The claim bumps `jobs.attempts`, sets the lease and opens the attempt's row in
//!   one transaction; an older attempt still open is marked `superseded` in it.
//! * The owner **renews** its leases ([`Db::renew_leases`]) while the workers run; what it no
//!   longer holds (cancelled, taken over) it learns from the same statement.
//! * **Fencing**: the attempt number is the token. Every write an attempt makes ([`Fence`]) is
//!   conditional on `jobs.attempts` still being that number and the job RUNNING, in the same
//!   transaction as the write, so a superseded attempt can write nothing, whatever its node
//!   believes about its lease. River and Oban rescue stuck jobs by age alone and check nothing
//!   when the old worker completes; this is the check they lack.

use std::time::Duration;

use sqlx::QueryBuilder;

use super::jobs::{job_from_row, AttemptOutcome, JobRecord, JobState};
use super::rows::{narrow, Columns};
use super::{now_ms, Db, Result, StorageError};

/// A job this node runs now, as attempt `attempt` (the fencing token of its writes).
#[derive(Debug, Clone)]
pub struct Claim {
    pub job: JobRecord,
    pub attempt: u32,
}

/// Which attempt a write belongs to: the write happens only while it is the job's current one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence<'a> {
    pub job_id: &'a str,
    pub attempt: u32,
}

impl Fence<'_> {
    pub(super) fn rejected(&self) -> StorageError {
        StorageError::NotCurrent { job_id: self.job_id.to_string(), attempt: self.attempt }
    }
}

/// The fence as the first statement of a transaction: an update of the job's row that matches
/// only while the attempt is current (`$1` id, `$2` attempt, `$3` RUNNING). It takes the row's
/// lock (PostgreSQL) or the write lock (SQLite) until the transaction ends, so a claim that
/// supersedes the attempt waits for the write, or the write sees the claim and is rejected.
pub(super) const FENCE: &str = "UPDATE jobs SET attempts = attempts WHERE id = $1 AND attempts = $2 AND state = $3";

/// `fence!(tx, fence)`: runs [`FENCE`] in `tx` and returns `NotCurrent` from the enclosing
/// function when the attempt is no longer the job's current one.
macro_rules! fence {
    ($tx:expr, $fence:expr) => {{
        let fence: &$crate::storage::Fence = &$fence;
        let current = sqlx::query($crate::storage::leases::FENCE)
            .bind(fence.job_id)
            .bind(i64::from(fence.attempt))
            .bind($crate::storage::JobState::Running.as_str())
            .execute(&mut *$tx)
            .await?
            .rows_affected()
            == 1;
        if !current {
            return Err(fence.rejected());
        }
    }};
}
pub(super) use fence;

impl Db {
    /// [`Db::claim_next_fair`] without a per-tenant limit.
    pub async fn claim_next(&self, node: &str, lease: Duration) -> Result<Option<Claim>> {
        self.claim_next_fair(node, lease, u32::MAX).await
    }

    /// Takes the next job for `node` with a lease of `lease`: RUNNING jobs whose lease ran out
    /// (resumed first, oldest first), then QUEUED ones in fair order: the tenant with the fewest
    /// RUNNING jobs first, then the one served least recently (round-robin, so one tenant's
    /// thousand queued jobs cannot starve another's one), then the one waiting longest; within
    /// the tenant higher priority, then submission order; a tenant with
    /// `max_running_per_tenant` jobs RUNNING waits. `None`: nothing to run. Concurrent claimers
    /// never get the same job (PostgreSQL: `FOR UPDATE SKIP LOCKED`; SQLite: the write lock).
    pub async fn claim_next_fair(
        &self,
        node: &str,
        lease: Duration,
        max_running_per_tenant: u32,
    ) -> Result<Option<Claim>> {
        let claimed = with_pool!(self, |pool, backend| {
            let mut tx = backend::begin_write(pool).await?;
            // The time is taken once the write lock is held: a job created while the claim
            // waited for it must not start "before" it was created.
            let now = now_ms();
            let expires = now.saturating_add(lease.as_millis() as i64);
            let Some(row) = sqlx::query(backend::CLAIM_NEXT)
                .bind(JobState::Running.as_str())
                .bind(now)
                .bind(JobState::Queued.as_str())
                .bind(node)
                .bind(expires)
                .bind(i64::from(max_running_per_tenant))
                .fetch_optional(&mut *tx)
                .await?
            else {
                return Ok(None);
            };
            let job = job_from_row(&row)?;
            let attempt = i64::from(job.attempts);
            sqlx::query(
                "UPDATE attempts SET outcome = $1, error = $2, finished_ms = $3 WHERE job_id = $4 AND outcome IS NULL",
            )
            .bind(AttemptOutcome::Superseded.as_str())
            .bind(format!("its lease ran out; attempt {attempt} taken over by node {node}"))
            .bind(now)
            .bind(&job.id)
            .execute(&mut *tx)
            .await?;
            sqlx::query("INSERT INTO attempts (job_id, attempt, started_ms, node) VALUES ($1, $2, $3, $4)")
                .bind(&job.id)
                .bind(attempt)
                .bind(now)
                .bind(node)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            job
        });
        let attempt = claimed.attempts;
        Ok(Some(Claim { job: claimed, attempt }))
    }

    /// Extends `node`'s leases on `jobs` (id, attempt) to now + `lease` and returns those it
    /// still holds: a job missing from the answer was cancelled, finished or taken over, and
    /// its worker must stop.
    pub async fn renew_leases(
        &self,
        node: &str,
        jobs: &[(String, u32)],
        lease: Duration,
    ) -> Result<Vec<(String, u32)>> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let expires = now_ms().saturating_add(lease.as_millis() as i64);
        let held: Vec<(String, i64)> = with_pool!(self, |pool| {
            let mut q = QueryBuilder::new("UPDATE jobs SET lease_expires_ms = ");
            q.push_bind(expires);
            q.push(" WHERE lease_owner = ").push_bind(node.to_string());
            q.push(" AND state = ").push_bind(JobState::Running.as_str());
            q.push(" AND id IN (");
            let mut ids = q.separated(", ");
            for (id, _) in jobs {
                ids.push_bind(id.clone());
            }
            q.push(") RETURNING id, attempts");
            let rows = q.build().fetch_all(pool).await?;
            rows.iter().map(|r| Ok((r.text("id")?, r.int("attempts")?))).collect::<Result<_>>()?
        });
        Ok(jobs
            .iter()
            .filter(|(id, attempt)| held.iter().any(|(h, a)| h == id && *a == i64::from(*attempt)))
            .cloned()
            .collect())
    }

    /// Gives the job up at once (the lease expires now): any node, this one included, claims
    /// it as a new attempt. `false`: the attempt was no longer current.
    pub async fn release_lease(&self, fence: Fence<'_>) -> Result<bool> {
        with_pool!(self, |pool| {
            let released =
                sqlx::query("UPDATE jobs SET lease_expires_ms = 0 WHERE id = $1 AND attempts = $2 AND state = $3")
                    .bind(fence.job_id)
                    .bind(i64::from(fence.attempt))
                    .bind(JobState::Running.as_str())
                    .execute(pool)
                    .await?
                    .rows_affected();
            Ok(released == 1)
        })
    }

    /// At start-up: attempts `node` left open (it died or was killed) are over, and its leases
    /// are released so that their jobs resume at once instead of after the lease. `None`
    /// releases every node's: a SQLite database serves one node.
    pub async fn release_node_leases(&self, node: Option<&str>) -> Result<u64> {
        let now = now_ms();
        with_pool!(self, |pool, backend| {
            let mut tx = backend::begin_write(pool).await?;
            let mut q = QueryBuilder::new("UPDATE attempts SET outcome = ");
            q.push_bind(AttemptOutcome::Interrupted.as_str());
            q.push(", finished_ms = ").push_bind(now);
            q.push(" WHERE outcome IS NULL");
            if let Some(node) = node {
                q.push(" AND node = ").push_bind(node.to_string());
            }
            q.build().execute(&mut *tx).await?;
            let mut q = QueryBuilder::new("UPDATE jobs SET lease_expires_ms = 0 WHERE state = ");
            q.push_bind(JobState::Running.as_str());
            if let Some(node) = node {
                q.push(" AND lease_owner = ").push_bind(node.to_string());
            }
            let released = q.build().execute(&mut *tx).await?.rows_affected();
            tx.commit().await?;
            Ok(released)
        })
    }

    /// Records the checkpoint step an attempt resumed from (known after the claim).
    pub async fn set_resumed_step(&self, fence: Fence<'_>, step: i64) -> Result<()> {
        with_pool!(self, |pool| {
            sqlx::query("UPDATE attempts SET resumed_step = $1 WHERE job_id = $2 AND attempt = $3")
                .bind(step)
                .bind(fence.job_id)
                .bind(i64::from(fence.attempt))
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Every attempt of a job, first first.
    pub async fn attempts(&self, job_id: &str) -> Result<Vec<AttemptRecord>> {
        with_pool!(self, |pool| {
            let rows = sqlx::query(
                "SELECT attempt, node, resumed_step, outcome, error, started_ms, finished_ms FROM attempts \
                 WHERE job_id = $1 ORDER BY attempt",
            )
            .bind(job_id)
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(AttemptRecord {
                        number: narrow("attempt number", r.int("attempt")?)?,
                        node: r.text("node")?,
                        resumed_step: r.int_opt("resumed_step")?,
                        outcome: r.text_opt("outcome")?,
                        error: r.text_opt("error")?,
                        started_ms: r.int("started_ms")?,
                        finished_ms: r.int_opt("finished_ms")?,
                    })
                })
                .collect()
        })
    }
}

/// A row of `attempts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord {
    pub number: u32,
    /// The node that ran it ('' before nodes had names).
    pub node: String,
    pub resumed_step: Option<i64>,
    /// `None` while it runs; else an [`AttemptOutcome`]'s name.
    pub outcome: Option<String>,
    pub error: Option<String>,
    pub started_ms: i64,
    pub finished_ms: Option<i64>,
}

#[cfg(test)]
#[path = "leases_tests.rs"]
mod tests;
