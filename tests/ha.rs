//! Highly available managers, through the lab: leaders killed while clients write, managers
//! cut off and healed, the whole control plane restarted, five managers losing two, lagging
//! managers caught up by snapshot, and join tokens.

use shoal_cluster_tests::*;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Every acknowledged write is in every listed manager's store.
fn assert_all_present(
    rt: &tokio::runtime::Runtime,
    lab: &shoal_lab::Lab,
    hosts: &[&str],
    acked: &BTreeSet<String>,
) {
    for h in hosts {
        wait(&format!("{h} to hold every acknowledged write"), || {
            names(rt, lab, h).is_ok_and(|have| {
                let have: BTreeSet<String> = have.into_iter().collect();
                acked.is_subset(&have)
            })
        });
    }
}

#[test]
fn leader_killed_while_a_client_writes_loses_no_acknowledged_write() {
    let Some(lab) = lab("ha1", 3, 0, 0, &[]) else {
        return;
    };
    let lab = Arc::new(lab);
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let leader = new_leader(&lab, None);
    // The client writes through a follower, which forwards to whoever leads.
    let via = lab.other_manager(&leader).unwrap();
    let writer = {
        let (lab, acked, stop, via) = (lab.clone(), acked.clone(), stop.clone(), via.clone());
        std::thread::spawn(move || {
            let rt = rt();
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let name = format!("n{i}");
                if write(&rt, &lab, &via, &name).is_ok() {
                    acked.lock().unwrap().insert(name);
                }
                i += 1;
            }
        })
    };
    wait("some writes", || acked.lock().unwrap().len() >= 20);
    lab.kill(&leader).unwrap();
    let before = acked.lock().unwrap().len();
    let next = new_leader(&lab, Some(&leader));
    assert_ne!(next, leader);
    wait("writes to resume after the leader died", || {
        acked.lock().unwrap().len() >= before + 20
    });
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    let rt = rt();
    let acked = acked.lock().unwrap().clone();
    let alive: Vec<&str> = lab
        .managers()
        .iter()
        .map(|h| h.name.as_str())
        .filter(|h| *h != leader)
        .collect();
    assert_all_present(&rt, &lab, &alive, &acked);
    // The old leader comes back and catches up.
    lab.restart(&leader).unwrap();
    assert_all_present(&rt, &lab, &[leader.as_str()], &acked);
}

#[test]
fn a_cut_off_manager_accepts_no_write_and_catches_up_after_healing() {
    let Some(lab) = lab("ha2", 3, 0, 0, &[]) else {
        return;
    };
    let rt = rt();
    let leader = new_leader(&lab, None);
    write_until_acked(&rt, &lab, "m1", "before");
    // Cut the leader off: the majority elects another and goes on.
    lab.cut(&leader).unwrap();
    let started = Instant::now();
    let refused = write(&rt, &lab, &leader, "lost");
    assert!(
        refused.is_err(),
        "a manager cut off from the majority accepted a write"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the refusal took {:?}",
        started.elapsed()
    );
    let message = refused.unwrap_err().to_string();
    assert!(
        message.contains("quorum") || message.contains("leader"),
        "the error does not say why: {message}"
    );
    let next = new_leader(&lab, Some(&leader));
    write_until_acked(&rt, &lab, &next, "during");
    // Reads still answer on the cut-off manager, from its own store.
    assert!(names(&rt, &lab, &leader)
        .unwrap()
        .contains(&"before".to_owned()));
    lab.heal(&leader).unwrap();
    wait("the healed manager to catch up", || {
        names(&rt, &lab, &leader).is_ok_and(|n| n.contains(&"during".to_owned()))
    });
    assert!(!names(&rt, &lab, &next)
        .unwrap()
        .contains(&"lost".to_owned()));
}

#[test]
fn all_managers_killed_and_restarted_keep_the_state() {
    let Some(lab) = lab("ha3", 3, 1, 0, &[]) else {
        return;
    };
    let rt = rt();
    let mut acked = BTreeSet::new();
    for i in 0..30 {
        let name = format!("k{i}");
        write_until_acked(&rt, &lab, "m2", &name);
        acked.insert(name);
    }
    for m in ["m1", "m2", "m3", "w1"] {
        lab.kill(m).unwrap();
    }
    for m in ["m1", "m2", "m3", "w1"] {
        lab.restart(m).unwrap();
    }
    new_leader(&lab, None);
    assert_all_present(&rt, &lab, &["m1", "m2", "m3"], &acked);
    write_until_acked(&rt, &lab, "m3", "after");
    // The worker is back in its session too.
    wait("every node ready again", || {
        lab.shoal_ok("m1", &["--format", "json", "node", "ls"])
            .ok()
            .and_then(|o| serde_json::from_str::<Vec<serde_json::Value>>(&o).ok())
            .is_some_and(|ns| ns.len() == 4 && ns.iter().all(|n| n["status"]["state"] == "ready"))
    });
}

