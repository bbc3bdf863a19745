//! Netlink requests (rtnetlink): the devices of a network on a host, the veth of an
//! attachment, and the forwarding and neighbour entries of remote endpoints.

use crate::NetError;
use futures::TryStreamExt;
use rtnetlink::packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth, LinkAttribute,
    LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, LinkVxlan};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

/// UDP port of VXLAN (IANA's).
pub const VXLAN_PORT: u16 = 4789;

/// VXLAN's overhead on the underlay: outer Ethernet, IP, UDP and VXLAN headers.
pub const VXLAN_OVERHEAD: u32 = 50;

/// The MTU of an overlay on an underlay of `mtu` (capped at 9000 on loopback's 64 KiB).
pub fn overlay_mtu(mtu: u32) -> u32 {
    mtu.saturating_sub(VXLAN_OVERHEAD).min(9000)
}

/// Name of a network's bridge.
pub fn bridge_name(vni: u32) -> String {
    format!("shb{vni}")
}

/// Name of a network's VXLAN device.
pub fn vxlan_name(vni: u32) -> String {
    format!("shv{vni}")
}

/// Host-side name of a task's veth on its `n`th network (`shv` and `shb` are taken).
pub fn veth_name(task: &str, n: usize) -> String {
    format!("shc{}{n}", &task[..task.len().min(10)])
}

/// Host-side name of a task's veth on the host's gateway bridge.
pub fn gw_veth_name(task: &str) -> String {
    format!("shd{}", &task[..task.len().min(10)])
}

/// The link called `name`, if there is one.
async fn get(h: &Handle, name: &str) -> Result<Option<LinkMessage>, NetError> {
    let mut links = h.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await {
        Ok(m) => Ok(m),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc_enodev() => Ok(None),
        Err(e) => Err(NetError::netlink(format!("looking up {name}"))(e)),
    }
}

/// The index of the link called `name`, if there is one.
pub async fn index(h: &Handle, name: &str) -> Result<Option<u32>, NetError> {
    Ok(get(h, name).await?.map(|m| m.header.index))
}

fn libc_enodev() -> i32 {
    nix::errno::Errno::ENODEV as i32
}

/// Every link: name → (index, kind).
pub async fn links(h: &Handle) -> Result<BTreeMap<String, u32>, NetError> {
    let mut out = BTreeMap::new();
    let mut all = h.link().get().execute();
    while let Some(m) = all
        .try_next()
        .await
        .map_err(NetError::netlink("listing links"))?
    {
        if let Some(name) = link_name(&m) {
            out.insert(name, m.header.index);
        }
    }
    Ok(out)
}

fn link_name(m: &LinkMessage) -> Option<String> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}

/// Sets the link `name` up.
pub async fn set_up(h: &Handle, name: &str) -> Result<(), NetError> {
    let idx = index(h, name).await?.ok_or_else(|| NetError::Netlink {
        what: format!("setting {name} up"),
        message: "no such device".into(),
    })?;
    h.link()
        .set(LinkUnspec::new_with_index(idx).up().build())
        .execute()
        .await
        .map_err(NetError::netlink(format!("setting {name} up")))
}

/// Sets the link `name` up or down.
pub async fn set_state(h: &Handle, name: &str, up: bool) -> Result<(), NetError> {
    let what = format!("setting {name} {}", if up { "up" } else { "down" });
    let idx = index(h, name).await?.ok_or_else(|| NetError::Netlink {
        what: what.clone(),
        message: "no such device".into(),
    })?;
    let link = LinkUnspec::new_with_index(idx);
    let link = if up { link.up() } else { link.down() };
    h.link()
        .set(link.build())
        .execute()
        .await
        .map_err(NetError::netlink(what))
}

/// True when the link `name` is there and administratively up.
pub async fn is_up(h: &Handle, name: &str) -> Result<bool, NetError> {
    Ok(get(h, name)
        .await?
        .is_some_and(|m| m.header.flags.contains(LinkFlags::Up)))
}

