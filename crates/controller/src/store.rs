//! The cluster's state: nodes, services, tasks and networks, changed only by applying
//! [`Command`]s in Raft-log order. Applying is deterministic (ids and timestamps come inside the
//! command), so every manager that applies the same log holds the same store. The revision is
//! the Raft index of the last applied command.
//!
//! A user command is checked in full before anything changes, so a refused command leaves the
//! store as it was. Batches from the leader loops ([`TaskOp`]) skip what no longer applies
//! (a task deleted meanwhile) instead of failing, since they are recomputed from state anyway.

use crate::allocator::{publish_ports, wants_vips, Ipam, Owner};
use serde::{Deserialize, Serialize};
use shoal_api::constraint::Constraint;
use shoal_api::network::{Cidr, Network, NetworkAttachment, NetworkSpec, VirtualIp};
use shoal_api::node::{
    Availability, ManagerStatus, Node, NodeDescription, NodeRole, NodeSpec, NodeState, NodeStatus,
};
use shoal_api::secret::{FileKind, FileObject};
use shoal_api::service::{Service, ServiceMode, ServiceSpec, UpdateState, UpdateStatus};
use shoal_api::task::{Task, TaskState, TaskStatus};
use shoal_api::units::Timestamp;
use shoal_api::wire::{Action, Event, Object};
use shoal_api::{FileObjectId, NetworkId, NodeId, ServiceId, TaskId};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Cluster-wide settings, set once by `cluster init`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterObject {
    /// Cluster id.
    pub id: String,
    /// When it was created.
    pub created_at: Timestamp,
    /// Token workers present to join.
    pub worker_join_token: String,
    /// Token managers present to join.
    #[serde(default)]
    pub manager_join_token: String,
    /// Pools network subnets are taken from (empty: [`crate::allocator::DEFAULT_POOL`]).
    #[serde(default)]
    pub default_addr_pool: Vec<String>,
    /// Prefix length of subnets taken from the pool (0: 24).
    #[serde(default)]
    pub subnet_size: u8,
    /// Services may run privileged containers (`cluster init|update --allow-privileged`).
    #[serde(default)]
    pub allow_privileged: bool,
    /// With autolock, the key every manager's data key is sealed under (`SHLKEY-1-...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unlock_key: Option<String>,
    /// The cluster's root CA, the one that signs (`None` in a log written before the PKI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<crate::pki::ClusterCa>,
    /// During a CA rotation: the roots being left, still trusted until every node holds a
    /// certificate from [`ClusterObject::ca`] (PEM certificates).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ca_previous: Vec<String>,
    /// During a CA rotation: the new root cross-signed by the old one, sent with every new
    /// certificate so that nodes trusting only the old root accept it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cross: Option<String>,
    /// How long node certificates live, seconds (0: [`crate::pki::DEFAULT_CERT_EXPIRY`]).
    #[serde(default)]
    pub cert_expiry_secs: u64,
    /// User certificates issued and not yet expired (`cluster client-cert`), revoked or not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub client_certs: Vec<shoal_api::wire::ClientCert>,
}

impl ClusterObject {
    /// How long node certificates are issued for.
    pub fn cert_expiry(&self) -> std::time::Duration {
        match self.cert_expiry_secs {
            0 => crate::pki::DEFAULT_CERT_EXPIRY,
            s => std::time::Duration::from_secs(s),
        }
    }

    /// The roots every node trusts: the signing root, and during a rotation the old ones.
    pub fn trust_pem(&self) -> String {
        let mut pem = self
            .ca
            .as_ref()
            .map(|ca| ca.cert_pem.clone())
            .unwrap_or_default();
        for old in &self.ca_previous {
            if !pem.ends_with('\n') && !pem.is_empty() {
                pem.push('\n');
            }
            pem.push_str(old);
        }
        pem
    }

    /// The subject of the signing root.
    pub fn signing_subject(&self) -> String {
        self.ca
            .as_ref()
            .and_then(|ca| crate::pki::subject_of(&ca.cert_pem))
            .unwrap_or_default()
    }
}

/// A network to create, with what the proposer allocated for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewNetwork {
    /// Its id.
    pub id: NetworkId,
    /// What was asked for.
    pub spec: NetworkSpec,
    /// Allocated VXLAN id.
    pub vni: u32,
    /// Allocated or requested subnet.
    pub subnet: String,
    /// Gateway of the subnet.
    pub gateway: String,
}

/// One low-level change from a leader loop or the dispatcher.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskOp {
    /// Orchestrator: a new task.
    Create(Box<Task>),
    /// Orchestrator: change what a task should be doing.
    SetDesired {
        /// The task.
        id: TaskId,
        /// Shutdown or remove.
        state: TaskState,
    },
    /// Orchestrator (reaper): forget a task.
    Delete {
        /// The task.
        id: TaskId,
    },
    /// Scheduler: place a task on a node.
    Assign {
        /// The task.
        id: TaskId,
        /// The node.
        node: NodeId,
        /// When.
        at: Timestamp,
    },
    /// Scheduler: the task cannot be placed, and why.
    Pending {
        /// The task.
        id: TaskId,
        /// Why it waits.
        reason: String,
        /// When.
        at: Timestamp,
    },
    /// Dispatcher: a node's report (or, for a node that went down, the dispatcher's verdict).
    Status {
        /// The task.
        id: TaskId,
        /// The node reporting; the report is ignored unless the task is on it.
        node: NodeId,
        /// The new status.
        status: TaskStatus,
    },
    /// Orchestrator: progress of a rolling update.
    UpdateStatus {
        /// The service.
        service: ServiceId,
        /// Its new update status.
        status: UpdateStatus,
    },
    /// Orchestrator (an update's task failed, `failure_action: rollback`) or `service
    /// rollback`: the service goes back to its previous spec, rolled out per its
    /// `rollback_config`.
    Rollback {
        /// The service.
        service: ServiceId,
        /// Why, for its update status.
        message: String,
        /// When.
        at: Timestamp,
    },
    /// Orchestrator: a removed service whose tasks are all gone.
    DeleteService {
        /// The service.
        id: ServiceId,
    },
}

/// A change to the cluster, as written to the Raft log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// First command of a cluster.
    InitCluster(Box<ClusterObject>),
    /// Replaces the managers' addresses (at `cluster init` and `--force-new-cluster`, when
    /// this manager is the only voter; otherwise membership changes keep them).
    SetManagers(BTreeMap<u64, String>),
    /// Replaces a join token (`cluster join-token --rotate`).
    RotateJoinToken {
        /// True for the manager token, false for the worker token.
        manager: bool,
        /// The new token.
        token: String,
    },
    /// Changes the cluster's settings (`cluster update`).
    UpdateCluster {
        /// Services may run privileged containers.
        allow_privileged: Option<bool>,
        /// How long node certificates live, seconds.
        #[serde(default)]
        cert_expiry_secs: Option<u64>,
    },
    /// Starts moving the cluster to a new root CA (`cluster ca --rotate`).
    RotateCa {
        /// The new root.
        ca: Box<crate::pki::ClusterCa>,
        /// The new root cross-signed by the current one.
        cross: String,
    },
    /// Every node holds a certificate from the new root: stop trusting the old ones, and give
    /// the join tokens the new root's digest.
    FinishCaRotation {
        /// The new worker token.
        worker_join_token: String,
        /// The new manager token.
        manager_join_token: String,
    },
    /// A node was issued a certificate.
    RecordCertificate {
        /// The node.
        id: NodeId,
        /// What the managers know of it.
        certificate: Box<shoal_api::node::NodeCertificate>,
    },
    /// A user certificate was issued; those expired by `at` are forgotten.
    RecordClientCert {
        /// The certificate.
        cert: shoal_api::wire::ClientCert,
        /// When it was issued.
        at: Timestamp,
    },
    /// Revokes every user certificate named `target`, or the one whose digest starts with it.
    RevokeClientCerts {
        /// A name, or the start of a digest (12 hex digits at least).
        target: String,
    },
    /// Turns autolock on with this unlock key (or a new one), or off (`None`).
    SetUnlockKey(Option<String>),
    /// Create a service.
    CreateService {
        /// New id.
        id: ServiceId,
        /// Its spec.
        spec: Box<ServiceSpec>,
        /// When.
        at: Timestamp,
    },
    /// Replace a service's spec.
    UpdateService {
        /// The service.
        id: ServiceId,
        /// New spec.
        spec: Box<ServiceSpec>,
        /// Refuse unless the service is at this version.
        expected_version: Option<u64>,
        /// When.
        at: Timestamp,
    },
    /// Mark a service for removal (its tasks shut down, then it is deleted).
    RemoveService {
        /// The service.
        id: ServiceId,
    },
    /// Create a network.
    CreateNetwork(Box<NewNetwork>),
    /// Remove a network no service uses.
    RemoveNetwork {
        /// The network.
        id: NetworkId,
    },
    /// Create a secret or config.
    CreateFile(Box<FileObject>),
    /// Remove a secret or config no service uses.
    RemoveFile {
        /// The object.
        id: FileObjectId,
    },
    /// Everything of one `stack deploy`, applied together or not at all.
    DeployStack {
        /// Secrets and configs to create.
        #[serde(default)]
        files: Vec<FileObject>,
        /// Networks to create.
        networks: Vec<NewNetwork>,
        /// Services to create.
        create: Vec<(ServiceId, ServiceSpec)>,
        /// Services to update.
        update: Vec<(ServiceId, ServiceSpec)>,
        /// Services to remove.
        remove: Vec<ServiceId>,
        /// When.
        at: Timestamp,
    },
    /// Remove a stack's services and networks.
    RemoveStack {
        /// Stack name.
        name: String,
    },
    /// A node registers (new) or re-registers (known id).
    RegisterNode {
        /// Its id.
        id: NodeId,
        /// What it reported.
        description: Box<NodeDescription>,
        /// Its address.
        addr: String,
        /// Manager or worker (for a new node).
        role: NodeRole,
        /// Its Raft id when it is a manager, 0 otherwise.
        #[serde(default)]
        raft_id: u64,
        /// When.
        at: Timestamp,
    },
    /// An operator sets a node's role (`node promote|demote`); the node follows.
    SetNodeRole {
        /// The node.
        id: NodeId,
        /// The role it must take.
        role: NodeRole,
    },
    /// An operator removes a node (`node rm`): its unfinished tasks are orphaned, and it may
    /// not register again under its id.
    RemoveNode {
        /// The node.
        id: NodeId,
        /// When.
        at: Timestamp,
    },
    /// An operator changes a node.
    UpdateNode {
        /// The node.
        id: NodeId,
        /// New availability.
        availability: Option<Availability>,
        /// Labels to set.
        labels_add: BTreeMap<String, String>,
        /// Labels to drop.
        labels_rm: Vec<String>,
    },
    /// The dispatcher marks a node down: it and its unfinished tasks, which become orphaned.
    NodeDown {
        /// The node.
        id: NodeId,
        /// Why.
        message: String,
        /// When.
        at: Timestamp,
    },
    /// A batch from a leader loop or the dispatcher.
    Tasks(Vec<TaskOp>),
}

