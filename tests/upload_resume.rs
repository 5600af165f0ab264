//! A kill -9 of the server in the middle of an upload loses nothing that arrived: after the
//! restart the client (the library `prunectl upload` uses) asks HasBlob how much the server kept
//! and sends only the rest; the stored blob is byte-identical.
//! Build the binaries first: `cargo build -p prune-server`.

use std::path::Path;
use std::time::Duration;

use prune_client::Client as LibClient;
use prune_proto as pb;
use prune_tests::*;

const MIB: u64 = 1 << 20;

/// Deterministic pseudo-random bytes (xorshift64), so nothing compresses or repeats.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// UploadBlob's first message (`sha256` empty: a `checksum` message follows).
fn header_part(size: usize, sha256: &str, offset: u64) -> pb::UploadBlobRequest {
    let header = pb::BlobHeader { size: size as u64, sha256: sha256.to_string(), offset };
    pb::UploadBlobRequest { part: Some(pb::upload_blob_request::Part::Header(header)) }
}

fn data_part(bytes: &[u8]) -> pb::UploadBlobRequest {
    pb::UploadBlobRequest { part: Some(pb::upload_blob_request::Part::Data(bytes.to_vec())) }
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

#[tokio::test(flavor = "multi_thread")]
async fn upload_resumes_after_the_server_is_killed_mid_stream() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let data = noise((192 * MIB) as usize);
    let sha = sha256_hex(&data);
    let file = tmp.path().join("model.bin");
    std::fs::write(&file, &data).unwrap();

    let server = Server::start(&data_dir, &[]).await;
    let addr = server.addr.clone();
    let client = LibClient::connect(&addr, None).await.unwrap();
    let upload = tokio::spawn({
        let file = file.clone();
        async move { client.upload_file(&file).await }
    });

    // Kill the server once a good part of the upload has arrived (the partial file grows as
    // chunks are written; polled with a deadline, not slept on).
    let partial = data_dir.join("blobs").join("tmp").join(format!("resume-{sha}-default"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while file_len(&partial) < 16 * MIB {
        assert!(tokio::time::Instant::now() < deadline, "the upload never reached 16 MiB");
        assert!(!upload.is_finished(), "the upload ended before the server could be killed: {:?}", upload.await);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    server.kill9().await;
    let kept = file_len(&partial);
    assert!(kept >= 16 * MIB && kept < data.len() as u64, "kept {kept} bytes");

    // Same address, same data directory: the client, retrying with backoff, resumes.
    let restarted = Server::start(&data_dir, &["--listen", &addr]).await;
    let uploaded = tokio::time::timeout(Duration::from_secs(180), upload)
        .await
        .expect("the upload finishes after the restart")
        .unwrap()
        .expect("the upload succeeds");
    assert_eq!(uploaded.id, format!("sha256:{sha}"));
    assert!(uploaded.uploaded);
    assert!(uploaded.resumed_from >= 16 * MIB, "resumed from {} (kept {kept})", uploaded.resumed_from);

    let stored = std::fs::read(data_dir.join("blobs").join(&sha)).unwrap();
    assert_eq!(sha256_hex(&stored), sha, "the stored blob is the file");
    assert!(!partial.exists(), "the partial file became the blob");
    let mut raw = restarted.client().await;
    let has = raw.has_blob(pb::HasBlobRequest { id: uploaded.id.clone() }).await.unwrap().into_inner();
    assert!(has.exists && has.size == data.len() as u64, "{has:?}");
}

/// Two nodes sharing a file store: node A is killed mid-upload and its data dir deleted; the
/// client resumes on node B from what A saved in the store, and the blob B stores is
/// byte-identical.
#[tokio::test(flavor = "multi_thread")]
async fn upload_killed_on_one_node_resumes_on_another() {
    let tmp = tempfile::tempdir().unwrap();
    let store_dir = tmp.path().join("shared-store");
    std::fs::create_dir_all(&store_dir).unwrap();
    let store = format!("file://{}", store_dir.display());
    let args = ["--store", store.as_str(), "--upload-segment-bytes", "1048576"];
    let data = noise((64 * MIB) as usize);
    let sha = sha256_hex(&data);
    let file = tmp.path().join("model.bin");
    std::fs::write(&file, &data).unwrap();

    let node_a = Server::start(&tmp.path().join("a"), &args).await;
    let client = LibClient::connect(&node_a.addr, None).await.unwrap();
    let upload = tokio::spawn({
        let file = file.clone();
        async move { client.upload_file(&file).await }
    });
    // Kill node A once the shared store holds at least 8 MiB of the upload (the partial file
    // itself under a second name, where the store is on the same file system; else segments).
    let segments = store_dir.join("uploads").join(hex::encode("default")).join(&sha);
    let saved = || {
        std::fs::read_dir(&segments)
            .map_or(0, |d| d.flatten().map(|e| e.metadata().map_or(0, |m| m.len())).sum::<u64>())
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while saved() < 8 * MIB {
        assert!(tokio::time::Instant::now() < deadline, "node A never saved 8 MiB");
        assert!(!upload.is_finished(), "the upload ended before node A could be killed: {:?}", upload.await);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    node_a.kill9().await;
    upload.abort();
    std::fs::remove_dir_all(tmp.path().join("a")).unwrap();

    let node_b = Server::start(&tmp.path().join("b"), &args).await;
    let mut raw = node_b.client().await;
    let has = raw.has_blob(pb::HasBlobRequest { id: format!("sha256:{sha}") }).await.unwrap().into_inner();
    assert!(!has.exists && has.uploaded >= 8 * MIB, "{has:?}");
    let client = LibClient::connect(&node_b.addr, None).await.unwrap();
    let uploaded = client.upload_file(&file).await.expect("the upload finishes on node B");
    assert_eq!(uploaded.id, format!("sha256:{sha}"));
    assert!(uploaded.resumed_from >= 8 * MIB, "resumed from {}", uploaded.resumed_from);
    let stored = std::fs::read(store_dir.join("blobs").join(&sha)).unwrap();
    assert_eq!(sha256_hex(&stored), sha, "the stored blob is the file");
    assert!(node_b.log().contains("resuming an upload saved in the store by another node"));
    assert!(!segments.exists(), "the saved segments are removed once the blob is stored");
}

/// HasBlob reports a partial upload's size only to its tenant's own uploads; a resume
/// beyond it is refused, and a resume with wrong earlier bytes fails the checksum.
#[tokio::test(flavor = "multi_thread")]
async fn resume_offsets_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"), &[]).await;
    let mut client = server.client().await;
    let data = noise(300_000);
    let sha = sha256_hex(&data);
    let header = |offset: u64| header_part(data.len(), &sha, offset);
    let chunk = |range: std::ops::Range<usize>| data_part(&data[range]);

    // A first upload that stops after 100,000 bytes (the stream ends short).
    let short = client.upload_blob(tokio_stream::iter([header(0), chunk(0..100_000)])).await.unwrap_err();
    assert_eq!(short.code(), tonic::Code::DataLoss, "{short}");
    let has = client.has_blob(pb::HasBlobRequest { id: format!("sha256:{sha}") }).await.unwrap().into_inner();
    assert_eq!((has.exists, has.uploaded), (false, 100_000));

    let beyond = client.upload_blob(tokio_stream::iter([header(100_001), chunk(100_001..300_000)])).await.unwrap_err();
    assert_eq!(beyond.code(), tonic::Code::FailedPrecondition, "{beyond}");
    assert!(beyond.message().contains("holds 100000 bytes"), "{beyond}");
    let past_end = client.upload_blob(tokio_stream::iter([header(300_001)])).await.unwrap_err();
    assert_eq!(past_end.code(), tonic::Code::InvalidArgument, "{past_end}");

    let blob = client.upload_blob(tokio_stream::iter([header(100_000), chunk(100_000..300_000)])).await.unwrap();
    assert_eq!(blob.into_inner().id, format!("sha256:{sha}"));
}

/// An upload may leave the sha256 out of its header and send it in a `checksum` message while
/// the data flows (what the client does for large files, hashing while it sends): the blob is
/// stored under it, a blob the caller has already ends the call early, an interrupted upload of
/// it is offered for a resume (UPLOAD_RESUMABLE), and a missing or malformed checksum is refused.
/// (`upload_killed_on_one_node_resumes_on_another` has the client follow UPLOAD_RESUMABLE.)
#[tokio::test(flavor = "multi_thread")]
async fn an_upload_may_send_its_checksum_while_the_data_flows() {
    use pb::upload_blob_request::Part;
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"), &[]).await;
    let mut client = server.client().await;
    let data = noise(300_000);
    let sha = sha256_hex(&data);
    let deferred = |size: usize, offset: u64| header_part(size, "", offset);
    let chunk = |range: std::ops::Range<usize>| data_part(&data[range]);
    let checksum = |sha256: &str| pb::UploadBlobRequest { part: Some(Part::Checksum(sha256.to_string())) };

    let stream = [deferred(data.len(), 0), chunk(0..100_000), checksum(&sha), chunk(100_000..300_000)];
    let blob = client.upload_blob(tokio_stream::iter(stream)).await.unwrap().into_inner();
    assert_eq!((blob.id.as_str(), blob.size), (format!("sha256:{sha}").as_str(), data.len() as u64));
    let stored = std::fs::read(tmp.path().join("data").join("blobs").join(&sha)).unwrap();
    assert_eq!(stored, data);
    // Again: answered from the checksum on, whatever follows.
    let again =
        client.upload_blob(tokio_stream::iter([deferred(data.len(), 0), checksum(&sha), chunk(0..10)])).await.unwrap();
    assert_eq!(again.into_inner().id, format!("sha256:{sha}"));

    // An interrupted upload of another blob holds 100,000 bytes: a new upload that announces it
    // is told to resume that one instead.
    let other = noise(200_000).into_iter().rev().collect::<Vec<u8>>();
    let other_sha = sha256_hex(&other);
    let other_chunk = |range: std::ops::Range<usize>| data_part(&other[range]);
    let other_header = deferred(other.len(), 0);
    let short = client
        .upload_blob(tokio_stream::iter([other_header.clone(), checksum(&other_sha), other_chunk(0..100_000)]))
        .await
        .unwrap_err();
    assert_eq!(short.code(), tonic::Code::DataLoss, "{short}");
    let redirected = client
        .upload_blob(tokio_stream::iter([other_header, other_chunk(0..50_000), checksum(&other_sha)]))
        .await
        .unwrap_err();
    assert_eq!(redirected.code(), tonic::Code::Aborted, "{redirected}");
    assert!(redirected.message().contains("holds 100000 bytes"), "{redirected}");
    let redirected = prune_client::ClientError::Rpc(redirected);
    assert_eq!(redirected.reason().as_deref(), Some("UPLOAD_RESUMABLE"));
    assert_eq!(redirected.error_metadata("uploaded").as_deref(), Some("100000"));

    // Bad input: named by field, nothing stored.
    let no_checksum =
        client.upload_blob(tokio_stream::iter([deferred(data.len(), 0), chunk(0..300_000)])).await.unwrap_err();
    assert_eq!(no_checksum.code(), tonic::Code::InvalidArgument, "{no_checksum}");
    assert!(no_checksum.message().contains("`checksum` message"), "{no_checksum}");
    let malformed =
        client.upload_blob(tokio_stream::iter([deferred(data.len(), 0), checksum("xyz")])).await.unwrap_err();
    assert_eq!(malformed.code(), tonic::Code::InvalidArgument, "{malformed}");
    assert!(malformed.message().contains("`xyz` is not a sha256"), "{malformed}");
    let twice =
        client.upload_blob(tokio_stream::iter([header_part(data.len(), &sha, 0), checksum(&sha)])).await.unwrap_err();
    assert_eq!(twice.code(), tonic::Code::InvalidArgument, "{twice}");
    assert!(twice.message().contains("given twice"), "{twice}");
    let resume = client.upload_blob(tokio_stream::iter([deferred(data.len(), 10)])).await.unwrap_err();
    assert_eq!(resume.code(), tonic::Code::InvalidArgument, "{resume}");
    assert!(resume.message().contains("needs the sha256 in its header"), "{resume}");
}

/// The client library hashes a large file while it sends it; the second upload of the same
/// file is stopped by the server as soon as the checksum arrives.
#[tokio::test(flavor = "multi_thread")]
async fn a_large_file_is_hashed_while_it_is_sent() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"), &[]).await;
    let data = noise((prune_client::upload::HASH_WHILE_SENDING_BYTES + MIB + 7) as usize);
    let sha = sha256_hex(&data);
    let file = tmp.path().join("model.bin");
    std::fs::write(&file, &data).unwrap();
    let client = LibClient::connect(&server.addr, None).await.unwrap();
    let first = client.upload_file(&file).await.unwrap();
    assert_eq!((first.id.clone(), first.size, first.uploaded), (format!("sha256:{sha}"), data.len() as u64, true));
    assert_eq!(sha256_hex(&std::fs::read(tmp.path().join("data").join("blobs").join(&sha)).unwrap()), sha);
    let second = client.upload_file(&file).await.unwrap();
    assert_eq!(second.id, first.id);
    assert!(server.log().contains("upload ended early: the blob is stored already"), "{}", server.log());
}
