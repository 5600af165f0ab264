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
pub async fn digest_file(path: &Path) -> Result<(u64, String)> {
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

impl Client {
    /// Uploads `path` unless the server already has its content; returns the blob id either way.
    ///
    /// The file is read twice: once to hash it (the first message must carry size and sha256,
    /// which lets the server verify the upload) and once to send it. If the connection breaks,
    /// the upload resumes from the bytes the server kept (HasBlob's `uploaded`), with backoff.
    pub async fn upload_file(&self, path: &Path) -> Result<Uploaded> {
        let (size, sha256) = digest_file(path).await?;
        let id = blob_id(&sha256);
        let done = |uploaded, resumed_from| Uploaded {
            path: path.to_path_buf(),
            id: id.clone(),
            size,
            uploaded,
            resumed_from,
        };
        let mut backoff = Backoff::new();
        let mut sent_before = false;
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

    /// One UploadBlob call: `header`, then the file from `header.offset` on.
    async fn send(&self, path: &Path, header: pb::BlobHeader) -> Result<()> {
        let id = blob_id(&header.sha256);
        let (tx, rx) = mpsc::channel(4);
        let reader = tokio::spawn(send_file(path.to_path_buf(), header, tx));
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

/// Feeds the upload stream: the header, then the file in [`CHUNK_SIZE`] chunks. Stops quietly if
/// the server ends the call early: the call's own status says why.
async fn send_file(path: PathBuf, header: pb::BlobHeader, tx: mpsc::Sender<pb::UploadBlobRequest>) -> Result<()> {
    let message = |part| pb::UploadBlobRequest { part: Some(part) };
    let offset = header.offset;
    if tx.send(message(Part::Header(header))).await.is_err() {
        return Ok(());
    }
    let mut file = tokio::fs::File::open(&path).await.map_err(|e| ClientError::io(&path, e))?;
    file.seek(SeekFrom::Start(offset)).await.map_err(|e| ClientError::io(&path, e))?;
    loop {
        let mut chunk = Vec::with_capacity(CHUNK_SIZE);
        let n =
            (&mut file).take(CHUNK_SIZE as u64).read_to_end(&mut chunk).await.map_err(|e| ClientError::io(&path, e))?;
        if n == 0 || tx.send(message(Part::Data(chunk))).await.is_err() {
            return Ok(());
        }
    }
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
        send_file(path, pb::BlobHeader { size: 0, sha256: String::new(), offset: 0 }, tx).await.unwrap();
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
        send_file(path, pb::BlobHeader { size: 0, sha256: String::new(), offset }, tx).await.unwrap();
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
