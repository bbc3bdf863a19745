//! Helpers of the whole-cluster tests: a lab per test (torn down by its guard, also on panic),
//! writes through the API, and waits that poll a condition with a bound only a real fault
//! reaches.

use shoal_api::network::{Network, NetworkSpec};
use shoal_client::ClientError;
use shoal_lab::{Executor, Lab, LabConfig};
use std::time::{Duration, Instant};

/// Bound on every wait: only a real fault reaches it.
pub const BOUND: Duration = Duration::from_secs(60);

/// A lab of simulated-task hosts for a control-plane test, or `None` (test skipped, said so)
/// without root; under `CI=true` a missing root fails instead.
pub fn lab(
    name: &str,
    managers: usize,
    workers: usize,
    spares: usize,
    extra: &[&str],
) -> Option<Lab> {
    if !nix_is_root() {
        shoal_testkit::skip(
            "whole-cluster tests need root (network namespaces, cgroups): run them with sudo",
        );
        return None;
    }
    if !has_ip() {
        return None;
    }
    let mut config = LabConfig::new(name, managers, workers);
    config.spares = spares;
    config.executor = Executor::Sim;
    config.daemon_args = extra.iter().map(|s| s.to_string()).collect();
    Some(Lab::up(config).expect("lab up"))
}

