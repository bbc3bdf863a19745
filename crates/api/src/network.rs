//! Networks as cluster objects: a network has an id, a VNI and a subnet allocated by the
//! manager; tasks attached to it get an address each, and services a virtual IP. This module
//! also holds the IPv4 arithmetic every side shares ([`Cidr`]) and the MAC address an endpoint
//! gets from its address ([`mac_for`]).

use crate::ids::NetworkId;
use crate::ids::{ServiceId, TaskId};
use crate::units::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

/// Lowest VXLAN network identifier shoal hands out (lower ones are left to operators).
pub const FIRST_VNI: u32 = 4096;

/// What a user asks for.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    /// Name, unique in the cluster (`<stack>_<name>` for stack networks).
    pub name: String,
    /// Only `overlay` is supported.
    #[serde(default = "default_driver")]
    pub driver: String,
    /// Whether standalone containers may attach.
    #[serde(default)]
    pub attachable: bool,
    /// No route out of the network: its containers reach only each other.
    #[serde(default)]
    pub internal: bool,
    /// Requested subnet in CIDR form; allocated when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subnet: String,
    /// Labels (stack networks carry `com.docker.stack.namespace`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Driver options, kept as given.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub driver_opts: BTreeMap<String, String>,
}

fn default_driver() -> String {
    "overlay".to_owned()
}

/// A network the cluster holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// Its id.
    pub id: NetworkId,
    /// Store revision of its last change.
    pub version: u64,
    /// When it was created.
    pub created_at: Timestamp,
    /// What was asked for.
    pub spec: NetworkSpec,
    /// VXLAN id, unique in the cluster, at least [`FIRST_VNI`].
    pub vni: u32,
    /// Subnet in CIDR form.
    pub subnet: String,
    /// Gateway address of the subnet.
    pub gateway: String,
}

/// An IPv4 network in CIDR form (`10.0.1.0/24`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    /// The network address (host bits cleared).
    pub base: u32,
    /// Prefix length, 0..=32.
    pub prefix: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/len`; host bits must be clear.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not in CIDR form (as 10.0.1.0/24)"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{s:?}: {addr:?} is not an IPv4 address"))?;
        let prefix: u8 = len
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("{s:?}: prefix length {len:?} is not 0..=32"))?;
        let base = u32::from(addr);
        let c = Cidr { base, prefix };
        if base & !c.mask() != 0 {
            return Err(format!(
                "{s:?} has host bits set: the network is {}",
                Cidr {
                    base: base & c.mask(),
                    prefix
                }
            ));
        }
        Ok(c)
    }

    /// The netmask as a number.
    pub fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix)
        }
    }

    /// Number of addresses, network and broadcast included.
    pub fn size(&self) -> u64 {
        1u64 << (32 - self.prefix)
    }

    /// True when `a` lies inside.
    pub fn contains(&self, a: Ipv4Addr) -> bool {
        u32::from(a) & self.mask() == self.base
    }

    /// True when the two share any address.
    pub fn overlaps(&self, o: &Cidr) -> bool {
        let m = self.mask() & o.mask();
        self.base & m == o.base & m
    }

    /// The `n`th address (0 is the network address).
    pub fn nth(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(self.base.wrapping_add(n))
    }

    /// The gateway address shoal reserves: the first host address.
    pub fn gateway(&self) -> Ipv4Addr {
        self.nth(1)
    }

    /// Host addresses tasks and VIPs may get: all but network, gateway and broadcast.
    pub fn assignable(&self) -> std::ops::Range<u32> {
        if self.prefix >= 31 {
            return 0..0;
        }
        2..(self.size() as u32 - 1)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.prefix)
    }
}

/// Splits `addr/len` into the address and its prefix length.
pub fn split_address(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (a, l) = s.split_once('/')?;
    Some((a.parse().ok()?, l.parse().ok()?))
}

/// The MAC address of the endpoint at `ip`, as docker derives it: `02:42` and the address.
pub fn mac_for(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0x42, o[0], o[1], o[2], o[3]]
}

/// A task's place on a network, allocated by the manager.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkAttachment {
    /// The network.
    pub network_id: NetworkId,
    /// Its name, for display.
    pub network: String,
    /// The task's address with the subnet's prefix length (`10.0.1.5/24`).
    pub address: String,
    /// Names the task's service answers to on this network besides its own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

/// A service's virtual IP on one network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualIp {
    /// The network.
    pub network_id: NetworkId,
    /// The address with the subnet's prefix length.
    pub addr: String,
}

/// One task on a network, as the hosts that share the network see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// The task.
    pub task_id: TaskId,
    /// Its service.
    pub service_id: ServiceId,
    /// Its address on the network (no prefix length).
    pub addr: Ipv4Addr,
    /// Underlay address of its node.
    pub node_addr: Ipv4Addr,
    /// True while it runs: only running tasks are in DNS and behind the VIP.
    pub running: bool,
}

/// How a service is found on a network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecord {
    /// The service.
    pub service_id: ServiceId,
    /// The names it answers to: its own, its name in its stack, and aliases.
    pub names: Vec<String>,
    /// Its virtual IP here (`None` with `endpoint_mode: dnsrr`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<Ipv4Addr>,
}

/// What a host needs to know of one network it has tasks on: the network, every endpoint on
/// it (for forwarding entries, DNS and load balancing) and its services.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkView {
    /// The network.
    pub network: Network,
    /// Every placed, unfinished task on it, in any node.
    pub endpoints: Vec<Endpoint>,
    /// The services attached to it.
    pub services: Vec<ServiceRecord>,
}

/// A running task behind a published port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Backend {
    /// The task.
    pub task_id: TaskId,
    /// Underlay address of its node.
    pub node_addr: Ipv4Addr,
}

/// A published port, as every host applies it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedPort {
    /// The service.
    pub service: String,
    /// Port on the hosts.
    pub published: u16,
    /// Port in the containers.
    pub target: u16,
    /// `tcp` or `udp`.
    pub protocol: String,
    /// `ingress` (every host answers) or `host` (hosts running a task answer).
    pub mode: String,
    /// The service's running tasks.
    pub backends: Vec<Backend>,
}

/// Every published port of the cluster, and the hosts' underlay addresses (connections the
/// routing mesh forwards between hosts come from them).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PortPlan {
    /// Underlay addresses of the cluster's nodes.
    pub peers: Vec<Ipv4Addr>,
    /// Published ports.
    pub ports: Vec<PublishedPort>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_and_compare() {
        let a = Cidr::parse("10.0.1.0/24").unwrap();
        assert_eq!(a.to_string(), "10.0.1.0/24");
        assert_eq!(a.gateway(), Ipv4Addr::new(10, 0, 1, 1));
        assert_eq!(a.assignable(), 2..255);
        assert!(a.contains(Ipv4Addr::new(10, 0, 1, 200)));
        assert!(!a.contains(Ipv4Addr::new(10, 0, 2, 1)));
        assert!(a.overlaps(&Cidr::parse("10.0.0.0/16").unwrap()));
        assert!(!a.overlaps(&Cidr::parse("10.0.2.0/24").unwrap()));
        assert!(Cidr::parse("10.0.1.5/24")
            .unwrap_err()
            .contains("host bits"));
        assert!(Cidr::parse("10.0.1.0").is_err());
        assert!(Cidr::parse("10.0.1.0/33").is_err());
        assert_eq!(mac_for(Ipv4Addr::new(10, 0, 1, 5)), [2, 0x42, 10, 0, 1, 5]);
    }
}
