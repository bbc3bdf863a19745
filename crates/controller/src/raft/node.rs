//! The task that owns raft-rs's `RawNode`: it ticks, takes proposals, and handles each `Ready`
//! in the documented order — send messages, apply a snapshot, apply committed entries, persist
//! entries and hard state, send persisted messages, `advance`, then the same for the
//! `LightReady`. Committed commands are applied to the [`Store`] and published on the
//! [`EventHub`]; the proposer of each command gets its result.
//!
//! Timing (our choice, etcd-like): a tick every 100 ms, heartbeat every tick, election after
//! 10–20 ticks (1–2 s), check_quorum and pre_vote on. A snapshot of the store replaces the log
//! every `snapshot_every` applied entries.

use super::storage::{DurableLog, StorageFault};
use crate::store::{Command, Store, StoreError};
use crate::watch::EventHub;
use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeV2, Entry, EntryType, Message};
use raft::RawNode;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

/// Raft settings.
#[derive(Debug, Clone)]
pub struct RaftSettings {
    /// This manager's Raft id.
    pub id: u64,
    /// Tick length.
    pub tick: Duration,
    /// Ticks between heartbeats.
    pub heartbeat_ticks: usize,
    /// Ticks before an election (randomized up to twice this).
    pub election_ticks: usize,
    /// Applied entries between snapshots.
    pub snapshot_every: u64,
}

impl Default for RaftSettings {
    fn default() -> Self {
        RaftSettings {
            id: 1,
            tick: Duration::from_millis(100),
            heartbeat_ticks: 1,
            election_ticks: 10,
            snapshot_every: 10_000,
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
}

impl RaftStatus {
    /// True when this node leads.
    pub fn is_leader(&self) -> bool {
        self.leader != 0 && self.leader == self.id
    }
}

/// Sends Raft messages to other managers. One manager has nobody to send to.
pub trait Transport: Send + 'static {
    /// Sends messages (best effort; Raft retries).
    fn send(&mut self, msgs: Vec<Message>);
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

enum Input {
    Propose(Command, oneshot::Sender<Result<u64, ProposeError>>),
    Step(Message),
}

/// What a log entry holds: the command and who proposed it.
#[derive(Serialize, Deserialize)]
struct Envelope {
    node: u64,
    proposal: u64,
    command: Command,
}

/// A handle to the Raft task. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RaftHandle {
    tx: mpsc::Sender<Input>,
    status: watch::Receiver<RaftStatus>,
}

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Input::Propose(..) => "Propose",
            Input::Step(_) => "Step",
        })
    }
}

