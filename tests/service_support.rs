//! Harness for end-to-end tests: runs the real `prune-server` binary on `127.0.0.1:0` with a
//! data directory of its own, finds its port from the `listening on` line, and offers a few
//! gRPC helpers. Nothing here sleeps to synchronise: waits poll the server with a deadline.
//!
//! The binaries must be built first (`cargo build -p prune-server`); test executables live in
//! `target/<profile>/deps/`, next to which `target/<profile>/prune-server` is found.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use prune_proto as pb;
use prune_proto::pruning_service_client::PruningServiceClient;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

pub type Client = PruningServiceClient<Channel>;

/// Several prune-server nodes on one PostgreSQL and one S3 store (`tests/cluster.rs`).
#[path = "cluster_support.rs"]
pub mod cluster;
/// The throwaway PostgreSQL server of prune-server's storage tests, shared with this harness.
#[path = "../server/src/storage/pg_server.rs"]
pub mod pg_server;

/// How long a server may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// `target/<profile>/<name>`, next to the `deps/` directory the running test lives in. Refuses
/// a binary older than the sources it is built from: an end-to-end test of a stale build
/// proves nothing (`make test` builds first; `cargo build --workspace --bins` does too).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().expect("test binaries live in target/<profile>/deps");
    // Tools built from tests/ (prune-bench-cluster) live in target/<profile> itself.
    let profile_dir = if dir.ends_with("deps") { dir.parent().expect("target/<profile>") } else { dir };
    let path = profile_dir.join(name);
    assert!(path.exists(), "{} not found: build it first with `cargo build --workspace --bins`", path.display());
    assert_fresh(&path);
    path
}

/// The workspace folders each binary the tests run is built from.
fn source_dirs(binary: &str) -> &'static [&'static str] {
    match binary {
        "prune-server" => &["core", "proto", "store", "server", "migrations"],
        "prune-worker" => &["core", "engine", "store", "worker"],
        "prunectl" => &["core", "proto", "client"],
        _ => &[],
    }
}

fn assert_fresh(binary: &Path) {
    let built = std::fs::metadata(binary).and_then(|m| m.modified()).expect("binary mtime");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is in the workspace");
    let name = binary.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let newer: Vec<PathBuf> = source_dirs(&name)
        .iter()
        .flat_map(|dir| sources(&root.join(dir)))
        .filter(|file| std::fs::metadata(file).and_then(|m| m.modified()).is_ok_and(|t| t > built))
        .collect();
    assert!(
        newer.is_empty(),
        "{} is older than its sources ({} changed since, e.g. {}): rebuild with `cargo build --workspace --bins`",
        binary.display(),
        newer.len(),
        newer[0].display()
    );
}

/// Source files under `dir` (`.rs`, `.proto`, `.sql`, `Cargo.toml`, and the dashboard's embedded
/// `.html`, `.js`, `.css`), skipping build outputs and the unit-test siblings (`*_tests.rs`,
/// compiled only into test builds, so a binary does not change with them).
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return found };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if path.is_dir() {
            if name != "target" && !name.to_string_lossy().starts_with('.') {
                found.extend(sources(&path));
            }
        } else if name.to_string_lossy().ends_with("_tests.rs") {
            continue;
        } else if path.extension().is_some_and(|e| ["rs", "proto", "sql", "html", "js", "css"].iter().any(|x| e == *x))
            || name == "Cargo.toml"
        {
            found.push(path);
        }
    }
    found
}

/// A running `prune-server`; killed when dropped.
pub struct Server {
    child: Child,
    pub addr: String,
    /// `ADDR` of the `dashboard on http://ADDR` line (printed before `listening on`) with `--http`.
    pub dashboard: Option<String>,
    pub data_dir: PathBuf,
    log: PathBuf,
    /// Kept open: the server's stdout must stay writable.
    _stdout: BufReader<ChildStdout>,
}

