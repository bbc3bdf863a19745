//! nftables through netlink, against the kernel: what shoal loads is what `nft list` shows,
//! a load replaces the table whole, and a refused load names the rule and changes nothing.

use shoal_api::network::{Backend, PortPlan, PublishedPort};
use shoal_api::TaskId;
use shoal_overlay_net::nft::{Action, Chain, Match, Rule, Table};
use shoal_overlay_net::{lb, nft, ports};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;

/// A network namespace of this test's own, removed on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("shnft-{tag}-{}", std::process::id());
        let ok = Command::new("ip").args(["netns", "add", &name]).status();
        assert!(ok.is_ok_and(|s| s.success()), "ip netns add {name}");
        Netns(name)
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.0)
    }

    /// `nft list table ip NAME` inside it; `None` when there is no such table.
    fn list(&self, table: &str) -> Option<String> {
        let out = Command::new("ip")
            .args([
                "netns", "exec", &self.0, "nft", "list", "table", "ip", table,
            ])
            .output()
            .expect("nft");
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn can_run() -> bool {
    if !nix::unistd::geteuid().is_root() {
        shoal_testkit::skip("nftables tests need root");
        return false;
    }
    if Command::new("nft").arg("--version").output().is_err() {
        shoal_testkit::skip(
            "`nft` is missing (the test reads the rules back with it): apt-get install nftables",
        );
        return false;
    }
    true
}

/// Every rule shoal describes appears, word for word, in what `nft` lists.
fn assert_listed(table: &Table, listed: &str) {
    let lines: Vec<&str> = listed.lines().map(str::trim).collect();
    for c in &table.chains {
        assert!(
            lines.contains(&format!("chain {} {{", c.name).as_str()),
            "chain {} missing from:\n{listed}",
            c.name
        );
        if let Some(h) = &c.hook {
            assert!(
                lines.contains(&h.to_string().as_str()),
                "`{h}` missing from:\n{listed}"
            );
        }
        for r in &c.rules {
            let r = r.to_string();
            assert!(lines.contains(&r.as_str()), "`{r}` missing from:\n{listed}");
        }
    }
}

fn port_plan() -> (PortPlan, BTreeMap<TaskId, Ipv4Addr>, Ipv4Addr) {
    let me = Ipv4Addr::new(198, 18, 0, 11);
    let other = Ipv4Addr::new(198, 18, 0, 12);
    let t = TaskId::from_bits;
    let backends = vec![
        Backend {
            task_id: t(1),
            node_addr: me,
        },
        Backend {
            task_id: t(2),
            node_addr: other,
        },
        Backend {
            task_id: t(3),
            node_addr: me,
        },
    ];
    let port = |published, target, protocol: &str, mode: &str| PublishedPort {
        service: "a_web".into(),
        published,
        target,
        protocol: protocol.into(),
        mode: mode.into(),
        backends: backends.clone(),
    };
    let plan = PortPlan {
        peers: vec![me, other],
        ports: vec![
            port(8080, 80, "tcp", "ingress"),
            port(5353, 53, "udp", "host"),
            port(9090, 90, "udp", "ingress"),
        ],
    };
    let local = BTreeMap::from([
        (t(1), Ipv4Addr::new(172, 30, 0, 2)),
        (t(3), Ipv4Addr::new(172, 30, 0, 3)),
    ]);
    (plan, local, me)
}

#[test]
fn what_shoal_loads_is_what_nft_lists() {
    if !can_run() {
        return;
    }
    let ns = Netns::new("list");
    let ip = |d| Ipv4Addr::new(10, 0, 1, d);
    let vips = BTreeMap::from([
        (ip(2), vec![ip(5), ip(6), ip(8)]),
        (ip(3), vec![ip(7)]),
        (ip(4), vec![]),
    ]);
    let t = lb::ruleset(&vips);
    nft::load(&ns.path(), &t).expect("VIP rules load");
    assert_listed(&t, &ns.list(lb::TABLE).expect("table there"));

    // The host's table, in the same name: the load replaces the VIP table whole.
    let (plan, local, me) = port_plan();
    let t = ports::ruleset(&plan, &local, me);
    nft::load(&ns.path(), &t).expect("port rules load");
    let listed = ns.list(ports::TABLE).expect("table there");
    assert_listed(&t, &listed);
    assert!(
        !listed.contains("10.0.1.5"),
        "the old rules are gone:\n{listed}"
    );
    assert!(
        listed.contains("elements = { 198.18.0.11, 198.18.0.12 }"),
        "{listed}"
    );
    // The DSCP rewrite: loaded as two bytes (so the checksum update is aligned).
    assert!(listed.contains("meta mark 0x00005301"), "{listed}");

    nft::remove(&ns.path(), ports::TABLE).expect("remove");
    assert_eq!(ns.list(ports::TABLE), None);
    nft::remove(&ns.path(), ports::TABLE).expect("removing what is gone is fine");
}

#[test]
fn a_refused_load_names_the_rule_and_changes_nothing() {
    if !can_run() {
        return;
    }
    let ns = Netns::new("bad");
    let good = lb::ruleset(&BTreeMap::from([(
        Ipv4Addr::new(10, 0, 1, 2),
        vec![Ipv4Addr::new(10, 0, 1, 5)],
    )]));
    nft::load(&ns.path(), &good).expect("load");
    let before = ns.list(lb::TABLE).expect("table there");

    let mut bad = good.clone();
    bad.chains.push(Chain {
        name: "stray".into(),
        hook: None,
        rules: vec![Rule::new(
            vec![Match::Daddr(Ipv4Addr::new(10, 0, 1, 9))],
            vec![Action::Jump("nowhere".into())],
        )],
    });
    let err = nft::load(&ns.path(), &bad).expect_err("a jump to no chain is refused");
    let err = err.to_string();
    assert!(
        err.contains("rule `ip daddr 10.0.1.9 jump nowhere` in chain stray"),
        "{err}"
    );
    assert!(err.contains("none changed"), "{err}");
    assert_eq!(ns.list(lb::TABLE).as_deref(), Some(before.as_str()));
}

#[test]
fn a_large_table_loads_in_one_batch() {
    if !can_run() {
        return;
    }
    let ns = Netns::new("big");
    let me = Ipv4Addr::new(198, 18, 0, 11);
    let t = TaskId::from_bits;
    let mut plan = PortPlan {
        peers: (1..=200).map(|d| Ipv4Addr::new(198, 18, 0, d)).collect(),
        ports: Vec::new(),
    };
    let mut local = BTreeMap::new();
    for p in 0..300u16 {
        let backends: Vec<Backend> = (0..4u64)
            .map(|k| Backend {
                task_id: t(u128::from(p) * 4 + u128::from(k) + 1),
                node_addr: if k < 2 {
                    me
                } else {
                    Ipv4Addr::new(198, 18, 0, 12 + k as u8)
                },
            })
            .collect();
        for b in backends.iter().filter(|b| b.node_addr == me) {
            let n = local.len() as u32 + 2;
            local.insert(
                b.task_id.clone(),
                Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 30, 0, 0)) + n),
            );
        }
        plan.ports.push(PublishedPort {
            service: format!("s{p}"),
            published: 20000 + p,
            target: 80,
            protocol: if p % 2 == 0 { "tcp" } else { "udp" }.into(),
            mode: "ingress".into(),
            backends,
        });
    }
    let table = ports::ruleset(&plan, &local, me);
    nft::load(&ns.path(), &table).expect("a table of 300 ports loads");
    let listed = ns.list(ports::TABLE).expect("table there");
    assert_listed(&table, &listed);
}