impl RaftHandle {
    /// Proposes a command; resolves with the revision it applied at once it is committed and
    /// applied, or with why it was not.
    pub async fn propose(&self, cmd: Command) -> Result<u64, ProposeError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Input::Propose(cmd, tx))
            .await
            .map_err(|_| ProposeError::Stopped("raft task ended".into()))?;
        rx.await
            .map_err(|_| ProposeError::Stopped("raft task ended".into()))?
    }

    /// Hands a message from a peer to Raft.
    pub async fn step(&self, msg: Message) {
        let _ = self.tx.send(Input::Step(msg)).await;
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
pub fn start(
    settings: RaftSettings,
    log: DurableLog,
    store: Arc<RwLock<Store>>,
    hub: Arc<EventHub>,
    transport: Box<dyn Transport>,
    shutdown: CancellationToken,
) -> Result<(RaftHandle, tokio::task::JoinHandle<()>), String> {
    let applied = store.read().expect("store lock").revision;
    let config = raft::Config {
        id: settings.id,
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
    let (tx, rx) = mpsc::channel(4096);
    let (status_tx, status_rx) = watch::channel(RaftStatus {
        id: settings.id,
        applied,
        ..Default::default()
    });
    let driver = Driver {
        raw,
        log,
        store,
        hub,
        transport,
        settings,
        pending: HashMap::new(),
        next_proposal: rand::random::<u64>() >> 1,
        status: status_tx,
        last_snapshot: applied,
    };
    let task = tokio::spawn(driver.run(rx, shutdown));
    Ok((
        RaftHandle {
            tx,
            status: status_rx,
        },
        task,
    ))
}

type Reply = oneshot::Sender<Result<u64, ProposeError>>;

struct Driver {
    raw: RawNode<DurableLog>,
    log: DurableLog,
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
    async fn run(mut self, mut rx: mpsc::Receiver<Input>, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(self.settings.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A lone voter need not wait an election timeout.
        if self.raw.raft.prs().conf().voters().ids().len() == 1 {
            let _ = self.raw.campaign();
        }
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = ticker.tick() => { self.raw.tick(); }
                input = rx.recv() => {
                    let Some(input) = input else { break };
                    self.handle(input);
                    // Batch whatever else is queued into the same Ready (one fsync).
                    while let Ok(more) = rx.try_recv() {
                        self.handle(more);
                    }
                }
            }
            if let Err(fault) = self.on_ready() {
                tracing::error!(error = %fault, "raft storage failed; this manager stops taking part");
                self.fail_pending(&fault.to_string());
                break;
            }
            self.publish_status();
        }
        self.fail_pending("shut down");
    }

    fn handle(&mut self, input: Input) {
        match input {
            Input::Propose(cmd, reply) => {
                if !self.is_leader() {
                    let _ = reply.send(Err(ProposeError::NotLeader {
                        leader: self.raw.raft.leader_id,
                    }));
                    return;
                }
                let id = self.next_proposal;
                self.next_proposal += 1;
                let data = serde_json::to_vec(&Envelope {
                    node: self.settings.id,
                    proposal: id,
                    command: cmd,
                })
                .expect("commands serialize");
                match self.raw.propose(Vec::new(), data) {
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
        let status = RaftStatus {
            id: self.settings.id,
            term: r.term,
            leader: r.leader_id,
            commit: r.raft_log.committed,
            applied: self.store.read().expect("store lock").revision,
            voters: r.prs().conf().voters().ids().iter().collect(),
        };
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
        self.transport.send(ready.take_messages());
        if !ready.snapshot().is_empty() {
            let snap = ready.snapshot().clone();
            self.log.install_snapshot(&snap)?;
            match serde_json::from_slice::<Store>(snap.get_data()) {
                Ok(store) => *self.store.write().expect("store lock") = store,
                Err(e) => tracing::error!(error = %e, "snapshot from leader does not decode"),
            }
        }
        self.apply(ready.take_committed_entries())?;
        self.log.append(ready.entries(), ready.hs())?;
        self.transport.send(ready.take_persisted_messages());
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.log.set_commit(commit)?;
        }
        self.transport.send(light.take_messages());
        self.apply(light.take_committed_entries())?;
        self.raw.advance_apply();
        self.maybe_snapshot()?;
        Ok(())
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
                    let cs = if entry.get_entry_type() == EntryType::EntryConfChange {
                        let cc = ConfChange::parse_from_bytes(&entry.data).unwrap_or_default();
                        self.raw.apply_conf_change(&cc)
                    } else {
                        let cc = ConfChangeV2::parse_from_bytes(&entry.data).unwrap_or_default();
                        self.raw.apply_conf_change(&cc)
                    };
                    match cs {
                        Ok(cs) => self.log.set_conf_state(cs)?,
                        Err(e) => {
                            tracing::error!(error = %e, index, "configuration change refused")
                        }
                    }
                    self.store.write().expect("store lock").revision = index;
                    self.hub.publish(index, Vec::new());
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
        let reply = if envelope.node == self.settings.id {
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
        let data =
            serde_json::to_vec(&*self.store.read().expect("store lock")).expect("store serializes");
        self.log.compact(applied, data)?;
        self.last_snapshot = applied;
        tracing::info!(index = applied, "raft snapshot taken, log compacted");
        Ok(())
    }
}