/// A command the store refuses. Nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// Not found.
    #[error("{kind} {id} not found")]
    NotFound {
        /// Kind of object.
        kind: &'static str,
        /// What was looked for.
        id: String,
    },
    /// Name taken.
    #[error("{kind} name {name:?} is already in use")]
    NameInUse {
        /// Kind of object.
        kind: &'static str,
        /// The name.
        name: String,
    },
    /// The object changed since the caller read it.
    #[error("service {id} is at version {actual}, not {expected}: read it again and retry")]
    VersionMismatch {
        /// The service.
        id: ServiceId,
        /// What the caller expected.
        expected: u64,
        /// What it is.
        actual: u64,
    },
    /// Anything else a person must fix.
    #[error("{0}")]
    Invalid(String),
    /// `cluster init` ran already.
    #[error("this node is already part of a cluster")]
    AlreadyInitialized,
}

/// The cluster's objects at one revision.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Store {
    /// Raft index of the last applied command.
    pub revision: u64,
    /// Raft ids of the managers (the voters) and their cluster addresses (empty for a
    /// manager started without `--advertise-addr`).
    #[serde(default)]
    pub managers: BTreeMap<u64, String>,
    /// Nodes removed by `node rm`, which may not register again.
    #[serde(default)]
    pub removed_nodes: BTreeSet<NodeId>,
    /// Set by `cluster init`.
    pub cluster: Option<ClusterObject>,
    /// Nodes by id.
    pub nodes: BTreeMap<NodeId, Node>,
    /// Services by id.
    pub services: BTreeMap<ServiceId, Service>,
    /// Tasks by id, shared: a copy of the store for a leader pass copies pointers, not tasks.
    pub tasks: BTreeMap<TaskId, Arc<Task>>,
    /// Networks by id.
    pub networks: BTreeMap<NetworkId, Network>,
    /// Secrets and configs by id.
    #[serde(default)]
    pub files: BTreeMap<FileObjectId, FileObject>,
    /// Addresses in use, derived from the above (built on first use after a start or a
    /// snapshot, then kept current as commands apply).
    #[serde(skip)]
    pub ipam: IpamCache,
}

/// The allocator's index, kept beside the store. Being derived, it takes no part in
/// comparisons.
#[derive(Debug, Clone, Default)]
pub struct IpamCache(pub Option<Ipam>);

impl PartialEq for IpamCache {
    fn eq(&self, _: &IpamCache) -> bool {
        true
    }
}

/// New secrets and configs: valid, and no name taken among their kind (also within the
/// batch).
fn check_new_files(store: &Store, files: &[FileObject]) -> Result<(), StoreError> {
    let mut seen = BTreeSet::new();
    for f in files {
        f.spec.check(f.kind).map_err(StoreError::Invalid)?;
        let taken = store
            .files
            .values()
            .any(|o| o.kind == f.kind && o.spec.name == f.spec.name);
        if taken || !seen.insert((f.kind, f.spec.name.clone())) {
            return Err(StoreError::Invalid(format!(
                "{} {} already exists",
                f.kind, f.spec.name
            )));
        }
    }
    Ok(())
}

/// Every secret and config a service names exists (or comes in the same command).
fn check_files_exist(
    store: &Store,
    spec: &ServiceSpec,
    new_files: &[FileObject],
) -> Result<(), StoreError> {
    let c = &spec.task.container;
    for (kind, refs) in [
        (FileKind::Secret, &c.secrets),
        (FileKind::Config, &c.configs),
    ] {
        for r in refs {
            let known = store
                .files
                .values()
                .chain(new_files)
                .any(|f| f.kind == kind && f.spec.name == r.source);
            if !known {
                return Err(StoreError::Invalid(format!(
                    "service {}: {kind} not found: {}",
                    spec.name, r.source
                )));
            }
        }
    }
    Ok(())
}

/// Validates a service spec against the store (`except` is the service being updated).
/// Node certificates live one hour at least (Swarm's minimum), 100 years at most.
pub fn check_cert_expiry(secs: u64) -> Result<(), StoreError> {
    if !(3600..=100 * 365 * 24 * 3600).contains(&secs) {
        return Err(StoreError::Invalid(format!(
            "--cert-expiry {secs}s: node certificates must live at least 1h (and at most 100 years)"
        )));
    }
    Ok(())
}

fn check_service_spec(
    store: &Store,
    spec: &ServiceSpec,
    except: Option<&ServiceId>,
    new_networks: &[NewNetwork],
) -> Result<(), StoreError> {
    if spec.name.is_empty() {
        return Err(StoreError::Invalid("a service needs a name".into()));
    }
    if !spec
        .name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        || spec.name.len() > 63
    {
        return Err(StoreError::Invalid(format!(
            "invalid service name {:?}: use at most 63 letters, digits, '-', '_' and '.'",
            spec.name
        )));
    }
    let allow_privileged = store.cluster.as_ref().is_some_and(|c| c.allow_privileged);
    if spec.task.container.privileged && !allow_privileged {
        return Err(StoreError::Invalid(format!(
            "service {:?} asks for a privileged container, which this cluster does not allow \
             (a manager can allow it with `shoal cluster update --allow-privileged true`)",
            spec.name
        )));
    }
    if spec.task.container.image.is_empty() {
        return Err(StoreError::Invalid(format!(
            "service {:?} needs an image",
            spec.name
        )));
    }
    Constraint::parse_all(&spec.task.placement.constraints)
        .map_err(|e| StoreError::Invalid(format!("service {:?}: {e}", spec.name)))?;
    if let Some(other) = store
        .services
        .values()
        .find(|s| s.spec.name == spec.name && Some(&s.id) != except)
    {
        if !other.removing {
            return Err(StoreError::NameInUse {
                kind: "service",
                name: spec.name.clone(),
            });
        }
        return Err(StoreError::Invalid(format!(
            "service {:?} is still being removed: try again once it is gone",
            spec.name
        )));
    }
    for attachment in &spec.task.networks {
        let known = store.network_by_ref(&attachment.target).is_some()
            || new_networks
                .iter()
                .any(|n| n.spec.name == attachment.target || n.id.as_str() == attachment.target);
        if !known {
            return Err(StoreError::Invalid(format!(
                "service {:?} attaches to network {:?}, which does not exist",
                spec.name, attachment.target
            )));
        }
    }
    Ok(())
}

/// The (port, protocol) pairs every service publishes or declares, but those `skip` names and
/// those being removed.
fn ports_in_use(store: &Store, skip: impl Fn(&ServiceId) -> bool) -> BTreeMap<(u16, String), &str> {
    let mut seen = BTreeMap::new();
    for s in store.services.values() {
        if s.removing || skip(&s.id) {
            continue;
        }
        for p in s.spec.endpoint.ports.iter().chain(&s.published_ports) {
            if let Some(published) = p.published {
                seen.insert((published, p.protocol.clone()), s.spec.name.as_str());
            }
        }
    }
    seen
}

