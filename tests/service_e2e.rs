//! End-to-end tests of prune-server: the real binary, real worker processes, real libtorch.
//! Build the binaries first: `cargo build -p prune-server`.

use std::time::Duration;

use prune_proto as pb;
use prune_tests::*;
use tempfile::TempDir;
use tokio_stream::StreamExt;
use tonic::Code;

/// Generous: CI machines are small and run tests in parallel.
const JOB_TIMEOUT: Duration = Duration::from_secs(300);

/// Small and quick: 2 epochs of 51 steps.
fn small_job() -> String {
    digits_mlp("digits-mlp", 32, 2, 20)
}

/// Long enough to act on while it runs: many steps, a checkpoint every 50.
const LONG_CHECKPOINT_EVERY: i64 = 50;
fn long_job(name: &str) -> String {
    digits_mlp(name, 512, 60, LONG_CHECKPOINT_EVERY)
}

async fn create(client: &mut Client, spec: pb::JobSpec) -> Result<pb::Job, tonic::Status> {
    let source = pb::create_job_request::Source::Spec(spec);
    Ok(client.create_job(pb::CreateJobRequest { source: Some(source), ..Default::default() }).await?.into_inner())
}

async fn get(client: &mut Client, id: &str) -> pb::Job {
    client.get_job(pb::GetJobRequest { id: id.into() }).await.expect("GetJob").into_inner()
}

/// Watches a RUNNING job until it has passed its second checkpoint (so at least one is
/// recorded), panicking if it ends first.
async fn wait_past_checkpoints(client: &mut Client, id: &str) -> pb::Job {
    let (job, _) = watch_until(client, id, JOB_TIMEOUT, |job, progress| {
        assert!(!is_terminal(job), "the job ended before it could be interrupted: {job:?}");
        progress.is_some_and(|p| p.step >= 2 * LONG_CHECKPOINT_EVERY + 5)
    })
    .await;
    job
}

fn data_dir(tmp: &TempDir, name: &str) -> std::path::PathBuf {
    tmp.path().join(name)
}

#[tokio::test]
async fn health_and_reflection() {
    let tmp = TempDir::new().unwrap();
    let server = Server::start(&data_dir(&tmp, "data"), &[]).await;
    let channel = server.channel().await;

    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for service in ["", "pruning.v1.PruningService"] {
        let response = health
            .check(tonic_health::pb::HealthCheckRequest { service: service.into() })
            .await
            .expect("health check")
            .into_inner();
        assert_eq!(response.status(), tonic_health::pb::health_check_response::ServingStatus::Serving, "{service:?}");
    }

    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient, server_reflection_request::MessageRequest,
        server_reflection_response::MessageResponse, ServerReflectionRequest,
    };
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses =
        reflection.server_reflection_info(tokio_stream::iter([request])).await.expect("reflection").into_inner();
    let response = responses.next().await.expect("a reflection response").expect("reflection ok");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else { panic!("{response:?}") };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"pruning.v1.PruningService".to_string()), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health".to_string()), "{names:?}");
}

