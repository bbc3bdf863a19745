//! Services: what users declare. A [`ServiceSpec`] is the desired state; the manager turns it
//! into tasks. Defaults follow Docker Swarm's, so a stack file means the same thing on both.

use crate::ids::ServiceId;
use crate::units::{Duration, Timestamp};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Label that marks the stack a service or network belongs to (docker's name, for
/// compatibility with tools that read it).
pub const STACK_LABEL: &str = "com.docker.stack.namespace";

/// Replicated (a number of slots) or global (one task per eligible node).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum ServiceMode {
    /// This many tasks, in slots 1..=replicas.
    Replicated {
        /// Desired number of tasks.
        replicas: u64,
    },
    /// One task on every node that passes the placement constraints.
    Global,
}

impl Default for ServiceMode {
    fn default() -> Self {
        ServiceMode::Replicated { replicas: 1 }
    }
}

/// A check run inside the container to tell whether it is healthy.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// `["CMD", ...]`, `["CMD-SHELL", "..."]` or `["NONE"]`.
    pub test: Vec<String>,
    /// Time between checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// Time a check may take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Failures in a row before unhealthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u64>,
    /// Grace time after start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_period: Option<Duration>,
    /// Interval during the start period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_interval: Option<Duration>,
}

/// Kind of a mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MountKind {
    /// A named (or anonymous) volume.
    Volume,
    /// A host path.
    Bind,
    /// A memory file system.
    Tmpfs,
}

/// A file system mounted into the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mount {
    /// Volume, bind or tmpfs.
    #[serde(rename = "type")]
    pub kind: MountKind,
    /// Volume name or host path; empty for tmpfs and anonymous volumes.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
    /// Path inside the container.
    pub target: String,
    /// Mounted read-only.
    #[serde(default)]
    pub read_only: bool,
    /// tmpfs size limit in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmpfs_size: Option<u64>,
}

/// A secret or config file given to the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileReference {
    /// Name of the cluster object.
    pub source: String,
    /// Path inside the container (a bare name goes under /run/secrets for secrets).
    pub target: String,
    /// Owner uid.
    pub uid: String,
    /// Owner gid.
    pub gid: String,
    /// File mode.
    pub mode: u32,
}

/// What runs in each task.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerSpec {
    /// Image reference.
    pub image: String,
    /// Replaces the image's entrypoint when not empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Replaces the image's command when not empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// `KEY=VALUE` entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// Working directory.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub dir: String,
    /// `user`, `uid` or `uid:gid`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    /// Container hostname (docker's templates such as `{{.Node.ID}}` are kept as written).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hostname: String,
    /// Container labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Mounts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
    /// Health check; `None` keeps the image's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<HealthCheck>,
    /// Signal that asks the process to stop.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stop_signal: String,
    /// Time between the stop signal and SIGKILL (default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_grace_period: Option<Duration>,
    /// Secrets given as files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<FileReference>,
    /// Configs given as files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub configs: Vec<FileReference>,
    /// Root file system read-only.
    #[serde(default)]
    pub read_only: bool,
    /// Allocate a terminal.
    #[serde(default)]
    pub tty: bool,
    /// Keep stdin open.
    #[serde(default)]
    pub open_stdin: bool,
    /// Credentials for pulling the image (`--with-registry-auth`), given to the nodes that
    /// run its tasks; the API shows them without the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_auth: Option<RegistryAuth>,
    /// Run an init process as PID 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<bool>,
    /// Capabilities added to Docker's default set (`NET_ADMIN`, `ALL`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    /// Capabilities dropped from it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_drop: Vec<String>,
    /// Every capability and device, no seccomp filter; refused unless the cluster allows it
    /// (`cluster init|update --allow-privileged`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub privileged: bool,
    /// The seccomp filter (`security_opt: seccomp=...`).
    #[serde(default, skip_serializing_if = "crate::security::Seccomp::is_default")]
    pub seccomp: crate::security::Seccomp,
}

/// Limits or reservations of CPU, memory and processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceAmounts {
    /// CPUs in billionths (`cpus: '0.5'` is 500000000).
    #[serde(default)]
    pub nano_cpus: u64,
    /// Bytes of memory.
    #[serde(default)]
    pub memory_bytes: u64,
    /// Maximum number of processes (limits only).
    #[serde(default)]
    pub pids: u64,
}

/// Resource limits (enforced on the container) and reservations (used by the scheduler).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Enforced ceilings.
    #[serde(default)]
    pub limits: ResourceAmounts,
    /// What the scheduler sets aside on the chosen node.
    #[serde(default)]
    pub reservations: ResourceAmounts,
}