#[test]
fn five_managers_survive_two_failures_and_twenty_leader_kills_lose_nothing() {
    let Some(lab) = lab("ha4", 5, 0, 0, &[]) else {
        return;
    };
    let rt = rt();
    let mut acked = BTreeSet::new();
    // Two managers die for good (never the same two as the later leader kills need).
    let first = new_leader(&lab, None);
    let followers: Vec<String> = lab
        .managers()
        .iter()
        .map(|h| h.name.clone())
        .filter(|h| *h != first)
        .collect();
    lab.kill(&followers[0]).unwrap();
    lab.kill(&followers[1]).unwrap();
    write_until_acked(&rt, &lab, &first, "two-down");
    acked.insert("two-down".to_owned());
    lab.restart(&followers[0]).unwrap();
    lab.restart(&followers[1]).unwrap();
    // Twenty leader kills in a row: each time a new leader, a write through it, the old
    // leader back.
    for round in 0..20 {
        let leader = new_leader(&lab, None);
        let name = format!("round{round}");
        write_until_acked(&rt, &lab, &leader, &name);
        acked.insert(name);
        lab.kill(&leader).unwrap();
        new_leader(&lab, Some(&leader));
        lab.restart(&leader).unwrap();
    }
    let all: Vec<&str> = lab.managers().iter().map(|h| h.name.as_str()).collect();
    assert_all_present(&rt, &lab, &all, &acked);
}

#[test]
fn a_lagging_manager_catches_up_by_snapshot() {
    let Some(lab) = lab("ha5", 3, 0, 0, &["--snapshot-every", "20"]) else {
        return;
    };
    let rt = rt();
    let leader = new_leader(&lab, None);
    let lagging = lab.other_manager(&leader).unwrap();
    // Down long enough for the leader to compact its log past what it has.
    lab.kill(&lagging).unwrap();
    let mut acked = BTreeSet::new();
    for i in 0..60 {
        let name = format!("s{i}");
        write_until_acked(&rt, &lab, &leader, &name);
        acked.insert(name);
    }
    lab.restart(&lagging).unwrap();
    assert_all_present(&rt, &lab, &[lagging.as_str()], &acked);
    let log = std::fs::read_to_string(
        lab.state()
            .dir
            .join("hosts")
            .join(&lagging)
            .join("shoald.log"),
    )
    .unwrap();
    assert!(
        log.matches("snapshot from the leader installed").count() >= 2,
        "{lagging} did not catch up by snapshot (at its join and after its restart):\n{log}"
    );
}

