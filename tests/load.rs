//! Load test (`make load`): a real `prune-server --workers W` on `127.0.0.1:0` with a temporary
//! data directory, `--clients C` concurrent gRPC clients, `--jobs N` one-shot pruning jobs in all.
//!
//! Every client loops: CreateJob (a one-shot job on one uploaded MLP state dict, target sparsity
//! 0.3/0.5/0.7/0.9 by job number), GetJob right away, WatchJob to the end with a GetJob after
//! every job event and every `--poll-ms` in between, a final GetJob, then DownloadArtifact. Each
//! artifact is checked against its own spec: its sha256 matches the ArtifactInfo, it is a zstd
//! safetensors file, both weights have the target sparsity, the kept weights are the original
//! ones and the largest in magnitude, the biases are untouched, and all jobs of one target have
//! byte-identical artifacts.
//!
//! A monitor samples the server every 500 ms (VmRSS, threads, open fds, live worker processes).
//! At the end: throughput, p50/p99 of CreateJob, GetJob, DownloadArtifact and job latency,
//! VmRSS/VmHWM after all jobs are stored, data dir and database sizes, leftover workers/fds,
//! the server log's warnings/errors, and a final line `LOAD_JSON {...}` with every figure.
//!
//! Usage: `target/debug/prune-load [--jobs 1000] [--clients 50] [--workers 2] [--poll-ms 500]
//! [--job-timeout-s 1800] [--server PATH] [--keep]`. Exits 1 when any check failed.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prune_proto as pb;
use prune_proto::pruning_service_client::PruningServiceClient;
use prune_tests::{mlp_state_dict, sha256_hex, upload, Client};
use serde_json::json;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

const TARGETS: [f64; 4] = [0.3, 0.5, 0.7, 0.9];
const WEIGHTS: [&str; 2] = ["0.weight", "2.weight"];
const BIASES: [&str; 2] = ["0.bias", "2.bias"];

struct Args {
    jobs: usize,
    clients: usize,
    workers: u32,
    poll: Duration,
    job_timeout: Duration,
    server: Option<PathBuf>,
    keep: bool,
}

fn parse_args() -> Args {
    let mut args = Args {
        jobs: 1000,
        clients: 50,
        workers: 2,
        poll: Duration::from_millis(500),
        job_timeout: Duration::from_secs(1800),
        server: None,
        keep: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().unwrap_or_else(|| usage(&format!("{name} needs a value")));
        let number = |name: &str, v: String| -> u64 { v.parse().unwrap_or_else(|_| usage(&format!("{name}: {v:?}"))) };
        match flag.as_str() {
            "--jobs" => args.jobs = number("--jobs", value("--jobs")) as usize,
            "--clients" => args.clients = number("--clients", value("--clients")) as usize,
            "--workers" => args.workers = number("--workers", value("--workers")) as u32,
            "--poll-ms" => args.poll = Duration::from_millis(number("--poll-ms", value("--poll-ms")).max(1)),
            "--job-timeout-s" => {
                args.job_timeout = Duration::from_secs(number("--job-timeout-s", value("--job-timeout-s")))
            }
            "--server" => args.server = Some(value("--server").into()),
            "--keep" => args.keep = true,
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    if args.jobs == 0 || args.clients == 0 || args.workers == 0 {
        usage("--jobs, --clients and --workers must be at least 1");
    }
    args
}

fn usage(problem: &str) -> ! {
    if !problem.is_empty() {
        eprintln!("prune-load: {problem}");
    }
    eprintln!(
        "usage: prune-load [--jobs 1000] [--clients 50] [--workers 2] [--poll-ms 500] [--job-timeout-s 1800] \
         [--server PATH] [--keep]"
    );
    std::process::exit(2);
}

// ---------------------------------------------------------------------------------------------
// The server and /proc

/// `prune-server` next to this binary (`target/<profile>/`), unless `--server` says otherwise.
fn server_binary(explicit: Option<&Path>) -> PathBuf {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe().expect("current_exe").parent().expect("a directory").join("prune-server"),
    };
    if !path.exists() {
        eprintln!("prune-load: {} not found: build it first (make build) or pass --server", path.display());
        std::process::exit(2);
    }
    path
}

/// A `kB` field of /proc/<pid>/status, in bytes.
fn status_kb(pid: i32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?;
    let kb: u64 = line[field.len() + 1..].split_whitespace().next()?.parse().ok()?;
    Some(if line.ends_with("kB") { kb * 1024 } else { kb })
}

fn open_fds(pid: i32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

/// Live (non-zombie) processes whose parent is `pid`, with their state letter.
fn children(pid: i32) -> Vec<(i32, char)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return out };
    for entry in dir.flatten() {
        let Some(child) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else { continue };
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        let mut fields = rest.split_whitespace();
        let state = fields.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let ppid: i32 = fields.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        if ppid == pid {
            out.push((child, state));
        }
    }
    out
}

