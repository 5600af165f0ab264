//! An S3-compatible object store (AWS S3, MinIO, s3s-fs, ...) through the `object_store` crate.
//!
//! [`FileStore`] is blocking (the worker has no async runtime; the server calls the store on
//! blocking threads), so the store owns a small tokio runtime and `block_on`s each request.
//! Reads fetch the object in ranges of [`READ_CHUNK`] bytes; uploads of large files are
//! multipart.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as ObjectPath;
use object_store::{ClientConfigKey, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig, WriteMultipart};
use tokio::runtime::Runtime;

use crate::{FileStore, Key, Result, StoreError};

/// Bytes fetched per ranged GET while reading.
pub const READ_CHUNK: u64 = 8 << 20;
/// Files at least this large are uploaded in parts of this size (S3's minimum part is 5 MiB).
pub const PART_SIZE: usize = 16 << 20;
/// Parts of one upload in flight at a time.
const PART_CONCURRENCY: usize = 4;

/// `s3://bucket/prefix`: objects are `prefix/<key>` in the bucket. Endpoint, region and
/// credentials come from the `AWS_*` variables (`AWS_ENDPOINT`, `AWS_REGION`,
/// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ALLOW_HTTP=true` for a plain-HTTP
/// endpoint such as one on loopback).
pub struct ObjectStoreS3 {
    bucket: String,
    prefix: String,
    inner: Arc<dyn ObjectStore>,
    rt: Arc<Rt>,
    part_size: usize,
}

/// The store's runtime, shared with its readers. Shut down in the background when the last
/// holder goes, so that dropping a store inside an async context does not panic.
struct Rt(Option<Runtime>);

impl Rt {
    fn get(&self) -> &Runtime {
        self.0.as_ref().expect("taken only when dropped")
    }
}

impl std::fmt::Debug for ObjectStoreS3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStoreS3").field("url", &self.url()).finish_non_exhaustive()
    }
}

impl Drop for Rt {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl ObjectStoreS3 {
    /// Opens `s3://bucket/prefix` (the prefix may be empty) with the `AWS_*` configuration of
    /// the environment. Makes no request: see [`FileStore::probe`].
    pub fn from_url(url: &str) -> Result<Self> {
        ObjectStoreS3::from_url_with(url, &[])
    }

