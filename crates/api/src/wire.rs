//! Bodies of the REST API (`/v1/...`) and of the dispatcher's agent sessions. Every request type
//! refuses unknown fields, so a typo in a client is an error rather than a silent no-op.

use crate::ids::{NodeId, TaskId};
use crate::network::Network;
use crate::node::{Availability, Node, NodeDescription};
use crate::service::Service;
use crate::task::{Task, TaskStatus};
use crate::units::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub use crate::stack::convert::StackSpec;

/// Every error response: a message a person can act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong and, where possible, what to do.
    pub message: String,
}

/// `POST /v1/cluster/init`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitRequest {
    /// Address other nodes reach this manager at, `host[:port]` (port: [`CLUSTER_PORT`]).
    /// Without it the cluster has this one manager and listens on no TCP port.
    #[serde(default)]
    pub advertise_addr: Option<String>,
    /// Address the cluster port binds, `host[:port]` (default `0.0.0.0` and the advertised
    /// port).
    #[serde(default)]
    pub listen_addr: Option<String>,
    /// Pools network subnets are taken from (`--default-addr-pool`; default `10.0.0.0/8`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub default_addr_pool: Vec<String>,
    /// Prefix length of each network's subnet (`--default-addr-pool-mask-length`; default 24).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet_size: Option<u8>,
    /// Services may run privileged containers (`--allow-privileged`; default no).
    #[serde(default)]
    pub allow_privileged: bool,
    /// How long node certificates live, seconds (`--cert-expiry`; default 90 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_expiry_secs: Option<u64>,
    /// A root CA made elsewhere, instead of a new one (`--ca-cert`, `--ca-key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_ca: Option<CaKeyPair>,
}

/// A root CA's certificate and private key, in PEM: the cluster's own (kept in Raft), or one
/// made outside shoal (`--ca-cert`, `--ca-key`). Its `Debug` hides the key.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaKeyPair {
    /// The CA certificate.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
}

impl std::fmt::Debug for CaKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaKeyPair")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// `GET /v1/cluster/ca`, `POST /v1/cluster/ca/rotate`: the cluster's root CA and how far a
/// rotation to a new one has come.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaInfo {
    /// The root CA certificate that signs node certificates now (PEM).
    pub ca_certificate: String,
    /// SHA-256 of it, as join tokens carry it.
    pub digest: String,
    /// Its subject.
    pub subject: String,
    /// True while nodes still move from the old root to this one.
    pub rotating: bool,
    /// Nodes whose certificate the current root signed.
    pub nodes_done: usize,
    /// Nodes in the cluster.
    pub nodes_total: usize,
    /// How long node certificates live, seconds.
    pub cert_expiry_secs: u64,
}

/// `POST /v1/cluster/ca/rotate`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaRotate {
    /// The new root, made elsewhere (`--ca-cert`, `--ca-key`); absent: shoal makes one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_ca: Option<CaKeyPair>,
}

/// `GET /v1/dispatcher/certificate` (cluster port): what the asking node's certificate
/// should be, so it knows when to renew.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateStatus {
    /// The roots nodes trust (PEM; the new and the old during a CA rotation).
    pub trust: String,
    /// The subject of the root that signs certificates now.
    pub signing_ca: String,
    /// The role the node's certificate should name: manager (true), worker (false), or the
    /// one it names now (absent: a promotion the node has not yet joined).
    #[serde(default)]
    pub manager: Option<bool>,
    /// The issuer of this node's certificate as the cluster recorded it ("" if none yet).
    pub recorded_issuer: String,
}

/// `POST /v1/cluster/client-cert`: a certificate for a user of the management API over TCP
/// (`shoald --listen`), for a key the user made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientCertRequest {
    /// Who it is for (its subject's common name).
    pub name: String,
    /// A PEM certificate request.
    pub csr: String,
}

/// A user certificate the cluster's CA issued (`cluster client-cert`), kept by the cluster
/// until it expires so that it can be revoked (`GET /v1/cluster/client-certs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientCert {
    /// Who it is for (its subject's common name).
    pub name: String,
    /// SHA-256 of the certificate (DER), hex.
    pub digest: String,
    /// When it expires, seconds since the epoch.
    pub not_after: i64,
    /// Refused by the management API from now on.
    #[serde(default)]
    pub revoked: bool,
}

