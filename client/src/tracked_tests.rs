//! The reporter against a stand-in server that records reports and fails on demand (the real
//! server's tracked runs are tested end to end in python/tests/test_tracked.py).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Mutex as StdMutex;

use prune_proto::pruning_service_server::{PruningService, PruningServiceServer};
use tokio::sync::Notify;
use tokio_stream::Stream;
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_types::{ErrorDetails, StatusExt};

use super::*;
use crate::ConnectOptions;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// What the stand-in answers a report with.
#[derive(Clone)]
enum Answer {
    Ok,
    Unavailable,
    /// FAILED_PRECONDITION with this reason and `state` metadata.
    Refuse(&'static str, &'static str),
}

#[derive(Default)]
struct Fake {
    reports: StdMutex<Vec<pb::ReportTrackedRunRequest>>,
    /// Answers to the next reports, first first; then Ok.
    answers: StdMutex<Vec<Answer>>,
    starts: StdMutex<Vec<pb::StartTrackedRunRequest>>,
    unavailable_starts: StdMutex<u32>,
    changed: Notify,
}

fn refused(code: Code, reason: &str, state: &str) -> Status {
    let mut details = ErrorDetails::new();
    details.set_error_info(reason, "prune.pruning.v1", HashMap::from([("state".to_string(), state.to_string())]));
    Status::with_error_details(code, format!("refused: {reason}"), details)
}

#[tonic::async_trait]
impl PruningService for Fake {
    async fn report_tracked_run(
        &self,
        request: Request<pb::ReportTrackedRunRequest>,
    ) -> Result<Response<pb::ReportTrackedRunResponse>, Status> {
        let answer = {
            let mut answers = self.answers.lock().unwrap();
            if answers.is_empty() {
                Answer::Ok
            } else {
                answers.remove(0)
            }
        };
        let result = match answer {
            Answer::Ok => {
                self.reports.lock().unwrap().push(request.into_inner());
                Ok(Response::new(pb::ReportTrackedRunResponse { state: pb::JobState::Running as i32 }))
            }
            Answer::Unavailable => Err(Status::unavailable("restarting")),
            Answer::Refuse(reason, state) => Err(refused(Code::FailedPrecondition, reason, state)),
        };
        self.changed.notify_waiters();
        result
    }

    async fn start_tracked_run(
        &self,
        request: Request<pb::StartTrackedRunRequest>,
    ) -> Result<Response<pb::TrackedRun>, Status> {
        self.starts.lock().unwrap().push(request.into_inner());
        let mut unavailable = self.unavailable_starts.lock().unwrap();
        if *unavailable > 0 {
            *unavailable -= 1;
            return Err(Status::unavailable("restarting"));
        }
        let job = pb::Job { id: "job-1".into(), state: pb::JobState::Running as i32, step: 7, ..Default::default() };
        Ok(Response::new(pb::TrackedRun { job: Some(job), session: 2, reattached: true }))
    }

    type WatchJobStream = BoxStream<pb::JobEvent>;
    type DownloadArtifactStream = BoxStream<pb::DownloadArtifactResponse>;
    type StreamJobLogsStream = BoxStream<pb::LogLine>;

    async fn upload_blob(&self, _: Request<Streaming<pb::UploadBlobRequest>>) -> Result<Response<pb::Blob>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn stat_blob(&self, _: Request<pb::StatBlobRequest>) -> Result<Response<pb::Blob>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn has_blob(&self, _: Request<pb::HasBlobRequest>) -> Result<Response<pb::HasBlobResponse>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn create_job(&self, _: Request<pb::CreateJobRequest>) -> Result<Response<pb::Job>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn get_job(&self, _: Request<pb::GetJobRequest>) -> Result<Response<pb::Job>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn list_jobs(&self, _: Request<pb::ListJobsRequest>) -> Result<Response<pb::ListJobsResponse>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn cancel_job(&self, _: Request<pb::CancelJobRequest>) -> Result<Response<pb::Job>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn watch_job(&self, _: Request<pb::WatchJobRequest>) -> Result<Response<Self::WatchJobStream>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn get_metrics(&self, _: Request<pb::GetMetricsRequest>) -> Result<Response<pb::GetMetricsResponse>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn get_report(&self, _: Request<pb::GetReportRequest>) -> Result<Response<pb::Report>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn download_artifact(
        &self,
        _: Request<pb::DownloadArtifactRequest>,
    ) -> Result<Response<Self::DownloadArtifactStream>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn delete_job(&self, _: Request<pb::DeleteJobRequest>) -> Result<Response<pb::DeleteJobResponse>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn stream_job_logs(
        &self,
        _: Request<pb::StreamJobLogsRequest>,
    ) -> Result<Response<Self::StreamJobLogsStream>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn get_server_info(&self, _: Request<pb::GetServerInfoRequest>) -> Result<Response<pb::ServerInfo>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn finish_tracked_run(&self, _: Request<pb::FinishTrackedRunRequest>) -> Result<Response<pb::Job>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn fail_tracked_run(&self, _: Request<pb::FailTrackedRunRequest>) -> Result<Response<pb::Job>, Status> {
        Err(Status::unimplemented(""))
    }
}

