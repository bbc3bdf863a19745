//! The lab: several shoal hosts on one machine, for the demo, the whole-cluster tests and the
//! benchmarks.
//!
//! Each host is a network namespace (`shl-<lab>-<host>`) whose `eth0` is a veth to a bridge in
//! a namespace of its own (the switch, `shl-<lab>-sw`; a bridge in the root namespace would
//! cross the FORWARD chain that docker.io sets to DROP). Host addresses come from the lab's
//! /24 (198.18.0.0/24 by default: managers at .11, .12, …, workers at .101, …) and nothing
//! else: no default route, so no lab traffic leaves the machine. Each host runs its own
//! `shoald` with its own data root, runtime directory, socket, log and cgroups
//! (`/shoal-lab-<lab>/<host>`, where the daemon sits in `daemon/` and its containers beside
//! it), entered with setns on the network namespace only (`ip netns exec` would hide
//! /sys/fs/cgroup).
//!
//! The lab's state is written to `<dir>/lab.json`, so `shoal-lab` commands run in other
//! processes find it. [`Lab::down`] (also on drop, unless [`Lab::keep`]) kills every process
//! of the lab, unmounts what its daemons mounted, and removes its namespaces, cgroups and
//! directory; [`Lab::up`] first removes what a crashed run of the same name left.
//!
//! # Layout
//! - [`net`]: namespaces, veths, the switch (netlink, through overlay-net's code) and
//!   entering a namespace.
//! - [`host`]: one host's daemon: start, kill, its cgroup.

pub mod host;
pub mod net;

use serde::{Deserialize, Serialize};
use shoal_client::{Client, Endpoint};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Something the lab could not do.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A command the lab ran failed.
    #[error("{what}: {message}")]
    Command {
        /// What was run.
        what: String,
        /// Its error output.
        message: String,
    },
    /// A file or directory of the lab.
    #[error("{path}: {error}")]
    Io {
        /// Which.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// No such host in the lab.
    #[error("no host {0:?} in the lab (see `shoal-lab status`)")]
    NoHost(String),
    /// No lab of that name is up.
    #[error("no lab is up in {0} (`shoal-lab up` first)")]
    NotUp(PathBuf),
    /// The lab's settings are wrong.
    #[error("{0}")]
    Config(String),
    /// Something did not happen in time.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        after: Duration,
    },
    /// The lab needs root.
    #[error("the lab needs root (network namespaces, mounts, cgroups): run it with sudo")]
    NotRoot,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LabError + '_ {
    move |error| LabError::Io {
        path: path.to_owned(),
        error,
    }
}

/// What runs the tasks of the lab's hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Executor {
    /// Real containers (the test images are imported on every host).
    Container,
    /// Simulated tasks: the control plane only.
    Sim,
}

/// How to build a lab.
#[derive(Debug, Clone)]
pub struct LabConfig {
    /// The lab's name (namespaces and cgroups carry it).
    pub name: String,
    /// Managers, `m1..mM`.
    pub managers: usize,
    /// Workers, `w1..wW`.
    pub workers: usize,
    /// Spare hosts, `s1..sS`: their daemons run but join no cluster (for join tests).
    pub spares: usize,
    /// The underlay, `A.B.C.0/24`.
    pub subnet: String,
    /// Where hosts keep their state.
    pub dir: PathBuf,
    /// Where `shoald`, `shoal` and `shoal-runtime` are.
    pub bin_dir: PathBuf,
    /// What runs tasks.
    pub executor: Executor,
    /// The daemons' log filter.
    pub log: String,
    /// Extra `shoald` flags for every host.
    pub daemon_args: Vec<String>,
    /// Run a registry (Debian's docker-registry) on its own host, `A.B.C.250:5000`, as every
    /// daemon's Docker Hub mirror: the test images are imported on `m1` only and pushed there,
    /// and the other hosts pull them where their tasks land.
    pub registry: bool,
}

