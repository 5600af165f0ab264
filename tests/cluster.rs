//! Past one machine (issue 12): several prune-server nodes on one PostgreSQL and one S3 store
//! (the harness: `cluster_support.rs`). Jobs submitted anywhere run once and are seen from
//! every node; a node killed with `kill -9` (its whole process group, its data dir deleted) is
//! taken over after its lease from the newest checkpoint, to the same artifact as an
//! uninterrupted run; a node sent SIGTERM hands its job over at once (well before its lease);
//! a partitioned node (SIGSTOP past its lease) is superseded and fenced;
//! PostgreSQL and S3 outages mid-job lose and duplicate nothing; a cancel on any node stops the
//! worker on the owning node; a `--workers 0` node serves but runs nothing.
//!
//! Build the binaries first (`cargo build --workspace --bins --tests`). Nothing sleeps to
//! synchronise; the two outages hold PostgreSQL and S3 down for a fixed time, which is the fault
//! itself. Leases are 3 s so that the whole file stays within a few minutes on 2 cores.

use std::collections::BTreeSet;
use std::time::Duration;

use prune_proto as pb;
use prune_tests::cluster::*;
use prune_tests::*;
use tempfile::TempDir;
use tokio::time::Instant;

const LEASE_SECS: u64 = 3;
const JOB_TIMEOUT: Duration = Duration::from_secs(180);
/// Past this after a node stops renewing its lease, another node must have taken its job over.
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(6 * LEASE_SECS + 10);

/// Well under a second of training: 2 epochs of 51 steps.
fn quick_job(name: &str) -> String {
    digits_mlp(name, 32, 2, 20)
}

/// Long enough to act on while it runs (3060 steps, a few seconds), a checkpoint every [`EVERY`]
/// steps.
const EVERY: i64 = 100;
fn medium_job(name: &str) -> String {
    digits_mlp(name, 512, 60, EVERY)
}

fn node_index(name: &str) -> Option<usize> {
    name.strip_prefix("node-").and_then(|k| k.parse().ok())
}

/// A client of the first running node that answers, and its index.
async fn any_client(cluster: &Cluster, except: Option<usize>) -> (usize, Client) {
    for k in cluster.running().into_iter().filter(|k| Some(*k) != except) {
        let mut client = cluster.client(k).await;
        if client.list_jobs(pb::ListJobsRequest::default()).await.is_ok() {
            return (k, client);
        }
    }
    panic!("no node answers\n{}", cluster.logs());
}

/// The job as node `k` sees it.
async fn nodes_view(cluster: &Cluster, k: usize, id: &str) -> pb::Job {
    get(&mut cluster.client(k).await, id).await
}

/// Waits until the job RUNS; returns the node running it (the job's `node`), after checking that
/// the job's worker is a child of that node's server.
async fn runner(cluster: &Cluster, id: &str) -> usize {
    poll(&format!("{id} running on a node"), JOB_TIMEOUT, || async move {
        let (_, mut client) = any_client(cluster, None).await;
        let job = get(&mut client, id).await;
        assert!(!is_terminal(&job), "{id} ended before it could be acted on: {job:?}");
        let k = node_index(&job.node).filter(|_| state(&job) == pb::JobState::Running)?;
        // The owner knows its worker's pid: a child of its server (unless not started yet).
        let pid = get(&mut cluster.client(k).await, id).await.worker_pid;
        cluster.node(k).server.workers().contains(&pid).then_some(k)
    })
    .await
}

async fn list_ids(client: &mut Client) -> Vec<String> {
    let mut ids = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_jobs(pb::ListJobsRequest { page_size: 1000, page_token, ..Default::default() })
            .await
            .expect("ListJobs")
            .into_inner();
        ids.extend(page.jobs.into_iter().map(|j| j.id));
        if page.next_page_token.is_empty() {
            return ids;
        }
        page_token = page.next_page_token;
    }
}

