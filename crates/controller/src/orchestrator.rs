//! The orchestrator: makes each service's tasks match its spec. [`reconcile`] is a pure function
//! of one service, its tasks, the nodes and the time; it returns the [`TaskOp`]s to propose and
//! when to look again (for restart delays and update delays). The driver in `manager` runs it
//! whenever the store changes or a wake-up time passes.
//!
//! Replicated services own slots `1..=replicas`, global services one slot per eligible node. A
//! slot's *occupant* is its newest task the orchestrator still wants running. The rules:
//! - a slot without an occupant gets a new task (unless, for stop-first, an old task there is
//!   still stopping);
//! - an occupant that ended is replaced per the restart policy (condition, delay, max_attempts
//!   within window); one that must not be restarted stays, dead, as the slot's occupant, as in
//!   Swarm; one orphaned by a lost node is replaced at once, whatever the policy;
//! - an occupant whose template differs from the service's is replaced in batches of
//!   `update_config.parallelism`, `delay` apart, stop-first or start-first;
//! - tasks beyond the replica count, on ineligible nodes, or of a removed service, are shut
//!   down; a replicated task on a drained node is replaced first and shut down once its
//!   replacement runs; finished history is reaped down to a few tasks per slot; a removed
//!   service is deleted once its tasks are gone;
//! - a settled service whose tasks are unevenly spread has one task at a time moved, start-first,
//!   to the least-loaded node (see `rebalance`).

use crate::store::TaskOp;
use shoal_api::constraint::Constraint;
use shoal_api::node::{Availability, Node, NodeState};
use shoal_api::service::{
    FailureAction, ResourceAmounts, RestartCondition, Service, ServiceMode, UpdateOrder,
    UpdateState, UpdateStatus,
};
use shoal_api::task::{Task, TaskState, TaskStatus};
use shoal_api::units::{Duration as ApiDuration, Timestamp};
use shoal_api::{NodeId, TaskId};
use std::collections::{BTreeMap, HashMap};

/// Finished tasks kept per slot (at least; more when max_attempts needs them counted).
pub const TASK_HISTORY: usize = 5;

/// What one pass decided.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Changes to propose.
    pub ops: Vec<TaskOp>,
    /// Run again at this time even if nothing changes.
    pub wake_at: Option<Timestamp>,
}

impl Plan {
    fn wake(&mut self, at: Timestamp) {
        self.wake_at = Some(self.wake_at.map_or(at, |w| w.min(at)));
    }
}

/// A slot: a replica number, or a node for global services.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum SlotKey {
    Replica(u64),
    Node(NodeId),
}

/// Makes fresh task ids; the driver draws them at random, tests count.
pub trait IdSource {
    /// A new task id.
    fn task_id(&mut self) -> TaskId;
}

/// The nodes a global service wants a task on: up, not drained, matching its constraints.
pub fn global_nodes<'a>(
    service: &Service,
    nodes: impl IntoIterator<Item = &'a Node>,
) -> impl Iterator<Item = &'a Node> {
    let constraints =
        Constraint::parse_all(&service.spec.task.placement.constraints).unwrap_or_default();
    nodes
        .into_iter()
        .filter(move |n| node_eligible(n, &constraints))
}

fn node_eligible(node: &Node, constraints: &[Constraint]) -> bool {
    node.status.state != NodeState::Down
        && node.spec.availability != Availability::Drain
        && constraints.iter().all(|c| c.matches(node))
}

fn new_task(
    service: &Service,
    slot: &SlotKey,
    attempt_of: Option<&Task>,
    now: Timestamp,
    ids: &mut dyn IdSource,
) -> Task {
    let (slot_no, node_id) = match slot {
        SlotKey::Replica(n) => (*n, None),
        SlotKey::Node(id) => (0, Some(id.clone())),
    };
    let message = if attempt_of.is_some() {
        "restarted"
    } else {
        "created"
    };
    Task {
        id: ids.task_id(),
        version: 0,
        service_id: service.id.clone(),
        service_name: service.spec.name.clone(),
        slot: slot_no,
        node_id,
        spec_version: service.spec_version,
        spec: service.spec.task.clone(),
        desired_state: TaskState::Running,
        status: TaskStatus::new(TaskState::New, now, message),
        created_at: now,
        networks: Vec::new(),
    }
}

/// Stops a task: desired shutdown, or deleted outright when it never reached a node.
fn stop(task: &Task, ops: &mut Vec<TaskOp>) {
    if task.status.state < TaskState::Assigned {
        ops.push(TaskOp::Delete {
            id: task.id.clone(),
        });
    } else {
        ops.push(TaskOp::SetDesired {
            id: task.id.clone(),
            state: TaskState::Shutdown,
        });
    }
}

/// True for a task whose container may still run: wanted down but not yet reported down, on a
/// node that can still report.
fn stopping(task: &Task, nodes: &BTreeMap<NodeId, &Node>) -> bool {
    !task.wanted()
        && !task.status.state.is_terminal()
        && task.status.state >= TaskState::Assigned
        && task
            .node_id
            .as_ref()
            .and_then(|n| nodes.get(n))
            .is_some_and(|n| n.status.state != NodeState::Down)
}

