//! The scheduler: places new tasks on nodes. [`schedule`] is pure: it takes the tasks waiting
//! for a node, every node, and the tasks already placed, and returns a decision per task.
//!
//! Each node goes through a pipeline of filters (ready and active; placement constraints;
//! resource reservations; `max_replicas_per_node`). Among the nodes that pass, the placement
//! preferences (`spread: node.labels.X`, then the next, ...) pick, in order, the group of nodes
//! with the fewest tasks of the service (hierarchically, as Swarm: the second preference spreads
//! within the first's groups); then the node with the fewest tasks of the service, then the
//! fewest tasks in all: new and restarted tasks go to the least-loaded nodes, which is how a node
//! that joins or returns gets work without `service update --force`. When no node passes, the
//! task stays pending with the reason each filter gave, which `service ps` shows.
//!
//! Cost: one pass over the nodes per task, with loads kept in vectors indexed by node and the
//! per-service counts built once per service, so 30,000 tasks over 1,000 nodes take well under a
//! second (`shoal-bench scale`).

use shoal_api::constraint::Constraint;
use shoal_api::node::{Availability, Node, NodeState};
use shoal_api::task::{Task, TaskState};
use shoal_api::{NodeId, ServiceId, TaskId};
use std::collections::{BTreeMap, HashMap};

/// Where a task goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Onto this node.
    Assign(NodeId),
    /// Nowhere yet, for this reason.
    Pending(String),
}

/// Load on one node as the scheduler counts it.
#[derive(Debug, Default, Clone, Copy)]
struct Load {
    total: u64,
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
    of_service: u64,
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
    if max > 0 && of_service >= max {
        return Err(Refusal::MaxReplicas);
    }
    Ok(())
}

/// True for a task the scheduler must place.
pub fn needs_placement(t: &Task) -> bool {
    t.wanted() && t.status.state <= TaskState::Pending
}

/// The value a spread preference reads off a node (empty when the node lacks the label: such
/// nodes form a group of their own, as in Swarm).
fn spread_value<'a>(descriptor: &str, node: &'a Node) -> &'a str {
    let found = if let Some(l) = descriptor.strip_prefix("node.labels.") {
        node.spec.labels.get(l)
    } else if let Some(l) = descriptor.strip_prefix("engine.labels.") {
        node.description.engine_labels.get(l)
    } else {
        None
    };
    found.map_or("", String::as_str)
}

/// What the scheduler keeps per service while it places a batch: its parsed constraints, its
/// task count per node, and per preference depth the count per group of nodes.
struct ServiceView {
    constraints: Vec<Constraint>,
    per_node: Vec<u64>,
    /// For each node, its group at each preference depth (an index into `group_count`).
    group_of: Vec<Vec<usize>>,
    group_count: Vec<u64>,
}

impl ServiceView {
    fn new(task: &Task, nodes: &[Node], per_node: Vec<u64>) -> ServiceView {
        let constraints =
            Constraint::parse_all(&task.spec.placement.constraints).unwrap_or_default();
        let prefs = &task.spec.placement.preferences;
        let mut groups: HashMap<Vec<&str>, usize> = HashMap::new();
        let mut group_of = vec![Vec::with_capacity(prefs.len()); nodes.len()];
        for (i, n) in nodes.iter().enumerate() {
            let mut path: Vec<&str> = Vec::with_capacity(prefs.len());
            for p in prefs {
                path.push(spread_value(&p.spread, n));
                let next = groups.len();
                group_of[i].push(*groups.entry(path.clone()).or_insert(next));
            }
        }
        let mut group_count = vec![0; groups.len()];
        for (i, g) in group_of.iter().enumerate() {
            for &g in g {
                group_count[g] += per_node[i];
            }
        }
        ServiceView {
            constraints,
            per_node,
            group_of,
            group_count,
        }
    }

    fn count(&mut self, node: usize) {
        self.per_node[node] += 1;
        for &g in &self.group_of[node] {
            self.group_count[g] += 1;
        }
    }
}

/// How a node ranks for a task, lowest first: the service's tasks in the node's group at each
/// preference depth, then on the node, then all tasks on the node.
type Rank = (Vec<u64>, u64, u64);

