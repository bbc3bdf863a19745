//! The allocator: who holds which address on which overlay network, and the subnets new
//! networks get from the cluster's pool.
//!
//! Addresses are handed out as the Raft log is applied ([`crate::store::Store::apply`] calls
//! in here), so every manager computes the same allocation from the same log, nothing is handed
//! out twice, and a leader change cannot lose or repeat one. The index itself is not stored: it
//! is a function of the store (tasks' attachments, services' virtual IPs, networks' subnets),
//! rebuilt when a manager starts or installs a snapshot ([`Ipam::build`]).
//!
//! Rules, as in Swarm: a task holds its addresses until it is finished (its observed state is
//! terminal) or deleted; a service holds a virtual IP per attached network while it exists
//! (none with `endpoint_mode: dnsrr`); the lowest free address is handed out first. Network,
//! gateway and broadcast addresses are never handed out.
//!
//! Published ports follow the same path: a port declared without `published` gets one from
//! [`DYNAMIC_PORTS`] (Swarm's 30000–32767) as the log is applied, the lowest one no other
//! service publishes for that protocol, and keeps it across updates ([`publish_ports`]).

use crate::store::{NewNetwork, Store};
use shoal_api::ids::{NetworkId, ServiceId, TaskId};
use shoal_api::network::{Cidr, Network, NetworkSpec, FIRST_VNI};
use shoal_api::service::{EndpointMode, PortConfig, ServiceSpec};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::RangeInclusive;

/// Where ports declared without `published` are published (Swarm's dynamic range).
pub const DYNAMIC_PORTS: RangeInclusive<u16> = 30000..=32767;

/// The pool network subnets come from when the cluster was initialized without one (Swarm's).
pub const DEFAULT_POOL: &str = "10.0.0.0/8";

/// Prefix length of each subnet taken from the pool, by default (Swarm's).
pub const DEFAULT_SUBNET_SIZE: u8 = 24;

/// Who holds an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// A task's attachment.
    Task(TaskId),
    /// A service's virtual IP.
    Vip(ServiceId),
}

/// A network's subnet and its addresses in use.
#[derive(Debug, Clone, Default)]
struct Subnet {
    cidr: Option<Cidr>,
    /// Offset in the subnet → holder.
    used: BTreeMap<u32, Owner>,
    /// Every assignable offset below this one is used (a search hint only: the answer is
    /// always the lowest free offset).
    low: u32,
}

/// Addresses in use per network.
#[derive(Debug, Clone, Default)]
pub struct Ipam {
    nets: HashMap<NetworkId, Subnet>,
}

/// Why no address could be handed out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// The subnet is full.
    #[error("no free address on network {network:?}: its subnet {subnet} is full")]
    Exhausted {
        /// The network's name.
        network: String,
        /// Its subnet.
        subnet: String,
    },
    /// The attachment names no network.
    #[error("network {0:?} does not exist")]
    NoNetwork(String),
}

impl Ipam {
    /// The index for what `store` holds.
    pub fn build(store: &Store) -> Ipam {
        let mut ipam = Ipam::default();
        for n in store.networks.values() {
            ipam.add_network(n);
        }
        for s in store.services.values() {
            for v in &s.virtual_ips {
                ipam.hold(&v.network_id, &v.addr, Owner::Vip(s.id.clone()));
            }
        }
        for t in store.tasks.values() {
            if !t.status.state.is_terminal() {
                for a in &t.networks {
                    ipam.hold(&a.network_id, &a.address, Owner::Task(t.id.clone()));
                }
            }
        }
        ipam
    }

    /// Starts tracking a network (nothing if it is tracked already).
    pub fn add_network(&mut self, n: &Network) {
        self.nets.entry(n.id.clone()).or_insert_with(|| Subnet {
            cidr: Cidr::parse(&n.subnet).ok(),
            used: BTreeMap::new(),
            low: 0,
        });
    }

    /// Forgets a network and everything held on it.
    pub fn remove_network(&mut self, id: &NetworkId) {
        self.nets.remove(id);
    }

    fn hold(&mut self, net: &NetworkId, addr: &str, owner: Owner) {
        let Some(s) = self.nets.get_mut(net) else {
            return;
        };
        let (Some(cidr), Some((ip, _))) = (s.cidr, shoal_api::network::split_address(addr)) else {
            return;
        };
        if cidr.contains(ip) {
            s.used.insert(u32::from(ip) - cidr.base, owner);
        }
    }

    /// Hands out the lowest free address of `net` to `owner`, as `addr/prefix`.
    pub fn allocate(&mut self, network: &Network, owner: Owner) -> Result<String, AllocError> {
        self.add_network(network);
        let s = self.nets.get_mut(&network.id).expect("added above");
        let exhausted = || AllocError::Exhausted {
            network: network.spec.name.clone(),
            subnet: network.subnet.clone(),
        };
        let cidr = s.cidr.ok_or_else(exhausted)?;
        let range = cidr.assignable();
        let mut at = s.low.max(range.start);
        for (&used, _) in s.used.range(at..) {
            if used != at {
                break;
            }
            at += 1;
        }
        if at >= range.end {
            return Err(exhausted());
        }
        s.used.insert(at, owner);
        s.low = at + 1;
        Ok(format!("{}/{}", cidr.nth(at), cidr.prefix))
    }