/// Makes the bridge `name`, up (nothing if it exists); returns its index.
pub async fn ensure_bridge(h: &Handle, name: &str) -> Result<u32, NetError> {
    if let Some(i) = index(h, name).await? {
        return Ok(i);
    }
    h.link()
        .add(LinkBridge::new(name).up().build())
        .execute()
        .await
        .map_err(NetError::netlink(format!("creating bridge {name}")))?;
    keep_bridged_frames_out_of_netfilter(h).await?;
    Ok(index(h, name).await?.expect("just created"))
}

/// The underlay: the index and MTU of the link that holds `addr`.
pub async fn underlay(h: &Handle, addr: Ipv4Addr) -> Result<(u32, u32), NetError> {
    let mut addrs = h.address().get().execute();
    let mut found = None;
    while let Some(m) = addrs
        .try_next()
        .await
        .map_err(NetError::netlink("listing addresses"))?
    {
        let has = m.attributes.iter().any(|a| {
            matches!(a, rtnetlink::packet_route::address::AddressAttribute::Address(IpAddr::V4(a)) if *a == addr)
        });
        if has {
            found = Some(m.header.index);
        }
    }
    let idx = found.ok_or_else(|| NetError::Netlink {
        what: format!("finding the underlay link of {addr}"),
        message: "no link has that address".into(),
    })?;
    let mut l = h.link().get().match_index(idx).execute();
    let m = l
        .try_next()
        .await
        .map_err(NetError::netlink("reading the underlay link"))?;
    let mtu = m
        .and_then(|m| {
            m.attributes.iter().find_map(|a| match a {
                LinkAttribute::Mtu(m) => Some(*m),
                _ => None,
            })
        })
        .unwrap_or(1500);
    Ok((idx, mtu))
}

/// Makes a network's bridge and VXLAN device (nothing if they exist); returns the indexes.
pub async fn ensure_network(
    h: &Handle,
    vni: u32,
    local: Ipv4Addr,
    underlay: (u32, u32),
) -> Result<(u32, u32), NetError> {
    let mtu = overlay_mtu(underlay.1);
    let (br, vx) = (bridge_name(vni), vxlan_name(vni));
    let br_idx = match index(h, &br).await? {
        Some(i) => i,
        None => {
            h.link()
                .add(LinkBridge::new(&br).mtu(mtu).up().build())
                .execute()
                .await
                .map_err(NetError::netlink(format!("creating bridge {br}")))?;
            keep_bridged_frames_out_of_netfilter(h).await?;
            index(h, &br).await?.expect("just created")
        }
    };
    let vx_idx = match index(h, &vx).await? {
        Some(i) => i,
        None => {
            let msg = LinkVxlan::new(&vx, vni)
                .dev(underlay.0)
                .local(local)
                .port(VXLAN_PORT)
                .learning(false)
                .proxy(true)
                .mtu(mtu)
                .controller(br_idx)
                .up()
                .build();
            h.link()
                .add(msg)
                .execute()
                .await
                .map_err(NetError::netlink(format!(
                    "creating VXLAN {vx} (VNI {vni})"
                )))?;
            index(h, &vx).await?.expect("just created")
        }
    };
    Ok((br_idx, vx_idx))
}

/// Deletes a network's devices (nothing if they are gone).
pub async fn remove_network(h: &Handle, vni: u32) -> Result<(), NetError> {
    for name in [vxlan_name(vni), bridge_name(vni)] {
        delete(h, &name).await?;
    }
    Ok(())
}

/// Deletes the link `name` (nothing if it is gone).
pub async fn delete(h: &Handle, name: &str) -> Result<(), NetError> {
    if let Some(idx) = index(h, name).await? {
        h.clone()
            .link()
            .del(idx)
            .execute()
            .await
            .map_err(NetError::netlink(format!("deleting {name}")))?;
    }
    Ok(())
}

