//! Virtual IPs: inside each container's namespace, connections to a service's VIP are sent to
//! one of its running tasks, chosen at random per connection (as kube-proxy's nftables mode
//! does; this kernel has no IPVS). The translation happens in the client's own namespace, so
//! the task sees the client's real address and replies go straight back. A VIP whose service
//! has no running task refuses connections at once instead of timing out.
//!
//! The ruleset is a pure function of the views ([`ruleset`]); the host network loads it inside
//! the container's namespace through nftables' netlink ([`crate::nft::load`]), replacing the
//! table in one transaction.

use crate::nft::{self, Action, Chain, ChainKind, Hook, HookPoint, Match, Rule, Table};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// Name of shoal's table in a container's namespace.
pub const TABLE: &str = "shoal";

/// The rules for a container that reaches `vips` (VIP → running task addresses).
pub fn ruleset(vips: &BTreeMap<Ipv4Addr, Vec<Ipv4Addr>>) -> Table {
    let mut nat = Vec::new();
    let mut refuse = Vec::new();
    for (vip, backends) in vips {
        let to = vec![Match::Daddr(*vip)];
        match backends.as_slice() {
            [] => refuse.push(Rule::new(to, vec![Action::Reject])),
            [one] => nat.push(Rule::new(to, vec![Action::Dnat(*one, None)])),
            many => nat.push(Rule::new(to, vec![Action::DnatRandom(many.to_vec())])),
        }
    }
    Table {
        name: TABLE.into(),
        sets: Vec::new(),
        chains: vec![
            Chain {
                name: "vip".into(),
                hook: Some(Hook {
                    kind: ChainKind::Nat,
                    point: HookPoint::Output,
                    priority: nft::priority::DSTNAT,
                }),
                rules: nat,
            },
            Chain {
                name: "refuse".into(),
                hook: Some(Hook {
                    kind: ChainKind::Filter,
                    point: HookPoint::Output,
                    priority: nft::priority::FILTER,
                }),
                rules: refuse,
            },
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_vip_goes_to_its_running_tasks_or_is_refused() {
        let ip = |d| Ipv4Addr::new(10, 0, 1, d);
        let vips = BTreeMap::from([
            (ip(2), vec![ip(5), ip(6)]),
            (ip(3), vec![ip(7)]),
            (ip(4), vec![]),
        ]);
        let r = ruleset(&vips).to_string();
        assert!(r.contains(
            "ip daddr 10.0.1.2 dnat to numgen random mod 2 map { 0 : 10.0.1.5, 1 : 10.0.1.6 }"
        ));
        assert!(r.contains("ip daddr 10.0.1.3 dnat to 10.0.1.7"));
        assert!(r.contains("ip daddr 10.0.1.4 reject"));
        assert!(r.starts_with("table ip shoal {\n\tchain vip {\n\t\ttype nat hook output priority -100; policy accept;\n"), "{r}");
    }
}
