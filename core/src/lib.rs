//! Pruning numerics and formats shared by the engine, the server and the client.
//! Nothing here links libtorch: masks are computed on plain `f32` slices.

pub mod bitmask;
pub mod compress;
pub mod mask;
pub mod schedule;
pub mod spec;
pub mod validate;

pub use schedule::Schedule;
pub use spec::JobSpec;
