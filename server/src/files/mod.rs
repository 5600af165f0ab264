//! Files by key: resumable, verified uploads into the file store's `blobs/` (the store itself,
//! `prune-store`, holds blobs, checkpoints and artifacts).

pub mod uploads;