/// A small deterministic sequence, seeded from the clock (printed, to reproduce a run).
struct Rng(u64);
impl Rng {
    fn from_clock() -> Rng {
        let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
        eprintln!("node choice seed: {seed}");
        Rng(seed | 1)
    }
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// Issue 12's attempt history, once the job is over: every attempt finished, on a known node,
/// and the last one has the job's outcome.
fn check_history(view: &pb::Job, names: &[String]) {
    assert!(!view.attempt_history.is_empty(), "{}: no attempt_history: {view:?}", view.id);
    for (i, attempt) in view.attempt_history.iter().enumerate() {
        assert_eq!(attempt.number as usize, i + 1, "{view:?}");
        assert!(names.contains(&attempt.node), "{}: attempt on unknown node {:?}", view.id, attempt.node);
        assert!(!attempt.outcome.is_empty(), "{}: attempt {} still running: {view:?}", view.id, attempt.number);
    }
    let last = view.attempt_history.last().unwrap();
    assert_eq!(view.node, last.node, "the job's node is the node of its last attempt: {view:?}");
}

#[tokio::test]
async fn three_nodes_run_jobs_submitted_anywhere_and_every_node_sees_them() {
    let cluster = Cluster::start(&[1, 1, 1], LEASE_SECS).await;
    let names: Vec<String> = (0..3).map(|k| cluster.node(k).name.clone()).collect();
    let mut rng = Rng::from_clock();
    let mut ids = Vec::new();
    for i in 0..6 {
        let k = rng.below(3);
        let job =
            create_toml(&mut cluster.client(k).await, &quick_job(&format!("quick-{i}"))).await.expect("CreateJob");
        ids.push(job.id);
    }
    // One long enough to watch from a node that does not run it.
    let watched =
        create_toml(&mut cluster.client(rng.below(3)).await, &medium_job("watched")).await.expect("CreateJob");
    let on = runner(&cluster, &watched.id).await;
    let from = (on + 1 + rng.below(2)) % 3;
    let (job, seen) = wait_terminal(&mut cluster.client(from).await, &watched.id, JOB_TIMEOUT).await;
    assert_eq!(state(&job), pb::JobState::Succeeded, "{}\n{}", job.error, cluster.logs());
    // Elsewhere than on its node, a watch re-reads the job's row (which its node updates every
    // few seconds): progress shows as RUNNING snapshots with a growing step.
    let steps: Vec<i64> = seen.jobs.iter().filter(|j| state(j) == pb::JobState::Running).map(|j| j.step).collect();
    assert!(
        steps.iter().any(|&s| s > 0 && s < job.total_steps) || !seen.progress.is_empty(),
        "node-{from} saw no progress of the job node-{on} ran: {steps:?}"
    );
    assert!(steps.windows(2).all(|w| w[0] <= w[1]), "progress went back: {steps:?}");
    ids.push(watched.id.clone());

    // Every node watches every job to its end and lists all of them.
    for (i, id) in ids.iter().enumerate() {
        for k in 0..3 {
            let mut client = cluster.client((k + i) % 3).await;
            let (job, _) = wait_terminal(&mut client, id, JOB_TIMEOUT).await;
            assert_eq!(state(&job), pb::JobState::Succeeded, "{id}: {}\n{}", job.error, cluster.logs());
        }
    }
    let mut runs = Vec::new();
    for k in 0..3 {
        let listed: BTreeSet<String> = list_ids(&mut cluster.client(k).await).await.into_iter().collect();
        assert_eq!(listed, ids.iter().cloned().collect(), "node-{k}'s ListJobs");
        for id in &ids {
            let view = nodes_view(&cluster, k, id).await;
            check_history(&view, &names);
            assert_eq!(view.attempt_history.len(), 1, "{id} ran more than once: {view:?}");
            assert_eq!(view.attempt_history[0].outcome, "succeeded");
            runs.push(view.node);
        }
    }
    eprintln!("jobs ran on: {runs:?}");
}

#[tokio::test]
async fn a_node_killed_mid_job_is_taken_over_to_the_same_artifact() {
    let tmp = TempDir::new().unwrap();
    let mut cluster = Cluster::start(&[1, 1, 1], LEASE_SECS).await;
    // The same spec uninterrupted on one node (SQLite, file store, the same one libtorch thread).
    let reference_server = Server::start(&tmp.path().join("reference"), &[]).await;
    let mut reference_client = reference_server.client().await;
    let reference = create_toml(&mut reference_client, &medium_job("takeover")).await.expect("CreateJob");

    let job = create_toml(&mut cluster.client(0).await, &medium_job("takeover")).await.expect("CreateJob");
    let victim = runner(&cluster, &job.id).await;
    let (_, mut client) = any_client(&cluster, Some(victim)).await;
    let checkpoint = cluster.wait_checkpoint(&mut client, &job.id, EVERY, JOB_TIMEOUT).await;
    let killed_at = Instant::now();
    let workers = cluster.kill9(victim).await;
    assert!(!workers.is_empty(), "node-{victim} ran no worker");

    let (job, _) = wait_terminal(&mut client, &job.id, JOB_TIMEOUT).await;
    assert_eq!(state(&job), pb::JobState::Succeeded, "{}\n{}", job.error, cluster.logs());
    let (k, _) = any_client(&cluster, None).await;
    let view = nodes_view(&cluster, k, &job.id).await;
    let names: Vec<String> = (0..3).map(|k| format!("node-{k}")).collect();
    check_history(&view, &names);
    let (first, last) = (&view.attempt_history[0], view.attempt_history.last().unwrap());
    assert_eq!(first.node, format!("node-{victim}"), "{view:?}");
    assert_ne!(first.outcome, "succeeded", "{view:?}");
    assert_ne!(last.node, first.node, "taken over by another node: {view:?}");
    assert_eq!(last.outcome, "succeeded", "{view:?}");
    let resumed = last.resumed_step.unwrap_or_else(|| panic!("the takeover resumed from no checkpoint: {view:?}"));
    assert!(resumed >= checkpoint, "resumed from step {resumed}, the newest checkpoint was at {checkpoint}");
    eprintln!(
        "killed at checkpoint {checkpoint}; taken over by {} from step {resumed}; done {:?} after the kill",
        last.node,
        killed_at.elapsed()
    );

    let artifact = download(&mut client, &job.id, "", 0).await.expect("download");
    assert_eq!(artifact.0.sha256, sha256_hex(&artifact.1));
    assert_same_artifact_as(&mut reference_client, &reference.id, &artifact, JOB_TIMEOUT).await;
}

#[tokio::test]
async fn sigterm_hands_a_job_over_at_once() {
    // A lease far longer than the test's patience: only a released lease lets another node in.
    let mut cluster = Cluster::start(&[1, 1], 60).await;
    let job = create_toml(&mut cluster.client(0).await, &medium_job("handover")).await.expect("CreateJob");
    let leaving = runner(&cluster, &job.id).await;
    let staying = 1 - leaving;
    let mut client = cluster.client(staying).await;
    let checkpoint = cluster.wait_checkpoint(&mut client, &job.id, EVERY, JOB_TIMEOUT).await;
    let asked = Instant::now();
    let code = cluster.terminate(leaving, Duration::from_secs(30)).await;
    assert_eq!(code, Some(0), "prune-server's exit after SIGTERM");
    let (c, id) = (&cluster, job.id.as_str());
    // The resumed step is known once the new worker has loaded the checkpoint.
    let view = poll("the job resumed on the other node", Duration::from_secs(20), || async move {
        let view = nodes_view(c, staying, id).await;
        view.attempt_history.get(1).is_some_and(|a| a.resumed_step.is_some() || !a.outcome.is_empty()).then_some(view)
    })
    .await;
    eprintln!("handed over {:?} after SIGTERM: {:?}", asked.elapsed(), view.attempt_history);
    let (first, second) = (&view.attempt_history[0], &view.attempt_history[1]);
    assert_eq!(first.node, format!("node-{leaving}"));
    assert_eq!(first.outcome, "interrupted", "{view:?}");
    assert_eq!(second.node, format!("node-{staying}"));
    assert!(second.resumed_step.is_some_and(|s| s >= checkpoint), "{view:?}");
    let (job, _) = wait_terminal(&mut client, &job.id, JOB_TIMEOUT).await;
    assert_eq!(state(&job), pb::JobState::Succeeded, "{}\n{}", job.error, cluster.logs());
}

#[tokio::test]
async fn a_partitioned_node_is_superseded_and_its_writes_rejected() {
    let cluster = Cluster::start(&[1, 1, 1], LEASE_SECS).await;
    let job = create_toml(&mut cluster.client(1).await, &medium_job("partition")).await.expect("CreateJob");
    let cut = runner(&cluster, &job.id).await;
    let (other, mut client) = any_client(&cluster, Some(cut)).await;
    cluster.wait_checkpoint(&mut client, &job.id, EVERY, JOB_TIMEOUT).await;
    let old_workers = cluster.node(cut).server.workers();
    assert!(!old_workers.is_empty(), "node-{cut} runs no worker");

    cluster.partition(cut);
    let cut_name = format!("node-{cut}");
    let (c, id, cut_name) = (&cluster, job.id.as_str(), cut_name.as_str());
    let takeover = poll("a takeover of the partitioned node's job", 2 * TAKEOVER_TIMEOUT, || async move {
        let view = nodes_view(c, other, id).await;
        view.attempt_history.iter().any(|a| a.node != cut_name).then_some(view)
    });
    let Ok(taken) = tokio::time::timeout(TAKEOVER_TIMEOUT, takeover).await else {
        panic!(
            "no takeover of {id} within {TAKEOVER_TIMEOUT:?} of node-{cut}'s SIGSTOP; the database's sessions:\n{}",
            c.pg_activity().await
        );
    };
    cluster.heal(cut);
    eprintln!("taken over: {taken:?}");

    let (job, _) = wait_terminal(&mut client, &job.id, JOB_TIMEOUT).await;
    assert_eq!(state(&job), pb::JobState::Succeeded, "{}\n{}", job.error, cluster.logs());
    // The healed node learns it was superseded: its attempt says so, its worker is killed.
    let id = job.id.as_str();
    let view = poll("the old attempt marked superseded", Duration::from_secs(30), || async move {
        let view = nodes_view(c, other, id).await;
        (view.attempt_history.iter().filter(|a| a.node == cut_name).all(|a| a.outcome == "superseded")).then_some(view)
    })
    .await;
    assert!(view.attempt_history.iter().any(|a| a.node != cut_name && a.outcome == "succeeded"), "{view:?}");
    let old_workers = &old_workers;
    poll("the superseded worker killed", Duration::from_secs(30), || async move {
        old_workers.iter().all(|&pid| !process_alive(pid)).then_some(())
    })
    .await;
    // What its worker reported while the server was stopped is read on SIGCONT and rejected.
    let healed = &cluster.node(cut).server;
    poll("the healed node's writes rejected", Duration::from_secs(20), || async move {
        healed.log().contains("write rejected").then_some(())
    })
    .await;
    // The healed node answers again, with the same outcome.
    assert_eq!(state(&get(&mut cluster.client(cut).await, &job.id).await), pb::JobState::Succeeded);

    // One artifact row per format, and exactly those objects in the store.
    let rows = cluster.artifact_rows(&job.id).await;
    let formats: BTreeSet<&str> = rows.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(formats.len(), rows.len(), "{rows:?}");
    assert_eq!(rows.len(), job.artifacts.len(), "rows {rows:?}, job's artifacts {:?}", job.artifacts);
    let committed: Vec<String> =
        rows.iter().map(|(_, path)| path.clone()).collect::<BTreeSet<_>>().into_iter().collect();
    let committed = &committed;
    let objects = poll("only the committed artifact objects in the store", Duration::from_secs(30), || async move {
        let objects = c.artifact_objects(id);
        (&objects == committed).then_some(objects)
    })
    .await;
    assert!(!objects.is_empty());
    let (info, data) = download(&mut client, &job.id, "", 0).await.expect("download");
    assert_eq!(info.sha256, sha256_hex(&data));
}

/// A node paused (SIGSTOP, a long GC or VM pause, a frozen host) in the middle of one of its
/// fenced transactions keeps that transaction open: its session holds the job row's lock. The
/// job must still be taken over after the lease. Made deterministic: the test holds the metrics
/// and checkpoints tables until the owner's next fenced write waits on them (its fence, the job
/// row's lock, already taken), pauses the owner, then lets the write through: the session is left
/// idle in its transaction, as when a pause lands between two statements.
#[tokio::test]
async fn a_node_paused_inside_a_transaction_is_still_taken_over() {
    use sqlx::{Connection, Row};
    let cluster = Cluster::start(&[1, 1], LEASE_SECS).await;
    let job = create_toml(&mut cluster.client(0).await, &medium_job("paused")).await.expect("CreateJob");
    let owner = runner(&cluster, &job.id).await;
    let other = 1 - owner;
    let mut client = cluster.client(other).await;
    cluster.wait_checkpoint(&mut client, &job.id, EVERY, JOB_TIMEOUT).await;

    let mut blocker = cluster.db().await;
    let mut hold = blocker.begin().await.expect("BEGIN");
    sqlx::query("LOCK TABLE metrics, checkpoints IN EXCLUSIVE MODE").execute(&mut *hold).await.expect("LOCK TABLE");
    let c = &cluster;
    let stuck = poll("the owner's fenced write waiting on the held tables", Duration::from_secs(30), || async move {
        let mut db = c.db().await;
        let row = sqlx::query(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' \
             AND (query LIKE 'INSERT INTO metrics%' OR query LIKE 'INSERT INTO checkpoints%')",
        )
        .fetch_one(&mut db)
        .await
        .expect("pg_stat_activity");
        (row.get::<i64, _>(0) > 0).then_some(())
    });
    stuck.await;
    cluster.partition(owner);
    hold.rollback().await.expect("ROLLBACK");
    blocker.close().await.ok();

    let (c, id) = (&cluster, job.id.as_str());
    let takeover = poll("a takeover", 2 * TAKEOVER_TIMEOUT, || async move {
        let view = nodes_view(c, other, id).await;
        (view.attempt_history.len() > 1).then_some(view)
    });
    let taken = tokio::time::timeout(TAKEOVER_TIMEOUT, takeover).await;
    let activity = cluster.pg_activity().await;
    cluster.heal(owner);
    let taken = taken.unwrap_or_else(|_| {
        panic!("no takeover of {id} within {TAKEOVER_TIMEOUT:?} of pausing node-{owner}; sessions:\n{activity}")
    });
    assert_eq!(taken.attempt_history.last().unwrap().node, format!("node-{other}"), "{taken:?}");
    let (job, _) = wait_terminal(&mut client, &job.id, JOB_TIMEOUT).await;
    assert_eq!(state(&job), pb::JobState::Succeeded, "{}\n{}", job.error, cluster.logs());
}

#[tokio::test]
async fn database_and_store_outages_mid_job_lose_and_duplicate_nothing() {
    let mut cluster = Cluster::start(&[1, 1, 1], LEASE_SECS).await;
    let mut ids = Vec::new();
    for k in 0..3 {
        let job =
            create_toml(&mut cluster.client(k).await, &medium_job(&format!("outage-{k}"))).await.expect("CreateJob");
        ids.push(job.id);
    }
    let outage = Duration::from_secs(LEASE_SECS + 1);

    // PostgreSQL, stopped mid-job past a lease (the outage is the fault: it lasts a fixed time).
    let (_, mut client) = any_client(&cluster, None).await;
    cluster.wait_checkpoint(&mut client, &ids[0], EVERY, JOB_TIMEOUT).await;
    cluster.pg.stop().unwrap_or_else(|e| panic!("{e}"));
    tokio::time::sleep(outage).await;
    cluster.pg.start_again().unwrap_or_else(|e| panic!("{e}"));

    // S3, once a job has checkpointed again after PostgreSQL came back.
    let mut before = Vec::new();
    for id in &ids {
        before.push(cluster.newest_checkpoint(id).await.unwrap_or(0));
    }
    let (c, ids_ref, before) = (&cluster, &ids, &before);
    let progressed = poll("a checkpoint after PostgreSQL's restart", JOB_TIMEOUT, || async move {
        let (_, mut client) = any_client(c, None).await;
        for (i, id) in ids_ref.iter().enumerate() {
            let job = get(&mut client, id).await;
            if state(&job) == pb::JobState::Running && c.newest_checkpoint(id).await.unwrap_or(0) > before[i] {
                return Some(i);
            }
        }
        all_terminal(&mut client, ids_ref).await.then_some(usize::MAX)
    })
    .await;
    if progressed != usize::MAX {
        cluster.s3.stop();
        tokio::time::sleep(outage).await;
        cluster.s3.restart();
    } else {
        eprintln!("every job ended before the S3 outage: lengthen medium_job");
    }

    let (_, mut client) = any_client(&cluster, None).await;
    for id in &ids {
        let (job, _) = wait_terminal(&mut client, id, JOB_TIMEOUT).await;
        eprintln!("{id}: {:?} {:?} attempts {:?}", state(&job), job.error, job.attempt_history);
        match state(&job) {
            pb::JobState::Succeeded => {
                let rows = cluster.artifact_rows(id).await;
                assert_eq!(rows.len(), job.artifacts.len(), "{rows:?}");
                let (info, data) = download(&mut client, id, "", 0).await.expect("download");
                assert_eq!(info.sha256, sha256_hex(&data));
                // One set of artifact objects: what other attempts left is collected.
                let committed: BTreeSet<String> = rows.into_iter().map(|(_, path)| path).collect();
                let (c, committed) = (&cluster, &committed);
                poll(&format!("{id}: only the committed artifact objects"), Duration::from_secs(30), || async move {
                    (c.artifact_objects(id).into_iter().collect::<BTreeSet<_>>() == *committed).then_some(())
                })
                .await;
            }
            pb::JobState::Failed => assert!(!job.error.trim().is_empty(), "{id} FAILED without a reason"),
            other => panic!("{id} ended {other:?}"),
        }
        let last = job.attempt_history.last().expect("an attempt");
        assert!(!last.outcome.is_empty() && job.attempt_history.iter().all(|a| !a.outcome.is_empty()), "{job:?}");
    }
    for k in cluster.running() {
        let mut listed = list_ids(&mut cluster.client(k).await).await;
        listed.sort();
        let mut expected = ids.clone();
        expected.sort();
        assert_eq!(listed, expected, "node-{k} lists each job once");
    }
}

async fn all_terminal(client: &mut Client, ids: &[String]) -> bool {
    for id in ids {
        if !is_terminal(&get(client, id).await) {
            return false;
        }
    }
    true
}

#[tokio::test]
async fn cancel_on_any_node_and_an_api_only_node() {
    // node-0 serves every call but runs no job.
    let cluster = Cluster::start(&[0, 1, 1], LEASE_SECS).await;
    let mut api = cluster.client(0).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(create_toml(&mut api, &quick_job(&format!("api-{i}"))).await.expect("CreateJob").id);
    }
    for id in &ids {
        let (job, _) = wait_terminal(&mut api, id, JOB_TIMEOUT).await;
        assert_eq!(state(&job), pb::JobState::Succeeded, "{}\n{}", job.error, cluster.logs());
        let view = nodes_view(&cluster, 0, id).await;
        assert!(view.attempt_history.iter().all(|a| a.node != "node-0"), "node-0 ran a job: {view:?}");
        assert_ne!(view.node, "node-0");
    }

