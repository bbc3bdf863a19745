//! `shoal-bench overlay` (root): the data plane of overlay networks, in a lab of one manager
//! and two workers with real containers.
//!
//! - iperf3 TCP throughput, container on w2 → container on w1 over the overlay (iperf3 of the
//!   host run in the containers' network namespaces), against w2 → w1 on the underlay, in the
//!   same run, alternated: seven pairs of 5-second runs, the median of the pairs' ratios;
//! - TCP connection set-up from a container, through a service's VIP (nftables DNAT in the
//!   client's namespace) and straight to one of its tasks, 2,000 connects each, median and p99;
//! - a one-host lab: a 100-replica stack whose tasks are all on an overlay network, from deploy
//!   until 100 run, median of three (each task gets a namespace, veth, address, resolver and
//!   VIP rules); with `--swarm`, Docker Swarm's `service create --network` on an overlay network
//!   in the same run.

use shoal_api::wire::*;
use shoal_client::Client;
use shoal_lab::{Lab, LabConfig};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::process::Command;
use std::time::{Duration, Instant};

/// iperf3 pairs (underlay run, overlay run) measured.
const PAIRS: usize = 7;

const STACK: &str = "services:
  srv:
    image: probe
    command: [\"serve\", \"8080\"]
    init: true
    deploy:
      replicas: 2
      placement:
        constraints: [node.hostname == w1]
  cli:
    image: probe
    command: [\"sleep\", \"3600\"]
    init: true
    deploy:
      placement:
        constraints: [node.hostname == w2]
";

fn quiet_lab(name: &str, managers: usize, workers: usize) -> Lab {
    tokio::task::block_in_place(|| {
        let mut config = LabConfig::new(name, managers, workers);
        config.log = "warn".into();
        Lab::up(config)
    })
    .expect("lab up")
}

/// (task id, hostname, overlay address) of the running tasks of `service`.
async fn tasks(c: &Client, service: &str) -> Vec<(String, String, Ipv4Addr)> {
    let nodes: Vec<shoal_api::node::Node> = c.get("/v1/nodes").await.expect("nodes");
    let list: Vec<shoal_api::task::Task> = c
        .get(&format!("/v1/services/{service}/tasks"))
        .await
        .expect("tasks");
    list.into_iter()
        .filter(|t| t.wanted() && t.status.state == shoal_api::task::TaskState::Running)
        .map(|t| {
            let host = nodes
                .iter()
                .find(|n| Some(&n.id) == t.node_id.as_ref())
                .map(|n| n.description.hostname.clone())
                .unwrap_or_default();
            let addr = shoal_api::network::split_address(&t.networks[0].address)
                .expect("address")
                .0;
            (t.id.to_string(), host, addr)
        })
        .collect()
}

fn init_pid(lab: &Lab, host: &str, task: &str) -> String {
    let p = lab
        .state()
        .dir
        .join("hosts")
        .join(host)
        .join("data/containers")
        .join(task)
        .join("init.pid");
    std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .trim()
        .to_owned()
}

/// Runs iperf3 as a one-off server in `server` and a 5 s client in `client` (each a command
/// prefix that enters a namespace); returns Gbit/s received.
fn iperf(server: Command, client: Command, target: Ipv4Addr) -> f64 {
    let mut server = server;
    let mut srv = server
        .args(["iperf3", "-s", "-1", "-p", "5301"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("iperf3 -s");
    std::thread::sleep(Duration::from_millis(400));
    let mut client = client;
    let out = client
        .args([
            "iperf3",
            "-c",
            &target.to_string(),
            "-p",
            "5301",
            "-t",
            "5",
            "-J",
        ])
        .output()
        .expect("iperf3 -c");
    let _ = srv.wait();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("iperf3 json");
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .expect("bits_per_second")
        / 1e9
}

fn nsenter(pid: &str) -> Command {
    let mut c = Command::new("nsenter");
    c.args(["-t", pid, "-n", "--"]);
    c
}

fn host_ns(lab: &Lab, host: &str) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{}", lab_netns(lab, host)))
        .arg("--");
    c
}

fn lab_netns(lab: &Lab, host: &str) -> String {
    format!("shl-{}-{host}", lab.state().name)
}

/// Connect times (µs) from inside the namespace of `pid` to `target`, `n` connections.
fn connects(pid: &str, target: SocketAddr, n: usize) -> Vec<f64> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).expect("netns");
    std::thread::spawn(move || {
        nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            let s = TcpStream::connect_timeout(&target, Duration::from_secs(2)).expect("connect");
            out.push(t.elapsed().as_secs_f64() * 1e6);
            drop(s);
        }
        out
    })
    .join()
    .expect("connect thread")
}

