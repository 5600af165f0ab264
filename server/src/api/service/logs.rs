//! StreamJobLogs: the job's stored worker log lines, then (with `follow`) new ones until the
//! job ends. Lines are read from the database, so any node streams any job's logs.

use std::time::Duration;

use prune_proto as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::Status;

use super::Service;
use crate::api::auth::Tenant;
use crate::storage::{LogLine, LogPosition};

/// Lines per database read.
const BATCH: u32 = 500;
/// How often a follower looks for new lines (the owner writes them about this often).
const FOLLOW_EVERY: Duration = Duration::from_millis(500);

pub fn stream(
    service: Service,
    tenant: Tenant,
    job_id: String,
    after: Option<LogPosition>,
    follow: bool,
) -> impl Stream<Item = Result<pb::LogLine, Status>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut after = after;
        loop {
            // Whether the job had ended *before* this read: then the read saw every line.
            let ended = match service.record(&tenant, &job_id).await {
                Ok(job) => job.state.is_terminal(),
                Err(status) => {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            };
            let lines = match service.shared.db.logs(&job_id, after, BATCH).await {
                Ok(lines) => lines,
                Err(e) => {
                    let _ = tx.send(Err(e.into())).await;
                    return;
                }
            };
            let full = lines.len() == BATCH as usize;
            for LogLine { attempt, line_no, unix_ms, text } in lines {
                after = Some((attempt, line_no));
                if tx.send(Ok(pb::LogLine { attempt, line_no, unix_ms, text })).await.is_err() {
                    return;
                }
            }
            if full {
                continue;
            }
            if !follow || ended {
                return;
            }
            tokio::select! {
                () = tokio::time::sleep(FOLLOW_EVERY) => {}
                () = tx.closed() => return,
                () = service.shared.shutdown.cancelled() => return,
            }
        }
    });
    ReceiverStream::new(rx)
}
