//! Tracked runs for `prune.Client` / `prune.Run` (python/prune/tracking.py): `prune-client`
//! itself (auth, TLS, retries, resumable uploads, the background [`Reporter`]) on one Tokio
//! runtime per process, so the package speaks to the service exactly as `prunectl` does.
//!
//! Every call that waits on the network releases the GIL; the long waits (upload, export) check
//! for Ctrl-C every few hundred milliseconds.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use prune_client::error::field_violations;
use prune_client::tracked::{Reporter, ReporterConfig, ReporterStatus, TrackedRunOptions};
use prune_client::{tls_hint, Client, ClientError, ConnectOptions, JobInfo, TensorSparsity, WatchEvent};
use prune_core::validate::{parse_json, tracked, FieldError};
use pyo3::create_exception;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use tokio::runtime::Runtime;
use tokio_stream::StreamExt;

use crate::SpecError;

create_exception!(
    _core,
    TrackingError,
    PyRuntimeError,
    "A call to the prune service that failed: connecting, starting, finishing or failing a tracked run."
);

/// The process's runtime for the service calls and the reporters' tasks: one worker thread (a
/// reporter sends a few small messages a second), never shut down (threads end with the process).
fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("prune-client")
            .enable_all()
            .build()
            .expect("a Tokio runtime")
    })
}

/// A client error as the Python exception a user expects: a spec the server refused is a
/// `SpecError` with one `field: reason` line per problem, as the local validation's.
fn py_error(e: ClientError) -> PyErr {
    let violations = field_violations(&e);
    if e.reason().as_deref() == Some("SPEC_INVALID") && !violations.is_empty() {
        let lines: Vec<String> = violations.iter().map(|(f, r)| format!("{f}: {r}")).collect();
        return SpecError::new_err(lines.join("\n"));
    }
    TrackingError::new_err(e.to_string())
}

/// [`py_error`] of a call to `addr`, saying "use https://" where plain HTTP reached a TLS server.
fn py_error_at(addr: &str, e: ClientError) -> PyErr {
    match tls_hint(addr, &e) {
        Some(hint) => TrackingError::new_err(hint),
        None => py_error(e),
    }
}

fn json<T: serde::Serialize>(value: &T) -> PyResult<String> {
    serde_json::to_string(value).map_err(|e| TrackingError::new_err(e.to_string()))
}

/// Runs `future` on the runtime with the GIL released, checking for Ctrl-C (and other signals)
/// every 200 ms; an interrupt abandons the future.
fn block_on<T: Send + 'static>(
    py: Python<'_>,
    future: impl std::future::Future<Output = T> + Send + 'static,
) -> PyResult<T> {
    let mut task = runtime().spawn(future);
    loop {
        // The timer is made inside the runtime (it needs its clock).
        let polled = py
            .detach(|| runtime().block_on(async { tokio::time::timeout(Duration::from_millis(200), &mut task).await }));
        match polled {
            Ok(done) => return done.map_err(|e| TrackingError::new_err(format!("the call panicked: {e}"))),
            Err(_) => {
                if let Err(interrupted) = py.check_signals() {
                    task.abort();
                    return Err(interrupted);
                }
            }
        }
    }
}

/// A tracked run's spec document (JSON) from its parts, validated as the service will
/// (`validate::tracked`): errors name the field (`pruning.schedule.end_step: ...`) before
/// anything is sent.
#[pyfunction]
#[pyo3(signature = (pruning, name=None, export=None))]
pub fn tracked_spec(pruning: &str, name: Option<String>, export: Option<&str>) -> PyResult<String> {
    let bad = |field: &str, e: serde_json::Error| SpecError::new_err(format!("{field}: {e}"));
    // The model is the loop's own: the document has an empty one, as the service reads it.
    let mut doc = serde_json::json!({ "model": {}, "pruning": serde_json::from_str::<serde_json::Value>(pruning).map_err(|e| bad("pruning", e))? });
    if let Some(name) = name {
        doc["name"] = serde_json::Value::String(name);
    }
    if let Some(export) = export {
        doc["export"] = serde_json::from_str(export).map_err(|e| bad("export", e))?;
    }
    let text = doc.to_string();
    let lines = |errors: Vec<FieldError>| errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n");
    // Lines and columns would point into this generated JSON, not at anything the user wrote.
    let spec = parse_json(&text).map_err(crate::generated_document_errors)?;
    tracked(&spec).map_err(|e| SpecError::new_err(lines(e.0)))?;
    Ok(text)
}

