//! Scheduling over hosts and self-healing, with real containers on three managers and three
//! workers: a dead, returning or cut-off worker; a leader killed during a deploy; drain;
//! constraints, preferences, reservations and `max_replicas_per_node`; global services
//! following nodes.

use shoal_cluster_tests::*;
use std::collections::BTreeMap;
use std::time::Duration;

const APP: &str = "services:
  app:
    image: busybox
    command: [\"sleep\", \"3600\"]
    stop_grace_period: 1s
    deploy:
      replicas: 12
";

/// Running tasks of `service` per hostname.
fn spread(lab: &shoal_lab::Lab, via: &str, service: &str) -> BTreeMap<String, usize> {
    let ids = node_ids(lab, via);
    let mut out: BTreeMap<String, usize> = ids.keys().map(|h| (h.clone(), 0)).collect();
    for n in running_on(lab, via, service) {
        if let Some((h, _)) = ids.iter().find(|(_, id)| **id == n) {
            *out.get_mut(h).unwrap() += 1;
        }
    }
    out
}

/// Containers running on every host of the lab.
fn containers(lab: &shoal_lab::Lab) -> usize {
    lab.state()
        .hosts
        .iter()
        .filter(|h| !h.spare)
        .map(|h| lab.containers(&h.name))
        .sum()
}

/// Waits until `service` runs two tasks on each of the six hosts, and exactly twelve
/// containers run in the whole lab.
fn balanced(lab: &shoal_lab::Lab, via: &str, what: &str) {
    wait(what, || {
        let s = spread(lab, via, "app_app");
        s.len() == 6 && s.values().all(|n| *n == 2) && containers(lab) == 12
    });
}

#[test]
fn dead_and_cut_off_workers_are_healed_and_used_again() {
    let Some(lab) = container_lab("sc1", 3, 3) else {
        return;
    };
    let leader = new_leader(&lab, None);
    let via = lab.other_manager(&leader).unwrap();
    deploy(&lab, &via, "app", APP);
    // Managers run tasks too: two per host.
    balanced(&lab, &via, "twelve replicas, two per host");

    // A worker dies: its two replicas run elsewhere.
    lab.kill("w1").unwrap();
    wait("twelve replicas on the five live hosts", || {
        let s = spread(&lab, &via, "app_app");
        s["w1"] == 0 && s.values().sum::<usize>() == 12
    });
    assert_eq!(node_states(&lab, &via)["w1"], "down");
    // It comes back: it gets its share again (rebalancing), and no more than twelve run.
    lab.restart("w1").unwrap();
    balanced(&lab, &via, "the returning worker used again");
    for _ in 0..20 {
        assert!(running_on(&lab, &via, "app_app").len() <= 12);
        assert_eq!(containers(&lab), 12, "a duplicate container runs");
        std::thread::sleep(Duration::from_millis(100));
    }

    // A worker cut off: marked down, its tasks replaced, and it stops its own copies.
    lab.cut("w2").unwrap();
    wait("w2 down and its replicas elsewhere", || {
        let s = spread(&lab, &via, "app_app");
        node_states(&lab, &via)["w2"] == "down" && s["w2"] == 0 && s.values().sum::<usize>() == 12
    });
    wait("w2 stopping its replaced containers itself", || {
        lab.containers("w2") == 0
    });
    lab.heal("w2").unwrap();
    balanced(&lab, &via, "the healed worker used again, no duplicates");

    // The leader dies while a deploy waits for its tasks: the deploy completes.
    let file = lab.state().dir.join("late.yml");
    std::fs::write(
        &file,
        "services:\n  web:\n    image: busybox\n    command: [\"sleep\", \"3600\"]\n    stop_grace_period: 1s\n    deploy:\n      replicas: 6\n",
    )
    .unwrap();
    let leader = new_leader(&lab, None);
    let via = lab.other_manager(&leader).unwrap();
    let deploy = {
        let dir = lab.state().dir.clone();
        let via = via.clone();
        let file = file.clone();
        std::thread::spawn(move || {
            let lab = shoal_lab::Lab::open(&dir).unwrap().keep();
            lab.shoal(&via, &deploy_args(file.to_str().unwrap(), "late"))
                .unwrap()
        })
    };
    wait("the deploy written", || {
        !tasks(&lab, &via, "late_web").is_empty()
    });
    let leader_id = node_ids(&lab, &via)[&leader].clone();
    let running_ids = |service: &str| -> Vec<String> {
        tasks(&lab, &via, service)
            .into_iter()
            .filter(|t| t["desired_state"] == "running" && t["status"]["state"] == "running")
            .filter(|t| t["node_id"] != leader_id.as_str())
            .map(|t| t["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let before = running_ids("app_app");
    lab.kill(&leader).unwrap();
    let out = deploy.join().unwrap();
    assert!(
        out.status.success(),
        "the deploy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    new_leader(&lab, Some(&leader));
    wait("six late replicas on live hosts", || {
        let s = spread(&lab, &via, "late_web");
        s[&leader] == 0 && s.values().sum::<usize>() == 6
    });
    // The leader change itself rescheduled nothing: the tasks on live hosts are the same ones.
    wait("the dead leader's replicas replaced", || {
        spread(&lab, &via, "app_app").values().sum::<usize>() == 12
    });
    let after = running_ids("app_app");
    for id in &before {
        assert!(after.contains(id), "task {id} on a live host was replaced");
    }
}

#[test]
fn placement_follows_rules_and_nodes() {
    let Some(lab) = container_lab_with_spares("sc2", 3, 3, 1) else {
        return;
    };
    let via = "m1";
    let ids = node_ids(&lab, via);
    for (host, zone) in [("w1", "a"), ("w2", "b"), ("w3", "b")] {
        lab.shoal_ok(
            via,
            &[
                "node",
                "update",
                "--label-add",
                &format!("zone={zone}"),
                host,
            ],
        )
        .unwrap();
    }
    let list = lab.shoal_ok(via, &["node", "ls"]).unwrap();
    assert!(list.contains("ENGINE VERSION"), "{list}");
    let inspect: Vec<serde_json::Value> = serde_json::from_str(
        &lab.shoal_ok(via, &["--format", "json", "node", "inspect", "w1"])
            .unwrap(),
    )
    .unwrap();
    assert!(
        inspect[0]["description"]["resources"]["memory_bytes"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert_eq!(inspect[0]["spec"]["labels"]["zone"], "a");

    deploy(
        &lab,
        via,
        "p",
        "services:
  zoned:
    image: busybox
    command: [\"sleep\", \"3600\"]
    stop_grace_period: 1s
    deploy:
      replicas: 3
      placement:
        constraints: [node.labels.zone == b]
  spread:
    image: busybox
    command: [\"sleep\", \"3600\"]
    stop_grace_period: 1s
    deploy:
      replicas: 4
      placement:
        constraints: [node.role == worker]
        preferences:
          - spread: node.labels.zone
  capped:
    image: busybox
    command: [\"sleep\", \"3600\"]
    stop_grace_period: 1s
    deploy:
      replicas: 2
      placement:
        max_replicas_per_node: 1
        constraints: [node.role == worker]
  everywhere:
    image: busybox
    command: [\"sleep\", \"3600\"]
    stop_grace_period: 1s
    deploy:
      mode: global
      placement:
        constraints: [node.labels.skip != yes]
",
    );
    let zoned = spread(&lab, via, "p_zoned");
    assert_eq!(zoned["w2"] + zoned["w3"], 3, "{zoned:?}");
    let spreaded = spread(&lab, via, "p_spread");
    assert_eq!(spreaded["w1"], 2, "zone a takes half: {spreaded:?}");
    assert_eq!((spreaded["w2"], spreaded["w3"]), (1, 1), "{spreaded:?}");
    assert!(spread(&lab, via, "p_capped").values().all(|n| *n <= 1));
    assert_eq!(running_on(&lab, via, "p_everywhere").len(), 6);

    // Tasks that fit nowhere stay pending and say why.
    lab.shoal_ok(via, &["service", "scale", "p_capped=4"])
        .unwrap();
    wait("a capped task pending with its reason", || {
        tasks(&lab, via, "p_capped").iter().any(|t| {
            t["status"]["state"] == "pending"
                && t["status"]["err"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("max replicas per node reached on 3 nodes")
        })
    });
    // Deployed without --wait: it cannot converge.
    let big = lab.state().dir.join("big.yml");
    std::fs::write(
        &big,
        "services:\n  big:\n    image: busybox\n    command: [\"sleep\", \"3600\"]\n    deploy:\n      resources:\n        reservations:\n          memory: 100000G\n",
    )
    .unwrap();
    lab.shoal_ok(
        via,
        &["stack", "deploy", "-c", big.to_str().unwrap(), "big"],
    )
    .unwrap();
    wait("a task too big for every node says so", || {
        let ps = lab
            .shoal_ok(via, &["service", "ps", "big_big"])
            .unwrap_or_default();
        ps.contains("no suitable node (insufficient memory on 6 nodes)")
    });

    // Drain w3: its tasks move to w2, the zoned service never below its three replicas.
    lab.shoal_ok(via, &["node", "update", "--availability", "drain", "w3"])
        .unwrap();
    let mut lowest = usize::MAX;
    wait("w3 empty", || {
        lowest = lowest.min(running_on(&lab, via, "p_zoned").len());
        lab.containers("w3") == 0 && spread(&lab, via, "p_zoned")["w2"] == 3
    });
    assert_eq!(lowest, 3, "the zoned service dropped below its replicas");
    assert_eq!(running_on(&lab, via, "p_everywhere").len(), 5);
    lab.shoal_ok(via, &["node", "update", "--availability", "active", "w3"])
        .unwrap();

    // Pause w2: no new task goes there (tasks may still move off it); w3 takes the new ones.
    lab.shoal_ok(via, &["node", "update", "--availability", "pause", "w2"])
        .unwrap();
    let paused = spread(&lab, via, "p_zoned")["w2"];
    lab.shoal_ok(via, &["service", "scale", "p_zoned=5"])
        .unwrap();
    wait("five zoned replicas, none added on the paused node", || {
        let s = spread(&lab, via, "p_zoned");
        assert!(
            s["w2"] <= paused,
            "a task was placed on a paused node: {s:?}"
        );
        s["w2"] + s["w3"] == 5
    });
    lab.shoal_ok(via, &["node", "update", "--availability", "active", "w2"])
        .unwrap();

    // The global service follows labels, joins and leaves.
    lab.shoal_ok(via, &["node", "update", "--label-add", "skip=yes", "w1"])
        .unwrap();
    wait("the global task leaving w1", || {
        spread(&lab, via, "p_everywhere")["w1"] == 0
            && running_on(&lab, via, "p_everywhere").len() == 5
    });
    let token = lab
        .shoal_ok(via, &["cluster", "join-token", "-q", "worker"])
        .unwrap();
    let m1 = format!("{}:2377", lab.host("m1").unwrap().addr);
    lab.shoal_ok("s1", &["cluster", "join", "--token", token.trim(), &m1])
        .unwrap();
    wait("the global task on the new node", || {
        spread(&lab, via, "p_everywhere").get("s1") == Some(&1)
    });
    lab.shoal_ok("s1", &["cluster", "leave"]).unwrap();
    wait("the left node down", || {
        node_states(&lab, via)["s1"] == "down"
    });
    lab.shoal_ok(via, &["node", "rm", "s1"]).unwrap();
    wait("the global task gone with the node", || {
        !node_ids(&lab, via).contains_key("s1") && running_on(&lab, via, "p_everywhere").len() == 5
    });
    assert!(ids.len() == 6);
}

/// The leader as `host` sees it.
fn leader_seen_by(lab: &shoal_lab::Lab, host: &str) -> Option<String> {
    let addr = lab
        .status()
        .into_iter()
        .find(|s| s.host.name == host)?
        .leader?;
    let ip = addr.rsplit_once(':').map(|(h, _)| h.to_owned())?;
    lab.state()
        .hosts
        .iter()
        .find(|h| h.addr == ip)
        .map(|h| h.name.clone())
}

#[test]
fn a_deposed_leader_sends_its_agents_to_the_new_one() {
    if std::process::Command::new("nft")
        .arg("--version")
        .output()
        .is_err()
    {
        shoal_testkit::skip("`nft` is missing: apt-get install nftables");
        return;
    }
    let Some(lab) = lab("sc3", 3, 2, 0, &[]) else {
        return;
    };
    let old = new_leader(&lab, None);
    let via = lab.other_manager(&old).unwrap();
    deploy(
        &lab,
        &via,
        "d",
        "services:\n  app:\n    image: busybox\n    deploy:\n      replicas: 10\n",
    );
    let ids = node_ids(&lab, &via);
    let kept = |lab: &shoal_lab::Lab| -> Vec<String> {
        tasks(lab, &via, "d_app")
            .into_iter()
            .filter(|t| t["desired_state"] == "running" && t["status"]["state"] == "running")
            .filter(|t| t["node_id"] != ids[&old].as_str())
            .map(|t| t["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let before = kept(&lab);
    // The leader loses the other managers but not the workers: it is deposed (check-quorum)
    // while its agents can still reach it.
    let others: Vec<String> = lab
        .managers()
        .iter()
        .filter(|h| h.name != old)
        .map(|h| h.addr.clone())
        .collect();
    let set = others.join(", ");
    let rules = format!(
        "table inet cut {{ chain in {{ type filter hook input priority 0; ip saddr {{ {set} }} drop; }}; chain out {{ type filter hook output priority 0; ip daddr {{ {set} }} drop; }}; }}"
    );
    let status = lab
        .exec(&old, &["nft".to_owned(), rules])
        .expect("nft in the leader's namespace");
    assert!(status.success(), "nft refused the rules");
    wait("a new leader among the others", || {
        leader_seen_by(&lab, &via).is_some_and(|l| l != old)
    });
    // Longer than the election grace: every worker and the other manager found the new
    // leader; none is marked down, and none of their tasks was replaced.
    std::thread::sleep(std::time::Duration::from_secs(6));
    let states = node_states(&lab, &via);
    for (host, state) in &states {
        if *host != old {
            assert_eq!(state, "ready", "{host} was marked down: {states:?}");
        }
    }
    let after = kept(&lab);
    for id in &before {
        assert!(
            after.contains(id),
            "task {id} was replaced: the leader change rescheduled it"
        );
    }
    // Healed, the old leader's host is back as a follower, and ready.
    let status = lab
        .exec(
            &old,
            &["nft".to_owned(), "delete table inet cut".to_owned()],
        )
        .unwrap();
    assert!(status.success());
    wait("the old leader's host ready again", || {
        node_states(&lab, &via).values().all(|s| s == "ready")
    });
}
