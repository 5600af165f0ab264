//! One module per `prunectl` command. Each takes the parsed arguments and the [`Ctx`], prints
//! its result through [`Output`], and returns an error for `main` to report.

mod cancel;
mod delete;
mod download;
mod info;
mod list;
mod logs;
mod metrics;
mod report;
mod status;
mod submit;
mod sweep;
mod tensorboard;
mod unpack;
mod upload;
mod watch;

use anyhow::Result;
use prune_client::{Client, ConnectOptions};

use crate::cli::{Cli, Command, Global};
use crate::output::Output;

pub use sweep::SweepDidNotSucceed;
pub use watch::JobDidNotSucceed;

/// What every command may need: where the server is, and how to print.
pub struct Ctx {
    global: Global,
    pub out: Output,
}

impl Ctx {
    /// Connects only when a command needs the server (`unpack` does not).
    pub async fn connect(&self) -> Result<Client> {
        let options = ConnectOptions {
            token: self.global.token.clone(),
            ca_cert: self.global.ca_cert.clone(),
            timeout: Some(std::time::Duration::from_secs(self.global.timeout_secs.max(1))),
        };
        Ok(Client::connect_with(&self.global.addr, &options).await?)
    }
}

pub async fn run(cli: Cli) -> Result<()> {
    let ctx = Ctx { out: Output { json: cli.global.json }, global: cli.global };
    match cli.command {
        Command::Upload { file } => upload::run(&ctx, &file).await,
        Command::Submit { job, wait, labels, priority, request_id } => {
            let options = prune_client::SubmitOptions { labels: labels.into_iter().collect(), priority, request_id };
            submit::run(&ctx, &job, wait, &options).await
        }
        Command::Status { id } => status::run(&ctx, &id).await,
        Command::List { labels, state, filter } => list::run(&ctx, &labels, state, filter.as_deref()).await,
        Command::Delete { id } => delete::run(&ctx, &id).await,
        Command::Logs { id, follow } => logs::run(&ctx, &id, follow).await,
        Command::Info => info::run(&ctx).await,
        Command::Watch { id } => watch::run(&ctx, &id).await,
        Command::Cancel { id } => cancel::run(&ctx, &id).await,
        Command::Metrics { id, prefix } => metrics::run(&ctx, &id, prefix.as_deref()).await,
        Command::Report { id } => report::run(&ctx, &id).await,
        Command::Download { id, output, format, raw } => {
            download::run(&ctx, &id, &output, format.map(|f| f.as_str()), raw).await
        }
        Command::Tensorboard { id, logdir } => tensorboard::run(&ctx, &id, &logdir).await,
        Command::Sweep { job, sparsities, output } => sweep::run(&ctx, &job, &sparsities.0, &output).await,
        Command::Unpack { input, output } => unpack::run(&ctx, &input, &output),
    }
}