impl Server {
    /// Starts a server on `data_dir` with extra command-line arguments; its log goes to
    /// `<data_dir>.log` (printed if the test fails).
    pub async fn start(data_dir: &Path, args: &[&str]) -> Server {
        binary("prune-worker"); // the server runs it: it must be as fresh
        Server::start_with(&binary("prune-server"), data_dir, args).await
    }

    /// [`Server::start`] with the server binary at `path` (tools outside `target/<profile>/deps`).
    pub async fn start_with(path: &Path, data_dir: &Path, args: &[&str]) -> Server {
        Server::start_with_env(path, data_dir, args, &[]).await
    }

    /// [`Server::start_with`] with extra environment variables (the server's workers inherit them).
    pub async fn start_with_env(path: &Path, data_dir: &Path, args: &[&str], env: &[(String, String)]) -> Server {
        Server::start_with_options(path, data_dir, args, env, false).await
    }

    /// [`Server::start_with_env`], and with `own_group` the server leads a process group of its
    /// own (see [`Server::signal_group`]; its workers lead their own groups in turn).
    pub async fn start_with_options(
        path: &Path,
        data_dir: &Path,
        args: &[&str],
        env: &[(String, String)],
        own_group: bool,
    ) -> Server {
        let log = data_dir.with_extension("log");
        let log_file = std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("server log");
        // A loopback port of its own, unless the test chooses the address.
        let listen: &[&str] = if args.contains(&"--listen") { &[] } else { &["--listen", "127.0.0.1:0"] };
        let mut command = Command::new(path);
        if own_group {
            command.process_group(0);
        }
        let mut child = command
            .args(listen)
            .arg("--data-dir")
            .arg(data_dir)
            .args(args)
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .expect("spawning prune-server");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
        let mut dashboard = None;
        let addr = tokio::time::timeout(START_TIMEOUT, async {
            let mut line = String::new();
            loop {
                line.clear();
                if stdout.read_line(&mut line).await.expect("reading the server's stdout") == 0 {
                    panic!("prune-server exited before listening; log:\n{}", read_log(&log));
                }
                if let Some(addr) = line.trim().strip_prefix("listening on ") {
                    return addr.to_string();
                }
                if let Some(addr) = line.trim().strip_prefix("dashboard on http://") {
                    dashboard = Some(addr.to_string());
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("prune-server did not listen within {START_TIMEOUT:?}; log:\n{}", read_log(&log)));
        Server { child, addr, dashboard, data_dir: data_dir.to_path_buf(), log, _stdout: stdout }
    }

    pub async fn client(&self) -> Client {
        PruningServiceClient::connect(format!("http://{}", self.addr)).await.expect("connecting to prune-server")
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr)).unwrap().connect().await.expect("connecting")
    }

    pub fn pid(&self) -> i32 {
        self.child.id().expect("server running") as i32
    }

    /// SIGKILL: the server gets no chance to clean up.
    pub async fn kill9(mut self) {
        self.child.kill().await.expect("killing prune-server");
    }

    /// Sends `sig` to the server process only (its workers run on: SIGSTOP is a partition).
    pub fn signal(&self, sig: i32) {
        signal(self.pid(), sig);
    }

    /// Sends `sig` to the server's process group (started with `own_group`) and to the group of
    /// each of its live workers: the whole node.
    pub fn signal_group(&self, sig: i32) {
        let workers = children_of(self.pid());
        // SAFETY: kill(2) has no memory effects.
        let rc = unsafe { libc::kill(-self.pid(), sig) };
        assert_eq!(rc, 0, "kill(-{}, {sig}): {}", self.pid(), std::io::Error::last_os_error());
        for worker in workers {
            // SAFETY: as above. A worker that just exited is no error.
            unsafe { libc::kill(-worker, sig) };
        }
    }

    /// Pids of the server's live child processes (its workers).
    pub fn workers(&self) -> Vec<i32> {
        children_of(self.pid())
    }

    /// SIGKILL to the whole node ([`Server::signal_group`]); waits until the server and the
    /// workers it had are gone. Returns the workers' pids.
    pub async fn kill9_group(mut self, within: Duration) -> Vec<i32> {
        let workers = self.workers();
        self.signal_group(libc::SIGKILL);
        tokio::time::timeout(within, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("prune-server did not exit within {within:?} of SIGKILL"))
            .expect("waiting for prune-server");
        let deadline = Instant::now() + within;
        while workers.iter().any(|&w| process_alive(w)) {
            assert!(Instant::now() < deadline, "workers {workers:?} still alive {within:?} after SIGKILL");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        workers
    }

    /// SIGTERM, then waits for the exit; returns the exit code.
    pub async fn terminate(mut self, within: Duration) -> Option<i32> {
        signal(self.pid(), libc::SIGTERM);
        let status = tokio::time::timeout(within, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("prune-server did not exit within {within:?} of SIGTERM"))
            .expect("waiting for prune-server");
        status.code()
    }

    pub fn log(&self) -> String {
        read_log(&self.log)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(80).collect();
            eprintln!("--- prune-server log ({}) ---", self.log.display());
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
        let _ = self.child.start_kill();
    }
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

pub fn signal(pid: i32, signal: i32) {
    // SAFETY: kill(2) has no memory effects.
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(rc, 0, "kill({pid}, {signal}): {}", std::io::Error::last_os_error());
}

/// Pids of the live (non-zombie) children of `parent`, from `/proc/<pid>/stat`.
pub fn children_of(parent: i32) -> Vec<i32> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // After the parenthesised command name: state, then ppid.
        let mut fields = stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace()).into_iter().flatten();
        let (state, ppid) = (fields.next(), fields.next().and_then(|p| p.parse::<i32>().ok()));
        if ppid == Some(parent) && state != Some("Z") {
            children.push(pid);
        }
    }
    children
}