/// Reconciles one service. `tasks` are all its tasks.
pub fn reconcile(
    service: &Service,
    tasks: &[&Task],
    nodes: &[Node],
    usage: &Usage,
    now: Timestamp,
    ids: &mut dyn IdSource,
) -> Plan {
    let mut plan = Plan::default();
    let node_map: BTreeMap<NodeId, &Node> = nodes.iter().map(|n| (n.id.clone(), n)).collect();

    if service.removing {
        for t in tasks {
            let gone_node = t.node_id.as_ref().is_none_or(|n| {
                node_map
                    .get(n)
                    .is_none_or(|n| n.status.state == NodeState::Down)
            });
            if t.status.state.is_terminal() || t.status.state < TaskState::Assigned || gone_node {
                plan.ops.push(TaskOp::Delete { id: t.id.clone() });
            } else if t.wanted() {
                plan.ops.push(TaskOp::SetDesired {
                    id: t.id.clone(),
                    state: TaskState::Shutdown,
                });
            }
        }
        let remaining = tasks.len()
            - plan
                .ops
                .iter()
                .filter(|o| matches!(o, TaskOp::Delete { .. }))
                .count();
        if remaining == 0 {
            plan.ops.push(TaskOp::DeleteService {
                id: service.id.clone(),
            });
        }
        return plan;
    }

    let constraints =
        Constraint::parse_all(&service.spec.task.placement.constraints).unwrap_or_default();
    // Which slots should exist.
    let wanted_slots: Vec<SlotKey> = match service.spec.mode {
        ServiceMode::Replicated { replicas } => (1..=replicas).map(SlotKey::Replica).collect(),
        ServiceMode::Global => global_nodes(service, nodes)
            .map(|n| SlotKey::Node(n.id.clone()))
            .collect(),
    };
    let wanted_set: std::collections::BTreeSet<&SlotKey> = wanted_slots.iter().collect();
    let mut by_slot: BTreeMap<SlotKey, Vec<&Task>> = BTreeMap::new();
    for t in tasks {
        let key = match service.spec.mode {
            ServiceMode::Replicated { .. } => SlotKey::Replica(t.slot),
            ServiceMode::Global => match &t.node_id {
                Some(n) => SlotKey::Node(n.clone()),
                None => continue,
            },
        };
        by_slot.entry(key).or_default().push(t);
    }
    for list in by_slot.values_mut() {
        list.sort_by_key(|t| (t.created_at, t.id.clone()));
    }

    // Tasks of slots that should not exist: shut down. (Tasks on drained nodes are moved below,
    // replacement first.)
    for (key, list) in &by_slot {
        if !wanted_set.contains(key) {
            for t in list.iter().filter(|t| t.wanted()) {
                stop(t, &mut plan.ops);
            }
        }
    }

    let state = service.update_status.as_ref().map(|u| u.state);
    let rolling_back = state == Some(UpdateState::RollbackStarted);
    let update = if rolling_back {
        service.spec.rollback_config
    } else {
        service.spec.update_config
    };
    let updating = state.is_some_and(UpdateState::in_progress);
    let paused = matches!(
        state,
        Some(UpdateState::Paused | UpdateState::RollbackPaused)
    );
    let mut outdated_slots = Vec::new();
    let mut in_flight = 0u64;
    // Slots with a task on its way to another node, and tasks running alone in their slot.
    let mut moving = 0u64;
    let mut running: Vec<&Task> = Vec::new();
    let mut last_progress: Option<Timestamp> = None;

    for key in &wanted_slots {
        let list = by_slot.get(key).map(Vec::as_slice).unwrap_or(&[]);
        let drained = |t: &Task| {
            t.node_id
                .as_ref()
                .and_then(|n| node_map.get(n))
                .is_some_and(|n| {
                    n.spec.availability == Availability::Drain && !t.status.state.is_terminal()
                })
        };
        let occupants: Vec<&Task> = list
            .iter()
            .copied()
            .filter(|t| t.wanted() && !drained(t))
            .collect();
        let current = occupants
            .iter()
            .copied()
            .rfind(|t| t.spec == service.spec.task);
        let old = occupants
            .iter()
            .copied()
            .rfind(|t| t.spec != service.spec.task);
        let is_stopping = list.iter().any(|t| stopping(t, &node_map));
        // A task being moved off a drained node runs until its replacement runs (or cannot be
        // placed, or ended): the service never drops below its replicas for the move.
        let replaced = occupants.iter().any(|t| {
            t.status.state == TaskState::Running
                || t.status.state == TaskState::Pending
                || t.status.state.is_terminal()
        });
        for t in list.iter().filter(|t| t.wanted() && drained(t)) {
            if replaced {
                stop(t, &mut plan.ops);
            } else {
                moving += 1;
            }
        }

        match (current, old) {
            (None, None) => {
                if updating {
                    // An update's slot: stopping its old task (stop-first), or refilled now;
                    // either way part of the batch in flight.
                    in_flight += 1;
                }
                if is_stopping && update.order == UpdateOrder::StopFirst && updating {
                    continue;
                }
                plan.ops.push(TaskOp::Create(Box::new(new_task(
                    service, key, None, now, ids,
                ))));
            }
            (Some(cur), old) => {
                let update_started = service
                    .update_status
                    .as_ref()
                    .map_or(Timestamp(u64::MAX), |u| u.started_at);
                if updating
                    && cur.status.state < TaskState::Running
                    && !cur.status.state.is_terminal()
                    && (old.is_some() || cur.created_at >= update_started)
                {
                    in_flight += 1;
                }
                if cur.status.state == TaskState::Running && updating {
                    last_progress = Some(
                        last_progress
                            .map_or(cur.status.since, |p: Timestamp| p.max(cur.status.since)),
                    );
                }
                // start-first: the old task goes once the new one runs. So does an older copy
                // of the current spec (a task being moved by the rebalancer).
                let settled = cur.status.state >= TaskState::Running
                    || cur.status.state == TaskState::Pending;
                if let Some(old) = old {
                    if cur.status.state >= TaskState::Running {
                        stop(old, &mut plan.ops);
                    }
                }
                for extra in occupants
                    .iter()
                    .filter(|t| t.spec == service.spec.task && t.id != cur.id)
                {
                    if settled {
                        stop(extra, &mut plan.ops);
                    } else {
                        moving += 1;
                    }
                }
                if cur.status.state == TaskState::Running && occupants.len() == 1 {
                    running.push(cur);
                }
                if cur.status.state.is_terminal() {
                    restart(service, key, cur, list, now, ids, &mut plan);
                }
            }
            (None, Some(old)) => {
                if old.status.state.is_terminal() {
                    // A dead outdated task: replace it with the new spec, no restart policy.
                    stop(old, &mut plan.ops);
                    plan.ops.push(TaskOp::Create(Box::new(new_task(
                        service, key, None, now, ids,
                    ))));
                } else {
                    outdated_slots.push((key.clone(), old));
                }
            }
        }
    }

    // A task of the update that failed within `monitor` of its creation (or was rejected)
    // counts against `max_failure_ratio`; past it, `failure_action` decides.
    if updating {
        let started_at = service.update_status.as_ref().map_or(now, |u| u.started_at);
        let failed: Vec<&Task> = tasks
            .iter()
            .copied()
            .filter(|t| {
                t.spec == service.spec.task
                    && t.created_at >= started_at
                    && t.status.state.is_failure()
                    && (t.status.state == TaskState::Rejected
                        || t.status.since <= t.created_at.after(update.monitor))
            })
            .collect();
        let total = wanted_slots.len().max(1) as f64;
        if let Some(first) = failed.first() {
            if failed.len() as f64 > update.max_failure_ratio * total {
                let what = if rolling_back { "rollback" } else { "update" };
                let why = format!("failure or early termination of task {}", first.id.short());
                let pause = |state| TaskOp::UpdateStatus {
                    service: service.id.clone(),
                    status: UpdateStatus {
                        state,
                        started_at,
                        completed_at: None,
                        message: format!("{what} paused due to {why}"),
                    },
                };
                match (update.failure_action, rolling_back) {
                    (FailureAction::Continue, _) => {}
                    (FailureAction::Rollback, false) if service.previous_spec.is_some() => {
                        // The next pass works from the previous spec.
                        plan.ops.clear();
                        plan.ops.push(TaskOp::Rollback {
                            service: service.id.clone(),
                            message: format!("update rolled back due to {why}"),
                            at: now,
                        });
                        return plan;
                    }
                    (_, true) => {
                        plan.ops.push(pause(UpdateState::RollbackPaused));
                        return plan;
                    }
                    (_, false) => {
                        plan.ops.push(pause(UpdateState::Paused));
                        return plan;
                    }
                }
            }
        }
    }

    // Rolling update of the outdated slots (not while paused).
    if !outdated_slots.is_empty() && !paused {
        let delay_ok = match last_progress {
            Some(p) if !update.delay.is_zero() && in_flight == 0 => {
                let ready = p.after(update.delay);
                if now < ready {
                    plan.wake(ready);
                }
                now >= ready
            }
            _ => true,
        };
        let budget = if update.parallelism == 0 {
            u64::MAX
        } else {
            update.parallelism.saturating_sub(in_flight)
        };
        if delay_ok {
            for (key, old) in outdated_slots
                .iter()
                .take(budget.min(usize::MAX as u64) as usize)
            {
                match update.order {
                    // The replacement is made once the old task has stopped (a later pass).
                    UpdateOrder::StopFirst => stop(old, &mut plan.ops),
                    UpdateOrder::StartFirst => plan.ops.push(TaskOp::Create(Box::new(new_task(
                        service, key, None, now, ids,
                    )))),
                }
            }
        }
    } else if updating && in_flight == 0 {
        let started_at = service
            .update_status
            .as_ref()
            .map(|u| u.started_at)
            .unwrap_or(now);
        let (state, message) = if rolling_back {
            (UpdateState::RollbackCompleted, "rollback completed")
        } else {
            (UpdateState::Completed, "update completed")
        };
        let message = match service.update_status.as_ref() {
            // A rollback the orchestrator started keeps saying why.
            Some(u) if rolling_back && u.message.starts_with("update rolled back") => {
                u.message.clone()
            }
            _ => message.to_owned(),
        };
        plan.ops.push(TaskOp::UpdateStatus {
            service: service.id.clone(),
            status: UpdateStatus {
                state,
                started_at,
                completed_at: Some(now),
                message,
            },
        });
    }

    if outdated_slots.is_empty()
        && !updating
        && moving == 0
        && running.len() == wanted_slots.len()
        && matches!(service.spec.mode, ServiceMode::Replicated { .. })
    {
        rebalance(
            service,
            &running,
            nodes,
            &constraints,
            usage,
            now,
            ids,
            &mut plan,
        );
    }

    reap(service, &by_slot, &mut plan);
    plan
}

