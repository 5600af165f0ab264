//! The S3 backend against a real S3 server: s3s-fs on loopback (installed by `make setup`).

use std::io::Read;
use std::time::{Duration, Instant};

use prune_store::s3s::S3sServer;
use prune_store::{FileStore, Key, ObjectStoreS3, StoreError};

fn server(tmp: &tempfile::TempDir) -> S3sServer {
    S3sServer::start(&tmp.path().join("s3"), "prune-test")
}

fn store(s3: &S3sServer, prefix: &str) -> ObjectStoreS3 {
    ObjectStoreS3::from_url_with(&s3.url(prefix), &s3.env()).unwrap()
}

fn key(k: &str) -> Key {
    Key::parse(k).unwrap()
}

fn read_all(store: &dyn FileStore, k: &Key, offset: u64) -> Vec<u8> {
    let mut out = Vec::new();
    store.open(k, offset).unwrap().read_to_end(&mut out).unwrap();
    out
}

#[test]
fn put_open_size_delete_fetch() {
    let tmp = tempfile::tempdir().unwrap();
    let s3 = server(&tmp);
    let store = store(&s3, "node/a");
    store.probe().unwrap();
    assert_eq!(store.url(), format!("s3://{}/node/a", s3.bucket));
    let k = key("artifacts/job-1/model.safetensors");
    assert!(store.local_path(&k).is_none());
    assert!(matches!(store.size(&k), Err(StoreError::NotFound { .. })), "{:?}", store.size(&k));
    assert!(matches!(store.open(&k, 0), Err(StoreError::NotFound { .. })));

    let src = tmp.path().join("out");
    std::fs::write(&src, b"hello world").unwrap();
    store.put(&k, &src).unwrap();
    assert_eq!(store.size(&k).unwrap(), 11);
    assert_eq!(read_all(&store, &k, 0), b"hello world");
    assert_eq!(read_all(&store, &k, 6), b"world");
    assert_eq!(read_all(&store, &k, 11), b"");
    assert_eq!(store.sha256(&k).unwrap(), prune_store::sha256_file(&src).unwrap());
    // Under the prefix in the bucket (s3s-fs keeps objects as files).
    assert!(tmp.path().join("s3/prune-test/node/a/artifacts/job-1/model.safetensors").is_file());

    let scratch = tmp.path().join("scratch");
    let fetched = store.fetch(&k, &scratch).unwrap();
    assert_eq!(fetched, scratch.join(k.as_str()));
    assert_eq!(std::fs::read(&fetched).unwrap(), b"hello world");

    store.delete(&k).unwrap();
    store.delete(&k).unwrap();
    assert!(matches!(store.size(&k), Err(StoreError::NotFound { .. })));

    // delete_all removes what is under the prefix, and only that.
    for name in ["checkpoints/job-1/step-10.ckpt", "checkpoints/job-1/step-20.ckpt", "checkpoints/job-10/step-1.ckpt"] {
        store.put(&key(name), &src).unwrap();
    }
    store.delete_all(&key("checkpoints/job-1")).unwrap();
    store.delete_all(&key("checkpoints/job-1")).unwrap();
    assert!(matches!(store.size(&key("checkpoints/job-1/step-10.ckpt")), Err(StoreError::NotFound { .. })));
    assert!(matches!(store.size(&key("checkpoints/job-1/step-20.ckpt")), Err(StoreError::NotFound { .. })));
    assert_eq!(store.size(&key("checkpoints/job-10/step-1.ckpt")).unwrap(), 11);
    // Another prefix in the same bucket sees none of it.
    assert!(matches!(
        self::store(&s3, "node/b").size(&key("checkpoints/job-10/step-1.ckpt")),
        Err(StoreError::NotFound { .. })
    ));
}

#[test]
fn large_files_go_up_in_parts_and_come_back_in_ranges() {
    let tmp = tempfile::tempdir().unwrap();
    let s3 = server(&tmp);
    let store = store(&s3, "big").with_part_size(5 << 20);
    // 12 MiB + a bit: three parts, and more than one ranged read (8 MiB each).
    let data: Vec<u8> = (0..(12u32 << 20) + 12345).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let src = tmp.path().join("big");
    std::fs::write(&src, &data).unwrap();
    let k = key("blobs/abcdef");
    store.put(&k, &src).unwrap();
    assert_eq!(store.size(&k).unwrap(), data.len() as u64);
    assert_eq!(read_all(&store, &k, 0), data);
    let offset = (8 << 20) - 7;
    assert_eq!(read_all(&store, &k, offset), &data[offset as usize..]);
    assert_eq!(store.sha256(&k).unwrap(), prune_store::sha256_file(&src).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_from_blocking_threads_of_an_async_runtime() {
    let tmp = tempfile::tempdir().unwrap();
    let s3 = server(&tmp);
    let store: std::sync::Arc<dyn FileStore> = std::sync::Arc::new(store(&s3, "rt"));
    let src = tmp.path().join("src");
    std::fs::write(&src, b"from a blocking thread").unwrap();
    let k = key("blobs/01");
    let got = tokio::task::spawn_blocking({
        let (store, k) = (store.clone(), k.clone());
        move || {
            store.probe().unwrap();
            store.put(&k, &src).unwrap();
            read_all(&*store, &k, 5)
        }
    })
    .await
    .unwrap();
    assert_eq!(got, b"a blocking thread");
    // Several at once, and a reader that outlives its store.
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let (store, k) = (store.clone(), k.clone());
            tokio::task::spawn_blocking(move || store.open(&k, 0).unwrap())
        })
        .collect();
    let mut readers = Vec::new();
    for task in tasks {
        readers.push(task.await.unwrap());
    }
    drop(store); // in async context: must not panic
    tokio::task::spawn_blocking(move || {
        for mut reader in readers {
            let mut out = String::new();
            reader.read_to_string(&mut out).unwrap();
            assert_eq!(out, "from a blocking thread");
        }
    })
    .await
    .unwrap();
}

#[test]
fn probe_names_an_unusable_store() {
    let tmp = tempfile::tempdir().unwrap();
    let s3 = server(&tmp);
    let missing = ObjectStoreS3::from_url_with("s3://no-such-bucket/x", &s3.env()).unwrap();
    let err = missing.probe().unwrap_err().to_string();
    assert!(err.contains("s3://no-such-bucket/x"), "{err}");

    let mut env = s3.env();
    env.push(("AWS_SECRET_ACCESS_KEY".into(), "wrong".into()));
    let refused = ObjectStoreS3::from_url_with(&s3.url("x"), &env).unwrap();
    let err = refused.probe().unwrap_err().to_string();
    assert!(!err.contains("wrong"), "the secret is not in the message: {err}");

    // Nothing listens there: fails within seconds, not minutes.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut env = s3.env();
    env.push(("AWS_ENDPOINT".into(), format!("http://127.0.0.1:{port}")));
    let unreachable = ObjectStoreS3::from_url_with(&s3.url("x"), &env).unwrap();
    let started = Instant::now();
    let err = unreachable.probe().unwrap_err().to_string();
    assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
    assert!(err.contains(&s3.url("x")), "{err}");
}