#[test]
fn join_tokens_decide_the_role_and_rotation_revokes_them() {
    let Some(lab) = lab("ha6", 1, 0, 3, &[]) else {
        return;
    };
    let m1 = lab.host("m1").unwrap().addr.clone();
    let remote = format!("{m1}:2377");
    let worker_token = lab
        .shoal_ok("m1", &["cluster", "join-token", "-q", "worker"])
        .unwrap();
    let manager_token = lab
        .shoal_ok("m1", &["cluster", "join-token", "-q", "manager"])
        .unwrap();
    assert_ne!(worker_token, manager_token);
    // A worker token makes a worker, even when the node asks to be reachable as a manager.
    let s1 = lab.host("s1").unwrap().addr.clone();
    lab.shoal_ok(
        "s1",
        &[
            "cluster",
            "join",
            "--token",
            worker_token.trim(),
            "--advertise-addr",
            &s1,
            &remote,
        ],
    )
    .unwrap();
    let out = lab.shoal("s1", &["service", "ls"]).unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("this node is a worker") && err.contains(&remote),
        "{err}"
    );
    let info: shoal_api::wire::ClusterInfo = serde_json::from_str(
        &lab.shoal_ok("m1", &["--format", "json", "cluster", "info"])
            .unwrap(),
    )
    .unwrap();
    assert_eq!(info.raft.voters.len(), 1, "a worker token added a voter");
    // A manager token makes a voter.
    let s2 = lab.host("s2").unwrap().addr.clone();
    lab.shoal_ok(
        "s2",
        &[
            "cluster",
            "join",
            "--token",
            manager_token.trim(),
            "--advertise-addr",
            &s2,
            &remote,
        ],
    )
    .unwrap();
    let info: shoal_api::wire::ClusterInfo = serde_json::from_str(
        &lab.shoal_ok("s2", &["--format", "json", "cluster", "info"])
            .unwrap(),
    )
    .unwrap();
    assert_eq!(info.raft.voters.len(), 2);
    // A rotated token stops working at once.
    lab.shoal_ok("m1", &["cluster", "join-token", "--rotate", "worker"])
        .unwrap();
    let s3 = lab.host("s3").unwrap().addr.clone();
    let out = lab
        .shoal(
            "s3",
            &[
                "cluster",
                "join",
                "--token",
                worker_token.trim(),
                "--advertise-addr",
                &s3,
                &remote,
            ],
        )
        .unwrap();
    assert!(!out.status.success(), "a rotated token still works");
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid join token"));
    // Nodes: m1, s1 (worker), s2 (manager).
    wait("three nodes ready", || {
        lab.shoal_ok("m1", &["--format", "json", "node", "ls"])
            .ok()
            .and_then(|o| serde_json::from_str::<Vec<serde_json::Value>>(&o).ok())
            .is_some_and(|ns| {
                ns.iter()
                    .filter(|n| n["status"]["state"] == "ready")
                    .count()
                    == 3
            })
    });
}

#[test]
fn without_quorum_writes_fail_fast_reads_answer_and_force_new_cluster_recovers() {
    let Some(lab) = lab("ha7", 3, 0, 0, &[]) else {
        return;
    };
    let rt = rt();
    write_until_acked(&rt, &lab, "m1", "kept");
    lab.kill("m2").unwrap();
    lab.kill("m3").unwrap();
    // Give the survivor time to notice (check_quorum) if it led.
    std::thread::sleep(Duration::from_secs(3));
    let started = Instant::now();
    let err = write(&rt, &lab, "m1", "refused").unwrap_err().to_string();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "the refusal took {took:?}");
    assert!(err.contains("quorum"), "the error does not say why: {err}");
    assert!(
        names(&rt, &lab, "m1").unwrap().contains(&"kept".to_owned()),
        "reads must still answer"
    );
    // The other two are gone for good: m1 starts a one-manager cluster with the state it has.
    lab.restart_with("m1", &["--force-new-cluster"]).unwrap();
    write_until_acked(&rt, &lab, "m1", "after");
    let have = names(&rt, &lab, "m1").unwrap();
    assert!(have.contains(&"kept".to_owned()) && have.contains(&"after".to_owned()));
    let info: shoal_api::wire::ClusterInfo = serde_json::from_str(
        &lab.shoal_ok("m1", &["--format", "json", "cluster", "info"])
            .unwrap(),
    )
    .unwrap();
    assert_eq!(info.raft.voters, vec![info.raft.id]);
    wait("the managers list to name m1 alone", || {
        lab.shoal_ok("m1", &["--format", "json", "cluster", "info"])
            .ok()
            .and_then(|o| serde_json::from_str::<shoal_api::wire::ClusterInfo>(&o).ok())
            .is_some_and(|i| i.raft.managers.len() == 1)
    });
    // A restart without the flag keeps the new configuration.
    lab.restart("m1").unwrap();
    write_until_acked(&rt, &lab, "m1", "again");
}

