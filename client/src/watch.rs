//! [`Client::watch`]: a job's events as a stream that survives server restarts.
//!
//! Every `WatchJob` stream starts with the job as it is now, so re-calling it after a broken
//! connection loses nothing: the watcher simply reconnects with backoff, announcing each try
//! as a [`WatchEvent::Reconnecting`], and ends after the job reaches a terminal state.

use prune_proto as pb;
use prune_proto::job_event::Event;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;

use crate::error::{ClientError, Result};
use crate::retry::Backoff;
use crate::types::{JobInfo, WatchEvent};
use crate::Client;

/// How one `WatchJob` call ended without an error.
enum Ended {
    /// The job reached a terminal state, or nobody listens any more: stop.
    Done,
    /// The server closed the stream before the job finished (e.g. a graceful shutdown).
    Early,
}

impl Client {
    /// The job's events until it ends: first the whole job, then progress and state changes.
    /// The last item is the job in its terminal state, or an error (job unknown, server gone
    /// for longer than the retries last). The stream is fed by a task on the current Tokio
    /// runtime; dropping the stream stops it.
    pub fn watch(&self, job_id: &str) -> impl Stream<Item = Result<WatchEvent>> + Send + Unpin + 'static {
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(watch_loop(self.clone(), job_id.to_string(), tx));
        ReceiverStream::new(rx)
    }
}

async fn watch_loop(client: Client, job_id: String, tx: mpsc::Sender<Result<WatchEvent>>) {
    let mut backoff = Backoff::new();
    loop {
        let reason = match watch_once(&client, &job_id, &tx, &mut backoff).await {
            Ok(Ended::Done) => return,
            Ok(Ended::Early) => "the server closed the stream before the job finished".to_string(),
            Err(e) if e.is_transient() => e.to_string(),
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        let Some(delay) = backoff.next_delay() else {
            let _ = tx.send(Err(ClientError::Connect { addr: client.addr().to_string(), reason })).await;
            return;
        };
        let notice =
            WatchEvent::Reconnecting { attempt: backoff.attempt(), retry_in_ms: delay.as_millis() as u64, reason };
        if tx.send(Ok(notice)).await.is_err() {
            return;
        }
        tokio::time::sleep(delay).await;
    }
}

/// Forwards one `WatchJob` stream. Any event received proves the server is back, so the
/// backoff starts over.
async fn watch_once(
    client: &Client,
    job_id: &str,
    tx: &mpsc::Sender<Result<WatchEvent>>,
    backoff: &mut Backoff,
) -> Result<Ended> {
    let mut stream = client.rpc().watch_job(pb::WatchJobRequest { id: job_id.to_string() }).await?.into_inner();
    while let Some(message) = stream.message().await? {
        backoff.reset();
        let (event, terminal) = match message.event {
            Some(Event::Job(job)) => {
                let job = JobInfo::try_from(job)?;
                let terminal = job.state.is_terminal();
                (WatchEvent::Job(Box::new(job)), terminal)
            }
            Some(Event::Progress(progress)) => (WatchEvent::Progress(progress.into()), false),
            None => continue,
        };
        if tx.send(Ok(event)).await.is_err() || terminal {
            return Ok(Ended::Done);
        }
    }
    Ok(Ended::Early)
}
