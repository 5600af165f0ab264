//! WatchJob: the job as it is now, then its progress and state changes until it ends.

use prune_proto as pb;
use prune_proto::job_event::Event;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::Status;

use super::Service;
use crate::api::auth::Tenant;
use crate::api::views;
use crate::jobs::live::{JobUpdate, LiveEvent};
use crate::storage::now_ms;

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
    if tx.send(event(Event::Job(first))).await.is_err() || done {
        return;
    }
    let shutdown = service.shared.shutdown.clone();
    loop {
        let update = tokio::select! {
            update = updates.recv() => update,
            () = tx.closed() => return,
            () = shutdown.cancelled() => {
                let _ = tx.send(Err(Status::unavailable("server shutting down: watch again to resume"))).await;
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
