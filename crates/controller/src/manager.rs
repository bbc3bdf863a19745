//! The manager role: opens the Raft log under the data root, restores the store, runs the Raft
//! task, and — while this manager leads — the leader loops: orchestrator, scheduler and node
//! monitor. Each loop is level-triggered: a change of the store revision (or a wake-up time)
//! only marks work to do; each pass reads the store, calls a pure core and proposes the result
//! in one batch, then waits for it to apply before looking again.

use crate::dispatcher::{Dispatcher, DispatcherSettings};
use crate::orchestrator::{self, IdSource};
use crate::raft::node::{self, MembershipChange, ProposeError, RaftHandle, RaftSettings};
use crate::raft::peer::{HttpForward, TcpTransport};
use crate::raft::storage::DurableLog;
use crate::scheduler::{self, Decision};
use crate::store::{ClusterObject, Command, Store, TaskOp};
use crate::watch::EventHub;
use serde::{Deserialize, Serialize};
use shoal_api::node::NodeState;
use shoal_api::task::Task;
use shoal_api::units::Timestamp;
use shoal_api::wire::{
    InitRequest, JoinClusterRequest, JoinClusterResponse, JoinRequest, CLUSTER_PORT,
};
use shoal_api::TaskId;
use shoal_client::{Client, Endpoint};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// Where and how the manager runs.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// Directory for the Raft log (`<data_root>/raft`) and the membership file.
    pub data_root: PathBuf,
    /// Raft timing and snapshots.
    pub raft: RaftSettings,
    /// Agent heartbeats.
    pub dispatcher: DispatcherSettings,
    /// `--force-new-cluster`: start as the only manager of the cluster this log belongs to.
    pub force_new_cluster: bool,
    /// Bytes of event history kept in memory (`--event-history`).
    pub event_history: usize,
    /// Registries reached over plain HTTP when images are pinned to digests.
    pub insecure_registries: Vec<String>,
    /// Where registries' CAs are (`HOST:PORT/ca.crt`; `None`: /etc/shoal/certs.d).
    pub registry_certs_dir: Option<std::path::PathBuf>,
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
    /// `cluster init` or `join` on a node that already has a cluster.
    #[error("this node is already part of a cluster (`shoal cluster leave` first)")]
    AlreadyInitialized,
    /// The cluster port could not be bound.
    #[error("cluster port {addr}: {message}")]
    Listen {
        /// The address.
        addr: String,
        /// What failed.
        message: String,
    },
    /// An address is not `host[:port]`.
    #[error("invalid address {0:?}: use HOST or HOST:PORT")]
    Address(String),
    /// Renewing this node's certificate through a manager failed.
    #[error("renewing the certificate through {remote}: {message}")]
    Renew {
        /// The manager asked.
        remote: String,
        /// Why.
        message: String,
    },
    /// Joining failed.
    #[error("joining the cluster through {remote}: {message}")]
    Join {
        /// The manager asked.
        remote: String,
        /// Why.
        message: String,
    },
    /// A proposal failed.
    #[error(transparent)]
    Propose(#[from] ProposeError),
    /// A setting a person must fix.
    #[error("{0}")]
    Invalid(String),
    /// Certificates could not be made, read or written.
    #[error("certificates: {0}")]
    Pki(#[from] crate::pki::PkiError),
}

/// Keeps the data key file as the cluster's autolock setting says: sealed under the unlock key
/// the store holds, or plain. Checked twice a second, so a change through Raft reaches every
/// manager's key file within one, and a manager that was away catches up when it starts.
/// It waits first until the store has replayed what the log had committed at start, so a
/// manager never writes its key in the clear from a store that has not yet seen autolock.
async fn keep_data_key_sealed(
    manager: std::sync::Weak<Manager>,
    log: DurableLog,
    store: Arc<RwLock<Store>>,
    mut status: tokio::sync::watch::Receiver<crate::raft::node::RaftStatus>,
    stop: CancellationToken,
) {
    let committed = raft::Storage::initial_state(&log)
        .map(|s| s.hard_state.commit)
        .unwrap_or(0);
    tokio::select! {
        _ = stop.cancelled() => return,
        r = status.wait_for(|s| s.applied >= committed) => if r.is_err() { return },
    }
    let mut written: Option<Option<String>> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let want = store
            .read()
            .expect("store lock")
            .cluster
            .as_ref()
            .and_then(|c| c.unlock_key.clone());
        if written.as_ref() == Some(&want) {
            continue;
        }
        let kek = want.as_deref().and_then(parse_unlock_key);
        let log = log.clone();
        // The log's data key first, then the node key (a manager whose either one is sealed
        // starts locked).
        let sealed = match tokio::task::spawn_blocking(move || log.seal_key(kek.as_ref())).await {
            Ok(Ok(())) => match manager.upgrade() {
                Some(m) => m.seal_node_key(kek).await.map_err(|e| e.to_string()),
                None => return,
            },
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match sealed {
            Ok(()) => {
                tracing::info!(autolock = want.is_some(), "data key and node key written");
                written = Some(want);
            }
            Err(e) => tracing::error!(error = %e, "writing the data key or the node key"),
        }
    }
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
    /// Stops this member's Raft task and leader loops (leave, demotion).
    stop: CancellationToken,
}

impl Cluster {
    /// The managers' cluster addresses.
    pub fn manager_addrs(&self) -> Vec<String> {
        self.store
            .read()
            .expect("store lock")
            .managers
            .values()
            .filter(|a| !a.is_empty())
            .cloned()
            .collect()
    }
}

/// What this node is in its cluster; kept in `<data_root>/cluster.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// True on a manager.
    pub manager: bool,
    /// This node's cluster address (`host:port`), empty for a one-host cluster.
    #[serde(default)]
    pub advertise_addr: String,
    /// What the cluster port binds.
    #[serde(default)]
    pub listen_addr: String,
    /// A worker's managers (cluster addresses).
    #[serde(default)]
    pub managers: Vec<String>,
    /// A worker's join token (it registers with it).
    #[serde(default)]
    pub join_token: String,
}

