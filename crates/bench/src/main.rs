//! `shoal-bench [control] [runtime] [containers] [--swarm]`: measures shoal the way
//! `../shared/bench` measured the peers, and prints the figures beside theirs. It starts its own
//! `shoald` in a temporary directory, next to this binary (build with `cargo build --release
//! --workspace`). With no part named, all three run; the last two need root.
//!
//! - control (simulated executor): a 100-replica stack deploy until 100 tasks run; scale 50 →
//!   100; committed Raft writes per second (fsync on) for one client and for 64 concurrent
//!   clients, each a full API round trip (`node update --label-add`);
//! - runtime: create → start → wait → delete of a busybox `true` container, the same bundle
//!   under the built-in runtime, runc and crun (those installed), interleaved, medians and
//!   ratios to crun;
//! - containers (real containers, built-in runtime): a 100-replica stack deploy until all run,
//!   scale 50 → 100, a killed container until its replacement runs (restart delay 0), shoald's
//!   RSS; with `--swarm` and docker.io installed, `../shared/bench/swarm-anchor.sh` runs after
//!   for Docker Swarm's figures in the same run;
//! - heal (root, only when named): a worker host killed until its replicas run elsewhere, ten
//!   kills, and 100 replicas over three lab hosts (see [`heal`]);
//! - scale (root, only when named): 1,000 simulated agents against three managers, a
//!   30,000-replica service placed, started and reported (see [`scale`]);
//! - overlay (root, only when named): iperf3 across hosts over the overlay vs the underlay,
//!   connection set-up through a VIP vs straight to a task, and a 100-replica deploy on an
//!   overlay network (see [`overlay`]);
//! - cluster (root): three managers in a lab, writes per second through the leader and a
//!   follower, and 20 leader kills until writes are accepted again (see [`cluster`]).

mod cluster;
mod heal;
mod overlay;
mod scale;

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
    spec.task.container.command = vec!["sleep".into(), "3600".into()];
    spec.labels
        .insert(shoal_api::service::STACK_LABEL.into(), "bench".into());
    StackSpec {
        name: "bench".into(),
        networks: vec![],
        external_networks: vec![],
        services: vec![spec],
        files: vec![],
    }
}

/// A `shoald` of the bench's own, killed when dropped.
struct Daemon {
    _dir: tempfile::TempDir,
    child: std::process::Child,
    client: Client,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_daemon(dir: tempfile::TempDir, extra: &[String]) -> Daemon {
    let shoald = std::env::current_exe()
        .expect("exe")
        .with_file_name("shoald");
    let socket = dir.path().join("s.sock");
    let child = Command::new(&shoald)
        .arg("--data-root")
        .arg(dir.path().join("data"))
        .arg("--socket")
        .arg(&socket)
        .args(["--log", "warn", "--block-registry", "docker.io"])
        .args(extra)
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
    Daemon {
        _dir: dir,
        child,
        client: c,
    }
}

/// `rounds` times: deploy 100 replicas until they run, scale to 50 (waiting, when `data` is
/// given, until only 50 containers are left), time scaling back to 100, remove the stack.
/// Returns the deploy and scale times in seconds.
async fn deploy_then_scale(
    c: &Client,
    rounds: usize,
    data: Option<&std::path::Path>,
) -> (Vec<f64>, Vec<f64>) {
    let mut deploys = Vec::new();
    let mut scales = Vec::new();
    for _ in 0..rounds {
        let start = Instant::now();
        let r: StackDeployResult = c
            .post(
                "/v1/stacks/bench/deploy",
                &StackDeploy {
                    stack: stack(100),
                    prune: false,
                    resolve_image: Default::default(),
                },
            )
            .await
            .expect("deploy");
        deploys.push(
            until_running(c, "bench_app", 100, r.revision - 1, start)
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
        loop {
            let left = match data {
                Some(d) => task_pids(d).await.len() as u64,
                None => running(c, "bench_app").await,
            };
            if left <= 50 {
                break;
            }
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
            until_running(c, "bench_app", 100, rev, start)
                .await
                .as_secs_f64(),
        );
        remove_stack(c).await;
    }
    (deploys, scales)
}

async fn control() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = start_daemon(dir, &["--executor".into(), "sim".into()]).await;
    let c = d.client.clone();
    let (deploys, scales) = deploy_then_scale(&c, 5, None).await;
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

    let rss = std::fs::read_to_string(format!("/proc/{}/status", d.child.id()))
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
}

fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|k| k.parse::<f64>().ok())
            })
        })
        .unwrap_or(0.0)
        / 1024.0
}