/// True while a process with `pid` exists and is not a zombie.
pub fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the field after the parenthesised command name.
        Ok(stat) => {
            stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()).is_some_and(|s| s != "Z")
        }
        Err(_) => false,
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Uploads `data` in 64 KiB chunks; returns the blob id.
pub async fn upload(client: &mut Client, data: &[u8]) -> Result<String, tonic::Status> {
    use pb::upload_blob_request::Part;
    let mut messages = vec![pb::UploadBlobRequest {
        part: Some(Part::Header(pb::BlobHeader { size: data.len() as u64, sha256: sha256_hex(data), offset: 0 })),
    }];
    messages.extend(data.chunks(64 * 1024).map(|c| pb::UploadBlobRequest { part: Some(Part::Data(c.to_vec())) }));
    Ok(client.upload_blob(tokio_stream::iter(messages)).await?.into_inner().id)
}

pub async fn create_toml(client: &mut Client, toml: &str) -> Result<pb::Job, tonic::Status> {
    let source = pb::create_job_request::Source::SpecToml(toml.to_string());
    Ok(client.create_job(pb::CreateJobRequest { source: Some(source), ..Default::default() }).await?.into_inner())
}

pub fn state(job: &pb::Job) -> pb::JobState {
    pb::JobState::try_from(job.state).expect("known state")
}

pub fn is_terminal(job: &pb::Job) -> bool {
    matches!(state(job), pb::JobState::Succeeded | pb::JobState::Failed | pb::JobState::Cancelled)
}

/// What a watch saw.
#[derive(Debug, Default)]
pub struct Watched {
    pub jobs: Vec<pb::Job>,
    pub progress: Vec<pb::Progress>,
}

