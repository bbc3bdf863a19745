//! Published ports and the host's gateway bridge, in the host's own namespace.
//!
//! Containers on a network that is not `internal` get one more interface, on the host's
//! gateway bridge ([`GW_BRIDGE`], [`GW_SUBNET`], addresses given out by the host), with their
//! default route through it: that is how they reach outside (masqueraded to the host's
//! address) and how the host reaches them for published ports. The gateway bridge forwards
//! nothing between containers (their ports on it are isolated): they meet only on their
//! overlay networks.
//!
//! Published ports ([`ruleset`]):
//! - `mode: host`: the hosts running a task answer, and send the connection to one of their
//!   own tasks. The task sees the client's address.
//! - `mode: ingress` (the routing mesh): every host answers, and spreads connections over all
//!   the service's running tasks. A connection served by a task on the host that took it keeps
//!   the client's address; one sent on to another host is masqueraded to this host's address
//!   (as Swarm does for every connection), and marked so the other host serves it with a task
//!   of its own instead of spreading it again.

use crate::nft::{self, Action, Chain, ChainKind, Hook, HookPoint, Match, Proto, Rule, Set, Table};
use crate::NetError;
use shoal_api::network::PortPlan;
use shoal_api::TaskId;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// The host's gateway bridge.
pub const GW_BRIDGE: &str = "shgw0";

/// The gateway bridge's subnet (host-local: every host uses the same).
pub const GW_SUBNET: (Ipv4Addr, u8) = (Ipv4Addr::new(172, 30, 0, 0), 16);

/// The gateway bridge's own address: the containers' default gateway.
pub const GW_ADDR: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 1);

/// Packet mark of connections the routing mesh sends on to another host.
const MESH_MARK: u32 = 0x5301;

/// DSCP codepoint those connections carry, so the other host serves them locally.
const MESH_DSCP: u8 = 0x3f;

/// Name of shoal's table in the host's namespace.
pub const TABLE: &str = "shoal";

fn chain(name: String, rules: Vec<Rule>) -> Chain {
    Chain {
        name,
        hook: None,
        rules,
    }
}

fn base(name: &str, kind: ChainKind, point: HookPoint, priority: i32, rules: Vec<Rule>) -> Chain {
    Chain {
        name: name.into(),
        hook: Some(Hook {
            kind,
            point,
            priority,
        }),
        rules,
    }
}

/// A chain that sends each new connection to one of `targets` (chains), at random.
fn spread(name: String, targets: &[String]) -> Chain {
    let rules = match targets {
        [] => Vec::new(),
        [one] => vec![Rule::new(vec![], vec![Action::Jump(one.clone())])],
        many => vec![Rule::new(vec![], vec![Action::JumpRandom(many.to_vec())])],
    };
    chain(name, rules)
}

/// The host's rules: `plan` from the manager, `local` maps this host's tasks to their gateway
/// addresses, `me` is this host's underlay address.
pub fn ruleset(plan: &PortPlan, local: &BTreeMap<TaskId, Ipv4Addr>, me: Ipv4Addr) -> Table {
    let (net, len) = GW_SUBNET;
    let mut chains = Vec::new();
    let mut pre = Vec::new();
    let mut out = Vec::new();
    for (i, p) in plan.ports.iter().enumerate() {
        let proto = Proto::parse(&p.protocol);
        let mut locals: Vec<Ipv4Addr> = p
            .backends
            .iter()
            .filter(|b| b.node_addr == me)
            .filter_map(|b| local.get(&b.task_id).copied())
            .collect();
        locals.sort();
        // One chain per backend: a local task's address, or another host.
        let mut local_targets = Vec::new();
        for (k, addr) in locals.iter().enumerate() {
            let name = format!("p{i}_l{k}");
            let dnat = Action::Dnat(*addr, Some(p.target));
            let rule = Rule::new(vec![Match::L4proto(proto)], vec![dnat]);
            chains.push(chain(name.clone(), vec![rule]));
            local_targets.push(name);
        }
        chains.push(spread(format!("p{i}_local"), &local_targets));
        let to_port = || vec![Match::DaddrLocal, Match::Dport(proto, p.published)];
        let jump = |c: String| vec![Action::Jump(c)];
        if p.mode == "host" {
            pre.push(Rule::new(to_port(), jump(format!("p{i}_local"))));
            out.push(Rule::new(to_port(), jump(format!("p{i}_local"))));
            continue;
        }
        let mut mesh_targets = Vec::new();
        let mut local_iter = local_targets.iter();
        for (k, b) in p.backends.iter().enumerate() {
            if b.node_addr == me {
                if let Some(l) = local_iter.next() {
                    mesh_targets.push(l.clone());
                }
                continue;
            }
            let name = format!("p{i}_r{k}");
            let rule = Rule::new(
                vec![Match::L4proto(proto)],
                vec![
                    Action::SetMark(MESH_MARK),
                    Action::Dnat(b.node_addr, Some(p.published)),
                ],
            );
            chains.push(chain(name.clone(), vec![rule]));
            mesh_targets.push(name);
        }
        chains.push(spread(format!("p{i}_mesh"), &mesh_targets));
        let mut served_here = to_port();
        served_here.extend([Match::SaddrInSet("peers".into()), Match::Dscp(MESH_DSCP)]);
        pre.push(Rule::new(served_here, jump(format!("p{i}_local"))));
        pre.push(Rule::new(to_port(), jump(format!("p{i}_mesh"))));
        out.push(Rule::new(to_port(), jump(format!("p{i}_mesh"))));
    }
    // VXLAN's own datagrams need no connection tracking: nothing translates them.
    let vxlan = crate::link::VXLAN_PORT;
    let notrack = || {
        vec![Rule::new(
            vec![Match::Dport(Proto::Udp, vxlan)],
            vec![Action::Notrack],
        )]
    };
    let mut all = vec![
        base(
            "pre",
            ChainKind::Nat,
            HookPoint::Prerouting,
            nft::priority::DSTNAT,
            pre,
        ),
        base(
            "out",
            ChainKind::Nat,
            HookPoint::Output,
            nft::priority::DSTNAT,
            out,
        ),
        base(
            "post",
            ChainKind::Nat,
            HookPoint::Postrouting,
            nft::priority::SRCNAT,
            vec![
                Rule::new(
                    vec![
                        Match::SaddrIn(net, len),
                        Match::OifnameNot(GW_BRIDGE.into()),
                    ],
                    vec![Action::Masquerade],
                ),
                Rule::new(vec![Match::Mark(MESH_MARK)], vec![Action::Masquerade]),
            ],
        ),
        base(
            "raw_pre",
            ChainKind::Filter,
            HookPoint::Prerouting,
            nft::priority::RAW,
            notrack(),
        ),
        base(
            "raw_out",
            ChainKind::Filter,
            HookPoint::Output,
            nft::priority::RAW,
            notrack(),
        ),
        base(
            "tag_mesh",
            ChainKind::Filter,
            HookPoint::Postrouting,
            nft::priority::MANGLE,
            vec![Rule::new(
                vec![Match::Mark(MESH_MARK)],
                vec![Action::SetDscp(MESH_DSCP)],
            )],
        ),
    ];
    all.extend(chains);
    Table {
        name: TABLE.into(),
        sets: vec![Set {
            name: "peers".into(),
            elements: plan.peers.clone(),
        }],
        chains: all,
    }
}