/// Decides where each waiting task goes. `placed` are tasks that hold a node (counted as load).
pub fn schedule(waiting: &[&Task], nodes: &[Node], placed: &[&Task]) -> Vec<(TaskId, Decision)> {
    let index: HashMap<&NodeId, usize> =
        nodes.iter().enumerate().map(|(i, n)| (&n.id, i)).collect();
    let mut loads = vec![Load::default(); nodes.len()];
    let mut placed_by_service: HashMap<&ServiceId, Vec<usize>> = HashMap::new();
    for t in placed {
        let Some(&i) = t.node_id.as_ref().and_then(|n| index.get(n)) else {
            continue;
        };
        let load = &mut loads[i];
        load.total += 1;
        load.nano_cpus += t.spec.resources.reservations.nano_cpus;
        load.memory += t.spec.resources.reservations.memory_bytes;
        placed_by_service.entry(&t.service_id).or_default().push(i);
    }
    // Per service, a view per spec version: versions differ in constraints and preferences,
    // and all of them count the service's tasks placed so far, this batch's included.
    let mut views: HashMap<ServiceId, HashMap<u64, ServiceView>> = HashMap::new();
    let mut order: Vec<&&Task> = waiting.iter().collect();
    order.sort_by_key(|t| (t.created_at, t.slot, t.id.clone()));
    let mut out = Vec::with_capacity(order.len());
    for task in order {
        let versions = views.entry(task.service_id.clone()).or_default();
        if !versions.contains_key(&task.spec_version) {
            let per_node = match versions.values().next() {
                Some(sibling) => sibling.per_node.clone(),
                None => {
                    let mut per_node = vec![0; nodes.len()];
                    for &i in placed_by_service
                        .get(&task.service_id)
                        .into_iter()
                        .flatten()
                    {
                        per_node[i] += 1;
                    }
                    per_node
                }
            };
            versions.insert(task.spec_version, ServiceView::new(task, nodes, per_node));
        }
        let view = &versions[&task.spec_version];
        // Global tasks come with their node.
        let only = task.node_id.as_ref().map(|n| index.get(n).copied());
        let mut refusals: BTreeMap<Refusal, usize> = BTreeMap::new();
        let mut best: Option<(usize, Rank)> = None;
        for (i, n) in nodes.iter().enumerate() {
            if only.is_some_and(|o| o != Some(i)) {
                continue;
            }
            if let Err(r) = filter(task, &view.constraints, n, &loads[i], view.per_node[i]) {
                *refusals.entry(r).or_default() += 1;
                continue;
            }
            let key = (
                view.group_of[i]
                    .iter()
                    .map(|&g| view.group_count[g])
                    .collect(),
                view.per_node[i],
                loads[i].total,
            );
            let better = match &best {
                None => true,
                Some((b, k)) => key < *k || (key == *k && n.id < nodes[*b].id),
            };
            if better {
                best = Some((i, key));
            }
        }
        let Some((i, _)) = best else {
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
        };
        let load = &mut loads[i];
        load.total += 1;
        load.nano_cpus += task.spec.resources.reservations.nano_cpus;
        load.memory += task.spec.resources.reservations.memory_bytes;
        // Every spec version of the service sees this task.
        for v in views
            .get_mut(&task.service_id)
            .into_iter()
            .flat_map(|v| v.values_mut())
        {
            v.count(i);
        }
        out.push((task.id.clone(), Decision::Assign(nodes[i].id.clone())));
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
            certificate: None,
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
            networks: Vec::new(),
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
    fn every_spread_preference_applies_in_order() {
        // zone a: racks 1 and 2 (two nodes on rack 1); zone b: one node.
        let labelled = |n: u128, zone: &str, rack: &str| {
            node(n, |n| {
                n.spec.labels.insert("zone".into(), zone.into());
                n.spec.labels.insert("rack".into(), rack.into());
            })
        };
        let nodes = [
            labelled(1, "a", "1"),
            labelled(2, "a", "1"),
            labelled(3, "a", "2"),
            labelled(4, "b", "3"),
        ];
        let ts: Vec<Task> = (1..=4)
            .map(|i| {
                task(i, 1, |s| {
                    s.placement.preferences = ["node.labels.zone", "node.labels.rack"]
                        .map(|p| shoal_api::service::PlacementPreference { spread: p.into() })
                        .to_vec()
                })
            })
            .collect();
        let d = schedule(&ts.iter().collect::<Vec<_>>(), &nodes, &[]);
        let on = |n| {
            d.iter()
                .filter(|(_, x)| *x == Decision::Assign(NodeId::from_bits(n)))
                .count()
        };
        // Zone b gets 2 of 4; within zone a, rack 2 gets one and rack 1 one.
        assert_eq!(on(4), 2, "{:?}", placements(&d));
        assert_eq!(on(3), 1, "{:?}", placements(&d));
        assert_eq!(on(1) + on(2), 1, "{:?}", placements(&d));
    }

    #[test]
    fn spec_versions_of_one_service_count_each_other() {
        // A task of the old spec and one of the new, in one batch, one per node at most: the
        // second sees the first.
        let nodes = [node(1, |_| {})];
        let a = task(1, 1, |s| s.placement.max_replicas_per_node = 1);
        let mut b = task(2, 1, |s| {
            s.placement.max_replicas_per_node = 1;
            s.container.image = "new".into();
        });
        b.spec_version = 2;
        let d = schedule(&[&a, &b], &nodes, &[]);
        assert_eq!(
            placements(&d)[1],
            "no suitable node (max replicas per node reached on 1 node)"
        );
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
