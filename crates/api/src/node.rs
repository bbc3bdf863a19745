//! Nodes: the hosts of a cluster. A node's spec (role, availability, labels) is written by
//! operators through the API; its description and status are written by the dispatcher from what
//! the node's agent reports.

use crate::ids::NodeId;
use crate::units::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Whether a node takes part in managing the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    /// Runs tasks only.
    #[default]
    Worker,
    /// Holds the Raft log and may lead.
    Manager,
}

/// Whether the scheduler may place tasks on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Availability {
    /// New tasks may be placed here.
    #[default]
    Active,
    /// No new tasks; running ones stay.
    Pause,
    /// No tasks: running ones are moved elsewhere.
    Drain,
}

/// Liveness of a node as the dispatcher sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Not heard from since the manager started.
    #[default]
    Unknown,
    /// Heartbeating.
    Ready,
    /// Missed its heartbeats.
    Down,
}

impl fmt::Display for NodeRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeRole::Worker => "worker",
            NodeRole::Manager => "manager",
        })
    }
}

impl fmt::Display for Availability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Availability::Active => "active",
            Availability::Pause => "pause",
            Availability::Drain => "drain",
        })
    }
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeState::Unknown => "unknown",
            NodeState::Ready => "ready",
            NodeState::Down => "down",
        })
    }
}

/// What operators set on a node.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// Manager or worker.
    pub role: NodeRole,
    /// Whether tasks may be placed here.
    pub availability: Availability,
    /// Labels for placement constraints (`node.labels.KEY`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Capacity a node offers to tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeResources {
    /// CPUs in billionths (as docker's NanoCPUs).
    pub nano_cpus: u64,
    /// Memory in bytes.
    pub memory_bytes: u64,
}

/// What the node's agent reports about its host.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeDescription {
    /// The host's name.
    pub hostname: String,
    /// Operating system, as Go names it (`linux`).
    pub os: String,
    /// Architecture, as Go names it (`amd64`, `arm64`).
    pub arch: String,
    /// Capacity for tasks.
    pub resources: NodeResources,
    /// Labels of the engine (`engine.labels.KEY` in constraints).
    #[serde(default)]
    pub engine_labels: BTreeMap<String, String>,
    /// The executor running tasks (`simulated`, later `builtin`, `runc`, ...).
    #[serde(default)]
    pub executor: String,
    /// The version of shoald on the node (`node ls`' ENGINE VERSION).
    #[serde(default)]
    pub engine_version: String,
}

/// Liveness and the address the node was last heard from.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeStatus {
    /// Ready, down or unknown.
    pub state: NodeState,
    /// Why it is in that state.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// The underlay address the agent gave.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub addr: String,
    /// When the state last changed.
    pub since: Timestamp,
}

/// A manager node's part in Raft.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManagerStatus {
    /// Raft id of this manager.
    pub raft_id: u64,
    /// Address other managers reach it at.
    pub addr: String,
}

/// A host of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// Its id.
    pub id: NodeId,
    /// Store revision of its last change.
    pub version: u64,
    /// When it first registered.
    pub created_at: Timestamp,
    /// Operator-set fields.
    pub spec: NodeSpec,
    /// Agent-reported facts.
    pub description: NodeDescription,
    /// Liveness.
    pub status: NodeStatus,
    /// Set on managers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manager_status: Option<ManagerStatus>,
    /// Its certificate, as the managers last issued it (none before its first renewal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<NodeCertificate>,
}

/// What the managers know of a node's certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCertificate {
    /// The subject of the root CA that signed it.
    pub issuer: String,
    /// When it expires, seconds since the epoch.
    pub not_after: i64,
}

impl Node {
    /// True when the scheduler may place new tasks here.
    pub fn schedulable(&self) -> bool {
        self.status.state == NodeState::Ready && self.spec.availability == Availability::Active
    }
}