/// When a finished task is replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartCondition {
    /// Never.
    None,
    /// Only when it failed (non-zero exit, rejected, or could not start).
    OnFailure,
    /// Whenever it stopped.
    #[default]
    Any,
}

/// How and how often finished tasks are replaced (defaults as Swarm: any, 5s, unlimited).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartPolicy {
    /// When to restart.
    pub condition: RestartCondition,
    /// Wait between the end of a task and the start of its replacement.
    pub delay: Duration,
    /// Restarts allowed within `window` (all time when the window is zero); 0 is unlimited.
    #[serde(default)]
    pub max_attempts: u64,
    /// Window over which attempts are counted; zero means since the service was created.
    #[serde(default)]
    pub window: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            condition: RestartCondition::Any,
            delay: Duration::from_secs(5),
            max_attempts: 0,
            window: Duration::default(),
        }
    }
}

/// A placement preference: spread tasks evenly over the values of a node label.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlacementPreference {
    /// The descriptor to spread over, as `node.labels.zone`.
    pub spread: String,
}

/// Where tasks may run.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    /// Expressions such as `node.role == manager` or `node.labels.zone != b`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<String>,
    /// Spread preferences, in order of importance.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preferences: Vec<PlacementPreference>,
    /// At most this many tasks of the service on one node; 0 is unlimited.
    #[serde(default)]
    pub max_replicas_per_node: u64,
}

/// A service's attachment to a network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkAttachmentSpec {
    /// Network name (or id).
    pub target: String,
    /// Extra DNS names on that network.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

/// The template every task of a service is made from.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskTemplate {
    /// The container.
    pub container: ContainerSpec,
    /// Limits and reservations.
    #[serde(default)]
    pub resources: Resources,
    /// When to replace finished tasks.
    #[serde(default)]
    pub restart_policy: RestartPolicy,
    /// Where tasks may go.
    #[serde(default)]
    pub placement: Placement,
    /// Networks to attach.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<NetworkAttachmentSpec>,
    /// Bumped by `service update --force` to replace tasks whose spec did not change.
    #[serde(default)]
    pub force_update: u64,
    /// Where the containers' output goes (Swarm's `TaskTemplate.LogDriver`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_driver: Option<LogDriver>,
}

/// A logging driver and its options.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogDriver {
    /// `json-file` (the default) or `none`; others are recorded but run as `json-file`.
    pub name: String,
    /// Options: `max-size` (`10m`) and `max-file` (`3`) for json-file.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
}

/// The drivers a node runs.
pub const LOG_DRIVERS: [&str; 2] = ["json-file", "none"];

/// What to do when an update fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureAction {
    /// Stop updating.
    #[default]
    Pause,
    /// Keep going.
    Continue,
    /// Go back to the previous spec.
    Rollback,
}

/// Whether an old task stops before its replacement starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateOrder {
    /// Stop the old task, then start the new one.
    #[default]
    StopFirst,
    /// Start the new task, and stop the old one once the new one runs.
    StartFirst,
}

/// How a changed spec rolls out (defaults as Swarm: one at a time, no delay, stop-first).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateConfig {
    /// Tasks updated at once; 0 updates all at once.
    pub parallelism: u64,
    /// Wait between batches.
    pub delay: Duration,
    /// What to do on failure.
    pub failure_action: FailureAction,
    /// How long a new task is watched for failure.
    pub monitor: Duration,
    /// Tolerated fraction of failed tasks.
    pub max_failure_ratio: f64,
    /// Stop-first or start-first.
    pub order: UpdateOrder,
}

impl Eq for UpdateConfig {}

impl Default for UpdateConfig {
    fn default() -> Self {
        UpdateConfig {
            parallelism: 1,
            delay: Duration::default(),
            failure_action: FailureAction::Pause,
            monitor: Duration::from_secs(5),
            max_failure_ratio: 0.0,
            order: UpdateOrder::StopFirst,
        }
    }
}

/// How clients reach the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointMode {
    /// One virtual IP balanced over the tasks.
    #[default]
    Vip,
    /// DNS round robin over task addresses.
    Dnsrr,
}

/// A published port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortConfig {
    /// Port inside the container.
    pub target: u16,
    /// Port published on the hosts; `None` lets the cluster choose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published: Option<u16>,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
    /// `ingress` (every node) or `host` (the task's node).
    pub mode: String,
}

/// Endpoint settings.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    /// VIP or DNS round robin.
    #[serde(default)]
    pub mode: EndpointMode,
    /// Published ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortConfig>,
}

