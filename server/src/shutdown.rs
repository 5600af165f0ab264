//! SIGTERM / SIGINT -> a cancellation token that the server, the streams and the scheduler
//! all watch.

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// Cancels `token` on the first SIGTERM or SIGINT.
pub fn cancel_on_signal(token: CancellationToken) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
            () = token.cancelled() => return,
        };
        tracing::info!("{name}: shutting down");
        token.cancel();
    });
    Ok(())
}