/// Reservations already placed on each node (every service's running and assigned tasks).
pub type Usage = HashMap<NodeId, ResourceAmounts>;

/// A running task is moved off the node with most of the service's tasks once another node that
/// may take it has at least two fewer, one move per service at a time, each after the service
/// has run settled for [`REBALANCE_SETTLE`]: a node that joins or comes back gets its share
/// without `service update --force`. The move is start-first: a replacement in the same slot
/// (which the scheduler puts on the least-loaded node), then the old task stops once the new
/// one runs. Services with placement preferences (their spread is the scheduler's to keep) or
/// the label `shoal.rebalance=false` are left alone.
#[allow(clippy::too_many_arguments)]
fn rebalance(
    service: &Service,
    running: &[&Task],
    nodes: &[Node],
    constraints: &[Constraint],
    usage: &Usage,
    now: Timestamp,
    ids: &mut dyn IdSource,
    plan: &mut Plan,
) {
    let task = &service.spec.task;
    if !task.placement.preferences.is_empty()
        || service.spec.labels.get(REBALANCE_LABEL).map(String::as_str) == Some("false")
    {
        return;
    }
    let mut count: BTreeMap<&NodeId, u64> = BTreeMap::new();
    for t in running {
        if let Some(n) = &t.node_id {
            *count.entry(n).or_default() += 1;
        }
    }
    let want = task.resources.reservations;
    let may_take = |n: &Node| {
        let used = usage.get(&n.id).copied().unwrap_or_default();
        let have = n.description.resources;
        n.schedulable()
            && constraints.iter().all(|c| c.matches(n))
            && (want.nano_cpus == 0 || used.nano_cpus + want.nano_cpus <= have.nano_cpus)
            && (want.memory_bytes == 0
                || used.memory_bytes + want.memory_bytes <= have.memory_bytes)
    };
    let Some(least) = nodes
        .iter()
        .filter(|n| may_take(n))
        .map(|n| count.get(&n.id).copied().unwrap_or(0))
        .min()
    else {
        return;
    };
    let Some((&donor, &most)) = count
        .iter()
        .max_by_key(|(n, c)| (**c, std::cmp::Reverse(*n)))
    else {
        return;
    };
    if most < least + 2 {
        return;
    }
    let settled_at = running
        .iter()
        .map(|t| t.status.since)
        .max()
        .unwrap_or(now)
        .after(REBALANCE_SETTLE);
    if now < settled_at {
        plan.wake(settled_at);
        return;
    }
    let Some(t) = running
        .iter()
        .filter(|t| t.node_id.as_ref() == Some(donor))
        .max_by_key(|t| (t.created_at, t.id.clone()))
    else {
        return;
    };
    tracing::info!(service = %service.spec.name, task_id = %t.id, from = %donor, "rebalancing: moving a task to a less loaded node");
    plan.ops.push(TaskOp::Create(Box::new(new_task(
        service,
        &SlotKey::Replica(t.slot),
        None,
        now,
        ids,
    ))));
}

