//! `prunectl sweep`: one job per final sparsity of one job file, then a table and a Pareto
//! plot of what each reached. [`plan`] turns the job file into the jobs to submit (pure, checked
//! before anything is uploaded); [`results`] turns the finished jobs into rows and the CSV.
//! The network steps are the ordinary ones (upload, CreateJob, WatchJob, GetReport), so any
//! gRPC client can do the same: see `docs/sweeps.md`.

pub mod plan;
pub mod results;

pub use plan::{parse_sparsities, PlannedJob, SparsitiesError, LABEL_KEY};
pub use results::{Row, CSV_HEADER};
