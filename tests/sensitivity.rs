//! Sensitivity analyses and budgets through the real server and workers: the report over gRPC
//! and `prunectl report --json`, the plot and the suggested overrides downloaded as artifacts,
//! a size budget met, and a sensitivity job whose worker is killed (SIGKILL) resuming to the
//! same results as an uninterrupted run.
//! Build the binaries first: `cargo build -p prune-server -p prune-worker -p prune-client`.

use std::time::Duration;

use prune_proto as pb;
use prune_tests::*;
use tempfile::TempDir;

const JOB_TIMEOUT: Duration = Duration::from_secs(300);

/// The digits MLP trained dense for `epochs`, then analysed at three levels.
fn sensitivity_job(name: &str, hidden: i64, epochs: i64, checkpoint_every: i64) -> String {
    digits_mlp(name, hidden, epochs, checkpoint_every) + "[sensitivity]\nlevels = [0.5, 0.8, 0.95]\n"
}

async fn report(client: &mut Client, id: &str) -> pb::Report {
    client.get_report(pb::GetReportRequest { job_id: id.into() }).await.expect("GetReport").into_inner()
}

async fn finished(client: &mut Client, id: &str) -> pb::Job {
    let (job, _) = wait_terminal(client, id, JOB_TIMEOUT).await;
    assert_eq!(state(&job), pb::JobState::Succeeded, "{}", job.error);
    job
}

#[tokio::test]
async fn a_sensitivity_job_reports_points_and_serves_its_plot_and_overrides() {
    let tmp = TempDir::new().unwrap();
    let server = Server::start(&tmp.path().join("data"), &[]).await;
    let mut client = server.client().await;
    let created = create_toml(&mut client, &sensitivity_job("sensitivity", 32, 3, 100)).await.unwrap();
    let job = finished(&mut client, &created.id).await;
    let formats: Vec<&str> = job.artifacts.iter().map(|a| a.format.as_str()).collect();
    assert_eq!(formats, ["safetensors", "sensitivity_plot", "suggested_overrides"], "{job:?}");

    let r = report(&mut client, &job.id).await;
    let seen: Vec<(&str, f64)> = r.sensitivity.iter().map(|p| (p.tensor.as_str(), p.sparsity)).collect();
    assert_eq!(
        seen,
        [
            ("0.weight", 0.5),
            ("0.weight", 0.8),
            ("0.weight", 0.95),
            ("2.weight", 0.5),
            ("2.weight", 0.8),
            ("2.weight", 0.95)
        ]
    );
    // 64 x 32 weights at 0.5: exactly half removed.
    assert_eq!(r.sensitivity[0].params_removed, 1024);
    assert!(r.sensitivity.iter().all(|p| p.accuracy.is_some_and(|a| (0.0..=1.0).contains(&a))));

    // The contract of the report's JSON, as prunectl prints it.
    let run = prunectl_at(&server.addr, &["report", &job.id, "--json"], JOB_TIMEOUT).await;
    assert!(run.ok(), "{}", run.stderr);
    let json = run.json();
    let points = json["sensitivity"].as_array().unwrap_or_else(|| panic!("no sensitivity: {json}"));
    assert_eq!(points.len(), 6);
    for key in ["tensor", "sparsity", "accuracy", "loss", "params_removed"] {
        assert!(points[0].get(key).is_some(), "no {key} in {}", points[0]);
    }

    let (info, png_bytes) = download(&mut client, &job.id, "sensitivity_plot", 0).await.unwrap();
    assert_eq!(info.compression, "none");
    let mut reader = png::Decoder::new(std::io::Cursor::new(png_bytes)).read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    let frame = reader.next_frame(&mut pixels).unwrap();
    assert_eq!((frame.width, frame.height), (1000, 700));

    let (_, toml) = download(&mut client, &job.id, "suggested_overrides", 0).await.unwrap();
    let toml = String::from_utf8(toml).unwrap();
    assert_eq!(toml, r.suggested_overrides);
    // Pasted into the job file (without its [sensitivity]), it is a valid job.
    let pasted = digits_mlp("pasted", 32, 3, 100) + &toml;
    let spec = prune_core::validate::parse_toml(&pasted).unwrap();
    prune_core::validate::validate(&spec).unwrap();
    assert_eq!(spec.pruning.overrides.len(), 2);
}

#[tokio::test]
async fn a_size_budget_job_comes_back_within_its_bytes() {
    let tmp = TempDir::new().unwrap();
    let server = Server::start(&tmp.path().join("data"), &[]).await;
    let mut client = server.client().await;
    let toml = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/digits_budget.toml")).unwrap();
    let created = create_toml(&mut client, &toml).await.unwrap();
    let job = finished(&mut client, &created.id).await;
    let r = report(&mut client, &job.id).await;
    let budget = r.budget.expect("a budget report");
    assert_eq!(budget.max_bytes, Some(5000));
    assert!(budget.artifact_bytes <= 5000, "{budget:?}");
    let (info, _) = download(&mut client, &job.id, "", 0).await.unwrap();
    assert_eq!(info.size, budget.artifact_bytes);
    assert_eq!(budget.chosen.len(), 2);
    assert!(budget.accuracy.is_some_and(|a| a >= 0.9), "{budget:?}");
}

#[tokio::test]
async fn a_sensitivity_job_resumes_bitwise_after_its_worker_is_killed() {
    let tmp = TempDir::new().unwrap();
    let spec = sensitivity_job("sensitivity-kill", 256, 30, 50);
    let reference = Server::start(&tmp.path().join("reference"), &[]).await;
    let mut reference_client = reference.client().await;
    let reference_job = create_toml(&mut reference_client, &spec).await.unwrap();

    let server = Server::start(&tmp.path().join("data"), &["--max-attempts", "3"]).await;
    let mut client = server.client().await;
    let created = create_toml(&mut client, &spec).await.unwrap();
    watch_until(&mut client, &created.id, JOB_TIMEOUT, |job, progress| {
        assert!(!is_terminal(job), "the job ended before it could be interrupted: {job:?}");
        progress.is_some_and(|p| p.step >= 105)
    })
    .await;
    let pid = client.get_job(pb::GetJobRequest { id: created.id.clone() }).await.unwrap().into_inner().worker_pid;
    assert!(pid > 0, "no worker pid");
    signal(pid, libc::SIGKILL);

    let job = finished(&mut client, &created.id).await;
    assert_eq!(job.attempts, 2);
    assert!(server.log().contains("starting attempt from a checkpoint"), "the retry did not resume from a checkpoint");
    finished(&mut reference_client, &reference_job.id).await;
    let (resumed, uninterrupted) =
        (report(&mut client, &job.id).await, report(&mut reference_client, &reference_job.id).await);
    assert_eq!(resumed.sensitivity, uninterrupted.sensitivity, "resumed measurements differ");
    assert_eq!(resumed.suggested_overrides, uninterrupted.suggested_overrides);
    for format in ["safetensors", "sensitivity_plot"] {
        let (a, _) = download(&mut client, &job.id, format, 0).await.unwrap();
        let (b, _) = download(&mut reference_client, &reference_job.id, format, 0).await.unwrap();
        assert_eq!(a.sha256, b.sha256, "{format} differs");
    }
}
