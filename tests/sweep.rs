//! `prunectl sweep` end to end: the real `prunectl` against a real `prune-server`. A digits
//! MLP swept at three final sparsities: the CSV and both plots, the jobs as the server holds
//! them, re-attaching on a second run; and bad input refused before anything is uploaded or
//! submitted.
//!
//! Build the binaries first (`cargo build --workspace --bins`): the harness refuses stale ones.

use std::path::{Path, PathBuf};
use std::time::Duration;

use prune_proto as pb;
use prune_tests::{digits_mlp, mlp_state_dict, path_str, sha256_hex, CliHarness};

/// Longest one `prunectl sweep` may take: three 2-epoch jobs on two workers.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

const SPARSITIES: [f64; 3] = [0.5, 0.8, 0.9];

/// What the sweep tests need beyond the CLI harness.
trait SweepHarness {
    fn job_file(&self, name: &str) -> PathBuf;
    async fn jobs(&self) -> Vec<pb::Job>;
    async fn has_blob(&self, bytes: &[u8]) -> bool;
}

impl SweepHarness for CliHarness {
    /// A digits MLP job (64 -> 32 -> 10, two epochs) starting from `init.safetensors` beside it,
    /// so that the sweep has a local file to upload.
    fn job_file(&self, name: &str) -> PathBuf {
        std::fs::write(self.file("init.safetensors"), mlp_state_dict()).unwrap();
        let text = digits_mlp(name, 32, 2, 1000).replace("[data]", "weights = \"init.safetensors\"\n[data]");
        let path = self.file(&format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    }

    async fn jobs(&self) -> Vec<pb::Job> {
        let request = pb::ListJobsRequest { page_size: 1000, ..Default::default() };
        self.server.client().await.list_jobs(request).await.unwrap().into_inner().jobs
    }

    async fn has_blob(&self, bytes: &[u8]) -> bool {
        let id = format!("sha256:{}", sha256_hex(bytes));
        self.server.client().await.has_blob(pb::HasBlobRequest { id }).await.unwrap().into_inner().exists
    }
}

fn path(p: &Path) -> &str {
    path_str(p)
}

/// `sweep.csv` as (header, rows of cells).
fn read_csv(file: &Path) -> (String, Vec<Vec<String>>) {
    let text = std::fs::read_to_string(file).unwrap();
    let mut lines = text.lines();
    let header = lines.next().expect("a header").to_string();
    (header, lines.map(|l| l.split(',').map(str::to_string).collect()).collect())
}

#[tokio::test(flavor = "multi_thread")]
async fn sweep_writes_the_table_and_plots_and_a_rerun_reattaches() {
    let h = CliHarness::start(CALL_TIMEOUT).await;
    let job = h.job_file("sweep-mlp");
    let out = h.file("out");
    let args = ["sweep", path(&job), "--sparsities", "0.9,0.5,0.8", "-o", path(&out), "--json"];
    let run = h.prunectl(&args).await;
    assert!(run.ok(), "{run:?}");
    // The weights went up once for the three jobs.
    assert_eq!(run.stderr.matches("uploaded ").count(), 1, "{}", run.stderr);

    // The table: one row per sparsity, ascending, each a job the server holds.
    let (header, rows) = read_csv(&out.join("sweep.csv"));
    assert_eq!(header, "sparsity,validation_accuracy,artifact_bytes,inference_ms,job_id,state");
    let sparsities: Vec<f64> = rows.iter().map(|r| r[0].parse().unwrap()).collect();
    assert_eq!(sparsities, SPARSITIES);
    let mut client = h.server.client().await;
    let mut ids = Vec::new();
    for row in &rows {
        assert_eq!(row.len(), 6, "{row:?}");
        let (sparsity, accuracy, bytes, inference_ms, id, state) =
            (&row[0], &row[1], &row[2], &row[3], &row[4], &row[5]);
        assert_eq!(state, "SUCCEEDED", "{row:?}");
        let accuracy: f64 = accuracy.parse().unwrap();
        assert!((0.0..=1.0).contains(&accuracy), "{row:?}");
        let bytes: u64 = bytes.parse().unwrap();
        assert!(bytes > 0, "{row:?}");
        assert!(inference_ms.parse::<f64>().unwrap() > 0.0, "{row:?}");
        let job = client.get_job(pb::GetJobRequest { id: id.clone() }).await.expect("GetJob").into_inner();
        assert_eq!(job.name, format!("sweep-mlp-s{sparsity}"));
        // Only the final sparsity differs from the job file.
        let schedule = job.spec.as_ref().and_then(|s| s.pruning.as_ref()).and_then(|p| p.schedule.as_ref()).unwrap();
        assert_eq!(schedule.final_sparsity, Some(sparsity.parse().unwrap()), "{schedule:?}");
        assert_eq!((schedule.initial_sparsity, schedule.end_step), (Some(0.2), Some(100)), "{schedule:?}");
        assert!(job.labels.get("sweep").is_some_and(|l| l.len() == 16), "{:?}", job.labels);
        // The bytes are the exported file's, as served.
        assert_eq!(job.artifacts.len(), 1, "{:?}", job.artifacts);
        assert_eq!(job.artifacts[0].size, bytes);
        let report =
            client.get_report(pb::GetReportRequest { job_id: id.clone() }).await.expect("GetReport").into_inner();
        assert_eq!(report.final_val_accuracy, Some(accuracy));
        ids.push(id.clone());
    }
    let labels: Vec<_> = h.jobs().await.iter().map(|j| j.labels["sweep"].clone()).collect();
    assert!(labels.windows(2).all(|w| w[0] == w[1]), "one sweep label: {labels:?}");

    // The plots: a PNG of the documented size, an SVG naming every point.
    let png = std::fs::read(out.join("pareto.png")).unwrap();
    let reader = png::Decoder::new(std::io::Cursor::new(png)).read_info().expect("a PNG");
    assert_eq!((reader.info().width, reader.info().height), (1000, 700));
    let svg = std::fs::read_to_string(out.join("pareto.svg")).unwrap();
    assert!(svg.contains("<svg"), "{}", &svg[..200.min(svg.len())]);
    assert!(svg.contains("sweep-mlp: accuracy vs artifact size") && svg.contains("artifact size (kB)"));
    for s in SPARSITIES {
        assert!(svg.contains(&format!("s={s}\n</text>")), "no label for {s}");
    }

    // JSON lines: events tagged with their job and sparsity, then the summary.
    let lines = run.json_lines();
    let (summary, events) = lines.split_last().expect("JSON lines");
    assert!(events.iter().any(|e| e["event"] == "job" && e["state"] == "SUCCEEDED"), "{events:?}");
    for event in events {
        assert!(ids.iter().any(|id| event["job_id"] == id.as_str()), "{event}");
        assert!(SPARSITIES.iter().any(|&s| event["sparsity"] == s), "{event}");
    }
    assert_eq!(summary["event"], "sweep", "{summary}");
    let summary_ids: Vec<&str> =
        summary["rows"].as_array().unwrap().iter().map(|r| r["job_id"].as_str().unwrap()).collect();
    assert_eq!(summary_ids, ids);

    // The same sweep again: the same jobs, nothing new on the server, the files rewritten.
    std::fs::remove_file(out.join("pareto.png")).unwrap();
    let again = h.prunectl(&args[..args.len() - 1]).await;
    assert!(again.ok(), "{again:?}");
    assert!(again.stderr.contains("already on the server:") && !again.stderr.contains("uploaded "), "{}", again.stderr);
    let (_, rows_again) = read_csv(&out.join("sweep.csv"));
    let ids_again: Vec<&String> = rows_again.iter().map(|r| &r[4]).collect();
    assert_eq!(ids_again, ids.iter().collect::<Vec<_>>());
    assert_eq!(h.jobs().await.len(), 3);
    assert!(out.join("pareto.png").exists());
    assert!(again.stdout.contains("SPARSITY") && again.stdout.contains("wrote "), "{}", again.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_sweeps_submit_nothing_and_say_why() {
    let h = CliHarness::start(CALL_TIMEOUT).await;
    let job = h.job_file("mlp");
    let out = h.file("out");
    let sweep = |list: &str| {
        vec!["sweep".to_string(), path(&job).into(), format!("--sparsities={list}"), "-o".into(), path(&out).into()]
    };

    // Bad lists are bad usage (exit 2), each named.
    for (list, reason) in [
        ("", "no sparsity given"),
        ("1.0", "sparsity 1.0 is not in [0, 1)"),
        ("-0.1", "sparsity -0.1 is not in [0, 1)"),
        ("0.5,0.7,0.5", "sparsity 0.5 is given twice"),
        ("0.5,abc", "`abc` is not a number"),
    ] {
        let args = sweep(list);
        let run = h.prunectl(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
        assert_eq!(run.status.code(), Some(2), "{list:?}: {run:?}");
        assert!(run.stderr.contains(reason), "{list:?}: {}", run.stderr);
    }
    // `-o` naming a file.
    let file = h.file("taken");
    std::fs::write(&file, "").unwrap();
    let run = h.prunectl(&["sweep", path(&job), "--sparsities", "0.5", "-o", path(&file)]).await;
    assert_eq!(run.status.code(), Some(2), "{run:?}");
    assert!(run.stderr.contains("exists and is not a directory"), "{}", run.stderr);

    // A job file with an error, and one whose derived names are too long: exit 1, the field named.
    let broken = h.file("broken.toml");
    let text = std::fs::read_to_string(&job).unwrap().replace("end_step = 100", "end_step = -5");
    std::fs::write(&broken, text).unwrap();
    let run = h.prunectl(&["sweep", path(&broken), "--sparsities", "0.5,0.8", "-o", path(&out)]).await;
    assert_eq!(run.status.code(), Some(1), "{run:?}");
    assert!(run.stderr.contains("pruning.schedule.end_step"), "{}", run.stderr);
    let long = h.file("long.toml");
    let name = "n".repeat(254);
    std::fs::write(
        &long,
        std::fs::read_to_string(&job).unwrap().replace("name = \"mlp\"", &format!("name = \"{name}\"")),
    )
    .unwrap();
    let run = h.prunectl(&["sweep", path(&long), "--sparsities", "0.5,0.8", "-o", path(&out)]).await;
    assert_eq!(run.status.code(), Some(1), "{run:?}");
    assert!(run.stderr.contains("(sparsity 0.5): name: must be at most 256 characters"), "{}", run.stderr);

    // Nothing reached the server: no job, not even the weights.
    assert!(h.jobs().await.is_empty());
    assert!(!h.has_blob(&mlp_state_dict()).await);
}

/// Jobs that fail (a GPU the machine lacks) end the sweep with exit 3, naming each; the table
/// still has their rows, the plots are still written.
#[tokio::test(flavor = "multi_thread")]
async fn failed_jobs_exit_3_and_keep_their_rows() {
    let h = CliHarness::start(CALL_TIMEOUT).await;
    let job = h.job_file("gpu-mlp");
    let text = std::fs::read_to_string(&job).unwrap().replace("threads = 1", "threads = 1\ndevice = \"cuda:9\"");
    std::fs::write(&job, text).unwrap();
    let out = h.file("out");
    let run = h.prunectl(&["sweep", path(&job), "--sparsities", "0.5,0.9", "-o", path(&out)]).await;
    assert_eq!(run.status.code(), Some(3), "{run:?}");
    assert!(run.stderr.contains("error: 2 of 2 sweep jobs did not succeed: "), "{}", run.stderr);
    assert!(run.stderr.contains("(s=0.9) FAILED: ") && run.stderr.contains("cuda:9"), "{}", run.stderr);
    let (_, rows) = read_csv(&out.join("sweep.csv"));
    assert_eq!(rows.len(), 2);
    for (row, s) in rows.iter().zip(["0.5", "0.9"]) {
        assert_eq!(
            (row[0].as_str(), &row[1..4], row[5].as_str()),
            (s, &["".to_string(), "".into(), "".into()][..], "FAILED")
        );
    }
    assert!(out.join("pareto.png").exists() && out.join("pareto.svg").exists());
}
