//! For tests: a real S3 server (`s3s-fs`, installed once by `make setup`, see
//! `scripts/setup-s3s.sh`) on a free loopback port, over a directory of the test's.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ACCESS_KEY: &str = "prune-test-access-key";
pub const SECRET_KEY: &str = "prune-test-secret-key";

/// Where `scripts/setup-s3s.sh` installs s3s-fs: `$PRUNE_S3S_ROOT/bin/s3s-fs`, by default under
/// `~/.cache/prune/s3s-fs`.
pub fn binary() -> PathBuf {
    let root = std::env::var_os("PRUNE_S3S_ROOT").map(PathBuf::from).unwrap_or_else(|| {
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"));
        home.join(".cache/prune/s3s-fs")
    });
    root.join("bin/s3s-fs")
}

/// A running s3s-fs with one bucket; killed when dropped. It can be stopped and started again on
/// the same port and directory ([`S3sServer::stop`], [`S3sServer::restart`]): a store outage.
pub struct S3sServer {
    /// None while stopped.
    child: Option<Child>,
    pub endpoint: String,
    pub bucket: String,
    root: PathBuf,
    port: u16,
    log: PathBuf,
}

impl S3sServer {
    /// Starts s3s-fs over `root` (created; the bucket is a directory in it) on a free loopback
    /// port. Panics, saying to run `make setup`, when s3s-fs is not installed.
    pub fn start(root: &Path, bucket: &str) -> S3sServer {
        let bin = binary();
        assert!(
            bin.is_file(),
            "s3s-fs is not installed at {}: run `make setup` (scripts/setup-s3s.sh) first",
            bin.display()
        );
        std::fs::create_dir_all(root.join(bucket)).expect("creating the bucket directory");
        let log = root.with_extension("s3s.log");
        for _ in 0..5 {
            // A free port: bound, released, then handed to s3s-fs (retried if taken meanwhile).
            let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).and_then(|l| l.local_addr()).expect("a port").port();
            if let Some(child) = spawn(root, port, &log) {
                let endpoint = format!("http://{}", SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
                let (root, bucket) = (root.to_path_buf(), bucket.to_string());
                return S3sServer { child: Some(child), endpoint, bucket, root, port, log };
            }
        }
        panic!("s3s-fs did not start; its log:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
    }

    /// Kills the server (SIGKILL): requests fail until [`S3sServer::restart`]. The objects stay.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a stopped server again on the same port and directory (a few tries over 10 s, for
    /// the port to be free again); panics if it does not listen.
    pub fn restart(&mut self) {
        self.stop();
        for _ in 0..50 {
            if let Some(child) = spawn(&self.root, self.port, &self.log) {
                self.child = Some(child);
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("s3s-fs did not start again on port {}; its log:\n{}", self.port, self.log());
    }

    /// The s3s-fs process (None while stopped): its /proc/<pid>/io counts the bytes it moved.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The directory it serves: the bucket is `root/bucket`, an object `root/bucket/key`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `s3://bucket/prefix` on this server.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }

    /// The `AWS_*` variables that point a store (or a prune-server and its workers) at it.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT", self.endpoint.as_str()),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
            ("AWS_ALLOW_HTTP", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// What s3s-fs logged (warnings and errors).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for S3sServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts s3s-fs over `root` on `port` (log appended to `log`); None if it exited (the port was
/// taken) or did not listen within 20 s.
fn spawn(root: &Path, port: u16, log: &Path) -> Option<Child> {
    let bin = binary();
    let log_file = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("s3s-fs log");
    let mut child = Command::new(&bin)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
        .arg(root)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("log"))
        .stderr(log_file)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return None; // exited: the port was taken
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Some(child);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}
