//! Tasks: one scheduled instance of a service, and the state machine they move through.
//!
//! States only move forward (see [`TaskState`]). Each field has one writer: the orchestrator
//! writes `desired_state` (and creates tasks), the scheduler writes `node_id` and moves a task
//! from pending to assigned, and the node's agent (through the dispatcher) writes `status` from
//! accepted onwards.

use crate::ids::{NodeId, ServiceId, TaskId};
use crate::network::NetworkAttachment;
use crate::service::TaskTemplate;
use crate::units::Timestamp;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The life of a task, in order. A task's observed state never moves backwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Created by the orchestrator.
    New,
    /// Waiting for the scheduler (and, when nothing fits, saying why).
    Pending,
    /// Placed on a node.
    Assigned,
    /// The node's agent took it.
    Accepted,
    /// Getting its image, mounts and network ready.
    Preparing,
    /// The container is being started.
    Starting,
    /// The container runs.
    Running,
    /// It exited with status 0.
    Complete,
    /// It was stopped on purpose.
    Shutdown,
    /// It exited non-zero or could not start.
    Failed,
    /// The node refused it (for example a missing image).
    Rejected,
    /// Desired state only: the task is to be deleted once it is down.
    Remove,
    /// Its node went down; nothing more will be heard of it.
    Orphaned,
}

impl TaskState {
    /// True once nothing runs any more.
    pub fn is_terminal(self) -> bool {
        self >= TaskState::Complete
    }
    /// True for the ends that count as failures for a restart policy.
    pub fn is_failure(self) -> bool {
        matches!(self, TaskState::Failed | TaskState::Rejected)
    }
    /// The name as shown in tables.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::New => "new",
            TaskState::Pending => "pending",
            TaskState::Assigned => "assigned",
            TaskState::Accepted => "accepted",
            TaskState::Preparing => "preparing",
            TaskState::Starting => "starting",
            TaskState::Running => "running",
            TaskState::Complete => "complete",
            TaskState::Shutdown => "shutdown",
            TaskState::Failed => "failed",
            TaskState::Rejected => "rejected",
            TaskState::Remove => "remove",
            TaskState::Orphaned => "orphaned",
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the task is observed to be doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskStatus {
    /// Observed state.
    pub state: TaskState,
    /// When it entered that state.
    pub since: Timestamp,
    /// A short word on what happens (`scheduled`, `started`, ...), or why it waits.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// What went wrong, for failed and rejected tasks.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub err: String,
    /// Exit status of the container, once it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The container's id on its node.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub container_id: String,
    /// Its health check's verdict, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
}

/// What a container's health check says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// No check has passed yet.
    Starting,
    /// The last check passed.
    Healthy,
    /// `retries` checks in a row failed.
    Unhealthy,
}

impl Health {
    /// The word shown in tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Starting => "starting",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        }
    }

    /// As docker shows it beside a state: `health: starting`, `healthy`, `unhealthy`.
    pub fn label(self) -> &'static str {
        match self {
            Health::Starting => "health: starting",
            other => other.as_str(),
        }
    }
}

impl TaskStatus {
    /// A status in `state` since `at` with a message.
    pub fn new(state: TaskState, at: Timestamp, message: impl Into<String>) -> Self {
        TaskStatus {
            state,
            since: at,
            message: message.into(),
            err: String::new(),
            exit_code: None,
            container_id: String::new(),
            health: None,
        }
    }
}

/// One scheduled instance of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Task {
    /// Its id.
    pub id: TaskId,
    /// Store revision of its last change.
    pub version: u64,
    /// The service it belongs to.
    pub service_id: ServiceId,
    /// The service's name, for display.
    pub service_name: String,
    /// Slot number for replicated services (1-based); 0 for global ones.
    pub slot: u64,
    /// The node it is placed on. For global services it is set at creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<NodeId>,
    /// The service's `spec_version` this task was made from.
    pub spec_version: u64,
    /// A copy of the template it was made from.
    pub spec: TaskTemplate,
    /// What the orchestrator wants: running, shutdown or remove.
    pub desired_state: TaskState,
    /// What it is observed doing.
    pub status: TaskStatus,
    /// When it was created.
    pub created_at: Timestamp,
    /// Its addresses on the service's networks, allocated when it is created.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<NetworkAttachment>,
}

impl Task {
    /// The task as the API shows it: registry credentials without their password.
    pub fn redacted(mut self) -> Task {
        if let Some(a) = &mut self.spec.container.registry_auth {
            a.password = None;
        }
        self
    }

    /// The name docker gives this task: `service.slot` or `service.nodeid`.
    pub fn name(&self) -> String {
        if self.slot > 0 {
            format!("{}.{}", self.service_name, self.slot)
        } else {
            let node = self.node_id.as_ref().map(|n| n.short()).unwrap_or("");
            format!("{}.{}", self.service_name, node)
        }
    }
    /// True when the orchestrator still wants it to run.
    pub fn wanted(&self) -> bool {
        self.desired_state <= TaskState::Running
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_are_ordered_as_the_lifecycle() {
        assert!(TaskState::New < TaskState::Pending);
        assert!(TaskState::Running < TaskState::Complete);
        assert!(TaskState::Failed.is_terminal());
        assert!(!TaskState::Running.is_terminal());
        assert!(TaskState::Rejected.is_failure());
        assert!(!TaskState::Complete.is_failure());
    }
}
