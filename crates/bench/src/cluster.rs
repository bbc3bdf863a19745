//! `shoal-bench cluster` (root): three managers in a lab of simulated-task hosts. Committed
//! writes per second through the API (each `node update --label-add`, one Raft entry replicated
//! to a majority, fsync on every manager) for one client (1,000 writes) and for 100 concurrent
//! clients (1,000 writes each, 100,000 in all, as etcd's published run), through
//! the leader and through a follower (forwarded); then 20 leader kills: the time from SIGKILL of
//! the leader's host until a surviving manager acknowledges a write, median and worst.

use shoal_api::wire::NodeUpdate;
use shoal_client::Client;
use shoal_lab::{Executor, Lab, LabConfig};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

async fn write(c: &Client, node: &str, i: usize) -> Result<(), shoal_client::ClientError> {
    let req = NodeUpdate {
        availability: None,
        labels_add: BTreeMap::from([(format!("k{}", i % 16), i.to_string())]),
        labels_rm: vec![],
    };
    c.post::<_, shoal_api::node::Node>(&format!("/v1/nodes/{node}/update"), &req)
        .await
        .map(|_| ())
}

async fn rates(c: &Client, node: &str) -> (f64, f64) {
    let n = 1000;
    let start = Instant::now();
    for i in 0..n {
        write(c, node, i).await.expect("write");
    }
    let one = n as f64 / start.elapsed().as_secs_f64();
    // 100,000 writes in all, as etcd's published "write 100,000 keys" run: a shorter run
    // mostly measures its own ramp-up and tail. SHOAL_BENCH_PER_CLIENT changes it.
    let per = std::env::var("SHOAL_BENCH_PER_CLIENT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let clients = 100;
    let start = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|k| {
            let (c, node) = (c.clone(), node.to_owned());
            tokio::spawn(async move {
                for i in 0..per {
                    write(&c, &node, k * per + i).await.expect("write");
                }
            })
        })
        .collect();
    for h in handles {
        h.await.expect("client");
    }
    (one, (clients * per) as f64 / start.elapsed().as_secs_f64())
}

fn leader(lab: &Lab) -> String {
    let start = Instant::now();
    loop {
        if let Some(l) = lab.leader() {
            return l;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "no leader");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs the cluster part.
pub async fn cluster() {
    let mut config = LabConfig::new("bench", 3, 0);
    config.executor = Executor::Sim;
    config.log = "warn".into();
    let lab = tokio::task::block_in_place(|| Lab::up(config)).expect("lab up");
    let l = tokio::task::block_in_place(|| leader(&lab));
    let follower = lab.other_manager(&l).expect("a follower");
    let nodes: Vec<shoal_api::node::Node> = lab.client(&l).get("/v1/nodes").await.expect("nodes");
    let node = nodes[0].id.to_string();
    let (one, many) = rates(&lab.client(&l), &node).await;
    println!("raft writes, 3 managers, through the leader: 1 client {one:.0}/s, 100 clients {many:.0}/s   (targets 500/s and 10,000/s; etcd 3.2 on 3 x 8 vCPU: 583/s and 44,341/s)");
    let (one, many) = rates(&lab.client(&follower), &node).await;
    println!("raft writes, 3 managers, through a follower (forwarded): 1 client {one:.0}/s, 100 clients {many:.0}/s");

    let mut times = Vec::new();
    for round in 0..20 {
        let old = tokio::task::block_in_place(|| leader(&lab));
        let via = lab.other_manager(&old).expect("a survivor");
        let c = lab.client(&via).with_timeout(Duration::from_secs(5));
        let start = Instant::now();
        lab.kill(&old).expect("kill");
        let mut i = 0;
        loop {
            if write(&c, &node, i).await.is_ok() {
                break;
            }
            i += 1;
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "no write accepted after the kill"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let took = start.elapsed().as_secs_f64();
        times.push(took);
        println!(
            "  kill {:>2}: {old} killed, a write through {via} acknowledged after {took:.3} s",
            round + 1
        );
        tokio::task::block_in_place(|| lab.restart(&old)).expect("restart");
        // Let the restarted manager rejoin before the next kill.
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let worst = times.iter().cloned().fold(0.0, f64::max);
    println!(
        "leader killed -> API accepts writes again, 20 kills: median {:.3} s, worst {worst:.3} s   (target <= 1.5 s median, <= 3 s worst; Docker Swarm here: median 11.4 s, worst 26.7 s)",
        crate::median(times)
    );
    tokio::task::block_in_place(|| lab.down()).expect("lab down");
}