/// Credentials for a registry, sent with a service (`--with-registry-auth`).
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryAuth {
    /// The registry (`host:port`, `docker.io`).
    pub server: String,
    /// User name.
    pub username: String,
    /// Password or token; `None` where the API shows it (redacted): an update that sends it
    /// back so keeps the one the cluster holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("server", &self.server)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl ServiceSpec {
    /// The spec as the API shows it: credentials without their password.
    pub fn redact(&mut self) {
        if let Some(a) = &mut self.task.container.registry_auth {
            a.password = None;
        }
    }

    /// Takes the credentials `existing` holds where this spec sends them back redacted, or
    /// sends none (an update without `--with-registry-auth` keeps them).
    pub fn keep_registry_auth(&mut self, existing: &ServiceSpec) {
        let Some(old) = &existing.task.container.registry_auth else {
            return;
        };
        match &self.task.container.registry_auth {
            None => self.task.container.registry_auth = Some(old.clone()),
            Some(new)
                if new.password.is_none()
                    && new.server == old.server
                    && new.username == old.username =>
            {
                self.task.container.registry_auth = Some(old.clone());
            }
            Some(_) => {}
        }
    }
}

impl Service {
    /// The service as the API shows it (see [`ServiceSpec::redact`]).
    pub fn redacted(mut self) -> Service {
        self.spec.redact();
        if let Some(p) = &mut self.previous_spec {
            p.redact();
        }
        self
    }
}

/// Everything a user declares about a service.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// Name, unique in the cluster (`<stack>_<name>` for stack services).
    pub name: String,
    /// Service labels (`deploy.labels`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Replicated or global.
    #[serde(default)]
    pub mode: ServiceMode,
    /// The task template.
    pub task: TaskTemplate,
    /// How updates roll out.
    #[serde(default)]
    pub update_config: UpdateConfig,
    /// How rollbacks roll out.
    #[serde(default)]
    pub rollback_config: UpdateConfig,
    /// How the service is reached.
    #[serde(default)]
    pub endpoint: EndpointSpec,
    /// Services whose tasks must run (or be healthy) before this one's start (`depends_on`,
    /// a shoal extension: Swarm ignores it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<Dependency>,
}

/// One `depends_on` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dependency {
    /// The service's full name (`<stack>_<name>`).
    pub service: String,
    /// What it must reach.
    #[serde(default)]
    pub condition: DependencyCondition,
}

/// What a service depended on must reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DependencyCondition {
    /// Every replica's container started.
    #[default]
    ServiceStarted,
    /// Every replica running and healthy (running, for a service without a health check).
    ServiceHealthy,
}

impl ServiceSpec {
    /// The stack this service belongs to, from its label.
    pub fn stack(&self) -> Option<&str> {
        self.labels.get(STACK_LABEL).map(String::as_str)
    }
}

/// Progress of a rolling update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateState {
    /// Tasks are being replaced.
    Updating,
    /// A task of the update failed (`failure_action: pause`): nothing more is replaced until
    /// the next update.
    Paused,
    /// Every task runs the current spec.
    Completed,
    /// A task of the update failed (`failure_action: rollback`) or `service rollback` was
    /// asked: tasks are going back to the previous spec, per `rollback_config`.
    RollbackStarted,
    /// A task of the rollback failed (its `failure_action: pause`).
    RollbackPaused,
    /// Every task runs the previous spec again.
    RollbackCompleted,
}

impl UpdateState {
    /// True while tasks are being replaced (an update or a rollback).
    pub fn in_progress(self) -> bool {
        matches!(self, UpdateState::Updating | UpdateState::RollbackStarted)
    }
}

/// When and how the last update went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateStatus {
    /// Updating or completed.
    pub state: UpdateState,
    /// When the update began.
    pub started_at: Timestamp,
    /// When it completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Timestamp>,
    /// What happened, as docker says it (`update paused due to failure or early termination
    /// of task …`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// A service the cluster holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// Its id.
    pub id: ServiceId,
    /// Store revision of the last change to its spec; tasks record the version they were made
    /// from, so a task is outdated when its version is lower.
    pub spec_version: u64,
    /// Store revision of its last change of any kind.
    pub version: u64,
    /// When it was created.
    pub created_at: Timestamp,
    /// When its spec last changed.
    pub updated_at: Timestamp,
    /// Desired state.
    pub spec: ServiceSpec,
    /// The spec before the last update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_spec: Option<ServiceSpec>,
    /// Progress of the last update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_status: Option<UpdateStatus>,
    /// Set by `service rm`: tasks are being shut down, then the service is deleted.
    #[serde(default)]
    pub removing: bool,
    /// Its virtual IPs, one per attached network (none with `endpoint_mode: dnsrr`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub virtual_ips: Vec<crate::network::VirtualIp>,
    /// The ports the hosts actually publish for it (docker's `Endpoint.Ports`), when the
    /// service is on a network: those of the spec, a port declared without `published` with
    /// the one the cluster chose for it (30000–32767, as Swarm).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub published_ports: Vec<PortConfig>,
}
