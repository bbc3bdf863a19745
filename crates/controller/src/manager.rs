//! The manager role: opens the Raft log under the data root, restores the store, runs the Raft
//! task, and — while this manager leads — the leader loops: orchestrator, scheduler and node
//! monitor. Each loop is level-triggered: a change of the store revision (or a wake-up time)
//! only marks work to do; each pass reads the store, calls a pure core and proposes the result
//! in one batch, then waits for it to apply before looking again.

use crate::dispatcher::{Dispatcher, DispatcherSettings};
use crate::orchestrator::{self, IdSource};
use crate::raft::node::{self, NoPeers, ProposeError, RaftHandle, RaftSettings};
use crate::raft::storage::DurableLog;
use crate::scheduler::{self, Decision};
use crate::store::{ClusterObject, Command, NewNetwork, Store, TaskOp};
use crate::watch::EventHub;
use shoal_api::network::{NetworkSpec, FIRST_VNI};
use shoal_api::node::NodeState;
use shoal_api::task::Task;
use shoal_api::units::Timestamp;
use shoal_api::{NetworkId, TaskId};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// Where and how the manager runs.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// Directory for the Raft log (`<data_root>/raft`).
    pub data_root: PathBuf,
    /// Raft timing and snapshots.
    pub raft: RaftSettings,
    /// Agent heartbeats.
    pub dispatcher: DispatcherSettings,
}