/// How long a service runs unchanged before the rebalancer moves one of its tasks.
pub const REBALANCE_SETTLE: ApiDuration = ApiDuration::from_secs(2);

/// A service label that turns rebalancing off for it (`shoal.rebalance=false`).
pub const REBALANCE_LABEL: &str = "shoal.rebalance";

/// Replaces the ended occupant `dead` of `key` if the restart policy allows.
fn restart(
    service: &Service,
    key: &SlotKey,
    dead: &Task,
    history: &[&Task],
    now: Timestamp,
    ids: &mut dyn IdSource,
    plan: &mut Plan,
) {
    let policy = service.spec.task.restart_policy;
    let state = dead.status.state;
    let node_lost = state == TaskState::Orphaned;
    if !node_lost {
        let allowed = match policy.condition {
            RestartCondition::None => false,
            RestartCondition::OnFailure => state.is_failure() || state == TaskState::Shutdown,
            RestartCondition::Any => true,
        };
        if !allowed {
            return;
        }
        if policy.max_attempts > 0 {
            let window_start = if policy.window.is_zero() {
                Timestamp(0)
            } else {
                Timestamp(now.0.saturating_sub(policy.window.as_millis()))
            };
            let restarts = history
                .iter()
                .filter(|t| is_restart(t, history) && t.created_at >= window_start)
                .count() as u64;
            if restarts >= policy.max_attempts {
                return;
            }
        }
        let ready = dead.status.since.after(policy.delay);
        if now < ready {
            plan.wake(ready);
            return;
        }
    }
    stop(dead, &mut plan.ops);
    plan.ops.push(TaskOp::Create(Box::new(new_task(
        service,
        key,
        Some(dead),
        now,
        ids,
    ))));
}

/// True when `t` replaced an earlier task of the same spec in its slot (a restart, not an update).
fn is_restart(t: &Task, history: &[&Task]) -> bool {
    history
        .iter()
        .any(|h| h.created_at < t.created_at && h.spec == t.spec && h.status.state.is_terminal())
}

