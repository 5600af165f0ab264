//! `prune-worker --store URL --scratch DIR`: runs one attempt of one job with libtorch
//! (`prune-worker --devices` lists the devices jobs can use on this machine).
//!
//! A job runs in its own process so that a libtorch abort, a segfault or an OOM kill ends that
//! attempt only, never the server or the other jobs; and only this binary links libtorch. The
//! server's launcher starts it; `prune_core::worker_protocol` says how they talk.

mod inputs;

use std::fs::File;
use std::io::{BufRead, Write};
use std::os::fd::FromRawFd;
use std::path::PathBuf;
use std::process::ExitCode;

use prune_core::text::one_line;
use prune_core::worker_protocol::{Command, WorkerMessage, WorkerRequest, SCRATCH_FLAG, SERVER_PID_ENV, STORE_FLAG};
use prune_engine::{EngineError, Event, EventSink, Output, StopFlag};
use prune_store::FileStore;

/// Exit status when the server went away (stdin closed): nobody reads it, but it is distinct.
const EXIT_ORPHANED: u8 = 3;
/// Exit status for a malformed request: a server bug, reported on stderr.
const EXIT_BAD_REQUEST: u8 = 2;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("reading the request from stdin: {0}")]
    Stdin(std::io::Error),
    #[error("stdin closed before the request")]
    NoRequest,
    #[error("malformed request: {0}")]
    BadRequest(serde_json::Error),
    #[error("setting up the worker: {0}")]
    Setup(std::io::Error),
    #[error("usage: prune-worker {STORE_FLAG} URL {SCRATCH_FLAG} DIR ({0})")]
    Usage(String),
    #[error(transparent)]
    Store(#[from] prune_store::StoreError),
}

/// The command line: where the file store is, and this machine's scratch directory.
struct Args {
    store: std::sync::Arc<dyn FileStore>,
    scratch: PathBuf,
}

fn parse_args() -> Result<Args, WorkerError> {
    let mut store = None;
    let mut scratch = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| WorkerError::Usage(format!("{flag} needs a value")))?;
        match flag.as_str() {
            STORE_FLAG => store = Some(std::sync::Arc::from(prune_store::open(&value)?)),
            SCRATCH_FLAG => scratch = Some(PathBuf::from(value)),
            other => return Err(WorkerError::Usage(format!("unknown argument {other}"))),
        }
    }
    Ok(Args {
        store: store.ok_or_else(|| WorkerError::Usage(format!("{STORE_FLAG} is missing")))?,
        scratch: scratch.ok_or_else(|| WorkerError::Usage(format!("{SCRATCH_FLAG} is missing")))?,
    })
}

/// `prune-worker --devices`: the devices jobs can use here, one per line (GetServerInfo).
const DEVICES_FLAG: &str = "--devices";

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some(DEVICES_FLAG) {
        for device in prune_engine::device::available() {
            println!("{device}");
        }
        return ExitCode::SUCCESS;
    }
    // First of all, before anything can block: die with the server.
    if let Err(e) = die_with_parent() {
        eprintln!("worker: {e}");
        return ExitCode::from(EXIT_ORPHANED);
    }
    match run_attempt() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("worker: {e}");
            ExitCode::from(EXIT_BAD_REQUEST)
        }
    }
}

fn run_attempt() -> Result<(), WorkerError> {
    prune_engine::allocator::keep_freed_memory();
    let args = parse_args()?;
    let mut out = protocol_stdout().map_err(WorkerError::Setup)?;
    init_logging();
    let request = read_request()?;
    let span = tracing::info_span!("job", id = %request.job_id);
    let _entered = span.enter();

    let stop = StopFlag::default();
    watch_stdin(stop.clone());
    let shared_store = &args.store;
    let store = &**shared_store;
    // A panic is a bug, as deterministic as an engine error: report it rather than crash, so
    // that it is not retried and its message (not a backtrace line) is the job's error.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let (inputs, outputs) = inputs::resolve(&request, shared_store, &args.scratch)?;
        let mut sink = LineSink { out: &mut out, store, checkpoints: &inputs.checkpoints };
        let outcome = prune_engine::run_job(&request.spec, &inputs, &mut sink, &stop)?;
        log_peak_memory();
        outputs.publish(store, &outcome)?;
        Ok::<_, EngineError>(outcome)
    }));
    let terminal = match result {
        Ok(Ok(outcome)) => WorkerMessage::Finished(Box::new(outcome)),
        Ok(Err(EngineError::Stopped { step, reason })) => WorkerMessage::Stopped { step, reason },
        Ok(Err(e)) => WorkerMessage::Failed { error: one_line(&e.to_string()) },
        Err(panic) => {
            WorkerMessage::Failed { error: format!("engine panicked: {}", one_line(&panic_message(&*panic))) }
        }
    };
    // If the server is gone this fails too, and the exit status is all that is left.
    if let Err(e) = write_line(&mut out, &terminal) {
        tracing::error!("could not report the end of the attempt: {e}");
    }
    Ok(())
}

