//! WatchJob: the job as it is now, then its progress and state changes until it ends.

use prune_proto as pb;
use prune_proto::job_event::Event;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::Status;

use super::Service;
use crate::api::auth::Tenant;
use crate::api::status::{self, Reason};
use crate::api::views;
use crate::jobs::live::{JobUpdate, LiveEvent};
use crate::storage::now_ms;

/// How often a watcher re-reads a job that runs on another node (its progress reaches this
/// node only through the database, where the owner writes it every few seconds).
const POLL_REMOTE: Duration = Duration::from_secs(1);

/// A few events of slack between the job and a slow client; beyond that the broadcast's own
/// buffer takes over, and a client that falls behind that gets a fresh snapshot instead.
const BUFFER: usize = 16;

pub fn stream(
    service: Service,
    tenant: Tenant,
    job_id: String,
    first: pb::Job,
    updates: broadcast::Receiver<JobUpdate>,
) -> impl Stream<Item = Result<pb::JobEvent, Status>> {
    let (tx, rx) = mpsc::channel(BUFFER);
    tokio::spawn(forward(service, tenant, job_id, first, updates, tx));
    ReceiverStream::new(rx)
}

fn event(event: Event) -> Result<pb::JobEvent, Status> {
    Ok(pb::JobEvent { unix_ms: now_ms(), event: Some(event) })
}

fn is_terminal(job: &pb::Job) -> bool {
    matches!(
        pb::JobState::try_from(job.state),
        Ok(pb::JobState::Succeeded | pb::JobState::Failed | pb::JobState::Cancelled)
    )
}

async fn forward(
    service: Service,
    tenant: Tenant,
    job_id: String,
    first: pb::Job,
    mut updates: broadcast::Receiver<JobUpdate>,
    tx: mpsc::Sender<Result<pb::JobEvent, Status>>,
) {
    let done = is_terminal(&first);
    let mut seen = Seen::of(&first);
    if tx.send(event(Event::Job(first))).await.is_err() || done {
        return;
    }
    let shutdown = service.shared.shutdown.clone();
    let mut poll = tokio::time::interval(POLL_REMOTE);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let update = tokio::select! {
            update = updates.recv() => update,
            _ = poll.tick() => {
                // Running here: the live updates say everything. Elsewhere (another node runs
                // it, or it waits in the queue), the row is the news.
                if service.shared.live.get(&job_id).is_some() {
                    continue;
                }
                match service.job(&tenant, &job_id).await {
                    Ok(job) if Seen::of(&job) != seen => {
                        seen = Seen::of(&job);
                        let done = is_terminal(&job);
                        if tx.send(event(Event::Job(job))).await.is_err() || done {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                }
                continue;
            }
            () = tx.closed() => return,
            () = shutdown.cancelled() => {
                let _ = tx.send(Err(status::unavailable(
                    Reason::ShuttingDown,
                    "server shutting down: watch again to resume",
                    Duration::from_secs(1),
                ))).await;
                return;
            }
        };
        let message = match update {
            Ok(JobUpdate { job_id: id, .. }) if *id != *job_id => continue,
            Ok(JobUpdate { event: LiveEvent::Progress(p), .. }) => event(Event::Progress(views::progress(&p))),
            // A state change, or missed updates: the current job says everything.
            Ok(JobUpdate { event: LiveEvent::StateChanged, .. }) | Err(broadcast::error::RecvError::Lagged(_)) => {
                match service.job(&tenant, &job_id).await {
                    Ok(job) => {
                        seen = Seen::of(&job);
                        let done = is_terminal(&job);
                        if tx.send(event(Event::Job(job))).await.is_err() || done {
                            return;
                        }
                        continue;
                    }
                    Err(status) => Err(status),
                }
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if tx.send(message).await.is_err() {
            return;
        }
    }
}

/// What of a job a remote watcher is told about when it changes.
#[derive(Debug, PartialEq)]
struct Seen {
    state: i32,
    step: i64,
    total_steps: i64,
    attempts: u32,
    node: String,
}

impl Seen {
    fn of(job: &pb::Job) -> Self {
        Seen {
            state: job.state,
            step: job.step,
            total_steps: job.total_steps,
            attempts: job.attempts,
            node: job.node.clone(),
        }
    }
}