/// `POST /v1/cluster/client-certs/revoke`: revokes every user certificate of a name, or the
/// one whose digest starts with the given hex (12 digits at least).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientCertRevoke {
    /// A name, or the start of a digest.
    pub target: String,
}

/// `POST /v1/dispatcher/renew` (cluster port): a new certificate for the asking node's own
/// new key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    /// A PEM certificate request.
    pub csr: String,
}

/// The answer to a [`RenewRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewResponse {
    /// The node's certificate, then what was issued with it (PEM).
    pub certificate: String,
    /// The roots to trust (PEM).
    pub ca_certificate: String,
}

/// `POST /v1/cluster/update`: settings to change (absent: unchanged).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterUpdate {
    /// Services may run privileged containers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_privileged: Option<bool>,
    /// Keep each manager's data key sealed under an unlock key that a restarted manager needs
    /// (`cluster update --autolock`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autolock: Option<bool>,
    /// How long node certificates live from their next renewal, seconds
    /// (`cluster update --cert-expiry`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_expiry_secs: Option<u64>,
}

/// `GET /v1/cluster/unlock-key[?rotate=true]`: the key a restarted manager needs with
/// autolock on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnlockKey {
    /// `SHLKEY-1-` and 64 hex digits.
    pub key: String,
}

/// `POST /v1/cluster/unlock` (local API): open a locked manager's data key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnlockRequest {
    /// The cluster's unlock key.
    pub key: String,
}

/// The default cluster port: Raft, agent sessions and forwarded writes (as Swarm's 2377).
pub const CLUSTER_PORT: u16 = 2377;

/// `POST /v1/cluster/join` (local API): make this daemon join a cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// A manager's cluster address, `host[:port]`.
    pub remote_addr: String,
    /// The join token; it decides the role (worker or manager).
    pub token: String,
    /// Address other nodes reach this node at, `host[:port]`.
    #[serde(default)]
    pub advertise_addr: Option<String>,
    /// Address the cluster port binds (managers only).
    #[serde(default)]
    pub listen_addr: Option<String>,
}

/// `POST /v1/cluster/join-request` (cluster port): a node asks a manager to join.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinClusterRequest {
    /// The join token presented.
    pub token: String,
    /// The joining node's cluster address.
    pub addr: String,
    /// A certificate signing request for the node's own key (PEM).
    #[serde(default)]
    pub csr: String,
}

/// The answer to a [`JoinClusterRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinClusterResponse {
    /// The cluster's id.
    pub cluster_id: String,
    /// True when the token made the node a manager.
    pub manager: bool,
    /// The new manager's Raft id (0 for a worker).
    pub raft_id: u64,
    /// The managers' Raft ids and cluster addresses.
    pub managers: BTreeMap<u64, String>,
    /// The node's id, as its certificate names it.
    #[serde(default)]
    pub node_id: String,
    /// The node's certificate (PEM), signed by the cluster's CA.
    #[serde(default)]
    pub certificate: String,
    /// The cluster's CA certificate (PEM).
    #[serde(default)]
    pub ca_certificate: String,
}

/// `GET /v1/cluster/join-token?role=worker|manager[&rotate=true]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    /// `worker` or `manager`.
    pub role: String,
    /// The token.
    pub token: String,
}

/// `POST /v1/cluster/leave`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaveRequest {
    /// Leave even when that loses the managers' quorum.
    #[serde(default)]
    pub force: bool,
}

/// Raft's view from the answering manager.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftInfo {
    /// This manager's Raft id.
    pub id: u64,
    /// Current term.
    pub term: u64,
    /// Raft id of the leader, 0 when unknown.
    pub leader: u64,
    /// Highest committed index.
    pub commit: u64,
    /// Highest index applied to the store (the store revision).
    pub applied: u64,
    /// Voters.
    pub voters: Vec<u64>,
    /// The managers' Raft ids and cluster addresses.
    #[serde(default)]
    pub managers: BTreeMap<u64, String>,
}