/// The manager could not start or act.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// The data root is unusable.
    #[error("data root {path}: {message}")]
    DataRoot {
        /// The path.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// Raft refused to start.
    #[error("raft: {0}")]
    Raft(String),
    /// `cluster init` on a node that already has a cluster.
    #[error("this node is already part of a cluster")]
    AlreadyInitialized,
    /// A proposal failed.
    #[error(transparent)]
    Propose(#[from] ProposeError),
}

/// The current time as a [`Timestamp`].
pub fn now() -> Timestamp {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp(since.as_millis() as u64)
}

struct RandomIds;

impl IdSource for RandomIds {
    fn task_id(&mut self) -> TaskId {
        TaskId::from_bits(rand::random())
    }
}

/// A running cluster member: store, events, Raft and dispatcher.
#[derive(Debug)]
pub struct Cluster {
    /// The replicated state.
    pub store: Arc<RwLock<Store>>,
    /// Its changes.
    pub hub: Arc<EventHub>,
    /// Proposals go here.
    pub raft: RaftHandle,
    /// Agent sessions (used while leading).
    pub dispatcher: Arc<Dispatcher>,
    /// `service logs` subscriptions in flight.
    pub logs: Arc<crate::logs::LogBroker>,
}

/// The manager role of a daemon.
#[derive(Debug)]
pub struct Manager {
    config: ManagerConfig,
    cluster: Mutex<Option<Arc<Cluster>>>,
    shutdown: CancellationToken,
}

impl Manager {
    /// Opens the manager; if the data root holds a cluster's log, rejoins it at once.
    pub async fn open(
        config: ManagerConfig,
        shutdown: CancellationToken,
    ) -> Result<Arc<Manager>, ManagerError> {
        let manager = Arc::new(Manager {
            config,
            cluster: Mutex::new(None),
            shutdown,
        });
        let log = manager.open_log()?;
        if log.is_initialized() {
            let cluster = manager.start(log)?;
            *manager.cluster.lock().await = Some(cluster);
        }
        Ok(manager)
    }

    fn open_log(&self) -> Result<DurableLog, ManagerError> {
        let dir = self.config.data_root.join("raft");
        std::fs::create_dir_all(&dir).map_err(|e| ManagerError::DataRoot {
            path: dir.clone(),
            message: e.to_string(),
        })?;
        DurableLog::open(&dir.join("raft.redb")).map_err(|e| ManagerError::DataRoot {
            path: dir,
            message: e.to_string(),
        })
    }

    fn start(&self, log: DurableLog) -> Result<Arc<Cluster>, ManagerError> {
        let store = node::restore_store(&log).map_err(ManagerError::Raft)?;
        let hub = EventHub::new(store.revision);
        let store = Arc::new(RwLock::new(store));
        let (raft, _task) = node::start(
            self.config.raft.clone(),
            log,
            store.clone(),
            hub.clone(),
            Box::new(NoPeers),
            self.shutdown.clone(),
        )
        .map_err(ManagerError::Raft)?;
        let cluster = Arc::new(Cluster {
            store,
            hub,
            raft,
            dispatcher: Arc::new(Dispatcher::new(self.config.dispatcher)),
            logs: Arc::new(crate::logs::LogBroker::new()),
        });
        tokio::spawn(supervise_leader_loops(
            cluster.clone(),
            self.shutdown.clone(),
        ));
        Ok(cluster)
    }

    /// The cluster, once initialized.
    pub async fn cluster(&self) -> Option<Arc<Cluster>> {
        self.cluster.lock().await.clone()
    }

    /// Makes this daemon the first manager of a new cluster.
    pub async fn init(&self) -> Result<Arc<Cluster>, ManagerError> {
        let mut slot = self.cluster.lock().await;
        if slot.is_some() {
            return Err(ManagerError::AlreadyInitialized);
        }
        let log = self.open_log()?;
        if log.is_initialized() {
            return Err(ManagerError::AlreadyInitialized);
        }
        log.bootstrap(self.config.raft.id)
            .map_err(|e| ManagerError::Raft(e.to_string()))?;
        let cluster = self.start(log)?;
        let mut status = cluster.raft.status();
        let leader = matches!(
            tokio::time::timeout(Duration::from_secs(10), status.wait_for(|s| s.is_leader())).await,
            Ok(Ok(_))
        );
        if !leader {
            return Err(ManagerError::Raft(
                "the new cluster elected no leader within 10s".into(),
            ));
        }
        let object = ClusterObject {
            id: shoal_api::ids::id_from_bits(rand::random()),
            created_at: now(),
            worker_join_token: format!("SHLTKN-1-{}", shoal_api::ids::id_from_bits(rand::random())),
        };
        cluster.raft.propose(Command::InitCluster(object)).await?;
        *slot = Some(cluster.clone());
        Ok(cluster)
    }
}

/// Allocates VNIs and subnets for new networks, given the store and earlier allocations.
pub fn allocate_networks(store: &Store, specs: Vec<NetworkSpec>) -> Vec<NewNetwork> {
    let mut vnis: Vec<u32> = store.networks.values().map(|n| n.vni).collect();
    let mut subnets: Vec<String> = store.networks.values().map(|n| n.subnet.clone()).collect();
    let mut out = Vec::new();
    for spec in specs {
        let vni = (FIRST_VNI..).find(|v| !vnis.contains(v)).expect("free vni");
        vnis.push(vni);
        let (subnet, gateway) = if spec.subnet.is_empty() {
            let mut i = vni - FIRST_VNI;
            loop {
                let s = format!("10.{}.{}.0/24", 200 + i / 256, i % 256);
                if !subnets.contains(&s) {
                    break (s, format!("10.{}.{}.1", 200 + i / 256, i % 256));
                }
                i += 1;
            }
        } else {
            let base = spec.subnet.split('/').next().unwrap_or("").to_owned();
            let gw = match base.rsplit_once('.') {
                Some((prefix, _)) => format!("{prefix}.1"),
                None => base.clone(),
            };
            (spec.subnet.clone(), gw)
        };
        subnets.push(subnet.clone());
        out.push(NewNetwork {
            id: NetworkId::from_bits(rand::random()),
            spec,
            vni,
            subnet,
            gateway,
        });
    }
    out
}

/// Runs the leader loops while this manager leads.
async fn supervise_leader_loops(cluster: Arc<Cluster>, shutdown: CancellationToken) {
    let mut status = cluster.raft.status();
    loop {
        if status.wait_for(|s| s.is_leader()).await.is_err() {
            return;
        }
        let term = status.borrow().term;
        tracing::info!(
            term,
            "leading: starting orchestrator, scheduler and node monitor"
        );
        let leading = shutdown.child_token();
        cluster.dispatcher.grant_grace(
            cluster
                .store
                .read()
                .expect("store lock")
                .nodes
                .values()
                .filter(|n| n.status.state != NodeState::Down)
                .map(|n| n.id.clone()),
        );
        tokio::spawn(orchestrate(cluster.clone(), leading.clone()));
        tokio::spawn(schedule(cluster.clone(), leading.clone()));
        tokio::spawn(monitor_nodes(cluster.clone(), leading.clone()));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = status.wait_for(|s| !s.is_leader() || s.term != term) => {
                leading.cancel();
                if r.is_err() { return; }
                tracing::info!("no longer leading: leader loops stopped");
            }
        }
    }
}