/// A connection to a prune server (`prune.Client` wraps it).
#[pyclass(frozen, module = "prune._core")]
pub struct ServiceClient {
    client: Client,
}

impl Run {
    /// A call's error as a Python exception.
    fn error(&self, e: ClientError) -> PyErr {
        py_error_at(self.client.addr(), e)
    }
}

impl ServiceClient {
    /// A call's error as a Python exception.
    fn error(&self, e: ClientError) -> PyErr {
        py_error_at(self.client.addr(), e)
    }
}

#[pymethods]
impl ServiceClient {
    /// Connects (TLS for an `https://` address, with `ca` naming the authority's PEM file; a
    /// bearer `token`; `timeout` seconds per call).
    #[new]
    #[pyo3(signature = (addr, token=None, ca=None, timeout=None))]
    fn new(
        py: Python<'_>,
        addr: String,
        token: Option<String>,
        ca: Option<PathBuf>,
        timeout: Option<f64>,
    ) -> PyResult<Self> {
        let timeout = match timeout {
            Some(t) if !(t.is_finite() && t > 0.0) => {
                return Err(pyo3::exceptions::PyValueError::new_err(format!(
                    "timeout must be a positive number of seconds (got {t})"
                )))
            }
            t => t.map(Duration::from_secs_f64),
        };
        let options = ConnectOptions { token, ca_cert: ca, timeout };
        let target = addr.clone();
        let client = block_on(py, async move { Client::connect_with(&target, &options).await })?
            .map_err(|e| py_error_at(&addr, e))?;
        Ok(ServiceClient { client })
    }

    #[getter]
    fn addr(&self) -> String {
        self.client.addr().to_string()
    }

    /// The server's `--tracked-timeout-secs`, when it says.
    fn tracked_timeout(&self, py: Python<'_>) -> PyResult<Option<f64>> {
        let client = self.client.clone();
        let timeout = block_on(py, async move { client.tracked_timeout().await })?.map_err(|e| self.error(e))?;
        Ok(timeout.map(|t| t.as_secs_f64()))
    }

    /// Starts (or re-attaches to) a tracked run with the spec document `spec` (JSON or TOML).
    #[pyo3(signature = (spec, request_id=None, labels=None, total_steps=None, heartbeat=None))]
    fn start_tracked_run(
        &self,
        py: Python<'_>,
        spec: String,
        request_id: Option<String>,
        labels: Option<BTreeMap<String, String>>,
        total_steps: Option<i64>,
        heartbeat: Option<f64>,
    ) -> PyResult<Run> {
        let options = TrackedRunOptions { labels: labels.unwrap_or_default(), request_id, total_steps, client: None };
        let client = self.client.clone();
        let (run, timeout) = block_on(py, async move {
            let run = client.start_tracked_run(&spec, &options).await?;
            // Older servers do not say: the default heartbeat (30 s) is well within theirs.
            let timeout = client.tracked_timeout().await.unwrap_or(None);
            Ok::<_, ClientError>((run, timeout))
        })?
        .map_err(|e| self.error(e))?;
        let mut config = ReporterConfig::for_timeout(timeout);
        if let Some(h) = heartbeat.filter(|h| h.is_finite() && *h > 0.0) {
            config.heartbeat = Duration::from_secs_f64(h);
        }
        let reporter = {
            let _entered = runtime().enter();
            self.client.reporter(&run, config)
        };
        Ok(Run {
            client: self.client.clone(),
            job_id: run.job.id.clone(),
            session: run.session,
            reattached: run.reattached,
            start_step: run.job.step,
            job: json(&run.job)?,
            reporter: Mutex::new(Some(Arc::new(reporter))),
        })
    }

    /// The job (JSON).
    fn job(&self, py: Python<'_>, id: String) -> PyResult<String> {
        let client = self.client.clone();
        json(&block_on(py, async move { client.get_job(&id).await })?.map_err(|e| self.error(e))?)
    }

