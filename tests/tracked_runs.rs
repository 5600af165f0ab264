//! Tracked runs through the real server: a loop outside the service (played here by the test
//! over gRPC, as the `prune` Python package does) starts a run, reports steps, metrics and
//! sparsity, and finishes with its weights, which a real worker exports like a one-shot job's;
//! a quiet run fails after `--tracked-timeout-secs` and re-attaches by its request id; stale
//! sessions, ended runs and bad input are refused with their reasons.

use std::time::Duration;

use prune_core::bitmask::{read_safetensors, unpack_safetensors, write_safetensors, TensorData};
use prune_core::compress;
use prune_proto as pb;
use prune_tests::{download, upload, wait_terminal, Client, Server};
use safetensors::Dtype;
use tokio_stream::StreamExt;
use tonic::Code;

const TIMEOUT: Duration = Duration::from_secs(120);

const SPEC: &str = r#"
name = "my-loop"
[pruning]
schedule = { kind = "polynomial_decay", initial_sparsity = 0.2, final_sparsity = 0.6, begin_step = 0, end_step = 10, frequency = 2 }
[export]
sparse_format = "bitmask"
compression = "zstd"
"#;

fn start_request(spec: &str, request_id: &str) -> pb::StartTrackedRunRequest {
    pb::StartTrackedRunRequest {
        source: Some(pb::start_tracked_run_request::Source::SpecToml(spec.into())),
        request_id: request_id.into(),
        labels: [("team".to_string(), "vision".to_string())].into(),
        total_steps: 10,
        client: "test-host:42".into(),
    }
}

fn report(job_id: &str, session: u32, step: i64, loss: f64) -> pb::ReportTrackedRunRequest {
    pb::ReportTrackedRunRequest {
        job_id: job_id.into(),
        session,
        step,
        points: vec![pb::MetricPoint { step, name: "loss".into(), value: loss }],
        ..Default::default()
    }
}

/// What the loop ends with: `fc.weight` with every third element zero (not what magnitude
/// pruning at the schedule's 0.6 would keep), an unpruned bias.
fn final_weights() -> (Vec<TensorData>, Vec<u8>) {
    let weight: Vec<u8> =
        (0..96).flat_map(|i| if i % 3 == 0 { 0.0f32 } else { 0.01 * i as f32 }.to_le_bytes()).collect();
    let bias: Vec<u8> = (0..8).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let tensors = vec![
        TensorData::new("fc.weight", Dtype::F32, vec![8, 12], weight).unwrap(),
        TensorData::new("fc.bias", Dtype::F32, vec![8], bias).unwrap(),
    ];
    let file = write_safetensors(&tensors, None).unwrap();
    (tensors, file)
}

async fn get(client: &mut Client, id: &str) -> pb::Job {
    client.get_job(pb::GetJobRequest { id: id.into() }).await.unwrap().into_inner()
}

