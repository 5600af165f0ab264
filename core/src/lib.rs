//! Pruning numerics and formats shared by the engine, the server and the client.
//! Nothing here links libtorch: masks are computed on plain `f32` slices.

pub mod bitmask;
pub mod domain;
pub mod compress;
pub mod datasets;
pub mod mask;
pub mod schedule;
pub mod spec;
pub mod text;
pub mod validate;
pub mod worker_protocol;

pub use schedule::Schedule;
pub use spec::JobSpec;
