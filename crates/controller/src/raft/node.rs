//! The thread that owns raft-rs's `RawNode` (a current-thread runtime of its own): it ticks, takes proposals, and handles each `Ready`
//! in the documented order — send messages, apply a snapshot, apply committed entries, persist
//! entries and hard state, send persisted messages, `advance`, then the same for the
//! `LightReady`. Committed commands are applied to the [`Store`] and published on the
//! [`EventHub`]; the proposer of each command gets its result.
//!
//! Any manager takes proposals: [`RaftHandle::propose`] proposes locally on the leader and
//! forwards to the leader (through a [`Forward`]) elsewhere, then waits until this manager has
//! applied the write, so a client reads what it wrote from the manager it asked. Membership
//! changes are ConfChanges whose context carries the manager's cluster address; the addresses
//! of the voters live in the store ([`Store::managers`]), so a snapshot carries them too.
//!
//! Timing (our choice, etcd-like): a tick every 100 ms, heartbeat every tick, election after
//! 8–15 ticks (0.8–1.6 s, randomized), check_quorum and pre_vote on. A leader that dies is
//! replaced after the first follower's election timeout (about 1.1 s on average with two
//! followers), so writes resume within 1.5 s; a leader cut off from the majority steps down
//! after an election timeout (check_quorum), which fails the writes waiting on it, and pre-vote
//! keeps a returning manager from disrupting the cluster. A snapshot of the store replaces the
//! log every `snapshot_every` applied entries, and the leader takes one after each added voter.

use super::storage::{DurableLog, StorageFault};
use crate::store::{Command, Store, StoreError};
use crate::watch::EventHub;
use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeType, ConfChangeV2, Entry, EntryType, Message};
use raft::{RawNode, SnapshotStatus};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

/// Raft settings.
#[derive(Debug, Clone)]
pub struct RaftSettings {
    /// Tick length.
    pub tick: Duration,
    /// Ticks between heartbeats.
    pub heartbeat_ticks: usize,
    /// Ticks before an election (randomized up to twice this).
    pub election_ticks: usize,
    /// Applied entries between snapshots.
    pub snapshot_every: u64,
    /// How long a write may wait for a leader and a majority before it fails.
    pub write_timeout: Duration,
}

impl Default for RaftSettings {
    fn default() -> Self {
        RaftSettings {
            tick: Duration::from_millis(100),
            heartbeat_ticks: 1,
            election_ticks: 8,
            snapshot_every: 10_000,
            write_timeout: Duration::from_secs(2),
        }
    }
}

/// Why a proposal did not apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// This manager does not lead; writes go to the leader.
    #[error("this manager is not the leader (leader: {leader}); retry against the leader")]
    NotLeader {
        /// Raft id of the leader, 0 when unknown.
        leader: u64,
    },
    /// No leader is known: this manager cannot reach a majority of the managers.
    #[error("no leader: this manager cannot reach a majority of the managers (quorum lost?); the write was not made")]
    NoLeader,
    /// The leader could not be reached.
    #[error("cannot reach the leader (raft id {leader}) at {addr}: {message}")]
    Forward {
        /// Raft id of the leader.
        leader: u64,
        /// Its cluster address.
        addr: String,
        /// What failed.
        message: String,
    },
    /// The write was not committed in time.
    #[error("the write was not committed within {0:?}: the cluster may have lost quorum; it may still apply later")]
    Timeout(Duration),
    /// The leader answered a forwarded proposal with an error.
    #[error("{message}")]
    Remote {
        /// HTTP status of the leader's answer.
        status: u16,
        /// Its message.
        message: String,
    },
    /// Another membership change has not been applied yet.
    #[error("another manager membership change is in progress; retry in a moment")]
    MembershipBusy,
    /// The store refused the command.
    #[error(transparent)]
    Refused(#[from] StoreError),
    /// The Raft node stopped (shutdown or a storage fault).
    #[error("the raft node stopped: {0}")]
    Stopped(String),
}

