//! Cluster benchmark (`make bench-cluster`, not part of `make test`): one PostgreSQL, one S3
//! server (s3s-fs) and 1, 2, then 3 prune-server nodes on loopback, through the cluster test
//! harness (`tests/cluster_support.rs`). Prints:
//!
//! * jobs/s with 1, 2 and 3 nodes (`--jobs` quick digits jobs submitted round-robin, from the
//!   first CreateJob to the last job's end). Every node runs its workers on the same machine:
//!   past the machine's cores (2 in CI) more nodes add no throughput, they only share it;
//! * claim latency p50/p99: a job's `created_unix_ms` to its first attempt's `started_unix_ms`
//!   (`Job.attempt_history`), one job at a time on an idle cluster, and for the burst of
//!   `--jobs` (where it includes the wait for a free worker);
//! * bytes moved through the store per job (s3s-fs's read+write bytes from /proc/<pid>/io,
//!   halved: a PUT is read from the socket and written to a file, a GET the other way round)
//!   against the artifact's size;
//! * PostgreSQL statements per second with no job (the nodes' heartbeats and polling), from
//!   `pg_stat_statements` (loaded for the benchmark) over `--idle-secs`;
//! * takeover time after `kill -9` of the node running a job, over `--kills` kills: kill to the
//!   new attempt's start (its `started_unix_ms`), and kill to its first live progress past the
//!   resumed step (a WatchJob on the node that took it over).
//!
//! Usage: `target/debug/prune-bench-cluster [--jobs 12] [--kills 20] [--lease-secs 2]
//! [--idle-secs 5] [--nodes 3]`.

use std::time::{Duration, Instant};

use prune_proto as pb;
use prune_tests::cluster::Cluster;
use prune_tests::{create_toml, digits_mlp, is_terminal, watch_until, Client};
use sqlx::Row;

struct Args {
    jobs: usize,
    kills: usize,
    lease_secs: u64,
    idle: Duration,
    nodes: usize,
}

fn parse_args() -> Args {
    let mut args = Args { jobs: 12, kills: 20, lease_secs: 2, idle: Duration::from_secs(5), nodes: 3 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value: u64 =
            it.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| usage(&format!("{flag} needs a number")));
        match flag.as_str() {
            "--jobs" => args.jobs = value.max(1) as usize,
            "--kills" => args.kills = value as usize,
            "--lease-secs" => args.lease_secs = value.max(1),
            "--idle-secs" => args.idle = Duration::from_secs(value.max(1)),
            "--nodes" => args.nodes = value.clamp(1, 8) as usize,
            _ => usage(&format!("unknown argument {flag:?}")),
        }
    }
    args
}

fn usage(problem: &str) -> ! {
    eprintln!("prune-bench-cluster: {problem}");
    eprintln!("usage: prune-bench-cluster [--jobs 12] [--kills 20] [--lease-secs 2] [--idle-secs 5] [--nodes 3]");
    std::process::exit(2);
}

fn quick_job(name: &str) -> String {
    digits_mlp(name, 32, 2, 20)
}