/// How this node's agent reaches the dispatcher.
#[derive(Debug, Clone)]
pub struct AgentTarget {
    /// Managers' cluster addresses (`host:port`); empty: the local socket.
    pub managers: Vec<String>,
    /// The token to register with.
    pub join_token: String,
    /// True on a manager host.
    pub manager: bool,
    /// This node's address.
    pub addr: String,
    /// The host's manager's Raft id (0 on a worker).
    pub raft_id: u64,
    /// Mutual TLS as this node (for TCP managers).
    pub tls: Option<shoal_client::Tls>,
    /// The node id this node's certificate names.
    pub node_id: Option<shoal_api::NodeId>,
}

/// The manager role of a daemon.
#[derive(Debug)]
pub struct Manager {
    config: ManagerConfig,
    cluster: Mutex<Option<Arc<Cluster>>>,
    membership: std::sync::RwLock<Option<Membership>>,
    shutdown: CancellationToken,
    fatal: std::sync::Mutex<Option<String>>,
    /// The address the cluster port is bound to, once it is.
    listening: std::sync::Mutex<Option<String>>,
    /// Set while `cluster leave` runs: leaving the voters then ends in no cluster at all, not
    /// in a worker (see `step_down`).
    leaving: std::sync::atomic::AtomicBool,
    /// Set while the log's data key waits for the unlock key (autolock).
    locked: std::sync::atomic::AtomicBool,
    /// This node's certificate, key and CA, once it belongs to a cluster.
    certs: std::sync::RwLock<Option<Credentials>>,
    /// Held while the certificates are replaced (renewal, join, promotion).
    certs_change: Mutex<()>,
    /// Under autolock, the unlock key the node key is saved sealed under (managers only).
    node_key_kek: std::sync::Mutex<Option<[u8; 32]>>,
    /// The cluster port's TLS, once it listens: replaced with the certificates.
    server_tls: std::sync::Mutex<Option<Arc<crate::serve::ServerTls>>>,
    /// The management API's TLS over TCP (`--listen`): replaced with the certificates.
    api_tls: Arc<crate::serve::ServerTls>,
}

/// A node's certificates with what is derived from them once, not on every agent poll: its
/// client TLS configuration and the node id its certificate names.
#[derive(Debug)]
struct Credentials {
    certs: crate::pki::NodeCerts,
    tls: shoal_client::Tls,
    node_id: Option<shoal_api::NodeId>,
}

/// The TLS configurations made from a node's certificates: its client side, the cluster
/// port's and the management API's over TCP.
struct Configs {
    client: Arc<tokio_rustls::rustls::ClientConfig>,
    server: Arc<tokio_rustls::rustls::ServerConfig>,
    api: Arc<tokio_rustls::rustls::ServerConfig>,
}

impl Configs {
    fn of(certs: &crate::pki::NodeCerts) -> Result<Configs, ManagerError> {
        Ok(Configs {
            client: certs.client_config()?,
            server: certs.server_config()?,
            api: certs.api_server_config()?,
        })
    }
}

/// The text form of an unlock key: `SHLKEY-1-` and 64 hex digits.
pub fn unlock_key_text(key: &[u8; 32]) -> String {
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    format!("SHLKEY-1-{hex}")
}

/// Reads an unlock key's text form.
pub fn parse_unlock_key(text: &str) -> Option<[u8; 32]> {
    let hex = text.trim().strip_prefix("SHLKEY-1-")?;
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut key = [0u8; 32];
    for (i, b) in key.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(key)
}

