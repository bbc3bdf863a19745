//! The dispatcher: the leader's side of agent sessions. Agents register (with the join token),
//! heartbeat, fetch their assignments (the full set, then changes) and report task statuses in
//! batches. Sessions and heartbeats live in the leader's memory only; what changes the cluster —
//! a node registering, a node going down, task statuses — goes through Raft.
//!
//! A node that has not heartbeaten for `down_after` is marked down by the node monitor (see
//! `manager`), which orphans its unfinished tasks so the orchestrator replaces them.

use crate::store::Store;
use crate::watch::{EventHub, Subscription};
use shoal_api::network::{
    split_address, Backend, Endpoint, NetworkView, PortPlan, PublishedPort, ServiceRecord,
};
use shoal_api::task::{Task, TaskState};
use shoal_api::wire::{Action, Assignments, Object};
use shoal_api::NetworkId;
use shoal_api::ServiceId;
use shoal_api::{NodeId, TaskId};
use std::collections::BTreeSet;
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Heartbeat settings.
#[derive(Debug, Clone, Copy)]
pub struct DispatcherSettings {
    /// How often agents heartbeat.
    pub heartbeat_period: Duration,
    /// Silence after which a node is marked down.
    pub down_after: Duration,
    /// After a leader change, how long every node has to open a session with the new leader
    /// before it may be marked down: agents first notice the old leader is gone (up to four
    /// heartbeat periods), then find the new one.
    pub election_grace: Duration,
}

impl Default for DispatcherSettings {
    fn default() -> Self {
        // Chosen for recovery from a dead host within 3 s: down after 2 s of silence
        // (four missed heartbeats), tasks replaced on the next orchestrator pass.
        DispatcherSettings {
            heartbeat_period: Duration::from_millis(500),
            down_after: Duration::from_secs(2),
            election_grace: Duration::from_secs(4),
        }
    }
}

impl DispatcherSettings {
    /// Silence after which an agent stops its tasks itself: longer than any wait before the
    /// managers mark it down and replace them, after a leader change too.
    pub fn self_stop_after(&self) -> Duration {
        self.down_after + self.election_grace
    }
}

/// A session check failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no session {session} for node {node}: register again")]
pub struct SessionError {
    /// The node.
    pub node: NodeId,
    /// The session it gave.
    pub session: String,
}

#[derive(Debug)]
struct Session {
    id: Option<String>,
    last_seen: Instant,
}

/// Sessions of the agents talking to this leader.
#[derive(Debug)]
pub struct Dispatcher {
    settings: DispatcherSettings,
    sessions: Mutex<HashMap<NodeId, Session>>,
}

