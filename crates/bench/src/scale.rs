//! `shoal-bench scale` (root): the scheduler and control plane at 1,000 nodes. Three managers
//! in a lab (simulated executor); 1,000 agents on the simulated executor in one process, inside
//! a spare lab host's namespace (`shoal-bench sim-agents`), registering as workers over TCP.
//! Measured: the time until all have registered; Raft entries committed while 1,003 nodes only
//! heartbeat (liveness stays out of the log); a 30,000-replica service from deploy until every
//! task is placed, started and reported running; each manager's RSS after.

use shoal_agent::executor::SimExecutor;
use shoal_agent::session::{Agent, AgentConfig};
use shoal_api::node::{NodeDescription, NodeResources};
use shoal_api::wire::*;
use shoal_client::{Client, Endpoint};
use shoal_lab::{Executor, Lab, LabConfig};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const NODES: usize = 1000;
const TASKS: u64 = 30_000;

/// Entry point of the agents' process: `shoal-bench sim-agents MANAGERS TOKEN COUNT DIR ADDR`.
pub async fn sim_agents(args: &[String]) {
    let [managers, token, count, dir, addr] = args else {
        panic!("sim-agents MANAGERS TOKEN COUNT DIR ADDR");
    };
    let managers_text = managers;
    let managers: Vec<Endpoint> = managers
        .split(',')
        .map(|m| Endpoint::Tcp(m.to_owned()))
        .collect();
    let count: usize = count.parse().expect("count");
    let shutdown = CancellationToken::new();
    let mut handles = Vec::new();
    for i in 0..count {
        let state = std::path::Path::new(dir).join(format!("a{i}"));
        let executor = Arc::new(SimExecutor::open(&state.join("sim")).expect("sim executor"));
        // Each simulated node joins as a real one does: its own key, a certificate for it.
        let remote = managers_text.split(',').next().expect("a manager");
        let (_, certs) = shoal_controller::manager::request_join(remote, token, addr, None)
            .await
            .expect("a node certificate");
        let config = AgentConfig {
            managers: managers.clone(),
            join_token: token.clone(),
            state_dir: state,
            description: NodeDescription {
                hostname: format!("sim{i:04}"),
                os: "linux".into(),
                arch: "amd64".into(),
                resources: NodeResources {
                    nano_cpus: 4_000_000_000,
                    memory_bytes: 16 << 30,
                },
                engine_version: "sim".into(),
                ..Default::default()
            },
            addr: addr.clone(),
            manager_role: false,
            raft_id: 0,
            promotions: None,
            tls: Some(certs.client_tls().expect("node TLS")),
            node_id: certs.identity().and_then(|i| i.node_id.parse().ok()),
        };
        handles.push(tokio::spawn(Agent::run(config, executor, shutdown.clone())));
        // Registrations spread over a second, as hosts booting would.
        if i % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Runs until killed.
    for h in handles {
        let _ = h.await;
    }
}

fn rss_of_host(lab: &Lab, host: &str) -> f64 {
    let needle = lab.state().dir.join("hosts").join(host);
    let needle = needle.to_string_lossy().into_owned();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains("shoald") && cmd.contains(&needle) {
            let pid: u32 = e.file_name().to_string_lossy().parse().unwrap_or(0);
            return crate::rss_mb(pid);
        }
    }
    0.0
}

async fn ready_nodes(c: &Client) -> usize {
    c.get::<Vec<shoal_api::node::Node>>("/v1/nodes")
        .await
        .map(|ns| {
            ns.iter()
                .filter(|n| n.status.state == shoal_api::node::NodeState::Ready)
                .count()
        })
        .unwrap_or(0)
}

/// Runs the scale part.
pub async fn scale() {
    // Thousands of connections: one process of agents, and the leader serving them.
    let _ =
        nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, 65536, 65536);
    let mut config = LabConfig::new("scale", 3, 0);
    config.spares = 1;
    config.executor = Executor::Sim;
    config.log = "warn".into();
    let lab = tokio::task::block_in_place(|| Lab::up(config)).expect("lab up");
    let c = lab.client("m1").with_timeout(Duration::from_secs(60));
    let token: JoinToken = c
        .get("/v1/cluster/join-token?role=worker&rotate=false")
        .await
        .expect("join token");
    let managers: Vec<String> = lab
        .managers()
        .iter()
        .map(|h| format!("{}:2377", h.addr))
        .collect();
    let spare = lab.host("s1").expect("spare").addr.clone();
    let dir = tempfile::tempdir_in("/dev/shm").expect("tmpdir");
    let exe = std::env::current_exe().expect("exe");
    let agents = lab
        .command("s1", &exe)
        .expect("command")
        .arg("sim-agents")
        .arg(managers.join(","))
        .arg(&token.token)
        .arg(NODES.to_string())
        .arg(dir.path())
        .arg(&spare)
        .env("SHOAL_LOG", "error")
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("agents");
    let mut agents = Reaped(agents);
    let start = Instant::now();
    while ready_nodes(&c).await < NODES + 3 {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "agents did not register"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let registered = start.elapsed().as_secs_f64();
    let info: ClusterInfo = c.get("/v1/cluster").await.expect("info");
    let commit0 = info.raft.commit;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let info: ClusterInfo = c.get("/v1/cluster").await.expect("info");
    let idle_entries = info.raft.commit - commit0;
    let ready = ready_nodes(&c).await;
    println!("1,000 simulated agents registered (3 managers): {registered:.2} s; {ready} nodes ready after 5 s idle");
    println!("raft entries committed in 5 s while 1,003 nodes heartbeat: {idle_entries}   (liveness is kept out of the log)");

    let start = Instant::now();
    let _: StackDeployResult = c
        .post(
            "/v1/stacks/bench/deploy",
            &StackDeploy {
                stack: crate::stack(TASKS),
                prune: false,
                resolve_image: Default::default(),
            },
        )
        .await
        .expect("deploy");
    let mut last;
    loop {
        let running = crate::running(&c, "bench_app").await;
        if running >= TASKS {
            break;
        }
        if start.elapsed().as_secs() / 5
            != start
                .elapsed()
                .saturating_sub(Duration::from_millis(100))
                .as_secs()
                / 5
        {
            println!(
                "  {:.0} s: {running} running",
                start.elapsed().as_secs_f64()
            );
        }
        last = running;
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "only {last} of {TASKS} running after 300 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = start.elapsed().as_secs_f64();
    let rss: Vec<String> = ["m1", "m2", "m3"]
        .iter()
        .map(|h| format!("{h} {:.0} MB", rss_of_host(&lab, h)))
        .collect();
    println!("30,000 tasks on 1,000 nodes, deploy until all placed, started and reported running: {took:.2} s = {:.0} tasks/s   (target <= 10 s; Nomad C1M ~3,750/s; classic Swarm 30,000 on 1,000 nodes)", TASKS as f64 / took);
    println!("manager RSS after: {}   (target <= 500 MB)", rss.join(", "));
    let _ = agents.0.kill();
    let _ = agents.0.wait();
    tokio::task::block_in_place(|| lab.down()).expect("lab down");
}

/// The agents' process, killed when dropped (also when the bench panics).
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