/// Raft's state as others may watch it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RaftStatus {
    /// This node's id.
    pub id: u64,
    /// Current term.
    pub term: u64,
    /// Leader's id, 0 when unknown.
    pub leader: u64,
    /// Commit index.
    pub commit: u64,
    /// Applied index (= store revision).
    pub applied: u64,
    /// Voters.
    pub voters: Vec<u64>,
    /// True once a configuration change removed this manager from the cluster.
    pub removed: bool,
    /// On the leader: voters heard from recently, itself included.
    pub active: Vec<u64>,
}

impl RaftStatus {
    /// True when this node leads.
    pub fn is_leader(&self) -> bool {
        self.leader != 0 && self.leader == self.id
    }
}

/// What a transport tells Raft about its deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feedback {
    /// Messages to this peer could not be delivered.
    Unreachable(u64),
    /// A snapshot to this peer was delivered (true) or not (false).
    Snapshot(u64, bool),
}

/// Sends Raft messages to other managers. One manager has nobody to send to.
pub trait Transport: Send + 'static {
    /// Sends messages (best effort; Raft retries).
    fn send(&mut self, msgs: Vec<Message>);
    /// The other voters and their cluster addresses, whenever they change.
    fn set_peers(&mut self, _peers: &BTreeMap<u64, String>) {}
    /// Where delivery reports come from (taken once, at start).
    fn feedback(&mut self) -> Option<mpsc::UnboundedReceiver<Feedback>> {
        None
    }
}

/// The transport of a single manager.
#[derive(Debug, Default)]
pub struct NoPeers;

impl Transport for NoPeers {
    fn send(&mut self, msgs: Vec<Message>) {
        if !msgs.is_empty() {
            tracing::warn!(
                count = msgs.len(),
                "raft messages to peers dropped: no transport configured"
            );
        }
    }
}

/// A change to the set of managers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MembershipChange {
    /// A manager joins as a voter.
    Add {
        /// Its Raft id.
        id: u64,
        /// Its cluster address (host:port).
        addr: String,
    },
    /// A manager leaves.
    Remove {
        /// Its Raft id.
        id: u64,
    },
}

/// What may be proposed: a store command or a membership change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Proposal {
    /// A store command.
    Command(Command),
    /// A membership change.
    Membership(MembershipChange),
}

/// Hands a proposal to the leader at `addr` and returns the revision it applied at.
pub trait Forward: Send + Sync + std::fmt::Debug + 'static {
    /// Forwards `proposal` to the leader `leader` at `addr`.
    fn forward<'a>(
        &'a self,
        leader: u64,
        addr: &'a str,
        proposal: &'a Proposal,
    ) -> Pin<Box<dyn Future<Output = Result<u64, ProposeError>> + Send + 'a>>;
}

enum Input {
    Propose(Proposal, oneshot::Sender<Result<u64, ProposeError>>),
    Step(Message),
    Compact(oneshot::Sender<Result<u64, ProposeError>>),
}

/// What a log entry holds: the command and who proposed it.
#[derive(Serialize, Deserialize)]
struct Envelope {
    node: u64,
    proposal: u64,
    command: Command,
}

/// What a ConfChange's context holds: who proposed it and the new voter's address.
#[derive(Serialize, Deserialize)]
struct MemberContext {
    node: u64,
    proposal: u64,
    #[serde(default)]
    addr: String,
}

/// A handle to the Raft task. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RaftHandle {
    tx: mpsc::Sender<Input>,
    status: watch::Receiver<RaftStatus>,
    store: Arc<RwLock<Store>>,
    forward: Option<Arc<dyn Forward>>,
    write_timeout: Duration,
}

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Input::Propose(..) => "Propose",
            Input::Step(_) => "Step",
            Input::Compact(_) => "Compact",
        })
    }
}

