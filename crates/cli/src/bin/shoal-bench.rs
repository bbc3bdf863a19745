//! `shoal-bench`: measures shoal the way `../shared/bench` measured Docker Swarm, and prints the
//! figures. It starts its own `shoald` (simulated executor) in a temporary directory, next to
//! this binary (build with `cargo build --release --workspace`).
//!
//! Figures: a 100-replica stack deploy until 100 tasks run; scale 50 → 100 until 100 run;
//! committed Raft writes per second (fsync on) for one client and for 64 concurrent clients,
//! each write a full API round trip (`node update --label-add`).

use shoal_api::service::Service;
use shoal_api::wire::*;
use shoal_client::{Client, Endpoint, Lines};
use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[v.len() / 2]
}

async fn running(c: &Client, name: &str) -> u64 {
    let list: Vec<ServiceSummary> = c.get("/v1/services").await.expect("service ls");
    list.iter()
        .find(|s| s.service.spec.name == name)
        .map_or(0, |s| s.running)
}

/// Waits (following events) until `name` runs `n` tasks; returns the time since `start`.
async fn until_running(c: &Client, name: &str, n: u64, since: u64, start: Instant) -> Duration {
    let mut lines = Lines::new(
        c.stream(&format!("/v1/events?since={since}"))
            .await
            .expect("events"),
    );
    loop {
        if running(c, name).await >= n {
            return start.elapsed();
        }
        tokio::time::timeout(Duration::from_secs(60), lines.next::<serde_json::Value>())
            .await
            .expect("converges within 60s")
            .expect("event stream");
    }
}

fn stack(replicas: u64) -> StackSpec {
    let mut spec = shoal_api::service::ServiceSpec {
        name: "bench_app".into(),
        mode: shoal_api::service::ServiceMode::Replicated { replicas },
        ..Default::default()
    };
    spec.task.container.image = "busybox".into();
    spec.labels
        .insert(shoal_api::service::STACK_LABEL.into(), "bench".into());
    StackSpec {
        name: "bench".into(),
        networks: vec![],
        external_networks: vec![],
        services: vec![spec],
    }
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shoald = std::env::current_exe()
        .expect("exe")
        .with_file_name("shoald");
    let socket = dir.path().join("s.sock");
    let mut child = Command::new(&shoald)
        .arg("--data-root")
        .arg(dir.path().join("data"))
        .arg("--socket")
        .arg(&socket)
        .args(["--log", "warn"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", shoald.display()));
    let c = Client::new(Endpoint::Unix(socket.clone()));
    let t0 = Instant::now();
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "shoald did not start"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _: ClusterInfo = c
        .post("/v1/cluster/init", &InitRequest::default())
        .await
        .expect("init");
    while c
        .get::<Vec<shoal_api::node::Node>>("/v1/nodes")
        .await
        .map(|n| n.len())
        .unwrap_or(0)
        == 0
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let mut deploys = Vec::new();
    let mut scales = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        let r: StackDeployResult = c
            .post(
                "/v1/stacks/bench/deploy",
                &StackDeploy {
                    stack: stack(100),
                    prune: false,
                },
            )
            .await
            .expect("deploy");
        deploys.push(
            until_running(&c, "bench_app", 100, r.revision - 1, start)
                .await
                .as_secs_f64(),
        );
        let _: Service = c
            .post(
                "/v1/services/bench_app/scale",
                &ScaleRequest { replicas: 50 },
            )
            .await
            .expect("scale down");
        while running(&c, "bench_app").await > 50 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let rev = c
            .get::<ClusterInfo>("/v1/cluster")
            .await
            .expect("info")
            .revision;
        let start = Instant::now();
        let _: Service = c
            .post(
                "/v1/services/bench_app/scale",
                &ScaleRequest { replicas: 100 },
            )
            .await
            .expect("scale up");
        scales.push(
            until_running(&c, "bench_app", 100, rev, start)
                .await
                .as_secs_f64(),
        );
        c.send_no_content::<()>(hyper::Method::DELETE, "/v1/stacks/bench", None)
            .await
            .expect("rm");
        while c
            .get::<Vec<ServiceSummary>>("/v1/services")
            .await
            .expect("ls")
            .iter()
            .any(|s| s.service.spec.name == "bench_app")
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    println!("stack deploy, 100 replicas until 100 running (simulated executor), median of 5: {:.3} s   (Docker Swarm, real containers: 29.7 s)", median(deploys));
    println!("service scale 50 -> 100 until 100 running (simulated executor), median of 5: {:.3} s   (Docker Swarm, real containers: 17.1 s)", median(scales));

    let node: Vec<shoal_api::node::Node> = c.get("/v1/nodes").await.expect("nodes");
    let node = node[0].id.to_string();
    let write = |c: Client, node: String, i: usize| async move {
        let req = NodeUpdate {
            availability: None,
            labels_add: BTreeMap::from([(format!("k{}", i % 16), i.to_string())]),
            labels_rm: vec![],
        };
        let _: shoal_api::node::Node = c
            .post(&format!("/v1/nodes/{node}/update"), &req)
            .await
            .expect("write");
    };
    let n = 1000;
    let start = Instant::now();
    for i in 0..n {
        write(c.clone(), node.clone(), i).await;
    }
    let one = n as f64 / start.elapsed().as_secs_f64();
    let clients = 64;
    let per = 100;
    let start = Instant::now();
    let mut handles = Vec::new();
    for k in 0..clients {
        let (c, node) = (c.clone(), node.clone());
        handles.push(tokio::spawn(async move {
            for i in 0..per {
                write(c.clone(), node.clone(), k * per + i).await;
            }
        }));
    }
    for h in handles {
        h.await.expect("client");
    }
    let many = (clients * per) as f64 / start.elapsed().as_secs_f64();
    println!("raft writes through the API, fsync on, 1 manager: 1 client {one:.0}/s, {clients} clients {many:.0}/s   (etcd 3.2 published: 583/s one client)");

    let rss = std::fs::read_to_string(format!("/proc/{}/status", child.id()))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_owned())
        });
    if let Some(kb) = rss {
        println!(
            "shoald RSS after the runs: {:.1} MB   (dockerd 153 MB + containerd 59 MB)",
            kb.parse::<f64>().unwrap_or(0.0) / 1024.0
        );
    }
    let _ = child.kill();
    let _ = child.wait();
}