/// The stand-in on a loopback port, and a client of it.
async fn serve(fake: Arc<Fake>) -> Client {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(PruningServiceServer::from_arc(fake))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    Client::connect_lazy(&format!("http://{addr}"), &ConnectOptions::default()).unwrap()
}

fn run(step: i64) -> TrackedRun {
    let job = JobInfo::try_from(pb::Job {
        id: "job-1".into(),
        state: pb::JobState::Running as i32,
        step,
        ..Default::default()
    })
    .unwrap();
    TrackedRun { job, session: 3, reattached: false }
}

/// Fast pacing: tests wait on flushes, never on the clock.
fn quick() -> ReporterConfig {
    ReporterConfig {
        interval: Duration::from_millis(20),
        heartbeat: Duration::from_secs(60),
        call_timeout: Duration::from_secs(10),
        ..ReporterConfig::default()
    }
}

const FLUSH: Duration = Duration::from_secs(30);

/// Every point the stand-in received, as (name, step, value), in arrival order.
fn received(fake: &Fake) -> Vec<(String, i64, f64)> {
    fake.reports
        .lock()
        .unwrap()
        .iter()
        .flat_map(|r| r.points.iter().map(|p| (p.name.clone(), p.step, p.value)))
        .collect()
}

#[tokio::test]
async fn steps_coalesce_and_points_arrive_once_with_their_latest_value() {
    let fake = Arc::new(Fake::default());
    let client = serve(fake.clone()).await;
    let reporter = client.reporter(&run(0), quick());
    for step in 1..=5000 {
        reporter.step(step);
        if step % 1000 == 0 {
            reporter.log(step, [("loss".to_string(), step as f64)]);
        }
    }
    reporter.log(5000, [("loss".to_string(), -1.0)]); // replaces the point at 5000
    reporter.sparsity(5000, vec![TensorSparsity { name: "0.weight".into(), sparsity: 0.5 }]);
    assert!(reporter.flush(FLUSH).await);
    let reports = fake.reports.lock().unwrap().clone();
    // Coalesced: far fewer reports than steps, the last with the latest step and the session.
    assert!(reports.len() < 100, "{} reports for 5000 steps", reports.len());
    assert_eq!(reports.last().unwrap().step, 5000);
    assert!(reports.iter().all(|r| r.job_id == "job-1" && r.session == 3));
    let mut points = received(&fake);
    points.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    let mut want: Vec<(String, i64, f64)> =
        (1..=4).map(|k| ("loss".to_string(), k * 1000, (k * 1000) as f64)).collect();
    want.push(("loss".into(), 5000, -1.0));
    want.push(("sparsity/0.weight".into(), 5000, 0.5));
    assert_eq!(points, want);
    let with_sparsity: Vec<_> = reports.iter().filter(|r| !r.sparsity.is_empty()).collect();
    assert_eq!(with_sparsity.len(), 1);
    assert_eq!(with_sparsity[0].sparsity[0].name, "0.weight");
    let status = reporter.status();
    assert_eq!((status.dropped, status.reported_step, status.stopped), (0, 5000, None));
}

#[tokio::test]
async fn a_backlog_goes_out_in_reports_of_at_most_ten_thousand_points() {
    let fake = Arc::new(Fake::default());
    let client = serve(fake.clone()).await;
    let reporter = client.reporter(&run(0), quick());
    reporter.log(1, (0..25_000).map(|i| (format!("m{i:05}"), i as f64)));
    assert!(reporter.flush(FLUSH).await);
    let sizes: Vec<usize> = fake.reports.lock().unwrap().iter().map(|r| r.points.len()).filter(|&n| n > 0).collect();
    assert_eq!(sizes, [10_000, 10_000, 5_000]);
    assert_eq!(received(&fake).len(), 25_000);
}

#[tokio::test]
async fn a_server_that_comes_back_gets_everything_and_nothing_is_dropped() {
    let fake = Arc::new(Fake::default());
    *fake.answers.lock().unwrap() = vec![Answer::Unavailable, Answer::Unavailable];
    let client = serve(fake.clone()).await;
    let reporter = client.reporter(&run(0), quick());
    reporter.step(3);
    reporter.log(3, [("loss".to_string(), 0.25)]);
    assert!(reporter.flush(FLUSH).await);
    assert_eq!(received(&fake), [("loss".to_string(), 3, 0.25)]);
    assert_eq!(reporter.status().dropped, 0);
}