#[tokio::test]
async fn one_shot_job_on_an_uploaded_state_dict() {
    let tmp = TempDir::new().unwrap();
    let server = Server::start(&data_dir(&tmp, "data"), &[]).await;
    let mut client = server.client().await;

    let state_dict = mlp_state_dict();
    let expected_id = format!("sha256:{}", sha256_hex(&state_dict));
    let has = client.has_blob(pb::HasBlobRequest { id: expected_id.clone() }).await.unwrap().into_inner();
    assert!(!has.exists);
    let id = upload(&mut client, &state_dict).await.expect("upload");
    assert_eq!(id, expected_id);
    // Idempotent, and visible to StatBlob/HasBlob.
    assert_eq!(upload(&mut client, &state_dict).await.expect("second upload"), id);
    let stat = client.stat_blob(pb::StatBlobRequest { id: id.clone() }).await.unwrap().into_inner();
    assert_eq!(stat.size, state_dict.len() as u64);
    assert!(client.has_blob(pb::HasBlobRequest { id: id.clone() }).await.unwrap().into_inner().exists);

    let created = create(&mut client, one_shot_spec(&id)).await.expect("CreateJob");
    assert!(created.id.starts_with("job-"), "{}", created.id);
    assert_eq!(created.name, "one-shot");
    // The echoed spec has the TOML defaults filled in.
    let echo = created.spec.as_ref().unwrap();
    assert_eq!(echo.training.as_ref().unwrap().batch_size, Some(32));
    assert_eq!(echo.pruning.as_ref().unwrap().schedule.as_ref().unwrap().end_step, Some(-1));
    assert_eq!(echo.export.as_ref().unwrap().formats, ["safetensors"]);

    let (job, _) = wait_terminal(&mut client, &created.id, JOB_TIMEOUT).await;
    assert_eq!(state(&job), pb::JobState::Succeeded, "{}", job.error);
    assert_eq!(job.artifacts.len(), 1);

    let (info, packed) = download(&mut client, &job.id, "", 0).await.expect("download");
    assert_eq!(
        (info.format.as_str(), info.compression.as_str(), info.sparse_format.as_str()),
        ("safetensors", "zstd", "dense")
    );
    assert_eq!(info.size, packed.len() as u64);
    assert_eq!(info.sha256, sha256_hex(&packed));
    assert!(!info.file_name.is_empty());
    let weights = prune_core::compress::decompress(&packed).expect("zstd");
    let zeros = zero_fraction(&weights, "0.weight");
    assert!((zeros - 0.5).abs() < 0.01, "0.weight sparsity {zeros}");

    let report =
        client.get_report(pb::GetReportRequest { job_id: job.id.clone() }).await.expect("GetReport").into_inner();
    assert!(report.tensors.iter().any(|t| t.name == "0.weight" && t.pruned));
    assert!(report.dense_bytes > 0 && !report.json.is_empty());
    let metrics = client
        .get_metrics(pb::GetMetricsRequest {
            job_id: job.id.clone(),
            name_prefix: "sparsity/".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(metrics.points.iter().any(|p| p.name == "sparsity/0.weight"), "{:?}", metrics.points);
}

#[tokio::test]
async fn download_resumes_from_an_offset() {
    let tmp = TempDir::new().unwrap();
    let server = Server::start(&data_dir(&tmp, "data"), &[]).await;
    let mut client = server.client().await;
    let id = upload(&mut client, &mlp_state_dict()).await.unwrap();
    let mut spec = one_shot_spec(&id);
    spec.export = Some(pb::ExportSpec { compression: Some("none".into()), ..Default::default() });
    let created = create(&mut client, spec).await.unwrap();
    let (job, _) = wait_terminal(&mut client, &created.id, JOB_TIMEOUT).await;
    assert_eq!(state(&job), pb::JobState::Succeeded, "{}", job.error);

    let (info, full) = download(&mut client, &job.id, "safetensors", 0).await.unwrap();
    let offset = full.len() as u64 / 3;
    let (resumed_info, tail) = download(&mut client, &job.id, "safetensors", offset).await.unwrap();
    assert_eq!(resumed_info, info);
    assert_eq!(tail, full[offset as usize..]);
    let mut joined = full[..offset as usize].to_vec();
    joined.extend_from_slice(&tail);
    assert_eq!(sha256_hex(&joined), info.sha256);
    // At the very end: nothing but the info.
    assert!(download(&mut client, &job.id, "", info.size).await.unwrap().1.is_empty());

    let past = download(&mut client, &job.id, "", info.size + 1).await.unwrap_err();
    assert_eq!(past.code(), Code::OutOfRange, "{past}");
    let other = download(&mut client, &job.id, "torchscript", 0).await.unwrap_err();
    assert_eq!(other.code(), Code::FailedPrecondition, "{other}");
}

#[tokio::test]
async fn training_job_reports_progress_and_metrics() {
    let tmp = TempDir::new().unwrap();
    let server = Server::start(&data_dir(&tmp, "data"), &[]).await;
    let mut client = server.client().await;
    let created = create_toml(&mut client, &small_job()).await.expect("CreateJob");
    assert!(created.warnings.is_empty(), "{:?}", created.warnings);

    let (job, watched) = wait_terminal(&mut client, &created.id, JOB_TIMEOUT).await;
    assert_eq!(state(&job), pb::JobState::Succeeded, "{}", job.error);
    assert_eq!(job.attempts, 1);
    assert_eq!((job.step, job.total_steps), (102, 102));
    assert!(job.finished_unix_ms >= job.started_unix_ms && job.started_unix_ms >= job.created_unix_ms);
    assert!(job.sparsity.iter().any(|t| t.name == "0.weight"), "{:?}", job.sparsity);
    // The watch started with the job and ended with its final state.
    assert_eq!(watched.jobs.first().unwrap().id, created.id);
    assert_eq!(state(watched.jobs.last().unwrap()), pb::JobState::Succeeded);

    let all = client
        .get_metrics(pb::GetMetricsRequest { job_id: job.id.clone(), name_prefix: String::new(), ..Default::default() })
        .await
        .unwrap();
    let names: std::collections::BTreeSet<String> = all.into_inner().points.into_iter().map(|p| p.name).collect();
    for name in ["sparsity/0.weight", "sparsity/2.weight", "loss"] {
        assert!(names.contains(name), "{name} missing from {names:?}");
    }
    let sparsity = client
        .get_metrics(pb::GetMetricsRequest {
            job_id: job.id.clone(),
            name_prefix: "sparsity/0.weight".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .points;
    let last = sparsity.iter().max_by_key(|p| p.step).unwrap();
    assert!((last.value - 0.8).abs() < 0.01, "final sparsity {last:?}");

    let report = client.get_report(pb::GetReportRequest { job_id: job.id.clone() }).await.unwrap().into_inner();
    assert!(report.final_val_accuracy.is_some());
    let listed = client.list_jobs(pb::ListJobsRequest::default()).await.unwrap().into_inner();
    assert_eq!(listed.jobs.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(), [job.id.as_str()]);
}

#[tokio::test]
async fn cancel_queued_and_running_jobs() {
    let tmp = TempDir::new().unwrap();
    let server = Server::start(&data_dir(&tmp, "data"), &["--workers", "1"]).await;
    let mut client = server.client().await;
    let running = create_toml(&mut client, &long_job("to-cancel")).await.unwrap();
    let queued = create_toml(&mut client, &small_job()).await.unwrap();

    watch_until(&mut client, &running.id, JOB_TIMEOUT, |job, progress| {
        assert!(!is_terminal(job), "{job:?}");
        progress.is_some_and(|p| p.step > 0)
    })
    .await;
    assert_eq!(state(&get(&mut client, &queued.id).await), pb::JobState::Queued);
    let cancelled = client.cancel_job(pb::CancelJobRequest { id: queued.id.clone() }).await.unwrap().into_inner();
    assert_eq!(state(&cancelled), pb::JobState::Cancelled);

    let pid = get(&mut client, &running.id).await.worker_pid;
    assert!(pid > 0 && process_alive(pid), "worker pid {pid}");
    let asked = tokio::time::Instant::now();
    let cancelled = client.cancel_job(pb::CancelJobRequest { id: running.id.clone() }).await.unwrap().into_inner();
    assert_eq!(state(&cancelled), pb::JobState::Cancelled);
    while process_alive(pid) {
        assert!(asked.elapsed() < Duration::from_secs(1), "worker {pid} still alive a second after CancelJob");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (job, _) = wait_terminal(&mut client, &running.id, Duration::from_secs(10)).await;
    assert_eq!((state(&job), job.worker_pid), (pb::JobState::Cancelled, 0));
    // Cancelling again changes nothing.
    let again = client.cancel_job(pb::CancelJobRequest { id: running.id.clone() }).await.unwrap().into_inner();
    assert_eq!(state(&again), pb::JobState::Cancelled);
    assert_eq!(state(&get(&mut client, &queued.id).await), pb::JobState::Cancelled);
}

#[tokio::test]
async fn worker_killed_mid_job_retries_from_its_checkpoint() {
    let tmp = TempDir::new().unwrap();
    let server = Server::start(&data_dir(&tmp, "data"), &["--max-attempts", "3"]).await;
    let mut client = server.client().await;
    let created = create_toml(&mut client, &long_job("worker-kill")).await.unwrap();
    wait_past_checkpoints(&mut client, &created.id).await;
    let pid = get(&mut client, &created.id).await.worker_pid;
    assert!(pid > 0, "no worker pid");
    signal(pid, libc::SIGKILL);

    let (job, _) = wait_terminal(&mut client, &created.id, JOB_TIMEOUT).await;
    assert_eq!(state(&job), pb::JobState::Succeeded, "{}", job.error);
    assert_eq!(job.attempts, 2);
    assert!(server.log().contains("starting attempt from a checkpoint"), "the retry did not resume from a checkpoint");
}

#[tokio::test]
async fn restart_mid_job_resumes_to_the_same_artifact() {
    let tmp = TempDir::new().unwrap();
    let spec = long_job("restart");
    // The reference: the same job, uninterrupted, in another data dir (run alongside).
    let reference = Server::start(&data_dir(&tmp, "reference"), &[]).await;
    let mut reference_client = reference.client().await;
    let reference_job = create_toml(&mut reference_client, &spec).await.unwrap();

    let dir = data_dir(&tmp, "data");
    let server = Server::start(&dir, &[]).await;
    let mut client = server.client().await;
    let created = create_toml(&mut client, &spec).await.unwrap();
    wait_past_checkpoints(&mut client, &created.id).await;
    let worker = get(&mut client, &created.id).await.worker_pid;
    server.kill9().await;
    // The worker goes with the server.
    let killed = tokio::time::Instant::now();
    while worker > 0 && process_alive(worker) {
        assert!(killed.elapsed() < Duration::from_secs(5), "worker {worker} outlived the server");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let server = Server::start(&dir, &[]).await;
    let mut client = server.client().await;
    let (job, _) = wait_terminal(&mut client, &created.id, JOB_TIMEOUT).await;
    assert_eq!(state(&job), pb::JobState::Succeeded, "{}", job.error);
    assert_eq!(job.attempts, 2);
    assert!(server.log().contains("starting attempt from a checkpoint"), "the job started over");
    let artifact = download(&mut client, &job.id, "", 0).await.unwrap();
    assert_same_artifact_as(&mut reference_client, &reference_job.id, &artifact, JOB_TIMEOUT).await;
}

#[tokio::test]
async fn sigterm_checkpoints_running_jobs_and_the_next_start_resumes_them() {
    let tmp = TempDir::new().unwrap();
    let dir = data_dir(&tmp, "data");
    let server = Server::start(&dir, &[]).await;
    let mut client = server.client().await;
    let created = create_toml(&mut client, &long_job("sigterm")).await.unwrap();
    wait_past_checkpoints(&mut client, &created.id).await;
    assert_eq!(server.terminate(Duration::from_secs(60)).await, Some(0));

    let server = Server::start(&dir, &[]).await;
    let mut client = server.client().await;
    let (job, _) = wait_terminal(&mut client, &created.id, JOB_TIMEOUT).await;
    assert_eq!(state(&job), pb::JobState::Succeeded, "{}", job.error);
    assert!(server.log().contains("starting attempt from a checkpoint"), "the job started over");
}

#[tokio::test]
async fn two_workers_run_two_jobs_at_once() {
    let tmp = TempDir::new().unwrap();
    let server = Server::start(&data_dir(&tmp, "data"), &["--workers", "2"]).await;
    let mut client = server.client().await;
    let a = create_toml(&mut client, &long_job("a")).await.unwrap();
    let b = create_toml(&mut client, &long_job("b")).await.unwrap();

    let deadline = tokio::time::Instant::now() + JOB_TIMEOUT;
    loop {
        let (ja, jb) = (get(&mut client, &a.id).await, get(&mut client, &b.id).await);
        if state(&ja) == pb::JobState::Running
            && state(&jb) == pb::JobState::Running
            && ja.worker_pid > 0
            && jb.worker_pid > 0
        {
            assert_ne!(ja.worker_pid, jb.worker_pid);
            break;
        }
        assert!(!is_terminal(&ja) && !is_terminal(&jb), "a job ended before both ran: {ja:?} {jb:?}");
        assert!(tokio::time::Instant::now() < deadline, "never both RUNNING");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for id in [&a.id, &b.id] {
        let (job, _) = wait_terminal(&mut client, id, JOB_TIMEOUT).await;
        assert_eq!(state(&job), pb::JobState::Succeeded, "{}", job.error);
    }
}

#[tokio::test]
async fn invalid_specs_are_rejected_naming_the_field() {
    let tmp = TempDir::new().unwrap();
    let server = Server::start(&data_dir(&tmp, "data"), &[]).await;
    let mut client = server.client().await;
    let unknown_blob = format!("sha256:{}", "0".repeat(64));
    let good = small_job();

    let toml_cases: Vec<(String, &str)> = vec![
        (good.replace("[model]", "[model]\nfile = \"model.pt\""), "model.file: upload the file and pass model.blob"),
        (good.replace("builtin = \"digits\"", "file = \"train.safetensors\""), "data.file"),
        (good.replace("batch_size = 32", "batch_size = 0"), "training.batch_size"),
        (good.replace("batch_size = 32", "bacth_size = 32"), "training.bacth_size"),
        (good.replace("optimizer = \"adam\"", "optimizer = \"lbfgs\""), "training.optimizer"),
        (good.replace("end_step = 100", "end_step = -1"), "pruning.schedule.end_step"),
        (good.replace("final_sparsity = 0.8", "final_sparsity = 1.0"), "pruning.schedule.final_sparsity"),
        (good.replace("compression = \"zstd\"", "compression = \"lz4\""), "export.compression"),
        (good.replace("type = \"relu\"", "type = \"gelu\""), "model.sequential[1]"),
        // Shapes that do not chain (the digits give [64], the first linear [32]).
        (
            good.replace("{ type = \"relu\" }", "{ type = \"batchnorm1d\", features = 16 }"),
            "model.sequential[1].features: is 16 but the previous layer gives 32 channels",
        ),
        (
            good.replace(
                "{ type = \"relu\" }",
                "{ type = \"residual\", layers = [{ type = \"relu\" }, { type = \"linear\", in = 16, out = 32 }] }",
            ),
            "model.sequential[1].layers[1].in: is 16 but the previous layer gives 32 features",
        ),
        (
            good.replace(
                "{ type = \"relu\" }",
                "{ type = \"residual\", layers = [{ type = \"linear\", in = 32, out = 8 }] }",
            ),
            "model.sequential[1]: its layers turn [32] into [8]",
        ),
        (
            good.replace("{ type = \"relu\" }", "{ type = \"global_avgpool\" }"),
            "model.sequential[1]: global_avgpool needs [channels, height, width]",
        ),
        ("this is not toml".to_string(), ""),
    ];
    for (toml, field) in &toml_cases {
        let status = create_toml(&mut client, toml).await.expect_err(toml);
        assert_eq!(status.code(), Code::InvalidArgument, "{status}");
        assert!(status.message().contains(field), "expected {field:?} in {:?}", status.message());
    }

    let with = |f: &dyn Fn(&mut pb::JobSpec)| {
        let mut spec = one_shot_spec(&unknown_blob);
        f(&mut spec);
        spec
    };
    let proto_cases: Vec<(pb::JobSpec, &str)> = vec![
        (one_shot_spec(&unknown_blob), "model.blob: blob sha256:000"),
        (with(&|s| s.model.as_mut().unwrap().blob = Some("not-a-blob".into())), "model.blob"),
        (with(&|s| s.pruning = None), "pruning"),
        (
            with(&|s| {
                let schedule = s.pruning.as_mut().unwrap().schedule.as_mut().unwrap();
                schedule.kind = "polynomial_decay".into();
            }),
            "pruning.schedule.initial_sparsity",
        ),
        (with(&|s| s.pruning.as_mut().unwrap().block_size = vec![1, 2, 3]), "pruning.block_size"),
        (
            with(&|s| {
                s.model.as_mut().unwrap().blob = None;
                s.model.as_mut().unwrap().sequential =
                    vec![pb::LayerSpec { r#type: "linear".into(), r#in: Some(4), ..Default::default() }];
            }),
            "model.sequential[0].out",
        ),
        (with(&|s| s.model = None), "model"),
    ];
    for (spec, field) in proto_cases {
        let status = create(&mut client, spec.clone()).await.expect_err(field);
        assert_eq!(status.code(), Code::InvalidArgument, "{status}");
        assert!(status.message().contains(field), "expected {field:?} in {:?}", status.message());
    }
    let none = client.create_job(pb::CreateJobRequest { source: None, ..Default::default() }).await.unwrap_err();
    assert_eq!(none.code(), Code::InvalidArgument);

    // Nothing was queued.
    assert!(client.list_jobs(pb::ListJobsRequest::default()).await.unwrap().into_inner().jobs.is_empty());
}

#[tokio::test]
async fn errors_map_to_status_codes() {
    let tmp = TempDir::new().unwrap();
    let server = Server::start(&data_dir(&tmp, "data"), &[]).await;
    let mut client = server.client().await;

    let missing = client.get_job(pb::GetJobRequest { id: "job-00000000000000ff".into() }).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let missing = client.stat_blob(pb::StatBlobRequest { id: format!("sha256:{}", "1".repeat(64)) }).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let missing = download(&mut client, "job-00000000000000ff", "", 0).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    // A corrupted upload: the header's checksum is not that of the data.
    use pb::upload_blob_request::Part;
    let header = pb::BlobHeader { size: 3, sha256: sha256_hex(b"abd"), offset: 0 };
    let messages = [
        pb::UploadBlobRequest { part: Some(Part::Header(header)) },
        pb::UploadBlobRequest { part: Some(Part::Data(b"abc".to_vec())) },
    ];
    let corrupt = client.upload_blob(tokio_stream::iter(messages)).await.unwrap_err();
    assert_eq!(corrupt.code(), Code::DataLoss, "{corrupt}");
    let headless = client
        .upload_blob(tokio_stream::iter([pb::UploadBlobRequest { part: Some(Part::Data(b"abc".to_vec())) }]))
        .await
        .unwrap_err();
    assert_eq!(headless.code(), Code::InvalidArgument, "{headless}");

    // An unfinished job has no artifact and no report yet.
    let job = create_toml(&mut client, &long_job("unfinished")).await.unwrap();
    let early = download(&mut client, &job.id, "", 0).await.unwrap_err();
    assert_eq!(early.code(), Code::FailedPrecondition, "{early}");
    let early = client.get_report(pb::GetReportRequest { job_id: job.id.clone() }).await.unwrap_err();
    assert_eq!(early.code(), Code::FailedPrecondition, "{early}");
    client.cancel_job(pb::CancelJobRequest { id: job.id.clone() }).await.unwrap();

    let bad_token =
        client.list_jobs(pb::ListJobsRequest { page_token: "x".into(), ..Default::default() }).await.unwrap_err();
    assert_eq!(bad_token.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn list_jobs_pages_newest_first_and_filters_by_state() {
    let tmp = TempDir::new().unwrap();
    // No worker ever frees up for the queued jobs while the first one runs.
    let server = Server::start(&data_dir(&tmp, "data"), &["--workers", "1"]).await;
    let mut client = server.client().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(create_toml(&mut client, &long_job(&format!("job {i}"))).await.unwrap().id);
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_jobs(pb::ListJobsRequest { page_size: 2, page_token: token.clone(), ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.jobs.into_iter().map(|j| j.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    assert_eq!(seen, newest_first);

    let queued = pb::ListJobsRequest { state: pb::JobState::Queued.into(), ..Default::default() };
    let queued = client.list_jobs(queued).await.unwrap().into_inner().jobs;
    assert!(queued.len() >= 4 && queued.iter().all(|j| state(j) == pb::JobState::Queued), "{queued:?}");
    for id in &ids {
        client.cancel_job(pb::CancelJobRequest { id: id.clone() }).await.unwrap();
    }
}

/// `training.device` on whatever this machine has: `auto` runs (on the CPU without a GPU, with
/// a warning saying so), and `cuda` on a machine without one fails at start with the reason.
#[tokio::test]
async fn device_auto_falls_back_with_a_warning_and_a_missing_gpu_fails_the_job() {
    let tmp = TempDir::new().unwrap();
    let server = Server::start(&data_dir(&tmp, "data"), &["--workers", "2"]).await;
    let mut client = server.client().await;
    let info = client.get_server_info(pb::GetServerInfoRequest::default()).await.unwrap().into_inner();
    let has_gpu = info.devices.iter().any(|d| d.starts_with("cuda"));
    let on = |device: &str| small_job().replace("[training]\n", &format!("[training]\ndevice = \"{device}\"\n"));
    let auto = create_toml(&mut client, &on("auto")).await.expect("CreateJob auto");
    let cuda = create_toml(&mut client, &on("cuda")).await.expect("CreateJob cuda");

    let (auto, _) = wait_terminal(&mut client, &auto.id, JOB_TIMEOUT).await;
    assert_eq!(state(&auto), pb::JobState::Succeeded, "{}", auto.error);
    let warned = auto.warnings.iter().any(|w| w.contains("auto") && w.contains("running on the CPU"));
    assert_eq!(warned, !has_gpu, "devices {:?}, warnings {:?}", info.devices, auto.warnings);

    let (cuda, _) = wait_terminal(&mut client, &cuda.id, JOB_TIMEOUT).await;
    if has_gpu {
        assert_eq!(state(&cuda), pb::JobState::Succeeded, "{}", cuda.error);
    } else {
        assert_eq!(state(&cuda), pb::JobState::Failed);
        assert!(cuda.error.contains("cuda:0 requested but this machine has 0 CUDA device(s)"), "{}", cuda.error);
        assert_eq!(cuda.attempts, 1, "a missing device is not retried");
    }
}
