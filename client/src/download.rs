//! Resumable, verified artifact download.
//!
//! The served bytes go to `PATH.part`, appended as they arrive, so an interrupted download (a
//! killed client, a restarted server) resumes from the `.part` file's length with
//! `read_offset`. Once complete, the sha256 of the whole `.part` file must equal the one the
//! server announced. Only then is the result put in place: the served file as is (`raw`), or
//! the decompressed standard file, written atomically.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use prune_core::compress::decompress_stream;
use prune_proto as pb;
use prune_proto::download_artifact_response::Part;
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tonic::{Code, Status};

use crate::error::{ClientError, Result};
use crate::retry::Backoff;
use crate::types::ArtifactInfo;
use crate::upload::digest_file;
use crate::Client;
use prune_core::files::write_atomically;

/// The outcome of [`Client::download_to`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DownloadOutcome {
    pub path: PathBuf,
    /// The artifact as served (its size and sha256 are of the served, compressed bytes).
    pub artifact: ArtifactInfo,
    /// Bytes already in `PATH.part` when this download started (0: a fresh download).
    pub resumed_from: u64,
    /// Whether `path` holds the served bytes as is rather than the decompressed file.
    pub raw: bool,
    /// Bytes of the file at `path`.
    pub bytes: u64,
}

/// Where the served bytes collect until they are verified: `PATH.part`.
pub fn part_path(path: &Path) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(".part");
    PathBuf::from(name)
}

impl Client {
    /// Downloads the job's artifact of `format` (`None`: the job's first export format) to
    /// `path`, resuming from `PATH.part` when an earlier download was cut short.
    ///
    /// A `.part` file that does not verify after a resume is assumed stale (e.g. from another
    /// job) and the download starts over once from zero; a fresh download that does not verify
    /// is an error.
    pub async fn download_to(
        &self,
        job_id: &str,
        path: &Path,
        format: Option<&str>,
        raw: bool,
    ) -> Result<DownloadOutcome> {
        self.download_file_to(job_id, &Wanted { format, file_name: None }, path, raw).await
    }

