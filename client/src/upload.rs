//! Blob upload: content-addressed, so a file the server already has is never sent twice,
//! streamed in 1 MiB chunks so that a model of any size is never held in memory whole, and
//! resumed where it stopped when the connection breaks or the server restarts mid-upload.

use std::fs::File;
use std::io::{self, Read, SeekFrom};
use std::path::{Path, PathBuf};

use prune_proto as pb;
use prune_proto::upload_blob_request::Part;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::error::{ClientError, Result};
use crate::retry::Backoff;
use crate::Client;

/// Bytes per upload message and per read while hashing.
pub const CHUNK_SIZE: usize = 1 << 20;

/// The outcome of [`Client::upload_file`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Uploaded {
    pub path: PathBuf,
    /// `sha256:<hex>`: how job specs refer to the blob.
    pub id: String,
    pub size: u64,
    /// `false` when the server already had the blob and nothing was sent.
    pub uploaded: bool,
    /// Bytes the server already held from an interrupted upload, not sent again (0: none).
    pub resumed_from: u64,
}

/// The blob id of content with this hex sha256.
pub fn blob_id(sha256_hex: &str) -> String {
    format!("sha256:{sha256_hex}")
}

/// Size and lowercase hex sha256 of a file, read in [`CHUNK_SIZE`] pieces on a blocking thread.
pub async fn digest_file(path: impl AsRef<Path>) -> Result<(u64, String)> {
    let path = path.as_ref();
    let owned = path.to_path_buf();
    tokio::task::spawn_blocking(move || digest_reader(File::open(&owned)?))
        .await
        .map_err(|e| ClientError::io(path, io::Error::other(e)))?
        .map_err(|e| ClientError::io(path, e))
}

fn digest_reader(mut reader: impl Read) -> io::Result<(u64, String)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK_SIZE];
    let mut size = 0u64;
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            return Ok((size, hex::encode(hasher.finalize())));
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
}

/// Files at least this large are hashed while they are sent; smaller ones are hashed first, so
/// that one the server has already is never sent at all.
pub const HASH_WHILE_SENDING_BYTES: u64 = 32 << 20;