/// Splits `host[:port]`, with the cluster port as default.
pub fn with_port(addr: &str, default_port: u16) -> Result<String, ManagerError> {
    let bad = || ManagerError::Address(addr.to_owned());
    if addr.is_empty() || addr.contains('/') {
        return Err(bad());
    }
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && !host.contains(':') => {
            port.parse::<u16>().map_err(|_| bad())?;
            Ok(addr.to_owned())
        }
        None => Ok(format!("{addr}:{default_port}")),
        _ => Err(bad()),
    }
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or(CLUSTER_PORT)
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
            membership: std::sync::RwLock::new(None),
            shutdown,
            fatal: std::sync::Mutex::new(None),
            listening: std::sync::Mutex::new(None),
            leaving: Default::default(),
            locked: Default::default(),
            certs: Default::default(),
            certs_change: Mutex::new(()),
            node_key_kek: Default::default(),
            server_tls: Default::default(),
            api_tls: Default::default(),
        });
        tokio::spawn(crate::renewal::keep_fresh(
            Arc::downgrade(&manager),
            manager.shutdown.clone(),
        ));
        // Under autolock the node key is sealed too: a locked manager has no certificate, so
        // it neither serves the cluster port nor reaches other nodes until it is unlocked.
        let locked = crate::raft::storage::key_is_locked(&manager.log_path().with_extension("key"))
            || crate::pki::key_is_sealed(&manager.certs_dir());
        if !locked {
            if let Some(certs) = crate::pki::NodeCerts::load(&manager.certs_dir(), None)? {
                let configs = Configs::of(&certs)?;
                manager.install_certs(certs, configs);
            }
        }
        let membership = manager.read_membership()?;
        *manager.membership.write().expect("membership lock") = membership.clone();
        if locked {
            tracing::warn!("this manager is locked: `shoal cluster unlock` with the unlock key");
            manager
                .locked
                .store(true, std::sync::atomic::Ordering::SeqCst);
            return Ok(manager);
        }
        let log = manager.open_log()?;
        manager.resume(log, membership).await?;
        Ok(manager)
    }

    /// True while the manager waits for its unlock key.
    pub fn is_locked(&self) -> bool {
        self.locked.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Opens the log's data key with the cluster's unlock key and starts the manager.
    pub async fn unlock(self: &Arc<Self>, key: &str) -> Result<(), ManagerError> {
        if !self.is_locked() {
            return Err(ManagerError::Invalid("this manager is not locked".into()));
        }
        let kek = parse_unlock_key(key)
            .ok_or_else(|| ManagerError::Invalid("not an unlock key (SHLKEY-1-...)".into()))?;
        let certs = match crate::pki::NodeCerts::load(&self.certs_dir(), Some(&kek)) {
            Err(crate::pki::PkiError::WrongUnlockKey) => {
                return Err(ManagerError::Invalid(
                    "invalid unlock key: it does not open this manager's node key".into(),
                ))
            }
            other => other?,
        };
        let log = DurableLog::open_with(&self.log_path(), Some(&kek)).map_err(|e| match e {
            crate::raft::storage::StorageFault::WrongUnlockKey => ManagerError::Invalid(
                "invalid unlock key: it does not open this manager's data key".into(),
            ),
            other => ManagerError::DataRoot {
                path: self.log_path(),
                message: other.to_string(),
            },
        })?;
        if let Some(certs) = certs {
            let configs = Configs::of(&certs)?;
            self.install_certs(certs, configs);
        }
        *self.node_key_kek.lock().expect("kek lock") = Some(kek);
        let membership = self.membership();
        self.resume(log, membership).await?;
        self.locked
            .store(false, std::sync::atomic::Ordering::SeqCst);
        tracing::info!("manager unlocked");
        Ok(())
    }

    /// Rejoins the cluster the log belongs to, if it belongs to one.
    async fn resume(
        self: &Arc<Self>,
        log: DurableLog,
        membership: Option<Membership>,
    ) -> Result<(), ManagerError> {
        let manager = self;
        if log.is_initialized() {
            let membership = membership.unwrap_or(Membership {
                manager: true,
                ..Default::default()
            });
            if manager.config.force_new_cluster {
                log.force_single_voter()
                    .map_err(|e| ManagerError::Raft(e.to_string()))?;
                tracing::warn!(
                    "--force-new-cluster: this manager is now the only voter of its cluster"
                );
            }
            if !membership.listen_addr.is_empty() {
                manager.listen(&membership.listen_addr).await?;
            }
            let cluster = manager.start(log, BTreeMap::new())?;
            *manager.cluster.lock().await = Some(cluster.clone());
            if manager.config.force_new_cluster {
                let addr = membership.advertise_addr.clone();
                tokio::spawn(async move {
                    let mut status = cluster.raft.status();
                    if status.wait_for(|s| s.is_leader()).await.is_ok() {
                        let id = status.borrow().id;
                        let managers = BTreeMap::from([(id, addr)]);
                        if let Err(e) = cluster.raft.propose(Command::SetManagers(managers)).await {
                            tracing::error!(error = %e, "--force-new-cluster: managers not reset");
                        }
                    }
                });
            }
        } else if manager.config.force_new_cluster {
            return Err(ManagerError::Raft(
                "--force-new-cluster: this node holds no manager state to keep".into(),
            ));
        }
        Ok(())
    }

    fn membership_file(&self) -> PathBuf {
        self.config.data_root.join("cluster.json")
    }

    fn read_membership(&self) -> Result<Option<Membership>, ManagerError> {
        let path = self.membership_file();
        match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| ManagerError::DataRoot {
                        path,
                        message: e.to_string(),
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ManagerError::DataRoot {
                path,
                message: e.to_string(),
            }),
        }
    }

    fn write_membership(&self, m: Option<Membership>) -> Result<(), ManagerError> {
        let path = self.membership_file();
        let err = |e: std::io::Error| ManagerError::DataRoot {
            path: path.clone(),
            message: e.to_string(),
        };
        match &m {
            Some(m) => {
                let tmp = path.with_extension("json.tmp");
                std::fs::write(&tmp, serde_json::to_vec_pretty(m).expect("serializes"))
                    .map_err(err)?;
                std::fs::rename(&tmp, &path).map_err(err)?;
            }
            None => match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(err(e)),
                _ => {}
            },
        }
        *self.membership.write().expect("membership lock") = m;
        Ok(())
    }

    /// Registries reached over plain HTTP (`--insecure-registry`).
    pub fn insecure_registries(&self) -> &[String] {
        &self.config.insecure_registries
    }

    /// Where registries' CAs are (`--registry-certs-dir`).
    pub fn registry_certs_dir(&self) -> Option<std::path::PathBuf> {
        self.config.registry_certs_dir.clone()
    }

    /// What this node is in its cluster, if it belongs to one.
    pub fn membership(&self) -> Option<Membership> {
        self.membership.read().expect("membership lock").clone()
    }

    /// Why the manager failed for good (its Raft task died), if it did.
    pub fn fatal(&self) -> Option<String> {
        self.fatal.lock().expect("fatal lock").clone()
    }

    fn certs_dir(&self) -> PathBuf {
        self.config.data_root.join("certificates")
    }

    /// This node's certificate material, once it belongs to a cluster.
    pub fn certs(&self) -> Option<crate::pki::NodeCerts> {
        let c = self.certs.read().expect("certs lock");
        c.as_ref().map(|c| c.certs.clone())
    }

    /// Held while certificates are replaced, so a renewal and a join never interleave.
    pub(crate) fn certs_change(&self) -> &Mutex<()> {
        &self.certs_change
    }

    /// Saves new certificates and puts them to use at once: every client of this node (agent,
    /// Raft, forwarded writes) and the cluster port take them for their next connections.
    /// Nothing changes if they cannot be used or saved.
    pub(crate) fn replace_certs(&self, certs: crate::pki::NodeCerts) -> Result<(), ManagerError> {
        let configs = Configs::of(&certs)?;
        let mut kek = self.node_key_kek.lock().expect("kek lock");
        // Autolock is for managers: a worker's certificate (a demotion) is saved as it is.
        if certs
            .identity()
            .is_some_and(|i| i.role != crate::pki::CertRole::Manager)
        {
            *kek = None;
        }
        certs.save(&self.certs_dir(), kek.as_ref())?;
        drop(kek);
        self.install_certs(certs, configs);
        Ok(())
    }

    /// Saves the node key again, sealed under `kek` (autolock on) or as it is (off).
    async fn seal_node_key(&self, kek: Option<[u8; 32]>) -> Result<(), ManagerError> {
        let _guard = self.certs_change.lock().await;
        *self.node_key_kek.lock().expect("kek lock") = kek;
        if let Some(certs) = self.certs() {
            certs.save(&self.certs_dir(), kek.as_ref())?;
        }
        Ok(())
    }

    /// Puts certificates (already saved) and the configurations made from them to use.
    fn install_certs(&self, certs: crate::pki::NodeCerts, configs: Configs) {
        let node_id = certs.identity().and_then(|i| i.node_id.parse().ok());
        {
            let mut slot = self.certs.write().expect("certs lock");
            match slot.as_mut() {
                Some(c) => {
                    c.tls.replace(configs.client);
                    c.certs = certs;
                    c.node_id = node_id;
                }
                None => {
                    *slot = Some(Credentials {
                        tls: shoal_client::Tls::new(configs.client, crate::pki::MANAGER_NAME),
                        certs,
                        node_id,
                    })
                }
            }
        }
        if let Some(tls) = self.server_tls.lock().expect("server tls lock").as_ref() {
            tls.replace(configs.server);
        }
        self.api_tls.replace(configs.api);
    }

    /// The TLS of the management API over TCP (`shoald --listen`): this node's certificate,
    /// a user certificate from the cluster's CA required of clients; none before the node
    /// belongs to a cluster.
    pub fn api_tls(&self) -> Arc<crate::serve::ServerTls> {
        self.api_tls.clone()
    }

    /// The node id this node's certificate names.
    pub fn cert_node_id(&self) -> Option<shoal_api::NodeId> {
        let c = self.certs.read().expect("certs lock");
        c.as_ref().and_then(|c| c.node_id.clone())
    }

    /// Mutual TLS as this node, to managers.
    pub fn node_tls(&self) -> Option<shoal_client::Tls> {
        let c = self.certs.read().expect("certs lock");
        c.as_ref().map(|c| c.tls.clone())
    }

    fn log_path(&self) -> PathBuf {
        self.config.data_root.join("raft").join("raft.redb")
    }

    fn open_log(&self) -> Result<DurableLog, ManagerError> {
        let dir = self.config.data_root.join("raft");
        std::fs::create_dir_all(&dir).map_err(|e| ManagerError::DataRoot {
            path: dir.clone(),
            message: e.to_string(),
        })?;
        DurableLog::open(&self.log_path()).map_err(|e| ManagerError::DataRoot {
            path: dir,
            message: e.to_string(),
        })
    }

    /// Serves the cluster port (Raft, agent sessions, forwarded writes, joins) on `addr`.
    async fn listen(self: &Arc<Self>, addr: &str) -> Result<(), ManagerError> {
        if self.listening.lock().expect("listening lock").as_deref() == Some(addr) {
            return Ok(());
        }
        let listener =
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| ManagerError::Listen {
                    addr: addr.to_owned(),
                    message: e.to_string(),
                })?;
        let tls = Arc::new(crate::serve::ServerTls::new(
            self.certs()
                .ok_or_else(|| ManagerError::Invalid("this manager has no certificate yet".into()))?
                .server_config()?,
        ));
        *self.server_tls.lock().expect("server tls lock") = Some(tls.clone());
        tracing::info!(%addr, "cluster port listening (mutual TLS)");
        *self.listening.lock().expect("listening lock") = Some(addr.to_owned());
        let router = crate::api::cluster_router(self.clone());
        tokio::spawn(crate::serve::serve_tls(
            listener,
            router,
            self.shutdown.clone(),
            tls,
        ));
        Ok(())
    }

    fn start(
        self: &Arc<Self>,
        log: DurableLog,
        seed_managers: BTreeMap<u64, String>,
    ) -> Result<Arc<Cluster>, ManagerError> {
        let mut store = node::restore_store(&log).map_err(ManagerError::Raft)?;
        if store.managers.is_empty() {
            store.managers = seed_managers;
        }
        let hub = EventHub::with_budget(store.revision, self.config.event_history);
        let store = Arc::new(RwLock::new(store));
        let tls = self.node_tls();
        let forward = HttpForward::new(self.config.raft.write_timeout, tls.clone());
        // Stops this cluster member alone: when it is demoted or removed, the daemon goes on.
        let stop = self.shutdown.child_token();
        let key_log = log.clone();
        let (raft, task) = node::start(
            self.config.raft.clone(),
            log,
            store.clone(),
            hub.clone(),
            Box::new(TcpTransport::new(stop.clone(), tls)),
            Some(Arc::new(forward)),
            stop.clone(),
        )
        .map_err(ManagerError::Raft)?;
        tokio::spawn(keep_data_key_sealed(
            Arc::downgrade(self),
            key_log,
            store.clone(),
            raft.status(),
            stop.clone(),
        ));
        // A Raft task that dies takes the daemon with it: never serve without Raft.
        let me = Arc::downgrade(self);
        let shutdown = self.shutdown.clone();
        let stopped = stop.clone();
        tokio::spawn(async move {
            let why = match task.await {
                Ok(Ok(())) if stopped.is_cancelled() => return,
                Ok(Ok(())) => "the raft task ended".to_owned(),
                Ok(Err(e)) => e,
                Err(e) => format!("the raft task panicked: {e}"),
            };
            tracing::error!(error = %why, "raft stopped: the daemon stops");
            if let Some(m) = me.upgrade() {
                *m.fatal.lock().expect("fatal lock") = Some(why);
            }
            shutdown.cancel();
        });
        let cluster = Arc::new(Cluster {
            store,
            hub,
            raft,
            dispatcher: Arc::new(Dispatcher::new(self.config.dispatcher)),
            logs: Arc::new(crate::logs::LogBroker::new()),
            stop: stop.clone(),
        });
        tokio::spawn(supervise_leader_loops(cluster.clone(), stop.clone()));
        // A manager removed from the voters (demoted, or removed by another) becomes a worker.
        let me = Arc::downgrade(self);
        let mut status = cluster.raft.status();
        tokio::spawn(async move {
            let removed = tokio::select! {
                _ = stop.cancelled() => false,
                r = async { status.wait_for(|s| s.removed).await.is_ok() } => r,
            };
            if let (true, Some(m)) = (removed, me.upgrade()) {
                m.step_down(stop).await;
            }
        });
        Ok(cluster)
    }

    /// The cluster, once initialized.
    pub async fn cluster(&self) -> Option<Arc<Cluster>> {
        self.cluster.lock().await.clone()
    }

    /// How this node's agent reaches the dispatcher, once the node belongs to a cluster.
    pub async fn agent_target(&self) -> Option<AgentTarget> {
        let membership = self.membership();
        if let Some(m) = &membership {
            if !m.manager {
                return Some(AgentTarget {
                    managers: m.managers.clone(),
                    join_token: m.join_token.clone(),
                    manager: false,
                    addr: m.advertise_addr.clone(),
                    raft_id: 0,
                    tls: self.node_tls(),
                    node_id: self.cert_node_id(),
                });
            }
        }
        let cluster = self.cluster().await?;
        let token = cluster
            .store
            .read()
            .expect("store lock")
            .cluster
            .as_ref()
            .map(|o| o.worker_join_token.clone())?;
        let advertise = membership.map(|m| m.advertise_addr).unwrap_or_default();
        Some(AgentTarget {
            managers: if advertise.is_empty() {
                Vec::new()
            } else {
                cluster.manager_addrs()
            },
            join_token: token,
            manager: true,
            addr: advertise,
            raft_id: cluster.raft.status().borrow().id,
            tls: self.node_tls(),
            node_id: self.cert_node_id(),
        })
    }

    /// Makes this daemon the first manager of a new cluster.
    pub async fn init(self: &Arc<Self>, req: &InitRequest) -> Result<Arc<Cluster>, ManagerError> {
        let mut slot = self.cluster.lock().await;
        if slot.is_some() || self.membership().is_some() {
            return Err(ManagerError::AlreadyInitialized);
        }
        let log = self.open_log()?;
        if log.is_initialized() {
            return Err(ManagerError::AlreadyInitialized);
        }
        for p in &req.default_addr_pool {
            shoal_api::network::Cidr::parse(p)
                .map_err(|e| ManagerError::Invalid(format!("--default-addr-pool: {e}")))?;
        }
        if let Some(size) = req.subnet_size {
            if !(8..=30).contains(&size) {
                return Err(ManagerError::Invalid(format!(
                    "--default-addr-pool-mask-length {size}: use 8 to 30"
                )));
            }
        }
        let membership =
            self.addresses(req.advertise_addr.as_deref(), req.listen_addr.as_deref())?;
        if let Some(secs) = req.cert_expiry_secs {
            crate::store::check_cert_expiry(secs)
                .map_err(|e| ManagerError::Invalid(e.to_string()))?;
        }
        let expiry = req
            .cert_expiry_secs
            .map(Duration::from_secs)
            .unwrap_or(crate::pki::DEFAULT_CERT_EXPIRY);
        // The cluster's CA (made here, or the operator's), and this manager's own certificate
        // from it.
        let cluster_id = shoal_api::ids::id_from_bits(rand::random());
        let ca = match &req.external_ca {
            Some(ext) => crate::pki::external_ca(ext)?,
            None => crate::pki::new_ca(&cluster_id)?,
        };
        let digest = crate::pki::ca_digest(&ca.cert_pem)?;
        let node_id = shoal_api::NodeId::from_bits(rand::random());
        let (key_pem, csr) = crate::pki::new_key_and_csr()?;
        let cert_pem = crate::pki::issue(
            &ca,
            &csr,
            node_id.as_str(),
            crate::pki::CertRole::Manager,
            &cluster_id,
            expiry,
        )?;
        self.replace_certs(crate::pki::NodeCerts {
            ca_pem: ca.cert_pem.clone(),
            cert_pem,
            key_pem,
        })?;
        if !membership.listen_addr.is_empty() {
            self.listen(&membership.listen_addr).await?;
        }
        let id = new_raft_id();
        log.bootstrap(id)
            .map_err(|e| ManagerError::Raft(e.to_string()))?;
        self.write_membership(Some(membership.clone()))?;
        let cluster = self.start(log, BTreeMap::new())?;
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
            id: cluster_id.clone(),
            created_at: now(),
            worker_join_token: new_token(&digest),
            manager_join_token: new_token(&digest),
            default_addr_pool: req.default_addr_pool.clone(),
            subnet_size: req.subnet_size.unwrap_or(0),
            allow_privileged: req.allow_privileged,
            ca: Some(ca),
            cert_expiry_secs: req.cert_expiry_secs.unwrap_or(0),
            ..Default::default()
        };
        cluster
            .raft
            .propose(Command::InitCluster(Box::new(object)))
            .await?;
        let managers = BTreeMap::from([(id, membership.advertise_addr.clone())]);
        let rev = cluster.raft.propose(Command::SetManagers(managers)).await?;
        // A log that starts with a snapshot: managers that join later receive it, with the
        // first voter in its configuration.
        cluster.raft.compact(rev).await?;
        *slot = Some(cluster.clone());
        Ok(cluster)
    }

    fn addresses(
        &self,
        advertise: Option<&str>,
        listen: Option<&str>,
    ) -> Result<Membership, ManagerError> {
        let Some(advertise) = advertise.filter(|a| !a.is_empty()) else {
            return Ok(Membership {
                manager: true,
                ..Default::default()
            });
        };
        let advertise = with_port(advertise, CLUSTER_PORT)?;
        let listen = match listen.filter(|a| !a.is_empty()) {
            Some(l) => with_port(l, port_of(&advertise))?,
            None => format!("0.0.0.0:{}", port_of(&advertise)),
        };
        Ok(Membership {
            manager: true,
            advertise_addr: advertise,
            listen_addr: listen,
            ..Default::default()
        })
    }

    /// Joins the cluster of the manager at `req.remote_addr`, as a worker or a manager
    /// (the token decides).
    pub async fn join(self: &Arc<Self>, req: &JoinRequest) -> Result<Membership, ManagerError> {
        self.join_as(req, false).await
    }

    async fn join_as(
        self: &Arc<Self>,
        req: &JoinRequest,
        promotion: bool,
    ) -> Result<Membership, ManagerError> {
        let mut slot = self.cluster.lock().await;
        let worker = self.membership().is_some_and(|m| !m.manager);
        if slot.is_some() || (self.membership().is_some() && !(promotion && worker)) {
            return Err(ManagerError::AlreadyInitialized);
        }
        let log = self.open_log()?;
        if log.is_initialized() {
            return Err(ManagerError::AlreadyInitialized);
        }
        let remote = with_port(&req.remote_addr, CLUSTER_PORT)?;
        let mut membership =
            self.addresses(req.advertise_addr.as_deref(), req.listen_addr.as_deref())?;
        let join_err = |message: String| ManagerError::Join {
            remote: remote.clone(),
            message,
        };
        let own = if promotion { self.certs() } else { None };
        // A manager must be reachable before it is added as a voter: bind first.
        let bound = self.listening.lock().expect("listening lock").clone();
        if !membership.advertise_addr.is_empty()
            && bound.as_deref() != Some(membership.listen_addr.as_str())
        {
            let listener = tokio::net::TcpListener::bind(&membership.listen_addr)
                .await
                .map_err(|e| ManagerError::Listen {
                    addr: membership.listen_addr.clone(),
                    message: e.to_string(),
                })?;
            drop(listener);
        }
        let (resp, certs) = request_join(
            &remote,
            &req.token,
            &membership.advertise_addr,
            own.as_ref(),
        )
        .await?;
        {
            let _guard = self.certs_change.lock().await;
            self.replace_certs(certs)?;
        }
        if !resp.manager {
            membership.manager = false;
            membership.listen_addr = String::new();
            membership.managers = resp.managers.values().cloned().collect();
            membership.join_token = req.token.clone();
            self.write_membership(Some(membership.clone()))?;
            tracing::info!(cluster_id = %resp.cluster_id, "joined as a worker");
            return Ok(membership);
        }
        if membership.advertise_addr.is_empty() {
            return Err(join_err(
                "a manager needs --advertise-addr: the other managers must reach it".into(),
            ));
        }
        self.listen(&membership.listen_addr).await?;
        log.set_raft_id(resp.raft_id)
            .map_err(|e| ManagerError::Raft(e.to_string()))?;
        self.write_membership(Some(membership.clone()))?;
        let cluster = self.start(log, resp.managers.clone())?;
        // The cluster port serves Raft from now on: release the slot before waiting.
        *slot = Some(cluster.clone());
        drop(slot);
        // Joined once the leader's state arrived and this manager counts itself a voter.
        let mut status = cluster.raft.status();
        let store = cluster.store.clone();
        let id = resp.raft_id;
        let caught_up = tokio::time::timeout(Duration::from_secs(30), async move {
            status
                .wait_for(|s| {
                    s.voters.contains(&id) && store.read().expect("store lock").cluster.is_some()
                })
                .await
                .is_ok()
        })
        .await;
        if !matches!(caught_up, Ok(true)) {
            return Err(join_err(
                "joined, but no state arrived from the leader within 30s".into(),
            ));
        }
        tracing::info!(cluster_id = %resp.cluster_id, raft_id = resp.raft_id, "joined as a manager");
        Ok(membership)
    }

    /// This manager left the voters: stop its Raft and leader loops, keep its log aside, and
    /// go on as a worker of the same cluster.
    async fn step_down(self: &Arc<Self>, stop: CancellationToken) {
        if self.leaving.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let mut slot = self.cluster.lock().await;
        let Some(cluster) = slot.take() else { return };
        let (managers, token) = {
            let store = cluster.store.read().expect("store lock");
            let me = cluster.raft.status().borrow().id;
            (
                store
                    .managers
                    .iter()
                    .filter(|(id, a)| **id != me && !a.is_empty())
                    .map(|(_, a)| a.clone())
                    .collect::<Vec<_>>(),
                store
                    .cluster
                    .as_ref()
                    .map(|o| o.worker_join_token.clone())
                    .unwrap_or_default(),
            )
        };
        stop.cancel();
        let dir = self.config.data_root.join("raft");
        let aside = self
            .config
            .data_root
            .join(format!("raft.demoted-{}", now().0));
        if let Err(e) = std::fs::rename(&dir, &aside) {
            tracing::error!(error = %e, "could not set the old raft log aside");
        }
        let membership = self.membership().map(|m| Membership {
            manager: false,
            listen_addr: String::new(),
            managers,
            join_token: token,
            ..m
        });
        if let Err(e) = self.write_membership(membership) {
            tracing::error!(error = %e, "could not record the demotion");
        }
        tracing::warn!("this manager was removed from the voters: it goes on as a worker");
    }

    /// Promotion: a worker joins its cluster's managers with the manager token it was given.
    pub async fn promote(self: &Arc<Self>, token: &str) -> Result<(), ManagerError> {
        let Some(m) = self.membership().filter(|m| !m.manager) else {
            return Ok(());
        };
        if m.advertise_addr.is_empty() {
            return Err(ManagerError::Raft(
                "promotion needs the worker's --advertise-addr at join".into(),
            ));
        }
        let mut last = None;
        for remote in &m.managers {
            let req = JoinRequest {
                remote_addr: remote.clone(),
                token: token.to_owned(),
                advertise_addr: Some(m.advertise_addr.clone()),
                listen_addr: None,
            };
            match self.join_as(&req, true).await {
                Ok(_) => {
                    tracing::info!("promoted: this node is a manager now");
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| ManagerError::Raft("no managers known".into())))
    }

    /// Leaves the cluster. A worker forgets it at once; a manager is removed from the voters
    /// first, refused when that would lose the quorum unless `force`.
    pub async fn leave(&self, force: bool) -> Result<(), ManagerError> {
        let membership = self.membership();
        if let Some(cluster) = self.cluster().await {
            let status = cluster.raft.status().borrow().clone();
            check_quorum_after_removal(&cluster, status.id, force)?;
            if status.voters.len() > 1 {
                self.leaving
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                let removed = cluster
                    .raft
                    .change_membership(MembershipChange::Remove { id: status.id })
                    .await;
                match removed {
                    Ok(_) => {}
                    Err(e) if force => tracing::warn!(
                        error = %e,
                        "leaving without being removed from the voters: the other managers still count this one (`node demote` it there)"
                    ),
                    Err(e) => {
                        self.leaving
                            .store(false, std::sync::atomic::Ordering::SeqCst);
                        return Err(e.into());
                    }
                }
            } else if !force {
                return Err(ManagerError::Raft(
                    "this is the last manager: leaving ends the cluster and its state; use --force"
                        .into(),
                ));
            }
            *self.cluster.lock().await = None;
            cluster.stop.cancel();
            let dir = self.config.data_root.join("raft");
            let stamp = now().0;
            let _ = std::fs::rename(
                &dir,
                self.config.data_root.join(format!("raft.left-{stamp}")),
            );
        } else if membership.is_none() {
            return Err(ManagerError::Raft(
                "this node is not part of a cluster".into(),
            ));
        }
        let written = self.write_membership(None);
        self.leaving
            .store(false, std::sync::atomic::Ordering::SeqCst);
        written
    }
}