#[test]
fn promote_and_demote_move_a_node_in_and_out_of_the_voters() {
    let Some(lab) = lab("ha8", 3, 1, 0, &[]) else {
        return;
    };
    let voters = |host: &str| -> usize {
        serde_json::from_str::<shoal_api::wire::ClusterInfo>(
            &lab.shoal_ok(host, &["--format", "json", "cluster", "info"])
                .unwrap(),
        )
        .unwrap()
        .raft
        .voters
        .len()
    };
    lab.shoal_ok("m1", &["node", "promote", "w1"]).unwrap();
    wait("w1 to become a voter", || {
        lab.shoal("w1", &["--format", "json", "cluster", "info"])
            .is_ok_and(|o| o.status.success())
    });
    wait("four voters", || voters("m1") == 4);
    lab.shoal_ok("m1", &["node", "demote", "m2"]).unwrap();
    wait("three voters", || voters("m1") == 3);
    wait("m2 to serve as a worker", || {
        lab.shoal("m2", &["service", "ls"])
            .is_ok_and(|o| String::from_utf8_lossy(&o.stderr).contains("this node is a worker"))
    });
    // With m3 down, demoting w1 would leave m1 and m3, one reachable: refused.
    lab.kill("m3").unwrap();
    wait("m3 seen down", || {
        lab.shoal_ok("m1", &["node", "ls"])
            .is_ok_and(|o| o.lines().any(|l| l.contains("m3") && l.contains("down")))
    });
    let out = lab.shoal("m1", &["node", "demote", "w1"]).unwrap();
    assert!(
        !out.status.success(),
        "a demotion that loses the quorum was accepted"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("quorum"));
    // A live node is not removed without --force; a manager not at all.
    let out = lab.shoal("m1", &["node", "rm", "m2"]).unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not down"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = lab.shoal("m1", &["node", "rm", "--force", "m1"]).unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("demote it first"));
    lab.shoal_ok("m1", &["node", "rm", "--force", "m2"])
        .unwrap();
    assert!(!lab
        .shoal_ok("m1", &["node", "ls"])
        .unwrap()
        .contains(" m2 "));
}

#[test]
fn stack_rm_then_deploy_thirty_times_keeps_every_service() {
    let Some(lab) = lab("ha9", 3, 1, 0, &[]) else {
        return;
    };
    let file = lab.state().dir.join("two.yml");
    std::fs::write(
        &file,
        "services:\n  a:\n    image: busybox\n    deploy: {replicas: 2}\n  b:\n    image: busybox\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();
    for round in 0..30 {
        // Through a follower, as a user would on any manager.
        lab.shoal_ok("m2", &deploy_args(file, "two"))
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        let ls = lab.shoal_ok("m2", &["service", "ls"]).unwrap();
        assert!(
            ls.contains("two_a") && ls.contains("two_b"),
            "round {round}: a declared service is missing:\n{ls}"
        );
        lab.shoal_ok("m2", &["stack", "rm", "two"]).unwrap();
    }
}

#[test]
fn cluster_leave_for_a_worker_and_the_last_manager() {
    let Some(lab) = lab("ha10", 1, 1, 0, &[]) else {
        return;
    };
    lab.shoal_ok("w1", &["cluster", "leave"]).unwrap();
    let out = lab.shoal("w1", &["service", "ls"]).unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("not part of a cluster"));
    wait("w1 seen down once its agent stopped", || {
        lab.shoal_ok("m1", &["node", "ls"])
            .is_ok_and(|o| o.lines().any(|l| l.contains(" w1 ") && l.contains("down")))
    });
    // The last manager leaves only when forced: that ends the cluster.
    let out = lab.shoal("m1", &["cluster", "leave"]).unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("last manager"));
    lab.shoal_ok("m1", &["cluster", "leave", "--force"])
        .unwrap();
    let out = lab.shoal("m1", &["service", "ls"]).unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("not part of a cluster"));
}

#[test]
fn demoting_the_leader_hands_over_and_every_node_stays_ready() {
    let Some(lab) = lab("ha11", 3, 1, 0, &[]) else {
        return;
    };
    let rt = rt();
    let leader = new_leader(&lab, None);
    lab.shoal_ok(&leader, &["node", "demote", &leader]).unwrap();
    let next = new_leader(&lab, Some(&leader));
    write_until_acked(&rt, &lab, &next, "after-demotion");
    // Every agent finds the new leader, also those whose list of managers was stale.
    wait("every node ready under the new leader", || {
        lab.shoal_ok(&next, &["--format", "json", "node", "ls"])
            .ok()
            .and_then(|o| serde_json::from_str::<Vec<serde_json::Value>>(&o).ok())
            .is_some_and(|ns| ns.len() == 4 && ns.iter().all(|n| n["status"]["state"] == "ready"))
    });
    // And they stay so past the time a silent node is marked down.
    std::thread::sleep(Duration::from_secs(3));
    let nodes: Vec<serde_json::Value> = serde_json::from_str(
        &lab.shoal_ok(&next, &["--format", "json", "node", "ls"])
            .unwrap(),
    )
    .unwrap();
    assert!(
        nodes.iter().all(|n| n["status"]["state"] == "ready"),
        "{nodes:#?}"
    );
}