impl LabConfig {
    /// A lab named `name` of `managers` and `workers`, state under /var/tmp/shoal-lab/<name>,
    /// binaries beside the running program.
    pub fn new(name: &str, managers: usize, workers: usize) -> LabConfig {
        let exe = std::env::current_exe().unwrap_or_default();
        let mut bin_dir = exe.parent().map(Path::to_owned).unwrap_or_default();
        if bin_dir.ends_with("deps") {
            bin_dir.pop();
        }
        LabConfig {
            name: name.to_owned(),
            managers,
            workers,
            spares: 0,
            subnet: "198.18.0.0/24".into(),
            dir: default_dir(name),
            bin_dir,
            executor: Executor::Container,
            log: "info,raft=warn,netlink_packet_route=error".into(),
            daemon_args: Vec::new(),
            registry: false,
        }
    }
}

/// Where a lab named `name` keeps its state by default.
pub fn default_dir(name: &str) -> PathBuf {
    PathBuf::from("/var/tmp/shoal-lab").join(name)
}

/// One host of the lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInfo {
    /// `m1`, `w2`, …
    pub name: String,
    /// Its underlay address.
    pub addr: String,
    /// True for a manager.
    pub manager: bool,
    /// True for a spare host (in no cluster at first).
    #[serde(default)]
    pub spare: bool,
}

/// The lab's state, as `lab.json` keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabState {
    /// Its name.
    pub name: String,
    /// Its directory.
    pub dir: PathBuf,
    /// Where the binaries are.
    pub bin_dir: PathBuf,
    /// The hosts.
    pub hosts: Vec<HostInfo>,
    /// What runs tasks.
    pub executor: Executor,
    /// The daemons' log filter.
    pub log: String,
    /// Extra `shoald` flags.
    #[serde(default)]
    pub daemon_args: Vec<String>,
    /// The lab's registry (`A.B.C.250:5000`), when it runs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<String>,
}

/// A host's status, as `shoal-lab status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostStatus {
    /// The host.
    pub host: HostInfo,
    /// Its daemon runs.
    pub alive: bool,
    /// Its underlay link is up.
    pub linked: bool,
    /// `manager`, `worker` or what the daemon said.
    pub role: String,
    /// The leader's address, as this host sees it (managers).
    pub leader: Option<String>,
}

/// A running lab.
#[derive(Debug)]
pub struct Lab {
    state: LabState,
    keep: bool,
}

/// How long the lab waits for a host or the cluster to come up: only a real fault reaches it.
pub const BOUND: Duration = Duration::from_secs(60);

