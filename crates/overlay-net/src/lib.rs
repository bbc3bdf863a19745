//! shoal's host networking: containers on overlay networks that span hosts.
//!
//! Per network with local tasks, a host has a bridge (`shb<VNI>`) and a VXLAN device
//! (`shv<VNI>`: the network's VNI, UDP 4789, learning off, ARP answered from its neighbour
//! table) enslaved to it, with MTU = underlay − 50. Each attachment is a veth pair: one end on
//! the bridge, the other moved into the container's network namespace as `eth<N>`, with the
//! task's address and MAC. Remote endpoints get static forwarding (FDB) and neighbour entries on
//! the VXLAN device, from the cluster state the manager sends, so no frame is ever flooded to
//! find them. The bridge has no address: hosts do not route between networks.
//!
//! Each container also gets a resolver on 127.0.0.11:53 inside its namespace (a socket the
//! daemon opens there and serves: [`dns`]) and, for services with a virtual IP, nftables rules
//! in its namespace that spread connections to the VIP over the running tasks ([`lb`]).
//!
//! # Layout
//! - [`netns`]: named network namespaces (bind mounts), and running code inside one.
//! - [`link`]: netlink (rtnetlink): bridges, VXLAN, veth, addresses, FDB and neighbours.
//! - [`dns`]: the per-container resolver: records from the network views, forwarding the rest.
//! - [`nft`]: nftables tables as data, loaded through nftables' netlink in one transaction.
//! - [`lb`]: the virtual IP rules (a pure ruleset).
//! - [`ports`]: published ports and container egress on the host (a pure ruleset).
//! - [`host`]: [`host::HostNetwork`], which ties them together for the agent.

pub mod dns;
pub mod host;
pub mod lb;
pub mod link;
pub mod netns;
pub mod nft;
pub mod ports;

pub use host::HostNetwork;

/// Something on the host's network could not be done.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A netlink request failed.
    #[error("netlink: {what}: {message}")]
    Netlink {
        /// What was being done.
        what: String,
        /// The kernel's answer.
        message: String,
    },
    /// A system call or file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// nftables refused the rules.
    #[error("nftables: {0}")]
    Nft(String),
}

impl NetError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NetError {
        let what = what.into();
        move |source| NetError::Io { what, source }
    }

    pub(crate) fn netlink(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetError {
        let what = what.into();
        move |e| NetError::Netlink {
            what,
            message: e.to_string(),
        }
    }
}