    /// Downloads every file of the job's export of `format` (`None`: safetensors, where exported) into
    /// `dir`, one by one, each resumable and verified like [`Client::download_to`]: a sharded
    /// checkpoint's packed shards (decompressed unless `raw`), index and `config.json` make a
    /// Hugging Face checkpoint directory again.
    pub async fn download_dir(
        &self,
        job_id: &str,
        dir: &Path,
        format: Option<&str>,
        raw: bool,
    ) -> Result<Vec<DownloadOutcome>> {
        let job = self.get_job(job_id).await?;
        let format = format.or_else(|| job.default_format()).unwrap_or("safetensors");
        let files: Vec<&ArtifactInfo> = job.artifacts.iter().filter(|a| a.format == format).collect();
        if files.is_empty() {
            return Err(ClientError::Protocol(format!("job {job_id} has no `{format}` artifact")));
        }
        std::fs::create_dir_all(dir).map_err(|e| ClientError::io(dir, e))?;
        let mut done = Vec::with_capacity(files.len());
        for file in files {
            let name = local_name(file, raw);
            // Names come from the server: never let one step out of `dir`.
            if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
                return Err(ClientError::Protocol(format!("the server named an artifact file `{name}`")));
            }
            let wanted = Wanted { format: Some(format), file_name: Some(&file.file_name) };
            done.push(self.download_file_to(job_id, &wanted, &dir.join(name), raw).await?);
        }
        Ok(done)
    }

    async fn download_file_to(
        &self,
        job_id: &str,
        wanted: &Wanted<'_>,
        path: &Path,
        raw: bool,
    ) -> Result<DownloadOutcome> {
        let part = part_path(path);
        let (artifact, resumed_from) = loop {
            let (artifact, resumed_from) = self.fetch_part(job_id, wanted, &part).await?;
            let (_, sha256) = digest_file(&part).await?;
            if sha256 == artifact.sha256 {
                break (artifact, resumed_from);
            }
            remove_if_exists(&part)?;
            if resumed_from == 0 {
                return Err(ClientError::Integrity(format!(
                    "{}: sha256 {sha256} does not match the server's {} (removed the partial file)",
                    part.display(),
                    artifact.sha256
                )));
            }
        };

        let keep_as_served = keeps_as_served(&artifact, raw);
        let target = path.to_path_buf();
        tokio::task::spawn_blocking(move || finish(&part, &target, keep_as_served))
            .await
            .map_err(|e| ClientError::io(path, io::Error::other(e)))??;
        let bytes = std::fs::metadata(path).map_err(|e| ClientError::io(path, e))?.len();
        Ok(DownloadOutcome { path: path.to_path_buf(), artifact, resumed_from, raw, bytes })
    }

    /// Brings `part` up to the artifact's full length, retrying when the connection breaks.
    /// Returns the artifact info and how many bytes `part` held at the start.
    async fn fetch_part(&self, job_id: &str, wanted: &Wanted<'_>, part: &Path) -> Result<(ArtifactInfo, u64)> {
        let resumed_from = file_len(part)?;
        let mut backoff = Backoff::new();
        loop {
            let offset = file_len(part)?;
            match self.stream_into(job_id, wanted, part, offset).await {
                Ok(info) => return Ok((info, resumed_from)),
                Err(e) if e.is_transient() => match backoff.next_delay() {
                    Some(delay) => tokio::time::sleep(delay).await,
                    None => return Err(e),
                },
                // A `.part` longer than the artifact is stale: start over.
                Err(e) if offset > 0 && matches!(e.code(), Some(Code::OutOfRange | Code::InvalidArgument)) => {
                    remove_if_exists(part)?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One `DownloadArtifact` call from `offset`, appending what arrives to `part`.
    async fn stream_into(&self, job_id: &str, wanted: &Wanted<'_>, part: &Path, offset: u64) -> Result<ArtifactInfo> {
        let request = pb::DownloadArtifactRequest {
            job_id: job_id.to_string(),
            format: wanted.format.unwrap_or_default().to_string(),
            read_offset: offset,
            file_name: wanted.file_name.unwrap_or_default().to_string(),
        };
        let mut stream = self.rpc().download_artifact(request).await?.into_inner();
        let info = match stream.message().await? {
            Some(pb::DownloadArtifactResponse { part: Some(Part::Info(info)) }) => ArtifactInfo::from(info),
            _ => return Err(ClientError::Protocol("the download did not start with the artifact info".into())),
        };
        if offset > info.size {
            return Err(Status::out_of_range(format!("{} is longer than the artifact", part.display())).into());
        }

        let io_err = |e| ClientError::io(part, e);
        let mut file = tokio::fs::OpenOptions::new().create(true).append(true).open(part).await.map_err(io_err)?;
        // Written chunk by chunk: whatever arrived before a break is kept for the next resume.
        while let Some(message) = stream.message().await? {
            match message.part {
                Some(Part::Data(data)) => file.write_all(&data).await.map_err(io_err)?,
                _ => return Err(ClientError::Protocol("artifact info in the middle of the data".into())),
            }
        }
        file.sync_all().await.map_err(io_err)?;
        let len = file.metadata().await.map_err(io_err)?.len();
        if len != info.size {
            return Err(ClientError::Protocol(format!("the download ended at byte {len} of {}", info.size)));
        }
        Ok(info)
    }
}

/// Which file of a job's artifacts a download asks for.
struct Wanted<'a> {
    /// `None`: the job's first export format.
    format: Option<&'a str>,
    /// `None`: the format's only file.
    file_name: Option<&'a str>,
}

/// Whether the verified bytes are the file itself. An uncompressed artifact (as every
/// `sensitivity_plot` and `suggested_overrides` file is) is moved as is rather than sniffed for
/// magic bytes: a safetensors header length can happen to start like a gzip stream.
fn keeps_as_served(artifact: &ArtifactInfo, raw: bool) -> bool {
    raw || artifact.compression == "none"
}

/// The name a file of a downloaded export gets in its directory: as served when kept as
/// served, else without its compression suffix.
fn local_name(file: &ArtifactInfo, raw: bool) -> &str {
    if keeps_as_served(file, raw) {
        file.file_name.as_str()
    } else {
        compressed_stem(&file.file_name)
    }
}

/// A served file's name once decompressed: without its `.zst` / `.gz`.
fn compressed_stem(name: &str) -> &str {
    name.strip_suffix(".zst").or_else(|| name.strip_suffix(".gz")).unwrap_or(name)
}

/// Puts the verified `part` in place at `path`: renamed as is, or decompressed through a
/// temporary file (the `.part` is removed only once `path` is complete).
fn finish(part: &Path, path: &Path, keep_as_served: bool) -> Result<()> {
    if keep_as_served {
        return std::fs::rename(part, path).map_err(|e| ClientError::io(path, e));
    }
    let input = File::open(part).map_err(|e| ClientError::io(part, e))?;
    write_atomically(path, |out| {
        let mut writer = BufWriter::new(out);
        decompress_stream(BufReader::new(input), &mut writer)?;
        writer.flush()
    })
    .map_err(|e| ClientError::io(path, e))?;
    remove_if_exists(part)
}

fn file_len(path: &Path) -> Result<u64> {
    match std::fs::metadata(path) {
        Ok(m) => Ok(m.len()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(ClientError::io(path, e)),
    }
}

fn remove_if_exists(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(ClientError::io(path, e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_path_appends_to_the_file_name() {
        assert_eq!(part_path(Path::new("out/model.safetensors")), Path::new("out/model.safetensors.part"));
    }

    fn artifact(format: &str, file_name: &str, compression: &str) -> ArtifactInfo {
        ArtifactInfo {
            format: format.into(),
            size: 3,
            sha256: String::new(),
            compression: compression.into(),
            sparse_format: "dense".into(),
            file_name: file_name.into(),
        }
    }

    #[test]
    fn uncompressed_analysis_files_keep_their_names_and_bytes() {
        for (format, name) in [
            ("sensitivity_plot", "sensitivity.png"),
            ("suggested_overrides", "suggested_overrides.toml"),
            ("reconstruction_plot", "reconstruction.png"),
        ] {
            let file = artifact(format, name, "none");
            assert!(keeps_as_served(&file, false));
            assert_eq!(local_name(&file, false), name);
        }
        let packed = artifact("safetensors", "model.safetensors.zst", "zstd");
        assert!(!keeps_as_served(&packed, false));
        assert_eq!(local_name(&packed, false), "model.safetensors");
        assert!(keeps_as_served(&packed, true));
        assert_eq!(local_name(&packed, true), "model.safetensors.zst");
    }

    #[test]
    fn finish_decompresses_and_removes_the_part() {
        let dir = tempfile::tempdir().unwrap();
        let (part, path) = (dir.path().join("m.part"), dir.path().join("m"));
        let data = b"dense safetensors bytes".repeat(100);
        let packed = prune_core::compress::compress(&data, prune_core::compress::Compression::Zstd).unwrap();
        std::fs::write(&part, &packed).unwrap();
        finish(&part, &path, false).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), data);
        assert!(!part.exists());
    }

    #[test]
    fn finish_raw_keeps_the_served_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (part, path) = (dir.path().join("m.part"), dir.path().join("m"));
        std::fs::write(&part, b"\x28\xb5\x2f\xfdserved").unwrap();
        finish(&part, &path, true).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"\x28\xb5\x2f\xfdserved");
        assert!(!part.exists());
    }
}
