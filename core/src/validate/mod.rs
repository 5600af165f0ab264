//! Parsing and validating job specs, with every error tied to the field it is about.
//!
//! Users write job files by hand, so a rejected job must say *which* field is wrong, what
//! is wrong with it and what is allowed, and must say it for every problem at once rather than
//! one per submit. Field paths use the job file's own spelling (`pruning.schedule.end_step`,
//! `pruning.overrides[1].match`, `model.sequential[2].in`).
//!
//! "Parse, don't validate": [`parse_toml`] / [`parse_json`] read the wire document
//! ([`JobSpec`], strings for the named choices), and [`validate`] checks every rule of it and
//! returns the typed [`Job`](crate::job::Job) the engine runs, with enums for the choices and
//! the pruning method resolved. Modules: `parse` (documents and serde errors), `check` (the
//! rules, per section, and the typed result), `pruning` (the pruning section's rules and method
//! resolution), `warnings` (submit-time warnings and step arithmetic).

use std::fmt;

use serde::Serialize;

use crate::options::{BlockPooling, BuiltinData, ExportFormat, Loss, Optimizer, Scope, SparseFormat};

mod analysis;
mod check;
mod language;
mod layers;
mod parse;
mod pruning;
mod tracked;
mod warnings;

pub use analysis::MAX_LEVELS;
pub use check::{is_blob_id, is_device, validate};
pub use language::{is_plain_file_name, MAX_CALIBRATION_SAMPLES, MAX_SEQ_LEN};
pub use layers::MAX_RESIDUAL_DEPTH;
pub use parse::{parse_json, parse_toml};
pub use tracked::{outside_service_loop, parse_tracked, tracked, with_model};
pub use warnings::{steps_per_epoch, warnings};

/// Longest job name accepted, in characters.
pub const MAX_NAME_CHARS: usize = 256;
/// Most training epochs accepted: beyond this a job is a typo, not an experiment.
pub const MAX_EPOCHS: i64 = 100_000;
/// Largest batch size accepted.
pub const MAX_BATCH_SIZE: i64 = 1 << 20;
/// Most classes a synthetic data set may have.
pub const MAX_CLASSES: i64 = 1_000_000;
/// Most elements one tensor (a synthetic data set, a built-in layer's weight) may have, so a
/// typo cannot make the server allocate terabytes.
pub const MAX_ELEMENTS: i64 = 1 << 31;
/// Most intra-op threads a job may ask for.
pub const MAX_THREADS: i64 = 256;

pub const OPTIMIZERS: &[&str] = Optimizer::NAMES;
pub const LOSSES: &[&str] = Loss::NAMES;
pub const BUILTIN_DATA: &[&str] = BuiltinData::NAMES;
pub const BLOCK_POOLINGS: &[&str] = BlockPooling::NAMES;
pub const SCOPES: &[&str] = Scope::NAMES;
pub const EXPORT_FORMATS: &[&str] = ExportFormat::NAMES;
pub const SPARSE_FORMATS: &[&str] = SparseFormat::NAMES;

/// One problem with a job spec. `field` is a path in the job file (`pruning.schedule.end_step`);
/// it is empty when the problem is with the document as a whole (a TOML syntax error).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        FieldError { field: field.into(), reason: reason.into() }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.reason)
        } else {
            write!(f, "{}: {}", self.field, self.reason)
        }
    }
}

/// Every problem found in a job spec; displays one `field: reason` line per problem.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}", lines(.0))]
pub struct SpecErrors(pub Vec<FieldError>);

fn lines(errors: &[FieldError]) -> String {
    errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests;
