//! One lab host's daemon: its directories, starting it inside the host's namespace and its
//! cgroup, and killing it with every process it started (power loss). The daemon lives in
//! `<cgroup root>/shoal-lab-<lab>/<host>/daemon` and gives its containers
//! `--cgroup-parent /shoal-lab-<lab>/<host>`, so everything of a host is under one cgroup
//! directory (v1: the pids hierarchy; v2: the unified one).

use crate::{io_err, net, Executor, HostInfo, LabError, LabState};
use nix::sys::signal::{kill as signal, Signal};
use nix::unistd::Pid;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The directory of a host.
pub fn dir(state: &LabState, host: &str) -> PathBuf {
    state.dir.join("hosts").join(host)
}

/// The API socket of a host.
pub fn socket(state: &LabState, host: &str) -> PathBuf {
    dir(state, host).join("shoal.sock")
}

/// The hierarchy that tracks the lab's processes.
fn tracking_root() -> PathBuf {
    let root = Path::new(CGROUP_ROOT);
    if root.join("cgroup.controllers").exists() {
        root.to_owned()
    } else {
        root.join("pids")
    }
}

/// The cgroup directory of a whole lab.
fn lab_cgroup(lab: &str) -> PathBuf {
    tracking_root().join(format!("shoal-lab-{lab}"))
}

/// The cgroup parent a host's daemon gives its containers.
pub fn cgroup_parent(lab: &str, host: &str) -> String {
    format!("/shoal-lab-{lab}/{host}")
}

/// Starts a host's daemon in its namespace and cgroup; returns once it is spawned.
pub fn start(state: &LabState, h: &HostInfo) -> Result<(), LabError> {
    let d = dir(state, &h.name);
    std::fs::create_dir_all(d.join("data")).map_err(io_err(&d))?;
    let bin = state.bin_dir.join("shoald");
    let mut cmd = Command::new(&bin);
    cmd.arg("--data-root")
        .arg(d.join("data"))
        .arg("--socket")
        .arg(socket(state, &h.name))
        .arg("--exec-root")
        .arg(d.join("run"))
        .arg("--cgroup-parent")
        .arg(cgroup_parent(&state.name, &h.name))
        .args(["--hostname", &h.name, "--log", &state.log])
        .args([
            "--executor",
            match state.executor {
                Executor::Container => "container",
                Executor::Sim => "sim",
            },
        ])
        // Nothing of the lab's leaves the machine: Docker Hub is never asked.
        .args(["--block-registry", "docker.io"])
        .args(&state.daemon_args);
    spawn(state, &h.name, cmd, &d.join("shoald.log"), &d.join("pid"))
}

/// The lab's registry host: its namespace name and where its files are.
pub const REGISTRY_HOST: &str = "reg";

/// The port the lab's registry listens on.
pub const REGISTRY_PORT: u16 = 5000;

/// Starts Debian's docker-registry (distribution) in the registry host's namespace, listening
/// on `addr`:5000 over plain HTTP, its storage under the lab's directory.
pub fn start_registry(state: &LabState, addr: &str) -> Result<(), LabError> {
    let d = dir(state, REGISTRY_HOST);
    std::fs::create_dir_all(&d).map_err(io_err(&d))?;
    let config = d.join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: {addr}:{REGISTRY_PORT}\n",
            d.join("data").display()
        ),
    )
    .map_err(io_err(&config))?;
    let mut cmd = Command::new("docker-registry");
    cmd.arg("serve").arg(&config);
    spawn(
        state,
        REGISTRY_HOST,
        cmd,
        &d.join("registry.log"),
        &d.join("pid"),
    )
}

/// Spawns `cmd` inside `host`'s namespace and cgroup, in a session of its own, its output
/// appended to `log`, its pid written to `pid_file`.
fn spawn(
    state: &LabState,
    host: &str,
    mut cmd: Command,
    log: &Path,
    pid_file: &Path,
) -> Result<(), LabError> {
    let cg = lab_cgroup(&state.name).join(host).join("daemon");
    std::fs::create_dir_all(&cg).map_err(io_err(&cg))?;
    let procs_path = cg.join("cgroup.procs");
    let mut procs = std::fs::OpenOptions::new()
        .write(true)
        .open(&procs_path)
        .map_err(io_err(&procs_path))?;
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io_err(log))?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file);
    net::enter(&mut cmd, &state.name, host)?;
    // SAFETY: between fork and exec the closure only calls write(2) on a descriptor opened
    // before the fork (moving this process into the host's cgroup: "0" is the writer) and
    // setsid(2); both are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            procs.write_all(b"0")?;
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let program = PathBuf::from(cmd.get_program());
    let child = cmd.spawn().map_err(io_err(&program))?;
    std::fs::write(pid_file, child.id().to_string()).map_err(io_err(pid_file))?;
    Ok(())
}

