//! The node's heartbeat: renews the leases of its running attempts, stops the workers of those
//! it no longer holds, and wakes the scheduler to look for claimable jobs.
//!
//! It runs apart from the scheduler loop, whose database calls may hang while the database is
//! unreachable: a node that cannot renew must still stop its own workers before its leases run
//! out, so that by the time another node takes a job over, the old worker is gone (fencing
//! rejects its writes anyway; stopping it saves the work and the store traffic).

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::jobs::scheduler::{Registry, SchedulerHandle};
use crate::storage::Db;

/// How often leases are renewed and the scheduler polls: a third of the lease (two renewals
/// may fail before it runs out), at most a second, so that a cancel on another node or a
/// job queued there is noticed within about a second.
pub fn tick(lease: Duration) -> Duration {
    (lease / 3).clamp(Duration::from_millis(50), Duration::from_secs(1))
}

/// A node that has not renewed for this long stops its workers: the lease, less one tick for
/// the kill to take effect.
pub fn give_up_after(lease: Duration) -> Duration {
    lease.saturating_sub(tick(lease)).max(tick(lease))
}

pub(crate) fn start(
    db: Db,
    node: String,
    lease: Duration,
    running: Registry,
    scheduler: SchedulerHandle,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let tick = tick(lease);
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The lease of everything held was last extended at this instant (or later).
        let mut renewed_at = Instant::now();
        let mut gave_up = false;
        loop {
            interval.tick().await;
            scheduler.wake();
            let held: Vec<(String, u32)> = {
                let running = running.lock().unwrap_or_else(|p| p.into_inner());
                running.iter().map(|(id, r)| (id.clone(), r.attempt)).collect()
            };
            let started = Instant::now();
            if held.is_empty() {
                (renewed_at, gave_up) = (started, false);
                continue;
            }
            match tokio::time::timeout(tick.max(Duration::from_millis(500)), db.renew_leases(&node, &held, lease)).await
            {
                Ok(Ok(still)) => {
                    (renewed_at, gave_up) = (started, false);
                    for (job_id, attempt) in held.iter().filter(|h| !still.contains(h)) {
                        tracing::warn!(
                            job_id,
                            attempt,
                            "lease lost (job cancelled or taken over): stopping its worker"
                        );
                        kill(&running, job_id, *attempt, "stopped by its node: the job was cancelled or taken over");
                    }
                }
                Ok(Err(e)) => tracing::warn!("renewing {} lease(s): {e}", held.len()),
                Err(_) => tracing::warn!("renewing {} lease(s): no answer within {tick:?}", held.len()),
            }
            if renewed_at.elapsed() >= give_up_after(lease) && !gave_up {
                tracing::error!(
                    "no lease renewed for {:?}: stopping this node's {} worker(s) before the leases run out",
                    renewed_at.elapsed(),
                    held.len()
                );
                gave_up = true;
                let reason = format!(
                    "stopped by its node: no lease renewal for {:.1} s (database unreachable?)",
                    renewed_at.elapsed().as_secs_f64()
                );
                for (job_id, attempt) in &held {
                    kill(&running, job_id, *attempt, &reason);
                }
            }
        }
    })
}

/// Kills the attempt's worker, noting why in the registry (its end is then no crash).
fn kill(running: &Registry, job_id: &str, attempt: u32, reason: &str) {
    let mut running = running.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(r) = running.get_mut(job_id).filter(|r| r.attempt == attempt) {
        r.stopped_by_node = Some(reason.to_string());
        r.handle.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_leave_room_for_missed_renewals() {
        assert_eq!(tick(Duration::from_secs(30)), Duration::from_secs(1));
        assert_eq!(tick(Duration::from_secs(3)), Duration::from_secs(1));
        assert_eq!(tick(Duration::from_millis(900)), Duration::from_millis(300));
        assert_eq!(give_up_after(Duration::from_secs(30)), Duration::from_secs(29));
        assert_eq!(give_up_after(Duration::from_secs(3)), Duration::from_secs(2));
        assert!(give_up_after(Duration::from_millis(100)) >= tick(Duration::from_millis(100)));
    }
}