    // A cancel on a node that does not run the job stops its worker on the node that does.
    let job = create_toml(&mut api, &medium_job("cancelled")).await.expect("CreateJob");
    let on = runner(&cluster, &job.id).await;
    assert_ne!(on, 0, "the API-only node runs a job");
    assert!(cluster.node(0).server.workers().is_empty(), "node-0 has worker processes");
    let c = &cluster;
    let workers = poll("the job's worker", JOB_TIMEOUT, || async move {
        let w = c.node(on).server.workers();
        (!w.is_empty()).then_some(w)
    })
    .await;
    // Mid-training: past its first checkpoint.
    cluster.wait_checkpoint(&mut api, &job.id, EVERY, JOB_TIMEOUT).await;
    let from = if on == 1 { 2 } else { 1 };
    let cancelled_at = Instant::now();
    let job = cluster
        .client(from)
        .await
        .cancel_job(pb::CancelJobRequest { id: job.id.clone() })
        .await
        .expect("CancelJob")
        .into_inner();
    let workers = &workers;
    poll("the worker on the owning node gone", Duration::from_secs(10), || async move {
        workers.iter().all(|&pid| !process_alive(pid)).then_some(())
    })
    .await;
    eprintln!("worker of node-{on} gone {:?} after CancelJob on node-{from}", cancelled_at.elapsed());
    let (job, _) = wait_terminal(&mut api, &job.id, Duration::from_secs(30)).await;
    assert_eq!(state(&job), pb::JobState::Cancelled, "{}\n{}", job.error, cluster.logs());
    // The owner records its attempt's end once its worker is reaped: soon after.
    let (c, id) = (&cluster, job.id.as_str());
    poll("the attempt's outcome `cancelled`", Duration::from_secs(10), || async move {
        let view = nodes_view(c, 0, id).await;
        (view.attempt_history.last().map(|a| a.outcome.as_str()) == Some("cancelled")).then_some(())
    })
    .await;
}
