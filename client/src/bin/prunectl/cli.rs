//! The command line, as `docs/job-spec.md` fixes it: names and flags are a contract.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "prunectl",
    version,
    about = "Submit, watch and fetch neural-network pruning jobs of a prune server",
    after_help = "Exit status: 0 on success, 1 on an error, 2 on bad usage, 3 when a watched job ended \
                  FAILED or CANCELLED."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command takes, before or after its name.
#[derive(Debug, Args)]
pub struct Global {
    /// Server address (`https://host:port` for a TLS server)
    #[arg(long, global = true, env = "PRUNE_ADDR", default_value = prune_client::DEFAULT_ADDR)]
    pub addr: String,
    /// PEM certificate of the authority that signed the server's TLS certificate (default: the
    /// system's trusted roots)
    #[arg(long, global = true, env = "PRUNE_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// Bearer token sent with every call
    #[arg(long, global = true, env = "PRUNE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print one JSON document (JSON lines for streams) on stdout instead of text
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Upload a file (model, weights, data) and print its blob id
    Upload { file: PathBuf },
    /// Validate a job file, upload the local files it names, create the job and print its id
    Submit {
        job: PathBuf,
        /// Then watch the job until it ends (exit status as `watch`)
        #[arg(long)]
        wait: bool,
    },
    /// Show a job: state, progress, sparsity, loss/accuracy, failure reason, warnings
    Status { id: String },
    /// List jobs, newest first
    List,
    /// Follow a job until it ends; exit 0 only if it SUCCEEDED
    Watch { id: String },
    /// Cancel a queued or running job
    Cancel { id: String },
    /// Print a job's time series (sparsity/<param>, loss, accuracy, val_accuracy, learning_rate)
    Metrics {
        id: String,
        /// Only series whose name starts with this, e.g. `sparsity/`
        #[arg(long)]
        prefix: Option<String>,
    },
    /// Show what a finished job pruned and what its artifacts weigh
    Report { id: String },
    /// Download a finished job's artifact (resumable, sha256-verified)
    Download {
        id: String,
        /// Where to write the file (`PATH.part` holds an unfinished download)
        #[arg(short = 'o', long = "output", value_name = "PATH")]
        output: PathBuf,
        /// Which export (default: the job's first)
        #[arg(long, value_enum)]
        format: Option<Format>,
        /// Keep the bytes as served (compressed) instead of writing the decompressed file
        #[arg(long)]
        raw: bool,
    },
    /// Write a job's metrics as a TensorBoard event file
    Tensorboard {
        id: String,
        #[arg(long, value_name = "DIR")]
        logdir: PathBuf,
    },
    /// Turn a bitmask-packed safetensors file (.zst/.gz accepted) into a dense one; no server needed
    Unpack {
        input: PathBuf,
        #[arg(short = 'o', long = "output", value_name = "PATH")]
        output: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Safetensors,
    Torchscript,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Safetensors => "safetensors",
            Format::Torchscript => "torchscript",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_go_after_the_command_too() {
        let cli = Cli::try_parse_from(["prunectl", "status", "job-1", "--json", "--addr", "http://h:1"]).unwrap();
        assert!(cli.global.json);
        assert_eq!(cli.global.addr, "http://h:1");
        assert!(matches!(cli.command, Command::Status { id } if id == "job-1"));
    }

    #[test]
    fn download_takes_the_contract_flags() {
        let cli =
            Cli::try_parse_from(["prunectl", "download", "job-1", "-o", "m.pt", "--format", "torchscript", "--raw"])
                .unwrap();
        match cli.command {
            Command::Download { output, format, raw, .. } => {
                assert_eq!(output, PathBuf::from("m.pt"));
                assert_eq!(format.unwrap().as_str(), "torchscript");
                assert!(raw);
            }
            other => panic!("{other:?}"),
        }
    }
}