#[test]
fn lab_hosts_reach_nothing_outside_and_down_leaves_nothing_behind() {
    let Some(lab) = lab("ha12", 1, 1, 0, &[]) else {
        return;
    };
    for h in ["m1", "w1"] {
        let ns = shoal_lab::net::netns("ha12", h);
        let out = std::process::Command::new("ip")
            .args(["-n", &ns, "route", "show", "table", "all"])
            .output()
            .unwrap();
        let routes = String::from_utf8_lossy(&out.stdout);
        assert!(
            !routes.contains("default"),
            "{h} has a default route:\n{routes}"
        );
        for line in routes
            .lines()
            .filter(|l| !l.starts_with("local") && !l.contains("dev lo"))
        {
            assert!(
                line.starts_with("198.18.0.")
                    || line.starts_with("broadcast 198.18.0.")
                    || line.contains("fe80::")
                    || line.starts_with("multicast"),
                "{h} routes beyond the lab: {line}"
            );
        }
    }
    let dir = lab.state().dir.clone();
    lab.down().unwrap();
    let netns = String::from_utf8_lossy(
        &std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    assert!(!netns.contains("shl-ha12-"), "namespaces left: {netns}");
    assert!(!dir.exists(), "{} left", dir.display());
    let cgroups = [
        "/sys/fs/cgroup/pids/shoal-lab-ha12",
        "/sys/fs/cgroup/shoal-lab-ha12",
    ];
    for c in cgroups {
        assert!(!std::path::Path::new(c).exists(), "{c} left");
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(dir.to_str().unwrap()),
        "mounts left under {}",
        dir.display()
    );
}

#[test]
fn a_manager_leaves_the_voters_and_a_forced_leave_works_without_quorum() {
    let Some(lab) = lab("ha13", 3, 0, 0, &[]) else {
        return;
    };
    let voters = |host: &str| -> Option<usize> {
        lab.shoal_ok(host, &["--format", "json", "cluster", "info"])
            .ok()
            .and_then(|o| serde_json::from_str::<shoal_api::wire::ClusterInfo>(&o).ok())
            .map(|i| i.raft.voters.len())
    };
    lab.shoal_ok("m3", &["cluster", "leave"]).unwrap();
    wait("two voters left", || voters("m1") == Some(2));
    let out = lab.shoal("m3", &["service", "ls"]).unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not part of a cluster"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // With m2 gone, m1 leaving would leave one voter of two unreachable: refused, unless forced.
    lab.kill("m2").unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let out = lab.shoal("m1", &["cluster", "leave"]).unwrap();
    assert!(
        !out.status.success(),
        "a leave that loses the quorum was accepted"
    );
    lab.shoal_ok("m1", &["cluster", "leave", "--force"])
        .unwrap();
    let out = lab.shoal("m1", &["service", "ls"]).unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("not part of a cluster"));
}

