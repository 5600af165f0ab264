//! Pruning numerics and formats shared by the engine, the server and the client.
//! Nothing here links libtorch: masks are computed on plain `f32` slices.
//!
//! Job specs come in two forms: the wire document [`JobSpec`] (`spec`, as users write it) and
//! the typed [`Job`] (`job`) that `validate::validate` parses it into, with the named choices
//! of `options` and the pruning [`PruningMethod`] of `method`.

pub mod bitmask;
pub mod budget;
pub mod channels;
pub mod compress;
pub mod datasets;
pub mod domain;
pub mod files;
pub mod job;
pub mod llm;
pub mod mask;
pub mod method;
pub mod options;
pub mod schedule;
pub mod select;
pub mod sharded;
pub mod spec;
pub mod tensorfile;
pub mod tensorstream;
pub mod text;
pub mod validate;
pub mod worker_protocol;

pub use job::Job;
pub use method::PruningMethod;
pub use schedule::Schedule;
pub use spec::JobSpec;