    /// Gives back `addr` on `net`, if `owner` still holds it.
    pub fn release(&mut self, net: &NetworkId, addr: &str, owner: &Owner) {
        let Some(s) = self.nets.get_mut(net) else {
            return;
        };
        let (Some(cidr), Some((ip, _))) = (s.cidr, shoal_api::network::split_address(addr)) else {
            return;
        };
        if !cidr.contains(ip) {
            return;
        }
        let off = u32::from(ip) - cidr.base;
        if s.used.get(&off) == Some(owner) {
            s.used.remove(&off);
            s.low = s.low.min(off);
        }
    }

    /// How many addresses of `net` are still free.
    pub fn free(&self, net: &NetworkId) -> u64 {
        self.nets.get(net).map_or(0, |s| {
            let total = s.cidr.map_or(0, |c| c.assignable().len() as u64);
            total.saturating_sub(s.used.len() as u64)
        })
    }

    /// Addresses in use on `net` (tests and `network inspect`).
    pub fn used(&self, net: &NetworkId) -> usize {
        self.nets.get(net).map_or(0, |s| s.used.len())
    }
}

/// The ports the hosts publish for `spec`: its declared ones as they are, and for each one
/// declared without `published` a port from [`DYNAMIC_PORTS`]: the one it had (in `previous`)
/// while nobody else took it, else the lowest one free for its protocol. `taken` holds the
/// (port, protocol) pairs every other service publishes or declares. Errs naming the port
/// when the range is used up.
pub fn publish_ports(
    spec: &ServiceSpec,
    previous: &[PortConfig],
    taken: &BTreeSet<(u16, String)>,
) -> Result<Vec<PortConfig>, String> {
    let mut used: BTreeSet<(u16, String)> = spec
        .endpoint
        .ports
        .iter()
        .filter_map(|p| p.published.map(|n| (n, p.protocol.clone())))
        .collect();
    let free = |n: u16, proto: &str, used: &BTreeSet<(u16, String)>| {
        let key = (n, proto.to_owned());
        !taken.contains(&key) && !used.contains(&key)
    };
    let mut out = Vec::with_capacity(spec.endpoint.ports.len());
    for p in &spec.endpoint.ports {
        if p.published.is_some() {
            out.push(p.clone());
            continue;
        }
        let kept = previous
            .iter()
            .filter(|q| q.target == p.target && q.protocol == p.protocol && q.mode == p.mode)
            .filter_map(|q| q.published)
            .find(|n| DYNAMIC_PORTS.contains(n) && free(*n, &p.protocol, &used));
        let Some(n) = kept.or_else(|| DYNAMIC_PORTS.clone().find(|n| free(*n, &p.protocol, &used)))
        else {
            return Err(format!(
                "service {:?}: no free port in {}-{} to publish target port {}/{}",
                spec.name,
                DYNAMIC_PORTS.start(),
                DYNAMIC_PORTS.end(),
                p.target,
                p.protocol
            ));
        };
        used.insert((n, p.protocol.clone()));
        out.push(PortConfig {
            published: Some(n),
            ..p.clone()
        });
    }
    Ok(out)
}

/// The networks a service wants a virtual IP on: every attached one, unless it uses DNS round
/// robin.
pub fn wants_vips(spec: &ServiceSpec) -> bool {
    spec.endpoint.mode == EndpointMode::Vip
}

/// The cluster's subnet pool and subnet size.
pub fn pool(store: &Store) -> (Vec<Cidr>, u8) {
    let (pools, size) = store.cluster.as_ref().map_or((Vec::new(), 0), |c| {
        (c.default_addr_pool.clone(), c.subnet_size)
    });
    let mut pools: Vec<Cidr> = pools.iter().filter_map(|p| Cidr::parse(p).ok()).collect();
    if pools.is_empty() {
        pools.push(Cidr::parse(DEFAULT_POOL).expect("valid"));
    }
    (pools, if size == 0 { DEFAULT_SUBNET_SIZE } else { size })
}