/// Makes a veth pair for an attachment: `host` on the bridge `br`, up, and its peer `peer`
/// made straight inside the namespace open as `netns_fd` (moving a link between namespaces
/// would wait for an RCU grace period, under the lock every link change takes). An `isolated`
/// port forwards nothing to other isolated ports of its bridge, only to and from the bridge
/// itself (the host).
pub async fn add_veth(
    h: &Handle,
    host: &str,
    peer: &str,
    (br, isolated): (u32, bool),
    mtu: u32,
    netns_fd: std::os::fd::RawFd,
) -> Result<(), NetError> {
    delete(h, host).await?;
    let peer_end = LinkMessageBuilder::<LinkUnspec>::new()
        .name(peer.to_owned())
        .mtu(mtu)
        .setns_by_fd(netns_fd)
        .build();
    h.link()
        .add(
            LinkVeth::new(host, peer)
                .mtu(mtu)
                .controller(br)
                .up()
                .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_end)))
                .build(),
        )
        .execute()
        .await
        .map_err(NetError::netlink(format!("creating veth {host}")))?;
    if isolated {
        let host_idx = index(h, host).await?.expect("just created");
        // Bridge-port settings go in an RTM_NEWLINK (`ip link set … type bridge_slave isolated on`).
        h.link()
            .set_port(
                LinkUnspec::new_with_index(host_idx)
                    .set_port_kind(InfoPortKind::Bridge)
                    .set_port_data(InfoPortData::BridgePort(vec![InfoBridgePort::Isolated(
                        true,
                    )]))
                    .build(),
            )
            .execute()
            .await
            .map_err(NetError::netlink(format!("isolating {host} on its bridge")))?;
    }
    Ok(())
}

/// Names of the bridges in the namespace.
pub async fn bridges(h: &Handle) -> Result<Vec<String>, NetError> {
    let mut out = Vec::new();
    let mut all = h.link().get().execute();
    while let Some(m) = all
        .try_next()
        .await
        .map_err(NetError::netlink("listing links"))?
    {
        let bridge = m.attributes.iter().any(|a| {
            matches!(a, LinkAttribute::LinkInfo(infos)
                if infos.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::Bridge))))
        });
        if let (true, Some(name)) = (bridge, link_name(&m)) {
            out.push(name);
        }
    }
    Ok(out)
}

/// Whether every bridge of the namespace is shoal's (a network's `shb…`, the gateway bridge).
pub fn bridges_all_ours(names: &[String]) -> bool {
    names
        .iter()
        .all(|n| n.starts_with("shb") || n == crate::ports::GW_BRIDGE)
}

/// The sysctls that send bridged frames through the IP layer's netfilter hooks
/// (`br_netfilter`; absent when that module is not loaded).
const BRIDGE_NF_CALLS: [&str; 3] = [
    "/proc/sys/net/bridge/bridge-nf-call-iptables",
    "/proc/sys/net/bridge/bridge-nf-call-ip6tables",
    "/proc/sys/net/bridge/bridge-nf-call-arptables",
];

/// Keeps frames that shoal's bridges forward out of the host's netfilter hooks. Nothing of
/// shoal's filters bridged traffic (virtual IPs are translated in the client's namespace,
/// published ports and egress are routed, and gateway ports are isolated), while `br_netfilter`
/// would run every overlay frame through conntrack and the host's rules, costing throughput
/// (and, with Docker's `FORWARD` policy, dropping it). The switch is per namespace and covers
/// every bridge in it, so it is thrown only where all bridges are shoal's; otherwise it stays
/// as it is, with a warning.
pub async fn keep_bridged_frames_out_of_netfilter(h: &Handle) -> Result<(), NetError> {
    let on: Vec<&str> = BRIDGE_NF_CALLS
        .into_iter()
        .filter(|p| std::fs::read_to_string(p).is_ok_and(|v| v.trim() != "0"))
        .collect();
    if on.is_empty() {
        return Ok(());
    }
    let names = bridges(h).await?;
    if !bridges_all_ours(&names) {
        tracing::warn!(
            bridges = ?names,
            "other bridges share this namespace: bridged overlay frames keep going through \
             netfilter (br_netfilter), which costs throughput"
        );
        return Ok(());
    }
    for p in on {
        std::fs::write(p, "0").map_err(NetError::io(format!("writing 0 to {p}")))?;
    }
    Ok(())
}