#[tokio::test]
async fn a_tracked_run_reports_finishes_and_is_exported() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    let mut client = server.client().await;
    let run = client.start_tracked_run(start_request(SPEC, "loop-1")).await.unwrap().into_inner();
    let job = run.job.clone().unwrap();
    let id = job.id.clone();
    assert_eq!((run.session, run.reattached), (1, false));
    assert_eq!(job.kind, pb::JobKind::Tracked as i32);
    assert_eq!((job.state, job.total_steps, job.client.as_str()), (pb::JobState::Running as i32, 10, "test-host:42"));
    assert!(job.reported_unix_ms > 0 && job.attempts == 0, "{job:?}");

    for step in 1..=4 {
        client.report_tracked_run(report(&id, 1, step, 1.0 / step as f64)).await.unwrap();
    }
    // A mask update: per-tensor sparsity and its points.
    let mut update = report(&id, 1, 5, 0.15);
    update.sparsity = vec![pb::TensorSparsity { name: "fc.weight".into(), sparsity: 0.25 }];
    update.points.push(pb::MetricPoint { step: 5, name: "sparsity/fc.weight".into(), value: 0.25 });
    update.epoch = Some(1);
    // A watcher sees the report as progress. Its first event (the job) comes after the server
    // subscribed it, so the report that follows cannot be missed.
    let mut watcher = server.client().await;
    let mut events = watcher.watch_job(pb::WatchJobRequest { id: id.clone() }).await.unwrap().into_inner();
    let first = events.next().await.unwrap().unwrap();
    assert!(matches!(first.event, Some(pb::job_event::Event::Job(_))));
    client.report_tracked_run(update).await.unwrap();
    let progress = loop {
        match tokio::time::timeout(TIMEOUT, events.next()).await.expect("a progress event").unwrap().unwrap().event {
            Some(pb::job_event::Event::Progress(p)) => break p,
            _ => continue,
        }
    };
    assert_eq!((progress.step, progress.total_steps, progress.epoch, progress.loss), (5, 10, 1, 0.15));
    assert_eq!(progress.sparsity, [pb::TensorSparsity { name: "fc.weight".into(), sparsity: 0.25 }]);
    // A loop resumed from its step-3 checkpoint reports steps 4 and 5 again: no duplicates.
    client.report_tracked_run(report(&id, 1, 4, 0.3)).await.unwrap();
    client.report_tracked_run(report(&id, 1, 5, 0.2)).await.unwrap();
    let loss = client
        .get_metrics(pb::GetMetricsRequest { job_id: id.clone(), name_prefix: "loss".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .points;
    let loss: Vec<(i64, f64)> = loss.iter().map(|p| (p.step, p.value)).collect();
    assert_eq!(loss, [(1, 1.0), (2, 0.5), (3, 1.0 / 3.0), (4, 0.3), (5, 0.2)]);
    let job = get(&mut client, &id).await;
    assert_eq!((job.step, job.epoch, job.loss), (5, 1, Some(0.2)));

    let list = |filter: &str| pb::ListJobsRequest { filter: filter.into(), ..Default::default() };
    let tracked = client.list_jobs(list("kind = TRACKED AND labels.team = \"vision\"")).await.unwrap().into_inner();
    assert_eq!(tracked.jobs.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(), [id.as_str()]);
    assert!(client.list_jobs(list("kind = SERVICE")).await.unwrap().into_inner().jobs.is_empty());

    // The weights: uploaded, then exported by a worker.
    let (tensors, file) = final_weights();
    let blob = upload(&mut client, &file).await.unwrap();
    let finish = pb::FinishTrackedRunRequest { job_id: id.clone(), session: 1, model_blob: blob.clone() };
    let queued = client.finish_tracked_run(finish).await.unwrap().into_inner();
    assert_eq!((queued.state, queued.reported_unix_ms), (pb::JobState::Queued as i32, 0));
    let (done, _) = wait_terminal(&mut client, &id, TIMEOUT).await;
    assert_eq!(done.state, pb::JobState::Succeeded as i32, "{}", done.error);
    assert_eq!((done.step, done.kind), (5, pb::JobKind::Tracked as i32), "the export keeps the loop's progress");
    assert_eq!(done.spec.as_ref().unwrap().model.as_ref().unwrap().blob.as_deref(), Some(blob.as_str()));

    let report_of = client.get_report(pb::GetReportRequest { job_id: id.clone() }).await.unwrap().into_inner();
    let weight = report_of.tensors.iter().find(|t| t.name == "fc.weight").unwrap();
    assert!(weight.pruned);
    assert_eq!((weight.numel, weight.nonzero), (96, 64));
    let bias = report_of.tensors.iter().find(|t| t.name == "fc.bias").unwrap();
    assert!(!bias.pruned);
    assert!(report_of.artifact_bytes["safetensors"] > 0);

    let (info, data) = download(&mut client, &id, "", 0).await.unwrap();
    assert_eq!((info.sparse_format.as_str(), info.compression.as_str()), ("bitmask", "zstd"));
    let (mut exported, _) =
        read_safetensors(&unpack_safetensors(&compress::decompress(&data).unwrap()).unwrap()).unwrap();
    exported.sort_by(|a, b| b.name.cmp(&a.name));
    assert_eq!(
        exported.iter().map(|t| &t.data).collect::<Vec<_>>(),
        tensors.iter().map(|t| &t.data).collect::<Vec<_>>()
    );

    // It takes no more reports, and its request id starts no second run.
    let late = client.report_tracked_run(report(&id, 1, 6, 0.1)).await.unwrap_err();
    assert_eq!(late.code(), Code::FailedPrecondition, "{late:?}");
    assert!(late.message().contains("SUCCEEDED"), "{}", late.message());
    let again = client.start_tracked_run(start_request(SPEC, "loop-1")).await.unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);
    assert!(again.message().contains("no longer takes reports"), "{}", again.message());
    let other = client.start_tracked_run(start_request(&SPEC.replace("0.6", "0.7"), "loop-1")).await.unwrap_err();
    assert_eq!(other.code(), Code::AlreadyExists, "{other:?}");
}