/// Logs this process's peak resident memory (`VmHWM`): the figure the memory goal of big
/// checkpoints is about (`docs/big-checkpoints.md`), read by tests and `make bench-big`.
fn log_peak_memory() {
    if let Some(bytes) = prune_engine::allocator::peak_resident_bytes() {
        tracing::info!("peak memory: VmHWM {bytes} bytes");
    }
}

/// `PR_SET_PDEATHSIG`: the kernel SIGKILLs this process when the server dies, even by
/// `kill -9`. The server's pid is checked afterwards because the server may have died before
/// the prctl call, in which case no signal would ever come.
fn die_with_parent() -> Result<(), String> {
    // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number and has no memory effects.
    let rc = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) };
    if rc != 0 {
        return Err(format!("prctl(PR_SET_PDEATHSIG): {}", std::io::Error::last_os_error()));
    }
    if let Some(expected) = std::env::var(SERVER_PID_ENV).ok().and_then(|v| v.parse::<i32>().ok()) {
        // SAFETY: getppid has no preconditions.
        let parent = unsafe { libc::getppid() };
        if parent != expected {
            return Err(format!("the server (pid {expected}) is already gone"));
        }
    }
    Ok(())
}

/// The protocol gets the real stdout to itself: it is duplicated to a private descriptor and
/// fd 1 is pointed at stderr, so that stray prints (from libtorch, say) land in the log instead
/// of corrupting the event stream.
fn protocol_stdout() -> std::io::Result<std::io::BufWriter<File>> {
    // SAFETY: dup/dup2 on the standard descriptors, which are open for the process's life;
    // the duplicated descriptor is owned by the File from here on.
    unsafe {
        let fd = libc::dup(libc::STDOUT_FILENO);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::dup2(libc::STDERR_FILENO, libc::STDOUT_FILENO) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(std::io::BufWriter::new(File::from_raw_fd(fd)))
    }
}

/// Plain lines on stderr; the server prefixes them with its own time and the job's span.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .without_time()
        .with_target(false)
        .try_init();
}

fn read_request() -> Result<WorkerRequest, WorkerError> {
    let mut line = String::new();
    if std::io::stdin().read_line(&mut line).map_err(WorkerError::Stdin)? == 0 {
        return Err(WorkerError::NoRequest);
    }
    serde_json::from_str(&line).map_err(WorkerError::BadRequest)
}

/// Reads commands from stdin for the rest of the process's life. EOF means the server is gone
/// (its end of the pipe closed): exit at once, whatever the engine is doing.
fn watch_stdin(stop: StopFlag) {
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut line = String::new();
        loop {
            line.clear();
            match stdin.lock().read_line(&mut line) {
                Ok(0) | Err(_) => std::process::exit(EXIT_ORPHANED.into()),
                Ok(_) => match Command::parse(&line) {
                    Some(command) => stop.request(command.stop_reason()),
                    None => tracing::warn!("ignoring unknown command {:?}", line.trim()),
                },
            }
        }
    });
}

/// Sends engine events to the server, one flushed JSON line each; a checkpoint is published in
/// the store before the server hears of it.
struct LineSink<'a, W: Write> {
    out: &'a mut W,
    store: &'a dyn FileStore,
    checkpoints: &'a Output,
}

impl<W: Write> EventSink for LineSink<'_, W> {
    fn emit(&mut self, mut event: Event) -> Result<(), EngineError> {
        match &mut event {
            // JSON cannot carry NaN, nor SQL store it.
            Event::Metrics { points } => points.retain(|p| p.value.is_finite()),
            Event::Checkpoint { key, .. } => inputs::publish(self.store, self.checkpoints, key)?,
            _ => {}
        }
        write_line(self.out, &WorkerMessage::Event(event)).map_err(|e| EngineError::Sink(e.to_string()))
    }
}

fn write_line<W: Write>(out: &mut W, message: &WorkerMessage) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, message)?;
    out.write_all(b"\n")?;
    out.flush()
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use prune_engine::MetricPoint;

    #[test]
    fn sink_writes_flushed_json_lines_without_nan_points() {
        let dir = tempfile::tempdir().unwrap();
        let store = prune_store::LocalStore::new(dir.path().to_path_buf());
        let mut buf = Vec::new();
        let checkpoints = Output { dir: dir.path().join("c"), key_prefix: "checkpoints/j/".into() };
        let mut sink = LineSink { out: &mut buf, store: &store, checkpoints: &checkpoints };
        let points = vec![
            MetricPoint { step: 1, name: "loss".into(), value: f64::NAN },
            MetricPoint { step: 1, name: "accuracy".into(), value: 0.5 },
        ];
        sink.emit(Event::Metrics { points }).unwrap();
        let text = String::from_utf8(buf).unwrap();
        assert_eq!(text.lines().count(), 1);
        let WorkerMessage::Event(Event::Metrics { points }) = serde_json::from_str(text.trim()).unwrap() else {
            panic!()
        };
        assert_eq!(points.len(), 1);
    }
}