/// Deletes finished tasks beyond the history kept per slot.
fn reap(service: &Service, by_slot: &BTreeMap<SlotKey, Vec<&Task>>, plan: &mut Plan) {
    let keep = TASK_HISTORY.max(service.spec.task.restart_policy.max_attempts as usize + 1);
    for list in by_slot.values() {
        let dead: Vec<&&Task> = list
            .iter()
            .filter(|t| !t.wanted() && t.status.state.is_terminal())
            .collect();
        if dead.len() > keep {
            for t in &dead[..dead.len() - keep] {
                plan.ops.push(TaskOp::Delete { id: t.id.clone() });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api::node::*;
    use shoal_api::service::*;
    use shoal_api::units::Duration;
    use shoal_api::ServiceId;

    struct Counter(u128);
    impl IdSource for Counter {
        fn task_id(&mut self) -> TaskId {
            self.0 += 1;
            TaskId::from_bits(self.0)
        }
    }

    fn node(n: u128) -> Node {
        Node {
            id: NodeId::from_bits(n),
            version: 1,
            created_at: Timestamp(0),
            spec: NodeSpec::default(),
            description: NodeDescription {
                hostname: format!("h{n}"),
                ..Default::default()
            },
            status: NodeStatus {
                state: NodeState::Ready,
                ..Default::default()
            },
            manager_status: None,
            certificate: None,
        }
    }

    fn service(replicas: u64) -> Service {
        let mut spec = ServiceSpec {
            name: "web".into(),
            mode: ServiceMode::Replicated { replicas },
            ..Default::default()
        };
        spec.task.container.image = "img".into();
        spec.task.restart_policy.delay = Duration::from_secs(5);
        Service {
            id: ServiceId::from_bits(1),
            spec_version: 1,
            version: 1,
            created_at: Timestamp(0),
            updated_at: Timestamp(0),
            spec,
            previous_spec: None,
            update_status: None,
            removing: false,
            virtual_ips: Vec::new(),
            published_ports: Vec::new(),
        }
    }

    /// Applies a plan the way the store would, for multi-pass tests.
    fn apply(tasks: &mut Vec<Task>, plan: &Plan) {
        for op in &plan.ops {
            match op {
                TaskOp::Create(t) => tasks.push((**t).clone()),
                TaskOp::SetDesired { id, state } => tasks
                    .iter_mut()
                    .filter(|t| &t.id == id)
                    .for_each(|t| t.desired_state = *state),
                TaskOp::Delete { id } => tasks.retain(|t| &t.id != id),
                _ => {}
            }
        }
    }

    fn set_state(tasks: &mut [Task], pred: impl Fn(&Task) -> bool, state: TaskState, at: u64) {
        for t in tasks.iter_mut().filter(|t| pred(t)) {
            t.status = TaskStatus::new(state, Timestamp(at), "");
            if t.node_id.is_none() {
                t.node_id = Some(NodeId::from_bits(1));
            }
        }
    }

    fn run(s: &Service, tasks: &[Task], nodes: &[Node], now: u64, ids: &mut Counter) -> Plan {
        let refs: Vec<&Task> = tasks.iter().collect();
        reconcile(s, &refs, nodes, &Usage::default(), Timestamp(now), ids)
    }

    fn creates(p: &Plan) -> usize {
        p.ops
            .iter()
            .filter(|o| matches!(o, TaskOp::Create(_)))
            .count()
    }

    #[test]
    fn creates_one_task_per_slot_and_scales_down_from_the_top() {
        let mut ids = Counter(0);
        let nodes = [node(1)];
        let s = service(3);
        let mut tasks = Vec::new();
        let p = run(&s, &tasks, &nodes, 0, &mut ids);
        assert_eq!(creates(&p), 3);
        apply(&mut tasks, &p);
        assert!(
            run(&s, &tasks, &nodes, 1, &mut ids).ops.is_empty(),
            "converged"
        );
        let s1 = service(1);
        let p = run(&s1, &tasks, &nodes, 2, &mut ids);
        let stopped: Vec<u64> = p
            .ops
            .iter()
            .filter_map(|o| match o {
                TaskOp::Delete { id } => tasks.iter().find(|t| &t.id == id).map(|t| t.slot),
                _ => None,
            })
            .collect();
        assert_eq!(stopped, vec![2, 3]);
    }

    #[test]
    fn restart_waits_for_the_delay_and_stops_at_max_attempts() {
        let mut ids = Counter(0);
        let nodes = [node(1)];
        let mut s = service(1);
        s.spec.task.restart_policy = RestartPolicy {
            condition: RestartCondition::OnFailure,
            delay: Duration::from_secs(5),
            max_attempts: 2,
            window: Duration::default(),
        };
        let mut tasks = Vec::new();
        let p = run(&s, &tasks, &nodes, 0, &mut ids);
        apply(&mut tasks, &p);
        let mut now = 1_000;
        for attempt in 0..3 {
            set_state(
                &mut tasks,
                |t| t.wanted() && !t.status.state.is_terminal(),
                TaskState::Failed,
                now,
            );
            let early = run(&s, &tasks, &nodes, now + 1_000, &mut ids);
            if attempt < 2 {
                assert_eq!(creates(&early), 0, "too early");
                assert_eq!(early.wake_at, Some(Timestamp(now + 5_000)));
                let p = run(&s, &tasks, &nodes, now + 5_000, &mut ids);
                assert_eq!(creates(&p), 1, "attempt {attempt}");
                apply(&mut tasks, &p);
            } else {
                assert!(
                    early.ops.is_empty(),
                    "max_attempts reached: {:?}",
                    early.ops
                );
                assert_eq!(early.wake_at, None);
            }
            now += 10_000;
        }
    }

    #[test]
    fn restart_conditions_decide_which_ends_restart() {
        for (condition, ended, restarts) in [
            (RestartCondition::OnFailure, TaskState::Complete, false),
            (RestartCondition::OnFailure, TaskState::Failed, true),
            (RestartCondition::Any, TaskState::Complete, true),
            (RestartCondition::None, TaskState::Failed, false),
        ] {
            let mut ids = Counter(0);
            let nodes = [node(1)];
            let mut s = service(1);
            s.spec.task.restart_policy = RestartPolicy {
                condition,
                delay: Duration::default(),
                max_attempts: 0,
                window: Duration::default(),
            };
            let mut tasks = Vec::new();
            let p = run(&s, &tasks, &nodes, 0, &mut ids);
            apply(&mut tasks, &p);
            set_state(&mut tasks, |_| true, ended, 10);
            let p = run(&s, &tasks, &nodes, 20, &mut ids);
            assert_eq!(
                creates(&p) == 1,
                restarts,
                "{condition:?} after {ended}: {:?}",
                p.ops
            );
        }
    }

    #[test]
    fn orphaned_tasks_are_replaced_at_once_whatever_the_policy() {
        let mut ids = Counter(0);
        let nodes = [node(1)];
        let mut s = service(2);
        s.spec.task.restart_policy.condition = RestartCondition::None;
        let mut tasks = Vec::new();
        let p = run(&s, &tasks, &nodes, 0, &mut ids);
        apply(&mut tasks, &p);
        set_state(&mut tasks, |t| t.slot == 1, TaskState::Orphaned, 10);
        let p = run(&s, &tasks, &nodes, 10, &mut ids);
        assert_eq!(creates(&p), 1);
    }

    #[test]
    fn a_failed_update_task_pauses_rolls_back_or_is_ignored_per_failure_action() {
        for action in [
            FailureAction::Pause,
            FailureAction::Rollback,
            FailureAction::Continue,
        ] {
            let mut ids = Counter(0);
            let nodes = [node(1)];
            let mut s = service(3);
            let mut tasks = Vec::new();
            let p = run(&s, &tasks, &nodes, 0, &mut ids);
            apply(&mut tasks, &p);
            set_state(&mut tasks, |_| true, TaskState::Running, 1);
            s.previous_spec = Some(s.spec.clone());
            s.spec.task.container.image = "broken:2".into();
            s.spec.update_config.failure_action = action;
            s.spec.update_config.order = UpdateOrder::StartFirst;
            s.spec.update_config.monitor = Duration::from_secs(5);
            s.update_status = Some(UpdateStatus {
                state: UpdateState::Updating,
                started_at: Timestamp(100),
                completed_at: None,
                message: String::new(),
            });
            let p = run(&s, &tasks, &nodes, 100, &mut ids);
            assert_eq!(creates(&p), 1, "first batch");
            apply(&mut tasks, &p);
            set_state(&mut tasks, |t| !t.wanted(), TaskState::Shutdown, 101);
            // The new task dies 2 s after it was made: within `monitor`.
            set_state(
                &mut tasks,
                |t| t.spec.container.image == "broken:2",
                TaskState::Failed,
                2_100,
            );
            let p = run(&s, &tasks, &nodes, 2_100, &mut ids);
            let paused = p.ops.iter().find_map(|o| match o {
                TaskOp::UpdateStatus { status, .. } if status.state == UpdateState::Paused => {
                    Some(status.message.clone())
                }
                _ => None,
            });
            let rolled_back = p
                .ops
                .iter()
                .any(|o| matches!(o, TaskOp::Rollback { message, .. } if message.starts_with("update rolled back due to failure")));
            // New tasks for the slots still on the old spec (the failed slot's restart aside).
            let outdated_replaced = p
                .ops
                .iter()
                .filter(|o| matches!(o, TaskOp::Create(t) if t.slot != 1))
                .count();
            match action {
                FailureAction::Pause => {
                    let m = paused.expect("paused");
                    assert!(
                        m.starts_with("update paused due to failure or early termination of task"),
                        "{m}"
                    );
                    assert_eq!(outdated_replaced, 0, "nothing more replaced: {:?}", p.ops);
                }
                FailureAction::Rollback => {
                    assert!(rolled_back, "{:?}", p.ops);
                    assert_eq!(p.ops.len(), 1, "only the rollback: {:?}", p.ops);
                }
                FailureAction::Continue => {
                    assert!(paused.is_none() && !rolled_back, "{:?}", p.ops);
                    assert!(outdated_replaced >= 1, "the update goes on: {:?}", p.ops);
                }
            }
        }
    }

    #[test]
    fn a_rollback_uses_rollback_config_and_ends_rolled_back() {
        let mut ids = Counter(0);
        let nodes = [node(1)];
        let mut s = service(2);
        let mut tasks = Vec::new();
        let p = run(&s, &tasks, &nodes, 0, &mut ids);
        apply(&mut tasks, &p);
        set_state(&mut tasks, |_| true, TaskState::Running, 1);
        // The spec went back to what the tasks run... except the tasks run "img:2".
        for t in &mut tasks {
            t.spec.container.image = "img:2".into();
        }
        s.spec.rollback_config.parallelism = 0;
        s.spec.rollback_config.order = UpdateOrder::StartFirst;
        s.update_status = Some(UpdateStatus {
            state: UpdateState::RollbackStarted,
            started_at: Timestamp(100),
            completed_at: None,
            message: "update rolled back due to failure or early termination of task x".into(),
        });
        let p = run(&s, &tasks, &nodes, 100, &mut ids);
        assert_eq!(creates(&p), 2, "parallelism 0: all at once");
        apply(&mut tasks, &p);
        set_state(&mut tasks, |t| !t.wanted(), TaskState::Shutdown, 101);
        set_state(&mut tasks, |t| t.wanted(), TaskState::Running, 102);
        let p = run(&s, &tasks, &nodes, 103, &mut ids);
        let done = p.ops.iter().find_map(|o| match o {
            TaskOp::UpdateStatus { status, .. } => Some(status.clone()),
            _ => None,
        });
        let done = done.expect("status");
        assert_eq!(done.state, UpdateState::RollbackCompleted);
        assert!(
            done.message.starts_with("update rolled back due to"),
            "{}",
            done.message
        );
    }

    #[test]
    fn rolling_update_goes_in_batches_with_delay() {
        let mut ids = Counter(0);
        let nodes = [node(1)];
        let mut s = service(4);
        let mut tasks = Vec::new();
        let p = run(&s, &tasks, &nodes, 0, &mut ids);
        apply(&mut tasks, &p);
        set_state(&mut tasks, |_| true, TaskState::Running, 1);
        s.spec.task.container.image = "img:2".into();
        s.spec.update_config.parallelism = 2;
        s.spec.update_config.delay = Duration::from_secs(10);
        s.update_status = Some(UpdateStatus {
            state: UpdateState::Updating,
            started_at: Timestamp(100),
            completed_at: None,
            message: String::new(),
        });
        let p = run(&s, &tasks, &nodes, 100, &mut ids);
        assert_eq!(
            creates(&p),
            0,
            "stop-first: the first batch stops before anything starts"
        );
        assert_eq!(stops(&p).len(), 2, "first batch");
        apply(&mut tasks, &p);
        // Nothing more while the batch is stopping; its replacements once it stopped.
        assert!(run(&s, &tasks, &nodes, 101, &mut ids).ops.is_empty());
        set_state(&mut tasks, |t| !t.wanted(), TaskState::Shutdown, 102);
        let p = run(&s, &tasks, &nodes, 102, &mut ids);
        assert_eq!(creates(&p), 2, "first batch's replacements");
        apply(&mut tasks, &p);
        set_state(
            &mut tasks,
            |t| t.wanted() && t.spec.container.image == "img:2",
            TaskState::Running,
            200,
        );
        let p = run(&s, &tasks, &nodes, 205, &mut ids);
        assert_eq!(creates(&p), 0, "delay not over");
        assert!(stops(&p).is_empty(), "delay not over: {:?}", p.ops);
        assert_eq!(p.wake_at, Some(Timestamp(10_200)));
        let p = run(&s, &tasks, &nodes, 10_200, &mut ids);
        assert_eq!(stops(&p).len(), 2, "second batch");
        apply(&mut tasks, &p);
        set_state(&mut tasks, |t| !t.wanted(), TaskState::Shutdown, 10_250);
        let p = run(&s, &tasks, &nodes, 10_250, &mut ids);
        assert_eq!(creates(&p), 2, "second batch's replacements");
        apply(&mut tasks, &p);
        set_state(
            &mut tasks,
            |t| t.wanted() && t.status.state < TaskState::Running,
            TaskState::Running,
            10_300,
        );
        let p = run(&s, &tasks, &nodes, 10_400, &mut ids);
        assert!(p.ops.iter().any(|o| matches!(o, TaskOp::UpdateStatus { status, .. } if status.state == UpdateState::Completed)), "{:?}", p.ops);
    }

    #[test]
    fn start_first_stops_the_old_task_once_the_new_one_runs() {
        let mut ids = Counter(0);
        let nodes = [node(1)];
        let mut s = service(1);
        let mut tasks = Vec::new();
        let p = run(&s, &tasks, &nodes, 0, &mut ids);
        apply(&mut tasks, &p);
        set_state(&mut tasks, |_| true, TaskState::Running, 1);
        s.spec.task.container.image = "img:2".into();
        s.spec.update_config.order = UpdateOrder::StartFirst;
        s.update_status = Some(UpdateStatus {
            state: UpdateState::Updating,
            started_at: Timestamp(5),
            completed_at: None,
            message: String::new(),
        });
        let p = run(&s, &tasks, &nodes, 5, &mut ids);
        assert_eq!(creates(&p), 1);
        assert!(
            !p.ops.iter().any(|o| matches!(o, TaskOp::SetDesired { .. })),
            "old keeps running"
        );
        apply(&mut tasks, &p);
        set_state(
            &mut tasks,
            |t| t.spec.container.image == "img:2",
            TaskState::Running,
            6,
        );
        let p = run(&s, &tasks, &nodes, 7, &mut ids);
        assert!(p.ops.iter().any(|o| matches!(
            o,
            TaskOp::SetDesired {
                state: TaskState::Shutdown,
                ..
            }
        )));
    }

    fn stops(p: &Plan) -> Vec<TaskId> {
        p.ops
            .iter()
            .filter_map(|o| match o {
                TaskOp::SetDesired {
                    id,
                    state: TaskState::Shutdown,
                } => Some(id.clone()),
                _ => None,
            })
            .collect()
    }

    /// Places the unplaced tasks on `node` and marks them running at `at`.
    fn place(tasks: &mut [Task], node: u128, at: u64) {
        for t in tasks.iter_mut().filter(|t| t.node_id.is_none()) {
            t.node_id = Some(NodeId::from_bits(node));
            t.status = TaskStatus::new(TaskState::Running, Timestamp(at), "");
        }
    }

    #[test]
    fn drain_starts_the_replacement_before_stopping_the_old_task() {
        let mut ids = Counter(0);
        let mut nodes = vec![node(1), node(2)];
        let s = service(1);
        let mut tasks = Vec::new();
        let p = run(&s, &tasks, &nodes, 0, &mut ids);
        apply(&mut tasks, &p);
        place(&mut tasks, 1, 1);
        nodes[0].spec.availability = Availability::Drain;
        let p = run(&s, &tasks, &nodes, 2, &mut ids);
        assert_eq!(creates(&p), 1, "a replacement");
        assert!(stops(&p).is_empty(), "the old task keeps running meanwhile");
        apply(&mut tasks, &p);
        assert!(stops(&run(&s, &tasks, &nodes, 3, &mut ids)).is_empty());
        // The replacement runs on node 2: the drained task stops, nothing new is created.
        place(&mut tasks, 2, 4);
        let p = run(&s, &tasks, &nodes, 5, &mut ids);
        assert_eq!(stops(&p), vec![tasks[0].id.clone()]);
        assert_eq!(creates(&p), 0);
    }

    #[test]
    fn a_returning_node_gets_tasks_back_one_move_at_a_time() {
        let mut ids = Counter(0);
        let mut nodes = vec![node(1), node(2)];
        nodes[1].status.state = NodeState::Down;
        let s = service(4);
        let mut tasks = Vec::new();
        let p = run(&s, &tasks, &nodes, 0, &mut ids);
        apply(&mut tasks, &p);
        place(&mut tasks, 1, 1_000);
        nodes[1].status.state = NodeState::Ready;
        // Settling first: nothing moves within REBALANCE_SETTLE of the last start.
        let p = run(&s, &tasks, &nodes, 1_500, &mut ids);
        assert_eq!(creates(&p), 0);
        assert_eq!(p.wake_at, Some(Timestamp(3_000)));
        let usage = Usage::default();
        let refs: Vec<&Task> = tasks.iter().collect();
        let p = reconcile(&s, &refs, &nodes, &usage, Timestamp(3_000), &mut ids);
        assert_eq!(creates(&p), 1, "one move");
        apply(&mut tasks, &p);
        // While it is under way, no other move and no stop.
        let p = run(&s, &tasks, &nodes, 3_100, &mut ids);
        assert!(p.ops.is_empty(), "{:?}", p.ops);
        place(&mut tasks, 2, 3_200);
        let p = run(&s, &tasks, &nodes, 3_300, &mut ids);
        assert_eq!(stops(&p).len(), 1, "the moved task's old copy stops");
        apply(&mut tasks, &p);
        set_state(&mut tasks, |t| !t.wanted(), TaskState::Shutdown, 3_300);
        // 3 and 1: one more move after settling, then 2 and 2 is balanced.
        let p = run(&s, &tasks, &nodes, 5_300, &mut ids);
        assert_eq!(creates(&p), 1);
        apply(&mut tasks, &p);
        place(&mut tasks, 2, 5_400);
        let p = run(&s, &tasks, &nodes, 5_500, &mut ids);
        apply(&mut tasks, &p);
        set_state(&mut tasks, |t| !t.wanted(), TaskState::Shutdown, 5_500);
        assert!(run(&s, &tasks, &nodes, 60_000, &mut ids).ops.is_empty());
        let on2 = tasks
            .iter()
            .filter(|t| t.wanted() && t.node_id == Some(NodeId::from_bits(2)))
            .count();
        assert_eq!(on2, 2);
    }

    #[test]
    fn global_services_follow_eligible_nodes() {
        let mut ids = Counter(0);
        let mut nodes = vec![node(1), node(2), node(3)];
        nodes[1].spec.labels.insert("disk".into(), "ssd".into());
        nodes[2].spec.availability = Availability::Drain;
        let mut s = service(0);
        s.spec.mode = ServiceMode::Global;
        let mut tasks = Vec::new();
        let p = run(&s, &tasks, &nodes, 0, &mut ids);
        assert_eq!(creates(&p), 2);
        apply(&mut tasks, &p);
        s.spec.task.placement.constraints = vec!["node.labels.disk==ssd".into()];
        // Node 1 lacks the label: its task goes. Node 2's task is replaced (the template
        // changed).
        let p = run(&s, &tasks, &nodes, 1, &mut ids);
        let on_node1 = tasks
            .iter()
            .find(|t| t.node_id == Some(NodeId::from_bits(1)))
            .unwrap()
            .id
            .clone();
        assert!(p.ops.contains(&TaskOp::Delete { id: on_node1 }));
        // Stop-first: node 2's old task goes first, its replacement comes after.
        assert_eq!(creates(&p), 0, "{:?}", p.ops);
        apply(&mut tasks, &p);
        set_state(&mut tasks, |t| !t.wanted(), TaskState::Shutdown, 2);
        let p = run(&s, &tasks, &nodes, 2, &mut ids);
        let created: Vec<_> = p
            .ops
            .iter()
            .filter_map(|o| match o {
                TaskOp::Create(t) => t.node_id.clone(),
                _ => None,
            })
            .collect();
        assert_eq!(created, vec![NodeId::from_bits(2)]);
    }

    #[test]
    fn removal_shuts_down_then_deletes_the_service() {
        let mut ids = Counter(0);
        let nodes = [node(1)];
        let mut s = service(2);
        let mut tasks = Vec::new();
        let p = run(&s, &tasks, &nodes, 0, &mut ids);
        apply(&mut tasks, &p);
        set_state(&mut tasks, |_| true, TaskState::Running, 1);
        s.removing = true;
        let p = run(&s, &tasks, &nodes, 2, &mut ids);
        assert_eq!(
            p.ops
                .iter()
                .filter(|o| matches!(o, TaskOp::SetDesired { .. }))
                .count(),
            2
        );
        apply(&mut tasks, &p);
        set_state(&mut tasks, |_| true, TaskState::Shutdown, 3);
        let p = run(&s, &tasks, &nodes, 4, &mut ids);
        assert!(p
            .ops
            .iter()
            .any(|o| matches!(o, TaskOp::DeleteService { .. })));
    }

    #[test]
    fn history_is_reaped() {
        let mut ids = Counter(0);
        let nodes = [node(1)];
        let mut s = service(1);
        s.spec.task.restart_policy.delay = Duration::default();
        let mut tasks = Vec::new();
        let p = run(&s, &tasks, &nodes, 0, &mut ids);
        apply(&mut tasks, &p);
        for i in 0..8 {
            set_state(
                &mut tasks,
                |t| t.wanted() && !t.status.state.is_terminal(),
                TaskState::Failed,
                10 + i,
            );
            let p = run(&s, &tasks, &nodes, 10 + i, &mut ids);
            apply(&mut tasks, &p);
        }
        // The kept history, plus the task stopped in the last pass and the running one.
        assert!(tasks.len() <= TASK_HISTORY + 2, "{}", tasks.len());
    }
}