/// Runs the runtime part in a child process with a mount namespace of its own, in which a
/// cgroup v2 mount that holds a controller (a "hybrid" host, which crun 1.8 refuses) is
/// detached; every runtime then sees the same v1 hierarchies. The child's mounts vanish with it.
fn runtime_bench_isolated() {
    let status = Command::new(std::env::current_exe().expect("exe"))
        .arg("runtime")
        .env("SHOAL_BENCH_RUNTIME_CHILD", "1")
        .status()
        .expect("runtime bench");
    if !status.success() {
        println!("runtime: the benchmark failed ({status})");
    }
}

/// Removes the bench's cgroups even when a run fails.
struct CgroupCleanup(String);

impl Drop for CgroupCleanup {
    fn drop(&mut self) {
        for base in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let dir = base.path().join(self.0.trim_start_matches('/'));
            for c in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let _ = std::fs::remove_dir(c.path());
            }
            let _ = std::fs::remove_dir(&dir);
        }
    }
}

/// create → start → wait → delete of one bundle under each runtime, interleaved.
fn runtime_bench() {
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).expect("unshare mount namespace");
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .expect("private mounts");
    let unified = std::path::Path::new("/sys/fs/cgroup/unified");
    if std::fs::read_to_string(unified.join("cgroup.controllers"))
        .is_ok_and(|c| !c.trim().is_empty())
    {
        umount2(unified, MntFlags::MNT_DETACH).expect("detach the cgroup v2 mount");
        println!("runtime: cgroup v2 mount detached in the benchmark's mount namespace (crun refuses hybrid hosts)");
    }
    use nix::sys::wait::waitpid;
    use shoal_runtime::oci::{which, OciRuntime};
    use shoal_runtime::spec::{self, SpecInput};
    let dir = tempfile::tempdir().expect("tempdir");
    let store = shoal_runtime::image::ImageStore::open(&dir.path().join("images")).expect("store");
    let tar = dir.path().join("busybox.tar");
    shoal_testkit::busybox_tar(&tar).expect("busybox image");
    store
        .import(
            &tar,
            &shoal_runtime::image::ImportOptions {
                tag: Some("busybox".into()),
                changes: vec![],
                source_name: None,
            },
        )
        .expect("import");
    let image = store.get("busybox").expect("image");
    let builtin = std::env::current_exe()
        .expect("exe")
        .with_file_name("shoal-runtime");
    let mut runtimes = vec![OciRuntime::new(
        "builtin",
        &builtin,
        &dir.path().join("run/builtin"),
    )];
    for name in ["runc", "crun"] {
        match which(name) {
            Some(b) => runtimes.push(OciRuntime::new(
                name,
                &b,
                &dir.path().join(format!("run/{name}")),
            )),
            None => println!("runtime: {name} is not installed (apt-get install {name}); left out"),
        }
    }
    let parent = format!("/shoal-bench-{}", std::process::id());
    let _cleanup = CgroupCleanup(parent.clone());
    let bundle = dir.path().join("bundle");
    let overlay = shoal_runtime::rootfs::Overlay::under(&bundle);
    overlay.mount(&store.lower_dirs(&image)).expect("overlay");
    nix::sys::prctl::set_child_subreaper(true).expect("subreaper");
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); runtimes.len()];
    let runs = 30;
    for i in 0..runs {
        for (k, rt) in runtimes.iter().enumerate() {
            let id = format!("bench-{}-{i}", rt.name);
            let input = SpecInput {
                rootfs: overlay.merged.clone(),
                args: vec!["/bin/true".into()],
                env: vec![spec::DEFAULT_PATH.into()],
                cwd: "/".into(),
                hostname: "bench".into(),
                cgroups_path: format!("{parent}/{id}"),
                ..Default::default()
            };
            spec::build(&input)
                .expect("spec")
                .save(bundle.join("config.json"))
                .expect("config.json");
            let pid_file = dir.path().join("pid");
            // The container inherits create's stdio: a file, as a pipe would stay open.
            let err_file = dir.path().join("create.err");
            let err = std::fs::File::create(&err_file).expect("stderr file");
            let start = Instant::now();
            let status = rt
                .create_command(&id, &bundle, &pid_file)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(err)
                .status()
                .expect("create");
            assert!(
                status.success(),
                "{} create: {}",
                rt.name,
                std::fs::read_to_string(&err_file).unwrap_or_default()
            );
            let pid: i32 = std::fs::read_to_string(&pid_file)
                .expect("pid file")
                .trim()
                .parse()
                .expect("pid");
            rt.start(&id).expect("start");
            // The container's init was reparented to this process (a child subreaper).
            let _ = waitpid(nix::unistd::Pid::from_raw(pid), None);
            rt.delete(&id, false).expect("delete");
            let took = start.elapsed().as_secs_f64();
            if i > 0 {
                times[k].push(took);
            }
        }
    }
    let _ = overlay.unmount();
    let medians: Vec<f64> = times.into_iter().map(median).collect();
    let crun = runtimes
        .iter()
        .position(|r| r.name == "crun")
        .map(|i| medians[i]);
    for (rt, m) in runtimes.iter().zip(&medians) {
        let ratio = crun
            .map(|c| format!("   {:.2} x crun", m / c))
            .unwrap_or_default();
        println!(
            "runtime {:8} create -> start -> wait -> delete of busybox true, median of {}: {:.1} ms{ratio}",
            rt.name,
            runs - 1,
            m * 1000.0
        );
    }
}