/// Refuses a published port that another service already publishes (as Swarm does): against
/// the services the store keeps (except those being replaced or removed by the same command)
/// and among the ones given; and refuses ports without `published` when the dynamic range has
/// none left for them.
fn check_published_ports<'a>(
    store: &Store,
    specs: impl Iterator<Item = &'a (ServiceId, ServiceSpec)>,
    removing: &[ServiceId],
) -> Result<(), StoreError> {
    let specs: Vec<&(ServiceId, ServiceSpec)> = specs.collect();
    let mut seen = ports_in_use(store, |id| {
        removing.contains(id) || specs.iter().any(|(s, _)| s == id)
    });
    for (_, spec) in &specs {
        for p in &spec.endpoint.ports {
            let Some(published) = p.published else {
                continue;
            };
            if let Some(other) = seen.insert((published, p.protocol.clone()), &spec.name) {
                return Err(StoreError::Invalid(format!(
                    "service {:?}: port '{published}/{}' is already in use by service {other:?}",
                    spec.name, p.protocol
                )));
            }
        }
    }
    let mut taken: BTreeSet<(u16, String)> = seen.into_keys().collect();
    for (id, spec) in &specs {
        if spec.endpoint.ports.iter().all(|p| p.published.is_some()) {
            continue;
        }
        let previous = store
            .services
            .get(id)
            .map_or(&[][..], |s| s.published_ports.as_slice());
        let ports = publish_ports(spec, previous, &taken).map_err(StoreError::Invalid)?;
        taken.extend(
            ports
                .into_iter()
                .filter_map(|p| p.published.map(|n| (n, p.protocol))),
        );
    }
    Ok(())
}

fn check_network(store: &Store, n: &NewNetwork, others: &[NewNetwork]) -> Result<(), StoreError> {
    if n.spec.driver != "overlay" {
        return Err(StoreError::Invalid(format!(
            "network {:?}: driver {:?} is not supported (use overlay)",
            n.spec.name, n.spec.driver
        )));
    }
    if n.spec.driver_opts.contains_key("encrypted") {
        return Err(StoreError::Invalid(format!(
            "network {:?}: encrypted overlay networks are not supported yet, and shoal will not \
             run one unencrypted: remove the `encrypted` option or keep this stack on Swarm",
            n.spec.name
        )));
    }
    let cidr = Cidr::parse(&n.subnet)
        .map_err(|e| StoreError::Invalid(format!("network {:?}: subnet {e}", n.spec.name)))?;
    if cidr.prefix > 30 {
        return Err(StoreError::Invalid(format!(
            "network {:?}: subnet {cidr} is too small (at most /30)",
            n.spec.name
        )));
    }
    let overlapping = store
        .networks
        .values()
        .map(|e| (&e.spec.name, &e.subnet))
        .chain(
            others
                .iter()
                .filter(|o| o.id != n.id)
                .map(|o| (&o.spec.name, &o.subnet)),
        )
        .find(|(_, s)| Cidr::parse(s).is_ok_and(|c| c.overlaps(&cidr)));
    if let Some((name, subnet)) = overlapping {
        return Err(StoreError::Invalid(format!(
            "network {:?}: subnet {cidr} overlaps network {name:?}'s subnet {subnet}",
            n.spec.name
        )));
    }
    let clash = store.networks.values().any(|e| e.spec.name == n.spec.name)
        || others.iter().filter(|o| o.spec.name == n.spec.name).count() > 1;
    if clash {
        return Err(StoreError::NameInUse {
            kind: "network",
            name: n.spec.name.clone(),
        });
    }
    if store.networks.values().any(|e| e.vni == n.vni)
        || others.iter().any(|o| o.id != n.id && o.vni == n.vni)
    {
        return Err(StoreError::Invalid(format!(
            "network {:?}: its VNI is taken; retry",
            n.spec.name
        )));
    }
    Ok(())
}

impl Store {
    /// Changes node `id` with `f` at revision `rev`, and says so in `ev`.
    fn update_node(
        &mut self,
        id: &NodeId,
        rev: u64,
        ev: &mut Vec<Event>,
        f: impl FnOnce(&mut Node),
    ) -> Result<(), StoreError> {
        let node = self.nodes.get_mut(id).ok_or_else(|| StoreError::NotFound {
            kind: "node",
            id: id.to_string(),
        })?;
        f(node);
        node.version = rev;
        ev.push(Event {
            revision: rev,
            action: Action::Update,
            object: Object::Node(Box::new(node.clone())),
        });
        Ok(())
    }

    /// The cluster object, to change; refused before `cluster init`.
    fn cluster_mut(&mut self) -> Result<&mut ClusterObject, StoreError> {
        self.cluster
            .as_mut()
            .ok_or_else(|| StoreError::Invalid("the cluster is not initialized".into()))
    }

    /// Finds a node by id or hostname.
    pub fn node_by_ref(&self, r: &str) -> Option<&Node> {
        self.nodes
            .values()
            .find(|n| n.id.as_str() == r)
            .or_else(|| self.nodes.values().find(|n| n.description.hostname == r))
            .or_else(|| {
                let hits: Vec<_> = self
                    .nodes
                    .values()
                    .filter(|n| n.id.as_str().starts_with(r))
                    .collect();
                (hits.len() == 1).then(|| hits[0])
            })
    }

    /// Finds a service by id, name, or unique id prefix.
    pub fn service_by_ref(&self, r: &str) -> Option<&Service> {
        self.services
            .values()
            .find(|s| s.id.as_str() == r)
            .or_else(|| self.services.values().find(|s| s.spec.name == r))
            .or_else(|| {
                let hits: Vec<_> = self
                    .services
                    .values()
                    .filter(|s| s.id.as_str().starts_with(r))
                    .collect();
                (hits.len() == 1).then(|| hits[0])
            })
    }

    /// Finds a network by id or name.
    pub fn network_by_ref(&self, r: &str) -> Option<&Network> {
        self.networks
            .values()
            .find(|n| n.id.as_str() == r || n.spec.name == r)
    }

    /// Tasks of one service.
    pub fn tasks_of(&self, service: &ServiceId) -> impl Iterator<Item = &Task> {
        let service = service.clone();
        self.tasks
            .values()
            .map(Arc::as_ref)
            .filter(move |t| t.service_id == service)
    }

    /// Applies one command at `revision`. On error nothing changed; on success, returns the
    /// events describing every change.
    pub fn apply(&mut self, revision: u64, cmd: Command) -> Result<Vec<Event>, StoreError> {
        if self.ipam.0.is_none() {
            self.ipam.0 = Some(Ipam::build(self));
        }
        let mut events = Vec::new();
        let result = self.apply_inner(revision, cmd, &mut events);
        // The revision moves with the log even for refused commands: the index was used.
        self.revision = revision;
        result.map(|_| {
            self.settle_addresses(&mut events);
            events
        })
    }