    /// The jobs (JSON list, newest first, without specs) that pass an AIP-160 `filter`
    /// (`labels.team = "vision" AND state = RUNNING`; empty: all).
    #[pyo3(signature = (filter=String::new()))]
    fn jobs(&self, py: Python<'_>, filter: String) -> PyResult<String> {
        let client = self.client.clone();
        json(&block_on(py, async move { client.list_jobs_filtered(&filter).await })?.map_err(|e| self.error(e))?)
    }

    /// The job's time series as (name, step, value), ordered by name then step.
    #[pyo3(signature = (id, prefix=None))]
    fn metrics(&self, py: Python<'_>, id: String, prefix: Option<String>) -> PyResult<Vec<(String, i64, f64)>> {
        let client = self.client.clone();
        let points =
            block_on(py, async move { client.metrics(&id, prefix.as_deref()).await })?.map_err(|e| self.error(e))?;
        Ok(points.into_iter().map(|p| (p.name, p.step, p.value)).collect())
    }

    /// A SUCCEEDED job's report (JSON).
    fn report(&self, py: Python<'_>, id: String) -> PyResult<String> {
        let client = self.client.clone();
        json(&block_on(py, async move { client.report(&id).await })?.map_err(|e| self.error(e))?)
    }

    /// Downloads the job's artifact of `format` (default: its model) to `path`, decompressed
    /// unless `raw`, resumable and verified (`prunectl download`). Returns the outcome (JSON).
    #[pyo3(signature = (id, path, format=None, raw=false))]
    fn download(
        &self,
        py: Python<'_>,
        id: String,
        path: PathBuf,
        format: Option<String>,
        raw: bool,
    ) -> PyResult<String> {
        let client = self.client.clone();
        let done = block_on(py, async move { client.download_to(&id, &path, format.as_deref(), raw).await })?;
        json(&done.map_err(|e| self.error(e))?)
    }

    /// Waits until the job is SUCCEEDED, FAILED or CANCELLED (following WatchJob), at most
    /// `timeout` seconds (None: no limit). Returns the job (JSON); a TrackingError at the timeout.
    #[pyo3(signature = (id, timeout=None))]
    fn wait(&self, py: Python<'_>, id: String, timeout: Option<f64>) -> PyResult<String> {
        let job = block_on(py, wait_for(self.client.clone(), id, timeout))?.map_err(|e| self.error(e))?;
        json(&job)
    }

    fn cancel(&self, py: Python<'_>, id: String) -> PyResult<String> {
        let client = self.client.clone();
        json(&block_on(py, async move { client.cancel(&id).await })?.map_err(|e| self.error(e))?)
    }
}

/// The job once it ends, following its events; a protocol error naming the job at `timeout`.
async fn wait_for(client: Client, id: String, timeout: Option<f64>) -> Result<JobInfo, ClientError> {
    let watch = async {
        let mut events = client.watch(&id);
        let mut last = None;
        while let Some(event) = events.next().await {
            if let WatchEvent::Job(job) = event? {
                if job.state.is_terminal() {
                    return Ok(*job);
                }
                last = Some(job.state);
            }
        }
        Err(ClientError::Protocol(format!("the watch of {id} ended while it was {last:?}")))
    };
    match timeout.filter(|t| t.is_finite() && *t >= 0.0) {
        None => watch.await,
        Some(t) => tokio::time::timeout(Duration::from_secs_f64(t), watch)
            .await
            .unwrap_or_else(|_| Err(ClientError::Protocol(format!("job {id} did not finish within {t} s")))),
    }
}

/// How long finishing or failing waits for the reports queued before it.
const CLOSE_FLUSH: Duration = Duration::from_secs(10);

/// A started tracked run and its reporter (`prune.Run` wraps it).
#[pyclass(frozen, module = "prune._core")]
pub struct Run {
    client: Client,
    #[pyo3(get)]
    job_id: String,
    #[pyo3(get)]
    session: u32,
    #[pyo3(get)]
    reattached: bool,
    /// The step the service had recorded when this session started.
    #[pyo3(get)]
    start_step: i64,
    /// The job as StartTrackedRun returned it (JSON).
    #[pyo3(get)]
    job: String,
    /// `None` once the run is finished, failed or closed. Shared out of the lock, so that a
    /// flush (which waits) never holds it while the loop's thread reports.
    reporter: Mutex<Option<Arc<Reporter>>>,
}