/// Inside the container: names the moved veth `name`, gives it `mac`, `mtu` and
/// `addr/prefix`, and sets it up.
pub async fn configure_inside(
    h: &Handle,
    peer: &str,
    name: &str,
    mac: [u8; 6],
    mtu: u32,
    (addr, prefix): (Ipv4Addr, u8),
) -> Result<(), NetError> {
    let idx = match index(h, peer).await? {
        Some(i) => i,
        None => index(h, name).await?.ok_or_else(|| NetError::Netlink {
            what: format!("configuring {name}"),
            message: "the veth did not arrive in the container".into(),
        })?,
    };
    h.link()
        .set(
            LinkUnspec::new_with_index(idx)
                .name(name.to_owned())
                .address(mac.to_vec())
                .mtu(mtu)
                .build(),
        )
        .execute()
        .await
        .map_err(NetError::netlink(format!("naming {name}")))?;
    h.address()
        .add(idx, IpAddr::V4(addr), prefix)
        .replace()
        .execute()
        .await
        .map_err(NetError::netlink(format!("giving {name} {addr}/{prefix}")))?;
    h.link()
        .set(LinkUnspec::new_with_index(idx).up().build())
        .execute()
        .await
        .map_err(NetError::netlink(format!("setting {name} up")))
}

/// A remote endpoint as the VXLAN device must know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Remote {
    /// The endpoint's address.
    pub addr: Ipv4Addr,
    /// Its MAC.
    pub mac: [u8; 6],
    /// The underlay address of its host.
    pub host: Ipv4Addr,
}

/// The IPv4 destination of a neighbour or forwarding entry.
fn destination(m: &NeighbourMessage) -> Option<Ipv4Addr> {
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(ip.to_owned()),
        _ => None,
    })
}

/// Makes the VXLAN device `vx` know exactly `remotes`: a neighbour entry (so its ARP proxy
/// answers for them) and a forwarding entry (so frames go to their host) for each; entries of
/// endpoints gone are deleted.
pub async fn sync_remotes(h: &Handle, vx: u32, remotes: &[Remote]) -> Result<(), NetError> {
    // What the device has now.
    let mut neigh = h.neighbours().get().execute();
    let mut have_arp: BTreeMap<Ipv4Addr, NeighbourMessage> = BTreeMap::new();
    let mut have_fdb: BTreeMap<[u8; 6], (Option<Ipv4Addr>, NeighbourMessage)> = BTreeMap::new();
    while let Some(m) = neigh
        .try_next()
        .await
        .map_err(NetError::netlink("listing neighbours"))?
    {
        if m.header.ifindex != vx {
            continue;
        }
        if let Some(ip) = destination(&m) {
            have_arp.insert(ip, m);
        }
    }
    let mut req = h.neighbours().get();
    req.message_mut().header.family = AddressFamily::Bridge;
    let mut fdb = req.execute();
    while let Some(m) = fdb
        .try_next()
        .await
        .map_err(NetError::netlink("listing forwarding entries"))?
    {
        if m.header.ifindex != vx {
            continue;
        }
        let mac = m.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::LinkLocalAddress(l) if l.len() == 6 => {
                let mut mac = [0u8; 6];
                mac.copy_from_slice(l.as_slice());
                Some(mac)
            }
            _ => None,
        });
        let dst = destination(&m);
        if let Some(mac) = mac {
            have_fdb.insert(mac, (dst, m));
        }
    }
    for r in remotes {
        let arp_ok = have_arp.remove(&r.addr).is_some_and(|m| {
            m.attributes.iter().any(
                |a| matches!(a, NeighbourAttribute::LinkLocalAddress(l) if l.as_slice() == r.mac),
            )
        });
        if !arp_ok {
            h.neighbours()
                .add(vx, IpAddr::V4(r.addr))
                .link_local_address(&r.mac)
                .state(NeighbourState::Permanent)
                .replace()
                .execute()
                .await
                .map_err(NetError::netlink(format!("neighbour entry for {}", r.addr)))?;
        }
        let fdb_ok = have_fdb
            .remove(&r.mac)
            .is_some_and(|(dst, _)| dst == Some(r.host));
        if !fdb_ok {
            let mut req = h
                .neighbours()
                .add_bridge(vx, &r.mac)
                .flags(NeighbourFlags::Own)
                .state(NeighbourState::Permanent)
                .replace();
            req.message_mut()
                .attributes
                .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                    r.host,
                )));
            req.execute().await.map_err(NetError::netlink(format!(
                "forwarding entry for {}",
                r.addr
            )))?;
        }
    }
    for (_, m) in have_arp {
        let _ = h.neighbours().del(m).execute().await;
    }
    for (mac, (_, m)) in have_fdb {
        // The all-zero entry and the device's own address are the kernel's.
        if mac != [0; 6] && m.header.state.contains_permanent() {
            let _ = h.neighbours().del(m).execute().await;
        }
    }
    Ok(())
}

