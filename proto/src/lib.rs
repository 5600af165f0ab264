//! The `pruning.v1` gRPC API, generated from `proto/pruning/v1/pruning.proto`, and its
//! conversions to and from the domain types of `prune_core` ([`conversions`]).
//!
//! Clients use [`pruning_service_client::PruningServiceClient`]; the server implements
//! [`pruning_service_server::PruningService`].

#![allow(clippy::large_enum_variant, clippy::doc_lazy_continuation)]

tonic::include_proto!("pruning.v1");

pub mod conversions;

/// HTTP/2 flow control, the same on the server and in the client. h2's default window of 64 KiB
/// lets a peer send 64 KiB before it waits a round trip for more credit: an upload of 1 MiB
/// messages crawled at 74 MB/s on loopback. Larger windows only bound what a peer may send
/// ahead of what the other reads.
pub const HTTP2_STREAM_WINDOW: u32 = 8 << 20;
pub const HTTP2_CONNECTION_WINDOW: u32 = 16 << 20;
/// Frames a peer may send: 1 MiB chunks go in a few frames rather than 64 of h2's 16 KiB.
pub const HTTP2_MAX_FRAME: u32 = 1 << 20;

/// The encoded `FileDescriptorSet` of `pruning.proto`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("pruning_descriptor");