/// Picks VNIs and subnets for new networks: the lowest free VNI from [`FIRST_VNI`], and the
/// first subnet of the pool that overlaps no network's (or the one requested). The store checks
/// again as it applies them, so two proposals racing cannot both win.
pub fn allocate_networks(
    store: &Store,
    specs: Vec<NetworkSpec>,
    mut new_id: impl FnMut() -> NetworkId,
) -> Result<Vec<NewNetwork>, String> {
    let mut vnis: Vec<u32> = store.networks.values().map(|n| n.vni).collect();
    let mut taken: Vec<Cidr> = store
        .networks
        .values()
        .filter_map(|n| Cidr::parse(&n.subnet).ok())
        .collect();
    // Requested subnets are claimed before any is picked from the pool.
    for spec in &specs {
        if !spec.subnet.is_empty() {
            taken.push(
                Cidr::parse(&spec.subnet)
                    .map_err(|e| format!("network {:?}: subnet {e}", spec.name))?,
            );
        }
    }
    let (pools, size) = pool(store);
    let mut out = Vec::new();
    for spec in specs {
        let vni = (FIRST_VNI..)
            .find(|v| !vnis.contains(v))
            .expect("a free VNI");
        vnis.push(vni);
        let cidr = if spec.subnet.is_empty() {
            let found = pools.iter().find_map(|p| {
                let size = size.max(p.prefix);
                let count = 1u64 << (size - p.prefix);
                (0..count)
                    .map(|i| Cidr {
                        base: p.base + (i << (32 - size)) as u32,
                        prefix: size,
                    })
                    .find(|c| !taken.iter().any(|t| t.overlaps(c)))
            });
            let c = found.ok_or_else(|| {
                format!(
                    "network {:?}: the address pool ({}) has no free /{size} subnet left",
                    spec.name,
                    pools
                        .iter()
                        .map(Cidr::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?;
            taken.push(c);
            c
        } else {
            Cidr::parse(&spec.subnet).expect("checked above")
        };
        out.push(NewNetwork {
            id: new_id(),
            spec,
            vni,
            subnet: cidr.to_string(),
            gateway: cidr.gateway().to_string(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api::units::Timestamp;

    fn net(id: u128, subnet: &str) -> Network {
        Network {
            id: NetworkId::from_bits(id),
            version: 1,
            created_at: Timestamp(0),
            spec: NetworkSpec {
                name: format!("n{id}"),
                ..Default::default()
            },
            vni: FIRST_VNI + id as u32,
            subnet: subnet.into(),
            gateway: String::new(),
        }
    }

    #[test]
    fn the_lowest_free_address_goes_first_and_only_its_holder_releases_it() {
        let n = net(1, "10.0.1.0/29");
        let mut ipam = Ipam::default();
        let t = |i| Owner::Task(TaskId::from_bits(i));
        assert_eq!(ipam.allocate(&n, t(1)).unwrap(), "10.0.1.2/29");
        assert_eq!(ipam.allocate(&n, t(2)).unwrap(), "10.0.1.3/29");
        assert_eq!(ipam.allocate(&n, t(3)).unwrap(), "10.0.1.4/29");
        ipam.release(&n.id, "10.0.1.3/29", &t(9));
        assert_eq!(ipam.free(&n.id), 2, "a non-holder released nothing");
        ipam.release(&n.id, "10.0.1.3/29", &t(2));
        assert_eq!(ipam.allocate(&n, t(4)).unwrap(), "10.0.1.3/29");
        assert_eq!(ipam.allocate(&n, t(5)).unwrap(), "10.0.1.5/29");
        assert_eq!(ipam.allocate(&n, t(6)).unwrap(), "10.0.1.6/29");
        // .7 is the broadcast address.
        let e = ipam.allocate(&n, t(7)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "no free address on network \"n1\": its subnet 10.0.1.0/29 is full"
        );
        ipam.release(&n.id, "10.0.1.2/29", &t(1));
        assert_eq!(ipam.allocate(&n, t(7)).unwrap(), "10.0.1.2/29");
    }

    #[test]
    fn new_networks_take_free_subnets_from_the_pool_and_requested_ones_are_kept_out() {
        let mut store = Store::default();
        let n = net(1, "10.0.0.0/24");
        store.networks.insert(n.id.clone(), n);
        let specs = vec![
            NetworkSpec {
                name: "a".into(),
                ..Default::default()
            },
            NetworkSpec {
                name: "b".into(),
                subnet: "10.0.1.0/24".into(),
                ..Default::default()
            },
        ];
        let mut next = 10;
        let out = allocate_networks(&store, specs, || {
            next += 1;
            NetworkId::from_bits(next)
        })
        .unwrap();
        assert_eq!(out[0].subnet, "10.0.2.0/24");
        assert_eq!(out[0].gateway, "10.0.2.1");
        assert_eq!(out[0].vni, FIRST_VNI);
        assert_eq!(out[1].subnet, "10.0.1.0/24");
        assert_eq!(out[1].vni, FIRST_VNI + 2, "4097 is taken by n1");
        let bad = allocate_networks(
            &store,
            vec![NetworkSpec {
                name: "c".into(),
                subnet: "10.0.1.7/24".into(),
                ..Default::default()
            }],
            || NetworkId::from_bits(99),
        )
        .unwrap_err();
        assert!(bad.contains("host bits"), "{bad}");
    }
}