    fn apply_inner(
        &mut self,
        rev: u64,
        cmd: Command,
        ev: &mut Vec<Event>,
    ) -> Result<(), StoreError> {
        match cmd {
            Command::InitCluster(c) => {
                if self.cluster.is_some() {
                    return Err(StoreError::AlreadyInitialized);
                }
                self.cluster = Some(*c);
            }
            Command::SetManagers(managers) => self.managers = managers,
            Command::RotateJoinToken { manager, token } => {
                let c = self.cluster_mut()?;
                if manager {
                    c.manager_join_token = token;
                } else {
                    c.worker_join_token = token;
                }
            }
            Command::UpdateCluster {
                allow_privileged,
                cert_expiry_secs,
            } => {
                let c = self.cluster_mut()?;
                if let Some(allow) = allow_privileged {
                    c.allow_privileged = allow;
                }
                if let Some(secs) = cert_expiry_secs {
                    check_cert_expiry(secs)?;
                    c.cert_expiry_secs = secs;
                }
            }
            Command::RotateCa { ca, cross } => {
                let c = self.cluster_mut()?;
                let Some(old) = c.ca.replace(*ca) else {
                    return Err(StoreError::Invalid(
                        "this cluster has no CA to rotate from".into(),
                    ));
                };
                c.ca_previous.push(old.cert_pem);
                c.ca_cross = Some(cross);
            }
            Command::FinishCaRotation {
                worker_join_token,
                manager_join_token,
            } => {
                let c = self.cluster_mut()?;
                if c.ca_previous.is_empty() {
                    return Err(StoreError::Invalid("no CA rotation is in progress".into()));
                }
                c.ca_previous.clear();
                c.ca_cross = None;
                c.worker_join_token = worker_join_token;
                c.manager_join_token = manager_join_token;
            }
            Command::RecordCertificate { id, certificate } => {
                self.update_node(&id, rev, ev, |node| node.certificate = Some(*certificate))?;
            }
            Command::RecordClientCert { cert, at } => {
                let c = self.cluster_mut()?;
                let now = (at.0 / 1000) as i64;
                c.client_certs.retain(|k| k.not_after > now);
                c.client_certs.push(cert);
            }
            Command::RevokeClientCerts { target } => {
                let c = self.cluster_mut()?;
                let by_digest = target.len() >= 12 && target.bytes().all(|b| b.is_ascii_hexdigit());
                let matches = |k: &shoal_api::wire::ClientCert| {
                    k.name == target
                        || (by_digest && k.digest.starts_with(&target.to_ascii_lowercase()))
                };
                if !c.client_certs.iter().any(|k| matches(k) && !k.revoked) {
                    return Err(StoreError::Invalid(format!(
                        "no unrevoked user certificate named {target:?} or with a digest starting so \
                         (see `shoal cluster client-cert --list`)"
                    )));
                }
                for k in c.client_certs.iter_mut().filter(|k| matches(k)) {
                    k.revoked = true;
                }
            }
            Command::SetUnlockKey(key) => {
                let c = self.cluster_mut()?;
                c.unlock_key = key;
            }
            Command::CreateService { id, spec, at } => {
                check_service_spec(self, &spec, None, &[])?;
                check_files_exist(self, &spec, &[])?;
                check_published_ports(self, [(id.clone(), (*spec).clone())].iter(), &[])?;
                self.check_vips(&[(&spec, None)], &[])?;
                self.insert_service(rev, id, *spec, at, ev);
            }
            Command::UpdateService {
                id,
                spec,
                expected_version,
                at,
            } => {
                let current = self.services.get(&id).ok_or_else(|| StoreError::NotFound {
                    kind: "service",
                    id: id.to_string(),
                })?;
                if let Some(v) = expected_version {
                    if v != current.version {
                        return Err(StoreError::VersionMismatch {
                            id,
                            expected: v,
                            actual: current.version,
                        });
                    }
                }
                if current.removing {
                    return Err(StoreError::Invalid(format!(
                        "service {} is being removed",
                        current.spec.name
                    )));
                }
                check_service_spec(self, &spec, Some(&id), &[])?;
                check_files_exist(self, &spec, &[])?;
                check_published_ports(self, [(id.clone(), (*spec).clone())].iter(), &[])?;
                self.check_vips(&[(&spec, Some(&id))], &[])?;
                self.replace_spec(rev, &id, *spec, at, ev);
            }
            Command::RemoveService { id } => {
                let s = self
                    .services
                    .get_mut(&id)
                    .ok_or_else(|| StoreError::NotFound {
                        kind: "service",
                        id: id.to_string(),
                    })?;
                if !s.removing {
                    s.removing = true;
                    s.version = rev;
                    ev.push(Event {
                        revision: rev,
                        action: Action::Update,
                        object: Object::Service(Box::new(s.clone())),
                    });
                }
            }
            Command::CreateFile(f) => {
                check_new_files(self, std::slice::from_ref(&f))?;
                self.insert_file(rev, *f, ev);
            }
            Command::RemoveFile { id } => {
                let f = self.files.get(&id).ok_or_else(|| StoreError::NotFound {
                    kind: "secret or config",
                    id: id.to_string(),
                })?;
                let users = self.file_users(f.kind, &f.spec.name);
                if !users.is_empty() {
                    return Err(StoreError::Invalid(format!(
                        "{} {} is in use by service {}",
                        f.kind,
                        f.spec.name,
                        users.join(", ")
                    )));
                }
                let f = self.files.remove(&id).expect("checked above");
                ev.push(Event {
                    revision: rev,
                    action: Action::Delete,
                    object: Object::File(Box::new(f)),
                });
            }
            Command::CreateNetwork(n) => {
                check_network(self, &n, &[])?;
                self.insert_network(rev, *n, ev);
            }
            Command::RemoveNetwork { id } => {
                let n = self.networks.get(&id).ok_or_else(|| StoreError::NotFound {
                    kind: "network",
                    id: id.to_string(),
                })?;
                let users: Vec<_> = self
                    .services
                    .values()
                    .filter(|s| {
                        s.spec
                            .task
                            .networks
                            .iter()
                            .any(|a| a.target == n.spec.name || a.target == n.id.as_str())
                    })
                    .map(|s| s.spec.name.clone())
                    .collect();
                if !users.is_empty() {
                    return Err(StoreError::Invalid(format!(
                        "network {} is in use by {}",
                        n.spec.name,
                        users.join(", ")
                    )));
                }
                let n = self.networks.remove(&id).expect("checked above");
                ev.push(Event {
                    revision: rev,
                    action: Action::Delete,
                    object: Object::Network(Box::new(n)),
                });
            }
            Command::DeployStack {
                files,
                networks,
                create,
                update,
                remove,
                at,
            } => {
                check_new_files(self, &files)?;
                for n in &networks {
                    check_network(self, n, &networks)?;
                }
                for (_, spec) in create.iter().chain(update.iter()) {
                    check_files_exist(self, spec, &files)?;
                }
                let mut names = BTreeSet::new();
                for (id, spec) in create.iter().chain(update.iter()) {
                    if !names.insert(spec.name.clone()) {
                        return Err(StoreError::Invalid(format!(
                            "service {:?} appears twice",
                            spec.name
                        )));
                    }
                    // An update of a service deleted since the proposer looked (it was being
                    // removed) creates it again.
                    let existing = update
                        .iter()
                        .any(|(u, _)| u == id)
                        .then_some(id)
                        .filter(|id| self.services.contains_key(*id));
                    check_service_spec(self, spec, existing, &networks)?;
                }
                check_published_ports(self, create.iter().chain(update.iter()), remove.as_slice())?;
                let specs: Vec<_> = create
                    .iter()
                    .map(|(_, s)| (s, None))
                    .chain(update.iter().map(|(id, s)| (s, Some(id))))
                    .collect();
                self.check_vips(&specs, &networks)?;
                for id in &remove {
                    if !self.services.contains_key(id) {
                        return Err(StoreError::NotFound {
                            kind: "service",
                            id: id.to_string(),
                        });
                    }
                }
                for f in files {
                    self.insert_file(rev, f, ev);
                }
                for n in networks {
                    self.insert_network(rev, n, ev);
                }
                for (id, spec) in create {
                    self.insert_service(rev, id, spec, at, ev);
                }
                for (id, spec) in update {
                    let Some(s) = self.services.get_mut(&id) else {
                        self.insert_service(rev, id, spec, at, ev);
                        continue;
                    };
                    // A service still being removed (`stack rm` just before) is declared
                    // again: it stays, with the declared spec.
                    if s.removing {
                        s.removing = false;
                        s.version = rev;
                        ev.push(Event {
                            revision: rev,
                            action: Action::Update,
                            object: Object::Service(Box::new(s.clone())),
                        });
                    }
                    self.replace_spec(rev, &id, spec, at, ev);
                }
                for id in remove {
                    self.apply_inner(rev, Command::RemoveService { id }, ev)?;
                }
            }
            Command::RemoveStack { name } => {
                let in_stack = |labels: &BTreeMap<String, String>| {
                    labels.get(shoal_api::service::STACK_LABEL) == Some(&name)
                };
                let services: Vec<ServiceId> = self
                    .services
                    .values()
                    .filter(|s| in_stack(&s.spec.labels))
                    .map(|s| s.id.clone())
                    .collect();
                let networks: Vec<NetworkId> = self
                    .networks
                    .values()
                    .filter(|n| in_stack(&n.spec.labels))
                    .map(|n| n.id.clone())
                    .collect();
                let files: Vec<FileObjectId> = self
                    .files
                    .values()
                    .filter(|f| in_stack(&f.spec.labels))
                    .map(|f| f.id.clone())
                    .collect();
                if services.is_empty() && networks.is_empty() && files.is_empty() {
                    return Err(StoreError::NotFound {
                        kind: "stack",
                        id: name,
                    });
                }
                // Its secrets and configs go with it (its tasks' nodes keep their copies
                // until the tasks are gone).
                for id in files {
                    let f = self.files.remove(&id).expect("listed above");
                    ev.push(Event {
                        revision: rev,
                        action: Action::Delete,
                        object: Object::File(Box::new(f)),
                    });
                }
                for id in services {
                    self.apply_inner(rev, Command::RemoveService { id }, ev)?;
                }
                for id in networks {
                    let n = self.networks.remove(&id).expect("listed above");
                    ev.push(Event {
                        revision: rev,
                        action: Action::Delete,
                        object: Object::Network(Box::new(n)),
                    });
                }
            }
            Command::RegisterNode {
                id,
                description,
                addr,
                role,
                raft_id,
                at,
            } => {
                if self.removed_nodes.contains(&id) {
                    return Err(StoreError::Invalid(format!(
                        "node {id} was removed from the cluster: it cannot register again (leave and join anew)"
                    )));
                }
                let created = !self.nodes.contains_key(&id);
                let node = self.nodes.entry(id.clone()).or_insert_with(|| Node {
                    id: id.clone(),
                    version: rev,
                    created_at: at,
                    spec: NodeSpec {
                        role,
                        availability: Availability::Active,
                        labels: BTreeMap::new(),
                    },
                    description: NodeDescription::default(),
                    status: NodeStatus::default(),
                    manager_status: None,
                    certificate: None,
                });
                node.description = *description;
                node.manager_status = (raft_id != 0).then(|| ManagerStatus {
                    raft_id,
                    addr: self.managers.get(&raft_id).cloned().unwrap_or_default(),
                });
                node.status = NodeStatus {
                    state: NodeState::Ready,
                    message: String::new(),
                    addr,
                    since: at,
                };
                node.version = rev;
                let action = if created {
                    Action::Create
                } else {
                    Action::Update
                };
                ev.push(Event {
                    revision: rev,
                    action,
                    object: Object::Node(Box::new(node.clone())),
                });
            }
            Command::UpdateNode {
                id,
                availability,
                labels_add,
                labels_rm,
            } => {
                self.update_node(&id, rev, ev, |node| {
                    if let Some(a) = availability {
                        node.spec.availability = a;
                    }
                    for k in labels_rm {
                        node.spec.labels.remove(&k);
                    }
                    node.spec.labels.extend(labels_add);
                })?;
            }
            Command::SetNodeRole { id, role } => {
                self.update_node(&id, rev, ev, |node| node.spec.role = role)?;
            }
            Command::RemoveNode { id, at } => {
                self.apply_inner(
                    rev,
                    Command::NodeDown {
                        id: id.clone(),
                        message: "removed".into(),
                        at,
                    },
                    ev,
                )?;
                if let Some(node) = self.nodes.remove(&id) {
                    ev.push(Event {
                        revision: rev,
                        action: Action::Delete,
                        object: Object::Node(Box::new(node)),
                    });
                }
                self.removed_nodes.insert(id);
            }
            Command::NodeDown { id, message, at } => {
                self.update_node(&id, rev, ev, |node| {
                    node.status.state = NodeState::Down;
                    node.status.message = message;
                    node.status.since = at;
                })?;
                for t in self.tasks.values_mut() {
                    if t.node_id.as_ref() == Some(&id) && !t.status.state.is_terminal() {
                        let t = Arc::make_mut(t);
                        t.status = TaskStatus::new(TaskState::Orphaned, at, "node down");
                        t.version = rev;
                        ev.push(Event {
                            revision: rev,
                            action: Action::Update,
                            object: Object::Task(Box::new(t.clone())),
                        });
                    }
                }
            }
            Command::Tasks(ops) => {
                for op in ops {
                    self.apply_task_op(rev, op, ev);
                }
            }
        }
        Ok(())
    }