/// `GET /v1/cluster`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    /// The cluster's id.
    pub id: String,
    /// When it was created.
    pub created_at: Timestamp,
    /// Store revision.
    pub revision: u64,
    /// Raft state.
    pub raft: RaftInfo,
    /// Token a worker presents to join.
    pub worker_join_token: String,
    /// Services may run privileged containers.
    #[serde(default)]
    pub allow_privileged: bool,
    /// Managers keep their data key sealed under the unlock key (autolock).
    #[serde(default)]
    pub autolock: bool,
    /// How long node certificates live, seconds.
    #[serde(default)]
    pub cert_expiry_secs: u64,
    /// Counts of objects.
    pub nodes: usize,
    /// Services.
    pub services: usize,
    /// Tasks (of every state).
    pub tasks: usize,
    /// Networks.
    pub networks: usize,
}

/// `POST /v1/nodes/{id}/update`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeUpdate {
    /// New availability.
    #[serde(default)]
    pub availability: Option<Availability>,
    /// Labels to add or change.
    #[serde(default)]
    pub labels_add: BTreeMap<String, String>,
    /// Labels to remove.
    #[serde(default)]
    pub labels_rm: Vec<String>,
}

/// `POST /v1/services/{id}/update`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceUpdate {
    /// The whole new spec.
    pub spec: crate::service::ServiceSpec,
    /// When set, the update fails unless the service is still at this version.
    #[serde(default)]
    pub version: Option<u64>,
}

/// `POST /v1/services/{id}/scale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleRequest {
    /// New replica count.
    pub replicas: u64,
}

/// A created object's id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Created {
    /// Its id.
    pub id: String,
}

/// `POST /v1/stacks/{name}/deploy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StackDeploy {
    /// What the stack holds now.
    pub stack: StackSpec,
    /// Remove services of the stack that are no longer in it.
    #[serde(default)]
    pub prune: bool,
    /// Whether the manager pins images to their registry's digest (`--resolve-image`).
    #[serde(default)]
    pub resolve_image: ResolveImage,
}

/// `--resolve-image`, as docker spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResolveImage {
    /// Every image named with its registry is pinned to the digest its tag points at now.
    #[default]
    Always,
    /// Only images that are new or changed in the stack file are pinned again.
    Changed,
    /// Images are used as written.
    Never,
}

/// What a stack deploy did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackDeployResult {
    /// Store revision at which the whole deploy was applied.
    pub revision: u64,
    /// Networks created.
    pub networks_created: Vec<String>,
    /// Secrets and configs created (`secret NAME`, `config NAME`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files_created: Vec<String>,
    /// Services created.
    pub created: Vec<String>,
    /// Services whose spec changed.
    pub updated: Vec<String>,
    /// Services left as they were.
    pub unchanged: Vec<String>,
    /// Services removed (with prune).
    pub removed: Vec<String>,
    /// What the user should know (an image that could not be pinned to a digest).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// One line of `stack ls`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackSummary {
    /// Stack name.
    pub name: String,
    /// Its services.
    pub services: usize,
    /// Its networks.
    pub networks: usize,
}

/// A service with the counts `service ls` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSummary {
    /// The service.
    pub service: Service,
    /// Tasks running the current spec... or any spec, as docker counts them.
    pub running: u64,
    /// Tasks wanted.
    pub desired: u64,
}

/// Any object the store holds, tagged with its type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "object", rename_all = "lowercase")]
pub enum Object {
    /// A node.
    Node(Box<Node>),
    /// A service.
    Service(Box<Service>),
    /// A task.
    Task(Box<Task>),
    /// A network.
    Network(Box<Network>),
    /// A secret or config (a secret without its data).
    File(Box<crate::secret::FileObject>),
}

impl Object {
    /// The object as the API shows it (see [`Service::redacted`], [`Task::redacted`]).
    pub fn redacted(self) -> Object {
        match self {
            Object::Service(s) => Object::Service(Box::new(s.redacted())),
            Object::Task(t) => Object::Task(Box::new(t.redacted())),
            Object::File(f) => Object::File(Box::new(f.redacted())),
            other => other,
        }
    }
}

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// It appeared.
    Create,
    /// It changed.
    Update,
    /// It went away.
    Delete,
}

