//! `shoald`: the shoal daemon. Wiring only: it serves the REST API on a Unix socket (and
//! optionally TCP), runs the manager role (Raft, store, leader loops) and, once the node belongs
//! to a cluster, the agent role with its executor.

use anyhow::{bail, Context, Result};
use clap::Parser;
use shoal_agent::container::{default_shim_path, ContainerConfig, ContainerExecutor};
use shoal_agent::executor::{Executor, SimExecutor};
use shoal_agent::session::{Agent, AgentConfig};
use shoal_api::node::{NodeDescription, NodeResources};
use shoal_client::Endpoint;
use shoal_controller::dispatcher::DispatcherSettings;
use shoal_controller::manager::AgentTarget;
use shoal_controller::raft::node::RaftSettings;
use shoal_controller::{Manager, ManagerConfig};
use shoal_runtime::oci::{which, OciRuntime};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The shoal daemon.
#[derive(Debug, Parser)]
#[command(
    name = "shoald",
    version,
    about = "shoal daemon: manager and agent of a shoal cluster"
)]
struct Args {
    /// Raft log, agent state and containers live here.
    #[arg(long, env = "SHOAL_DATA_ROOT", default_value = "/var/lib/shoal")]
    data_root: PathBuf,
    /// The local API socket.
    #[arg(long, env = "SHOAL_SOCKET", default_value = shoal_client::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Group allowed to use the socket (default: root only).
    #[arg(long)]
    socket_group: Option<String>,
    /// Also serve the API on this TCP address (host:port), over mutual TLS: this node's
    /// certificate, and clients need a user certificate from the cluster's CA
    /// (`shoal cluster client-cert`). Before the node belongs to a cluster it answers nothing.
    #[arg(long)]
    listen: Option<String>,
    /// What runs tasks: `container` (real containers) or `sim` (simulated ones, which only
    /// keep time: for tests and trying the control plane on any machine).
    #[arg(long, default_value = "container")]
    executor: String,
    /// The OCI runtime that runs containers: `builtin` (shoal-runtime, beside shoald), `runc`,
    /// `crun`, or a path to a runtime binary with runc's command line.
    #[arg(long, default_value = "builtin")]
    oci_runtime: String,
    /// Runtime state (the OCI runtime's state directory lives under it).
    #[arg(long, env = "SHOAL_EXEC_ROOT", default_value = "/run/shoal")]
    exec_root: PathBuf,
    /// Parent of the containers' cgroups.
    #[arg(long, default_value = "/shoal")]
    cgroup_parent: String,
    /// The cgroup mount the built-in runtime uses (default /sys/fs/cgroup, v1 or v2 as found
    /// there): for one, a hybrid host's unified hierarchy (/sys/fs/cgroup/unified), where
    /// device rules become a BPF device program.
    #[arg(long, env = "SHOAL_CGROUP_ROOT")]
    cgroup_root: Option<PathBuf>,
    /// Node name (default: the host name).
    #[arg(long)]
    hostname: Option<String>,
    /// An engine label (KEY=VALUE), matched by `engine.labels.KEY` constraints; repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Agent heartbeat period.
    #[arg(long, default_value = "500ms")]
    heartbeat_period: shoal_api::units::Duration,
    /// Silence after which a node is marked down.
    #[arg(long, default_value = "2s")]
    node_down_after: shoal_api::units::Duration,
    /// After a leader change, the time every node has to reach the new leader before it may be
    /// marked down. An agent that hears from no manager for --node-down-after plus this stops
    /// its tasks itself (docs/operations.md).
    #[arg(long, default_value = "4s")]
    election_grace: shoal_api::units::Duration,
    /// Start as the only manager of the cluster this data root belongs to, keeping its state:
    /// the way back after a majority of the managers is lost for good (docs/operations.md).
    #[arg(long)]
    force_new_cluster: bool,
    /// Event history kept in memory for `events --since` and agents that resume (e.g. 64M);
    /// older requests start again from the current state.
    #[arg(long, default_value = "64M")]
    event_history: String,
    /// Applied Raft entries between snapshots.
    #[arg(long, default_value_t = 10_000)]
    snapshot_every: u64,
    /// CPUs the node offers (default: the host's).
    #[arg(long)]
    cpus: Option<f64>,
    /// Memory the node offers, as 4G (default: the host's).
    #[arg(long)]
    memory: Option<String>,
    /// A registry (HOST:PORT) to pull from over plain HTTP (repeatable). Registries on
    /// localhost are always allowed; others are spoken to over TLS.
    #[arg(long = "insecure-registry")]
    insecure_registry: Vec<String>,
    /// A Docker Hub mirror (http://HOST:PORT or https://HOST:PORT, repeatable) tried before
    /// Docker Hub, as docker's `registry-mirrors`.
    #[arg(long = "registry-mirror")]
    registry_mirror: Vec<String>,
    /// A registry this node never contacts (HOST:PORT, or docker.io for Docker Hub;
    /// repeatable): pulls from it fail at once, Docker Hub's mirrors aside. The lab and the
    /// tests block docker.io, so nothing of theirs leaves the machine.
    #[arg(long = "block-registry")]
    block_registry: Vec<String>,
    /// Where registries' CAs are kept, as `HOST:PORT/ca.crt` (docker's certs.d layout).
    #[arg(long, default_value = "/etc/shoal/certs.d")]
    registry_certs_dir: std::path::PathBuf,
    /// Log filter (tracing's EnvFilter syntax).
    #[arg(long, env = "SHOAL_LOG", default_value = "info")]
    log: String,
}