/// Refuses to remove manager `id` when the remaining voters could not reach a quorum
/// (reachable = not down), unless forced.
pub fn check_quorum_after_removal(
    cluster: &Cluster,
    id: u64,
    force: bool,
) -> Result<(), ManagerError> {
    let status = cluster.raft.status().borrow().clone();
    if force || !status.voters.contains(&id) {
        return Ok(());
    }
    let remaining = status.voters.len() - 1;
    if remaining == 0 {
        return Ok(());
    }
    let reachable = cluster
        .raft
        .reachable_voters()
        .into_iter()
        .filter(|v| *v != id)
        .count();
    let quorum = remaining / 2 + 1;
    if reachable < quorum {
        return Err(ManagerError::Raft(format!(
            "removing this manager would leave {remaining} managers of which only {reachable} are reachable, below the quorum of {quorum}: the cluster could not make changes; use --force to do it anyway"
        )));
    }
    Ok(())
}

fn new_raft_id() -> u64 {
    loop {
        let id = rand::random::<u64>() >> 1;
        if id != 0 {
            return id;
        }
    }
}

/// Asks the manager at `remote` to let this node join with `token`: the manager is checked
/// against the CA the token names before the token is sent, and answers with a certificate
/// for the key made here (which never leaves this node). `own`: the certificate of a node
/// being promoted, so it keeps its id.
pub async fn request_join(
    remote: &str,
    token: &str,
    addr: &str,
    own: Option<&crate::pki::NodeCerts>,
) -> Result<(JoinClusterResponse, crate::pki::NodeCerts), ManagerError> {
    let join_err = |message: String| ManagerError::Join {
        remote: remote.to_owned(),
        message,
    };
    let digest = crate::pki::token_digest(token).ok_or_else(|| {
        ManagerError::Invalid(
            "invalid join token: use the token `shoal cluster join-token worker|manager` prints (SHLTKN-1-...)"
                .into(),
        )
    })?;
    let tls = crate::pki::join_tls(digest, own)?;
    let client = Client::new(Endpoint::Tcp(remote.to_owned()))
        .with_timeout(Duration::from_secs(10))
        .with_tls(Some(tls));
    let (key_pem, csr) = crate::pki::new_key_and_csr()?;
    let ask = JoinClusterRequest {
        token: token.to_owned(),
        addr: addr.to_owned(),
        csr,
    };
    let resp: JoinClusterResponse = client
        .post(JOIN_PATH, &ask)
        .await
        .map_err(|e| join_err(e.to_string()))?;
    let certs = crate::pki::NodeCerts {
        ca_pem: resp.ca_certificate.clone(),
        cert_pem: resp.certificate.clone(),
        key_pem,
    };
    if certs.identity().is_none() || !crate::pki::holds_ca(&certs.ca_pem, digest) {
        return Err(join_err(
            "the manager sent no certificate from the cluster's CA".into(),
        ));
    }
    Ok((resp, certs))
}