/// Watches `job_id` until `until` holds for the latest job snapshot and progress (or the
/// stream ends); panics after `timeout`. Returns the latest snapshot.
pub async fn watch_until(
    client: &mut Client,
    job_id: &str,
    timeout: Duration,
    mut until: impl FnMut(&pb::Job, Option<&pb::Progress>) -> bool,
) -> (pb::Job, Watched) {
    let deadline = Instant::now() + timeout;
    let mut watched = Watched::default();
    let mut stream =
        client.watch_job(pb::WatchJobRequest { id: job_id.to_string() }).await.expect("WatchJob").into_inner();
    loop {
        let next = tokio::time::timeout_at(deadline, stream.next()).await.unwrap_or_else(|_| {
            panic!("job {job_id}: condition not met within {timeout:?}; last: {:?}", watched.jobs.last())
        });
        match next {
            Some(Ok(pb::JobEvent { event: Some(event), .. })) => match event {
                pb::job_event::Event::Job(job) => watched.jobs.push(job),
                pb::job_event::Event::Progress(p) => watched.progress.push(p),
            },
            Some(Ok(_)) => {}
            Some(Err(status)) => panic!("WatchJob failed: {status}"),
            None => break,
        }
        let job = watched.jobs.last().expect("the first event is the job");
        if until(job, watched.progress.last()) {
            break;
        }
    }
    let last = watched.jobs.last().cloned().expect("the first event is the job");
    (last, watched)
}

/// Watches until the job ends; returns its final state as GetJob reports it.
pub async fn wait_terminal(client: &mut Client, job_id: &str, timeout: Duration) -> (pb::Job, Watched) {
    let (_, watched) = watch_until(client, job_id, timeout, |job, _| is_terminal(job)).await;
    let job = client.get_job(pb::GetJobRequest { id: job_id.to_string() }).await.expect("GetJob").into_inner();
    assert!(is_terminal(&job), "the watch ended before the job did: {job:?}");
    (job, watched)
}

/// Downloads an artifact from `offset`; returns the header and the bytes.
pub async fn download(
    client: &mut Client,
    job_id: &str,
    format: &str,
    offset: u64,
) -> Result<(pb::ArtifactInfo, Vec<u8>), tonic::Status> {
    use pb::download_artifact_response::Part;
    let request = pb::DownloadArtifactRequest {
        job_id: job_id.into(),
        format: format.into(),
        read_offset: offset,
        ..Default::default()
    };
    let mut stream = client.download_artifact(request).await?.into_inner();
    let mut info = None;
    let mut data = Vec::new();
    while let Some(message) = stream.next().await {
        match message?.part {
            Some(Part::Info(i)) => {
                assert!(info.is_none(), "a second info message");
                info = Some(i);
            }
            Some(Part::Data(chunk)) => {
                assert!(info.is_some(), "data before info");
                assert!(chunk.len() <= 256 * 1024, "chunk of {} bytes", chunk.len());
                data.extend_from_slice(&chunk);
            }
            None => {}
        }
    }
    Ok((info.expect("an info message"), data))
}

/// Asserts that an interrupted job's artifact is byte-identical to the one of `reference_id`, the
/// same spec run without interruption (it waits for that job to end).
pub async fn assert_same_artifact_as(
    reference_client: &mut Client,
    reference_id: &str,
    (info, data): &(pb::ArtifactInfo, Vec<u8>),
    timeout: Duration,
) {
    let (reference, _) = wait_terminal(reference_client, reference_id, timeout).await;
    assert_eq!(state(&reference), pb::JobState::Succeeded, "{}", reference.error);
    let (reference_info, reference_data) = download(reference_client, reference_id, "", 0).await.unwrap();
    assert_eq!(info.sha256, reference_info.sha256, "the resumed job's artifact differs from the uninterrupted run's");
    assert_eq!(sha256_hex(data), sha256_hex(&reference_data));
}