#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    rss: u64,
    hwm: u64,
    threads: u64,
    fds: u64,
    workers: u64,
    zombies: u64,
}

fn sample(pid: i32) -> Sample {
    let kids = children(pid);
    Sample {
        rss: status_kb(pid, "VmRSS").unwrap_or(0),
        hwm: status_kb(pid, "VmHWM").unwrap_or(0),
        threads: status_kb(pid, "Threads").unwrap_or(0),
        fds: open_fds(pid).unwrap_or(0),
        workers: kids.iter().filter(|(_, s)| *s != 'Z').count() as u64,
        zombies: kids.iter().filter(|(_, s)| *s == 'Z').count() as u64,
    }
}

fn sample_json(s: &Sample) -> serde_json::Value {
    json!({"vm_rss_bytes": s.rss, "vm_hwm_bytes": s.hwm, "threads": s.threads, "fds": s.fds,
           "worker_processes": s.workers, "zombie_children": s.zombies})
}

/// (apparent bytes, allocated bytes, files) under `dir`.
fn dir_usage(dir: &Path) -> (u64, u64, u64) {
    let mut total = (0, 0, 0);
    let Ok(entries) = std::fs::read_dir(dir) else { return total };
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            let (a, b, c) = dir_usage(&entry.path());
            total = (total.0 + a, total.1 + b, total.2 + c);
        } else {
            total = (total.0 + meta.len(), total.1 + meta.blocks() * 512, total.2 + 1);
        }
    }
    total
}

fn entries(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map(|d| d.count() as u64).unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Figures

#[derive(Default)]
struct Stats {
    create: Vec<Duration>,
    get: Vec<Duration>,
    download: Vec<Duration>,
    /// CreateJob sent to artifact verified.
    job: Vec<Duration>,
    /// From the job's own timestamps.
    queue_ms: Vec<i64>,
    run_ms: Vec<i64>,
    succeeded: usize,
    verified: usize,
    attempts_over_1: usize,
    watch_events: usize,
    failures: Vec<String>,
    /// Target sparsity -> (artifact sha256 -> jobs).
    digests: BTreeMap<String, BTreeMap<String, usize>>,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    // Nearest rank.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1].as_secs_f64() * 1000.0
}

fn latency_json(samples: &mut [Duration]) -> serde_json::Value {
    samples.sort();
    let mean = if samples.is_empty() {
        f64::NAN
    } else {
        samples.iter().map(Duration::as_secs_f64).sum::<f64>() * 1000.0 / samples.len() as f64
    };
    json!({
        "n": samples.len(),
        "p50_ms": round3(percentile(samples, 50.0)),
        "p90_ms": round3(percentile(samples, 90.0)),
        "p99_ms": round3(percentile(samples, 99.0)),
        "max_ms": round3(samples.last().map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)),
        "mean_ms": round3(mean),
    })
}

fn ms_json(samples: &mut [i64]) -> serde_json::Value {
    let mut d: Vec<Duration> = samples.iter().map(|ms| Duration::from_millis((*ms).max(0) as u64)).collect();
    latency_json(&mut d)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim().to_string()
}

// ---------------------------------------------------------------------------------------------
// One job