impl RaftHandle {
    /// Proposes a command from any manager; resolves with the revision it applied at once it is
    /// committed and applied here, or with why it was not (within the write timeout).
    pub async fn propose(&self, cmd: Command) -> Result<u64, ProposeError> {
        self.submit(Proposal::Command(cmd)).await
    }

    /// Proposes a membership change from any manager.
    pub async fn change_membership(&self, change: MembershipChange) -> Result<u64, ProposeError> {
        self.submit(Proposal::Membership(change)).await
    }

    /// Proposes on the leader, forwarding when another manager leads; waits for a leader while
    /// an election runs, up to the write timeout.
    pub async fn submit(&self, proposal: Proposal) -> Result<u64, ProposeError> {
        let limit = self.write_timeout;
        match tokio::time::timeout(limit, self.submit_untimed(proposal)).await {
            Ok(r) => r,
            Err(_) => Err(ProposeError::Timeout(limit)),
        }
    }

    async fn submit_untimed(&self, proposal: Proposal) -> Result<u64, ProposeError> {
        let mut status = self.status.clone();
        loop {
            let (me, leader) = {
                let s = status.borrow_and_update();
                if s.removed {
                    return Err(ProposeError::Stopped(
                        "this manager was removed from the cluster".into(),
                    ));
                }
                (s.id, s.leader)
            };
            let retry = if leader == 0 {
                ProposeError::NoLeader
            } else if leader == me {
                match self.propose_local(proposal.clone()).await {
                    Err(ProposeError::NotLeader { leader }) => ProposeError::NotLeader { leader },
                    other => return other,
                }
            } else {
                let addr = self
                    .store
                    .read()
                    .expect("store lock")
                    .managers
                    .get(&leader)
                    .cloned();
                match (addr, &self.forward) {
                    (Some(addr), Some(forward)) => {
                        match forward.forward(leader, &addr, &proposal).await {
                            Ok(rev) => {
                                // A manager removing itself need not hear of it: the leader
                                // stops replicating to it once the removal applies, so it may
                                // never learn the commit. The leader's answer is enough.
                                let leaving = matches!(
                                    &proposal,
                                    Proposal::Membership(MembershipChange::Remove { id }) if *id == me
                                );
                                if !leaving {
                                    self.wait_applied(rev).await?;
                                }
                                return Ok(rev);
                            }
                            Err(e @ ProposeError::Remote { status, .. }) if status < 500 => {
                                return Err(e)
                            }
                            Err(e) => e,
                        }
                    }
                    _ => ProposeError::NotLeader { leader },
                }
            };
            // Wait for news (a leader elected or changed), or retry shortly.
            tracing::debug!(error = %retry, "write waits for a leader");
            let _ = tokio::time::timeout(Duration::from_millis(50), status.changed()).await;
        }
    }

    /// Proposes on this manager only (the leader's end of a forwarded proposal).
    pub async fn propose_local(&self, proposal: Proposal) -> Result<u64, ProposeError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Input::Propose(proposal, tx))
            .await
            .map_err(|_| ProposeError::Stopped("raft task ended".into()))?;
        rx.await
            .map_err(|_| ProposeError::Stopped("raft task ended".into()))?
    }

    /// Waits until this manager has applied `revision`.
    pub async fn wait_applied(&self, revision: u64) -> Result<(), ProposeError> {
        let mut status = self.status.clone();
        status
            .wait_for(|s| s.applied >= revision)
            .await
            .map(|_| ())
            .map_err(|_| ProposeError::Stopped("raft task ended".into()))
    }

    /// Takes a snapshot of the store now and compacts the log up to it (after `revision` has
    /// applied); returns the snapshot's index.
    pub async fn compact(&self, revision: u64) -> Result<u64, ProposeError> {
        self.wait_applied(revision).await?;
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Input::Compact(tx))
            .await
            .map_err(|_| ProposeError::Stopped("raft task ended".into()))?;
        rx.await
            .map_err(|_| ProposeError::Stopped("raft task ended".into()))?
    }

    /// Voters the leader heard from within the last election timeout (itself included); on a
    /// follower, all voters (it cannot tell).
    pub fn reachable_voters(&self) -> Vec<u64> {
        let s = self.status.borrow();
        if s.is_leader() {
            s.active.clone()
        } else {
            s.voters.clone()
        }
    }

    /// Hands a message from a peer to Raft; dropped when Raft is overloaded (it retries).
    pub fn step(&self, msg: Message) {
        let _ = self.tx.try_send(Input::Step(msg));
    }

    /// Hands a message from a peer to Raft, waiting while its queue is full; an error once
    /// the Raft task has ended.
    pub async fn step_wait(&self, msg: Message) -> Result<(), ProposeError> {
        self.tx
            .send(Input::Step(msg))
            .await
            .map_err(|_| ProposeError::Stopped("raft task ended".into()))
    }

    /// Watches Raft's status.
    pub fn status(&self) -> watch::Receiver<RaftStatus> {
        self.status.clone()
    }
}