    fn insert_service(
        &mut self,
        rev: u64,
        id: ServiceId,
        spec: ServiceSpec,
        at: Timestamp,
        ev: &mut Vec<Event>,
    ) {
        let s = Service {
            id: id.clone(),
            spec_version: rev,
            version: rev,
            created_at: at,
            updated_at: at,
            spec,
            previous_spec: None,
            update_status: None,
            removing: false,
            virtual_ips: Vec::new(),
            published_ports: Vec::new(),
        };
        ev.push(Event {
            revision: rev,
            action: Action::Create,
            object: Object::Service(Box::new(s.clone())),
        });
        self.services.insert(id, s);
    }

    fn replace_spec(
        &mut self,
        rev: u64,
        id: &ServiceId,
        spec: ServiceSpec,
        at: Timestamp,
        ev: &mut Vec<Event>,
    ) {
        let s = self.services.get_mut(id).expect("caller checked");
        if s.spec == spec {
            return;
        }
        let template_changed = s.spec.task != spec.task;
        let old = std::mem::replace(&mut s.spec, spec);
        s.previous_spec = Some(old);
        s.spec_version = rev;
        s.version = rev;
        s.updated_at = at;
        if template_changed {
            s.update_status = Some(UpdateStatus {
                state: UpdateState::Updating,
                started_at: at,
                completed_at: None,
                message: "update in progress".into(),
            });
        }
        ev.push(Event {
            revision: rev,
            action: Action::Update,
            object: Object::Service(Box::new(s.clone())),
        });
    }

    /// Keeps the allocator's index in step with what a command changed: networks come and go,
    /// finished and deleted tasks give their addresses back, and services get (or give back) a
    /// virtual IP per attached network. Event copies of services show their virtual IPs.
    fn settle_addresses(&mut self, events: &mut [Event]) {
        let mut ipam = self.ipam.0.take().unwrap_or_default();
        for e in events.iter_mut() {
            match (e.action, &mut e.object) {
                (Action::Create, Object::Network(n)) => ipam.add_network(n),
                (Action::Delete, Object::Network(n)) => ipam.remove_network(&n.id),
                (action, Object::Task(t))
                    if action == Action::Delete || t.status.state.is_terminal() =>
                {
                    let owner = Owner::Task(t.id.clone());
                    for a in &t.networks {
                        ipam.release(&a.network_id, &a.address, &owner);
                    }
                }
                (Action::Delete, Object::Service(svc)) => {
                    let owner = Owner::Vip(svc.id.clone());
                    for v in &svc.virtual_ips {
                        ipam.release(&v.network_id, &v.addr, &owner);
                    }
                }
                (_, Object::Service(svc)) => {
                    let wanted: Vec<Network> = match self.services.get(&svc.id) {
                        Some(current) if wants_vips(&current.spec) => current
                            .spec
                            .task
                            .networks
                            .iter()
                            .filter_map(|a| self.network_by_ref(&a.target).cloned())
                            .collect(),
                        _ => Vec::new(),
                    };
                    let Some(current) = self.services.get_mut(&svc.id) else {
                        continue;
                    };
                    let published = if current.spec.task.networks.is_empty() {
                        Vec::new()
                    } else if current
                        .spec
                        .endpoint
                        .ports
                        .iter()
                        .all(|p| p.published.is_some())
                    {
                        current.spec.endpoint.ports.clone()
                    } else {
                        let (spec, previous) =
                            (current.spec.clone(), current.published_ports.clone());
                        let taken = ports_in_use(self, |id| *id == svc.id).into_keys().collect();
                        // Checked before the command changed anything (check_published_ports).
                        publish_ports(&spec, &previous, &taken).unwrap_or_else(|e| {
                            tracing::error!(error = %e, "ports left unpublished");
                            Vec::new()
                        })
                    };
                    let Some(current) = self.services.get_mut(&svc.id) else {
                        continue;
                    };
                    current.published_ports = published;
                    let owner = Owner::Vip(current.id.clone());
                    current.virtual_ips.retain(|v| {
                        let keep = wanted.iter().any(|n| n.id == v.network_id);
                        if !keep {
                            ipam.release(&v.network_id, &v.addr, &owner);
                        }
                        keep
                    });
                    for n in &wanted {
                        if current.virtual_ips.iter().any(|v| v.network_id == n.id) {
                            continue;
                        }
                        // Checked before the command changed anything (check_vips).
                        match ipam.allocate(n, owner.clone()) {
                            Ok(addr) => current.virtual_ips.push(VirtualIp {
                                network_id: n.id.clone(),
                                addr,
                            }),
                            Err(err) => {
                                tracing::error!(service = %current.spec.name, %err, "no virtual IP")
                            }
                        }
                    }
                    **svc = current.clone();
                }
                _ => {}
            }
        }
        self.ipam.0 = Some(ipam);
    }

    /// Refuses services whose virtual IPs would not fit: each attached network (existing, or
    /// among `new_networks`) must have a free address for every service that needs a new VIP
    /// on it.
    fn check_vips(
        &self,
        specs: &[(&ServiceSpec, Option<&ServiceId>)],
        new_networks: &[NewNetwork],
    ) -> Result<(), StoreError> {
        let Some(ipam) = self.ipam.0.as_ref() else {
            return Ok(());
        };
        let mut need: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for (spec, id) in specs {
            if !wants_vips(spec) {
                continue;
            }
            let existing = id.and_then(|id| self.services.get(id));
            for a in &spec.task.networks {
                let (net_id, name, free) = match self.network_by_ref(&a.target) {
                    Some(n) => (n.id.clone(), n.spec.name.clone(), ipam.free(&n.id)),
                    None => match new_networks
                        .iter()
                        .find(|n| n.spec.name == a.target || n.id.as_str() == a.target)
                    {
                        Some(n) => (
                            n.id.clone(),
                            n.spec.name.clone(),
                            Cidr::parse(&n.subnet).map_or(0, |c| c.assignable().len() as u64),
                        ),
                        None => continue,
                    },
                };
                if existing.is_some_and(|s| s.virtual_ips.iter().any(|v| v.network_id == net_id)) {
                    continue;
                }
                let e = need.entry(name).or_insert((0, free));
                e.0 += 1;
            }
        }
        match need.into_iter().find(|(_, (n, free))| n > free) {
            Some((name, _)) => Err(StoreError::Invalid(format!(
                "no free address on network {name:?} for a service's virtual IP: its subnet is full"
            ))),
            None => Ok(()),
        }
    }

    /// Gives a new task an address on each of its service's networks; when one is full, the
    /// task is rejected with the reason (and holds nothing).
    fn attach(&mut self, task: &mut Task) {
        let mut ipam = self.ipam.0.take().unwrap_or_default();
        let owner = Owner::Task(task.id.clone());
        let mut failure = None;
        for a in &task.spec.networks {
            let Some(n) = self.network_by_ref(&a.target) else {
                failure = Some(format!("network {:?} does not exist", a.target));
                break;
            };
            match ipam.allocate(n, owner.clone()) {
                Ok(address) => task.networks.push(NetworkAttachment {
                    network_id: n.id.clone(),
                    network: n.spec.name.clone(),
                    address,
                    aliases: a.aliases.clone(),
                }),
                Err(e) => {
                    failure = Some(e.to_string());
                    break;
                }
            }
        }
        if let Some(err) = failure {
            for a in task.networks.drain(..) {
                ipam.release(&a.network_id, &a.address, &owner);
            }
            let mut status =
                TaskStatus::new(TaskState::Rejected, task.created_at, "allocation failed");
            status.err = err;
            task.status = status;
        }
        self.ipam.0 = Some(ipam);
    }

    fn insert_network(&mut self, rev: u64, n: NewNetwork, ev: &mut Vec<Event>) {
        let net = Network {
            id: n.id.clone(),
            version: rev,
            created_at: Timestamp(0),
            spec: n.spec,
            vni: n.vni,
            subnet: n.subnet,
            gateway: n.gateway,
        };
        ev.push(Event {
            revision: rev,
            action: Action::Create,
            object: Object::Network(Box::new(net.clone())),
        });
        self.networks.insert(n.id, net);
    }