/// `shoal cluster unlock` on `host`, the key given on stdin.
fn unlock(lab: &shoal_lab::Lab, host: &str, key: &str) -> std::process::Output {
    use std::io::Write;
    let bin = lab.state().bin_dir.join("shoal");
    let mut child = std::process::Command::new(&bin)
        .arg("-H")
        .arg(format!("unix://{}", lab.socket(host).display()))
        .args(["cluster", "unlock"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{key}").unwrap();
    child.wait_with_output().unwrap()
}

/// A manager's data key file, as it is on disk.
fn data_key(lab: &shoal_lab::Lab, host: &str) -> Vec<u8> {
    std::fs::read(
        lab.state()
            .dir
            .join(format!("hosts/{host}/data/raft/raft.key")),
    )
    .unwrap_or_default()
}

fn node_key(lab: &shoal_lab::Lab, host: &str) -> String {
    std::fs::read_to_string(
        lab.state()
            .dir
            .join(format!("hosts/{host}/data/certificates/node.key")),
    )
    .unwrap_or_default()
}

/// Whether a TLS handshake with `host`'s cluster port completes, tried from `from` (no client
/// certificate: a server that has certificates gets as far as asking for one).
fn cluster_port_handshakes(lab: &shoal_lab::Lab, from: &str, host: &str) -> bool {
    let addr = &lab.host(host).unwrap().addr;
    let script = format!(
        "import socket, ssl, json\nctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)\n\
         ctx.check_hostname = False\nctx.verify_mode = ssl.CERT_NONE\n\
         try:\n    s = ctx.wrap_socket(socket.create_connection(('{addr}', 2377), timeout=3))\n    \
         print(json.dumps(True))\nexcept (OSError, ssl.SSLError):\n    print(json.dumps(False))\n"
    );
    python_in(lab, from, &script) == Some(serde_json::Value::Bool(true))
}

#[test]
fn after_autolock_a_restarted_manager_serves_nothing_until_unlocked() {
    let Some(lab) = lab("hal", 3, 0, 0, &[]) else {
        return;
    };
    let rt = rt();
    let mut acked = BTreeSet::new();
    for i in 0..5 {
        let name = format!("a{i}");
        write_until_acked(&rt, &lab, "m1", &name);
        acked.insert(name);
    }
    let out = lab
        .shoal_ok("m1", &["cluster", "update", "--autolock", "true"])
        .unwrap();
    assert!(out.contains("SHLKEY-1-"), "{out}");
    let key = lab
        .shoal_ok("m2", &["cluster", "unlock-key", "-q"])
        .unwrap()
        .trim()
        .to_owned();
    assert!(out.contains(&key), "{out}");
    assert!(lab
        .shoal_ok("m3", &["cluster", "info"])
        .unwrap()
        .contains("Autolock:     on"));
    for m in ["m1", "m2", "m3"] {
        wait(&format!("{m}'s data key sealed"), || {
            data_key(&lab, m).starts_with(b"SHLK1")
        });
        // The node's TLS key too, as Swarm seals it.
        wait(&format!("{m}'s node key sealed"), || {
            let k = node_key(&lab, m);
            k.contains("SHOAL SEALED KEY") && !k.contains("PRIVATE KEY")
        });
    }
    assert!(cluster_port_handshakes(&lab, "m1", "m2"));

    // Restarted, m2 serves nothing until it is unlocked; the others go on without it.
    lab.restart("m2").unwrap();
    let out = lab.shoal("m2", &["cluster", "info"]).unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("this manager is locked"), "{err}");
    let out = lab.shoal("m2", &["service", "ls"]).unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("locked"),
        "{out:?}"
    );
    write_until_acked(&rt, &lab, "m1", "while-locked");
    acked.insert("while-locked".into());
    // Without its node key it has no certificate: its cluster port shakes no hand.
    assert!(!cluster_port_handshakes(&lab, "m1", "m2"));
    let out = unlock(&lab, "m2", "not-a-key");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not an unlock key"),
        "{out:?}"
    );
    let wrong = format!("SHLKEY-1-{}", "ab".repeat(32));
    let out = unlock(&lab, "m2", &wrong);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("invalid unlock key"),
        "{out:?}"
    );
    assert!(lab.shoal("m2", &["cluster", "info"]).unwrap().status.code() != Some(0));
    let out = unlock(&lab, "m2", &key);
    assert!(out.status.success(), "{out:?}");
    assert_all_present(&rt, &lab, &["m2"], &acked);
    assert!(cluster_port_handshakes(&lab, "m1", "m2"));

    // A rotated key: managers reseal under it, and the old one no longer unlocks.
    let before = data_key(&lab, "m3");
    let rotated = lab
        .shoal_ok("m1", &["cluster", "unlock-key", "--rotate", "-q"])
        .unwrap()
        .trim()
        .to_owned();
    assert_ne!(rotated, key);
    wait("m3's data key resealed", || data_key(&lab, "m3") != before);
    lab.restart("m3").unwrap();
    let out = unlock(&lab, "m3", &key);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("invalid unlock key"),
        "{out:?}"
    );
    let out = unlock(&lab, "m3", &rotated);
    assert!(out.status.success(), "{out:?}");
    assert_all_present(&rt, &lab, &["m3"], &acked);

    // Autolock off: the key files are plain again and a restart needs nothing.
    lab.shoal_ok("m1", &["cluster", "update", "--autolock", "false"])
        .unwrap();
    for m in ["m1", "m2", "m3"] {
        wait(&format!("{m}'s data key plain"), || {
            let k = data_key(&lab, m);
            !k.is_empty() && !k.starts_with(b"SHLK1")
        });
        wait(&format!("{m}'s node key plain"), || {
            node_key(&lab, m).contains("PRIVATE KEY")
        });
    }
    lab.restart("m1").unwrap();
    assert_all_present(&rt, &lab, &["m1"], &acked);
    // m1 reads its own store, which catches up with the log after the restart.
    wait("m1 says autolock is off", || {
        let out = lab.shoal("m1", &["cluster", "unlock-key"]).unwrap();
        String::from_utf8_lossy(&out.stderr).contains("autolock is off")
    });
}
