//! shoal's agent: runs on every host, keeps a session with the leader, and makes the host run
//! what it is assigned.
//!
//! # Layout
//! - [`executor`]: the [`executor::Executor`] trait the agent drives, and the simulated
//!   executor (pretend containers, for dry runs and scale tests).
//! - [`reconcile`]: the pure core: given a task and what the executor observes, what to do.
//! - [`session`]: registration, heartbeats, assignments and batched status reports.

pub mod container;
pub mod exec;
pub mod executor;
pub mod health;
pub mod local_api;
pub mod reconcile;
pub mod session;