    /// [`ObjectStoreS3::from_url`] with `AWS_*` settings (`AWS_ENDPOINT`, ...) that override the
    /// environment's.
    pub fn from_url_with(url: &str, overrides: &[(String, String)]) -> Result<Self> {
        let bad = |reason: String| StoreError::Url { url: url.to_string(), reason };
        let rest = url.strip_prefix("s3://").ok_or_else(|| bad("not an s3:// URL".into()))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("no bucket (s3://bucket/prefix)".into()));
        }
        let prefix = prefix.trim_end_matches('/');
        if !prefix.is_empty() {
            Key::parse(prefix).map_err(|e| bad(format!("prefix: {}", e.reason)))?;
        }
        // Fail fast when the endpoint is unreachable. Requests are short (ranged reads, parts of
        // bounded size), so a per-request timeout is safe; both can be set with AWS_* too.
        let mut builder = AmazonS3Builder::new()
            .with_retry(RetryConfig { max_retries: 3, retry_timeout: Duration::from_secs(30), ..Default::default() })
            .with_config(AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout), "5s")
            .with_config(AmazonS3ConfigKey::Client(ClientConfigKey::Timeout), "120s");
        let env = std::env::vars().filter(|(k, _)| k.starts_with("AWS_"));
        for (name, value) in env.chain(overrides.iter().cloned()) {
            if let Ok(key) = name.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
                builder = builder.with_config(key, value);
            }
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("prune-store-s3")
            .enable_all()
            .build()
            .map_err(|e| bad(format!("starting its runtime: {e}")))?;
        let inner = {
            let _guard = rt.enter();
            builder.with_bucket_name(bucket).build().map_err(|e| bad(one_line(&e)))?
        };
        Ok(ObjectStoreS3 {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            inner: Arc::new(inner),
            rt: Arc::new(Rt(Some(rt))),
            part_size: PART_SIZE,
        })
    }

    /// Sets the multipart threshold and part size (tests use small parts).
    pub fn with_part_size(mut self, part_size: usize) -> Self {
        self.part_size = part_size.max(1);
        self
    }

    fn block_on<F: std::future::Future>(&self, fut: F) -> F::Output {
        self.rt.get().block_on(fut)
    }

    fn location(&self, key: &Key) -> Result<ObjectPath> {
        let full = if self.prefix.is_empty() { key.to_string() } else { format!("{}/{key}", self.prefix) };
        ObjectPath::parse(&full).map_err(|e| StoreError::Io { key: key.to_string(), source: std::io::Error::other(e) })
    }

    async fn upload(&self, location: &ObjectPath, src: &Path) -> std::result::Result<(), UploadError> {
        let len = tokio::fs::metadata(src).await?.len();
        if len < self.part_size as u64 {
            let data = tokio::fs::read(src).await?;
            self.inner.put(location, PutPayload::from(data)).await?;
            return Ok(());
        }
        let upload = self.inner.put_multipart(location).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, self.part_size);
        let result: std::result::Result<(), UploadError> = async {
            use tokio::io::AsyncReadExt;
            let mut file = tokio::fs::File::open(src).await?;
            let mut buf = vec![0u8; self.part_size];
            loop {
                let n = file.read(&mut buf).await?;
                if n == 0 {
                    return Ok(());
                }
                writer.wait_for_capacity(PART_CONCURRENCY).await?;
                writer.write(&buf[..n]);
            }
        }
        .await;
        match result {
            Ok(()) => {
                writer.finish().await?;
                Ok(())
            }
            Err(e) => {
                let _ = writer.abort().await;
                Err(e)
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum UploadError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Store(#[from] object_store::Error),
}

/// An `object_store` error as a [`StoreError`]: NotFound kept, the rest on one line.
fn store_error(key: &Key, e: object_store::Error) -> StoreError {
    match e {
        object_store::Error::NotFound { .. } => StoreError::NotFound { key: key.to_string() },
        e => StoreError::Io { key: key.to_string(), source: std::io::Error::other(one_line(&e)) },
    }
}

/// The error and its sources, `: `-separated.
fn one_line(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = s.source();
    }
    line.replace('\n', " ")
}

impl FileStore for ObjectStoreS3 {
    fn url(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }

    fn local_path(&self, _key: &Key) -> Option<PathBuf> {
        None
    }

    fn put(&self, key: &Key, src: &Path) -> Result<()> {
        let location = self.location(key)?;
        self.block_on(self.upload(&location, src)).map_err(|e| match e {
            UploadError::Io(e) => StoreError::io(key, e),
            UploadError::Store(e) => store_error(key, e),
        })
    }

    fn open(&self, key: &Key, offset: u64) -> Result<Box<dyn Read + Send>> {
        let location = self.location(key)?;
        let size = self.block_on(self.inner.head(&location)).map_err(|e| store_error(key, e))?.size;
        Ok(Box::new(RangeReader {
            store: self.inner.clone(),
            rt: self.rt.clone(),
            location,
            pos: offset.min(size),
            end: size,
            buf: Bytes::new(),
        }))
    }

    fn size(&self, key: &Key) -> Result<u64> {
        let location = self.location(key)?;
        Ok(self.block_on(self.inner.head(&location)).map_err(|e| store_error(key, e))?.size)
    }

    fn delete(&self, key: &Key) -> Result<()> {
        let location = self.location(key)?;
        match self.block_on(self.inner.delete(&location)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(store_error(key, e)),
        }
    }

    fn delete_all(&self, prefix: &Key) -> Result<()> {
        let location = self.location(prefix)?;
        self.block_on(async {
            let locations = self.inner.list(Some(&location)).map_ok(|meta| meta.location).boxed();
            self.inner.delete_stream(locations).try_for_each(|_| async { Ok(()) }).await.or_else(|e| match e {
                object_store::Error::NotFound { .. } => Ok(()),
                e => Err(e),
            })
        })
        .map_err(|e| store_error(prefix, e))
    }

    fn probe(&self) -> Result<()> {
        let prefix = (!self.prefix.is_empty()).then(|| ObjectPath::from(self.prefix.as_str()));
        self.block_on(self.inner.list_with_delimiter(prefix.as_ref()))
            .map(|_| ())
            .map_err(|e| StoreError::Url { url: self.url(), reason: one_line(&e) })
    }
}

/// Reads an object from `pos` to `end` by ranged GETs of [`READ_CHUNK`] bytes, so a large
/// object is never held in memory and no request runs for long.
struct RangeReader {
    store: Arc<dyn ObjectStore>,
    rt: Arc<Rt>,
    location: ObjectPath,
    pos: u64,
    end: u64,
    buf: Bytes,
}

impl Read for RangeReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.buf.is_empty() && self.pos < self.end && !out.is_empty() {
            let range = self.pos..self.end.min(self.pos + READ_CHUNK);
            let got = self.rt.get().block_on(self.store.get_range(&self.location, range.clone())).map_err(|e| {
                let kind = match e {
                    object_store::Error::NotFound { .. } => std::io::ErrorKind::NotFound,
                    _ => std::io::ErrorKind::Other,
                };
                std::io::Error::new(kind, format!("{}: {}", self.location, one_line(&e)))
            })?;
            if got.len() as u64 != range.end - range.start {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("{}: asked for bytes {range:?}, got {}", self.location, got.len()),
                ));
            }
            self.pos = range.end;
            self.buf = got;
        }
        let n = out.len().min(self.buf.len());
        out[..n].copy_from_slice(&self.buf[..n]);
        self.buf.advance(n);
        Ok(n)
    }
}