/// Polls `cond` every 50 ms until it holds or `bound` passes.
pub fn wait_until(
    what: &str,
    bound: Duration,
    mut cond: impl FnMut() -> bool,
) -> Result<(), LabError> {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > bound {
            return Err(LabError::Timeout {
                what: what.to_owned(),
                after: bound,
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn subnet_prefix(subnet: &str) -> Result<String, LabError> {
    let bad = || LabError::Config(format!("subnet {subnet:?}: use A.B.C.0/24"));
    let (base, len) = subnet.split_once('/').ok_or_else(bad)?;
    if len != "24" {
        return Err(bad());
    }
    let octets: Vec<u8> = base
        .split('.')
        .map(|o| o.parse::<u8>())
        .collect::<Result<_, _>>()
        .map_err(|_| bad())?;
    if octets.len() != 4 || octets[3] != 0 {
        return Err(bad());
    }
    Ok(format!("{}.{}.{}", octets[0], octets[1], octets[2]))
}

impl Lab {
    /// Builds a lab: cleans what an earlier run of the same name left, makes the switch and the
    /// hosts, starts every daemon, makes `m1` the first manager, joins the other managers and
    /// the workers, imports the test images everywhere (container executor), and waits until
    /// every node is ready.
    pub fn up(config: LabConfig) -> Result<Lab, LabError> {
        if !nix::unistd::Uid::effective().is_root() {
            return Err(LabError::NotRoot);
        }
        if config.managers == 0 {
            return Err(LabError::Config("a lab needs at least one manager".into()));
        }
        if config.managers > 80 || config.workers > 90 || config.spares > 50 {
            return Err(LabError::Config(
                "at most 80 managers, 90 workers and 50 spares".into(),
            ));
        }
        if config.name.is_empty()
            || config.name.len() > 6
            || !config.name.chars().all(|c| c.is_ascii_alphanumeric())
        {
            return Err(LabError::Config(format!(
                "lab name {:?}: 1 to 6 letters or digits",
                config.name
            )));
        }
        let prefix = subnet_prefix(&config.subnet)?;
        Lab::clean(&config.name, &config.dir)?;
        let mut hosts = Vec::new();
        for i in 1..=config.managers {
            hosts.push(HostInfo {
                name: format!("m{i}"),
                addr: format!("{prefix}.{}", 10 + i),
                manager: true,
                spare: false,
            });
        }
        for i in 1..=config.workers {
            hosts.push(HostInfo {
                name: format!("w{i}"),
                addr: format!("{prefix}.{}", 100 + i),
                manager: false,
                spare: false,
            });
        }
        for i in 1..=config.spares {
            hosts.push(HostInfo {
                name: format!("s{i}"),
                addr: format!("{prefix}.{}", 200 + i),
                manager: false,
                spare: true,
            });
        }
        let mut daemon_args = config.daemon_args.clone();
        let registry = if config.registry {
            if shoal_testkit::which("docker-registry").is_none() {
                return Err(LabError::Config(
                    "--registry runs Debian's docker-registry: apt-get install docker-registry"
                        .into(),
                ));
            }
            let at = format!("{prefix}.250:{}", host::REGISTRY_PORT);
            daemon_args.extend([
                "--insecure-registry".to_owned(),
                at.clone(),
                "--registry-mirror".to_owned(),
                format!("http://{at}"),
            ]);
            Some(at)
        } else {
            None
        };
        let state = LabState {
            name: config.name.clone(),
            dir: config.dir.clone(),
            bin_dir: config.bin_dir.clone(),
            hosts,
            executor: config.executor,
            log: config.log.clone(),
            daemon_args,
            registry,
        };
        std::fs::create_dir_all(&state.dir).map_err(io_err(&state.dir))?;
        let file = state.dir.join("lab.json");
        std::fs::write(
            &file,
            serde_json::to_vec_pretty(&state).expect("serializes"),
        )
        .map_err(io_err(&file))?;
        // From here on, a failure tears down what was made.
        let lab = Lab { state, keep: false };
        lab.build()?;
        Ok(lab)
    }

    fn build(&self) -> Result<(), LabError> {
        net::make_switch(&self.state.name)?;
        for h in &self.state.hosts {
            net::make_host(&self.state.name, &h.name, &h.addr)?;
        }
        if let Some(at) = &self.state.registry {
            let addr = at.split(':').next().unwrap_or(at);
            net::make_host(&self.state.name, host::REGISTRY_HOST, addr)?;
            host::start_registry(&self.state, addr)?;
        }
        for h in &self.state.hosts {
            host::start(&self.state, h)?;
        }
        for h in &self.state.hosts {
            wait_until(&format!("{}'s daemon", h.name), BOUND, || {
                std::os::unix::net::UnixStream::connect(host::socket(&self.state, &h.name)).is_ok()
            })?;
        }
        let m1 = &self.state.hosts[0];
        self.shoal_ok(&m1.name, &["cluster", "init", "--advertise-addr", &m1.addr])?;
        let manager_token = self.shoal_ok(&m1.name, &["cluster", "join-token", "-q", "manager"])?;
        let worker_token = self.shoal_ok(&m1.name, &["cluster", "join-token", "-q", "worker"])?;
        let remote = format!("{}:{}", m1.addr, shoal_api::wire::CLUSTER_PORT);
        for h in self.state.hosts[1..].iter().filter(|h| !h.spare) {
            let token = if h.manager {
                &manager_token
            } else {
                &worker_token
            };
            self.shoal_ok(
                &h.name,
                &[
                    "cluster",
                    "join",
                    "--token",
                    token.trim(),
                    "--advertise-addr",
                    &h.addr,
                    &remote,
                ],
            )?;
        }
        if self.state.executor == Executor::Container {
            self.import_images()?;
        }
        let want = self.state.hosts.iter().filter(|h| !h.spare).count();
        wait_until("every node ready", BOUND, || {
            self.shoal(&m1.name, &["--format", "json", "node", "ls"])
                .ok()
                .filter(|o| o.status.success())
                .and_then(|o| serde_json::from_slice::<Vec<serde_json::Value>>(&o.stdout).ok())
                .is_some_and(|nodes| {
                    nodes
                        .iter()
                        .filter(|n| n["status"]["state"] == "ready")
                        .count()
                        == want
                })
        })
    }

    fn import_images(&self) -> Result<(), LabError> {
        if !Path::new("/bin/busybox").exists() {
            return Err(LabError::Config(
                "the test images are made from Debian's busybox: apt-get install busybox-static"
                    .into(),
            ));
        }
        let dir = self.state.dir.join("images");
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let busybox = dir.join("busybox.tar");
        let probe = dir.join("probe.tar");
        shoal_testkit::busybox_tar(&busybox).map_err(io_err(&busybox))?;
        shoal_testkit::probe_tar(&probe).map_err(io_err(&probe))?;
        let busybox = busybox.to_string_lossy().into_owned();
        let probe = probe.to_string_lossy().into_owned();
        let hosts: Vec<&HostInfo> = match &self.state.registry {
            // The registry serves the others.
            Some(_) => self.state.hosts.iter().take(1).collect(),
            None => self.state.hosts.iter().collect(),
        };
        std::thread::scope(|s| {
            let jobs: Vec<_> = hosts
                .into_iter()
                .map(|h| {
                    let (busybox, probe) = (&busybox, &probe);
                    s.spawn(move || -> Result<(), LabError> {
                        self.shoal_ok(
                            &h.name,
                            &[
                                "image",
                                "import",
                                busybox,
                                "--tag",
                                "busybox:latest",
                                "--change",
                                r#"CMD ["sh"]"#,
                            ],
                        )?;
                        self.shoal_ok(
                            &h.name,
                            &[
                                "image",
                                "import",
                                probe,
                                "--tag",
                                "probe:latest",
                                "--change",
                                r#"ENTRYPOINT ["/probe"]"#,
                            ],
                        )?;
                        Ok(())
                    })
                })
                .collect();
            jobs.into_iter()
                .try_for_each(|j| j.join().expect("import thread"))
        })?;
        if let Some(at) = &self.state.registry {
            let m1 = &self.state.hosts[0].name;
            for image in ["busybox:latest", "probe:latest"] {
                let target = format!("{at}/library/{image}");
                // The registry may still be starting: its first pushes are refused.
                wait_until(&format!("pushing {image} to {at}"), BOUND, || {
                    self.shoal_ok(m1, &["image", "push", image, &target])
                        .is_ok()
                })?;
            }
        }
        Ok(())
    }

    /// The lab that is up in `dir` (for commands run in another process).
    pub fn open(dir: &Path) -> Result<Lab, LabError> {
        let file = dir.join("lab.json");
        let bytes = std::fs::read(&file).map_err(|_| LabError::NotUp(dir.to_owned()))?;
        let state: LabState = serde_json::from_slice(&bytes)
            .map_err(|e| LabError::Config(format!("{}: {e}", file.display())))?;
        Ok(Lab { state, keep: true })
    }

    /// Leaves the lab up when this value is dropped (`shoal-lab up`).
    pub fn keep(mut self) -> Lab {
        self.keep = true;
        self
    }

    /// Its state.
    pub fn state(&self) -> &LabState {
        &self.state
    }

    /// A host by name.
    pub fn host(&self, name: &str) -> Result<&HostInfo, LabError> {
        self.state
            .hosts
            .iter()
            .find(|h| h.name == name)
            .ok_or_else(|| LabError::NoHost(name.to_owned()))
    }

    /// The managers.
    pub fn managers(&self) -> Vec<&HostInfo> {
        self.state.hosts.iter().filter(|h| h.manager).collect()
    }

    /// A manager other than `not` (the first in order), if there is one.
    pub fn other_manager(&self, not: &str) -> Option<String> {
        self.managers()
            .into_iter()
            .map(|h| h.name.clone())
            .find(|h| h != not)
    }

    /// The API socket of a host.
    pub fn socket(&self, name: &str) -> PathBuf {
        host::socket(&self.state, name)
    }

    /// An API client of a host.
    pub fn client(&self, name: &str) -> Client {
        Client::new(Endpoint::Unix(self.socket(name)))
    }

    /// Runs the `shoal` CLI against a host.
    pub fn shoal(&self, name: &str, args: &[&str]) -> Result<Output, LabError> {
        let bin = self.state.bin_dir.join("shoal");
        Command::new(&bin)
            .arg("-H")
            .arg(format!("unix://{}", self.socket(name).display()))
            .args(args)
            .output()
            .map_err(io_err(&bin))
    }

    /// Runs the `shoal` CLI against a host and returns its output; an error when it fails.
    pub fn shoal_ok(&self, name: &str, args: &[&str]) -> Result<String, LabError> {
        let out = self.shoal(name, args)?;
        if !out.status.success() {
            return Err(LabError::Command {
                what: format!("shoal {} (on {name})", args.join(" ")),
                message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// How many containers run on a host (cgroups holding a process, the daemon's aside).
    pub fn containers(&self, name: &str) -> usize {
        host::containers(&self.state.name, name)
    }

    /// Power loss: the host's daemon and every container of it SIGKILLed at once.
    pub fn kill(&self, name: &str) -> Result<(), LabError> {
        self.host(name)?;
        host::kill(&self.state, name)
    }

    /// Boots a killed host again from its data root.
    pub fn restart(&self, name: &str) -> Result<(), LabError> {
        self.restart_with(name, &[])
    }

    /// Boots a host again with extra `shoald` flags (`--force-new-cluster`).
    pub fn restart_with(&self, name: &str, extra: &[&str]) -> Result<(), LabError> {
        let h = self.host(name)?.clone();
        host::kill(&self.state, name)?;
        let mut state = self.state.clone();
        state
            .daemon_args
            .extend(extra.iter().map(|s| s.to_string()));
        host::start(&state, &h)?;
        wait_until(&format!("{name}'s daemon"), BOUND, || {
            std::os::unix::net::UnixStream::connect(self.socket(name)).is_ok()
        })
    }

    /// Kills only the host's daemon (SIGKILL) and starts it again: its containers keep
    /// running, and the new daemon takes them back (an agent crash or upgrade).
    pub fn restart_daemon(&self, name: &str) -> Result<(), LabError> {
        let h = self.host(name)?.clone();
        host::kill_daemon(&self.state, name)?;
        host::start(&self.state, &h)?;
        wait_until(&format!("{name}'s daemon"), BOUND, || {
            std::os::unix::net::UnixStream::connect(self.socket(name)).is_ok()
        })
    }

    /// Drops the host's underlay link.
    pub fn cut(&self, name: &str) -> Result<(), LabError> {
        self.host(name)?;
        net::set_link(&self.state.name, name, false)
    }

    /// Brings the host's underlay link back.
    pub fn heal(&self, name: &str) -> Result<(), LabError> {
        self.host(name)?;
        net::set_link(&self.state.name, name, true)
    }

    /// Runs `f` on a thread inside a host's network namespace: the sockets it opens are that
    /// host's (a test speaking to a cluster port as a node, or as a stranger, would).
    pub fn in_host<T: Send>(
        &self,
        name: &str,
        f: impl FnOnce() -> T + Send,
    ) -> Result<T, LabError> {
        self.host(name)?;
        let path = format!("/run/netns/{}", net::netns(&self.state.name, name));
        let file = std::fs::File::open(&path).map_err(|error| LabError::Io {
            path: path.clone().into(),
            error,
        })?;
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    use std::os::fd::AsFd;
                    nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(
                        |e| LabError::Io {
                            path: path.into(),
                            error: e.into(),
                        },
                    )?;
                    Ok(f())
                })
                .join()
                .expect("the thread in the host's namespace panicked")
        })
    }

    /// A command that will run inside a host's namespace (pointed at its daemon), for the
    /// caller to spawn and reap.
    pub fn command(&self, name: &str, prog: &Path) -> Result<Command, LabError> {
        self.host(name)?;
        let mut c = Command::new(prog);
        c.env(
            "SHOAL_HOST",
            format!("unix://{}", self.socket(name).display()),
        );
        net::enter(&mut c, &self.state.name, name)?;
        Ok(c)
    }

    /// Runs a command inside the host's network namespace (with `SHOAL_HOST` pointing at its
    /// daemon) and returns its exit status.
    pub fn exec(&self, name: &str, cmd: &[String]) -> Result<std::process::ExitStatus, LabError> {
        self.host(name)?;
        let Some((prog, args)) = cmd.split_first() else {
            return Err(LabError::Config("exec: no command given".into()));
        };
        let mut c = Command::new(prog);
        c.args(args).env(
            "SHOAL_HOST",
            format!("unix://{}", self.socket(name).display()),
        );
        net::enter(&mut c, &self.state.name, name)?;
        c.status().map_err(io_err(Path::new(prog)))
    }

    /// Each host's status.
    pub fn status(&self) -> Vec<HostStatus> {
        self.state
            .hosts
            .iter()
            .map(|h| {
                let alive = host::alive(&self.state, &h.name);
                let linked = net::link_up(&self.state.name, &h.name);
                let info = if alive {
                    self.shoal(&h.name, &["--format", "json", "cluster", "info"])
                        .ok()
                        .filter(|o| o.status.success())
                        .and_then(|o| {
                            serde_json::from_slice::<shoal_api::wire::ClusterInfo>(&o.stdout).ok()
                        })
                } else {
                    None
                };
                let leader = info
                    .as_ref()
                    .and_then(|i| i.raft.managers.get(&i.raft.leader).cloned());
                HostStatus {
                    host: h.clone(),
                    alive,
                    linked,
                    role: if h.manager {
                        "manager".into()
                    } else if h.spare {
                        "spare".into()
                    } else {
                        "worker".into()
                    },
                    leader,
                }
            })
            .collect()
    }

    /// The host that leads, as the managers that answer agree, if one does.
    pub fn leader(&self) -> Option<String> {
        let addr = self
            .status()
            .into_iter()
            .filter(|s| s.alive && s.linked && s.host.manager)
            .find_map(|s| s.leader)?;
        let ip = addr.rsplit_once(':').map(|(h, _)| h.to_owned())?;
        self.state
            .hosts
            .iter()
            .find(|h| h.addr == ip)
            .map(|h| h.name.clone())
    }

    /// Tears the lab down: every process killed, every mount, namespace and cgroup of it
    /// removed, its directory deleted.
    pub fn down(mut self) -> Result<(), LabError> {
        self.keep = true;
        Lab::clean(&self.state.name, &self.state.dir)
    }

    /// Removes whatever a lab named `name` in `dir` left: processes, mounts, namespaces,
    /// cgroups, files. Safe to call when nothing is there.
    pub fn clean(name: &str, dir: &Path) -> Result<(), LabError> {
        host::kill_all(name)?;
        host::unmount_under(dir)?;
        net::remove_all(name)?;
        host::remove_cgroups(name)?;
        match std::fs::remove_dir_all(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_err(dir)(e)),
            _ => {}
        }
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.keep {
            if let Err(e) = Lab::clean(&self.state.name, &self.state.dir) {
                eprintln!("shoal-lab: tearing down lab {}: {e}", self.state.name);
            }
        }
    }
}