#[tokio::test]
async fn an_unreachable_server_costs_dropped_points_not_the_loop() {
    // A port nothing listens on: every report fails at once (connection refused).
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let client = Client::connect_lazy(&format!("http://127.0.0.1:{port}"), &ConnectOptions::default()).unwrap();
    let reporter = client.reporter(&run(0), ReporterConfig { drop_after: 2, ..quick() });
    for step in 1..=100 {
        reporter.step(step);
        reporter.log(step, [("loss".to_string(), 1.0)]);
    }
    // Tried, then dropped: the flush hears it did not get through, well before its deadline.
    assert!(!reporter.flush(FLUSH).await);
    let status = reporter.status();
    assert_eq!(status.dropped, 100, "{status:?}");
    assert!(status.last_error.as_deref().unwrap_or_default().contains("unavailable"), "{status:?}");
    assert_eq!(status.stopped, None);
}

#[tokio::test]
async fn a_cancelled_run_stops_the_reporter_and_says_so() {
    let fake = Arc::new(Fake::default());
    *fake.answers.lock().unwrap() = vec![Answer::Refuse("RUN_ENDED", "CANCELLED")];
    let client = serve(fake.clone()).await;
    let reporter = client.reporter(&run(0), quick());
    reporter.log(1, [("loss".to_string(), 1.0)]);
    assert!(!reporter.flush(FLUSH).await);
    let status = reporter.status();
    assert!(status.cancelled(), "{status:?}");
    assert_eq!(status.stopped.as_ref().unwrap().reason, "RUN_ENDED");
    // Stopped for good: later updates are neither sent nor counted as dropped.
    reporter.log(2, [("loss".to_string(), 1.0)]);
    reporter.step(2);
    assert!(!reporter.flush(FLUSH).await);
    assert_eq!(reporter.status().dropped, 0);
    assert!(fake.reports.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_superseded_session_stops_without_being_cancelled() {
    let fake = Arc::new(Fake::default());
    *fake.answers.lock().unwrap() = vec![Answer::Refuse("RUN_SUPERSEDED", "RUNNING")];
    let client = serve(fake.clone()).await;
    let reporter = client.reporter(&run(0), quick());
    reporter.step(1);
    assert!(!reporter.flush(FLUSH).await);
    let status = reporter.status();
    assert_eq!(status.stopped.as_ref().map(|s| s.reason.as_str()), Some("RUN_SUPERSEDED"));
    assert!(!status.cancelled());
}

#[tokio::test]
async fn heartbeats_go_out_when_nothing_changes() {
    let fake = Arc::new(Fake::default());
    let client = serve(fake.clone()).await;
    let reporter = client.reporter(&run(41), ReporterConfig { heartbeat: Duration::from_millis(50), ..quick() });
    let beats = async {
        loop {
            let seen = fake.changed.notified();
            if fake.reports.lock().unwrap().len() >= 3 {
                return;
            }
            seen.await;
        }
    };
    tokio::time::timeout(FLUSH, beats).await.expect("three heartbeats");
    let reports = fake.reports.lock().unwrap().clone();
    // The re-attached run's step, nothing else.
    assert!(reports.iter().all(|r| r.step == 41 && r.points.is_empty()), "{reports:?}");
    drop(reporter);
}

#[tokio::test]
async fn start_retries_an_unavailable_server_with_one_request_id() {
    let fake = Arc::new(Fake::default());
    *fake.unavailable_starts.lock().unwrap() = 2;
    let client = serve(fake.clone()).await;
    let options = TrackedRunOptions { total_steps: Some(100), ..TrackedRunOptions::default() };
    let run = client.start_tracked_run("[pruning]\n", &options).await.unwrap();
    assert_eq!((run.job.id.as_str(), run.session, run.reattached, run.job.step), ("job-1", 2, true, 7));
    let starts = fake.starts.lock().unwrap().clone();
    assert_eq!(starts.len(), 3);
    assert!(starts.iter().all(|s| s.request_id == starts[0].request_id && !s.request_id.is_empty()));
    assert_eq!(starts[0].total_steps, 100);
    assert_eq!(starts[0].client, this_process());
}

#[test]
fn metric_names_are_one_to_two_hundred_printable_characters() {
    assert!(check_metric_name("loss").is_ok());
    assert!(check_metric_name(&"x".repeat(200)).is_ok());
    assert!(check_metric_name("").is_err());
    assert!(check_metric_name(&"x".repeat(201)).is_err());
    assert!(check_metric_name("a\nb").is_err());
}

#[test]
fn the_heartbeat_is_a_third_of_the_servers_timeout() {
    let c = ReporterConfig::for_timeout(Some(Duration::from_secs(900)));
    assert_eq!(c.heartbeat, Duration::from_secs(30));
    let c = ReporterConfig::for_timeout(Some(Duration::from_secs(3)));
    assert_eq!(c.heartbeat, Duration::from_secs(1));
    assert!(c.call_timeout <= Duration::from_secs(1) && c.interval <= c.heartbeat);
}
