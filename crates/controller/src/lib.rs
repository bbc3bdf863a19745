//! shoal's manager: the Raft-replicated store and everything that runs on the leader.
//!
//! # Layout
//! - [`store`]: the cluster's objects and the [`store::Command`]s that change them
//!   (deterministic, applied in log order).
//! - [`raft`]: the Raft node (raft-rs) and its durable log (redb).
//! - [`watch`]: the event hub, from any held revision.
//! - [`orchestrator`], [`scheduler`]: pure decision cores of the leader loops.
//! - [`allocator`]: network subnets, task addresses and virtual IPs, as the log applies.
//! - [`dispatcher`]: agent sessions, heartbeats and assignments.
//! - [`pki`]: the cluster CA, node certificates, TLS configurations; [`renewal`]: keeping
//!   certificates fresh and rotating the root.
//! - [`manager`]: wiring, the leader loops' drivers.
//! - [`api`]: the REST API (axum); [`serve`]: HTTP/1.1 with header and idle timeouts.

pub mod allocator;
pub mod api;
pub mod dispatcher;
pub mod logs;
pub mod manager;
pub mod orchestrator;
pub mod pki;
pub mod raft;
pub mod renewal;
pub mod scheduler;
pub mod seal;
pub mod serve;
pub mod store;
pub mod watch;

pub use manager::{Manager, ManagerConfig};
