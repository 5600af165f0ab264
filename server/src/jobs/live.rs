//! What is known about running jobs only in memory, and the broadcast watchers listen on.
//!
//! Progress arrives several times a second; it lives here (and reaches the database only now
//! and then). State changes are in the database first; the broadcast only says "look again".

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prune_core::domain::TensorSparsity;
use tokio::sync::broadcast;

/// Enough for a few seconds of progress of many jobs; a watcher that falls further behind
/// re-reads the job (see `service::watch`), so nothing is lost but intermediate progress.
const CHANNEL_CAPACITY: usize = 1024;

#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub step: i64,
    pub total_steps: i64,
    pub epoch: i64,
    pub loss: f64,
    pub accuracy: f64,
    pub sparsity: Vec<TensorSparsity>,
    pub eta_seconds: Option<f64>,
}

#[derive(Debug, Clone)]
pub enum LiveEvent {
    Progress(Progress),
    /// The job's row changed state (or started a new attempt): re-read it.
    StateChanged,
}

#[derive(Debug, Clone)]
pub struct JobUpdate {
    pub job_id: Arc<str>,
    pub event: LiveEvent,
}

/// The live view of one running attempt.
#[derive(Debug, Clone, Default)]
pub struct LiveJob {
    pub worker_pid: Option<u32>,
    pub progress: Option<Progress>,
    /// First progress of this attempt: the base of the ETA's step rate.
    rate_base: Option<(i64, Instant)>,
}

#[derive(Debug, Clone)]
pub struct Live {
    jobs: Arc<Mutex<HashMap<String, LiveJob>>>,
    updates: broadcast::Sender<JobUpdate>,
}

impl Default for Live {
    fn default() -> Self {
        Live { jobs: Arc::default(), updates: broadcast::channel(CHANNEL_CAPACITY).0 }
    }
}

impl Live {
    pub fn subscribe(&self) -> broadcast::Receiver<JobUpdate> {
        self.updates.subscribe()
    }

    pub fn get(&self, job_id: &str) -> Option<LiveJob> {
        self.jobs.lock().expect("live lock").get(job_id).cloned()
    }

    /// A new attempt started.
    pub fn attempt_started(&self, job_id: &str, pid: Option<u32>) {
        self.jobs
            .lock()
            .expect("live lock")
            .insert(job_id.to_string(), LiveJob { worker_pid: pid, ..Default::default() });
        self.state_changed(job_id);
    }

    /// The attempt's process is gone; the database has the rest.
    pub fn attempt_ended(&self, job_id: &str) {
        self.jobs.lock().expect("live lock").remove(job_id);
    }

    /// Records progress (estimating the time left from the step rate so far) and tells watchers.
    pub fn progress(&self, job_id: &str, mut progress: Progress) {
        {
            let mut jobs = self.jobs.lock().expect("live lock");
            let job = jobs.entry(job_id.to_string()).or_default();
            let now = Instant::now();
            let (base_step, base_time) = *job.rate_base.get_or_insert((progress.step, now));
            progress.eta_seconds = eta(base_step, base_time, now, progress.step, progress.total_steps);
            job.progress = Some(progress.clone());
        }
        self.send(job_id, LiveEvent::Progress(progress));
    }

    pub fn state_changed(&self, job_id: &str) {
        self.send(job_id, LiveEvent::StateChanged);
    }

    fn send(&self, job_id: &str, event: LiveEvent) {
        // No receivers is fine: nobody is watching.
        let _ = self.updates.send(JobUpdate { job_id: job_id.into(), event });
    }
}

fn eta(base_step: i64, base_time: Instant, now: Instant, step: i64, total: i64) -> Option<f64> {
    let elapsed = now.duration_since(base_time).as_secs_f64();
    let done = step - base_step;
    (done > 0 && elapsed > 0.0 && total >= step).then(|| (total - step) as f64 * elapsed / done as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn eta_from_step_rate() {
        let t0 = Instant::now();
        assert_eq!(eta(0, t0, t0 + Duration::from_secs(10), 100, 300), Some(20.0));
        assert_eq!(eta(50, t0, t0 + Duration::from_secs(1), 50, 300), None);
    }

    #[tokio::test]
    async fn progress_is_kept_and_broadcast() {
        let live = Live::default();
        let mut rx = live.subscribe();
        live.attempt_started("job-a", Some(42));
        let p = Progress {
            step: 1,
            total_steps: 10,
            epoch: 0,
            loss: 1.0,
            accuracy: 0.1,
            sparsity: vec![],
            eta_seconds: None,
        };
        live.progress("job-a", p.clone());
        assert!(matches!(rx.recv().await.unwrap().event, LiveEvent::StateChanged));
        let update = rx.recv().await.unwrap();
        assert_eq!(&*update.job_id, "job-a");
        assert!(matches!(update.event, LiveEvent::Progress(ref got) if got.step == 1));
        let job = live.get("job-a").unwrap();
        assert_eq!((job.worker_pid, job.progress.unwrap().step), (Some(42), 1));
        live.attempt_ended("job-a");
        assert!(live.get("job-a").is_none());
    }
}
