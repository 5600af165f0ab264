//! The `pruning.v1` gRPC API, generated from `proto/pruning/v1/pruning.proto`, and its
//! conversions to and from the domain types of `prune_core` ([`conversions`]).
//!
//! Clients use [`pruning_service_client::PruningServiceClient`]; the server implements
//! [`pruning_service_server::PruningService`].

#![allow(clippy::large_enum_variant, clippy::doc_lazy_continuation)]

tonic::include_proto!("pruning.v1");

pub mod conversions;

/// The encoded `FileDescriptorSet` of `pruning.proto`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("pruning_descriptor");
