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
    /// Deadline of each call that is not a stream, in seconds
    #[arg(long, global = true, env = "PRUNE_TIMEOUT_SECS", default_value_t = 60)]
    pub timeout_secs: u64,
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
        /// A label `KEY=VALUE` (repeatable)
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Within your jobs, higher starts first (-1000 to 1000)
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        priority: i32,
        /// Idempotency key: submitting again with the same id returns the same job (default: a
        /// fresh id, kept across the automatic retries of this submission)
        #[arg(long)]
        request_id: Option<String>,
    },
    /// Show a job: state, progress, sparsity, loss/accuracy, failure reason, warnings
    Status { id: String },
    /// List jobs, newest first
    List {
        /// Only jobs with this label `KEY=VALUE` (repeatable; all must match)
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Only jobs in this state (any case: `running`, `RUNNING`)
        #[arg(long, value_enum, ignore_case = true)]
        state: Option<StateArg>,
        /// An AIP-160 filter, e.g. `labels.team = "vision" AND state = RUNNING`
        #[arg(long)]
        filter: Option<String>,
    },
    /// Delete a finished job with its metrics, logs, checkpoints and artifacts
    Delete { id: String },
    /// Print a job's worker log (every attempt); `--follow` keeps printing until the job ends
    Logs {
        id: String,
        #[arg(short = 'f', long)]
        follow: bool,
    },
    /// Show the server's version, limits, devices and disk use
    Info,
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
    /// Submit a job file once per final sparsity, watch the jobs together, then write DIR/sweep.csv
    /// and a Pareto plot (DIR/pareto.png, DIR/pareto.svg) of accuracy against artifact size
    Sweep {
        job: PathBuf,
        /// Final sparsities, comma-separated, each in [0, 1), e.g. 0.5,0.7,0.8,0.9,0.95
        #[arg(long, value_name = "LIST", value_parser = parse_sparsities, allow_hyphen_values = true)]
        sparsities: Sparsities,
        /// Directory for sweep.csv, pareto.png and pareto.svg (created if missing)
        #[arg(short = 'o', long = "output", value_name = "DIR", value_parser = parse_output_dir)]
        output: PathBuf,
    },
    /// Turn a bitmask-packed safetensors file (.zst/.gz accepted) into a dense one; no server needed
    Unpack {
        input: PathBuf,
        #[arg(short = 'o', long = "output", value_name = "PATH")]
        output: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StateArg {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl StateArg {
    pub fn as_str(self) -> &'static str {
        match self {
            StateArg::Queued => "QUEUED",
            StateArg::Running => "RUNNING",
            StateArg::Succeeded => "SUCCEEDED",
            StateArg::Failed => "FAILED",
            StateArg::Cancelled => "CANCELLED",
        }
    }
}

/// `KEY=VALUE`.
fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("expected KEY=VALUE, got `{text}`")),
    }
}

/// `--sparsities`: parsed and checked by the argument parser, so a bad list is bad usage (exit 2).
#[derive(Debug, Clone, PartialEq)]
pub struct Sparsities(pub Vec<f64>);

fn parse_sparsities(text: &str) -> Result<Sparsities, String> {
    prune_client::sweep::parse_sparsities(text).map(Sparsities).map_err(|e| e.to_string())
}

/// `sweep -o DIR`: a directory, or nothing yet (it is created); an existing file is refused
/// before anything is submitted.
fn parse_output_dir(text: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(text);
    if text.is_empty() {
        return Err("an empty path".into());
    }
    if path.exists() && !path.is_dir() {
        return Err(format!("{text} exists and is not a directory"));
    }
    Ok(path)
}

/// `download --format`: an export, or a file a sensitivity analysis or a language model's pass
/// writes. Spelled on the
/// command line as the server names the artifact's format (snake_case, not clap's kebab-case).
#[derive(Debug, Clone, Copy, PartialEq, ValueEnum)]
pub enum Format {
    Safetensors,
    Torchscript,
    /// `sensitivity.png`: accuracy against sparsity, one line per tensor
    #[value(name = "sensitivity_plot")]
    SensitivityPlot,
    /// `suggested_overrides.toml`: `[[pruning.overrides]]` within the target accuracy drop
    #[value(name = "suggested_overrides")]
    SuggestedOverrides,
    /// `reconstruction.png`: a language model's reconstruction error per layer and Linear
    #[value(name = "reconstruction_plot")]
    ReconstructionPlot,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Safetensors => "safetensors",
            Format::Torchscript => "torchscript",
            Format::SensitivityPlot => "sensitivity_plot",
            Format::SuggestedOverrides => "suggested_overrides",
            Format::ReconstructionPlot => "reconstruction_plot",
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

    #[test]
    fn download_formats_are_spelled_as_the_server_names_them() {
        for format in Format::value_variants() {
            let name = format.to_possible_value().unwrap();
            assert_eq!(name.get_name(), format.as_str());
            let cli =
                Cli::try_parse_from(["prunectl", "download", "j", "-o", "f", "--format", format.as_str()]).unwrap();
            assert!(matches!(cli.command, Command::Download { format: Some(f), .. } if f == *format));
        }
        let names: Vec<&str> = Format::value_variants().iter().map(|f| f.as_str()).collect();
        assert_eq!(
            names,
            ["safetensors", "torchscript", "sensitivity_plot", "suggested_overrides", "reconstruction_plot"]
        );
        let err =
            Cli::try_parse_from(["prunectl", "download", "j", "-o", "f", "--format", "sensitivity-plot"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn sweep_checks_its_list_and_directory_as_usage() {
        let cli = Cli::try_parse_from(["prunectl", "sweep", "j.toml", "--sparsities", "0.9,0.5", "-o", "out"]).unwrap();
        match cli.command {
            Command::Sweep { sparsities, output, .. } => {
                assert_eq!(sparsities, Sparsities(vec![0.5, 0.9]));
                assert_eq!(output, PathBuf::from("out"));
            }
            other => panic!("{other:?}"),
        }
        for bad in ["", "1.0", "-0.1", "0.5,0.5", "0.5,x"] {
            let err =
                Cli::try_parse_from(["prunectl", "sweep", "j.toml", "--sparsities", bad, "-o", "out"]).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad}: {err}");
        }
        let file = tempfile::NamedTempFile::new().unwrap();
        let path = file.path().to_str().unwrap();
        let err = Cli::try_parse_from(["prunectl", "sweep", "j.toml", "--sparsities", "0.5", "-o", path]).unwrap_err();
        assert!(err.to_string().contains("exists and is not a directory"), "{err}");
    }
}