async fn task_pids(data: &std::path::Path) -> Vec<i32> {
    std::fs::read_dir(data.join("containers"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| !e.path().join("exit.json").exists())
        .filter_map(|e| std::fs::read_to_string(e.path().join("init.pid")).ok())
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

async fn remove_stack(c: &Client) {
    c.send_no_content::<()>(hyper::Method::DELETE, "/v1/stacks/bench", None)
        .await
        .expect("rm");
    while c
        .get::<Vec<shoal_api::task::Task>>("/v1/tasks")
        .await
        .expect("tasks")
        .iter()
        .any(|t| t.service_name == "bench_app")
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn containers_bench(swarm: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let img = dir.path().join("busybox.tar");
    shoal_testkit::busybox_tar(&img).expect("busybox image");
    let parent = format!("/shoal-bench-{}", std::process::id());
    let extra = vec![
        "--executor".into(),
        "container".into(),
        "--exec-root".into(),
        dir.path().join("run").to_string_lossy().into_owned(),
        "--cgroup-parent".into(),
        parent.clone(),
    ];
    let _cleanup = CgroupCleanup(parent.clone());
    let d = start_daemon(dir, &extra).await;
    let c = d.client.clone();
    let bytes = std::fs::read(&img).expect("image");
    let _: ImageResult = c
        .upload("/v1/images/import?tag=busybox", bytes)
        .await
        .expect("import");
    let (deploys, scales) = deploy_then_scale(&c, 3, Some(&data)).await;
    let mut heals = Vec::new();
    // A killed container until its replacement runs, restart delay 0.
    let mut heal = stack(5);
    heal.services[0].task.restart_policy.delay = shoal_api::units::Duration::from_secs(0);
    let r: StackDeployResult = c
        .post(
            "/v1/stacks/bench/deploy",
            &StackDeploy {
                stack: heal,
                prune: false,
                resolve_image: Default::default(),
            },
        )
        .await
        .expect("deploy");
    until_running(&c, "bench_app", 5, r.revision - 1, Instant::now()).await;
    for _ in 0..5 {
        let pid = task_pids(&data).await[0];
        let rev = c
            .get::<ClusterInfo>("/v1/cluster")
            .await
            .expect("info")
            .revision;
        let start = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill");
        // Seen down first, then back to 5.
        while running(&c, "bench_app").await >= 5 && start.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        heals.push(
            until_running(&c, "bench_app", 5, rev, start)
                .await
                .as_secs_f64(),
        );
    }
    let rss = rss_mb(d.child.id());
    remove_stack(&c).await;
    drop(d);
    println!("stack deploy, 100 replicas until 100 running (real containers, built-in runtime), median of 3: {:.3} s   (Docker Swarm: 29.7 s)", median(deploys));
    println!("service scale 50 -> 100 until 100 running (real containers), median of 3: {:.3} s   (Docker Swarm: 17.1 s)", median(scales));
    println!("container killed -> replacement running, restart delay 0, median of 5: {:.3} s   (Docker Swarm: 0.21 s)", median(heals));
    println!("shoald RSS with 5 containers after the runs: {rss:.1} MB   (dockerd 153 MB + containerd 59 MB)");
    if swarm {
        let script = std::path::Path::new("../shared/bench/swarm-anchor.sh");
        if which_dockerd() && script.exists() {
            println!("Docker Swarm in the same run:");
            let out = Command::new("bash")
                .arg(script)
                .output()
                .expect("swarm-anchor.sh");
            print!("{}", String::from_utf8_lossy(&out.stdout));
        } else {
            println!("Docker Swarm: dockerd or ../shared/bench/swarm-anchor.sh not found; figures from ../shared/targets.md");
        }
    }
}

fn which_dockerd() -> bool {
    shoal_runtime::oci::which("dockerd").is_some()
}

/// What `shoal-bench` runs: the parts by name, and which run when none is named.
const PARTS: &[(&str, bool, &str)] = &[
    (
        "runtime",
        true,
        "container start/stop vs runc and crun (root)",
    ),
    (
        "control",
        true,
        "the control plane: writes, reads, deploys (simulated tasks)",
    ),
    (
        "cluster",
        true,
        "leader failover and writes on a 3-manager lab (root)",
    ),
    (
        "containers",
        true,
        "stacks of real containers, with --swarm beside Docker Swarm (root)",
    ),
    (
        "heal",
        false,
        "healing after a host dies, on the lab (root)",
    ),
    (
        "overlay",
        false,
        "overlay throughput, VIP connects, deploy on a network; --swarm too (root)",
    ),
    (
        "scale",
        false,
        "thousands of simulated agents (root; minutes)",
    ),
    (
        "sim-agents",
        false,
        "simulated agents for a running cluster (scale's helper)",
    ),
];

fn usage() -> String {
    let mut u = String::from(
        "usage: shoal-bench [--swarm] [PART...]\n\nPrints figures; with no PART, runs those marked *.\n\n",
    );
    for (name, default, what) in PARTS {
        u.push_str(&format!(
            "  {}{name:<11} {what}\n",
            if *default { "*" } else { " " }
        ));
    }
    u.push_str("\n  --swarm     measure Docker Swarm too where a part can (docker.io)\n");
    u
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        print!("{}", usage());
        return;
    }
    if let Some(bad) = args.iter().find(|a| {
        a.starts_with('-') && *a != "--swarm"
            || !a.starts_with('-') && !PARTS.iter().any(|(p, ..)| p == a)
    }) {
        // sim-agents takes its own arguments.
        if args.first().map(String::as_str) != Some("sim-agents") {
            eprint!("shoal-bench: unknown argument {bad:?}\n\n{}", usage());
            std::process::exit(2);
        }
    }
    let swarm = args.iter().any(|a| a == "--swarm");
    let parts: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let all = parts.is_empty();
    let want = |p: &str| all || parts.contains(&p);
    let root = nix::unistd::geteuid().is_root();
    if std::env::var_os("SHOAL_BENCH_RUNTIME_CHILD").is_some() {
        runtime_bench();
        return;
    }
    if want("runtime") {
        if root {
            runtime_bench_isolated();
        } else {
            println!("runtime: skipped (needs root)");
        }
    }
    let rt = tokio::runtime::Runtime::new().expect("tokio");
    if parts.first() == Some(&"sim-agents") {
        rt.block_on(scale::sim_agents(&args[1..]));
        return;
    }
    if want("control") {
        rt.block_on(control());
    }
    if want("cluster") {
        if root {
            rt.block_on(cluster::cluster());
        } else {
            println!("cluster: skipped (needs root)");
        }
    }
    if parts.contains(&"heal") {
        if root {
            rt.block_on(heal::heal());
        } else {
            println!("heal: skipped (needs root)");
        }
    }
    if parts.contains(&"overlay") {
        if root {
            rt.block_on(overlay::overlay(swarm));
        } else {
            println!("overlay: skipped (needs root)");
        }
    }
    // Not part of "all": it takes minutes and thousands of connections.
    if parts.contains(&"scale") {
        if root {
            rt.block_on(scale::scale());
        } else {
            println!("scale: skipped (needs root)");
        }
    }
    if want("containers") {
        if root {
            rt.block_on(containers_bench(swarm));
        } else {
            println!("containers: skipped (needs root)");
        }
    }
}