impl Dispatcher {
    /// A dispatcher with no sessions.
    pub fn new(settings: DispatcherSettings) -> Dispatcher {
        Dispatcher {
            settings,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    /// Its settings.
    pub fn settings(&self) -> DispatcherSettings {
        self.settings
    }

    /// Opens a session for `node`, replacing any earlier one.
    pub fn open_session(&self, node: &NodeId) -> String {
        let id = shoal_api::ids::id_from_bits(rand::random());
        self.sessions.lock().expect("sessions lock").insert(
            node.clone(),
            Session {
                id: Some(id.clone()),
                last_seen: Instant::now(),
            },
        );
        id
    }

    /// Records a heartbeat (or any call) of a session.
    pub fn touch(&self, node: &NodeId, session: &str) -> Result<(), SessionError> {
        let mut sessions = self.sessions.lock().expect("sessions lock");
        match sessions.get_mut(node) {
            Some(s) if s.id.as_deref() == Some(session) => {
                s.last_seen = Instant::now();
                Ok(())
            }
            _ => Err(SessionError {
                node: node.clone(),
                session: session.to_owned(),
            }),
        }
    }

    /// On becoming leader: sessions of an earlier term are void (their agents register again),
    /// and every node not yet down gets `election_grace` to open a session; `previous_leader`,
    /// the node of the manager that led before, gets `down_after` only.
    pub fn grant_grace(
        &self,
        nodes: impl Iterator<Item = NodeId>,
        previous_leader: Option<&NodeId>,
    ) {
        let mut sessions = self.sessions.lock().expect("sessions lock");
        sessions.clear();
        let extra = self
            .settings
            .election_grace
            .saturating_sub(self.settings.down_after);
        let now = Instant::now();
        for n in nodes {
            let last_seen = if Some(&n) == previous_leader {
                now
            } else {
                now + extra
            };
            sessions.insert(
                n,
                Session {
                    id: None,
                    last_seen,
                },
            );
        }
    }

    /// Nodes silent for longer than `down_after`.
    pub fn silent(&self) -> Vec<NodeId> {
        let sessions = self.sessions.lock().expect("sessions lock");
        sessions
            .iter()
            .filter(|(_, s)| {
                Instant::now().saturating_duration_since(s.last_seen) > self.settings.down_after
            })
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Forgets a node's session (after marking it down).
    pub fn drop_session(&self, node: &NodeId) {
        self.sessions.lock().expect("sessions lock").remove(node);
    }
}

/// True for a task a node must hear about: placed on it by the scheduler.
fn assigned_to(t: &Task, node: &NodeId) -> bool {
    t.node_id.as_ref() == Some(node) && t.status.state >= TaskState::Assigned
}

/// The full set of a node's assignments.
pub fn full_assignments(store: &Store, node: &NodeId) -> Assignments {
    let tasks: Vec<Task> = store
        .tasks
        .values()
        .filter(|t| assigned_to(t, node))
        .map(|t| (**t).clone())
        .collect();
    Assignments {
        revision: store.revision,
        full: true,
        files: files_of(store, &tasks),
        tasks,
        removed: Vec::new(),
        networks: Some(network_views(store, node)),
        ports: Some(port_plan(store)),
    }
}

/// The secrets and configs (with their data) that `tasks` name: what a node running them
/// needs, and nothing else.
pub fn files_of(store: &Store, tasks: &[Task]) -> Vec<shoal_api::secret::FileObject> {
    use shoal_api::secret::FileKind;
    let mut wanted = std::collections::BTreeSet::new();
    for t in tasks
        .iter()
        .filter(|t| t.desired_state <= TaskState::Running)
    {
        for r in &t.spec.container.secrets {
            wanted.insert((FileKind::Secret, r.source.as_str()));
        }
        for r in &t.spec.container.configs {
            wanted.insert((FileKind::Config, r.source.as_str()));
        }
    }
    store
        .files
        .values()
        .filter(|f| wanted.contains(&(f.kind, f.spec.name.as_str())))
        .cloned()
        .collect()
}

/// Every published port with its running tasks, and the nodes' addresses. Only tasks with a
/// network attachment can be reached (their hosts give them an interface on the host's
/// gateway bridge).
pub fn port_plan(store: &Store) -> PortPlan {
    let with_ports: Vec<&shoal_api::service::Service> = store
        .services
        .values()
        .filter(|s| !s.removing && !s.published_ports.is_empty())
        .collect();
    if with_ports.is_empty() {
        return PortPlan::default();
    }
    let addr_of = |n: &shoal_api::node::Node| -> Option<Ipv4Addr> {
        let a = &n.status.addr;
        a.rsplit_once(':')
            .map_or(a.as_str(), |(h, _)| h)
            .parse()
            .ok()
    };
    let peers = store.nodes.values().filter_map(addr_of).collect();
    let mut backends: BTreeMap<&ServiceId, Vec<Backend>> = BTreeMap::new();
    for t in store.tasks.values() {
        if t.status.state != TaskState::Running || !t.wanted() || t.networks.is_empty() {
            continue;
        }
        let Some(node_addr) = t
            .node_id
            .as_ref()
            .and_then(|n| store.nodes.get(n))
            .and_then(addr_of)
        else {
            continue;
        };
        backends.entry(&t.service_id).or_default().push(Backend {
            task_id: t.id.clone(),
            node_addr,
        });
    }
    let mut ports = Vec::new();
    for s in with_ports {
        // What the store published: declared ports, and those the cluster chose.
        for p in &s.published_ports {
            let Some(published) = p.published else {
                continue;
            };
            ports.push(PublishedPort {
                service: s.spec.name.clone(),
                published,
                target: p.target,
                protocol: p.protocol.clone(),
                mode: p.mode.clone(),
                backends: backends.get(&s.id).cloned().unwrap_or_default(),
            });
        }
    }
    PortPlan { peers, ports }
}

/// What `node` must know of the networks its tasks are on: every placed, unfinished endpoint
/// (for its forwarding entries), which of them run (for DNS and virtual IPs), and the names
/// and virtual IP of each attached service. A task that stops running leaves the view at once,
/// so DNS and load balancing drop it as soon as the manager knows.
pub fn network_views(store: &Store, node: &NodeId) -> Vec<NetworkView> {
    if store.networks.is_empty() {
        return Vec::new();
    }
    let local: BTreeSet<&NetworkId> = store
        .tasks
        .values()
        .filter(|t| assigned_to(t, node) && !t.status.state.is_terminal())
        .flat_map(|t| t.networks.iter().map(|a| &a.network_id))
        .collect();
    let mut views: BTreeMap<&NetworkId, NetworkView> = local
        .iter()
        .filter_map(|id| store.networks.get(*id))
        .map(|n| {
            (
                &n.id,
                NetworkView {
                    network: n.clone(),
                    endpoints: Vec::new(),
                    services: Vec::new(),
                },
            )
        })
        .collect();
    if views.is_empty() {
        return Vec::new();
    }
    let node_addr = |id: &NodeId| -> Option<Ipv4Addr> {
        let addr = &store.nodes.get(id)?.status.addr;
        let host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h);
        host.parse().ok()
    };
    for t in store.tasks.values() {
        if t.networks.is_empty() || t.status.state.is_terminal() {
            continue;
        }
        let Some(n) = t
            .node_id
            .as_ref()
            .filter(|_| t.status.state >= TaskState::Assigned)
        else {
            continue;
        };
        let Some(node_addr) = node_addr(n) else {
            continue;
        };
        for a in &t.networks {
            let (Some(view), Some((addr, _))) =
                (views.get_mut(&a.network_id), split_address(&a.address))
            else {
                continue;
            };
            view.endpoints.push(Endpoint {
                task_id: t.id.clone(),
                service_id: t.service_id.clone(),
                addr,
                node_addr,
                running: t.status.state == TaskState::Running && t.wanted(),
            });
        }
    }
    for s in store.services.values() {
        for a in &s.spec.task.networks {
            let Some(n) = store.network_by_ref(&a.target) else {
                continue;
            };
            let Some(view) = views.get_mut(&n.id) else {
                continue;
            };
            let mut names = vec![s.spec.name.clone()];
            if let Some(short) = s
                .spec
                .stack()
                .and_then(|stack| s.spec.name.strip_prefix(&format!("{stack}_")))
            {
                names.push(short.to_owned());
            }
            names.extend(a.aliases.iter().cloned());
            let vip = s
                .virtual_ips
                .iter()
                .find(|v| v.network_id == n.id)
                .and_then(|v| split_address(&v.addr))
                .map(|(ip, _)| ip);
            view.services.push(ServiceRecord {
                service_id: s.id.clone(),
                names,
                vip,
            });
        }
    }
    views.into_values().collect()
}

/// Changes to one node's assignments, folded in as events arrive (newest version of each task
/// wins).
#[derive(Debug, Default)]
struct Delta {
    tasks: BTreeMap<TaskId, Option<Task>>,
    /// Node changes matter to the network views (peers, endpoints' hosts) only on a cluster
    /// that has networks: without, a thousand nodes joining wake no one.
    nodes_matter: bool,
    /// Something a network view is made of changed: send the views again.
    networks: bool,
}

impl Delta {
    fn fold(&mut self, events: &[shoal_api::wire::Event], node: &NodeId) {
        for e in events {
            match &e.object {
                Object::Service(_) | Object::Network(_) => self.networks = true,
                Object::Node(_) if self.nodes_matter => self.networks = true,
                Object::Task(t) if !t.networks.is_empty() => self.networks = true,
                _ => {}
            }
            let Object::Task(t) = &e.object else { continue };
            if t.node_id.as_ref() != Some(node) {
                continue;
            }
            match e.action {
                Action::Delete => {
                    self.tasks.insert(t.id.clone(), None);
                }
                _ if assigned_to(t, node) => {
                    self.tasks.insert(t.id.clone(), Some((**t).clone()));
                }
                _ => {}
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.tasks.is_empty() && !self.networks
    }

    fn into_assignments(
        self,
        revision: u64,
        store: &std::sync::RwLock<Store>,
        node: &NodeId,
    ) -> Assignments {
        let store = store.read().expect("store lock");
        let (networks, ports) = if self.networks {
            (Some(network_views(&store, node)), Some(port_plan(&store)))
        } else {
            (None, None)
        };
        let mut out = Assignments {
            revision,
            full: false,
            tasks: Vec::new(),
            removed: Vec::new(),
            networks,
            ports,
            files: Vec::new(),
        };
        for (id, t) in self.tasks {
            match t {
                Some(t) => out.tasks.push(t),
                None => out.removed.push(id),
            }
        }
        out.files = files_of(&store, &out.tasks);
        out
    }
}

/// How long a long poll that has changes keeps gathering more before it answers.
const COALESCE: Duration = Duration::from_millis(20);

/// Waits (up to `wait`) for changes to `node`'s assignments after `since`; the full set when
/// `since` is 0 or no longer held. Each event is looked at once, as it arrives.
pub async fn wait_assignments(
    store: &std::sync::RwLock<Store>,
    hub: &EventHub,
    node: &NodeId,
    since: u64,
    wait: Duration,
) -> Assignments {
    let full = || full_assignments(&store.read().expect("store lock"), node);
    if since == 0 {
        return full();
    }
    let Ok(Subscription { backlog, mut live }) = hub.subscribe(since) else {
        return full();
    };
    let mut delta = Delta {
        nodes_matter: !store.read().expect("store lock").networks.is_empty(),
        ..Default::default()
    };
    for batch in &backlog {
        delta.fold(batch, node);
    }
    // The revision of the last event seen, never the store's: the store is written before its
    // events are published, so a revision read off the store could skip an event still on its
    // way, and the agent would miss that change for good.
    let mut revision = backlog
        .last()
        .and_then(|b| b.last())
        .map_or(since, |e| e.revision);
    let mut deadline = tokio::time::Instant::now() + wait;
    let mut gathering = false;
    loop {
        // Once something changed, changes arriving within COALESCE go in the same answer: an
        // agent whose tasks change in a stream gets them in a few answers, not one per change.
        if !delta.is_empty() && !gathering {
            gathering = true;
            deadline = deadline.min(tokio::time::Instant::now() + COALESCE);
        }
        match tokio::time::timeout_at(deadline, live.recv()).await {
            Ok(Ok(batch)) => {
                delta.fold(&batch, node);
                revision = batch.last().map_or(revision, |e| e.revision);
            }
            Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => return full(),
            Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) | Err(_) => {
                return delta.into_assignments(revision, store, node);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_gets_the_secrets_and_configs_of_its_own_running_tasks_only() {
        use shoal_api::secret::{FileKind, FileObject, FileObjectSpec};
        use shoal_api::service::{FileReference, TaskTemplate};
        use shoal_api::task::TaskStatus;
        use shoal_api::units::Timestamp;
        let file = |n: u128, kind, name: &str| FileObject {
            id: shoal_api::FileObjectId::from_bits(n),
            kind,
            version: 1,
            created_at: Timestamp(1),
            spec: FileObjectSpec {
                name: name.into(),
                labels: Default::default(),
                data: b"x".to_vec(),
            },
        };
        let reference = |name: &str| FileReference {
            source: name.into(),
            target: format!("/run/secrets/{name}"),
            uid: "0".into(),
            gid: "0".into(),
            mode: 0o444,
        };
        let mut store = Store::default();
        for f in [
            file(1, FileKind::Secret, "mine"),
            file(2, FileKind::Secret, "theirs"),
            file(3, FileKind::Config, "mine"),
            file(4, FileKind::Secret, "stopped"),
        ] {
            store.files.insert(f.id.clone(), f);
        }
        let task = |n: u128, node: u128, secret: &str, desired| {
            let mut spec = TaskTemplate::default();
            spec.container.secrets = vec![reference(secret)];
            Task {
                id: TaskId::from_bits(n),
                version: 1,
                service_id: shoal_api::ServiceId::from_bits(n),
                service_name: "s".into(),
                slot: 1,
                node_id: Some(NodeId::from_bits(node)),
                spec_version: 1,
                spec,
                desired_state: desired,
                status: TaskStatus::new(TaskState::Running, Timestamp(1), "started"),
                created_at: Timestamp(1),
                networks: Vec::new(),
            }
        };
        let mut mine = task(1, 1, "mine", TaskState::Running);
        mine.spec.container.configs = vec![reference("mine")];
        for t in [
            mine,
            task(2, 2, "theirs", TaskState::Running),
            task(3, 1, "stopped", TaskState::Shutdown),
        ] {
            store.tasks.insert(t.id.clone(), std::sync::Arc::new(t));
        }
        let got: Vec<(FileKind, String)> = full_assignments(&store, &NodeId::from_bits(1))
            .files
            .into_iter()
            .map(|f| (f.kind, f.spec.name))
            .collect();
        assert_eq!(
            got,
            [
                (FileKind::Secret, "mine".to_owned()),
                (FileKind::Config, "mine".to_owned())
            ]
        );
    }

    #[tokio::test]
    async fn a_long_poll_that_times_out_never_skips_an_unpublished_change() {
        use shoal_api::service::TaskTemplate;
        use shoal_api::task::TaskStatus;
        use shoal_api::units::Timestamp;
        let node = NodeId::from_bits(1);
        let task = Task {
            id: TaskId::from_bits(7),
            version: 5,
            service_id: shoal_api::ServiceId::from_bits(1),
            service_name: "a".into(),
            slot: 1,
            node_id: Some(node.clone()),
            spec_version: 1,
            spec: TaskTemplate::default(),
            desired_state: TaskState::Running,
            status: TaskStatus::new(TaskState::Assigned, Timestamp(1), "assigned"),
            created_at: Timestamp(1),
            networks: Vec::new(),
        };
        // The store holds revision 5 (the assignment), its event is not published yet.
        let hub = EventHub::new(4);
        let mut store = Store {
            revision: 5,
            ..Default::default()
        };
        store
            .tasks
            .insert(task.id.clone(), std::sync::Arc::new(task.clone()));
        let store = std::sync::RwLock::new(store);
        let a = wait_assignments(&store, &hub, &node, 4, Duration::from_millis(20)).await;
        assert!(a.tasks.is_empty());
        assert_eq!(a.revision, 4, "the poll skipped past an unpublished change");
        hub.publish(
            5,
            vec![shoal_api::wire::Event {
                revision: 5,
                action: Action::Update,
                object: Object::Task(Box::new(task.clone())),
            }],
        );
        let a = wait_assignments(&store, &hub, &node, a.revision, Duration::from_millis(20)).await;
        assert_eq!(a.tasks, vec![task]);
    }

    #[test]
    fn sessions_expire_and_are_replaced() {
        let d = Dispatcher::new(DispatcherSettings {
            heartbeat_period: Duration::from_millis(1),
            down_after: Duration::from_millis(0),
            election_grace: Duration::from_millis(50),
        });
        let n = NodeId::from_bits(1);
        let s1 = d.open_session(&n);
        let s2 = d.open_session(&n);
        assert!(d.touch(&n, &s1).is_err(), "old session is gone");
        assert!(d.touch(&n, &s2).is_ok());
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(d.silent(), vec![n.clone()]);
        d.drop_session(&n);
        assert!(d.silent().is_empty());
        // After a leader change, a node without a session has the election grace.
        d.grant_grace([n.clone()].into_iter(), None);
        std::thread::sleep(Duration::from_millis(2));
        assert!(d.silent().is_empty(), "within the grace");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(d.silent(), vec![n.clone()]);
        // The previous leader's node gets down_after only.
        let old = NodeId::from_bits(2);
        d.grant_grace([n.clone(), old.clone()].into_iter(), Some(&old));
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(d.silent(), vec![old]);
    }
}