fn spec(blob: &str, index: usize, target: f64) -> pb::JobSpec {
    pb::JobSpec {
        name: Some(format!("load-{index:05}")),
        model: Some(pb::ModelSpec { blob: Some(blob.into()), ..Default::default() }),
        pruning: Some(pb::PruningSpec {
            schedule: Some(pb::Schedule {
                kind: "constant_sparsity".into(),
                target_sparsity: Some(target),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn f32s(file: &safetensors::SafeTensors, name: &str) -> Result<Vec<f32>, String> {
    let t = file.tensor(name).map_err(|e| format!("tensor {name}: {e}"))?;
    Ok(t.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect())
}

/// Checks a downloaded artifact against the original state dict and the job's target.
fn verify_artifact(original: &[u8], packed: &[u8], target: f64) -> Result<(), String> {
    let raw = prune_core::compress::decompress(packed).map_err(|e| format!("decompressing: {e}"))?;
    let pruned = safetensors::SafeTensors::deserialize(&raw).map_err(|e| format!("safetensors: {e}"))?;
    let dense = safetensors::SafeTensors::deserialize(original).expect("the original state dict");
    let mut names = pruned.names();
    names.sort();
    if names != ["0.bias", "0.weight", "2.bias", "2.weight"] {
        return Err(format!("tensors {names:?}"));
    }
    for name in WEIGHTS {
        let (before, after) = (f32s(&dense, name)?, f32s(&pruned, name)?);
        if before.len() != after.len() {
            return Err(format!("{name}: {} values, expected {}", after.len(), before.len()));
        }
        let zeros = after.iter().filter(|v| **v == 0.0).count();
        let sparsity = zeros as f64 / after.len() as f64;
        // Exact count up to rounding of target * numel.
        if (sparsity - target).abs() > 1.0 / after.len() as f64 + 1e-9 {
            return Err(format!("{name}: sparsity {sparsity:.4}, target {target}"));
        }
        let mut max_dropped = 0f32;
        let mut min_kept = f32::INFINITY;
        for (b, a) in before.iter().zip(&after) {
            if *a == 0.0 {
                max_dropped = max_dropped.max(b.abs());
            } else if a != b {
                return Err(format!("{name}: a kept weight changed ({b} -> {a})"));
            } else {
                min_kept = min_kept.min(b.abs());
            }
        }
        if max_dropped > min_kept {
            return Err(format!("{name}: dropped |w| {max_dropped} > kept |w| {min_kept}: not magnitude order"));
        }
    }
    for name in BIASES {
        if f32s(&dense, name)? != f32s(&pruned, name)? {
            return Err(format!("{name}: changed (biases are not pruned by default)"));
        }
    }
    Ok(())
}

struct Shared {
    blob: String,
    original: Vec<u8>,
    next: AtomicUsize,
    jobs: usize,
    poll: Duration,
    job_timeout: Duration,
    stats: Mutex<Stats>,
    done: AtomicUsize,
    started: Instant,
}

/// Times one GetJob.
async fn timed_get(client: &mut Client, id: &str, local: &mut Stats) -> Result<pb::Job, String> {
    let t = Instant::now();
    let job = client
        .get_job(pb::GetJobRequest { id: id.into() })
        .await
        .map_err(|s| format!("GetJob {id}: {s}"))?
        .into_inner();
    local.get.push(t.elapsed());
    Ok(job)
}

async fn run_job(client: &mut Client, shared: &Shared, index: usize, local: &mut Stats) -> Result<(), String> {
    let target = TARGETS[index % TARGETS.len()];
    let t0 = Instant::now();
    let source = pb::create_job_request::Source::Spec(spec(&shared.blob, index, target));
    let created = client
        .create_job(pb::CreateJobRequest { source: Some(source), ..Default::default() })
        .await
        .map_err(|s| format!("job #{index}: CreateJob: {s}"))?
        .into_inner();
    local.create.push(t0.elapsed());
    let id = created.id;
    timed_get(client, &id, local).await?;

    // Watch to the end, with a GetJob after every job event and every `poll` in between.
    let deadline = tokio::time::Instant::now() + shared.job_timeout;
    let mut stream = client
        .watch_job(pb::WatchJobRequest { id: id.clone() })
        .await
        .map_err(|s| format!("{id}: WatchJob: {s}"))?
        .into_inner();
    let mut poller = client.clone();
    let mut tick = tokio::time::interval(shared.poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut last_state = pb::JobState::StateUnspecified;
    loop {
        tokio::select! {
            next = stream.next() => match next {
                Some(Ok(pb::JobEvent { event: Some(pb::job_event::Event::Job(job)), .. })) => {
                    local.watch_events += 1;
                    last_state = job.state();
                    timed_get(&mut poller, &id, local).await?;
                }
                Some(Ok(_)) => local.watch_events += 1,
                Some(Err(s)) => return Err(format!("{id}: WatchJob stream: {s}")),
                None => break,
            },
            _ = tick.tick() => { timed_get(&mut poller, &id, local).await?; }
            _ = tokio::time::sleep_until(deadline) => {
                return Err(format!("{id}: not finished within {:?} (last watched state {last_state:?})", shared.job_timeout));
            }
        }
    }
    let job = timed_get(client, &id, local).await?;
    if job.state() != pb::JobState::Succeeded {
        return Err(format!("{id}: ended {:?} (watch saw {last_state:?}): {}", job.state(), job.error));
    }
    local.succeeded += 1;
    if job.attempts > 1 {
        local.attempts_over_1 += 1;
    }
    if job.started_unix_ms > 0 && job.finished_unix_ms >= job.started_unix_ms {
        local.queue_ms.push(job.started_unix_ms - job.created_unix_ms);
        local.run_ms.push(job.finished_unix_ms - job.started_unix_ms);
    }
    if job.artifacts.len() != 1 {
        return Err(format!("{id}: {} artifacts: {:?}", job.artifacts.len(), job.artifacts));
    }

    let t = Instant::now();
    let (info, packed) =
        prune_tests::download(client, &id, "", 0).await.map_err(|s| format!("{id}: DownloadArtifact: {s}"))?;
    local.download.push(t.elapsed());
    if info.size != packed.len() as u64 || info.sha256 != sha256_hex(&packed) || info != job.artifacts[0] {
        return Err(format!("{id}: artifact bytes do not match their info {info:?} / job {:?}", job.artifacts[0]));
    }
    if (info.format.as_str(), info.compression.as_str(), info.sparse_format.as_str())
        != ("safetensors", "zstd", "dense")
    {
        return Err(format!("{id}: unexpected artifact {info:?}"));
    }
    verify_artifact(&shared.original, &packed, target).map_err(|e| format!("{id} (target {target}): {e}"))?;
    local.verified += 1;
    *local.digests.entry(format!("{target}")).or_default().entry(info.sha256).or_default() += 1;
    local.job.push(t0.elapsed());
    Ok(())
}

async fn client_loop(channel: Channel, shared: Arc<Shared>) {
    let mut client = PruningServiceClient::new(channel);
    let mut local = Stats::default();
    loop {
        let index = shared.next.fetch_add(1, Ordering::SeqCst);
        if index >= shared.jobs {
            break;
        }
        if let Err(e) = run_job(&mut client, &shared, index, &mut local).await {
            eprintln!("FAILURE: {e}");
            local.failures.push(e);
        }
        let done = shared.done.fetch_add(1, Ordering::SeqCst) + 1;
        if done.is_multiple_of(50) || done == shared.jobs {
            eprintln!(
                "  {done}/{} jobs done, {:.1} s, load {}",
                shared.jobs,
                shared.started.elapsed().as_secs_f64(),
                loadavg()
            );
        }
    }
    let mut stats = shared.stats.lock().unwrap();
    stats.create.extend(local.create);
    stats.get.extend(local.get);
    stats.download.extend(local.download);
    stats.job.extend(local.job);
    stats.queue_ms.extend(local.queue_ms);
    stats.run_ms.extend(local.run_ms);
    stats.succeeded += local.succeeded;
    stats.verified += local.verified;
    stats.attempts_over_1 += local.attempts_over_1;
    stats.watch_events += local.watch_events;
    stats.failures.extend(local.failures);
    for (target, digests) in local.digests {
        let entry = stats.digests.entry(target).or_default();
        for (digest, n) in digests {
            *entry.entry(digest).or_default() += n;
        }
    }
}

/// Counts jobs by state through ListJobs (all pages).
async fn list_states(client: &mut Client) -> Result<BTreeMap<String, usize>, String> {
    let mut counts = BTreeMap::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_jobs(pb::ListJobsRequest { page_size: 1000, page_token: token.clone(), ..Default::default() })
            .await
            .map_err(|s| format!("ListJobs: {s}"))?
            .into_inner();
        for job in &page.jobs {
            *counts.entry(format!("{:?}", job.state())).or_default() += 1;
        }
        if page.next_page_token.is_empty() {
            return Ok(counts);
        }
        token = page.next_page_token;
    }
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    let binary = server_binary(args.server.as_deref());
    let tmp = tempfile::Builder::new().prefix("prune-load-").tempdir().expect("temporary directory");
    let data_dir = tmp.path().join("data");
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load_start = loadavg();
    eprintln!(
        "prune-load: {} jobs, {} clients, --workers {}, data dir {}, nproc {nproc}, load {load_start}",
        args.jobs,
        args.clients,
        args.workers,
        data_dir.display()
    );

    let server_started = Instant::now();
    let server = prune_tests::Server::start_with(&binary, &data_dir, &["--workers", &args.workers.to_string()]).await;
    let startup = server_started.elapsed();
    let pid = server.pid();
    let idle = sample(pid);

    // Monitor: peaks of the server's footprint while the load runs.
    let stop = Arc::new(AtomicBool::new(false));
    let peaks = Arc::new(Mutex::new((Sample::default(), Vec::<Sample>::new())));
    let monitor = {
        let (stop, peaks) = (stop.clone(), peaks.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let s = sample(pid);
                {
                    let mut p = peaks.lock().unwrap();
                    p.0 = Sample {
                        rss: p.0.rss.max(s.rss),
                        hwm: p.0.hwm.max(s.hwm),
                        threads: p.0.threads.max(s.threads),
                        fds: p.0.fds.max(s.fds),
                        workers: p.0.workers.max(s.workers),
                        zombies: p.0.zombies.max(s.zombies),
                    };
                    p.1.push(s);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };

    let original = mlp_state_dict();
    let endpoint = format!("http://{}", server.addr);
    let mut admin = PruningServiceClient::connect(endpoint.clone()).await.expect("connecting to prune-server");
    let blob = upload(&mut admin, &original).await.expect("UploadBlob");

    let shared = Arc::new(Shared {
        blob,
        original,
        next: AtomicUsize::new(0),
        jobs: args.jobs,
        poll: args.poll,
        job_timeout: args.job_timeout,
        stats: Mutex::new(Stats::default()),
        done: AtomicUsize::new(0),
        started: Instant::now(),
    });
    // One connection per client.
    let mut channels = Vec::new();
    for _ in 0..args.clients {
        channels.push(Channel::from_shared(endpoint.clone()).unwrap().connect().await.expect("connecting"));
    }
    let started = Instant::now();
    let tasks: Vec<_> = channels.into_iter().map(|c| tokio::spawn(client_loop(c, shared.clone()))).collect();
    let mut panics = Vec::new();
    for task in tasks {
        if let Err(e) = task.await {
            panics.push(format!("client task: {e}"));
        }
    }
    let wall = started.elapsed();
    let load_end = loadavg();

    // Everything is stored: let the last workers exit, then measure.
    let settle = Instant::now();
    while sample(pid).workers > 0 && settle.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = sample(pid);
    let leftover: Vec<i32> = children(pid).into_iter().map(|(p, _)| p).collect();
    stop.store(true, Ordering::SeqCst);
    let _ = monitor.await;
    let (peak, series) = {
        let p = peaks.lock().unwrap();
        (p.0, p.1.clone())
    };
    // fds after the first tenth of the run vs the end: growth would be a leak.
    let early = series.get(series.len() / 10).copied().unwrap_or_default();

    let states = list_states(&mut admin).await;
    let data_usage = dir_usage(&data_dir);
    let db_file = |suffix: &str| std::fs::metadata(data_dir.join(format!("prune.db{suffix}"))).map_or(0, |m| m.len());
    let (db, db_wal, db_shm) = (db_file(""), db_file("-wal"), db_file("-shm"));
    let artifacts = dir_usage(&data_dir.join("artifacts"));
    // SUCCEEDED jobs' checkpoint directories are removed by the server: any left is reported,
    // and checkpoint files left count as a problem.
    let checkpoints_left = entries(&data_dir.join("checkpoints"));
    let checkpoint_files = dir_usage(&data_dir.join("checkpoints")).2;
    let blobs = dir_usage(&data_dir.join("blobs"));

    // Shut down cleanly and time it.
    drop(admin);
    let t = Instant::now();
    let log_path = data_dir.with_extension("log");
    let exit = match server.terminate(Duration::from_secs(60)).await {
        Some(code) => format!("exit status: {code}"),
        None => "killed by a signal".into(),
    };
    let shutdown = t.elapsed();
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let log_warn = log.lines().filter(|l| l.contains(" WARN ")).count();
    let log_error = log.lines().filter(|l| l.contains(" ERROR ")).count();
    let log_samples: Vec<String> =
        log.lines().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).take(10).map(String::from).collect();

    let mut stats = std::mem::take(&mut *shared.stats.lock().unwrap());
    stats.failures.extend(panics);
    let mut problems: Vec<String> = stats.failures.iter().take(20).cloned().collect();
    if stats.failures.len() > 20 {
        problems.push(format!("... and {} more failures", stats.failures.len() - 20));
    }
    let identical = stats.digests.values().all(|d| d.len() == 1);
    if !identical {
        problems.push(format!("artifacts of one target differ: {:?}", stats.digests));
    }
    match &states {
        Ok(s) if s.get("Succeeded").copied() != Some(args.jobs) || s.values().sum::<usize>() != args.jobs => {
            problems.push(format!("ListJobs counts {s:?}"))
        }
        Err(e) => problems.push(e.clone()),
        _ => {}
    }
    if !leftover.is_empty() {
        problems.push(format!("worker processes left 30 s after the last job: {leftover:?}"));
    }
    if peak.workers > args.workers as u64 {
        problems.push(format!("{} worker processes at once with --workers {}", peak.workers, args.workers));
    }
    if checkpoint_files > 0 {
        problems.push(format!("{checkpoint_files} checkpoint files left by one-shot jobs"));
    }
    if !exit.contains("exit status: 0") {
        problems.push(format!("server exit after SIGTERM: {exit}"));
    }

    let throughput = stats.verified as f64 / wall.as_secs_f64();
    let digest_counts: BTreeMap<String, usize> = stats.digests.iter().map(|(t, d)| (t.clone(), d.len())).collect();
    let jobs_per_target: BTreeMap<String, usize> =
        stats.digests.iter().map(|(t, d)| (t.clone(), d.values().sum())).collect();
    let figures = json!({
        "jobs": args.jobs, "clients": args.clients, "workers": args.workers, "poll_ms": args.poll.as_millis() as u64,
        "machine": {"nproc": nproc, "loadavg_start": load_start, "loadavg_end": load_end, "shared": true},
        "server_startup_s": round3(startup.as_secs_f64()),
        "wall_s": round3(wall.as_secs_f64()),
        "throughput_jobs_per_s": round3(throughput),
        "succeeded": stats.succeeded, "artifacts_verified": stats.verified, "failures": stats.failures.len(),
        "retried_jobs": stats.attempts_over_1,
        "artifact_digests_per_target": digest_counts, "jobs_per_target": jobs_per_target,
        "identical_artifacts_per_target": identical,
        "list_jobs_states": states.as_ref().ok(),
        "latency": {
            "create_job": latency_json(&mut stats.create),
            "get_job": latency_json(&mut stats.get),
            "download_artifact": latency_json(&mut stats.download),
            "job_end_to_end": latency_json(&mut stats.job),
            "server_queue_wait": ms_json(&mut stats.queue_ms),
            "server_run": ms_json(&mut stats.run_ms),
        },
        "watch_events": stats.watch_events,
        "server": {
            "idle": sample_json(&idle), "peak": sample_json(&peak), "early": sample_json(&early),
            "after_jobs": sample_json(&after), "leftover_workers": leftover,
            "shutdown_s": round3(shutdown.as_secs_f64()), "exit": exit,
            "log_warn_lines": log_warn, "log_error_lines": log_error,
        },
        "storage": {
            "data_dir_bytes": data_usage.0, "data_dir_allocated_bytes": data_usage.1, "data_dir_files": data_usage.2,
            "db_bytes": db, "db_wal_bytes": db_wal, "db_shm_bytes": db_shm,
            "artifacts_bytes": artifacts.0, "artifact_files": artifacts.2,
            "blobs_bytes": blobs.0, "checkpoint_dirs_left": checkpoints_left, "checkpoint_files_left": checkpoint_files,
        },
        "ok": problems.is_empty(),
        "problems": problems,
    });

    let l = &figures["latency"];
    let row = |name: &str, v: &serde_json::Value| {
        println!(
            "  {name:<20} n={:<6} p50 {:>9.3} ms  p90 {:>9.3} ms  p99 {:>9.3} ms  max {:>9.3} ms",
            v["n"],
            v["p50_ms"].as_f64().unwrap_or(f64::NAN),
            v["p90_ms"].as_f64().unwrap_or(f64::NAN),
            v["p99_ms"].as_f64().unwrap_or(f64::NAN),
            v["max_ms"].as_f64().unwrap_or(f64::NAN)
        )
    };
    println!("== prune-load: {} jobs, {} clients, prune-server --workers {} ==", args.jobs, args.clients, args.workers);
    println!("machine: nproc {nproc} (shared with other work), loadavg start {load_start} / end {load_end}");
    println!(
        "wall {:.1} s, throughput {throughput:.2} jobs/s end to end (server startup {:.2} s)",
        wall.as_secs_f64(),
        startup.as_secs_f64()
    );
    println!(
        "jobs: {} SUCCEEDED, {} artifacts verified, {} failures, {} retried; ListJobs {:?}",
        stats.succeeded,
        stats.verified,
        stats.failures.len(),
        stats.attempts_over_1,
        states.as_ref().ok()
    );
    println!(
        "artifacts: jobs per target {jobs_per_target:?}, distinct sha256 per target {digest_counts:?} ({})",
        if identical { "identical within each target" } else { "DIFFER" }
    );
    println!("latency:");
    row("CreateJob", &l["create_job"]);
    row("GetJob", &l["get_job"]);
    row("DownloadArtifact", &l["download_artifact"]);
    row("job end to end", &l["job_end_to_end"]);
    row("server queue wait", &l["server_queue_wait"]);
    row("server run", &l["server_run"]);
    println!(
        "server memory: idle VmRSS {:.1} MiB; after {} jobs VmRSS {:.1} MiB, VmHWM {:.1} MiB (peak sampled RSS {:.1} MiB)",
        mib(idle.rss),
        args.jobs,
        mib(after.rss),
        mib(after.hwm),
        mib(peak.rss)
    );
    println!(
        "server: fds idle {} / early {} / peak {} / after {}; threads idle {} / peak {} / after {}; \
         workers at once max {}; leftover workers {:?}; zombies max {}",
        idle.fds,
        early.fds,
        peak.fds,
        after.fds,
        idle.threads,
        peak.threads,
        after.threads,
        peak.workers,
        leftover,
        peak.zombies
    );
    println!(
        "storage: data dir {:.2} MiB ({:.2} MiB allocated, {} files); DB {:.2} MiB + WAL {:.2} MiB + SHM {:.2} MiB; \
         artifacts {:.2} MiB in {} files; checkpoint dirs left {checkpoints_left} ({checkpoint_files} files)",
        mib(data_usage.0),
        mib(data_usage.1),
        data_usage.2,
        mib(db),
        mib(db_wal),
        mib(db_shm),
        mib(artifacts.0),
        artifacts.2
    );
    println!(
        "shutdown: SIGTERM -> {exit} in {:.2} s; server log: {log_warn} WARN, {log_error} ERROR lines",
        shutdown.as_secs_f64()
    );
    for line in &log_samples {
        println!("  log: {line}");
    }
    if figures["problems"].as_array().is_some_and(|p| !p.is_empty()) {
        println!("PROBLEMS:");
        for p in figures["problems"].as_array().unwrap() {
            println!("  - {}", p.as_str().unwrap_or_default());
        }
    } else {
        println!("OK: every job SUCCEEDED with a verified artifact");
    }
    println!("LOAD_JSON {figures}");

    if args.keep {
        let kept = tmp.keep();
        println!("kept {}", kept.display());
    }
    let ok = figures["ok"].as_bool().unwrap_or(false);
    std::process::exit(if ok { 0 } else { 1 });
}