/// Long enough to be killed mid-job: 3060 steps, a checkpoint every 100.
fn medium_job(name: &str) -> String {
    digits_mlp(name, 512, 60, 100)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

fn p50_p99(mut values: Vec<f64>) -> String {
    values.sort_by(f64::total_cmp);
    format!("p50 {:.0} ms, p99 {:.0} ms (n={})", percentile(&values, 50.0), percentile(&values, 99.0), values.len())
}

/// rchar + wchar of a process: every byte it read or wrote through a system call.
fn io_bytes(pid: Option<u32>) -> u64 {
    let Some(io) = pid.and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/io")).ok()) else { return 0 };
    io.lines()
        .filter(|l| l.starts_with("rchar:") || l.starts_with("wchar:"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

/// GetJob on the first node that answers.
async fn fetch_view(cluster: &Cluster, id: &str) -> Option<pb::Job> {
    for k in cluster.running() {
        if let Ok(view) = cluster.client(k).await.get_job(pb::GetJobRequest { id: id.into() }).await {
            return Some(view.into_inner());
        }
    }
    None
}

async fn any_client(cluster: &Cluster, except: Option<usize>) -> Client {
    for k in cluster.running().into_iter().filter(|k| Some(*k) != except) {
        let mut client = cluster.client(k).await;
        if client.list_jobs(pb::ListJobsRequest::default()).await.is_ok() {
            return client;
        }
    }
    panic!("no node answers")
}

/// Statements the nodes ran on their database so far (pg_stat_statements, which counts each
/// statement as it completes), the sampling queries left out.
async fn statements(cluster: &Cluster) -> i64 {
    let mut db = cluster.db().await;
    let row = sqlx::query(
        "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid \
         WHERE d.datname = current_database() AND s.query NOT ILIKE '%pg_stat_statements%'",
    )
    .fetch_one(&mut db)
    .await
    .expect("pg_stat_statements");
    row.get::<i64, _>(0)
}

/// Statements per second on the nodes' database over `window` with no job: heartbeats and polls.
async fn idle_statements_per_s(cluster: &Cluster, window: Duration) -> f64 {
    let before = statements(cluster).await;
    tokio::time::sleep(window).await;
    let after = statements(cluster).await;
    (after - before).max(0) as f64 / window.as_secs_f64()
}

/// Claim latency with a free worker: `n` jobs one after the other, each created once the one
/// before has ended.
async fn idle_claims(cluster: &Cluster, n: usize) -> Vec<f64> {
    let mut out = Vec::new();
    for i in 0..n {
        let mut client = cluster.client(i % cluster.running().len()).await;
        let id = create_toml(&mut client, &quick_job(&format!("idle-{i}"))).await.expect("CreateJob").id;
        let deadline = Instant::now() + Duration::from_secs(120);
        let view = loop {
            let view = fetch_view(cluster, &id).await.expect("GetJob");
            if is_done(&view) {
                break view;
            }
            assert!(Instant::now() < deadline, "{id} not done within 120 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        if let Some(first) = view.attempt_history.first() {
            out.push((first.started_unix_ms - view.created_unix_ms) as f64);
        }
    }
    out
}

fn is_done(view: &pb::Job) -> bool {
    matches!(view.state(), pb::JobState::Succeeded | pb::JobState::Failed | pb::JobState::Cancelled)
}

struct Throughput {
    nodes: usize,
    jobs_per_s: f64,
    /// Under load: includes the wait for a free worker.
    claim_ms: Vec<f64>,
    /// One job at a time on an idle cluster.
    idle_claim_ms: Vec<f64>,
    store_bytes_per_job: f64,
    artifact_bytes: f64,
    idle_tps: f64,
    failed: usize,
}

async fn throughput(nodes: usize, args: &Args) -> Throughput {
    let cluster = Cluster::start_with(&vec![1; nodes], args.lease_secs, true).await;
    let idle_tps = idle_statements_per_s(&cluster, args.idle).await;
    let idle_claim_ms = idle_claims(&cluster, args.jobs.min(10)).await;
    let io_before = io_bytes(cluster.s3.pid());
    let started = Instant::now();
    let mut ids = Vec::new();
    for i in 0..args.jobs {
        let mut client = cluster.client(i % nodes).await;
        ids.push(create_toml(&mut client, &quick_job(&format!("bench-{i}"))).await.expect("CreateJob").id);
    }
    let mut client = any_client(&cluster, None).await;
    let deadline = Instant::now() + Duration::from_secs(120 + 60 * args.jobs as u64);
    let mut pending = ids.clone();
    while !pending.is_empty() {
        assert!(Instant::now() < deadline, "jobs not done: {pending:?}");
        let mut still = Vec::new();
        for id in pending {
            let job = client.get_job(pb::GetJobRequest { id: id.clone() }).await.expect("GetJob").into_inner();
            if !is_terminal(&job) {
                still.push(id);
            }
        }
        pending = still;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let elapsed = started.elapsed();
    let moved = io_bytes(cluster.s3.pid()).saturating_sub(io_before);
    let (mut claim_ms, mut artifact_bytes, mut failed) = (Vec::new(), 0u64, 0);
    for id in &ids {
        let job = client.get_job(pb::GetJobRequest { id: id.clone() }).await.expect("GetJob").into_inner();
        if pb::JobState::try_from(job.state) != Ok(pb::JobState::Succeeded) {
            failed += 1;
        }
        artifact_bytes += job.artifacts.iter().map(|a| a.size).sum::<u64>();
        let view = fetch_view(&cluster, id).await.expect("GetJob");
        if let Some(first) = view.attempt_history.first() {
            claim_ms.push((first.started_unix_ms - view.created_unix_ms) as f64);
        }
    }
    let n = args.jobs as f64;
    Throughput {
        nodes,
        jobs_per_s: n / elapsed.as_secs_f64(),
        claim_ms,
        idle_claim_ms,
        store_bytes_per_job: moved as f64 / 2.0 / n,
        artifact_bytes: artifact_bytes as f64 / n,
        idle_tps,
        failed,
    }
}

/// Kill the node running a job after its first checkpoint; time the takeover. Returns
/// (kill -> new attempt started, kill -> first progress past the resumed step) in ms.
async fn one_takeover(cluster: &mut Cluster, i: usize, lease: u64) -> Result<(f64, f64), String> {
    let mut client = any_client(cluster, None).await;
    let id = create_toml(&mut client, &medium_job(&format!("kill-{i}"))).await.expect("CreateJob").id;
    let timeout = Duration::from_secs(120);
    let deadline = Instant::now() + timeout;
    // Running on a node, past its first checkpoint.
    let victim = loop {
        if Instant::now() > deadline {
            return Err(format!("{id}: not running with a checkpoint within {timeout:?}"));
        }
        let view = fetch_view(cluster, &id).await.ok_or("no node answers")?;
        let node = view.node.strip_prefix("node-").and_then(|k| k.parse::<usize>().ok());
        if let (pb::JobState::Running, Some(k)) = (view.state(), node) {
            if cluster.newest_checkpoint(&id).await.is_some() {
                break k;
            }
        }
        if view.state() != pb::JobState::Running && view.state() != pb::JobState::Queued {
            return Err(format!("{id} ended before the kill: {view:?}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let attempts_before = fetch_view(cluster, &id).await.map(|v| v.attempt_history.len()).unwrap_or(0);
    let killed = Instant::now();
    let killed_unix_ms = unix_ms();
    cluster.kill9(victim).await;
    let deadline = Instant::now() + Duration::from_secs(30 * lease + 60);
    // The new attempt, once its worker has loaded the checkpoint (its resumed step is known then).
    let taken = loop {
        if Instant::now() > deadline {
            break Err(format!("{id}: no takeover within {:?} of the kill", deadline - killed));
        }
        if let Some(view) = fetch_view(cluster, &id).await {
            if let Some(attempt) = view.attempt_history.get(attempts_before) {
                let node = attempt.node.strip_prefix("node-").and_then(|k| k.parse::<usize>().ok());
                match (attempt.resumed_step, node) {
                    (Some(resumed), Some(k)) => break Ok((attempt.started_unix_ms - killed_unix_ms, resumed, k)),
                    _ if !attempt.outcome.is_empty() => break Err(format!("{id}: attempt ended at once: {view:?}")),
                    _ => {}
                }
            } else if is_done(&view) {
                break Err(format!("{id} ended without a new attempt: {view:?}"));
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Then its first live progress past that step, watched on the node that runs it.
    let result = match taken {
        Ok((started_ms, resumed, k)) => {
            let mut owner = cluster.client(k).await;
            let (job, _) = watch_until(&mut owner, &id, Duration::from_secs(60), |job, progress| {
                is_terminal(job) || progress.is_some_and(|p| p.step > resumed)
            })
            .await;
            if is_terminal(&job) && pb::JobState::try_from(job.state) != Ok(pb::JobState::Succeeded) {
                Err(format!("{id} ended {:?}: {}", job.state, job.error))
            } else {
                Ok((started_ms as f64, killed.elapsed().as_secs_f64() * 1000.0))
            }
        }
        Err(e) => Err(e),
    };
    // Free the cluster for the next round, and bring the killed node back.
    let _ = any_client(cluster, None).await.cancel_job(pb::CancelJobRequest { id }).await;
    cluster.start_node(victim, 1).await;
    result
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!(
        "prune-bench-cluster: {cores} cores, lease {} s, {} quick jobs per run, {} kills",
        args.lease_secs, args.jobs, args.kills
    );
    let mut runs = Vec::new();
    for nodes in 1..=args.nodes {
        let run = throughput(nodes, &args).await;
        println!(
            "{} node(s): {:.2} jobs/s ({} failed); claim latency idle {}, under load {}; store traffic {:.0} KiB/job \
             vs artifact {:.1} KiB; idle PostgreSQL {:.1} statements/s",
            run.nodes,
            run.jobs_per_s,
            run.failed,
            p50_p99(run.idle_claim_ms.clone()),
            p50_p99(run.claim_ms.clone()),
            run.store_bytes_per_job / 1024.0,
            run.artifact_bytes / 1024.0,
            run.idle_tps
        );
        runs.push(run);
    }
    println!(
        "(all nodes share this machine's {cores} cores: once the workers saturate them, more nodes add no jobs/s)"
    );
    if args.kills > 0 {
        let mut cluster = Cluster::start(&vec![1; args.nodes.max(2)], args.lease_secs).await;
        let (mut to_attempt, mut to_progress, mut errors) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..args.kills {
            match one_takeover(&mut cluster, i, args.lease_secs).await {
                Ok((a, p)) => {
                    to_attempt.push(a);
                    to_progress.push(p);
                }
                Err(e) => errors.push(e),
            }
        }
        println!(
            "takeover after kill -9 (lease {} s): kill -> new attempt {}; kill -> new progress {}; {} failed",
            args.lease_secs,
            p50_p99(to_attempt),
            p50_p99(to_progress),
            errors.len()
        );
        for e in errors.iter().take(5) {
            println!("  {e}");
        }
    }
    let json: Vec<String> = runs
        .iter()
        .map(|r| {
            format!(
                "{{\"nodes\":{},\"jobs_per_s\":{:.3},\"store_bytes_per_job\":{:.0},\"artifact_bytes\":{:.0},\"idle_statements_per_s\":{:.2}}}",
                r.nodes, r.jobs_per_s, r.store_bytes_per_job, r.artifact_bytes, r.idle_tps
            )
        })
        .collect();
    println!("BENCH_CLUSTER_JSON [{}]", json.join(","));
}