fn host_resources(args: &Args) -> Result<NodeResources> {
    let cpus = match args.cpus {
        Some(c) => c,
        None => std::thread::available_parallelism()
            .map(|n| n.get() as f64)
            .unwrap_or(1.0),
    };
    let memory = match &args.memory {
        Some(m) => shoal_api::units::parse_bytes(m).context("--memory")?,
        None => std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|k| k.parse::<u64>().ok())
            })
            .map(|kb| kb * 1024)
            .unwrap_or(0),
    };
    Ok(NodeResources {
        nano_cpus: (cpus * 1e9) as u64,
        memory_bytes: memory,
    })
}

/// `--label KEY=VALUE` flags as a map; a flag without `=` is refused, naming it.
fn engine_labels(flags: &[String]) -> Result<std::collections::BTreeMap<String, String>> {
    flags
        .iter()
        .map(|f| match f.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
            _ => bail!("--label {f:?}: expected KEY=VALUE"),
        })
        .collect()
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn prepare_socket(args: &Args) -> Result<tokio::net::UnixListener> {
    if let Some(dir) = args.socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if args.socket.exists() {
        if std::os::unix::net::UnixStream::connect(&args.socket).is_ok() {
            bail!("another shoald is serving {}", args.socket.display());
        }
        std::fs::remove_file(&args.socket)
            .with_context(|| format!("removing stale {}", args.socket.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(&args.socket)
        .with_context(|| format!("binding {}", args.socket.display()))?;
    let mode = match &args.socket_group {
        Some(group) => {
            let g = nix::unistd::Group::from_name(group)?
                .with_context(|| format!("no group {group}"))?;
            nix::unistd::chown(&args.socket, None, Some(g.gid))?;
            0o660
        }
        None => 0o600,
    };
    std::fs::set_permissions(&args.socket, std::fs::Permissions::from_mode(mode))?;
    Ok(listener)
}

/// The container executor with the chosen OCI runtime.
fn container_executor(args: &Args) -> Result<ContainerExecutor> {
    let shim = default_shim_path();
    if !shim.is_file() {
        bail!(
            "{} is missing: shoal-runtime must be installed beside shoald (or set SHOAL_RUNTIME_BIN)",
            shim.display()
        );
    }
    let (name, binary) = match args.oci_runtime.as_str() {
        "builtin" => ("builtin".to_owned(), shim.clone()),
        other => {
            let bin = which(other).with_context(|| {
                format!("OCI runtime {other:?} not found (apt-get install {other}, or give a path)")
            })?;
            (other.rsplit('/').next().unwrap_or(other).to_owned(), bin)
        }
    };
    let root = args.exec_root.join("runtime").join(&name);
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let config = ContainerConfig {
        data_root: args.data_root.clone(),
        runtime: OciRuntime::new(&name, &binary, &root),
        shim,
        cgroup_parent: args.cgroup_parent.clone(),
        insecure_registries: args.insecure_registry.clone(),
        registry_mirrors: args.registry_mirror.clone(),
        blocked_registries: args.block_registry.clone(),
        registry_certs_dir: Some(args.registry_certs_dir.clone()),
    };
    ContainerExecutor::open(config)
        .map_err(|e| anyhow::anyhow!("opening the container executor: {e}"))
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(root) = &args.cgroup_root {
        if !shoal_runtime::cgroups::is_mount(root) {
            bail!(
                "--cgroup-root {}: not a cgroup mount (neither cgroup2 nor v1 controllers)",
                root.display()
            );
        }
        // Set before any thread starts: this daemon and the runtime processes its shims
        // start read it from the environment.
        std::env::set_var(shoal_runtime::cgroups::ROOT_ENV, root);
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    // netlink-packet-route warns of every attribute a newer kernel made longer, on every link
    // it reads: silenced unless the filter names it.
    let mut filter = args.log.clone();
    if !filter.contains("netlink_packet_route") {
        if !filter.is_empty() {
            filter.push(',');
        }
        filter.push_str("netlink_packet_route=error");
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&filter).context("--log")?)
        .with_writer(std::io::stderr)
        .init();
    if args.executor != "sim" && args.executor != "container" {
        bail!(
            "unknown executor {:?}: use `container` (real containers) or `sim` (simulated)",
            args.executor
        );
    }
    std::fs::create_dir_all(&args.data_root)
        .with_context(|| format!("creating {}", args.data_root.display()))?;
    let shutdown = CancellationToken::new();
    let config = ManagerConfig {
        data_root: args.data_root.clone(),
        raft: RaftSettings {
            snapshot_every: args.snapshot_every.max(1),
            ..Default::default()
        },
        force_new_cluster: args.force_new_cluster,
        insecure_registries: args.insecure_registry.clone(),
        registry_certs_dir: Some(args.registry_certs_dir.clone()),
        event_history: shoal_api::units::parse_bytes(&args.event_history)
            .context("--event-history")? as usize,
        dispatcher: DispatcherSettings {
            heartbeat_period: args.heartbeat_period.0,
            down_after: args.node_down_after.0,
            election_grace: args.election_grace.0,
        },
    };
    let manager = Manager::open(config, shutdown.clone())
        .await
        .context("starting the manager")?;
    let mut router = shoal_controller::api::router(manager.clone());
    let executor: Arc<dyn Executor> = if args.executor == "sim" {
        router = router.merge(shoal_agent::local_api::unavailable_router(
            "this node runs the simulated executor (--executor sim): it keeps no images or volumes",
        ));
        Arc::new(
            SimExecutor::open(&args.data_root.join("agent/sim"))
                .context("opening the simulated executor")?,
        )
    } else {
        let containers = container_executor(&args)?;
        router = router.merge(shoal_agent::local_api::router(containers.clone()));
        Arc::new(containers)
    };

    let listener = prepare_socket(&args)?;
    tracing::info!(socket = %args.socket.display(), "API listening");
    let sd = shutdown.clone();
    let router_unix = router.clone();
    let unix = tokio::spawn(shoal_controller::serve::serve(listener, router_unix, sd));
    if let Some(addr) = &args.listen {
        let tcp = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        tracing::info!(%addr, "API listening on TCP (mutual TLS, user certificates)");
        let sd = shutdown.clone();
        tokio::spawn(shoal_controller::serve::serve_tls(
            tcp,
            shoal_controller::api::require_client_certificate(router, manager.clone()),
            sd,
            manager.api_tls(),
        ));
    }

    // The agent role starts once this node belongs to a cluster; it talks to the manager
    // through the API, as it would to a manager on another host.
    let hostname = match &args.hostname {
        Some(h) => h.clone(),
        None => nix::unistd::gethostname()?.to_string_lossy().into_owned(),
    };
    let description = NodeDescription {
        hostname,
        os: std::env::consts::OS.into(),
        arch: arch().into(),
        resources: host_resources(&args)?,
        engine_labels: engine_labels(&args.labels)?,
        engine_version: env!("CARGO_PKG_VERSION").into(),
        executor: String::new(),
    };
    tokio::spawn(supervise_agent(
        manager.clone(),
        executor,
        args.socket.clone(),
        args.data_root.join("agent"),
        description,
        shutdown.clone(),
    ));

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = shutdown.cancelled() => {}
    }
    tracing::info!("shutting down");
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), unix).await;
    let _ = std::fs::remove_file(&args.socket);
    if let Some(why) = manager.fatal() {
        bail!("the manager failed: {why}");
    }
    Ok(())
}

