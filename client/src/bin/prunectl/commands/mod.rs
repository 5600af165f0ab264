//! One module per `prunectl` command. Each takes the parsed arguments and the [`Ctx`], prints
//! its result through [`Output`], and returns an error for `main` to report.

mod cancel;
mod download;
mod list;
mod metrics;
mod report;
mod status;
mod submit;
mod tensorboard;
mod unpack;
mod upload;
mod watch;

use anyhow::Result;
use prune_client::{Client, ConnectOptions};

use crate::cli::{Cli, Command, Global};
use crate::output::Output;

pub use watch::JobDidNotSucceed;

/// What every command may need: where the server is, and how to print.
pub struct Ctx {
    global: Global,
    pub out: Output,
}

impl Ctx {
    /// Connects only when a command needs the server (`unpack` does not).
    pub async fn connect(&self) -> Result<Client> {
        let options = ConnectOptions { token: self.global.token.clone(), ca_cert: self.global.ca_cert.clone() };
        Ok(Client::connect_with(&self.global.addr, &options).await?)
    }
}

pub async fn run(cli: Cli) -> Result<()> {
    let ctx = Ctx { out: Output { json: cli.global.json }, global: cli.global };
    match cli.command {
        Command::Upload { file } => upload::run(&ctx, &file).await,
        Command::Submit { job, wait } => submit::run(&ctx, &job, wait).await,
        Command::Status { id } => status::run(&ctx, &id).await,
        Command::List => list::run(&ctx).await,
        Command::Watch { id } => watch::run(&ctx, &id).await,
        Command::Cancel { id } => cancel::run(&ctx, &id).await,
        Command::Metrics { id, prefix } => metrics::run(&ctx, &id, prefix.as_deref()).await,
        Command::Report { id } => report::run(&ctx, &id).await,
        Command::Download { id, output, format, raw } => {
            download::run(&ctx, &id, &output, format.map(|f| f.as_str()), raw).await
        }
        Command::Tensorboard { id, logdir } => tensorboard::run(&ctx, &id, &logdir).await,
        Command::Unpack { input, output } => unpack::run(&ctx, &input, &output),
    }
}
