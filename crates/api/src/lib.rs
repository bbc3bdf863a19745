//! shoal's shared vocabulary: the cluster data model, the stack-file (Compose) loader and the
//! types that travel over the REST API.
//!
//! # Layout
//! - [`ids`]: typed identifiers, validated when parsed.
//! - [`units`]: durations (`1m30s`), byte sizes (`50M`) and timestamps, read and written as
//!   docker does.
//! - [`node`], [`service`], [`task`], [`network`]: the objects a manager stores.
//! - [`security`]: capabilities, privileged and seccomp profiles.
//! - [`stack`]: loading, validating, merging and converting stack files.
//! - [`wire`]: request and response bodies of the REST API and the dispatcher.
//!
//! This crate is pure: no I/O, no async runtime, no system calls. Everything here is a function
//! of its inputs, so it is tested directly.

pub mod constraint;
pub mod ids;
pub mod network;
pub mod node;
pub mod secret;
pub mod security;
pub mod service;
pub mod stack;
pub mod task;
pub mod units;
pub mod wire;

pub use ids::{FileObjectId, NetworkId, NodeId, ServiceId, TaskId};