#[tokio::test]
async fn a_quiet_run_fails_re_attaches_and_stale_sessions_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--tracked-timeout-secs", "1"]).await;
    let mut client = server.client().await;
    let info = client.get_server_info(pb::GetServerInfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.limits.unwrap().tracked_timeout_secs, 1);
    let run = client.start_tracked_run(start_request(SPEC, "quiet")).await.unwrap().into_inner();
    let id = run.job.unwrap().id;
    client.report_tracked_run(report(&id, 1, 3, 0.5)).await.unwrap();
    // The client goes quiet: the server fails the run on its own.
    let (failed, _) = wait_terminal(&mut client, &id, TIMEOUT).await;
    assert_eq!(failed.state, pb::JobState::Failed as i32);
    assert!(failed.error.starts_with("client stopped reporting"), "{}", failed.error);

    // The loop restarts from its own checkpoint with the same request id.
    let again = client.start_tracked_run(start_request(SPEC, "quiet")).await.unwrap().into_inner();
    let job = again.job.unwrap();
    assert_eq!((job.id.as_str(), again.session, again.reattached), (id.as_str(), 2, true));
    assert_eq!((job.state, job.step, job.error.as_str()), (pb::JobState::Running as i32, 3, ""));
    let stale = client.report_tracked_run(report(&id, 1, 4, 0.4)).await.unwrap_err();
    assert_eq!(stale.code(), Code::FailedPrecondition);
    assert!(stale.message().contains("re-attached by a newer session"), "{}", stale.message());
    client.report_tracked_run(report(&id, 2, 4, 0.4)).await.unwrap();
    let fail = pb::FailTrackedRunRequest { job_id: id.clone(), session: 2, reason: "loss is NaN at step 5".into() };
    let failed = client.fail_tracked_run(fail).await.unwrap().into_inner();
    assert_eq!((failed.state, failed.error.as_str()), (pb::JobState::Failed as i32, "loss is NaN at step 5"));

    // Cancelled by a person: the client learns it from its next report.
    let run = client.start_tracked_run(start_request(SPEC, "")).await.unwrap().into_inner();
    let id = run.job.unwrap().id;
    client.cancel_job(pb::CancelJobRequest { id: id.clone() }).await.unwrap();
    let ended = client.report_tracked_run(report(&id, 1, 1, 1.0)).await.unwrap_err();
    assert_eq!(ended.code(), Code::FailedPrecondition);
    assert!(ended.message().contains("CANCELLED"), "{}", ended.message());
    // It has no artifacts and no report, and says why (not "not finished").
    let e = download(&mut client, &id, "", 0).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().ends_with("was CANCELLED: it has no artifacts (only a SUCCEEDED job has)"), "{}", e.message());
    let e = client.get_report(pb::GetReportRequest { job_id: id.clone() }).await.unwrap_err();
    assert!(e.message().contains("was CANCELLED: it has no report"), "{}", e.message());
}

#[tokio::test]
async fn bad_input_is_refused_by_field() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    let mut client = server.client().await;
    let refused = |spec: &str| start_request(spec, "");
    for (spec, field) in [
        ("[model]\nblob = \"sha256:ab\"\n[pruning]\nschedule = { kind = \"constant_sparsity\", target_sparsity = 0.5 }\n", "model"),
        ("[pruning]\nstructure = \"channel\"\nschedule = { kind = \"constant_sparsity\", target_sparsity = 0.5 }\n", "pruning.structure"),
        ("[pruning]\nschedule = { kind = \"constant_sparsity\", target_sparsity = 1.5 }\n", "pruning.schedule.target_sparsity"),
        ("[pruning]\nshedule = 1\n", "pruning.shedule"),
    ] {
        let e = client.start_tracked_run(refused(spec)).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{spec}: {e:?}");
        assert!(e.message().contains(field), "{spec}: {}", e.message());
    }
    let run = client.start_tracked_run(start_request(SPEC, "")).await.unwrap().into_inner();
    let id = run.job.unwrap().id;
    let mut bad = report(&id, 1, 1, 1.0);
    bad.points[0].name = "loss\n".into();
    let e = client.report_tracked_run(bad).await.unwrap_err();
    assert!(e.code() == Code::InvalidArgument && e.message().starts_with("points[0].name"), "{e:?}");
    let missing = format!("sha256:{}", "0".repeat(64));
    let finish = pb::FinishTrackedRunRequest { job_id: id.clone(), session: 1, model_blob: missing };
    let e = client.finish_tracked_run(finish).await.unwrap_err();
    assert!(e.code() == Code::InvalidArgument && e.message().contains("upload the weights first"), "{e:?}");
    // Weights that are not a state dict: the export fails and says why.
    let blob = upload(&mut client, b"not a safetensors file").await.unwrap();
    let finish = pb::FinishTrackedRunRequest { job_id: id.clone(), session: 1, model_blob: blob.clone() };
    client.finish_tracked_run(finish).await.unwrap();
    let (failed, _) = wait_terminal(&mut client, &id, TIMEOUT).await;
    assert_eq!(failed.state, pb::JobState::Failed as i32);
    assert!(!failed.error.is_empty());
    let e = client.report_tracked_run(report("job-0000000000000000", 1, 1, 1.0)).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    // A service job is not a tracked run.
    let toml = format!(
        "[model]\nblob = \"{blob}\"\n[pruning]\nschedule = {{ kind = \"constant_sparsity\", target_sparsity = 0.5 }}\n"
    );
    let service = prune_tests::create_toml(&mut client, &toml).await.unwrap();
    assert_eq!(service.kind, pb::JobKind::Service as i32);
    let e = client.report_tracked_run(report(&service.id, 0, 1, 1.0)).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
}
