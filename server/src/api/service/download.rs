//! DownloadArtifact: the artifact's description, then its bytes from `read_offset` on: one
//! stored file, or all files of a several-file export (a sharded checkpoint) as a tar archive.

use std::io::Read;
use std::sync::Arc;

use prune_proto as pb;
use prune_proto::download_artifact_response::Part;
use prune_store::{FileStore, Key};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Code, Status};

use super::archive::Archive;
use crate::api::status::{self, Reason};
use crate::api::views;
use crate::storage::{ArtifactRecord, Db, JobRecord, JobState};

/// Bytes per data message.
pub const CHUNK: usize = 256 * 1024;
/// Chunks read ahead of a slow client.
const READ_AHEAD: usize = 4;

/// Checks everything that can fail before the stream starts, so that such errors are the
/// call's status rather than a broken stream.
pub async fn stream(
    db: &Db,
    store: &Arc<dyn FileStore>,
    job: &JobRecord,
    format: &str,
    file_name: &str,
    read_offset: u64,
) -> Result<impl Stream<Item = Result<pb::DownloadArtifactResponse, Status>>, Status> {
    if job.state != JobState::Succeeded {
        return Err(status::no_results(&job.id, job.state, "artifacts"));
    }
    let format = match format {
        "" => job.spec.export.formats.first().map(String::as_str).unwrap_or("safetensors"),
        f => f,
    };
    let artifacts = db.artifacts(&job.id).await?;
    let files: Vec<&ArtifactRecord> = artifacts.iter().filter(|a| a.format == format).collect();
    if files.is_empty() {
        let mut exported: Vec<&str> = artifacts.iter().map(|a| a.format.as_str()).collect();
        exported.dedup();
        let message = format!("job {} did not export format `{format}` (it exported: {})", job.id, exported.join(", "));
        return Err(status::error(Code::FailedPrecondition, Reason::FormatNotExported, message));
    }
    let unreadable = |e: String| {
        tracing::error!(job_id = job.id, format, "artifact unreadable: {e}");
        let message = format!("the artifact file of job {} is unreadable: {e}", job.id);
        status::error(Code::DataLoss, Reason::ArtifactUnreadable, message)
    };
    let served = match (file_name, files.as_slice()) {
        ("", [one]) => Served::File(one),
        ("", many) => Served::Archive(many),
        (name, _) => match files.iter().find(|a| views::file_name(a) == name) {
            Some(file) => Served::File(file),
            None => {
                let names: Vec<String> = files.iter().map(|a| views::file_name(a)).collect();
                let message = format!(
                    "job {}'s `{format}` export has no file `{name}` (its files: {})",
                    job.id,
                    names.join(", ")
                );
                return Err(status::error(Code::NotFound, Reason::ArtifactFileNotFound, message));
            }
        },
    };
    let (info, reader) = match served {
        Served::File(artifact) => {
            check_offset(read_offset, artifact.bytes)?;
            let key = Key::parse(artifact.path.as_str()).map_err(|e| unreadable(e.to_string()))?;
            let opened = {
                let store = store.clone();
                tokio::task::spawn_blocking(move || store.open(&key, read_offset)).await
            };
            let reader = opened.map_err(|e| status::internal(e.to_string()))?.map_err(|e| unreadable(e.to_string()))?;
            (views::artifact(artifact), reader)
        }
        Served::Archive(files) => {
            let archive = Archive::new(files.iter().map(|a| (*a, views::file_name(a)))).map_err(unreadable)?;
            let size = archive.len();
            check_offset(read_offset, size)?;
            let info = pb::ArtifactInfo {
                format: format.to_string(),
                size,
                sha256: String::new(),
                compression: "none".into(),
                sparse_format: files[0].sparse_format.clone(),
                file_name: format!("{}-{format}.tar", job.id),
            };
            (info, Box::new(archive.reader(store.clone(), read_offset)) as Box<dyn Read + Send>)
        }
    };
    let mut reader = reader;

    let (tx, rx) = mpsc::channel(READ_AHEAD);
    if tx.try_send(Ok(pb::DownloadArtifactResponse { part: Some(Part::Info(info)) })).is_err() {
        return Err(status::internal("the download stream is full before it started"));
    }
    // The store's reader blocks: it runs on a blocking thread, bounded by the channel.
    tokio::task::spawn_blocking(move || loop {
        let mut chunk = Vec::with_capacity(CHUNK);
        match (&mut reader).take(CHUNK as u64).read_to_end(&mut chunk) {
            Ok(0) => return,
            Ok(_) => {
                if tx.blocking_send(Ok(pb::DownloadArtifactResponse { part: Some(Part::Data(chunk)) })).is_err() {
                    return;
                }
            }
            Err(e) => {
                let _ = tx.blocking_send(Err(status::internal(format!("reading the artifact: {e}"))));
                return;
            }
        }
    });
    Ok(ReceiverStream::new(rx))
}

/// What a download sends: one stored file, or an export of several as one archive.
enum Served<'a> {
    File(&'a ArtifactRecord),
    Archive(&'a [&'a ArtifactRecord]),
}

fn check_offset(read_offset: u64, size: u64) -> Result<(), Status> {
    if read_offset > size {
        let message = format!("read_offset {read_offset} is past the end of the {size}-byte artifact");
        return Err(status::error(Code::OutOfRange, Reason::OffsetOutOfRange, message));
    }
    Ok(())
}