    fn apply_task_op(&mut self, rev: u64, op: TaskOp, ev: &mut Vec<Event>) {
        let mut touched: Option<TaskId> = None;
        match op {
            TaskOp::Create(task) => {
                if self.services.contains_key(&task.service_id)
                    && !self.tasks.contains_key(&task.id)
                {
                    let mut task = *task;
                    task.version = rev;
                    if task.networks.is_empty()
                        && !task.spec.networks.is_empty()
                        && !task.status.state.is_terminal()
                    {
                        self.attach(&mut task);
                    }
                    let id = task.id.clone();
                    ev.push(Event {
                        revision: rev,
                        action: Action::Create,
                        object: Object::Task(Box::new(task.clone())),
                    });
                    self.tasks.insert(id, Arc::new(task));
                }
            }
            TaskOp::SetDesired { id, state } => {
                if let Some(t) = self.tasks.get_mut(&id).map(Arc::make_mut) {
                    if state > t.desired_state {
                        t.desired_state = state;
                        touched = Some(id);
                    }
                }
            }
            TaskOp::Delete { id } => {
                if let Some(t) = self.tasks.remove(&id) {
                    ev.push(Event {
                        revision: rev,
                        action: Action::Delete,
                        object: Object::Task(Box::new(Arc::unwrap_or_clone(t))),
                    });
                }
            }
            TaskOp::Assign { id, node, at } => {
                if let Some(t) = self.tasks.get_mut(&id).map(Arc::make_mut) {
                    if t.status.state <= TaskState::Pending && self.nodes.contains_key(&node) {
                        t.node_id = Some(node);
                        t.status = TaskStatus::new(TaskState::Assigned, at, "scheduled");
                        touched = Some(id);
                    }
                }
            }
            TaskOp::Pending { id, reason, at } => {
                if let Some(t) = self.tasks.get_mut(&id).map(Arc::make_mut) {
                    if t.status.state <= TaskState::Pending
                        && (t.status.state != TaskState::Pending || t.status.err != reason)
                    {
                        let mut status =
                            TaskStatus::new(TaskState::Pending, at, "pending task scheduling");
                        status.err = reason;
                        t.status = status;
                        touched = Some(id);
                    }
                }
            }
            TaskOp::Status { id, node, status } => {
                if let Some(t) = self.tasks.get_mut(&id).map(Arc::make_mut) {
                    let forward = status.state > t.status.state
                        || (status.state == t.status.state
                            && status != t.status
                            && status.state > TaskState::Assigned);
                    if t.node_id.as_ref() == Some(&node) && forward && !t.status.state.is_terminal()
                    {
                        t.status = status;
                        touched = Some(id);
                    }
                }
            }
            TaskOp::UpdateStatus { service, status } => {
                if let Some(s) = self.services.get_mut(&service) {
                    s.update_status = Some(status);
                    s.version = rev;
                    ev.push(Event {
                        revision: rev,
                        action: Action::Update,
                        object: Object::Service(Box::new(s.clone())),
                    });
                }
            }
            TaskOp::Rollback {
                service,
                message,
                at,
            } => {
                if let Some(s) = self.services.get_mut(&service) {
                    let Some(previous) = s.previous_spec.take() else {
                        return;
                    };
                    let current = std::mem::replace(&mut s.spec, previous);
                    s.previous_spec = Some(current);
                    s.spec_version = rev;
                    s.version = rev;
                    s.updated_at = at;
                    s.update_status = Some(UpdateStatus {
                        state: UpdateState::RollbackStarted,
                        started_at: at,
                        completed_at: None,
                        message,
                    });
                    ev.push(Event {
                        revision: rev,
                        action: Action::Update,
                        object: Object::Service(Box::new(s.clone())),
                    });
                }
            }
            TaskOp::DeleteService { id } => {
                // Only a service still being removed: a deploy may have brought it back since
                // the orchestrator looked.
                if self.services.get(&id).is_some_and(|s| s.removing) {
                    let s = self.services.remove(&id).expect("checked above");
                    ev.push(Event {
                        revision: rev,
                        action: Action::Delete,
                        object: Object::Service(Box::new(s)),
                    });
                }
            }
        }
        if let Some(id) = touched {
            let t = Arc::make_mut(self.tasks.get_mut(&id).expect("touched exists"));
            t.version = rev;
            ev.push(Event {
                revision: rev,
                action: Action::Update,
                object: Object::Task(Box::new(t.clone())),
            });
        }
    }

    /// How many of a service's tasks run, and how many are wanted (as `service ls` counts).
    pub fn replica_counts(&self, s: &Service) -> (u64, u64) {
        let running = self
            .tasks_of(&s.id)
            .filter(|t| t.status.state == TaskState::Running && t.wanted())
            .count() as u64;
        let desired = match s.spec.mode {
            ServiceMode::Replicated { replicas } => replicas,
            // Every node it should run on, as docker counts: a task rejected there still
            // counts as missing.
            ServiceMode::Global => {
                crate::orchestrator::global_nodes(s, self.nodes.values()).count() as u64
            }
        };
        if s.removing {
            (running, 0)
        } else {
            (running, desired)
        }
    }
}

impl Store {
    fn insert_file(&mut self, rev: u64, mut f: FileObject, ev: &mut Vec<Event>) {
        f.version = rev;
        ev.push(Event {
            revision: rev,
            action: Action::Create,
            object: Object::File(Box::new(f.clone())),
        });
        self.files.insert(f.id.clone(), f);
    }

    /// Why `service`'s new tasks wait (`depends_on`): the first dependency not yet there, or
    /// `None` when every one is. A dependency counts once every replica it wants has started
    /// (`service_started`) or runs, healthy where it has a check (`service_healthy`).
    pub fn dependency_wait(&self, service: &Service) -> Option<String> {
        use shoal_api::service::DependencyCondition;
        for d in &service.spec.depends_on {
            let Some(dep) = self
                .services
                .values()
                .find(|s| s.spec.name == d.service && !s.removing)
            else {
                return Some(format!(
                    "waiting for service {} (it does not exist)",
                    d.service
                ));
            };
            let (running, desired) = self.replica_counts(dep);
            let started = self
                .tasks_of(&dep.id)
                .filter(|t| {
                    t.wanted()
                        && matches!(t.status.state, TaskState::Starting | TaskState::Running)
                        && !t.status.container_id.is_empty()
                })
                .count() as u64;
            let (have, word) = match d.condition {
                DependencyCondition::ServiceStarted => (started, "started"),
                DependencyCondition::ServiceHealthy => (running, "running and healthy"),
            };
            if desired == 0 || have < desired {
                return Some(format!(
                    "waiting for service {} ({have}/{desired} {word})",
                    d.service
                ));
            }
        }
        None
    }

    /// The live services that name a secret or config.
    pub fn file_users(&self, kind: FileKind, name: &str) -> Vec<String> {
        self.services
            .values()
            .filter(|s| !s.removing)
            .filter(|s| {
                let c = &s.spec.task.container;
                let refs = match kind {
                    FileKind::Secret => &c.secrets,
                    FileKind::Config => &c.configs,
                };
                refs.iter().any(|r| r.source == name)
            })
            .map(|s| s.spec.name.clone())
            .collect()
    }

