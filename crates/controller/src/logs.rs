//! The log broker: `service logs` across the cluster's nodes. Logs stay on the nodes that ran
//! the tasks; a client's request becomes a subscription, each node's agent picks up the part
//! for its tasks (a long poll on its session, like its assignments), reads its containers'
//! log files and publishes the lines back, and the broker streams them to the client. Agents
//! only ever call the manager, so the same path works for any node that can reach it.
//!
//! A subscription ends when the client goes away (the next publish learns it is no longer
//! active) or, without `follow`, once every node has said it is done.

use shoal_api::wire::{LogLine, LogSubscription};
use shoal_api::{NodeId, TaskId};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// What a client's stream receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogEvent {
    /// A line.
    Line(LogLine),
    /// A node has sent everything it will.
    NodeDone(NodeId),
}

#[derive(Debug)]
struct Sub {
    per_node: BTreeMap<NodeId, Vec<TaskId>>,
    follow: bool,
    tail: Option<usize>,
    /// Nodes the subscription was handed to.
    delivered: BTreeSet<NodeId>,
    tx: mpsc::Sender<LogEvent>,
}

#[derive(Debug, Default)]
struct Inner {
    subs: HashMap<String, Sub>,
    /// Bumped when a node has new subscriptions to pick up.
    wake: HashMap<NodeId, watch::Sender<u64>>,
}

/// Subscriptions in flight on this manager.
#[derive(Debug, Default)]
pub struct LogBroker {
    inner: Mutex<Inner>,
}

/// Removes a subscription when the client's stream is dropped.
#[derive(Debug)]
pub struct SubscriptionGuard {
    broker: std::sync::Arc<LogBroker>,
    id: String,
}

impl Drop for SubscriptionGuard {
    fn drop(&mut self) {
        self.broker.end(&self.id);
    }
}

impl LogBroker {
    /// A broker with no subscriptions.
    pub fn new() -> LogBroker {
        LogBroker::default()
    }

    fn waker(inner: &mut Inner, node: &NodeId) -> watch::Sender<u64> {
        inner
            .wake
            .entry(node.clone())
            .or_insert_with(|| watch::channel(0).0)
            .clone()
    }

    /// Opens a subscription for `per_node` tasks; returns its id and the client's receiver.
    pub fn subscribe(
        &self,
        per_node: BTreeMap<NodeId, Vec<TaskId>>,
        follow: bool,
        tail: Option<usize>,
    ) -> (String, mpsc::Receiver<LogEvent>) {
        let id = shoal_api::ids::id_from_bits(rand::random());
        let (tx, rx) = mpsc::channel(1024);
        let mut inner = self.inner.lock().expect("log broker lock");
        let nodes: Vec<NodeId> = per_node.keys().cloned().collect();
        inner.subs.insert(
            id.clone(),
            Sub {
                per_node,
                follow,
                tail,
                delivered: BTreeSet::new(),
                tx,
            },
        );
        for n in nodes {
            Self::waker(&mut inner, &n).send_modify(|v| *v += 1);
        }
        (id, rx)
    }

    /// A guard that ends the subscription when dropped.
    pub fn guard(self: &std::sync::Arc<Self>, id: &str) -> SubscriptionGuard {
        SubscriptionGuard {
            broker: self.clone(),
            id: id.to_owned(),
        }
    }

    /// Ends a subscription.
    pub fn end(&self, id: &str) {
        self.inner.lock().expect("log broker lock").subs.remove(id);
    }

    fn take_pending(&self, node: &NodeId) -> Vec<LogSubscription> {
        let mut inner = self.inner.lock().expect("log broker lock");
        let mut out = Vec::new();
        for (id, sub) in inner.subs.iter_mut() {
            if let Some(tasks) = sub.per_node.get(node) {
                if sub.delivered.insert(node.clone()) {
                    out.push(LogSubscription {
                        id: id.clone(),
                        tasks: tasks.clone(),
                        follow: sub.follow,
                        tail: sub.tail,
                    });
                }
            }
        }
        out
    }

    /// The subscriptions for `node` not yet handed to it, waiting up to `wait` for one.
    pub async fn wait_pending(&self, node: &NodeId, wait: Duration) -> Vec<LogSubscription> {
        let mut rx = {
            let mut inner = self.inner.lock().expect("log broker lock");
            Self::waker(&mut inner, node).subscribe()
        };
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            rx.borrow_and_update();
            let found = self.take_pending(node);
            if !found.is_empty() {
                return found;
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return Vec::new();
            }
        }
    }

    /// Lines from `node` for subscription `id`; `done` when it has sent all it will. Returns
    /// false when the subscription is over (the client left): the agent stops.
    pub async fn publish(&self, id: &str, node: &NodeId, lines: Vec<LogLine>, done: bool) -> bool {
        let tx = {
            let inner = self.inner.lock().expect("log broker lock");
            match inner.subs.get(id) {
                Some(s) if s.per_node.contains_key(node) => s.tx.clone(),
                _ => return false,
            }
        };
        for l in lines {
            if tx.send(LogEvent::Line(l)).await.is_err() {
                self.end(id);
                return false;
            }
        }
        if done && tx.send(LogEvent::NodeDone(node.clone())).await.is_err() {
            self.end(id);
            return false;
        }
        !tx.is_closed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(task: &TaskId, node: &NodeId, text: &str) -> LogLine {
        LogLine {
            task_id: task.clone(),
            service: "s".into(),
            slot: 1,
            node_id: node.clone(),
            stream: "stdout".into(),
            time: "t".into(),
            line: text.into(),
        }
    }

    #[tokio::test]
    async fn nodes_pick_up_their_part_and_publish_until_the_client_leaves() {
        let b = LogBroker::new();
        let (n1, n2) = (NodeId::from_bits(1), NodeId::from_bits(2));
        let (t1, t2) = (TaskId::from_bits(1), TaskId::from_bits(2));
        let per_node = BTreeMap::from([
            (n1.clone(), vec![t1.clone()]),
            (n2.clone(), vec![t2.clone()]),
        ]);
        let (id, mut rx) = b.subscribe(per_node, false, Some(10));
        let got = b.wait_pending(&n1, Duration::from_millis(10)).await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].tasks, vec![t1.clone()]);
        assert_eq!(got[0].tail, Some(10));
        assert!(
            b.wait_pending(&n1, Duration::from_millis(10))
                .await
                .is_empty(),
            "handed over once"
        );
        assert!(b.publish(&id, &n1, vec![line(&t1, &n1, "a\n")], true).await);
        assert_eq!(rx.recv().await, Some(LogEvent::Line(line(&t1, &n1, "a\n"))));
        assert_eq!(rx.recv().await, Some(LogEvent::NodeDone(n1.clone())));
        assert!(
            !b.publish(&id, &NodeId::from_bits(9), vec![], true).await,
            "not its node"
        );
        drop(rx);
        b.end(&id);
        assert!(
            !b.publish(&id, &n2, vec![line(&t2, &n2, "b\n")], false)
                .await
        );
    }

    #[tokio::test]
    async fn a_waiting_node_wakes_on_a_new_subscription() {
        let b = std::sync::Arc::new(LogBroker::new());
        let n = NodeId::from_bits(1);
        let waiter = {
            let b = b.clone();
            let n = n.clone();
            tokio::spawn(async move { b.wait_pending(&n, Duration::from_secs(30)).await })
        };
        tokio::task::yield_now().await;
        let (_id, _rx) = b.subscribe(
            BTreeMap::from([(n, vec![TaskId::from_bits(1)])]),
            true,
            None,
        );
        assert_eq!(waiter.await.unwrap().len(), 1);
    }
}