impl Client {
    /// Uploads `path` unless the server already has its content; returns the blob id either way.
    ///
    /// A large file is hashed on one thread while another sends it (the header leaves the
    /// sha256 out and a `checksum` message follows as soon as it is known; the server stops
    /// the call early if it has the blob already). A small one is hashed first and sent only if
    /// HasBlob says the server lacks it. If the connection breaks, the upload resumes from the
    /// bytes the server kept (HasBlob's `uploaded`), with backoff.
    pub async fn upload_file(&self, path: &Path) -> Result<Uploaded> {
        let size = tokio::fs::metadata(path).await.map_err(|e| ClientError::io(path, e))?.len();
        let mut backoff = Backoff::new();
        let mut sent_before = false;
        let mut known = None;
        if size >= HASH_WHILE_SENDING_BYTES {
            let (hashed, sent) = self.send_hashing(path, size).await;
            // A file that could not be read: its own error, whatever the server said.
            let (size, sha256) = hashed?;
            match sent {
                Ok(all) => {
                    let id = blob_id(&sha256);
                    return Ok(Uploaded { path: path.to_path_buf(), id, size, uploaded: all, resumed_from: 0 });
                }
                // An interrupted upload of this blob can be resumed: the loop below does.
                Err(e) if e.reason().as_deref() == Some("UPLOAD_RESUMABLE") => {}
                Err(e) if e.is_transient() => {
                    sent_before = true;
                    if let Some(delay) = backoff.next_delay() {
                        tokio::time::sleep(delay).await;
                    }
                }
                Err(e) => return Err(e),
            }
            known = Some((size, sha256));
        }
        let (size, sha256) = match known {
            Some(hashed) => hashed,
            None => digest_file(path).await?,
        };
        let id = blob_id(&sha256);
        let done = |uploaded, resumed_from| Uploaded {
            path: path.to_path_buf(),
            id: id.clone(),
            size,
            uploaded,
            resumed_from,
        };
        let mut resumed_from = 0;
        loop {
            let attempt = async {
                let held = self.rpc().has_blob(pb::HasBlobRequest { id: id.clone() }).await?.into_inner();
                if held.exists {
                    return Ok(None);
                }
                // More than the file holds: not this file's upload after all; start over.
                let offset = if held.uploaded <= size { held.uploaded } else { 0 };
                let header = pb::BlobHeader { size, sha256: sha256.clone(), offset };
                self.send(path, header).await.map(|()| Some(offset))
            };
            match attempt.await {
                Ok(None) => return Ok(done(sent_before, resumed_from)),
                Ok(Some(offset)) => {
                    resumed_from = resumed_from.max(offset);
                    return Ok(done(true, resumed_from));
                }
                Err(e) if e.is_transient() => {
                    sent_before = true;
                    match backoff.next_delay() {
                        Some(delay) => tokio::time::sleep(delay).await,
                        None => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One UploadBlob call that sends `path` while a blocking thread hashes it. Returns the
    /// file's size and sha256 (`Err` only if it could not be read) and the call's outcome:
    /// whether every byte was sent (`false`: the server had the blob and stopped the call).
    async fn send_hashing(&self, path: &Path, size: u64) -> (Result<(u64, String)>, Result<bool>) {
        let hashing = tokio::spawn(digest_file(path.to_path_buf()));
        let (hashed_tx, hashed_rx) = tokio::sync::watch::channel(None);
        // The hash goes to the sender as soon as it is known, and is kept for the caller.
        let hashed = async move {
            let hashed = hashing.await.map_err(|e| ClientError::io(path, io::Error::other(e))).and_then(|r| r);
            let _ = hashed_tx.send(hashed.as_ref().ok().map(|(_, sha256)| sha256.clone()));
            hashed
        };
        let (tx, rx) = mpsc::channel(4);
        let header = pb::BlobHeader { size, sha256: String::new(), offset: 0 };
        let sending = tokio::spawn(send_file(path.to_path_buf(), header, Some(hashed_rx), tx));
        let call = async {
            let reply = self.rpc().upload_blob(ReceiverStream::new(rx)).await;
            // A read error cuts the request stream short: it, not the server's complaint.
            let all = sending.await.map_err(|e| ClientError::io(path, io::Error::other(e)))??;
            Ok::<_, ClientError>((reply?.into_inner(), all))
        };
        let (hashed, outcome) = tokio::join!(hashed, call);
        let sent = outcome.and_then(|(blob, all)| {
            let Ok((_, sha256)) = &hashed else { return Ok(all) }; // the caller reports that
            if blob.id != blob_id(sha256) {
                return Err(ClientError::Protocol(format!(
                    "uploaded {} but the server stored {}",
                    blob_id(sha256),
                    blob.id
                )));
            }
            Ok(all)
        });
        (hashed, sent)
    }

    /// One UploadBlob call: `header`, then the file from `header.offset` on.
    async fn send(&self, path: &Path, header: pb::BlobHeader) -> Result<()> {
        let id = blob_id(&header.sha256);
        let (tx, rx) = mpsc::channel(4);
        let reader = tokio::spawn(send_file(path.to_path_buf(), header, None, tx));
        let reply = self.rpc().upload_blob(ReceiverStream::new(rx)).await;
        // A read error cuts the request stream short; report it rather than the server's
        // complaint about a short upload.
        reader.await.map_err(|e| ClientError::io(path, io::Error::other(e)))??;
        let blob = reply?.into_inner();
        if blob.id != id {
            return Err(ClientError::Protocol(format!("uploaded {id} but the server stored {}", blob.id)));
        }
        Ok(())
    }
}

/// Feeds the upload stream: the header, then the file in [`CHUNK_SIZE`] chunks, and, for a
/// header without sha256, a `checksum` message once `checksum` has it (between chunks, or after
/// the last). Returns whether everything was sent: `false` if the server ended the call early
/// (the call's own status says why).
async fn send_file(
    path: PathBuf,
    header: pb::BlobHeader,
    mut checksum: Option<tokio::sync::watch::Receiver<Option<String>>>,
    tx: mpsc::Sender<pb::UploadBlobRequest>,
) -> Result<bool> {
    let message = |part| pb::UploadBlobRequest { part: Some(part) };
    let offset = header.offset;
    if tx.send(message(Part::Header(header))).await.is_err() {
        return Ok(false);
    }
    let mut file = tokio::fs::File::open(&path).await.map_err(|e| ClientError::io(&path, e))?;
    file.seek(SeekFrom::Start(offset)).await.map_err(|e| ClientError::io(&path, e))?;
    loop {
        let known = checksum.as_ref().and_then(|c| c.borrow().clone());
        if let Some(sha256) = known {
            checksum = None;
            if tx.send(message(Part::Checksum(sha256))).await.is_err() {
                return Ok(false);
            }
        }
        let mut chunk = Vec::with_capacity(CHUNK_SIZE);
        let n =
            (&mut file).take(CHUNK_SIZE as u64).read_to_end(&mut chunk).await.map_err(|e| ClientError::io(&path, e))?;
        if n == 0 {
            break;
        }
        if tx.send(message(Part::Data(chunk))).await.is_err() {
            return Ok(false);
        }
    }
    if let Some(mut pending) = checksum {
        // All sent before the hash was done (the reader was faster): wait for it. A hashing
        // failure ends the stream without it; the caller reports that failure.
        let Ok(known) = pending.wait_for(Option::is_some).await.map(|v| v.clone()) else { return Ok(true) };
        if let Some(sha256) = known {
            if tx.send(message(Part::Checksum(sha256))).await.is_err() {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn digest_matches_a_one_shot_hash_across_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let data: Vec<u8> = (0..(CHUNK_SIZE * 2 + 123)).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let (size, hex_digest) = digest_file(&path).await.unwrap();
        assert_eq!(size, data.len() as u64);
        assert_eq!(hex_digest, hex::encode(Sha256::digest(&data)));
    }

    #[tokio::test]
    async fn chunks_are_at_most_one_mebibyte_and_follow_the_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        std::fs::write(&path, vec![7u8; CHUNK_SIZE + 10]).unwrap();
        let (tx, mut rx) = mpsc::channel(8);
        send_file(path, pb::BlobHeader { size: 0, sha256: String::new(), offset: 0 }, None, tx).await.unwrap();
        assert!(matches!(rx.recv().await.unwrap().part, Some(Part::Header(_))));
        let sizes: Vec<usize> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|m| match m.part {
                Some(Part::Data(d)) => d.len(),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(sizes, [CHUNK_SIZE, 10]);
    }

    #[tokio::test]
    async fn a_resume_sends_only_what_follows_the_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let data: Vec<u8> = (0..(CHUNK_SIZE + 10)).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let (tx, mut rx) = mpsc::channel(8);
        let offset = CHUNK_SIZE as u64 + 3;
        send_file(path, pb::BlobHeader { size: 0, sha256: String::new(), offset }, None, tx).await.unwrap();
        assert!(matches!(rx.recv().await.unwrap().part, Some(Part::Header(h)) if h.offset == offset));
        match rx.recv().await.unwrap().part {
            Some(Part::Data(d)) => assert_eq!(d, &data[CHUNK_SIZE + 3..]),
            other => panic!("unexpected {other:?}"),
        }
        assert!(rx.recv().await.is_none());
    }

    #[tokio::test]
    async fn missing_file_names_the_path() {
        let err = digest_file(Path::new("/nonexistent/model.pt")).await.unwrap_err();
        assert!(err.to_string().starts_with("/nonexistent/model.pt: "), "{err}");
    }
}
