//! The scheduler: places new tasks on nodes. [`schedule`] is pure: it takes the tasks waiting
//! for a node, every node, and the tasks already placed, and returns a decision per task.
//!
//! Each node goes through a pipeline of filters (ready and active; placement constraints;
//! resource reservations; `max_replicas_per_node`). Among the nodes that pass, the first
//! placement preference (`spread: node.labels.X`) picks the label value with the fewest tasks
//! of the service, then the node with the fewest tasks of the service, then the fewest tasks in
//! all. When no node passes, the task stays pending with the reason each filter gave, which
//! `service ps` shows.

use shoal_api::constraint::Constraint;
use shoal_api::node::{Availability, Node, NodeState};
use shoal_api::task::{Task, TaskState};
use shoal_api::{NodeId, ServiceId, TaskId};
use std::collections::BTreeMap;

/// Where a task goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Onto this node.
    Assign(NodeId),
    /// Nowhere yet, for this reason.
    Pending(String),
}

/// Load on one node as the scheduler counts it.
#[derive(Debug, Default, Clone)]
struct Load {
    total: u64,
    per_service: BTreeMap<ServiceId, u64>,
    nano_cpus: u64,
    memory: u64,
}

/// Why one filter refused a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Refusal {
    NotReady,
    NotActive,
    Constraint,
    Cpu,
    Memory,
    MaxReplicas,
}

impl Refusal {
    fn describe(self) -> &'static str {
        match self {
            Refusal::NotReady => "not ready",
            Refusal::NotActive => "not active (paused or drained)",
            Refusal::Constraint => "scheduling constraints not satisfied",
            Refusal::Cpu => "insufficient CPU",
            Refusal::Memory => "insufficient memory",
            Refusal::MaxReplicas => "max replicas per node reached",
        }
    }
}

fn filter(
    task: &Task,
    constraints: &[Constraint],
    node: &Node,
    load: &Load,
) -> Result<(), Refusal> {
    if node.status.state != NodeState::Ready {
        return Err(Refusal::NotReady);
    }
    if node.spec.availability != Availability::Active {
        return Err(Refusal::NotActive);
    }
    if !constraints.iter().all(|c| c.matches(node)) {
        return Err(Refusal::Constraint);
    }
    let want = task.spec.resources.reservations;
    let have = node.description.resources;
    if want.nano_cpus > 0 && load.nano_cpus + want.nano_cpus > have.nano_cpus {
        return Err(Refusal::Cpu);
    }
    if want.memory_bytes > 0 && load.memory + want.memory_bytes > have.memory_bytes {
        return Err(Refusal::Memory);
    }
    let max = task.spec.placement.max_replicas_per_node;
    if max > 0 && load.per_service.get(&task.service_id).copied().unwrap_or(0) >= max {
        return Err(Refusal::MaxReplicas);
    }
    Ok(())
}

/// True for a task the scheduler must place.
pub fn needs_placement(t: &Task) -> bool {
    t.wanted() && t.status.state <= TaskState::Pending
}

