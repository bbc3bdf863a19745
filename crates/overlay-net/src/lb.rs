//! Virtual IPs: inside each container's namespace, connections to a service's VIP are sent to
//! one of its running tasks, chosen at random per connection (as kube-proxy's nftables mode
//! does; this kernel has no IPVS). The translation happens in the client's own namespace, so
//! the task sees the client's real address and replies go straight back. A VIP whose service
//! has no running task refuses connections at once instead of timing out.
//!
//! The ruleset is a pure function of the views ([`ruleset`]); [`apply`] loads it with `nft`
//! inside the namespace (a stopgap until shoal speaks nftables' netlink itself), replacing the
//! table in one transaction.

use crate::NetError;
use std::collections::BTreeMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;

/// Name of shoal's table in a container's namespace.
pub const TABLE: &str = "shoal";

/// The rules for a container that reaches `vips` (VIP → running task addresses).
pub fn ruleset(vips: &BTreeMap<Ipv4Addr, Vec<Ipv4Addr>>) -> String {
    let mut nat = String::new();
    let mut refuse = String::new();
    for (vip, backends) in vips {
        match backends.len() {
            0 => refuse.push_str(&format!("    ip daddr {vip} reject\n")),
            1 => nat.push_str(&format!("    ip daddr {vip} dnat ip to {}\n", backends[0])),
            n => {
                let map: Vec<String> = backends
                    .iter()
                    .enumerate()
                    .map(|(i, b)| format!("{i} : {b}"))
                    .collect();
                nat.push_str(&format!(
                    "    ip daddr {vip} dnat ip to numgen random mod {n} map {{ {} }}\n",
                    map.join(", ")
                ));
            }
        }
    }
    format!(
        "table ip {TABLE}\ndelete table ip {TABLE}\ntable ip {TABLE} {{\n  \
         chain vip {{\n    type nat hook output priority -100; policy accept;\n{nat}  }}\n  \
         chain refuse {{\n    type filter hook output priority 0; policy accept;\n{refuse}  }}\n}}\n"
    )
}

/// Loads `rules` inside the namespace at `netns` in one transaction.
pub fn apply(netns: &Path, rules: &str) -> Result<(), NetError> {
    if !nft_installed() {
        return Err(NetError::Nft(
            "the nft command is missing: install nftables (apt-get install nftables)".into(),
        ));
    }
    let rules = rules.to_owned();
    let out = crate::netns::blocking_in(netns, move || {
        let mut child = std::process::Command::new("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(rules.as_bytes())?;
        child.wait_with_output()
    })?;
    if !out.status.success() {
        return Err(NetError::Nft(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ));
    }
    Ok(())
}

/// True when `nft` is on the PATH.
fn nft_installed() -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join("nft").is_file()))
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
        let r = ruleset(&vips);
        assert!(r.contains(
            "ip daddr 10.0.1.2 dnat ip to numgen random mod 2 map { 0 : 10.0.1.5, 1 : 10.0.1.6 }"
        ));
        assert!(r.contains("ip daddr 10.0.1.3 dnat ip to 10.0.1.7"));
        assert!(r.contains("ip daddr 10.0.1.4 reject"));
        assert!(r.starts_with("table ip shoal\ndelete table ip shoal\n"));
    }
}