/// One change of the store, in revision order. `GET /v1/events?since=REV` streams these as
/// JSON lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Store revision (Raft index) of the change.
    pub revision: u64,
    /// Create, update or delete.
    pub action: Action,
    /// The object after the change (before it, for deletes).
    #[serde(flatten)]
    pub object: Object,
}

/// `POST /v1/dispatcher/register`: an agent opens a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// The node's id from an earlier registration; `None` for a new node.
    #[serde(default)]
    pub node_id: Option<NodeId>,
    /// The cluster's join token.
    pub join_token: String,
    /// What the node is.
    pub description: NodeDescription,
    /// Underlay address of the node.
    #[serde(default)]
    pub addr: String,
    /// True for the agent of a manager host.
    #[serde(default)]
    pub manager: bool,
    /// The host's manager's Raft id (0 on a worker).
    #[serde(default)]
    pub raft_id: u64,
}

/// The session an agent holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterResponse {
    /// The node's id (new or confirmed).
    pub node_id: NodeId,
    /// Session id, to present on every call.
    pub session_id: String,
    /// How often to heartbeat, in milliseconds.
    pub heartbeat_period_ms: u64,
    /// The managers' cluster addresses.
    #[serde(default)]
    pub managers: Vec<String>,
    /// Silence after which the agent stops its tasks by itself, in milliseconds (0: never):
    /// by then the managers have marked the node down and replaced them.
    #[serde(default)]
    pub self_stop_after_ms: u64,
}

/// `GET /v1/dispatcher/managers` (any manager): where the managers are, and whether this
/// manager knows a leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManagerList {
    /// The managers' cluster addresses.
    pub managers: Vec<String>,
    /// False when this manager knows of no leader (an election, or a cluster without quorum,
    /// which can replace nobody's tasks).
    pub leader_known: bool,
}

/// `POST /v1/dispatcher/heartbeat`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// The node.
    pub node_id: NodeId,
    /// Its session.
    pub session_id: String,
}

/// Answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    /// Period for the next one, in milliseconds.
    pub heartbeat_period_ms: u64,
    /// The managers' cluster addresses, so an agent follows membership changes.
    #[serde(default)]
    pub managers: Vec<String>,
    /// Set when an operator promoted this worker: the manager join token to join with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promote: Option<String>,
}

/// `GET /v1/dispatcher/assignments?node_id=..&session_id=..&since=REV`: the tasks a node must
/// run. With `since=0` the full set; otherwise waits for a change after `since`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignments {
    /// Store revision these assignments reflect; pass it as `since` next time.
    pub revision: u64,
    /// True when `tasks` is the full set (anything not in it must go).
    pub full: bool,
    /// Tasks to run or to stop (desired state tells which).
    pub tasks: Vec<Task>,
    /// Tasks no longer assigned (with `full: false`).
    pub removed: Vec<TaskId>,
    /// Every network the node has tasks on, when any of them changed (always with `full`);
    /// `None` when they did not change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networks: Option<Vec<crate::network::NetworkView>>,
    /// The cluster's published ports, sent with `networks`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<crate::network::PortPlan>,
    /// The secrets and configs the tasks of this message use (with their data): a node gets
    /// only those of its own tasks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<crate::secret::FileObject>,
}

/// One task's new status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskStatusUpdate {
    /// The task.
    pub task_id: TaskId,
    /// Its status.
    pub status: TaskStatus,
}

/// `POST /v1/dispatcher/status`: a batch of task statuses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusReport {
    /// The node.
    pub node_id: NodeId,
    /// Its session.
    pub session_id: String,
    /// The updates, oldest first.
    pub updates: Vec<TaskStatusUpdate>,
}