/// A new join token of the cluster whose CA has digest `ca_digest`:
/// `SHLTKN-1-<CA digest>-<secret>`.
pub fn new_token(ca_digest: &str) -> String {
    format!(
        "SHLTKN-1-{ca_digest}-{}{}",
        shoal_api::ids::id_from_bits(rand::random()),
        shoal_api::ids::id_from_bits(rand::random())
    )
}

/// Path of join requests on the cluster port.
pub const JOIN_PATH: &str = "/v1/cluster/join-request";

/// Runs the leader loops while this manager leads.
async fn supervise_leader_loops(cluster: Arc<Cluster>, shutdown: CancellationToken) {
    let mut status = cluster.raft.status();
    // The last other manager seen leading: when this one takes over, that one most likely died.
    let mut previous = 0;
    loop {
        let became = status.wait_for(|s| {
            if s.leader != 0 && s.leader != s.id {
                previous = s.leader;
            }
            s.is_leader()
        });
        if became.await.is_err() {
            return;
        }
        let term = status.borrow().term;
        tracing::info!(
            term,
            "leading: starting orchestrator, scheduler and node monitor"
        );
        let leading = shutdown.child_token();
        {
            let store = cluster.store.read().expect("store lock");
            let live = store
                .nodes
                .values()
                .filter(|n| n.status.state != NodeState::Down);
            // The previous leader's host gets the plain down-after, not the election grace: if
            // it lives, its agent (refused by its own deposed manager) is here within a second;
            // if it died with its manager, its tasks move two seconds sooner.
            let old_leader = store
                .nodes
                .values()
                .find(|n| {
                    n.manager_status
                        .as_ref()
                        .is_some_and(|m| m.raft_id == previous)
                })
                .map(|n| n.id.clone());
            cluster
                .dispatcher
                .grant_grace(live.map(|n| n.id.clone()), old_leader.as_ref());
        }
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
        let started = std::time::Instant::now();
        // A copy of what the pass reads (tasks are shared, so it copies pointers): the store
        // lock is not held while it computes, so Raft applies and the API answer meanwhile.
        let store = {
            let s = cluster.store.read().expect("store lock");
            Store {
                nodes: s.nodes.clone(),
                services: s.services.clone(),
                tasks: s.tasks.clone(),
                ..Default::default()
            }
        };
        let (ops, wake) = {
            let nodes: Vec<_> = store.nodes.values().cloned().collect();
            let mut ops = Vec::new();
            let mut wake: Option<Timestamp> = None;
            let mut by_service: std::collections::HashMap<_, Vec<&Task>> =
                std::collections::HashMap::new();
            let mut usage = orchestrator::Usage::new();
            for task in store.tasks.values() {
                by_service
                    .entry(task.service_id.clone())
                    .or_default()
                    .push(task);
                if let Some(n) = &task.node_id {
                    if !scheduler::needs_placement(task) && !task.status.state.is_terminal() {
                        let r = task.spec.resources.reservations;
                        let u = usage.entry(n.clone()).or_default();
                        u.nano_cpus += r.nano_cpus;
                        u.memory_bytes += r.memory_bytes;
                    }
                }
            }
            for service in store.services.values() {
                let tasks = by_service
                    .get(&service.id)
                    .map(Vec::as_slice)
                    .unwrap_or(&[]);
                let mut plan = orchestrator::reconcile(service, tasks, &nodes, &usage, t, &mut ids);
                // `depends_on`: no new task until what it depends on is there.
                if let Some(why) = store.dependency_wait(service) {
                    let held = plan.ops.len();
                    plan.ops.retain(|o| !matches!(o, TaskOp::Create(_)));
                    if plan.ops.len() < held {
                        tracing::debug!(service = %service.spec.name, %why, "tasks held");
                    }
                }
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
        let took = started.elapsed();
        propose_ops(&cluster, ops, "orchestrator").await;
        pace(took, &stop).await;
    }
}

/// After a pass that took `took`, waits as long again: on a large cluster whose store changes
/// all the time, the leader's loops take at most about half a core each and leave the rest to
/// Raft, heartbeats and the API; on a small one a pass takes well under a millisecond and this
/// adds nothing that matters.
async fn pace(took: Duration, stop: &CancellationToken) {
    if took >= Duration::from_millis(1) {
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(took) => {}
        }
    }
}

async fn schedule(cluster: Arc<Cluster>, stop: CancellationToken) {
    let mut rev = cluster.hub.revision();
    let mut seen = 0;
    while wait_for_work(&mut rev, seen, None, &stop).await {
        seen = *rev.borrow_and_update();
        let t = now();
        let started = std::time::Instant::now();
        let store = {
            let s = cluster.store.read().expect("store lock");
            if !s.tasks.values().any(|t| scheduler::needs_placement(t)) {
                continue;
            }
            Store {
                nodes: s.nodes.clone(),
                tasks: s.tasks.clone(),
                ..Default::default()
            }
        };
        let ops: Vec<TaskOp> = {
            let waiting: Vec<&Task> = store
                .tasks
                .values()
                .map(Arc::as_ref)
                .filter(|t| scheduler::needs_placement(t))
                .collect();
            if waiting.is_empty() {
                continue;
            }
            let placed: Vec<&Task> = store
                .tasks
                .values()
                .map(Arc::as_ref)
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
        let took = started.elapsed();
        propose_ops(&cluster, ops, "scheduler").await;
        pace(took, &stop).await;
    }
}

async fn monitor_nodes(cluster: Arc<Cluster>, stop: CancellationToken) {
    // Checked often (a scan of the sessions in memory), so a node is marked down within 50 ms
    // of its silence passing --node-down-after.
    let period = cluster.dispatcher.settings().heartbeat_period / 10;
    let mut ticker =
        tokio::time::interval(period.clamp(Duration::from_millis(10), Duration::from_millis(50)));
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