    /// The secret or config of `kind` named (or with the id) `name`.
    pub fn file_by_ref(&self, kind: FileKind, name: &str) -> Option<&FileObject> {
        self.files
            .values()
            .filter(|f| f.kind == kind)
            .find(|f| f.spec.name == name || f.id.as_str() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api::service::TaskTemplate;

    fn spec(name: &str) -> ServiceSpec {
        let mut s = ServiceSpec {
            name: name.into(),
            ..Default::default()
        };
        s.task.container.image = "busybox".into();
        s
    }

    fn sid(n: u128) -> ServiceId {
        ServiceId::from_bits(n)
    }

    fn task_on(id: u128, service: &ServiceId, spec: &ServiceSpec) -> Task {
        Task {
            id: TaskId::from_bits(id),
            version: 0,
            service_id: service.clone(),
            service_name: spec.name.clone(),
            slot: id as u64,
            node_id: None,
            spec_version: 1,
            spec: spec.task.clone(),
            desired_state: TaskState::Running,
            status: TaskStatus::new(TaskState::New, Timestamp(1), "created"),
            created_at: Timestamp(1),
            networks: Vec::new(),
        }
    }

    fn used(store: &Store, net: &NetworkId) -> usize {
        store.ipam.0.as_ref().map_or(0, |i| i.used(net))
    }

    #[test]
    fn addresses_are_never_handed_out_twice_and_all_come_back_after_churn() {
        let mut store = Store::default();
        let net = NetworkId::from_bits(9);
        let mut rev = 1;
        let mut apply = |store: &mut Store, cmd| {
            rev += 1;
            store.apply(rev, cmd)
        };
        let n = NewNetwork {
            id: net.clone(),
            spec: NetworkSpec {
                name: "shared".into(),
                driver: "overlay".into(),
                ..Default::default()
            },
            vni: 4096,
            subnet: "10.0.9.0/24".into(),
            gateway: "10.0.9.1".into(),
        };
        apply(&mut store, Command::CreateNetwork(Box::new(n))).unwrap();
        let mut web = spec("web");
        web.task
            .networks
            .push(shoal_api::service::NetworkAttachmentSpec {
                target: "shared".into(),
                aliases: vec![],
            });
        let mut next_task = 100;
        for round in 0..50u128 {
            let id = sid(1000 + round);
            apply(
                &mut store,
                Command::CreateService {
                    id: id.clone(),
                    spec: Box::new(web.clone()),
                    at: Timestamp(1),
                },
            )
            .unwrap();
            let mut ops = Vec::new();
            for _ in 0..5 {
                next_task += 1;
                ops.push(TaskOp::Create(Box::new(task_on(next_task, &id, &web))));
            }
            apply(&mut store, Command::Tasks(ops)).unwrap();
            // Every live address is distinct: the VIP and five tasks.
            let mut seen = BTreeSet::new();
            for t in store.tasks.values() {
                for a in &t.networks {
                    assert!(seen.insert(a.address.clone()), "{} twice", a.address);
                }
            }
            for v in &store.services[&id].virtual_ips {
                assert!(seen.insert(v.addr.clone()), "{} twice", v.addr);
            }
            assert_eq!(seen.len(), 6);
            assert_eq!(used(&store, &net), 6);
            // A snapshot rebuilds the same index.
            let copy: Store = serde_json::from_slice(&serde_json::to_vec(&store).unwrap()).unwrap();
            assert_eq!(Ipam::build(&copy).used(&net), 6);
            // The service goes, its tasks are deleted.
            let tasks: Vec<TaskId> = store.tasks.keys().cloned().collect();
            apply(&mut store, Command::RemoveService { id: id.clone() }).unwrap();
            apply(
                &mut store,
                Command::Tasks(
                    tasks
                        .into_iter()
                        .map(|id| TaskOp::Delete { id })
                        .chain([TaskOp::DeleteService { id }])
                        .collect(),
                ),
            )
            .unwrap();
            assert_eq!(used(&store, &net), 0, "round {round} left addresses held");
        }
    }

    #[test]
    fn a_full_subnet_rejects_the_task_and_refuses_a_vip_changing_nothing() {
        let mut store = Store::default();
        let n = NewNetwork {
            id: NetworkId::from_bits(9),
            spec: NetworkSpec {
                name: "tiny".into(),
                driver: "overlay".into(),
                ..Default::default()
            },
            vni: 4096,
            subnet: "10.0.9.0/29".into(),
            gateway: "10.0.9.1".into(),
        };
        store.apply(2, Command::CreateNetwork(Box::new(n))).unwrap();
        let mut web = spec("web");
        web.task
            .networks
            .push(shoal_api::service::NetworkAttachmentSpec {
                target: "tiny".into(),
                aliases: vec![],
            });
        store
            .apply(
                3,
                Command::CreateService {
                    id: sid(1),
                    spec: Box::new(web.clone()),
                    at: Timestamp(1),
                },
            )
            .unwrap();
        // .2 is the VIP; .3 to .6 go to tasks; the fifth task finds the subnet full.
        let ops = (1..=5)
            .map(|i| TaskOp::Create(Box::new(task_on(i, &sid(1), &web))))
            .collect();
        store.apply(4, Command::Tasks(ops)).unwrap();
        let last = &store.tasks[&TaskId::from_bits(5)];
        assert_eq!(last.status.state, TaskState::Rejected);
        assert_eq!(
            last.status.err,
            "no free address on network \"tiny\": its subnet 10.0.9.0/29 is full"
        );
        assert!(last.networks.is_empty());
        let before = store.clone();
        let err = store
            .apply(
                5,
                Command::CreateService {
                    id: sid(2),
                    spec: Box::new(ServiceSpec {
                        name: "other".into(),
                        ..web
                    }),
                    at: Timestamp(1),
                },
            )
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("no free address on network \"tiny\""),
            "{err}"
        );
        assert_eq!(store.services, before.services);
    }

    #[test]
    fn encrypted_and_overlapping_networks_are_refused() {
        let mut store = Store::default();
        let net = |id: u128, name: &str, subnet: &str| NewNetwork {
            id: NetworkId::from_bits(id),
            spec: NetworkSpec {
                name: name.into(),
                driver: "overlay".into(),
                ..Default::default()
            },
            vni: 4096 + id as u32,
            subnet: subnet.into(),
            gateway: String::new(),
        };
        let mut secret = net(1, "s_private", "10.0.1.0/24");
        secret
            .spec
            .driver_opts
            .insert("encrypted".into(), String::new());
        let err = store
            .apply(2, Command::CreateNetwork(Box::new(secret)))
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("encrypted overlay networks are not supported yet"),
            "{err}"
        );
        assert!(store.networks.is_empty());
        store
            .apply(
                3,
                Command::CreateNetwork(Box::new(net(2, "a", "10.0.0.0/16"))),
            )
            .unwrap();
        let err = store
            .apply(
                4,
                Command::CreateNetwork(Box::new(net(3, "b", "10.0.7.0/24"))),
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "network \"b\": subnet 10.0.7.0/24 overlaps network \"a\"'s subnet 10.0.0.0/16"
        );
    }

    #[test]
    fn a_published_port_in_use_is_refused_with_the_service_holding_it() {
        let mut store = Store::default();
        let mut a = spec("a_web");
        a.endpoint.ports.push(shoal_api::service::PortConfig {
            target: 80,
            published: Some(8080),
            protocol: "tcp".into(),
            mode: "ingress".into(),
        });
        store
            .apply(
                2,
                Command::CreateService {
                    id: sid(1),
                    spec: Box::new(a.clone()),
                    at: Timestamp(1),
                },
            )
            .unwrap();
        let b = ServiceSpec {
            name: "b_web".into(),
            ..a.clone()
        };
        let err = store
            .apply(
                3,
                Command::DeployStack {
                    files: Vec::new(),
                    networks: vec![],
                    create: vec![(sid(2), b)],
                    update: vec![],
                    remove: vec![],
                    at: Timestamp(1),
                },
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "service \"b_web\": port '8080/tcp' is already in use by service \"a_web\""
        );
        // The same port over UDP, and the service itself updated, are fine.
        let mut udp = ServiceSpec {
            name: "c_dns".into(),
            ..a.clone()
        };
        udp.endpoint.ports[0].protocol = "udp".into();
        store
            .apply(
                4,
                Command::CreateService {
                    id: sid(3),
                    spec: Box::new(udp),
                    at: Timestamp(1),
                },
            )
            .unwrap();
        a.labels.insert("x".into(), "y".into());
        store
            .apply(
                5,
                Command::UpdateService {
                    id: sid(1),
                    spec: Box::new(a),
                    expected_version: None,
                    at: Timestamp(1),
                },
            )
            .unwrap();
    }

    #[test]
    fn ports_without_published_get_one_from_the_dynamic_range_and_keep_it() {
        let mut store = Store::default();
        let n = NewNetwork {
            id: NetworkId::from_bits(9),
            spec: NetworkSpec {
                name: "s_default".into(),
                driver: "overlay".into(),
                ..Default::default()
            },
            vni: 4096,
            subnet: "10.0.9.0/24".into(),
            gateway: "10.0.9.1".into(),
        };
        store.apply(1, Command::CreateNetwork(Box::new(n))).unwrap();
        let port = |published: Option<u16>, protocol: &str| shoal_api::service::PortConfig {
            target: 80,
            published,
            protocol: protocol.into(),
            mode: "ingress".into(),
        };
        let on_net = |name: &str, ports: Vec<shoal_api::service::PortConfig>| {
            let mut s = spec(name);
            s.task
                .networks
                .push(shoal_api::service::NetworkAttachmentSpec {
                    target: "s_default".into(),
                    aliases: vec![],
                });
            s.endpoint.ports = ports;
            s
        };
        let published = |store: &Store, id: u128| -> Vec<(Option<u16>, String)> {
            store.services[&sid(id)]
                .published_ports
                .iter()
                .map(|p| (p.published, p.protocol.clone()))
                .collect()
        };
        // Two services in one deploy: one declares 30000, the other gets the next free ports.
        store
            .apply(
                2,
                Command::DeployStack {
                    files: Vec::new(),
                    networks: vec![],
                    create: vec![
                        (
                            sid(1),
                            on_net("s_a", vec![port(None, "tcp"), port(None, "udp")]),
                        ),
                        (sid(2), on_net("s_b", vec![port(Some(30000), "tcp")])),
                    ],
                    update: vec![],
                    remove: vec![],
                    at: Timestamp(1),
                },
            )
            .unwrap();
        assert_eq!(
            published(&store, 1),
            [(Some(30001), "tcp".into()), (Some(30000), "udp".into())]
        );
        // An update keeps the chosen ports; a port another service holds is refused by name.
        let mut a = on_net("s_a", vec![port(None, "tcp"), port(None, "udp")]);
        a.labels.insert("x".into(), "y".into());
        let update = |rev: u64, id: u128, spec: ServiceSpec, store: &mut Store| {
            store.apply(
                rev,
                Command::UpdateService {
                    id: sid(id),
                    spec: Box::new(spec),
                    expected_version: None,
                    at: Timestamp(1),
                },
            )
        };
        update(3, 1, a, &mut store).unwrap();
        assert_eq!(published(&store, 1)[0], (Some(30001), "tcp".into()));
        let err = update(
            4,
            2,
            on_net("s_b", vec![port(Some(30001), "tcp")]),
            &mut store,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "service \"s_b\": port '30001/tcp' is already in use by service \"s_a\""
        );
        assert_eq!(published(&store, 2), [(Some(30000), "tcp".into())]);
        // A removed service gives its ports back.
        store
            .apply(5, Command::RemoveService { id: sid(1) })
            .unwrap();
        store
            .apply(
                6,
                Command::CreateService {
                    id: sid(3),
                    spec: Box::new(on_net("s_c", vec![port(None, "tcp")])),
                    at: Timestamp(1),
                },
            )
            .unwrap();
        assert_eq!(published(&store, 3), [(Some(30001), "tcp".into())]);
    }