/// A small safetensors state dict of `nn.Sequential(Linear(64, 32), ReLU(), Linear(32, 10))`
/// with deterministic, distinct weights.
pub fn mlp_state_dict() -> Vec<u8> {
    use safetensors::tensor::{Dtype, TensorView};
    let tensor = |shape: &[usize], seed: u32| -> (Vec<usize>, Vec<u8>) {
        let n: usize = shape.iter().product();
        let values: Vec<u8> = (0..n)
            .flat_map(|i| {
                // A fixed pseudo-random permutation of magnitudes, with alternating signs.
                let v = ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) % 10_007) as f32 / 10_007.0;
                let v = if i % 2 == 0 { v } else { -v };
                v.to_le_bytes()
            })
            .collect();
        (shape.to_vec(), values)
    };
    let tensors = [
        ("0.weight", tensor(&[32, 64], 1)),
        ("0.bias", tensor(&[32], 2)),
        ("2.weight", tensor(&[10, 32], 3)),
        ("2.bias", tensor(&[10], 4)),
    ];
    let views: Vec<(&str, TensorView)> = tensors
        .iter()
        .map(|(name, (shape, data))| (*name, TensorView::new(Dtype::F32, shape.clone(), data).expect("tensor view")))
        .collect();
    safetensors::serialize(views, None).expect("serialising the state dict")
}

/// Fraction of exact zeros in an f32 tensor of a safetensors file.
pub fn zero_fraction(file: &[u8], name: &str) -> f64 {
    let tensors = safetensors::SafeTensors::deserialize(file).expect("a safetensors file");
    let t = tensors.tensor(name).unwrap_or_else(|_| panic!("no tensor {name}"));
    let values: Vec<f32> = t.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    values.iter().filter(|v| **v == 0.0).count() as f64 / values.len() as f64
}

/// A digits MLP (64 -> hidden -> 10) trained for `epochs` with polynomial decay, checkpointing
/// every `checkpoint_every` steps, one libtorch thread (so that results are reproducible).
pub fn digits_mlp(name: &str, hidden: i64, epochs: i64, checkpoint_every: i64) -> String {
    format!(
        r#"
name = "{name}"
[model]
sequential = [{{ type = "linear", in = 64, out = {hidden} }}, {{ type = "relu" }}, {{ type = "linear", in = {hidden}, out = 10 }}]
[data]
builtin = "digits"
validation_split = 0.1
[training]
epochs = {epochs}
batch_size = 32
optimizer = "adam"
learning_rate = 0.01
checkpoint_every = {checkpoint_every}
threads = 1
[pruning]
schedule = {{ kind = "polynomial_decay", initial_sparsity = 0.2, final_sparsity = 0.8, begin_step = 0, end_step = 100, frequency = 10 }}
[export]
compression = "zstd"
"#
    )
}