/// Restores the store from the log's snapshot; Raft then replays the entries after it.
pub fn restore_store(log: &DurableLog) -> Result<Store, String> {
    let (index, data) = log.snapshot_data();
    if data.is_empty() {
        return Ok(Store {
            revision: index,
            ..Default::default()
        });
    }
    serde_json::from_slice(&data)
        .map_err(|e| format!("snapshot at index {index} does not decode: {e}"))
}

/// Starts the Raft task. The store must have been restored from `log` (see [`restore_store`]).
/// The returned task ends with `Err` when Raft fails (a storage fault): the daemon must stop.
pub fn start(
    settings: RaftSettings,
    log: DurableLog,
    store: Arc<RwLock<Store>>,
    hub: Arc<EventHub>,
    mut transport: Box<dyn Transport>,
    forward: Option<Arc<dyn Forward>>,
    shutdown: CancellationToken,
) -> Result<(RaftHandle, tokio::task::JoinHandle<Result<(), String>>), String> {
    let id = log.raft_id();
    let applied = store.read().expect("store lock").revision;
    let config = raft::Config {
        id,
        election_tick: settings.election_ticks,
        heartbeat_tick: settings.heartbeat_ticks,
        applied,
        check_quorum: true,
        pre_vote: true,
        max_size_per_msg: 1 << 20,
        max_inflight_msgs: 256,
        ..Default::default()
    };
    config.validate().map_err(|e| format!("raft config: {e}"))?;
    let raw =
        RawNode::new(&config, log.clone(), &super::logger()).map_err(|e| format!("raft: {e}"))?;
    let (tx, rx) = mpsc::channel(8192);
    let (status_tx, status_rx) = watch::channel(RaftStatus {
        id,
        applied,
        ..Default::default()
    });
    transport.set_peers(&peers_of(&store.read().expect("store lock"), id));
    let feedback = transport.feedback();
    let driver = Driver {
        id,
        raw,
        conf_floor: log.conf_floor(),
        log,
        store: store.clone(),
        hub,
        transport,
        settings: settings.clone(),
        pending: HashMap::new(),
        next_proposal: rand::random::<u64>() >> 1,
        status: status_tx,
        last_snapshot: applied,
    };
    // The driver gets a thread of its own: its fsyncs and snapshot encoding block nobody else,
    // and nothing else delays its ticks.
    let (done_tx, done_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name(format!("raft-{id}"))
        .spawn(move || {
            let result = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(driver.run(rx, feedback, shutdown)),
                Err(e) => Err(format!("the raft runtime did not start: {e}")),
            };
            let _ = done_tx.send(result);
        })
        .map_err(|e| format!("the raft thread did not start: {e}"))?;
    let task = tokio::spawn(async move {
        done_rx
            .await
            .unwrap_or_else(|_| Err("the raft thread panicked".into()))
    });
    Ok((
        RaftHandle {
            tx,
            status: status_rx,
            store,
            forward,
            write_timeout: settings.write_timeout,
        },
        task,
    ))
}