/// True when the host's daemon runs.
pub fn alive(state: &LabState, host: &str) -> bool {
    std::fs::read_to_string(dir(state, host).join("pid"))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .is_some_and(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.contains("(shoald)") && !s.contains(") Z "))
        })
}

/// How many containers run on a host: cgroups under the host's, other than the daemon's, that
/// hold a process.
pub fn containers(lab: &str, host: &str) -> usize {
    let Ok(rd) = std::fs::read_dir(lab_cgroup(lab).join(host)) else {
        return 0;
    };
    rd.flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()) && e.file_name() != "daemon")
        .filter(|e| !procs_under(&e.path()).is_empty())
        .count()
}

/// Every process in a cgroup directory and below it.
fn procs_under(dir: &Path) -> Vec<i32> {
    let mut out = Vec::new();
    if let Ok(s) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(s.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(procs_under(&e.path()));
            }
        }
    }
    out
}

/// SIGKILLs everything under a cgroup directory until nothing is left.
fn kill_under(dir: &Path) -> Result<(), LabError> {
    let start = Instant::now();
    loop {
        let pids = procs_under(dir);
        if pids.is_empty() {
            return Ok(());
        }
        for pid in pids {
            let _ = signal(Pid::from_raw(pid), Signal::SIGKILL);
        }
        if start.elapsed() > Duration::from_secs(10) {
            return Err(LabError::Timeout {
                what: format!("the processes in {} to die", dir.display()),
                after: Duration::from_secs(10),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Power loss: the host's daemon and all its containers and their shims, SIGKILLed together.
pub fn kill(state: &LabState, host: &str) -> Result<(), LabError> {
    kill_under(&lab_cgroup(&state.name).join(host))?;
    // Reap the daemon if this process started it.
    if let Some(pid) = std::fs::read_to_string(dir(state, host).join("pid"))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    {
        let _ = nix::sys::wait::waitpid(
            Pid::from_raw(pid),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        );
    }
    Ok(())
}

/// Kills the host's daemon only (its containers keep running) and waits until it is gone.
pub fn kill_daemon(state: &LabState, host: &str) -> Result<(), LabError> {
    let Some(pid) = std::fs::read_to_string(dir(state, host).join("pid"))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    else {
        return Ok(());
    };
    if alive(state, host) {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
    let _ = nix::sys::wait::waitpid(Pid::from_raw(pid), None);
    let _ = std::fs::remove_file(socket(state, host));
    Ok(())
}

/// Kills every process of a lab.
pub fn kill_all(lab: &str) -> Result<(), LabError> {
    kill_under(&lab_cgroup(lab))
}

/// Unmounts (lazily) everything mounted under `dir`, deepest first.
pub fn unmount_under(dir: &Path) -> Result<(), LabError> {
    let Ok(dir) = dir.canonicalize() else {
        return Ok(());
    };
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(io_err(Path::new("/proc/self/mountinfo")))?;
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(&dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    for p in points {
        let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
    }
    Ok(())
}

fn rmdir_tree(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                rmdir_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// Removes the lab's cgroups in every hierarchy.
pub fn remove_cgroups(lab: &str) -> Result<(), LabError> {
    let name = format!("shoal-lab-{lab}");
    let root = Path::new(CGROUP_ROOT);
    let mut dirs = vec![root.join(&name)];
    if let Ok(rd) = std::fs::read_dir(root) {
        dirs.extend(rd.flatten().map(|e| e.path().join(&name)));
    }
    for d in dirs {
        if d.exists() {
            rmdir_tree(&d);
            if d.exists() {
                return Err(LabError::Command {
                    what: format!("removing cgroup {}", d.display()),
                    message: "still in use".into(),
                });
            }
        }
    }
    Ok(())
}
