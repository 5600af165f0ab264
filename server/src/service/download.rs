//! DownloadArtifact: the artifact's description, then its bytes from `read_offset` on.

use std::io::SeekFrom;

use prune_proto as pb;
use prune_proto::download_artifact_response::Part;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::Status;

use crate::config::DataDir;
use crate::storage::{Db, JobRecord, JobState};
use crate::views;

/// Bytes per data message.
pub const CHUNK: usize = 256 * 1024;
/// Chunks read ahead of a slow client.
const READ_AHEAD: usize = 4;

/// Checks everything that can fail before the stream starts, so that such errors are the
/// call's status rather than a broken stream.
pub async fn stream(
    db: &Db,
    data_dir: &DataDir,
    job: &JobRecord,
    format: &str,
    read_offset: u64,
) -> Result<impl Stream<Item = Result<pb::DownloadArtifactResponse, Status>>, Status> {
    if job.state != JobState::Succeeded {
        return Err(Status::failed_precondition(format!(
            "job {} is {}: artifacts can be downloaded once it has SUCCEEDED",
            job.id, job.state
        )));
    }
    let format = match format {
        "" => job.spec.export.formats.first().map(String::as_str).unwrap_or("safetensors"),
        f => f,
    };
    let artifacts = db.artifacts(&job.id).await?;
    let Some(artifact) = artifacts.iter().find(|a| a.format == format) else {
        let exported: Vec<&str> = artifacts.iter().map(|a| a.format.as_str()).collect();
        return Err(Status::failed_precondition(format!(
            "job {} did not export format `{format}` (it exported: {})",
            job.id,
            exported.join(", ")
        )));
    };
    if read_offset > artifact.bytes {
        return Err(Status::out_of_range(format!(
            "read_offset {read_offset} is past the end of the {}-byte artifact",
            artifact.bytes
        )));
    }
    let path = data_dir.resolve(&artifact.path);
    let mut file = tokio::fs::File::open(&path).await.map_err(|e| {
        tracing::error!(job_id = job.id, path = %path.display(), "artifact unreadable: {e}");
        Status::data_loss(format!("the artifact file of job {} is unreadable: {e}", job.id))
    })?;
    file.seek(SeekFrom::Start(read_offset)).await.map_err(|e| Status::internal(e.to_string()))?;

    let (tx, rx) = mpsc::channel(READ_AHEAD);
    let info = views::artifact(artifact);
    tokio::spawn(async move {
        if tx.send(Ok(pb::DownloadArtifactResponse { part: Some(Part::Info(info)) })).await.is_err() {
            return;
        }
        loop {
            let mut chunk = Vec::with_capacity(CHUNK);
            match (&mut file).take(CHUNK as u64).read_to_end(&mut chunk).await {
                Ok(0) => return,
                Ok(_) => {
                    if tx.send(Ok(pb::DownloadArtifactResponse { part: Some(Part::Data(chunk)) })).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(Status::internal(format!("reading the artifact: {e}")))).await;
                    return;
                }
            }
        }
    });
    Ok(ReceiverStream::new(rx))
}