impl Run {
    fn reporter(&self) -> Option<Arc<Reporter>> {
        self.reporter.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn with_reporter(&self, f: impl FnOnce(&Reporter)) {
        if let Some(r) = self.reporter.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            f(r)
        }
    }

    fn take_reporter(&self) -> Option<Arc<Reporter>> {
        self.reporter.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

fn status_tuple(s: &ReporterStatus) -> Status {
    let stopped = s.stopped.as_ref();
    (
        s.reports,
        s.dropped,
        s.last_error.clone(),
        stopped.map(|x| x.reason.clone()),
        stopped.and_then(|x| x.state.map(|st| st.as_str().to_string())),
        stopped.map(|x| x.message.clone()),
    )
}

/// (reports, dropped, last error, stop reason, state at the stop, stop message).
type Status = (u64, u64, Option<String>, Option<String>, Option<String>, Option<String>);

#[pymethods]
impl Run {
    /// Never blocks, never fails: the step is sent with the next report.
    fn step(&self, step: i64) {
        self.with_reporter(|r| r.step(step));
    }

    fn epoch(&self, epoch: i64) {
        self.with_reporter(|r| r.epoch(epoch));
    }

    fn total_steps(&self, total_steps: i64) {
        self.with_reporter(|r| r.total_steps(total_steps));
    }

    fn log(&self, step: i64, values: Vec<(String, f64)>) {
        self.with_reporter(|r| r.log(step, values));
    }

    /// A mask update at `step`: (parameter name, sparsity) per pruned tensor.
    fn sparsity(&self, step: i64, tensors: Vec<(String, f64)>) {
        let tensors = tensors.into_iter().map(|(name, sparsity)| TensorSparsity { name, sparsity }).collect();
        self.with_reporter(|r| r.sparsity(step, tensors));
    }

    /// Waits (GIL released) until what was queued is reported, at most `timeout` seconds.
    fn flush(&self, py: Python<'_>, timeout: f64) -> bool {
        let Some(reporter) = self.reporter() else { return false };
        let timeout = Duration::from_secs_f64(timeout.max(0.0));
        py.detach(|| runtime().block_on(reporter.flush(timeout)))
    }

    fn status(&self) -> Option<Status> {
        self.reporter().map(|r| status_tuple(&r.status()))
    }

    /// Stops reporting (what is queued is flushed first, at most `timeout` seconds); the run
    /// stays as it is on the server. Returns the reporter's last status.
    fn close(&self, py: Python<'_>, timeout: f64) -> Option<Status> {
        let reporter = self.take_reporter()?;
        let timeout = Duration::from_secs_f64(timeout.max(0.0));
        Some(status_tuple(&py.detach(|| runtime().block_on(reporter.close(timeout)))))
    }

    /// Uploads `path` (a safetensors state dict, the masks applied; resumable), finishes the
    /// run with it, and with `wait` follows the job until its export ends (at most `timeout`
    /// seconds). Returns the job (JSON) and the reporter's last status.
    #[pyo3(signature = (path, wait=true, timeout=None))]
    fn finish(
        &self,
        py: Python<'_>,
        path: PathBuf,
        wait: bool,
        timeout: Option<f64>,
    ) -> PyResult<(String, Option<Status>)> {
        let status = self.close(py, CLOSE_FLUSH.as_secs_f64());
        let (client, id, session) = (self.client.clone(), self.job_id.clone(), self.session);
        let job = block_on(py, async move {
            let uploaded = client.upload_file(&path).await?;
            let job = client.finish_tracked_run(&id, session, &uploaded.id).await?;
            if wait {
                wait_for(client, id, timeout).await
            } else {
                Ok(job)
            }
        })?
        .map_err(|e| self.error(e))?;
        Ok((json(&job)?, status))
    }

    /// Fails the run with `reason` (one line). Returns the job (JSON).
    fn fail(&self, py: Python<'_>, reason: String) -> PyResult<String> {
        self.close(py, CLOSE_FLUSH.as_secs_f64());
        let (client, id, session) = (self.client.clone(), self.job_id.clone(), self.session);
        let job = block_on(py, async move { client.fail_tracked_run(&id, session, &reason).await })?
            .map_err(|e| self.error(e))?;
        json(&job)
    }

    fn __repr__(&self) -> String {
        format!("Run({}, session {})", self.job_id, self.session)
    }
}
