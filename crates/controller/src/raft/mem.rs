//! An in-memory network of Raft nodes for tests: a [`Transport`] and a [`Forward`] that hand
//! messages and proposals straight to the other nodes' handles, with fault filters — links cut
//! in either direction, and a share of messages dropped at random — as raft-rs and TiKV test
//! their clusters.

use super::node::{Feedback, Forward, Proposal, ProposeError, RaftHandle, Transport};
use raft::eraftpb::{Message, MessageType};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

#[derive(Debug)]
struct State {
    nodes: HashMap<u64, RaftHandle>,
    /// (from, to) pairs whose messages are dropped.
    cut: HashSet<(u64, u64)>,
    /// Share of the remaining messages dropped, 0.0 to 1.0.
    loss: f64,
    /// Delivery reports, per sending node (a dropped snapshot must be reported, or the leader
    /// waits for it for ever).
    feedback: HashMap<u64, mpsc::UnboundedSender<Feedback>>,
}

/// The network. Cheap to clone.
#[derive(Debug, Clone)]
pub struct MemNet {
    state: Arc<Mutex<State>>,
}

impl Default for MemNet {
    fn default() -> Self {
        MemNet {
            state: Arc::new(Mutex::new(State {
                nodes: HashMap::new(),
                cut: HashSet::new(),
                loss: 0.0,
                feedback: HashMap::new(),
            })),
        }
    }
}

impl MemNet {
    /// Adds (or replaces, after a restart) a node's handle.
    pub fn join(&self, id: u64, handle: RaftHandle) {
        self.state
            .lock()
            .expect("net lock")
            .nodes
            .insert(id, handle);
    }

    /// Takes a node off the network (it stopped).
    pub fn leave(&self, id: u64) {
        self.state.lock().expect("net lock").nodes.remove(&id);
    }

    /// Cuts `id` off from every other node, both ways.
    pub fn isolate(&self, id: u64) {
        let mut s = self.state.lock().expect("net lock");
        let others: Vec<u64> = s.nodes.keys().copied().filter(|n| *n != id).collect();
        for o in others {
            s.cut.insert((id, o));
            s.cut.insert((o, id));
        }
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.state.lock().expect("net lock").cut.clear();
    }

    /// Drops this share of messages at random.
    pub fn set_loss(&self, loss: f64) {
        self.state.lock().expect("net lock").loss = loss;
    }

    /// The transport of node `id`.
    pub fn transport(&self, id: u64) -> MemTransport {
        let (tx, rx) = mpsc::unbounded_channel();
        self.state.lock().expect("net lock").feedback.insert(id, tx);
        MemTransport {
            id,
            net: self.clone(),
            feedback: Some(rx),
        }
    }

    /// How node `id` forwards proposals to the leader.
    pub fn forwarder(&self, id: u64) -> MemForward {
        MemForward {
            id,
            net: self.clone(),
        }
    }
}

/// One node's way to the leader on a [`MemNet`].
#[derive(Debug)]
pub struct MemForward {
    id: u64,
    net: MemNet,
}

/// One node's end of a [`MemNet`].
#[derive(Debug)]
pub struct MemTransport {
    id: u64,
    net: MemNet,
    feedback: Option<mpsc::UnboundedReceiver<Feedback>>,
}

impl Transport for MemTransport {
    fn send(&mut self, msgs: Vec<Message>) {
        let s = self.net.state.lock().expect("net lock");
        for m in msgs {
            let to = m.to;
            let snapshot = m.get_msg_type() == MessageType::MsgSnapshot;
            let lost = s.cut.contains(&(self.id, to))
                || (s.loss > 0.0 && rand::random::<f64>() < s.loss)
                || !s.nodes.contains_key(&to);
            if lost {
                if let Some(f) = s.feedback.get(&self.id) {
                    let _ = f.send(Feedback::Unreachable(to));
                    if snapshot {
                        let _ = f.send(Feedback::Snapshot(to, false));
                    }
                }
                continue;
            }
            s.nodes[&to].step(m);
            // Delivered: as the TCP transport, say so, or the leader waits for the follower's
            // answer, which may be lost in turn.
            if snapshot {
                if let Some(f) = s.feedback.get(&self.id) {
                    let _ = f.send(Feedback::Snapshot(to, true));
                }
            }
        }
    }

    fn feedback(&mut self) -> Option<mpsc::UnboundedReceiver<Feedback>> {
        self.feedback.take()
    }
}