/// An image in a node's store (`GET /v1/images`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// Image id (`sha256:` digest of its config).
    pub id: String,
    /// Digest of its manifest.
    pub manifest: String,
    /// Tags (`name:tag`).
    pub tags: Vec<String>,
    /// Unpacked size in bytes.
    pub size: u64,
    /// When it was imported.
    pub imported: crate::units::Timestamp,
    /// Diff ids of its layers, base first.
    pub layers: Vec<String>,
    /// Entrypoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entrypoint: Vec<String>,
    /// Command.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cmd: Vec<String>,
    /// Environment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// Working directory.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub working_dir: String,
    /// User.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    /// Containers on the node using it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<String>,
}

/// The result of an image import or removal: one line per thing done.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageResult {
    /// Images imported.
    #[serde(default)]
    pub images: Vec<ImageInfo>,
    /// What was done (`Untagged: x`, `Deleted: sha256:…`).
    #[serde(default)]
    pub done: Vec<String>,
}

/// A named volume on a node (`GET /v1/volumes`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeInfo {
    /// Name.
    pub name: String,
    /// Driver (`local`).
    pub driver: String,
    /// Where its data is on the node.
    pub mountpoint: String,
    /// When it was created.
    pub created: crate::units::Timestamp,
    /// Labels.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Containers on the node using it.
    #[serde(default)]
    pub containers: Vec<String>,
}

/// One line of a task's output (`GET /v1/services/{id}/logs`, NDJSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// The task.
    pub task_id: crate::TaskId,
    /// Its service's name.
    pub service: String,
    /// Its slot.
    pub slot: u64,
    /// The node it ran on.
    pub node_id: crate::NodeId,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// When it was written (RFC 3339 with nanoseconds).
    pub time: String,
    /// The text, with its newline.
    pub line: String,
}

/// What a client asks of a service's logs; what the manager asks of an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogSubscription {
    /// Subscription id.
    pub id: String,
    /// Tasks (on the agent's node) whose logs are wanted.
    pub tasks: Vec<crate::TaskId>,
    /// Keep sending new lines until the subscription ends.
    pub follow: bool,
    /// Only the last N lines of each task.
    #[serde(default)]
    pub tail: Option<usize>,
}

/// A batch of lines an agent publishes for a subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogPublish {
    /// The agent's session.
    pub session: String,
    /// Lines.
    pub lines: Vec<LogLine>,
    /// The agent has sent everything (not following, or its tasks ended).
    pub done: bool,
}

/// The manager's answer to a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogPublishResponse {
    /// False once nobody reads the subscription: the agent stops.
    pub active: bool,
}

/// `GET /v1/networks/{id}`: a network and how many of its addresses are held (tasks' and
/// virtual IPs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInfo {
    /// The network.
    #[serde(flatten)]
    pub network: crate::network::Network,
    /// Addresses held on it.
    pub addresses_in_use: usize,
}

/// `POST /v1/containers/{id}/exec` (node API): what to run in a container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecSpec {
    /// The command and its arguments.
    pub cmd: Vec<String>,
    /// `KEY=VALUE` entries laid over the container's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// `user`, `uid` or `uid:gid`, resolved in the container's /etc/passwd (default: the
    /// container's user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Working directory (default: the container's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// Keep stdin open: the request body goes on, after this spec's line, with JSON lines
    /// `{"stdin": BASE64}`, `{"resize": [ROWS, COLS]}` and `{"eof": true}`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub interactive: bool,
    /// Run it on a terminal (its output comes as `stdout` only).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tty: bool,
    /// The terminal's size, rows and columns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<[u16; 2]>,
}

/// One line of an interactive exec's input (after the `ExecSpec` line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecInput {
    /// Bytes for the process's stdin, base64.
    Stdin(String),
    /// The terminal's new size, rows and columns.
    Resize([u16; 2]),
    /// Stdin is closed.
    Eof(bool),
}

/// A container of the node (`GET /v1/containers`, node API).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerInfo {
    /// Its id (the task id).
    pub id: String,
    /// The task.
    pub task: crate::TaskId,
    /// `service.slot`.
    pub name: String,
    /// The image as the task names it.
    pub image: String,
    /// When it was created (ms since the epoch).
    pub created: u64,
    /// `running`, `exited` or `created`.
    pub state: String,
    /// Its exit code, once exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Its health check's verdict, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<crate::task::Health>,
    /// What its last health check printed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_output: Option<String>,
}