    #[test]
    fn a_full_dynamic_port_range_is_refused_with_the_port() {
        let port = |published: Option<u16>| shoal_api::service::PortConfig {
            target: 53,
            published,
            protocol: "udp".into(),
            mode: "host".into(),
        };
        let mut s = spec("s_dns");
        s.endpoint.ports = vec![port(None)];
        let taken = crate::allocator::DYNAMIC_PORTS
            .map(|n| (n, "udp".to_owned()))
            .collect();
        assert_eq!(
            crate::allocator::publish_ports(&s, &[], &taken).unwrap_err(),
            "service \"s_dns\": no free port in 30000-32767 to publish target port 53/udp"
        );
        let mut taken = taken;
        taken.remove(&(32767, "udp".to_owned()));
        assert_eq!(
            crate::allocator::publish_ports(&s, &[port(Some(30005))], &taken).unwrap()[0].published,
            Some(32767)
        );
    }

    #[test]
    fn a_deploy_right_after_a_removal_keeps_the_service() {
        let mut store = Store::default();
        let create = Command::CreateService {
            id: sid(1),
            spec: Box::new(spec("a")),
            at: Timestamp(1),
        };
        store.apply(1, create).unwrap();
        store
            .apply(2, Command::RemoveService { id: sid(1) })
            .unwrap();
        assert!(store.services[&sid(1)].removing);
        // The orchestrator decided to delete it from a snapshot taken here...
        let stale = Command::Tasks(vec![TaskOp::DeleteService { id: sid(1) }]);
        // ...but the stack is deployed again first.
        let deploy = Command::DeployStack {
            files: Vec::new(),
            networks: vec![],
            create: vec![],
            update: vec![(sid(1), spec("a"))],
            remove: vec![],
            at: Timestamp(3),
        };
        store.apply(3, deploy).unwrap();
        assert!(!store.services[&sid(1)].removing);
        store.apply(4, stale).unwrap();
        assert!(
            store.services.contains_key(&sid(1)),
            "a stale delete removed a declared service"
        );
        // A delete while it is being removed still deletes.
        store
            .apply(5, Command::RemoveService { id: sid(1) })
            .unwrap();
        store
            .apply(
                6,
                Command::Tasks(vec![TaskOp::DeleteService { id: sid(1) }]),
            )
            .unwrap();
        assert!(store.services.is_empty());
        // A deploy computed before that delete applied (an update of the old id) brings it
        // back instead of failing.
        let deploy = Command::DeployStack {
            files: Vec::new(),
            networks: vec![],
            create: vec![],
            update: vec![(sid(1), spec("a"))],
            remove: vec![],
            at: Timestamp(7),
        };
        store.apply(7, deploy).unwrap();
        assert!(!store.services[&sid(1)].removing);
    }

    #[test]
    fn a_refused_command_changes_nothing() {
        let mut store = Store::default();
        store
            .apply(
                1,
                Command::CreateService {
                    id: sid(1),
                    spec: Box::new(spec("a")),
                    at: Timestamp(1),
                },
            )
            .unwrap();
        let before = store.clone();
        let deploy = Command::DeployStack {
            files: Vec::new(),
            networks: vec![],
            create: vec![(sid(2), spec("b")), (sid(3), spec("a"))],
            update: vec![],
            remove: vec![],
            at: Timestamp(2),
        };
        let err = store.apply(2, deploy).unwrap_err();
        assert!(matches!(err, StoreError::NameInUse { .. }));
        assert_eq!(store.services, before.services);
    }

    #[test]
    fn a_global_service_wants_a_task_on_every_eligible_node_before_any_exists() {
        let mut store = Store::default();
        let mut global = spec("g");
        global.mode = ServiceMode::Global;
        global.task.placement.constraints = vec!["node.role == worker".into()];
        store
            .apply(
                1,
                Command::CreateService {
                    id: sid(1),
                    spec: Box::new(global),
                    at: Timestamp(1),
                },
            )
            .unwrap();
        for (n, role) in [
            (7, NodeRole::Manager),
            (8, NodeRole::Worker),
            (9, NodeRole::Worker),
        ] {
            store
                .apply(
                    n,
                    Command::RegisterNode {
                        id: NodeId::from_bits(n as u128),
                        description: Box::default(),
                        addr: String::new(),
                        role,
                        raft_id: 0,
                        at: Timestamp(2),
                    },
                )
                .unwrap();
        }
        // No task yet (or all rejected): 0 of the 2 workers, never 0/0.
        let s = store.services[&sid(1)].clone();
        assert_eq!(store.replica_counts(&s), (0, 2));
    }

    #[test]
    fn task_states_only_move_forward_and_only_from_their_node() {
        let mut store = Store::default();
        store
            .apply(
                1,
                Command::CreateService {
                    id: sid(1),
                    spec: Box::new(spec("a")),
                    at: Timestamp(1),
                },
            )
            .unwrap();
        let node = NodeId::from_bits(9);
        let other = NodeId::from_bits(8);
        store
            .apply(
                2,
                Command::RegisterNode {
                    id: node.clone(),
                    description: Box::default(),
                    addr: String::new(),
                    role: NodeRole::Manager,
                    raft_id: 0,
                    at: Timestamp(2),
                },
            )
            .unwrap();
        let task = Task {
            id: TaskId::from_bits(5),
            version: 0,
            service_id: sid(1),
            service_name: "a".into(),
            slot: 1,
            node_id: None,
            spec_version: 1,
            spec: TaskTemplate::default(),
            desired_state: TaskState::Running,
            status: TaskStatus::new(TaskState::New, Timestamp(3), "created"),
            created_at: Timestamp(3),
            networks: Vec::new(),
        };
        let id = task.id.clone();
        store
            .apply(
                3,
                Command::Tasks(vec![
                    TaskOp::Create(Box::new(task)),
                    TaskOp::Assign {
                        id: id.clone(),
                        node: node.clone(),
                        at: Timestamp(3),
                    },
                ]),
            )
            .unwrap();
        let report = |state| TaskOp::Status {
            id: id.clone(),
            node: node.clone(),
            status: TaskStatus::new(state, Timestamp(4), ""),
        };
        store
            .apply(4, Command::Tasks(vec![report(TaskState::Running)]))
            .unwrap();
        store
            .apply(5, Command::Tasks(vec![report(TaskState::Starting)]))
            .unwrap();
        assert_eq!(store.tasks[&id].status.state, TaskState::Running);
        store
            .apply(
                6,
                Command::Tasks(vec![TaskOp::Status {
                    id: id.clone(),
                    node: other,
                    status: TaskStatus::new(TaskState::Failed, Timestamp(5), ""),
                }]),
            )
            .unwrap();
        assert_eq!(store.tasks[&id].status.state, TaskState::Running);
        store
            .apply(
                7,
                Command::NodeDown {
                    id: node,
                    message: "gone".into(),
                    at: Timestamp(6),
                },
            )
            .unwrap();
        assert_eq!(store.tasks[&id].status.state, TaskState::Orphaned);
        assert_eq!(store.revision, 7);
    }

    #[test]
    fn scaling_does_not_start_an_update_but_a_template_change_does() {
        let mut store = Store::default();
        store
            .apply(
                1,
                Command::CreateService {
                    id: sid(1),
                    spec: Box::new(spec("a")),
                    at: Timestamp(1),
                },
            )
            .unwrap();
        let mut scaled = spec("a");
        scaled.mode = ServiceMode::Replicated { replicas: 5 };
        store
            .apply(
                2,
                Command::UpdateService {
                    id: sid(1),
                    spec: Box::new(scaled.clone()),
                    expected_version: Some(1),
                    at: Timestamp(2),
                },
            )
            .unwrap();
        assert!(store.services[&sid(1)].update_status.is_none());
        scaled.task.container.image = "other".into();
        let stale = store.apply(
            3,
            Command::UpdateService {
                id: sid(1),
                spec: Box::new(scaled.clone()),
                expected_version: Some(1),
                at: Timestamp(3),
            },
        );
        assert!(matches!(stale, Err(StoreError::VersionMismatch { .. })));
        store
            .apply(
                4,
                Command::UpdateService {
                    id: sid(1),
                    spec: Box::new(scaled),
                    expected_version: None,
                    at: Timestamp(4),
                },
            )
            .unwrap();
        assert_eq!(
            store.services[&sid(1)]
                .update_status
                .as_ref()
                .unwrap()
                .state,
            UpdateState::Updating
        );
    }
}
