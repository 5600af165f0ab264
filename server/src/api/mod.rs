//! The gRPC surface: handlers, bearer-token authentication, message limits and the mapping
//! between stored records and `pruning.v1` messages.

pub mod auth;
pub mod convert;
pub mod dashboard;
pub mod filter;
pub mod message_limit;
pub mod service;
pub mod status;
pub mod views;
