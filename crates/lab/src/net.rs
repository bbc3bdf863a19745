//! The lab's network: a switch namespace with a bridge, one namespace per host with a veth to
//! it, links cut and healed on the switch side. Netlink through overlay-net's code (the same
//! that builds shoal's overlays), namespaces kept under /run/netns as `ip netns` keeps them (so
//! `ip netns exec shl-LAB-HOST …` works on them); entering a namespace is setns(2) on its
//! network namespace only.

use crate::LabError;
use shoal_overlay_net::{link, netns as ns, NetError};
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

/// Where named network namespaces live (as `ip netns` keeps them).
const NETNS_DIR: &str = "/run/netns";

/// The namespace of a lab host.
pub fn netns(lab: &str, host: &str) -> String {
    format!("shl-{lab}-{host}")
}

/// The switch namespace of a lab.
pub fn switch(lab: &str) -> String {
    format!("shl-{lab}-sw")
}

fn path(name: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(name)
}

fn net_err(what: String) -> impl FnOnce(NetError) -> LabError {
    move |e| LabError::Command {
        what,
        message: e.to_string(),
    }
}

/// Makes the switch: a namespace holding bridge `br0`.
pub fn make_switch(lab: &str) -> Result<(), LabError> {
    let sw = path(&switch(lab));
    ns::create(&sw).map_err(net_err(format!("making the switch {}", sw.display())))?;
    ns::run_in(&sw, |h| async move {
        link::ensure_bridge(&h, "br0").await.map(|_| ())
    })
    .map_err(net_err("making the switch's bridge".into()))
}

/// Makes a host: its namespace, `eth0` with `addr`/24 joined to the switch, loopback up. No
/// default route: the host reaches the lab's subnet only.
pub fn make_host(lab: &str, host: &str, addr: &str) -> Result<(), LabError> {
    let what = || format!("making host {host}");
    let addr: Ipv4Addr = addr
        .parse()
        .map_err(|_| LabError::Config(format!("{addr:?} is not an IPv4 address")))?;
    let here = path(&netns(lab, host));
    ns::create(&here).map_err(net_err(what()))?;
    let file = std::fs::File::open(&here).map_err(|error| LabError::Io {
        path: here.clone(),
        error,
    })?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
    // The switch's port is named after the host; its peer travels under a temporary name.
    let (port, peer) = (host.to_owned(), format!("shl-{host}"));
    let peer2 = peer.clone();
    ns::run_in(&path(&switch(lab)), move |h| async move {
        let br = link::index(&h, "br0")
            .await?
            .expect("the switch has its bridge");
        link::add_veth(&h, &port, &peer2, (br, false), 1500, fd).await
    })
    .map_err(net_err(what()))?;
    drop(file);
    let [a, b, c, d] = addr.octets();
    ns::run_in(&here, move |h| async move {
        link::configure_inside(
            &h,
            &peer,
            "eth0",
            [0x02, 0x5e, a, b, c, d],
            1500,
            (addr, 24),
        )
        .await
    })
    .map_err(net_err(what()))
}

/// Brings a host's switch port up or down.
pub fn set_link(lab: &str, host: &str, up: bool) -> Result<(), LabError> {
    let port = host.to_owned();
    ns::run_in(&path(&switch(lab)), move |h| async move {
        link::set_state(&h, &port, up).await
    })
    .map_err(net_err(format!("setting {host}'s link")))
}

/// True when a host's switch port is up.
pub fn link_up(lab: &str, host: &str) -> bool {
    let port = host.to_owned();
    ns::run_in(&path(&switch(lab)), move |h| async move {
        link::is_up(&h, &port).await
    })
    .unwrap_or(false)
}

/// Removes every namespace of the lab (their links go with them).
pub fn remove_all(lab: &str) -> Result<(), LabError> {
    let prefix = format!("shl-{lab}-");
    for p in ns::list(std::path::Path::new(NETNS_DIR)) {
        if p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
        {
            ns::remove(&p).map_err(net_err(format!("removing {}", p.display())))?;
        }
    }
    Ok(())
}

/// Makes `cmd` start inside the host's network namespace (setns on the network namespace
/// only, so /sys and the cgroup tree stay the machine's).
pub fn enter(cmd: &mut Command, lab: &str, host: &str) -> Result<(), LabError> {
    let path = path(&netns(lab, host));
    let file = std::fs::File::open(&path).map_err(|error| LabError::Io { path, error })?;
    // SAFETY: between fork and exec the closure only calls setns(2), which is
    // async-signal-safe, on a descriptor opened before the fork.
    unsafe {
        cmd.pre_exec(move || {
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)
        });
    }
    Ok(())
}
