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
    networks: [default, side]
    deploy:
      placement:
        constraints: [node.role == manager]
  aside:
    image: probe
    command: [\"serve\", \"8080\"]
    init: true
    networks:
      side:
        aliases: [sidekick]
networks:
  side:
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

/// The VIP rules in the namespace of `task`'s container.
fn vip_rules(lab: &shoal_lab::Lab, (task, host): (&str, &str)) -> String {
    let out = in_container_netns(lab, host, task, &["nft", "list", "table", "ip", "shoal"]);
    String::from_utf8_lossy(&out.stdout).into_owned()
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
    assert!(
        web.iter().all(|(_, h, _)| h != "m1"),
        "web runs on the workers"
    );
    let a_vip = vip(&lab, "a_web");
    assert_eq!(dig(&lab, c, "web"), BTreeSet::from([a_vip.clone()]));
    assert_eq!(dig(&lab, c, "a_web"), BTreeSet::from([a_vip.clone()]));
    // tasks.NAME and dnsrr give the tasks' addresses.
    let web_addrs: BTreeSet<String> = web.iter().map(|(_, _, a)| a.clone()).collect();
    // The manager's views reach the hosts a moment after the tasks run: poll, then compare.
    wait("tasks.web to list every web task", || {
        dig(&lab, c, "tasks.web") == web_addrs
    });
    let rr: BTreeSet<String> = endpoints(&lab, "a_rr").into_iter().map(|e| e.2).collect();
    assert_eq!(rr.len(), 2);
    wait("rr to list both of its tasks", || dig(&lab, c, "rr") == rr);

    // The client is on two networks: an interface on each, and the names of both.
    let out = in_container_netns(&lab, "m1", c.0, &["ip", "-o", "-4", "addr", "show"]);
    let ifaces: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_owned))
        .collect();
    assert_eq!(
        ifaces,
        ["eth0", "eth1", "eth2", "lo"].map(String::from).into(),
        "lo, two overlays and the gateway bridge"
    );
    assert_eq!(
        dig(&lab, c, "sidekick"),
        BTreeSet::from([vip(&lab, "a_aside")])
    );
    assert!(get(&lab, c, "sidekick:8080").is_some());
    assert!(get(&lab, c, "aside:8080").is_some());
    // web is not on `side`: from aside's own container, `web` is unknown.
    let aside = endpoints(&lab, "a_aside").pop().unwrap();
    assert!(dig(&lab, (&aside.0, &aside.1), "web").is_empty());

    // The client's VIP rules follow the running tasks (loaded as the manager's views arrive).
    wait("the client's VIP rules to list every web task", || {
        let rules = vip_rules(&lab, c);
        web_addrs.iter().all(|a| rules.contains(a.as_str()))
    });
    // Through the VIP, connections spread over every replica (30 tries: all three are hit
    // unless the random choice is broken, with odds below 1e-5).
    let want: BTreeSet<String> = web.iter().map(|(id, _, _)| id[..12].to_owned()).collect();
    let mut seen = BTreeSet::new();
    for _ in 0..30 {
        seen.insert(get(&lab, c, "web:8080").expect("the VIP answers"));
    }
    assert_eq!(
        seen, want,
        "connections through the VIP reach every replica"
    );
    // The task sees the client's own address through the VIP (translated in the client's
    // namespace, the connection keeps its source).
    let own: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .map(|a| a.split('/').next().unwrap().to_owned())
        .collect();
    let seen_as = probe_in(&lab, c.1, c.0, &["get", "web:8080"]);
    let seen_as: serde_json::Value = serde_json::from_slice(&seen_as.stdout).unwrap();
    assert!(
        own.contains(seen_as["client"].as_str().unwrap()),
        "{seen_as} from {own:?}"
    );
    // A task reaching its own service's VIP is answered, by itself too (over the loopback).
    let w = &web[0];
    for _ in 0..10 {
        assert!(get(&lab, (&w.0, &w.1), "web:8080").is_some());
    }

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

    // The daemon of w1 crashes and comes back: its containers keep their interfaces, the new
    // daemon answers their DNS again, and nothing is made twice.
    let on_w1 = web
        .iter()
        .find(|(_, h, _)| h == "w1")
        .expect("web runs on w1")
        .clone();
    let links = network_links(&lab, "w1");
    lab.restart_daemon("w1").unwrap();
    wait("w1's containers to resolve names again", || {
        let out = probe_in(&lab, "w1", &on_w1.0, &["dig", "tasks.web"]);
        serde_json::from_slice::<Vec<String>>(&out.stdout)
            .is_ok_and(|a| a.into_iter().collect::<BTreeSet<_>>() == web_addrs)
    });
    assert_eq!(
        network_links(&lab, "w1"),
        links,
        "the restart changed w1's devices"
    );
    assert_eq!(endpoints(&lab, "a_web").len(), 3, "no task was replaced");
    for _ in 0..6 {
        assert!(get(&lab, c, "web:8080").is_some());
    }

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
    wait("w2's tasks to leave the client's VIP rules", || {
        let rules = vip_rules(&lab, c);
        on_w2.iter().all(|a| !rules.contains(a.as_str()))
    });
    for _ in 0..10 {
        let answered = get(&lab, c, "web:8080");
        assert!(
            answered.is_some(),
            "the VIP sent a connection to a dead host"
        );
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

/// `web` publishes 9090 on the routing mesh, and its port declared without `published` on the
/// one the cluster chooses (30000, the first of the dynamic range), and runs on w1 and w2;
/// `edge` publishes 9191 in host mode on w1 only; `out` can leave its network, `shut` is on an
/// internal one.
const PORTS: &str = "services:
  web:
    image: probe
    command: [\"serve\", \"8080\"]
    init: true
    ports:
      - \"9090:8080\"
      - \"8080\"
    deploy:
      replicas: 2
      placement:
        constraints: [node.role == worker]
        max_replicas_per_node: 1
  edge:
    image: probe
    command: [\"serve\", \"8080\"]
    init: true
    ports:
      - target: 8080
        published: 9191
        mode: host
    deploy:
      placement:
        constraints: [node.hostname == w1]
  echo:
    image: probe
    command: [\"udpserve\", \"5353\"]
    init: true
    ports:
      - \"9393:5353/udp\"
    deploy:
      placement:
        constraints: [node.hostname == w1]
  out:
    image: probe
    command: [\"sleep\", \"3600\"]
    init: true
    deploy:
      placement:
        constraints: [node.hostname == w2]
  shut:
    image: probe
    command: [\"sleep\", \"3600\"]
    init: true
    networks: [private]
    deploy:
      placement:
        constraints: [node.hostname == w2]
networks:
  private:
    internal: true
";

/// One HTTP GET of `addr` from a lab host's namespace (as a client outside any container
/// would): the probe's report, or `None` when the connection fails.
fn get_from_host(lab: &shoal_lab::Lab, host: &str, addr: &str) -> Option<serde_json::Value> {
    let script = format!(
        "import socket\ns = socket.create_connection(('{}', {}), timeout=3)\n\
         s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')\nd = b''\nwhile True:\n    c = s.recv(65536)\n    \
         if not c: break\n    d += c\nprint(d.split(b'\\r\\n\\r\\n', 1)[1].decode())\n",
        addr.split(':').next().unwrap(),
        addr.split(':').nth(1).unwrap()
    );
    python_in(lab, host, &script)
}

/// One UDP datagram to `addr` from a lab host's namespace: the probe's answer, or `None`.
fn udp_from_host(lab: &shoal_lab::Lab, host: &str, addr: &str) -> Option<serde_json::Value> {
    let (ip, port) = addr.split_once(':').unwrap();
    let script = format!(
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.settimeout(3)\n\
         s.sendto(b'ping', ('{ip}', {port}))\nprint(s.recv(512).decode())\n"
    );
    python_in(lab, host, &script)
}

#[test]
fn published_ports_answer_where_their_mode_says_and_internal_networks_stay_inside() {
    let Some(lab) = container_lab("port", 1, 2) else {
        return;
    };
    deploy(&lab, "m1", "p", PORTS);
    let addr = |h: &str| lab.host(h).unwrap().addr.clone();
    let (m1, w1, w2) = (addr("m1"), addr("w1"), addr("w2"));
    let web: BTreeSet<String> = endpoints(&lab, "p_web")
        .into_iter()
        .map(|(id, _, _)| id[..12].to_owned())
        .collect();
    assert_eq!(web.len(), 2);

    // service ls shows what is published.
    let ls = lab.shoal_ok("m1", &["service", "ls"]).unwrap();
    assert!(ls.contains("*:9090->8080/tcp"), "{ls}");
    assert!(ls.contains("9191->8080/tcp (host)"), "{ls}");
    assert!(ls.contains("*:30000->8080/tcp"), "{ls}");

    // Every host learns the published ports with its next assignment answer.
    for via in [&m1, &w1, &w2] {
        wait(&format!("{via}:9090 to answer"), || {
            get_from_host(&lab, "m1", &format!("{via}:9090")).is_some()
        });
    }
    // Ingress: every host answers, m1 too (it runs no task), and connections reach both
    // tasks. A task on the host that took the connection sees the client's address; one on
    // another host sees the forwarding host's.
    let web_tasks = endpoints(&lab, "p_web");
    for via in [&m1, &w1, &w2] {
        let mut seen = BTreeSet::new();
        // Until both tasks served through this host (each answer is checked as it comes).
        wait(&format!("both tasks to serve through {via}"), || {
            let r = get_from_host(&lab, "m1", &format!("{via}:9090"))
                .unwrap_or_else(|| panic!("{via}:9090 did not answer"));
            let served_by = r["hostname"].as_str().unwrap().to_owned();
            let client = r["client"].as_str().unwrap();
            let local = web_tasks
                .iter()
                .any(|(id, h, _)| id.starts_with(&served_by) && addr(h) == *via);
            if local {
                assert_eq!(client, m1, "a local task sees the client's address");
            } else {
                assert_eq!(
                    client, *via,
                    "a forwarded connection comes from the forwarder"
                );
            }
            seen.insert(served_by);
            seen == web
        });
    }

    // The port the cluster chose answers on every host too.
    for via in [&m1, &w1, &w2] {
        wait(&format!("{via}:30000 to answer"), || {
            get_from_host(&lab, "m1", &format!("{via}:30000")).is_some()
        });
    }

    // UDP through the mesh: every host answers, w1's task serves.
    let echo = endpoints(&lab, "p_echo").pop().unwrap();
    for via in [&m1, &w1, &w2] {
        wait(&format!("{via}:9393/udp to answer"), || {
            udp_from_host(&lab, "m1", &format!("{via}:9393")).is_some()
        });
        let r = udp_from_host(&lab, "m1", &format!("{via}:9393"))
            .unwrap_or_else(|| panic!("{via}:9393/udp did not answer"));
        assert!(echo.0.starts_with(r["hostname"].as_str().unwrap()));
        let expected = if *via == w1 {
            m1.as_str()
        } else {
            via.as_str()
        };
        assert_eq!(r["client"], expected);
    }

    // Host mode: only w1, where edge runs, answers; the task sees the client's address.
    let r = get_from_host(&lab, "m1", &format!("{w1}:9191")).expect("w1 answers on 9191");
    assert_eq!(r["client"], m1.as_str());
    assert!(get_from_host(&lab, "m1", &format!("{w2}:9191")).is_none());
    assert!(get_from_host(&lab, "m1", &format!("{m1}:9191")).is_none());

    // A container on a normal network reaches outside it (here: m1's published port); one on
    // an internal network reaches nothing outside.
    let out = endpoints(&lab, "p_out").pop().unwrap();
    let shut = endpoints(&lab, "p_shut").pop().unwrap();
    assert!(
        get(&lab, (&out.0, &out.1), &format!("{m1}:9090")).is_some(),
        "a container on a normal network reaches outside"
    );
    assert_eq!(
        get(&lab, (&shut.0, &shut.1), &format!("{m1}:9090")),
        None,
        "a container on an internal network reached outside"
    );
    assert_eq!(get(&lab, (&shut.0, &shut.1), &format!("{w2}:9090")), None);

    // Two containers of one host do not meet on its gateway bridge (its ports are isolated),
    // only on their overlays; and frames shoal's bridges forward skip the host's netfilter.
    let w2_web = web_tasks.iter().find(|(_, h, _)| h == "w2").unwrap();
    let addrs = in_container_netns(&lab, "w2", &w2_web.0, &["ip", "-4", "-o", "addr"]);
    let addrs = String::from_utf8_lossy(&addrs.stdout);
    let gw = addrs
        .split_whitespace()
        .find(|a| a.starts_with("172.30."))
        .unwrap_or_else(|| panic!("no gateway address: {addrs}"))
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(get(&lab, (&out.0, &out.1), &format!("{gw}:8080")), None);
    assert!(get(&lab, (&out.0, &out.1), &format!("{}:8080", w2_web.2)).is_some());
    let nf_call = "/proc/sys/net/bridge/bridge-nf-call-iptables";
    if std::path::Path::new(nf_call).exists() {
        let netns = format!("shl-{}-w2", lab.state().name);
        let on = std::process::Command::new("ip")
            .args(["netns", "exec", &netns, "cat", nf_call])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&on.stdout).trim(), "0", "{on:?}");
    }

    // A second stack may not take a published port.
    let file = lab.state().dir.join("clash.yml");
    std::fs::write(
        &file,
        "services:\n  other:\n    image: probe\n    ports: [\"9090:80\"]\n",
    )
    .unwrap();
    let out = lab
        .shoal(
            "m1",
            &["stack", "deploy", "-c", file.to_str().unwrap(), "q"],
        )
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("port '9090/tcp' is already in use by service \"p_web\""),
        "{err}"
    );

    lab.shoal_ok("m1", &["stack", "rm", "p"]).unwrap();
    for host in ["m1", "w1", "w2"] {
        wait(&format!("{host}'s network devices to go"), || {
            network_links(&lab, host).is_empty()
        });
    }
}

const CHURN: &str = "services:
  a:
    image: probe
    command: [\"sleep\", \"3600\"]
    init: true
    networks: [churn]
    deploy:
      replicas: 3
  b:
    image: probe
    command: [\"sleep\", \"3600\"]
    init: true
    networks: [churn]
    deploy:
      replicas: 2
networks:
  churn:
    external: true
";

/// Addresses of the unfinished tasks on the network, with a duplicate check.
fn live_addresses(lab: &shoal_lab::Lab) -> usize {
    let rt = rt();
    let tasks: Vec<serde_json::Value> = rt.block_on(lab.client("m1").get("/v1/tasks")).unwrap();
    let mut seen = BTreeSet::new();
    for t in tasks {
        let finished = ["complete", "shutdown", "failed", "rejected", "orphaned"]
            .contains(&t["status"]["state"].as_str().unwrap_or(""));
        if finished {
            continue;
        }
        for a in t["networks"].as_array().into_iter().flatten() {
            let addr = a["address"].as_str().unwrap().to_owned();
            assert!(seen.insert(addr.clone()), "{addr} held by two live tasks");
        }
    }
    seen.len()
}

#[test]
fn addresses_never_collide_under_churn_and_all_come_back() {
    let Some(lab) = container_lab("churn", 1, 1) else {
        return;
    };
    lab.shoal_ok("m1", &["network", "create", "churn"]).unwrap();
    let file = lab.state().dir.join("churn.yml");
    std::fs::write(&file, CHURN).unwrap();
    let file = file.to_str().unwrap();
    for round in 0..50 {
        lab.shoal_ok("m1", &deploy_args(file, "c")).unwrap();
        if round % 10 == 0 {
            live_addresses(&lab);
        }
        lab.shoal_ok("m1", &["stack", "rm", "c"]).unwrap();
    }
    wait("every task of the churned stack to go", || {
        live_addresses(&lab) == 0
    });
    wait("every address of the network to be free", || {
        let info: serde_json::Value = serde_json::from_str(
            &lab.shoal_ok("m1", &["network", "inspect", "churn"])
                .unwrap(),
        )
        .unwrap();
        info[0]["addresses_in_use"] == 0
    });
    wait("the hosts' network devices to go", || {
        network_links(&lab, "m1").is_empty() && network_links(&lab, "w1").is_empty()
    });
    lab.shoal_ok("m1", &["network", "rm", "churn"]).unwrap();
}