/// Decides where each waiting task goes. `placed` are tasks that hold a node (counted as load).
pub fn schedule(waiting: &[&Task], nodes: &[Node], placed: &[&Task]) -> Vec<(TaskId, Decision)> {
    let mut loads: BTreeMap<NodeId, Load> = nodes
        .iter()
        .map(|n| (n.id.clone(), Load::default()))
        .collect();
    let count = |load: &mut Load, t: &Task| {
        load.total += 1;
        *load.per_service.entry(t.service_id.clone()).or_default() += 1;
        load.nano_cpus += t.spec.resources.reservations.nano_cpus;
        load.memory += t.spec.resources.reservations.memory_bytes;
    };
    for t in placed {
        if let Some(load) = t.node_id.as_ref().and_then(|n| loads.get_mut(n)) {
            count(load, t);
        }
    }
    let mut order: Vec<&&Task> = waiting.iter().collect();
    order.sort_by_key(|t| (t.created_at, t.slot, t.id.clone()));
    let mut out = Vec::with_capacity(order.len());
    for task in order {
        let constraints =
            Constraint::parse_all(&task.spec.placement.constraints).unwrap_or_default();
        let candidates: Vec<&Node> = match &task.node_id {
            // Global tasks come with their node.
            Some(n) => nodes.iter().filter(|node| &node.id == n).collect(),
            None => nodes.iter().collect(),
        };
        let mut refusals: BTreeMap<Refusal, usize> = BTreeMap::new();
        let fit: Vec<&Node> = candidates
            .into_iter()
            .filter(|n| match filter(task, &constraints, n, &loads[&n.id]) {
                Ok(()) => true,
                Err(r) => {
                    *refusals.entry(r).or_default() += 1;
                    false
                }
            })
            .collect();
        if fit.is_empty() {
            let reasons: Vec<String> = refusals
                .iter()
                .map(|(r, n)| {
                    format!(
                        "{} on {n} node{}",
                        r.describe(),
                        if *n == 1 { "" } else { "s" }
                    )
                })
                .collect();
            let reason = if reasons.is_empty() {
                "no suitable node (no nodes)".to_owned()
            } else {
                format!("no suitable node ({})", reasons.join("; "))
            };
            out.push((task.id.clone(), Decision::Pending(reason)));
            continue;
        }
        let of_service = |n: &Node| {
            loads[&n.id]
                .per_service
                .get(&task.service_id)
                .copied()
                .unwrap_or(0)
        };
        let group_pref = task
            .spec
            .placement
            .preferences
            .first()
            .and_then(|p| p.spread.strip_prefix("node.labels."))
            .map(str::to_owned);
        let group_of = |n: &Node| {
            group_pref
                .as_ref()
                .map(|l| n.spec.labels.get(l).cloned().unwrap_or_default())
        };
        let mut group_load: BTreeMap<Option<String>, u64> = BTreeMap::new();
        if group_pref.is_some() {
            for n in &fit {
                *group_load.entry(group_of(n)).or_default() += of_service(n);
            }
        }
        let best = fit
            .iter()
            .min_by_key(|n| {
                (
                    group_load.get(&group_of(n)).copied().unwrap_or(0),
                    of_service(n),
                    loads[&n.id].total,
                    n.id.clone(),
                )
            })
            .expect("fit is not empty");
        count(loads.get_mut(&best.id).expect("node has a load"), task);
        out.push((task.id.clone(), Decision::Assign(best.id.clone())));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api::node::*;
    use shoal_api::service::TaskTemplate;
    use shoal_api::task::TaskStatus;
    use shoal_api::units::Timestamp;

    fn node(n: u128, f: impl FnOnce(&mut Node)) -> Node {
        let mut node = Node {
            id: NodeId::from_bits(n),
            version: 1,
            created_at: Timestamp(0),
            spec: NodeSpec::default(),
            description: NodeDescription {
                hostname: format!("h{n}"),
                resources: NodeResources {
                    nano_cpus: 2_000_000_000,
                    memory_bytes: 1 << 30,
                },
                ..Default::default()
            },
            status: NodeStatus {
                state: NodeState::Ready,
                ..Default::default()
            },
            manager_status: None,
        };
        f(&mut node);
        node
    }

    fn task(n: u128, service: u128, f: impl FnOnce(&mut TaskTemplate)) -> Task {
        let mut spec = TaskTemplate::default();
        f(&mut spec);
        Task {
            id: TaskId::from_bits(n),
            version: 1,
            service_id: ServiceId::from_bits(service),
            service_name: "s".into(),
            slot: n as u64,
            node_id: None,
            spec_version: 1,
            spec,
            desired_state: TaskState::Running,
            status: TaskStatus::new(TaskState::New, Timestamp(n as u64), ""),
            created_at: Timestamp(n as u64),
        }
    }

    fn placements(d: &[(TaskId, Decision)]) -> Vec<String> {
        d.iter()
            .map(|(_, d)| match d {
                Decision::Assign(n) => n.to_string(),
                Decision::Pending(r) => r.clone(),
            })
            .collect()
    }

    #[test]
    fn spreads_the_service_then_the_load() {
        let nodes = [node(1, |_| {}), node(2, |_| {})];
        let busy: Vec<Task> = (10..13)
            .map(|i| {
                let mut t = task(i, 9, |_| {});
                t.node_id = Some(NodeId::from_bits(1));
                t
            })
            .collect();
        let waiting: Vec<Task> = (1..=4).map(|i| task(i, 1, |_| {})).collect();
        let d = schedule(
            &waiting.iter().collect::<Vec<_>>(),
            &nodes,
            &busy.iter().collect::<Vec<_>>(),
        );
        let on = |n| {
            d.iter()
                .filter(|(_, x)| *x == Decision::Assign(NodeId::from_bits(n)))
                .count()
        };
        assert_eq!((on(1), on(2)), (2, 2), "{:?}", placements(&d));
        assert_eq!(
            d[0].1,
            Decision::Assign(NodeId::from_bits(2)),
            "the idle node goes first"
        );
    }

    #[test]
    fn filters_explain_why_nothing_fits() {
        let nodes = [
            node(1, |n| n.status.state = NodeState::Down),
            node(2, |n| n.spec.availability = Availability::Drain),
            node(3, |n| n.spec.role = NodeRole::Worker),
        ];
        let t = task(1, 1, |s| {
            s.placement.constraints = vec!["node.role==manager".into()]
        });
        let d = schedule(&[&t], &nodes, &[]);
        assert_eq!(
            placements(&d),
            vec!["no suitable node (not ready on 1 node; not active (paused or drained) on 1 node; scheduling constraints not satisfied on 1 node)"]
        );
    }

    #[test]
    fn reservations_and_max_per_node_limit_placement() {
        let nodes = [node(1, |_| {})];
        let big: Vec<Task> = (1..=3)
            .map(|i| task(i, 1, |s| s.resources.reservations.memory_bytes = 400 << 20))
            .collect();
        let d = schedule(&big.iter().collect::<Vec<_>>(), &nodes, &[]);
        assert!(matches!(d[1].1, Decision::Assign(_)));
        assert_eq!(
            placements(&d)[2],
            "no suitable node (insufficient memory on 1 node)"
        );
        let capped: Vec<Task> = (1..=2)
            .map(|i| task(i, 2, |s| s.placement.max_replicas_per_node = 1))
            .collect();
        let d = schedule(&capped.iter().collect::<Vec<_>>(), &nodes, &[]);
        assert_eq!(
            placements(&d)[1],
            "no suitable node (max replicas per node reached on 1 node)"
        );
    }

    #[test]
    fn spread_preference_balances_label_values() {
        let nodes = [
            node(1, |n| {
                n.spec.labels.insert("zone".into(), "a".into());
            }),
            node(2, |n| {
                n.spec.labels.insert("zone".into(), "a".into());
            }),
            node(3, |n| {
                n.spec.labels.insert("zone".into(), "b".into());
            }),
        ];
        let ts: Vec<Task> = (1..=4)
            .map(|i| {
                task(i, 1, |s| {
                    s.placement.preferences = vec![shoal_api::service::PlacementPreference {
                        spread: "node.labels.zone".into(),
                    }]
                })
            })
            .collect();
        let d = schedule(&ts.iter().collect::<Vec<_>>(), &nodes, &[]);
        let on3 = d
            .iter()
            .filter(|(_, x)| *x == Decision::Assign(NodeId::from_bits(3)))
            .count();
        assert_eq!(on3, 2, "zone b gets half: {:?}", placements(&d));
    }

    #[test]
    fn global_tasks_stay_on_their_node() {
        let nodes = [
            node(1, |_| {}),
            node(2, |n| n.spec.availability = Availability::Pause),
        ];
        let mut t = task(1, 1, |_| {});
        t.node_id = Some(NodeId::from_bits(2));
        let d = schedule(&[&t], &nodes, &[]);
        assert!(matches!(&d[0].1, Decision::Pending(r) if r.contains("not active")));
    }
}