impl Forward for MemForward {
    fn forward<'a>(
        &'a self,
        leader: u64,
        addr: &'a str,
        proposal: &'a Proposal,
    ) -> Pin<Box<dyn Future<Output = Result<u64, ProposeError>> + Send + 'a>> {
        Box::pin(async move {
            let handle = {
                let s = self.net.state.lock().expect("net lock");
                // Forwarding crosses the network too: a cut link fails it.
                let reachable = !s.cut.contains(&(self.id, leader));
                s.nodes.get(&leader).cloned().filter(|_| reachable)
            };
            let unreachable = || ProposeError::Forward {
                leader,
                addr: addr.to_owned(),
                message: "unreachable".into(),
            };
            match handle {
                Some(h) => h
                    .propose_local(proposal.clone())
                    .await
                    .map_err(|e| match e {
                        ProposeError::Refused(s) => ProposeError::Remote {
                            status: 400,
                            message: s.to_string(),
                        },
                        _ => unreachable(),
                    }),
                None => Err(unreachable()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    //! The Raft driver in clusters of three on a [`MemNet`]: elections, forwarding,
    //! partitions, message loss and restarts, with 10 ms ticks.

    use super::*;
    use crate::raft::node::{restore_store, start, RaftSettings};
    use crate::raft::storage::DurableLog;
    use crate::store::{ClusterObject, Command, Store};
    use crate::watch::EventHub;
    use raft::eraftpb::ConfState;
    use std::path::{Path, PathBuf};
    use std::sync::RwLock;
    use std::time::Duration;
    use tokio_util::sync::CancellationToken;

    const VOTERS: [u64; 3] = [1, 2, 3];
    const BOUND: Duration = Duration::from_secs(30);

    struct Node {
        handle: RaftHandle,
        store: Arc<RwLock<Store>>,
        stop: CancellationToken,
        task: tokio::task::JoinHandle<Result<(), String>>,
    }

    fn start_node(net: &MemNet, id: u64, dir: &Path) -> Node {
        let log = DurableLog::open(&dir.join(format!("raft-{id}.redb"))).unwrap();
        if !log.is_initialized() {
            log.set_raft_id(id).unwrap();
            log.set_conf_state(ConfState {
                voters: VOTERS.to_vec(),
                ..Default::default()
            })
            .unwrap();
        }
        let mut store = restore_store(&log).unwrap();
        if store.managers.is_empty() {
            store.managers = VOTERS.iter().map(|v| (*v, format!("n{v}"))).collect();
        }
        let hub = EventHub::new(store.revision);
        let store = Arc::new(RwLock::new(store));
        let stop = CancellationToken::new();
        let settings = RaftSettings {
            tick: Duration::from_millis(10),
            snapshot_every: 25,
            ..Default::default()
        };
        let (handle, task) = start(
            settings,
            log,
            store.clone(),
            hub,
            Box::new(net.transport(id)),
            Some(Arc::new(net.forwarder(id))),
            stop.clone(),
        )
        .unwrap();
        net.join(id, handle.clone());
        Node {
            handle,
            store,
            stop,
            task,
        }
    }

    struct Cluster {
        net: MemNet,
        dir: tempfile::TempDir,
        nodes: HashMap<u64, Node>,
    }

    impl Cluster {
        fn new() -> Cluster {
            let net = MemNet::default();
            let dir = tempfile::tempdir().unwrap();
            let nodes = VOTERS
                .iter()
                .map(|id| (*id, start_node(&net, *id, dir.path())))
                .collect();
            Cluster { net, dir, nodes }
        }

        fn path(&self) -> PathBuf {
            self.dir.path().to_owned()
        }

        async fn leader(&self, not: Option<u64>) -> u64 {
            tokio::time::timeout(BOUND, async {
                loop {
                    for (id, n) in &self.nodes {
                        if n.handle.status().borrow().is_leader() && Some(*id) != not {
                            return *id;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await
            .expect("a leader within the bound")
        }

        /// Writes `token` through node `via` until it is acknowledged.
        async fn write(&self, via: u64, token: &str) {
            let cmd = Command::RotateJoinToken {
                manager: false,
                token: token.to_owned(),
            };
            tokio::time::timeout(BOUND, async {
                loop {
                    if self.nodes[&via].handle.propose(cmd.clone()).await.is_ok() {
                        return;
                    }
                }
            })
            .await
            .expect("the write acknowledged within the bound")
        }

        async fn init(&self) {
            let leader = self.leader(None).await;
            let object = ClusterObject {
                id: "c".into(),
                ..Default::default()
            };
            self.nodes[&leader]
                .handle
                .propose(Command::InitCluster(Box::new(object)))
                .await
                .unwrap();
        }

        /// Waits until the given nodes hold `token` as the last write.
        async fn converged(&self, ids: &[u64], token: &str) {
            tokio::time::timeout(BOUND, async {
                loop {
                    let all = ids.iter().all(|id| {
                        self.nodes[id]
                            .store
                            .read()
                            .unwrap()
                            .cluster
                            .as_ref()
                            .is_some_and(|c| c.worker_join_token == token)
                    });
                    if all {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await
            .unwrap_or_else(|_| {
                let seen: Vec<String> = ids
                    .iter()
                    .map(|id| {
                        let n = &self.nodes[id];
                        let token = n
                            .store
                            .read()
                            .unwrap()
                            .cluster
                            .clone()
                            .map(|c| c.worker_join_token);
                        format!("{id}: {token:?} {:?}", n.handle.status().borrow())
                    })
                    .collect();
                panic!(
                    "the nodes did not converge on {token} within the bound:\n{}",
                    seen.join("\n")
                )
            })
        }

        async fn stop(&mut self, id: u64) {
            let n = self.nodes.remove(&id).unwrap();
            self.net.leave(id);
            n.stop.cancel();
            n.task.await.unwrap().unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn followers_forward_and_every_node_applies_the_same_writes() {
        let c = Cluster::new();
        c.init().await;
        let leader = c.leader(None).await;
        let follower = VOTERS.into_iter().find(|v| *v != leader).unwrap();
        for i in 0..40 {
            c.write(follower, &format!("t{i}")).await;
        }
        // The proposer has applied its own write when it is acknowledged.
        assert_eq!(
            c.nodes[&follower]
                .store
                .read()
                .unwrap()
                .cluster
                .as_ref()
                .unwrap()
                .worker_join_token,
            "t39"
        );
        c.converged(&VOTERS, "t39").await;
        let revs: Vec<u64> = VOTERS
            .iter()
            .map(|v| c.nodes[v].store.read().unwrap().revision)
            .collect();
        assert!(
            revs.windows(2).all(|w| w[0] == w[1]),
            "revisions differ: {revs:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_isolated_leader_is_replaced_and_catches_up_after_healing() {
        let c = Cluster::new();
        c.init().await;
        let old = c.leader(None).await;
        c.net.isolate(old);
        // Its own writes fail: it cannot reach a majority.
        let lost = c.nodes[&old]
            .handle
            .propose(Command::RotateJoinToken {
                manager: false,
                token: "lost".into(),
            })
            .await;
        assert!(lost.is_err(), "an isolated leader committed a write");
        let new = c.leader(Some(old)).await;
        c.write(new, "after").await;
        c.net.heal();
        c.converged(&VOTERS, "after").await;
        for v in VOTERS {
            let token = c.nodes[&v]
                .store
                .read()
                .unwrap()
                .cluster
                .clone()
                .unwrap()
                .worker_join_token;
            assert_ne!(token, "lost");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_go_through_when_a_fifth_of_the_messages_is_lost() {
        let c = Cluster::new();
        c.init().await;
        c.net.set_loss(0.2);
        let leader = c.leader(None).await;
        for i in 0..30 {
            c.write(leader, &format!("l{i}")).await;
        }
        c.net.set_loss(0.0);
        c.converged(&VOTERS, "l29").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restarted_node_catches_up_from_its_log_and_a_snapshot() {
        let mut c = Cluster::new();
        c.init().await;
        let leader = c.leader(None).await;
        let down = VOTERS.into_iter().find(|v| *v != leader).unwrap();
        c.write(leader, "before").await;
        c.converged(&VOTERS, "before").await;
        c.stop(down).await;
        // More than `snapshot_every` entries while it is down: the leader compacts past it.
        for i in 0..60 {
            c.write(leader, &format!("d{i}")).await;
        }
        let path = c.path();
        let node = start_node(&c.net, down, &path);
        c.nodes.insert(down, node);
        c.converged(&VOTERS, "d59").await;
        // And the restarted node serves writes again (forwarded).
        c.write(down, "back").await;
        c.converged(&VOTERS, "back").await;
    }
}
