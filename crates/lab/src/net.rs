//! The lab's network: a switch namespace with a bridge, one namespace per host with a veth to
//! it, links cut and healed on the switch side. Through the `ip` command for now (a stopgap:
//! overlay-net's netlink code replaces it); entering a namespace is setns(2) on its network
//! namespace only.

use crate::LabError;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// The namespace of a lab host.
pub fn netns(lab: &str, host: &str) -> String {
    format!("shl-{lab}-{host}")
}

/// The switch namespace of a lab.
pub fn switch(lab: &str) -> String {
    format!("shl-{lab}-sw")
}

fn ip(args: &[&str]) -> Result<String, LabError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| LabError::Command {
            what: format!("ip {}", args.join(" ")),
            message: format!("{e} (apt-get install iproute2)"),
        })?;
    if !out.status.success() {
        return Err(LabError::Command {
            what: format!("ip {}", args.join(" ")),
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Makes the switch: a namespace holding bridge `br0`.
pub fn make_switch(lab: &str) -> Result<(), LabError> {
    let sw = switch(lab);
    ip(&["netns", "add", &sw])?;
    ip(&["-n", &sw, "link", "set", "lo", "up"])?;
    ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
    ip(&["-n", &sw, "link", "set", "br0", "up"])?;
    Ok(())
}

/// Makes a host: its namespace, `eth0` with `addr`/24 joined to the switch, loopback up. No
/// default route: the host reaches the lab's subnet only.
pub fn make_host(lab: &str, host: &str, addr: &str) -> Result<(), LabError> {
    let ns = netns(lab, host);
    let sw = switch(lab);
    ip(&["netns", "add", &ns])?;
    ip(&[
        "link", "add", "name", "eth0", "netns", &ns, "type", "veth", "peer", "name", host, "netns",
        &sw,
    ])?;
    ip(&["-n", &sw, "link", "set", host, "master", "br0", "up"])?;
    ip(&[
        "-n",
        &ns,
        "addr",
        "add",
        &format!("{addr}/24"),
        "dev",
        "eth0",
    ])?;
    ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
    ip(&["-n", &ns, "link", "set", "lo", "up"])?;
    Ok(())
}

/// Brings a host's switch port up or down.
pub fn set_link(lab: &str, host: &str, up: bool) -> Result<(), LabError> {
    ip(&[
        "-n",
        &switch(lab),
        "link",
        "set",
        host,
        if up { "up" } else { "down" },
    ])
    .map(|_| ())
}

/// True when a host's switch port is up.
pub fn link_up(lab: &str, host: &str) -> bool {
    ip(&["-n", &switch(lab), "-o", "link", "show", host])
        .map(|s| s.contains("state UP") || s.contains(",UP"))
        .unwrap_or(false)
}

/// Removes every namespace of the lab (their links go with them).
pub fn remove_all(lab: &str) -> Result<(), LabError> {
    let prefix = format!("shl-{lab}-");
    let list = ip(&["netns", "list"]).unwrap_or_default();
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if name.starts_with(&prefix) {
            ip(&["netns", "del", name])?;
        }
    }
    Ok(())
}

/// Makes `cmd` start inside the host's network namespace (setns on the network namespace
/// only, so /sys and the cgroup tree stay the machine's).
pub fn enter(cmd: &mut Command, lab: &str, host: &str) -> Result<(), LabError> {
    let path = format!("/run/netns/{}", netns(lab, host));
    let file = std::fs::File::open(&path).map_err(|error| LabError::Io {
        path: path.into(),
        error,
    })?;
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
