//! Overlay networks through the lab, with real containers on one manager and two workers:
//! names and virtual IPs across hosts, DNS round robin, stacks isolated from each other, a dead
//! host's tasks leaving DNS and the VIP, and nothing left on a host once its last task on a
//! network is gone.

use shoal_cluster_tests::*;
use std::collections::BTreeSet;

/// `web` serves on the workers, `rr` too (DNS round robin), `client` waits on the manager:
/// every request the client makes crosses hosts.
const STACK: &str = "services:
  web:
    image: probe
    command: [\"serve\", \"8080\"]
    init: true
    deploy:
      replicas: 3
      placement:
        constraints: [node.role == worker]
  rr:
    image: probe
    command: [\"serve\", \"8080\"]
    init: true
    deploy:
      replicas: 2
      endpoint_mode: dnsrr
      placement:
        constraints: [node.role == worker]
  client:
    image: probe
    command: [\"sleep\", \"3600\"]
    init: true
    deploy:
      placement:
        constraints: [node.role == manager]
";

/// The running tasks of `service`: (task id, hostname, address).
fn endpoints(lab: &shoal_lab::Lab, service: &str) -> Vec<(String, String, String)> {
    let hosts = hostnames(lab, "m1");
    tasks(lab, "m1", service)
        .into_iter()
        .filter(|t| t["desired_state"] == "running" && t["status"]["state"] == "running")
        .map(|t| {
            let addr = t["networks"][0]["address"].as_str().unwrap_or_default();
            (
                t["id"].as_str().unwrap().to_owned(),
                hosts[t["node_id"].as_str().unwrap()].clone(),
                addr.split('/').next().unwrap().to_owned(),
            )
        })
        .collect()
}

/// What `probe dig NAME` answers inside `task`.
fn dig(lab: &shoal_lab::Lab, (task, host): (&str, &str), name: &str) -> BTreeSet<String> {
    let out = probe_in(lab, host, task, &["dig", name]);
    assert!(out.status.success(), "dig {name}: {out:?}");
    serde_json::from_slice::<Vec<String>>(&out.stdout)
        .unwrap()
        .into_iter()
        .collect()
}

/// `probe get TARGET` inside `task`: the hostname of the container that answered, or `None`
/// when the connection failed.
fn get(lab: &shoal_lab::Lab, (task, host): (&str, &str), target: &str) -> Option<String> {
    let out = probe_in(lab, host, task, &["get", target]);
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v["hostname"].as_str().map(str::to_owned)
}

fn vip(lab: &shoal_lab::Lab, service: &str) -> String {
    let s: serde_json::Value = serde_json::from_str(
        &lab.shoal_ok("m1", &["--format", "json", "service", "inspect", service])
            .unwrap(),
    )
    .unwrap();
    let addr = s[0]["virtual_ips"][0]["addr"].as_str().unwrap().to_owned();
    addr.split('/').next().unwrap().to_owned()
}

#[test]
fn services_find_and_reach_each_other_across_hosts_and_stacks_stay_apart() {
    let Some(lab) = container_lab("net", 1, 2) else {
        return;
    };
    deploy(&lab, "m1", "a", STACK);
    deploy(&lab, "m1", "b", STACK);
    let client = endpoints(&lab, "a_client").pop().expect("a client runs");
    let c = (client.0.as_str(), client.1.as_str());
    assert_eq!(c.1, "m1");

    // By name: the short name and the full name give the service's VIP.
    let web = endpoints(&lab, "a_web");
    assert_eq!(web.len(), 3);
    assert!(web.iter().all(|(_, h, _)| h != "m1"), "web runs on the workers");
    let a_vip = vip(&lab, "a_web");
    assert_eq!(dig(&lab, c, "web"), BTreeSet::from([a_vip.clone()]));
    assert_eq!(dig(&lab, c, "a_web"), BTreeSet::from([a_vip.clone()]));
    // tasks.NAME and dnsrr give the tasks' addresses.
    let web_addrs: BTreeSet<String> = web.iter().map(|(_, _, a)| a.clone()).collect();
    assert_eq!(dig(&lab, c, "tasks.web"), web_addrs);
    let rr: BTreeSet<String> = endpoints(&lab, "a_rr").into_iter().map(|e| e.2).collect();
    assert_eq!(rr.len(), 2);
    assert_eq!(dig(&lab, c, "rr"), rr);

    // Through the VIP, connections spread over every replica (30 tries: all three are hit
    // unless the random choice is broken, with odds below 1e-5).
    let want: BTreeSet<String> = web.iter().map(|(id, _, _)| id[..12].to_owned()).collect();
    let mut seen = BTreeSet::new();
    for _ in 0..30 {
        seen.insert(get(&lab, c, "web:8080").expect("the VIP answers"));
    }
    assert_eq!(seen, want, "connections through the VIP reach every replica");

    // Stack b has the same names on its own network: a's client sees only a's service, and
    // cannot reach b's tasks at all.
    let b_vip = vip(&lab, "b_web");
    assert_ne!(a_vip, b_vip);
    let b_web = endpoints(&lab, "b_web");
    let b_client = endpoints(&lab, "b_client").pop().unwrap();
    assert_eq!(
        dig(&lab, (&b_client.0, &b_client.1), "web"),
        BTreeSet::from([b_vip.clone()])
    );
    assert_eq!(
        get(&lab, c, &format!("{}:8080", b_web[0].2)),
        None,
        "a's client reached a task of stack b"
    );
    assert_eq!(get(&lab, c, &format!("{b_vip}:8080")), None);

    // A dead host's tasks leave DNS and the VIP as soon as the manager marks it down.
    let on_w2: BTreeSet<String> = web
        .iter()
        .filter(|(_, h, _)| h == "w2")
        .map(|(_, _, a)| a.clone())
        .collect();
    assert!(!on_w2.is_empty(), "web is spread over both workers");
    lab.kill("w2").unwrap();
    wait("w2's tasks to leave DNS", || {
        dig(&lab, c, "tasks.web").is_disjoint(&on_w2)
    });
    for _ in 0..10 {
        let answered = get(&lab, c, "web:8080");
        assert!(answered.is_some(), "the VIP sent a connection to a dead host");
    }

    // Nothing is left on a host once its last task on a network is gone.
    lab.shoal_ok("m1", &["stack", "rm", "a"]).unwrap();
    lab.shoal_ok("m1", &["stack", "rm", "b"]).unwrap();
    for host in ["m1", "w1"] {
        wait(&format!("{host}'s network devices to go"), || {
            network_links(&lab, host).is_empty()
        });
        let netns = lab.state().dir.join("hosts").join(host).join("data/netns");
        wait(&format!("{host}'s container namespaces to go"), || {
            std::fs::read_dir(&netns).map_or(true, |d| d.count() == 0)
        });
    }
}