/// Runs the agent role while this node belongs to a cluster: it talks to the managers through
/// their cluster port (or, in a one-host cluster, through this daemon's socket), as it would
/// from any other host. It stops when the node leaves the cluster.
async fn supervise_agent(
    manager: Arc<Manager>,
    executor: Arc<dyn Executor>,
    socket: PathBuf,
    state_dir: PathBuf,
    description: NodeDescription,
    shutdown: CancellationToken,
) {
    let poll = Duration::from_millis(100);
    let (promotions_tx, mut promotions) = tokio::sync::mpsc::unbounded_channel();
    loop {
        let target = loop {
            if let Some(t) = manager.agent_target().await {
                break t;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(poll) => {}
            }
        };
        let managers = if target.managers.is_empty() {
            vec![Endpoint::Unix(socket.clone())]
        } else {
            target.managers.iter().cloned().map(Endpoint::Tcp).collect()
        };
        let config = AgentConfig {
            managers,
            join_token: target.join_token.clone(),
            state_dir: state_dir.clone(),
            description: description.clone(),
            addr: target
                .addr
                .rsplit_once(':')
                .map(|(h, _)| h.to_owned())
                .unwrap_or_default(),
            manager_role: target.manager,
            raft_id: target.raft_id,
            promotions: Some(promotions_tx.clone()),
            tls: target.tls.clone(),
            node_id: target.node_id.clone(),
        };
        let running = shutdown.child_token();
        let agent = tokio::spawn(Agent::run(config, executor.clone(), running.clone()));
        let same = |t: &AgentTarget| {
            (t.manager, t.raft_id, &t.join_token, &t.addr, &t.node_id)
                == (
                    target.manager,
                    target.raft_id,
                    &target.join_token,
                    &target.addr,
                    &target.node_id,
                )
        };
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(poll * 5) => {}
                Some(token) = promotions.recv() => {
                    if let Err(e) = manager.promote(&token).await {
                        tracing::warn!(error = %e, "promotion to manager failed; it is retried");
                    }
                }
            }
            match manager.agent_target().await {
                Some(t) if same(&t) => {}
                Some(_) => {
                    tracing::info!("this node's role changed: the agent starts again");
                    running.cancel();
                    let _ = agent.await;
                    break;
                }
                None => {
                    tracing::info!("this node left its cluster: the agent stops");
                    running.cancel();
                    let _ = agent.await;
                    break;
                }
            }
        }
    }
}
