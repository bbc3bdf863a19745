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

use crate::NetError;
use shoal_api::network::PortPlan;
use shoal_api::TaskId;
use std::collections::BTreeMap;
use std::fmt::Write as _;
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

/// The host's rules: `plan` from the manager, `local` maps this host's tasks to their gateway
/// addresses, `me` is this host's underlay address.
pub fn ruleset(plan: &PortPlan, local: &BTreeMap<TaskId, Ipv4Addr>, me: Ipv4Addr) -> String {
    let (net, len) = GW_SUBNET;
    let mut chains = String::new();
    let mut pre = String::new();
    let mut out = String::new();
    for (i, p) in plan.ports.iter().enumerate() {
        let proto = if p.protocol == "udp" { "udp" } else { "tcp" };
        let mut locals: Vec<Ipv4Addr> = p
            .backends
            .iter()
            .filter(|b| b.node_addr == me)
            .filter_map(|b| local.get(&b.task_id).copied())
            .collect();
        locals.sort();
        let spread = |name: &str, targets: &[String], chains: &mut String| {
            let _ = writeln!(chains, "  chain {name} {{");
            match targets.len() {
                0 => {}
                1 => {
                    let _ = writeln!(chains, "    jump {}", targets[0]);
                }
                n => {
                    let map: Vec<String> = targets
                        .iter()
                        .enumerate()
                        .map(|(k, t)| format!("{k} : jump {t}"))
                        .collect();
                    let _ = writeln!(
                        chains,
                        "    numgen random mod {n} vmap {{ {} }}",
                        map.join(", ")
                    );
                }
            }
            let _ = writeln!(chains, "  }}");
        };
        // One chain per backend: a local task's address, or another host.
        let mut local_targets = Vec::new();
        for (k, addr) in locals.iter().enumerate() {
            let name = format!("p{i}_l{k}");
            let _ = writeln!(
                chains,
                "  chain {name} {{\n    meta l4proto {proto} dnat ip to {addr}:{}\n  }}",
                p.target
            );
            local_targets.push(name);
        }
        spread(&format!("p{i}_local"), &local_targets, &mut chains);
        let match_ = format!("fib daddr type local {proto} dport {}", p.published);
        if p.mode == "host" {
            let _ = writeln!(pre, "    {match_} jump p{i}_local");
            let _ = writeln!(out, "    {match_} jump p{i}_local");
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
            let _ = writeln!(
                chains,
                "  chain {name} {{\n    meta mark set {MESH_MARK:#x} meta l4proto {proto} dnat ip to {}:{}\n  }}",
                b.node_addr, p.published
            );
            mesh_targets.push(name);
        }
        spread(&format!("p{i}_mesh"), &mesh_targets, &mut chains);
        let _ = writeln!(
            pre,
            "    {match_} ip saddr @peers ip dscp {MESH_DSCP:#x} jump p{i}_local"
        );
        let _ = writeln!(pre, "    {match_} jump p{i}_mesh");
        let _ = writeln!(out, "    {match_} jump p{i}_mesh");
    }
    // VXLAN's own datagrams need no connection tracking: nothing translates them.
    let vxlan = crate::link::VXLAN_PORT;
    let peers: Vec<String> = plan.peers.iter().map(Ipv4Addr::to_string).collect();
    let peers = if peers.is_empty() {
        String::new()
    } else {
        format!(" elements = {{ {} }};", peers.join(", "))
    };
    format!(
        "table ip {TABLE}\ndelete table ip {TABLE}\ntable ip {TABLE} {{\n  \
         set peers {{ type ipv4_addr;{peers} }}\n  \
         chain pre {{\n    type nat hook prerouting priority dstnat; policy accept;\n{pre}  }}\n  \
         chain out {{\n    type nat hook output priority -100; policy accept;\n{out}  }}\n  \
         chain post {{\n    type nat hook postrouting priority srcnat; policy accept;\n    \
         ip saddr {net}/{len} oifname != \"{GW_BRIDGE}\" masquerade\n    \
         meta mark {MESH_MARK:#x} masquerade\n  }}\n  \
         chain raw_pre {{\n    type filter hook prerouting priority raw; policy accept;\n    \
         udp dport {vxlan} notrack\n  }}\n  \
         chain raw_out {{\n    type filter hook output priority raw; policy accept;\n    \
         udp dport {vxlan} notrack\n  }}\n  \
         chain tag_mesh {{\n    type filter hook postrouting priority mangle; policy accept;\n    \
         meta mark {MESH_MARK:#x} ip dscp set {MESH_DSCP:#x}\n  }}\n{chains}}}\n"
    )
}

/// Loads `rules` in the host's namespace in one transaction, and turns IPv4 forwarding on
/// (published ports and container egress are forwarded).
pub fn apply(rules: &str) -> Result<(), NetError> {
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
        .map_err(NetError::io("turning IPv4 forwarding on"))?;
    crate::lb::apply(std::path::Path::new("/proc/self/ns/net"), rules)
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
        let r = ruleset(&plan, &local, me);
        assert!(r.contains("chain p0_l0 {\n    meta l4proto tcp dnat ip to 172.30.0.2:80\n  }"));
        assert!(r.contains("meta mark set 0x5301 meta l4proto tcp dnat ip to 198.18.0.12:8080"));
        assert!(
            r.contains("numgen random mod 2 vmap { 0 : jump p0_l0, 1 : jump p0_r1 }"),
            "{r}"
        );
        assert!(r.contains(
            "fib daddr type local tcp dport 8080 ip saddr @peers ip dscp 0x3f jump p0_local"
        ));
        // VXLAN's datagrams are not tracked, either way.
        assert!(r.contains("type filter hook prerouting priority raw; policy accept;\n    udp dport 4789 notrack"), "{r}");
        assert!(
            r.contains(
                "type filter hook output priority raw; policy accept;\n    udp dport 4789 notrack"
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