/// The other voters with their addresses.
fn peers_of(store: &Store, me: u64) -> BTreeMap<u64, String> {
    store
        .managers
        .iter()
        .filter(|(id, _)| **id != me)
        .map(|(id, addr)| (*id, addr.clone()))
        .collect()
}

type Reply = oneshot::Sender<Result<u64, ProposeError>>;

struct Driver {
    id: u64,
    raw: RawNode<DurableLog>,
    log: DurableLog,
    conf_floor: u64,
    store: Arc<RwLock<Store>>,
    hub: Arc<EventHub>,
    transport: Box<dyn Transport>,
    settings: RaftSettings,
    pending: HashMap<u64, Reply>,
    next_proposal: u64,
    status: watch::Sender<RaftStatus>,
    last_snapshot: u64,
}

impl Driver {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Input>,
        feedback: Option<mpsc::UnboundedReceiver<Feedback>>,
        shutdown: CancellationToken,
    ) -> Result<(), String> {
        let mut ticker = tokio::time::interval(self.settings.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut feedback = feedback;
        // A lone voter need not wait an election timeout.
        if self.raw.raft.prs().conf().voters().ids().len() == 1
            && self.raw.raft.prs().conf().voters().contains(self.id)
        {
            let _ = self.raw.campaign();
        }
        let result = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break Ok(()),
                _ = ticker.tick() => { self.raw.tick(); }
                Some(f) = async {
                    match feedback.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => self.on_feedback(f),
                input = rx.recv() => {
                    let Some(input) = input else { break Ok(()) };
                    self.handle(input);
                    // Batch whatever else is queued into the same Ready (one fsync).
                    while let Ok(more) = rx.try_recv() {
                        self.handle(more);
                    }
                }
            }
            if let Err(fault) = self.on_ready() {
                tracing::error!(error = %fault, "raft storage failed; this manager stops");
                self.fail_pending(&fault.to_string());
                break Err(fault.to_string());
            }
            self.publish_status();
        };
        self.fail_pending("shut down");
        result
    }

    fn on_feedback(&mut self, f: Feedback) {
        match f {
            Feedback::Unreachable(id) => self.raw.report_unreachable(id),
            Feedback::Snapshot(id, ok) => self.raw.report_snapshot(
                id,
                if ok {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                },
            ),
        }
    }

    fn handle(&mut self, input: Input) {
        match input {
            Input::Propose(proposal, reply) => {
                if !self.is_leader() {
                    let _ = reply.send(Err(ProposeError::NotLeader {
                        leader: self.raw.raft.leader_id,
                    }));
                    return;
                }
                let id = self.next_proposal;
                self.next_proposal += 1;
                let result = match proposal {
                    Proposal::Command(command) => {
                        let data = serde_json::to_vec(&Envelope {
                            node: self.id,
                            proposal: id,
                            command,
                        })
                        .expect("commands serialize");
                        self.raw.propose(Vec::new(), data)
                    }
                    Proposal::Membership(change) => {
                        if self.raw.raft.has_pending_conf() {
                            let _ = reply.send(Err(ProposeError::MembershipBusy));
                            return;
                        }
                        let (node_id, addr, change_type) = match change {
                            MembershipChange::Add { id, addr } => {
                                (id, addr, ConfChangeType::AddNode)
                            }
                            MembershipChange::Remove { id } => {
                                (id, String::new(), ConfChangeType::RemoveNode)
                            }
                        };
                        let context = serde_json::to_vec(&MemberContext {
                            node: self.id,
                            proposal: id,
                            addr,
                        })
                        .expect("context serializes");
                        let mut cc = ConfChange::default();
                        cc.set_change_type(change_type);
                        cc.node_id = node_id;
                        cc.context = context.into();
                        self.raw.propose_conf_change(Vec::new(), cc)
                    }
                };
                match result {
                    Ok(()) => {
                        self.pending.insert(id, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(match e {
                            raft::Error::ProposalDropped => ProposeError::NotLeader {
                                leader: self.raw.raft.leader_id,
                            },
                            other => ProposeError::Stopped(other.to_string()),
                        }));
                    }
                }
            }
            Input::Compact(reply) => {
                let _ = reply.send(
                    self.snapshot_now()
                        .map_err(|e| ProposeError::Stopped(e.to_string())),
                );
            }
            Input::Step(msg) => {
                if let Err(e) = self.raw.step(msg) {
                    tracing::debug!(error = %e, "raft message ignored");
                }
            }
        }
    }

    fn is_leader(&self) -> bool {
        self.raw.raft.state == raft::StateRole::Leader
    }

    fn fail_pending(&mut self, why: &str) {
        for (_, reply) in self.pending.drain() {
            let _ = reply.send(Err(ProposeError::Stopped(why.to_owned())));
        }
    }

    fn publish_status(&mut self) {
        let r = &self.raw.raft;
        let voters: Vec<u64> = r.prs().conf().voters().ids().iter().collect();
        let store = self.store.read().expect("store lock");
        let removed = store.cluster.is_some() && !voters.is_empty() && !voters.contains(&self.id);
        let active = if self.is_leader() {
            let mut ids: Vec<u64> = r
                .prs()
                .iter()
                .filter(|(id, pr)| **id == self.id || pr.recent_active)
                .filter(|(id, _)| voters.contains(id))
                .map(|(id, _)| *id)
                .collect();
            ids.sort_unstable();
            ids
        } else {
            Vec::new()
        };
        let status = RaftStatus {
            id: self.id,
            term: r.term,
            leader: r.leader_id,
            commit: r.raft_log.committed,
            applied: store.revision,
            voters,
            removed,
            active,
        };
        drop(store);
        if !self.is_leader() && !self.pending.is_empty() {
            let leader = r.leader_id;
            for (_, reply) in self.pending.drain() {
                let _ = reply.send(Err(ProposeError::NotLeader { leader }));
            }
        }
        self.status.send_if_modified(|s| {
            if *s != status {
                *s = status;
                true
            } else {
                false
            }
        });
    }

    fn on_ready(&mut self) -> Result<(), StorageFault> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut ready = self.raw.ready();
        self.send(ready.take_messages());
        if !ready.snapshot().is_empty() {
            let snap = ready.snapshot().clone();
            self.log.install_snapshot(&snap)?;
            match serde_json::from_slice::<Store>(snap.get_data()) {
                Ok(mut store) => {
                    let index = snap.get_metadata().index;
                    store.revision = store.revision.max(index);
                    *self.store.write().expect("store lock") = store;
                    self.hub.reset(index);
                    self.refresh_peers();
                    tracing::info!(index, "snapshot from the leader installed");
                }
                Err(e) => tracing::error!(error = %e, "snapshot from leader does not decode"),
            }
        }
        self.apply(ready.take_committed_entries())?;
        self.log.append(ready.entries(), ready.hs())?;
        self.send(ready.take_persisted_messages());
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.log.set_commit(commit)?;
        }
        self.send(light.take_messages());
        self.apply(light.take_committed_entries())?;
        self.raw.advance_apply();
        self.maybe_snapshot()?;
        Ok(())
    }

    fn send(&mut self, msgs: Vec<Message>) {
        if !msgs.is_empty() {
            self.transport.send(msgs);
        }
    }

    fn refresh_peers(&mut self) {
        let peers = peers_of(&self.store.read().expect("store lock"), self.id);
        self.transport.set_peers(&peers);
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), StorageFault> {
        for entry in entries {
            let index = entry.index;
            match entry.get_entry_type() {
                EntryType::EntryNormal if entry.data.is_empty() => {
                    // The empty entry a new leader appends.
                    let mut store = self.store.write().expect("store lock");
                    store.revision = index;
                    drop(store);
                    self.hub.publish(index, Vec::new());
                }
                EntryType::EntryNormal => self.apply_command(index, &entry.data),
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    self.apply_conf_change(&entry)?;
                    self.store.write().expect("store lock").revision = index;
                    self.hub.publish(index, Vec::new());
                    // A new manager catches up from a snapshot that names it among the voters
                    // (raft-rs refuses one that does not): take it now.
                    if self.is_leader() {
                        self.snapshot_now()?;
                    }
                }
            }
        }
        Ok(())
    }

    fn apply_conf_change(&mut self, entry: &Entry) -> Result<(), StorageFault> {
        let index = entry.index;
        if index <= self.conf_floor {
            tracing::info!(
                index,
                "configuration change before --force-new-cluster skipped"
            );
            return Ok(());
        }
        let (cs, context, change) = if entry.get_entry_type() == EntryType::EntryConfChange {
            let cc = ConfChange::parse_from_bytes(&entry.data).unwrap_or_default();
            let change = (cc.get_change_type(), cc.node_id);
            (
                self.raw.apply_conf_change(&cc),
                cc.context.to_vec(),
                Some(change),
            )
        } else {
            let cc = ConfChangeV2::parse_from_bytes(&entry.data).unwrap_or_default();
            (self.raw.apply_conf_change(&cc), cc.context.to_vec(), None)
        };
        let ctx: Option<MemberContext> = serde_json::from_slice(&context).ok();
        let result = match cs {
            Ok(cs) => {
                self.log.set_conf_state(cs)?;
                if let Some((kind, node)) = change {
                    let mut store = self.store.write().expect("store lock");
                    match kind {
                        ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                            let addr = ctx.as_ref().map(|c| c.addr.clone()).unwrap_or_default();
                            tracing::info!(raft_id = node, %addr, index, "manager added");
                            store.managers.insert(node, addr);
                        }
                        ConfChangeType::RemoveNode => {
                            tracing::info!(raft_id = node, index, "manager removed");
                            store.managers.remove(&node);
                        }
                    }
                }
                self.refresh_peers();
                Ok(index)
            }
            Err(e) => {
                tracing::error!(error = %e, index, "configuration change refused");
                Err(ProposeError::Stopped(format!(
                    "configuration change refused: {e}"
                )))
            }
        };
        if let Some(ctx) = ctx {
            if ctx.node == self.id {
                if let Some(reply) = self.pending.remove(&ctx.proposal) {
                    let _ = reply.send(result);
                }
            }
        }
        Ok(())
    }

    fn apply_command(&mut self, index: u64, data: &[u8]) {
        let envelope: Envelope = match serde_json::from_slice(data) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(index, error = %e, "log entry does not decode; skipped");
                self.store.write().expect("store lock").revision = index;
                return;
            }
        };
        let result = {
            let mut store = self.store.write().expect("store lock");
            store.apply(index, envelope.command)
        };
        let reply = if envelope.node == self.id {
            self.pending.remove(&envelope.proposal)
        } else {
            None
        };
        match result {
            Ok(events) => {
                self.hub.publish(index, events);
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(index));
                }
            }
            Err(e) => {
                self.hub.publish(index, Vec::new());
                if let Some(reply) = reply {
                    let _ = reply.send(Err(ProposeError::Refused(e)));
                }
            }
        }
    }

    fn maybe_snapshot(&mut self) -> Result<(), StorageFault> {
        let applied = self.store.read().expect("store lock").revision;
        if applied.saturating_sub(self.last_snapshot) < self.settings.snapshot_every {
            return Ok(());
        }
        self.snapshot_now().map(|_| ())
    }

    fn snapshot_now(&mut self) -> Result<u64, StorageFault> {
        let applied = self.store.read().expect("store lock").revision;
        let data =
            serde_json::to_vec(&*self.store.read().expect("store lock")).expect("store serializes");
        self.log.compact(applied, data)?;
        self.last_snapshot = applied;
        tracing::info!(index = applied, "raft snapshot taken, log compacted");
        Ok(applied)
    }
}