/// Loads `rules` in the host's namespace through `conn` in one transaction (or removes
/// shoal's table, for `None`), and turns IPv4 forwarding on (published ports and container
/// egress are forwarded).
pub fn apply(conn: &nft::Conn, rules: Option<&Table>) -> Result<(), NetError> {
    match rules {
        Some(t) => {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
                .map_err(NetError::io("turning IPv4 forwarding on"))?;
            conn.load(t)
        }
        None => conn.remove(TABLE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api::network::{Backend, PublishedPort};

    #[test]
    fn ingress_spreads_over_every_task_and_host_mode_over_local_ones() {
        let me = Ipv4Addr::new(198, 18, 0, 11);
        let other = Ipv4Addr::new(198, 18, 0, 12);
        let t = |n| TaskId::from_bits(n);
        let backends = vec![
            Backend {
                task_id: t(1),
                node_addr: me,
            },
            Backend {
                task_id: t(2),
                node_addr: other,
            },
        ];
        let plan = PortPlan {
            peers: vec![me, other],
            ports: vec![
                PublishedPort {
                    service: "a_web".into(),
                    published: 8080,
                    target: 80,
                    protocol: "tcp".into(),
                    mode: "ingress".into(),
                    backends: backends.clone(),
                },
                PublishedPort {
                    service: "a_dns".into(),
                    published: 5353,
                    target: 53,
                    protocol: "udp".into(),
                    mode: "host".into(),
                    backends,
                },
            ],
        };
        let local = BTreeMap::from([(t(1), Ipv4Addr::new(172, 30, 0, 2))]);
        let r = ruleset(&plan, &local, me).to_string();
        assert!(r.contains("chain p0_l0 {\n\t\tmeta l4proto tcp dnat to 172.30.0.2:80\n\t}"));
        assert!(r.contains("meta l4proto tcp meta mark set 0x00005301 dnat to 198.18.0.12:8080"));
        assert!(
            r.contains("numgen random mod 2 vmap { 0 : jump p0_l0, 1 : jump p0_r1 }"),
            "{r}"
        );
        assert!(r.contains(
            "fib daddr type local tcp dport 8080 ip saddr @peers ip dscp 0x3f jump p0_local"
        ));
        // VXLAN's datagrams are not tracked, either way.
        assert!(r.contains("type filter hook prerouting priority raw; policy accept;\n\t\tudp dport 4789 notrack"), "{r}");
        assert!(
            r.contains(
                "type filter hook output priority raw; policy accept;\n\t\tudp dport 4789 notrack"
            ),
            "{r}"
        );
        assert!(
            r.contains("fib daddr type local udp dport 5353 jump p1_local"),
            "{r}"
        );
        assert!(!r.contains("p1_mesh"), "host mode never leaves the host");
        assert!(r.contains("elements = { 198.18.0.11, 198.18.0.12 }"));
    }
}