fn pct(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[((v.len() as f64 - 1.0) * p) as usize]
}

async fn deploy_yaml(lab: &Lab, host: &str, name: &str, yaml: &str) {
    let file = lab.state().dir.join(format!("{name}.yml"));
    std::fs::write(&file, yaml).expect("stack file");
    let f = file.to_string_lossy().into_owned();
    tokio::task::block_in_place(|| {
        lab.shoal_ok(host, &["stack", "deploy", "--wait", "-c", &f, name])
    })
    .expect("deploy");
}

/// Runs the overlay part.
pub async fn overlay(swarm: bool) {
    if Command::new("iperf3").arg("-v").output().is_err() {
        println!("overlay: skipped (apt-get install iperf3)");
        return;
    }
    let lab = quiet_lab("ovl", 1, 2);
    let c = lab.client("m1").with_timeout(Duration::from_secs(30));
    deploy_yaml(&lab, "m1", "o", STACK).await;
    let srv = tasks(&c, "o_srv").await;
    let cli = tasks(&c, "o_cli").await.pop().expect("client runs");
    let srv_pid = init_pid(&lab, &srv[0].1, &srv[0].0);
    let cli_pid = init_pid(&lab, &cli.1, &cli.0);
    let w1: Ipv4Addr = lab.host("w1").expect("w1").addr.parse().expect("addr");
    // This VM's underlay swings by a third between runs seconds apart: seven pairs, each an
    // underlay run then an overlay run, and the median of the pairs' ratios.
    let (mut under, mut over) = (Vec::new(), Vec::new());
    tokio::task::block_in_place(|| {
        for _ in 0..PAIRS {
            under.push(iperf(host_ns(&lab, "w1"), host_ns(&lab, "w2"), w1));
            over.push(iperf(nsenter(&srv_pid), nsenter(&cli_pid), srv[0].2));
        }
    });
    let (u, o) = (crate::median(under.clone()), crate::median(over.clone()));
    let ratios: Vec<f64> = under.iter().zip(&over).map(|(u, o)| o / u).collect();
    println!(
        "iperf3 TCP w2 -> w1, 5 s, {PAIRS} pairs: ratio (median of the pairs) {:.3}   (Docker Swarm: 0.686; target >= 0.90); medians: underlay {u:.2} Gbit/s, container to container over the overlay {o:.2} Gbit/s   runs: {under:.2?} / {over:.2?}",
        crate::median(ratios)
    );

    let svc: shoal_api::service::Service = c.get("/v1/services/o_srv").await.expect("inspect");
    let vip = shoal_api::network::split_address(&svc.virtual_ips[0].addr)
        .expect("vip")
        .0;
    let (via_vip, direct) = tokio::task::block_in_place(|| {
        // Warm both paths, then interleave.
        connects(&cli_pid, SocketAddr::new(vip.into(), 8080), 50);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for _ in 0..4 {
            a.extend(connects(&cli_pid, SocketAddr::new(vip.into(), 8080), 500));
            b.extend(connects(
                &cli_pid,
                SocketAddr::new(srv[0].2.into(), 8080),
                500,
            ));
        }
        (a, b)
    });
    println!(
        "TCP connect from a container across hosts, 2,000 each: through the VIP median {:.0} us, p99 {:.0} us; straight to a task median {:.0} us, p99 {:.0} us",
        pct(via_vip.clone(), 0.5),
        pct(via_vip, 0.99),
        pct(direct.clone(), 0.5),
        pct(direct, 0.99)
    );
    drop(c);
    tokio::task::block_in_place(|| lab.down()).expect("lab down");

    // One host, 100 replicas on an overlay network.
    let lab = quiet_lab("ovd", 1, 0);
    let c = lab.client("m1").with_timeout(Duration::from_secs(30));
    let mut times = Vec::new();
    for _ in 0..3 {
        let mut stack = crate::stack(100);
        stack.networks.push(shoal_api::network::NetworkSpec {
            name: "bench_default".into(),
            driver: "overlay".into(),
            labels: [(
                shoal_api::service::STACK_LABEL.to_owned(),
                "bench".to_owned(),
            )]
            .into(),
            ..Default::default()
        });
        stack.services[0]
            .task
            .networks
            .push(shoal_api::service::NetworkAttachmentSpec {
                target: "bench_default".into(),
                aliases: vec!["app".into()],
            });
        stack.services[0].task.container.stop_grace_period =
            Some(shoal_api::units::Duration::from_secs(1));
        let start = Instant::now();
        let r: StackDeployResult = c
            .post(
                "/v1/stacks/bench/deploy",
                &StackDeploy {
                    stack,
                    prune: false,
                    resolve_image: Default::default(),
                },
            )
            .await
            .expect("deploy");
        times.push(
            crate::until_running(&c, "bench_app", 100, r.revision - 1, start)
                .await
                .as_secs_f64(),
        );
        crate::remove_stack(&c).await;
        // Until every container and its namespace are gone.
        let netns = lab.state().dir.join("hosts/m1/data/netns");
        while tokio::task::block_in_place(|| lab.containers("m1")) > 0
            || std::fs::read_dir(&netns).is_ok_and(|d| d.count() > 0)
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    drop(c);
    tokio::task::block_in_place(|| lab.down()).expect("lab down");
    println!(
        "stack deploy, 100 replicas on an overlay network until 100 running (one host, real containers), median of 3: {:.3} s   runs: {times:.2?}",
        crate::median(times.clone())
    );
    if swarm {
        swarm_overlay();
    }
}

/// Docker Swarm: 100 replicas on an overlay network, from `service create` until all run.
fn swarm_overlay() {
    if !crate::which_dockerd() {
        println!("Docker Swarm: skipped (apt-get install docker.io)");
        return;
    }
    let script = r#"
set -u
started=""
if ! docker info >/dev/null 2>&1; then
  (dockerd --data-root /var/lib/docker-anchor --pidfile /run/docker-anchor.pid >/tmp/dockerd.log 2>&1 &); sleep 8; started=1
fi
if ! docker image inspect bb:latest >/dev/null 2>&1; then
  d=$(mktemp -d); mkdir -p "$d/bin"; cp /usr/bin/busybox "$d/bin/"; for a in sh sleep; do ln -sf busybox "$d/bin/$a"; done
  tar -C "$d" -cf "$d.tar" . && docker import "$d.tar" bb:latest >/dev/null; rm -rf "$d" "$d.tar"
fi
docker swarm init --advertise-addr 127.0.0.1 >/dev/null 2>&1 || true
docker network create -d overlay benchnet >/dev/null
wait_reps() { while [ "$(docker service ls --filter name="$1" --format '{{.Replicas}}')" != "$2" ]; do sleep 0.1; done; }
s=$(date +%s.%N); docker service create -q --name ovl --network benchnet --replicas 100 --detach bb:latest sleep 3600 >/dev/null; wait_reps ovl 100/100
echo "$(echo "$(date +%s.%N) - $s" | bc)"
docker service rm ovl >/dev/null; sleep 10
docker network rm benchnet >/dev/null
docker swarm leave --force >/dev/null 2>&1
[ -n "$started" ] && kill "$(cat /run/docker-anchor.pid)" 2>/dev/null
exit 0
"#;
    let out = Command::new("bash")
        .args(["-c", script])
        .output()
        .expect("bash");
    let secs = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    println!("Docker Swarm in the same run: 100 replicas on an overlay network, create until running: {secs} s");
}