trait StateExt {
    fn contains_permanent(&self) -> bool;
}

impl StateExt for NeighbourState {
    fn contains_permanent(&self) -> bool {
        *self == NeighbourState::Permanent
    }
}

/// Makes the bridge `name` with `addr/prefix` (nothing if it exists); returns its index.
pub async fn ensure_bridge_with_address(
    h: &Handle,
    name: &str,
    addr: Ipv4Addr,
    prefix: u8,
) -> Result<u32, NetError> {
    if let Some(i) = index(h, name).await? {
        return Ok(i);
    }
    let idx = ensure_bridge(h, name).await?;
    h.address()
        .add(idx, IpAddr::V4(addr), prefix)
        .replace()
        .execute()
        .await
        .map_err(NetError::netlink(format!("giving {name} {addr}/{prefix}")))?;
    Ok(idx)
}

/// Inside a container: the default route through `gateway` on the link `name`.
pub async fn default_route(h: &Handle, name: &str, gateway: Ipv4Addr) -> Result<(), NetError> {
    let idx = index(h, name).await?.ok_or_else(|| NetError::Netlink {
        what: format!("routing through {name}"),
        message: "no such device".into(),
    })?;
    let route = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(gateway)
        .output_interface(idx)
        .build();
    h.route()
        .add(route)
        .replace()
        .execute()
        .await
        .map_err(NetError::netlink(format!("default route via {gateway}")))
}

/// The first IPv4 address of the link `name`, if it has one.
pub async fn address_of(h: &Handle, name: &str) -> Result<Option<Ipv4Addr>, NetError> {
    let Some(idx) = index(h, name).await? else {
        return Ok(None);
    };
    let mut addrs = h.address().get().set_link_index_filter(idx).execute();
    while let Some(m) = addrs
        .try_next()
        .await
        .map_err(NetError::netlink(format!("addresses of {name}")))?
    {
        for a in &m.attributes {
            if let rtnetlink::packet_route::address::AddressAttribute::Address(IpAddr::V4(ip)) = a {
                return Ok(Some(*ip));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridged_frames_skip_netfilter_only_where_every_bridge_is_ours() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(bridges_all_ours(&names(&[])));
        assert!(bridges_all_ours(&names(&["shb4096", "shgw0"])));
        assert!(!bridges_all_ours(&names(&["shb4096", "docker0"])));
    }
}