/// True when the `ip` command the lab uses is installed; otherwise says so (a failure under
/// CI=true).
fn has_ip() -> bool {
    let found = std::process::Command::new("ip").arg("-V").output().is_ok();
    if !found {
        shoal_testkit::skip("`ip` is missing: apt-get install iproute2");
    }
    found
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// A tokio runtime for API calls.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Creates network `name` through `host`; Ok once the cluster acknowledged it.
pub fn write(
    rt: &tokio::runtime::Runtime,
    lab: &Lab,
    host: &str,
    name: &str,
) -> Result<(), ClientError> {
    let spec = NetworkSpec {
        name: name.to_owned(),
        driver: "overlay".into(),
        ..Default::default()
    };
    rt.block_on(
        lab.client(host)
            .with_timeout(Duration::from_secs(10))
            .post::<_, shoal_api::wire::Created>("/v1/networks", &spec),
    )
    .map(|_| ())
}

/// The network names a host's store holds.
pub fn names(
    rt: &tokio::runtime::Runtime,
    lab: &Lab,
    host: &str,
) -> Result<Vec<String>, ClientError> {
    rt.block_on(
        lab.client(host)
            .with_timeout(Duration::from_secs(10))
            .get::<Vec<Network>>("/v1/networks"),
    )
    .map(|ns| ns.into_iter().map(|n| n.spec.name).collect())
}

/// Polls `cond` every 50 ms until it holds; panics after [`BOUND`].
pub fn wait(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < BOUND,
            "timed out after {BOUND:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until a live manager other than `not` leads, as every live manager agrees; returns it.
pub fn new_leader(lab: &Lab, not: Option<&str>) -> String {
    let mut found = String::new();
    wait("a new leader", || match lab.leader() {
        Some(l) if Some(l.as_str()) != not => {
            found = l;
            true
        }
        _ => false,
    });
    found
}

/// Writes through `host` until one is acknowledged (retrying while an election runs).
pub fn write_until_acked(rt: &tokio::runtime::Runtime, lab: &Lab, host: &str, name: &str) {
    // A retry of a write that did commit finds the name taken: that is an acknowledgement too.
    wait(&format!("write {name} acknowledged"), || {
        match write(rt, lab, host, name) {
            Ok(()) => true,
            Err(e) => e.status() == Some(409),
        }
    });
}

/// A lab of real-container hosts (the test images imported on each), or `None` (skipped, said
/// so) where containers cannot run; under `CI=true` that fails instead.
pub fn container_lab(name: &str, managers: usize, workers: usize) -> Option<Lab> {
    container_lab_with_spares(name, managers, workers, 0)
}

/// [`container_lab`] whose daemons get `args` too.
pub fn container_lab_with_args(
    name: &str,
    managers: usize,
    workers: usize,
    args: &[&str],
) -> Option<Lab> {
    let mut config = LabConfig::new(name, managers, workers);
    config.daemon_args = args.iter().map(|s| s.to_string()).collect();
    container_lab_from(config)
}

/// [`container_lab`] with spare hosts (`s1`, ...) that join no cluster until told.
pub fn container_lab_with_spares(
    name: &str,
    managers: usize,
    workers: usize,
    spares: usize,
) -> Option<Lab> {
    let mut config = LabConfig::new(name, managers, workers);
    config.spares = spares;
    container_lab_from(config)
}

/// A real-container lab of `config`, or `None` (said why) on a host that cannot run one.
pub fn container_lab_from(config: LabConfig) -> Option<Lab> {
    if let Err(why) = shoal_testkit::container_support() {
        shoal_testkit::skip(&format!("this host cannot run containers: {why}"));
        return None;
    }
    if !has_ip() {
        return None;
    }
    Some(Lab::up(config).expect("lab up"))
}

/// Tasks of `service` as `service ps --format json` gives them, through `via`.
pub fn tasks(lab: &Lab, via: &str, service: &str) -> Vec<serde_json::Value> {
    lab.shoal_ok(via, &["--format", "json", "service", "ps", service])
        .ok()
        .and_then(|o| serde_json::from_str::<Vec<serde_json::Value>>(&o).ok())
        .unwrap_or_default()
}

/// The node ids of the running tasks of `service` that the cluster wants running.
pub fn running_on(lab: &Lab, via: &str, service: &str) -> Vec<String> {
    tasks(lab, via, service)
        .into_iter()
        .filter(|t| t["desired_state"] == "running" && t["status"]["state"] == "running")
        .map(|t| t["node_id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Node id by hostname, through `via`.
pub fn node_ids(lab: &Lab, via: &str) -> std::collections::BTreeMap<String, String> {
    let nodes: Vec<serde_json::Value> = serde_json::from_str(
        &lab.shoal_ok(via, &["--format", "json", "node", "ls"])
            .unwrap(),
    )
    .unwrap();
    nodes
        .iter()
        .map(|n| {
            (
                n["description"]["hostname"].as_str().unwrap().to_owned(),
                n["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The state (`ready`, `down`) of every node by hostname, through `via`.
pub fn node_states(lab: &Lab, via: &str) -> std::collections::BTreeMap<String, String> {
    lab.shoal_ok(via, &["--format", "json", "node", "ls"])
        .ok()
        .and_then(|o| serde_json::from_str::<Vec<serde_json::Value>>(&o).ok())
        .unwrap_or_default()
        .iter()
        .map(|n| {
            (
                n["description"]["hostname"]
                    .as_str()
                    .unwrap_or("?")
                    .to_owned(),
                n["status"]["state"].as_str().unwrap_or("?").to_owned(),
            )
        })
        .collect()
}

/// Waits until `n` nodes are ready, as `via` sees them.
pub fn wait_ready(lab: &Lab, via: &str, n: usize) {
    wait(&format!("{n} nodes ready"), || {
        node_states(lab, via)
            .values()
            .filter(|s| *s == "ready")
            .count()
            == n
    });
}

/// Every event `via` still holds, as JSON lines (`events --since 1`, read for 2 s).
pub fn events_so_far(lab: &Lab, via: &str) -> String {
    let out = lab
        .command(via, std::path::Path::new("timeout"))
        .unwrap()
        .arg("2")
        .arg(lab.state().bin_dir.join("shoal"))
        .args(["--format", "json", "events", "--since", "1"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The arguments of `shoal stack deploy --wait` (60 s at most) of `file` as stack `name`.
pub fn deploy_args<'a>(file: &'a str, name: &'a str) -> [&'a str; 8] {
    [
        "stack",
        "deploy",
        "--wait",
        "--timeout",
        "60s",
        "-c",
        file,
        name,
    ]
}

/// Deploys `file` as stack `name` through `via`, waiting until it converges.
pub fn deploy_file(lab: &Lab, via: &str, file: &std::path::Path, name: &str) {
    lab.shoal_ok(via, &deploy_args(file.to_str().unwrap(), name))
        .unwrap();
}

/// Writes `yaml` into the lab's directory and deploys it as stack `name` through `via`,
/// waiting until it converges.
pub fn deploy(lab: &Lab, via: &str, name: &str, yaml: &str) {
    let file = lab.state().dir.join(format!("{name}.yml"));
    std::fs::write(&file, yaml).unwrap();
    deploy_file(lab, via, &file, name);
}

/// The pid of the first process of `task`'s container on `host`.
pub fn init_pid(lab: &Lab, host: &str, task: &str) -> String {
    let pid_file = lab
        .state()
        .dir
        .join("hosts")
        .join(host)
        .join("data/containers")
        .join(task)
        .join("init.pid");
    std::fs::read_to_string(&pid_file)
        .unwrap_or_else(|e| panic!("{}: {e}", pid_file.display()))
        .trim()
        .to_owned()
}

/// Runs the host's `cmd` in the network namespace of `task`'s container on `host`.
pub fn in_container_netns(lab: &Lab, host: &str, task: &str, cmd: &[&str]) -> std::process::Output {
    let pid = init_pid(lab, host, task);
    std::process::Command::new("nsenter")
        .args(["-t", &pid, "-n", "--"])
        .args(cmd)
        .output()
        .expect("nsenter")
}

/// Runs the image's `/probe ARGS` inside the container of `task` on `host` (its network and
/// mount namespaces, as `docker exec` would), returning its output.
pub fn probe_in(lab: &Lab, host: &str, task: &str, args: &[&str]) -> std::process::Output {
    let pid = init_pid(lab, host, task);
    std::process::Command::new("nsenter")
        .args(["-t", &pid, "-n", "-m", "--", "/probe"])
        .args(args)
        .output()
        .expect("nsenter")
}

/// Runs a Python script in a lab host's namespace (as a client outside any container) and
/// reads the JSON it prints; `None` when it fails.
pub fn python_in(lab: &Lab, host: &str, script: &str) -> Option<serde_json::Value> {
    let out = lab
        .command(host, std::path::Path::new("python3"))
        .unwrap()
        .args(["-c", script])
        .output()
        .unwrap();
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// Hostname by node id, through `via`.
pub fn hostnames(lab: &Lab, via: &str) -> std::collections::BTreeMap<String, String> {
    node_ids(lab, via)
        .into_iter()
        .map(|(h, id)| (id, h))
        .collect()
}

/// Links of a lab host made by shoal's networking (names starting `shb`, `shv`, `shc`, `shd`,
/// `shgw`), sorted.
pub fn network_links(lab: &Lab, host: &str) -> Vec<String> {
    let out = lab
        .command(host, std::path::Path::new("ip"))
        .map(|mut c| c.args(["-o", "link", "show"]).output())
        .expect("ip in the host")
        .expect("ip runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        .filter(|n| {
            ["shb", "shv", "shc", "shd", "shgw"]
                .iter()
                .any(|p| n.starts_with(p))
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}
