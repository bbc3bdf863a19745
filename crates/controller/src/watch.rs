//! The event hub: every change applied to the store is published here, with its revision.
//! Subscribers start from any revision still held in memory (the newest events up to a byte
//! budget, estimated per event, [`DEFAULT_BUDGET`] unless `--event-history` says otherwise) and
//! then follow live changes, with no gap between the two. Leader loops only need to know that
//! something changed, which [`EventHub::revision`] tells.

use shoal_api::wire::Event;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::sync::{broadcast, watch};

/// Bytes of events (as JSON) kept for subscribers that start in the past. Whoever asks for
/// older ones gets [`Compacted`] and starts again from the store (the dispatcher sends the full
/// assignment set, `--wait` re-reads the services).
pub const DEFAULT_BUDGET: usize = 64 << 20;

/// A subscriber asked for events that are no longer held.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("events before revision {oldest} are no longer held: start from {oldest} or later, or from 0 for live events only")]
pub struct Compacted {
    /// Oldest revision still available as a starting point.
    pub oldest: u64,
}

#[derive(Debug)]
struct Inner {
    /// Batches of events (one per applied command, shared with live subscribers) with their
    /// revision and estimated size, oldest first.
    ring: VecDeque<(u64, Arc<Vec<Event>>, usize)>,
    /// Sum of the sizes held.
    bytes: usize,
    budget: usize,
    /// Revision before the first held event: `since` must be at least this.
    floor: u64,
}

/// Publishes store changes.
#[derive(Debug)]
pub struct EventHub {
    inner: Mutex<Inner>,
    live: broadcast::Sender<Arc<Vec<Event>>>,
    revision: watch::Sender<u64>,
}

/// A subscription: the held events after `since`, then live batches.
#[derive(Debug)]
pub struct Subscription {
    /// Batches already applied after the requested revision, oldest first.
    pub backlog: Vec<Arc<Vec<Event>>>,
    /// Later batches, in order.
    pub live: broadcast::Receiver<Arc<Vec<Event>>>,
}

/// What an event costs in the history budget: an estimate of its size as JSON, without
/// serializing it (every manager publishes every change; most are never read back).
fn estimated_size(e: &Event) -> usize {
    use shoal_api::wire::Object;
    let text = |v: &[String]| v.iter().map(String::len).sum::<usize>();
    match &e.object {
        Object::Task(t) => {
            1024 + text(&t.spec.container.command)
                + text(&t.spec.container.env)
                + t.status.err.len()
        }
        Object::Service(s) => 2048 + text(&s.spec.task.container.env),
        _ => 1024,
    }
}

impl EventHub {
    /// A hub whose store is at `revision`, holding [`DEFAULT_BUDGET`] bytes of history.
    pub fn new(revision: u64) -> Arc<EventHub> {
        EventHub::with_budget(revision, DEFAULT_BUDGET)
    }

    /// A hub holding up to `budget` bytes of history.
    pub fn with_budget(revision: u64, budget: usize) -> Arc<EventHub> {
        let (live, _) = broadcast::channel(4096);
        let (rev, _) = watch::channel(revision);
        Arc::new(EventHub {
            inner: Mutex::new(Inner {
                ring: VecDeque::new(),
                bytes: 0,
                budget,
                floor: revision,
            }),
            live,
            revision: rev,
        })
    }

    /// Publishes the events of one applied command, then moves the revision.
    pub fn publish(&self, revision: u64, events: Vec<Event>) {
        if !events.is_empty() {
            let size: usize = events.iter().map(estimated_size).sum();
            let batch = Arc::new(events);
            let mut inner = self.inner.lock().expect("hub lock");
            inner.bytes += size;
            inner.ring.push_back((revision, batch.clone(), size));
            while inner.bytes > inner.budget {
                let Some((dropped, _, n)) = inner.ring.pop_front() else {
                    break;
                };
                inner.bytes -= n;
                inner.floor = dropped;
            }
            // Sent under the lock so a new subscriber sees each event exactly once.
            let _ = self.live.send(batch);
        }
        self.revision.send_replace(revision);
    }

    /// Forgets the held events: the store jumped to `revision` (a snapshot from the leader), so
    /// subscribers from before it must start again from the store.
    pub fn reset(&self, revision: u64) {
        let mut inner = self.inner.lock().expect("hub lock");
        inner.ring.clear();
        inner.bytes = 0;
        inner.floor = revision;
        self.revision.send_replace(revision);
    }

    /// Subscribes to events after `since` (0: live events only). Finding the backlog is a
    /// binary search, and it shares the held batches rather than copying them.
    pub fn subscribe(&self, since: u64) -> Result<Subscription, Compacted> {
        let inner = self.inner.lock().expect("hub lock");
        let live = self.live.subscribe();
        if since == 0 {
            return Ok(Subscription {
                backlog: Vec::new(),
                live,
            });
        }
        if since < inner.floor {
            return Err(Compacted {
                oldest: inner.floor,
            });
        }
        let from = inner.ring.partition_point(|(r, _, _)| *r <= since);
        let backlog = inner
            .ring
            .range(from..)
            .map(|(_, b, _)| b.clone())
            .collect();
        Ok(Subscription { backlog, live })
    }

    /// Watches the store revision.
    pub fn revision(&self) -> watch::Receiver<u64> {
        self.revision.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api::network::{Network, NetworkSpec};
    use shoal_api::wire::{Action, Object};

    fn ev(revision: u64) -> Event {
        let net = Network {
            id: shoal_api::NetworkId::from_bits(revision as u128),
            version: revision,
            created_at: Default::default(),
            spec: NetworkSpec::default(),
            vni: 4096,
            subnet: String::new(),
            gateway: String::new(),
        };
        Event {
            revision,
            action: Action::Create,
            object: Object::Network(Box::new(net)),
        }
    }

    fn revisions(sub: &Subscription) -> Vec<u64> {
        sub.backlog
            .iter()
            .flat_map(|b| b.iter())
            .map(|e| e.revision)
            .collect()
    }

    #[test]
    fn subscribers_get_backlog_then_live_events_without_gaps() {
        let hub = EventHub::new(0);
        hub.publish(1, vec![ev(1)]);
        hub.publish(2, vec![ev(2)]);
        let mut sub = hub.subscribe(1).unwrap();
        assert_eq!(revisions(&sub), vec![2]);
        hub.publish(3, vec![ev(3)]);
        assert_eq!(sub.live.try_recv().unwrap()[0].revision, 3);
        assert_eq!(*hub.revision().borrow(), 3);
    }

    #[test]
    fn history_is_bounded_by_bytes_in_whole_revisions() {
        let size = estimated_size(&ev(1));
        let hub = EventHub::with_budget(0, size * 3);
        for r in 1..=3 {
            hub.publish(r, vec![ev(r), ev(r)]);
        }
        // Six events of one size each, three fit: revisions 1 and 2 went, whole.
        assert_eq!(hub.subscribe(1).unwrap_err(), Compacted { oldest: 2 });
        let sub = hub.subscribe(2).unwrap();
        assert_eq!(revisions(&sub), vec![3, 3]);
    }

    #[test]
    fn a_restarted_hub_refuses_history_it_does_not_hold() {
        let hub = EventHub::new(10);
        assert_eq!(hub.subscribe(5).unwrap_err(), Compacted { oldest: 10 });
        assert!(hub.subscribe(10).unwrap().backlog.is_empty());
    }
}
