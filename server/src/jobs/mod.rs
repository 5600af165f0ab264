//! A job's life: admission (request -> typed spec -> queued row), the scheduler loop that owns
//! running attempts, preparing an attempt's request, and recording what an attempt reports.

pub mod admission;
pub mod attempt;
pub mod heartbeat;
pub mod ids;
pub mod live;
pub mod prepare;
pub mod retention;
pub mod scheduler;
pub mod tracked;