/// Waits until the revision moves past `seen`, `wake_at` passes, or the loop is cancelled.
async fn wait_for_work(
    rev: &mut tokio::sync::watch::Receiver<u64>,
    seen: u64,
    wake_at: Option<Timestamp>,
    stop: &CancellationToken,
) -> bool {
    let sleep = async {
        match wake_at {
            Some(at) => {
                tokio::time::sleep(Duration::from_millis(at.0.saturating_sub(now().0))).await
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = stop.cancelled() => false,
        r = rev.wait_for(|r| *r > seen) => r.is_ok(),
        _ = sleep => true,
    }
}

async fn propose_ops(cluster: &Cluster, ops: Vec<TaskOp>, what: &str) {
    if ops.is_empty() {
        return;
    }
    let count = ops.len();
    if let Err(e) = cluster.raft.propose(Command::Tasks(ops)).await {
        tracing::warn!(error = %e, ops = count, "{what}: proposal failed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn orchestrate(cluster: Arc<Cluster>, stop: CancellationToken) {
    let mut rev = cluster.hub.revision();
    let mut seen = 0;
    let mut wake_at = None;
    let mut ids = RandomIds;
    while wait_for_work(&mut rev, seen, wake_at, &stop).await {
        seen = *rev.borrow_and_update();
        let t = now();
        let (ops, wake) = {
            let store = cluster.store.read().expect("store lock");
            let nodes: Vec<_> = store.nodes.values().cloned().collect();
            let mut ops = Vec::new();
            let mut wake: Option<Timestamp> = None;
            let mut by_service: std::collections::HashMap<_, Vec<&Task>> =
                std::collections::HashMap::new();
            for task in store.tasks.values() {
                by_service
                    .entry(task.service_id.clone())
                    .or_default()
                    .push(task);
            }
            for service in store.services.values() {
                let tasks = by_service
                    .get(&service.id)
                    .map(Vec::as_slice)
                    .unwrap_or(&[]);
                let plan = orchestrator::reconcile(service, tasks, &nodes, t, &mut ids);
                ops.extend(plan.ops);
                if let Some(w) = plan.wake_at {
                    wake = Some(wake.map_or(w, |x: Timestamp| x.min(w)));
                }
            }
            // Tasks of services that no longer exist.
            for (sid, tasks) in &by_service {
                if !store.services.contains_key(sid) {
                    ops.extend(tasks.iter().map(|t| TaskOp::Delete { id: t.id.clone() }));
                }
            }
            (ops, wake)
        };
        wake_at = wake;
        propose_ops(&cluster, ops, "orchestrator").await;
    }
}

async fn schedule(cluster: Arc<Cluster>, stop: CancellationToken) {
    let mut rev = cluster.hub.revision();
    let mut seen = 0;
    while wait_for_work(&mut rev, seen, None, &stop).await {
        seen = *rev.borrow_and_update();
        let t = now();
        let ops: Vec<TaskOp> = {
            let store = cluster.store.read().expect("store lock");
            let waiting: Vec<&Task> = store
                .tasks
                .values()
                .filter(|t| scheduler::needs_placement(t))
                .collect();
            if waiting.is_empty() {
                continue;
            }
            let placed: Vec<&Task> = store
                .tasks
                .values()
                .filter(|t| {
                    t.node_id.is_some()
                        && !scheduler::needs_placement(t)
                        && !t.status.state.is_terminal()
                })
                .collect();
            let nodes: Vec<_> = store.nodes.values().cloned().collect();
            scheduler::schedule(&waiting, &nodes, &placed)
                .into_iter()
                .map(|(id, d)| match d {
                    Decision::Assign(node) => TaskOp::Assign { id, node, at: t },
                    Decision::Pending(reason) => TaskOp::Pending { id, reason, at: t },
                })
                .filter(|op| match op {
                    // Only write a pending reason when it changed.
                    TaskOp::Pending { id, reason, .. } => store.tasks.get(id).is_some_and(|t| {
                        t.status.err != *reason
                            || t.status.state != shoal_api::task::TaskState::Pending
                    }),
                    _ => true,
                })
                .collect()
        };
        propose_ops(&cluster, ops, "scheduler").await;
    }
}

async fn monitor_nodes(cluster: Arc<Cluster>, stop: CancellationToken) {
    let period = cluster.dispatcher.settings().heartbeat_period / 2;
    let mut ticker = tokio::time::interval(period.max(Duration::from_millis(50)));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        for node in cluster.dispatcher.silent() {
            let live = cluster
                .store
                .read()
                .expect("store lock")
                .nodes
                .get(&node)
                .is_some_and(|n| n.status.state != NodeState::Down);
            cluster.dispatcher.drop_session(&node);
            if !live {
                continue;
            }
            tracing::warn!(node_id = %node, "node missed its heartbeats: marking it down");
            let cmd = Command::NodeDown {
                id: node.clone(),
                message: "heartbeat failure".into(),
                at: now(),
            };
            if let Err(e) = cluster.raft.propose(cmd).await {
                tracing::warn!(node_id = %node, error = %e, "could not mark node down");
            }
        }
    }
}