/// One-shot pruning of the uploaded state dict `blob` to 50% (ConstantSparsity), as a message.
pub fn one_shot_spec(blob: &str) -> pb::JobSpec {
    pb::JobSpec {
        name: Some("one-shot".into()),
        model: Some(pb::ModelSpec { blob: Some(blob.into()), ..Default::default() }),
        pruning: Some(pb::PruningSpec {
            schedule: Some(pb::Schedule {
                kind: "constant_sparsity".into(),
                target_sparsity: Some(0.5),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Writes a safetensors state dict of `tensors` f32 weights `layers.N.weight` of `shape`,
/// tensor N holding `values(N)`, one tensor at a time (a big test checkpoint is never whole in
/// memory). Returns the file's size.
pub fn write_f32_layers(path: &Path, tensors: usize, shape: [usize; 2], values: impl Fn(usize) -> Vec<f32>) -> u64 {
    use prune_core::tensorstream::{header_bytes, Entry};
    use std::io::Write;
    let entries: Vec<Entry> = (0..tensors)
        .map(|i| Entry {
            name: format!("layers.{i}.weight"),
            dtype: safetensors::Dtype::F32,
            shape: shape.to_vec(),
            len: (shape[0] * shape[1] * 4) as u64,
        })
        .collect();
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    out.write_all(&header_bytes(&entries, None).unwrap()).unwrap();
    for i in 0..tensors {
        let bytes: Vec<u8> = values(i).iter().flat_map(|v| v.to_le_bytes()).collect();
        out.write_all(&bytes).unwrap();
    }
    out.flush().unwrap();
    std::fs::metadata(path).unwrap().len()
}

/// A finished `prunectl` call.
#[derive(Debug)]
pub struct PrunectlRun {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl PrunectlRun {
    pub fn ok(&self) -> bool {
        self.status.success()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{}", self.stdout))
    }

    /// Every stdout line as JSON (`watch --json`).
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        self.stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
    }
}

/// Runs the real `prunectl ARGS` against `addr` (no token); killed after `timeout`.
pub async fn prunectl_at(addr: &str, args: &[&str], timeout: Duration) -> PrunectlRun {
    let output = Command::new(binary("prunectl"))
        .args(args)
        .env("PRUNE_ADDR", addr)
        .env_remove("PRUNE_TOKEN")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(timeout, output)
        .await
        .unwrap_or_else(|_| panic!("prunectl {args:?} did not finish within {timeout:?}"))
        .expect("running prunectl (build it first: `cargo build -p prune-client`)");
    PrunectlRun {
        status: output.status,
        stdout: String::from_utf8(output.stdout).expect("UTF-8 stdout"),
        stderr: String::from_utf8(output.stderr).expect("UTF-8 stderr"),
    }
}

/// A `prune-server` with two workers (killed on drop, printing its log if the test failed), a
/// scratch directory for the files a test writes, and the real `prunectl` run against it: the
/// harness of the CLI tests (`client_cli`, `sweep`).
pub struct CliHarness {
    pub server: Server,
    /// `http://host:port`, as `PRUNE_ADDR` takes it.
    pub addr: String,
    pub dir: tempfile::TempDir,
    /// How long one `prunectl` call may take before it is killed.
    call_timeout: Duration,
}

impl CliHarness {
    pub async fn start(call_timeout: Duration) -> CliHarness {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start(&dir.path().join("var"), &["--workers", "2"]).await;
        let addr = format!("http://{}", server.addr);
        CliHarness { server, addr, dir, call_timeout }
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub async fn prunectl(&self, args: &[&str]) -> PrunectlRun {
        prunectl_at(&self.addr, args, self.call_timeout).await
    }

    /// `prunectl ARGS`, which must succeed.
    pub async fn ok(&self, args: &[&str]) -> PrunectlRun {
        let run = self.prunectl(args).await;
        assert!(
            run.status.success(),
            "prunectl {args:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
            run.status,
            run.stdout,
            run.stderr
        );
        run
    }

    /// Submits a job file and returns the job id.
    pub async fn submit(&self, job_file: &Path) -> String {
        let run = self.ok(&["submit", path_str(job_file), "--json"]).await;
        run.json()["id"].as_str().expect("submit --json prints the id").to_string()
    }

    /// Watches a job to its end, which must be SUCCEEDED.
    pub async fn wait_succeeded(&self, id: &str) {
        let run = self.ok(&["watch", id, "--json"]).await;
        let last = run.json_lines().pop().expect("watch printed events");
        assert_eq!(last["event"], "job", "{last}");
        assert_eq!(last["state"], "SUCCEEDED", "{last}");
    }
}

/// A test path as a command-line argument.
pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 test paths")
}

/// `$PRUNE_VENV/bin/python`: the test virtualenv's Python (PyTorch, safetensors,
/// compressed-tensors), to check artifacts as their users would.
pub fn python() -> PathBuf {
    let venv = std::env::var_os("PRUNE_VENV")
        .expect("PRUNE_VENV is not set: run `eval \"$(scripts/libtorch-env.sh)\"` (the Makefile does) for PyTorch");
    PathBuf::from(venv).join("bin/python")
}

/// Runs a Python snippet with `args`, which must succeed; returns its stdout.
pub async fn run_python(script: &str, args: &[&str]) -> String {
    let out = Command::new(python()).arg("-c").arg(script).args(args).output().await.expect("run python");
    assert!(out.status.success(), "python failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// A deterministic xorshift64 stream seeded by `seed`: the tests' and benchmarks' synthetic
/// weights, the same on every run and machine.
pub fn xorshift(seed: u64) -> impl Iterator<Item = u64> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    std::iter::repeat_with(move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    })
}
