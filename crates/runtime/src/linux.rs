//! The built-in OCI runtime: what `shoal-runtime create|start|state|kill|delete` do with a
//! bundle (`config.json` + root filesystem), the same contract runc and crun keep.
//!
//! `create` clones the container's init with new namespaces, places it in its cgroup, and lets
//! it prepare its world: a private mount tree, the spec's mounts, a minimal /dev, pivot_root,
//! masked and read-only paths, hostname, rlimits, groups and ids, capabilities, no_new_privs.
//! It then reports ready and blocks opening the state directory's `exec.fifo`; `start` opens the
//! other end, and the init execs the process. The parent of `create` (the shim) becomes the
//! init's parent when `create` exits, as it is a child subreaper.

use crate::cgroups::{Cgroup, DeviceKind, DeviceRule, Limits};
use nix::fcntl::{open, OFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::signal::{kill, Signal};
use nix::sys::stat::{makedev, mknod, umask, Mode, SFlag};
use nix::unistd::{Gid, Pid, Uid};
use oci_spec::runtime::{LinuxDeviceType, LinuxNamespaceType, Spec};
use serde::{Deserialize, Serialize};
use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

/// A runtime operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// No container with that id.
    #[error("container {0} does not exist")]
    NotFound(String),
    /// The id is taken.
    #[error("container {0} already exists")]
    Exists(String),
    /// The container is not in a state that allows the operation.
    #[error("container {id} is {status}: {why}")]
    State {
        /// The container.
        id: String,
        /// Its status.
        status: String,
        /// What was refused.
        why: String,
    },
    /// The bundle or spec is unusable.
    #[error("{0}")]
    Spec(String),
    /// The container's init failed while setting up.
    #[error("container init: {0}")]
    Init(String),
    /// The seccomp section cannot be compiled.
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
    /// A system call failed.
    #[error("{context}: {source}")]
    Sys {
        /// What was being done.
        context: String,
        /// Why it failed.
        source: std::io::Error,
    },
}

fn sys<E: Into<std::io::Error>>(context: impl Into<String>) -> impl FnOnce(E) -> RuntimeError {
    let context = context.into();
    move |e| RuntimeError::Sys {
        context,
        source: e.into(),
    }
}

/// What the runtime keeps about a container (`<root>/<id>/state.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    /// Container id.
    pub id: String,
    /// Host pid of the container's init.
    pub pid: i32,
    /// Start time of that pid (field 22 of /proc/PID/stat), to tell a reused pid.
    pub start_time: u64,
    /// The bundle.
    pub bundle: PathBuf,
    /// The cgroup path from the spec.
    pub cgroups_path: String,
    /// When it was created (ms since the epoch).
    pub created: u64,
    /// Whether its cgroup enforces the spec's device rules ([`Cgroup::enforces_devices`]):
    /// processes exec'd into it keep CAP_MKNOD only then.
    #[serde(default = "devices_enforced_before_it_was_recorded")]
    pub devices_enforced: bool,
}

/// State written before `devices_enforced` was recorded: device rules were enforced on v1
/// hosts only.
fn devices_enforced_before_it_was_recorded() -> bool {
    crate::cgroups::mode() == crate::cgroups::Mode::V1
}

/// The state as `state` prints it (runc's fields).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateReport {
    /// OCI version.
    pub oci_version: String,
    /// Container id.
    pub id: String,
    /// `created`, `running` or `stopped`.
    pub status: String,
    /// Host pid of its init (0 once stopped).
    pub pid: i32,
    /// The bundle.
    pub bundle: PathBuf,
}

/// The built-in runtime, keeping its state under `root`.
#[derive(Debug, Clone)]
pub struct Runtime {
    root: PathBuf,
}

/// The start time of `pid`, or None when it is gone or a zombie.
pub fn live_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command may contain spaces and parentheses: fields follow the last `)`.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    if fields.first() == Some(&"Z") || fields.first() == Some(&"X") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Parses `TERM`, `SIGTERM` or `15`.
pub fn parse_signal(s: &str) -> Result<Signal, RuntimeError> {
    let s = s.trim();
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| RuntimeError::Spec(format!("unknown signal {s}")));
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    name.parse::<Signal>()
        .map_err(|_| RuntimeError::Spec(format!("unknown signal {s}")))
}

impl Runtime {
    /// A runtime keeping state under `root`.
    pub fn new(root: &Path) -> Runtime {
        Runtime {
            root: root.to_owned(),
        }
    }

    fn dir(&self, id: &str) -> Result<PathBuf, RuntimeError> {
        if id.is_empty()
            || id.len() > 128
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(RuntimeError::Spec(format!("invalid container id {id:?}")));
        }
        Ok(self.root.join(id))
    }

    /// The saved state of `id`.
    pub fn load(&self, id: &str) -> Result<State, RuntimeError> {
        let path = self.dir(id)?.join("state.json");
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(RuntimeError::NotFound(id.to_owned()))
            }
            Err(e) => return Err(sys(format!("reading {}", path.display()))(e)),
        };
        serde_json::from_slice(&bytes)
            .map_err(|e| RuntimeError::Spec(format!("{} is damaged: {e}", path.display())))
    }

    /// `created`, `running` or `stopped`.
    pub fn status(&self, state: &State) -> &'static str {
        if live_start_time(state.pid) != Some(state.start_time) {
            "stopped"
        } else if self.root.join(&state.id).join("exec.fifo").exists() {
            "created"
        } else {
            "running"
        }
    }

    /// The state report of `id`.
    pub fn state(&self, id: &str) -> Result<StateReport, RuntimeError> {
        let s = self.load(id)?;
        let status = self.status(&s);
        Ok(StateReport {
            oci_version: "1.0.2".into(),
            id: s.id.clone(),
            status: status.into(),
            pid: if status == "stopped" { 0 } else { s.pid },
            bundle: s.bundle,
        })
    }

    /// Runs `process` inside the running container `id` (runc's `exec`): in its cgroup and
    /// namespaces, as the process's user with its capabilities, env and cwd, with this
    /// process's stdio. Returns its exit code (128 + the signal that killed it).
    pub fn exec(
        &self,
        id: &str,
        process: &oci_spec::runtime::Process,
    ) -> Result<i32, RuntimeError> {
        let state = self.load(id)?;
        if self.status(&state) != "running" {
            return Err(RuntimeError::Spec(format!("container {id} is not running")));
        }
        let pid = state.pid;
        // The container's own confinement: its seccomp filter, its capabilities' limits.
        let spec = Spec::load(state.bundle.join("config.json")).map_err(|e| {
            RuntimeError::Spec(format!("{}/config.json: {e}", state.bundle.display()))
        })?;
        let filters = filters_of(&spec)?;
        let process = &confined_process(&spec, process, state.devices_enforced);
        // Its cgroup, in every hierarchy (v1) or the unified one (v2), as /proc says.
        let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .map_err(sys(format!("reading /proc/{pid}/cgroup")))?;
        for line in cgroups.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(_), Some(controllers), Some(path)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            // The unified hierarchy where it is mounted (/sys/fs/cgroup, or its `unified`
            // directory on a hybrid host): joining it puts the process under the container's
            // device program too.
            let dir = if controllers.is_empty() {
                let Some(unified) = crate::cgroups::unified_root() else {
                    continue;
                };
                unified.join(path.trim_start_matches('/'))
            } else {
                let name = controllers.trim_start_matches("name=");
                Path::new(crate::cgroups::ROOT)
                    .join(name)
                    .join(path.trim_start_matches('/'))
            };
            let procs = dir.join("cgroup.procs");
            if procs.exists() {
                std::fs::write(&procs, b"0").map_err(sys(format!("joining {}", dir.display())))?;
            }
        }
        // Its namespaces: those that differ from ours, the mount namespace last (it changes
        // what /proc shows), the pid namespace taking effect for the child forked below.
        let mut join = Vec::new();
        for name in ["ipc", "uts", "net", "cgroup", "pid", "mnt"] {
            let theirs = format!("/proc/{pid}/ns/{name}");
            let same = std::fs::read_link(&theirs).ok()
                == std::fs::read_link(format!("/proc/self/ns/{name}")).ok();
            if same {
                continue;
            }
            let fd = std::fs::File::open(&theirs).map_err(sys(format!("opening {theirs}")))?;
            join.push((OwnedFd::from(fd), name));
        }
        for (fd, name) in &join {
            nix::sched::setns(fd, CloneFlags::empty())
                .map_err(sys(format!("joining the container's {name} namespace")))?;
        }
        // SAFETY: this program is single-threaded (the shoal-runtime CLI), so the child may
        // run any code before it execs.
        match unsafe { nix::unistd::fork() }.map_err(sys("fork"))? {
            nix::unistd::ForkResult::Child => {
                let err = exec_child(process, &filters);
                eprintln!("shoal-runtime exec: {err}");
                std::process::exit(127);
            }
            nix::unistd::ForkResult::Parent { child } => loop {
                match nix::sys::wait::waitpid(child, None) {
                    Ok(nix::sys::wait::WaitStatus::Exited(_, code)) => return Ok(code),
                    Ok(nix::sys::wait::WaitStatus::Signaled(_, sig, _)) => {
                        return Ok(128 + sig as i32)
                    }
                    Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(sys("waiting for the process")(e)),
                }
            },
        }
    }

    /// Creates the container `id` from `bundle`; returns its init's pid.
    pub fn create(
        &self,
        id: &str,
        bundle: &Path,
        pid_file: Option<&Path>,
    ) -> Result<i32, RuntimeError> {
        let dir = self.dir(id)?;
        let bundle = bundle
            .canonicalize()
            .map_err(sys(format!("bundle {}", bundle.display())))?;
        let spec = Spec::load(bundle.join("config.json"))
            .map_err(|e| RuntimeError::Spec(format!("{}/config.json: {e}", bundle.display())))?;
        std::fs::create_dir_all(&self.root).map_err(sys("creating the state root"))?;
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(RuntimeError::Exists(id.to_owned()))
            }
            Err(e) => return Err(sys(format!("creating {}", dir.display()))(e)),
        }
        let result = self.create_in(id, &dir, &bundle, &spec, pid_file);
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        result
    }

    fn create_in(
        &self,
        id: &str,
        dir: &Path,
        bundle: &Path,
        spec: &Spec,
        pid_file: Option<&Path>,
    ) -> Result<i32, RuntimeError> {
        let linux = spec
            .linux()
            .as_ref()
            .ok_or_else(|| RuntimeError::Spec("config.json has no linux section".into()))?;
        let cgroups_path = linux
            .cgroups_path()
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|| format!("/shoal-runtime/{id}"));
        let fifo = dir.join("exec.fifo");
        nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o622)).map_err(sys("mkfifo"))?;
        // umask must not narrow the fifo's mode.
        std::fs::set_permissions(&fifo, std::os::unix::fs::PermissionsExt::from_mode(0o622))
            .map_err(sys("chmod exec.fifo"))?;
        // Compiled before anything is made, so that a bad filter changes nothing.
        let filters = filters_of(spec)?;
        let cgroup = Cgroup::create(&cgroups_path, &limits_of(spec))
            .map_err(sys(format!("cgroup {cgroups_path}")))?;
        match self.spawn_init(spec, bundle, &fifo, &cgroup, &filters) {
            Ok(pid) => {
                let state = State {
                    id: id.to_owned(),
                    pid,
                    start_time: live_start_time(pid).unwrap_or(0),
                    bundle: bundle.to_owned(),
                    cgroups_path,
                    created: crate::now_ms(),
                    devices_enforced: cgroup.enforces_devices(),
                };
                let bytes = serde_json::to_vec(&state).expect("state serializes");
                crate::write_atomic(&dir.join("state.json"), &bytes)
                    .map_err(sys("writing state.json"))?;
                if let Some(p) = pid_file {
                    crate::write_atomic(p, pid.to_string().as_bytes())
                        .map_err(sys(format!("writing {}", p.display())))?;
                }
                Ok(pid)
            }
            Err(e) => {
                let _ = cgroup.remove(Duration::from_secs(1));
                Err(e)
            }
        }
    }

    fn spawn_init(
        &self,
        spec: &Spec,
        bundle: &Path,
        fifo: &Path,
        cgroup: &Cgroup,
        filters: &[seccompiler::BpfProgram],
    ) -> Result<i32, RuntimeError> {
        let (go_r, go_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(sys("pipe"))?;
        let (ready_r, ready_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(sys("pipe"))?;
        let mut flags = CloneFlags::empty();
        let mut join: Vec<(OwnedFd, CloneFlags)> = Vec::new();
        let namespaces = spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().clone())
            .unwrap_or_default();
        for ns in &namespaces {
            let flag = match ns.typ() {
                LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
                LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
                LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
                LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
                LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
                LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
                other => {
                    return Err(RuntimeError::Spec(format!(
                        "namespace {other:?} is not supported by the built-in runtime"
                    )))
                }
            };
            match ns.path() {
                None => flags |= flag,
                Some(p) if flag == CloneFlags::CLONE_NEWPID => {
                    return Err(RuntimeError::Spec(format!(
                        "joining a pid namespace ({}) is not supported",
                        p.display()
                    )))
                }
                Some(p) => {
                    let fd = open(p, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
                        .map_err(sys(format!("opening namespace {}", p.display())))?;
                    // SAFETY: open returned a new descriptor that nothing else owns.
                    join.push((unsafe { OwnedFd::from_raw_fd(fd) }, flag));
                }
            }
        }
        let fifo_fd = open(fifo, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(sys("opening exec.fifo"))?;
        // SAFETY: as above, a fresh descriptor.
        let fifo_fd = unsafe { OwnedFd::from_raw_fd(fifo_fd) };
        let ctx = InitContext {
            spec,
            bundle,
            go: go_r.as_raw_fd(),
            ready: ready_w.as_raw_fd(),
            fifo: fifo_fd.as_raw_fd(),
            join: &join,
            filters,
            devices_enforced: cgroup.enforces_devices(),
        };
        let mut stack = vec![0u8; 1 << 20];
        // SAFETY: this program is single-threaded when it creates containers (the
        // `shoal-runtime` binary), so the child may allocate and run arbitrary code; the child
        // gets its own copy of memory (no CLONE_VM), so `ctx` and the stack stay valid in it.
        let pid = unsafe {
            nix::sched::clone(
                Box::new(|| init(&ctx)),
                &mut stack,
                flags,
                Some(libc::SIGCHLD),
            )
        }
        .map_err(sys("clone"))?;
        drop(go_r);
        drop(ready_w);
        let fail = |e: RuntimeError| {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, None);
            e
        };
        if let Err(e) = cgroup.add(pid.as_raw()) {
            return Err(fail(sys("joining the cgroup")(e)));
        }
        let mut go = std::fs::File::from(go_w);
        if let Err(e) = go.write_all(b"g") {
            return Err(fail(sys("signalling the init")(e)));
        }
        drop(go);
        let mut ready = std::fs::File::from(ready_r);
        let mut msg = String::new();
        let _ = ready.read_to_string(&mut msg);
        if msg == "ok" {
            Ok(pid.as_raw())
        } else if msg.is_empty() {
            Err(fail(RuntimeError::Init("exited while setting up".into())))
        } else {
            Err(fail(RuntimeError::Init(msg)))
        }
    }

    /// Lets the created container's process run.
    pub fn start(&self, id: &str) -> Result<(), RuntimeError> {
        let state = self.load(id)?;
        let status = self.status(&state);
        if status != "created" {
            return Err(RuntimeError::State {
                id: id.into(),
                status: status.into(),
                why: "cannot start a container that is not created".into(),
            });
        }
        let fifo = self.root.join(id).join("exec.fifo");
        let fd = open(
            &fifo,
            OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(sys("opening exec.fifo"))?;
        // SAFETY: a fresh descriptor from open.
        let mut f = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let mut byte = [0u8; 1];
        loop {
            match f.read(&mut byte) {
                Ok(1) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(sys("reading exec.fifo")(e)),
            }
            if live_start_time(state.pid) != Some(state.start_time) {
                return Err(RuntimeError::Init("exited before it was started".into()));
            }
            // The init opens its end as its last step before exec: this waits microseconds.
            std::thread::sleep(Duration::from_micros(200));
        }
        std::fs::remove_file(&fifo).map_err(sys("removing exec.fifo"))?;
        Ok(())
    }

    /// Sends `signal` to the container's init.
    pub fn kill(&self, id: &str, signal: Signal) -> Result<(), RuntimeError> {
        let state = self.load(id)?;
        if self.status(&state) == "stopped" {
            return Err(RuntimeError::State {
                id: id.into(),
                status: "stopped".into(),
                why: "nothing to signal".into(),
            });
        }
        kill(Pid::from_raw(state.pid), signal).map_err(sys("kill"))
    }

    /// Removes the container: its cgroup and state. A running one needs `force` (SIGKILL).
    pub fn delete(&self, id: &str, force: bool) -> Result<(), RuntimeError> {
        let state = self.load(id)?;
        let status = self.status(&state);
        if status == "running" && !force {
            return Err(RuntimeError::State {
                id: id.into(),
                status: status.into(),
                why: "stop it first or delete with --force".into(),
            });
        }
        let cgroup = Cgroup::at(&state.cgroups_path);
        if status != "stopped" {
            let _ = kill(Pid::from_raw(state.pid), Signal::SIGKILL);
        }
        // Processes left in the cgroup (a container without its own pid namespace).
        for p in cgroup.pids() {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while live_start_time(state.pid) == Some(state.start_time) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        cgroup
            .remove(Duration::from_secs(5))
            .map_err(sys("removing the cgroup"))?;
        std::fs::remove_dir_all(self.root.join(id)).map_err(sys("removing the state"))?;
        Ok(())
    }
}

/// The cgroup limits a spec asks for.
pub fn limits_of(spec: &Spec) -> Limits {
    let mut l = Limits::default();
    let Some(r) = spec.linux().as_ref().and_then(|l| l.resources().as_ref()) else {
        return l;
    };
    if let Some(m) = r.memory() {
        l.memory = m.limit();
    }
    if let Some(c) = r.cpu() {
        if let Some(q) = c.quota() {
            l.cpu = Some((q, c.period().unwrap_or(100_000)));
        }
    }
    if let Some(p) = r.pids() {
        l.pids = Some(p.limit());
    }
    for d in r.devices().clone().unwrap_or_default() {
        let kind = match d.typ() {
            Some(LinuxDeviceType::C | LinuxDeviceType::U) => DeviceKind::Char,
            Some(LinuxDeviceType::B) => DeviceKind::Block,
            Some(LinuxDeviceType::A) | None => DeviceKind::All,
            // A FIFO is no device the kernel asks the rules about: such a rule means nothing
            // (and must not widen into one about every device).
            Some(LinuxDeviceType::P) => continue,
        };
        l.devices.push(DeviceRule {
            allow: d.allow(),
            kind,
            major: d.major(),
            minor: d.minor(),
            access: d.access().clone().unwrap_or_else(|| "rwm".into()),
        });
    }
    l
}

struct InitContext<'a> {
    spec: &'a Spec,
    bundle: &'a Path,
    go: RawFd,
    ready: RawFd,
    fifo: RawFd,
    join: &'a [(OwnedFd, CloneFlags)],
    filters: &'a [seccompiler::BpfProgram],
    devices_enforced: bool,
}

/// The seccomp programs of the spec's `linux.seccomp` (none without one).
pub fn filters_of(spec: &Spec) -> Result<Vec<seccompiler::BpfProgram>, RuntimeError> {
    match spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
        Some(section) => Ok(crate::seccomp::compile(section)?),
        None => Ok(Vec::new()),
    }
}

/// The process as this runtime can confine it. Device rules are enforced by the v1 devices
/// controller, or on v2 by a BPF device program ([`crate::devices_bpf`]); where the kernel
/// refuses that program, a spec that restricts devices loses CAP_MKNOD, so that no device
/// node can be made without rules in place.
pub fn confined_process(
    spec: &Spec,
    process: &oci_spec::runtime::Process,
    rules_enforced: bool,
) -> oci_spec::runtime::Process {
    let mut process = process.clone();
    let restricts_devices = limits_of(spec).devices.first().is_some_and(|r| !r.allow);
    if !rules_enforced && restricts_devices {
        if let Some(mut caps) = process.capabilities().clone() {
            let strip = |set: &Option<oci_spec::runtime::Capabilities>| {
                set.clone().map(|mut s| {
                    s.remove(&oci_spec::runtime::Capability::Mknod);
                    s
                })
            };
            caps.set_bounding(strip(caps.bounding()));
            caps.set_effective(strip(caps.effective()));
            caps.set_permitted(strip(caps.permitted()));
            caps.set_inheritable(strip(caps.inheritable()));
            caps.set_ambient(strip(caps.ambient()));
            process.set_capabilities(Some(caps));
        }
    }
    process
}

/// The container's init, in the child: sets everything up, reports, waits for start, execs.
fn init(ctx: &InitContext) -> isize {
    // SAFETY: the descriptor numbers were inherited from the parent and are owned here alone.
    let mut ready = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(ctx.ready) });
    match prepare(ctx) {
        Ok((program, args, env)) => {
            let _ = ready.write_all(b"ok");
            drop(ready);
            let fifo = format!("/proc/self/fd/{}", ctx.fifo);
            match open(
                fifo.as_str(),
                OFlag::O_WRONLY | OFlag::O_CLOEXEC,
                Mode::empty(),
            ) {
                Ok(fd) => {
                    let _ = nix::unistd::write(
                        // SAFETY: fd was just returned by open and is still open.
                        unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
                        b"0",
                    );
                    let _ = nix::unistd::close(fd);
                }
                Err(e) => {
                    eprintln!("shoal-runtime: opening exec.fifo: {e}");
                    return 127;
                }
            }
            let _ = nix::unistd::close(ctx.fifo);
            if let Err(e) = crate::seccomp::install(ctx.filters) {
                eprintln!("shoal-runtime: {e}");
                return 127;
            }
            let err = nix::unistd::execve(&program, &args, &env).unwrap_err();
            eprintln!("shoal-runtime: exec {}: {err}", program.to_string_lossy());
            127
        }
        Err(e) => {
            let _ = ready.write_all(e.as_bytes());
            1
        }
    }
}

type Exec = (CString, Vec<CString>, Vec<CString>);

fn prepare(ctx: &InitContext) -> Result<Exec, String> {
    let spec = ctx.spec;
    // Wait until the parent has put us in our cgroup.
    // SAFETY: the descriptor was inherited and is owned here alone.
    let mut go = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(ctx.go) });
    let mut b = [0u8; 1];
    go.read_exact(&mut b)
        .map_err(|e| format!("waiting for the parent: {e}"))?;
    drop(go);
    for (fd, flag) in ctx.join {
        nix::sched::setns(fd, *flag).map_err(|e| format!("setns {flag:?}: {e}"))?;
    }
    nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
    let new_net_ns = spec.linux().as_ref().is_some_and(|l| {
        l.namespaces().as_ref().is_some_and(|n| {
            n.iter()
                .any(|n| n.typ() == LinuxNamespaceType::Network && n.path().is_none())
        })
    });
    if new_net_ns {
        loopback_up().map_err(|e| format!("bringing lo up: {e}"))?;
    }
    umask(Mode::empty());
    let root = spec.root().as_ref().ok_or("config.json has no root")?;
    let rootfs = if root.path().is_absolute() {
        root.path().clone()
    } else {
        ctx.bundle.join(root.path())
    };
    let process = &confined_process(
        spec,
        spec.process()
            .as_ref()
            .ok_or("config.json has no process")?,
        ctx.devices_enforced,
    );
    let new_mount_ns = spec.linux().as_ref().is_some_and(|l| {
        l.namespaces().as_ref().is_some_and(|n| {
            n.iter()
                .any(|n| n.typ() == LinuxNamespaceType::Mount && n.path().is_none())
        })
    });
    if !new_mount_ns {
        return Err("the built-in runtime needs a new mount namespace".into());
    }
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| format!("making / private: {e}"))?;
    mount(
        Some(&rootfs),
        &rootfs,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| format!("binding the rootfs {}: {e}", rootfs.display()))?;
    let mut dev_is_tmpfs = false;
    for m in spec.mounts().clone().unwrap_or_default() {
        let dest = m.destination().to_string_lossy().into_owned();
        let kind = m.typ().clone().unwrap_or_default();
        if dest == "/dev" && kind == "tmpfs" {
            dev_is_tmpfs = true;
        }
        mount_one(&rootfs, &m).map_err(|e| format!("mount {dest} ({kind}): {e}"))?;
    }
    if dev_is_tmpfs {
        make_devices(&rootfs).map_err(|e| format!("/dev: {e}"))?;
    }
    for d in spec
        .linux()
        .as_ref()
        .and_then(|l| l.devices().clone())
        .unwrap_or_default()
    {
        make_device(&rootfs, &d).map_err(|e| format!("device {}: {e}", d.path().display()))?;
    }
    let cwd = if process.cwd().as_os_str().is_empty() {
        PathBuf::from("/")
    } else {
        process.cwd().clone()
    };
    // As Docker creates a missing WORKDIR.
    let cwd_host = secure_join(&rootfs, &cwd).map_err(|e| format!("cwd: {e}"))?;
    if !cwd_host.exists() {
        std::fs::create_dir_all(&cwd_host)
            .map_err(|e| format!("creating the working directory {}: {e}", cwd.display()))?;
        let u = process.user();
        let _ = nix::unistd::chown(
            &cwd_host,
            Some(Uid::from_raw(u.uid())),
            Some(Gid::from_raw(u.gid())),
        );
    }
    // pivot_root(".", ".") stacks the old root under the new one; detach it at once.
    nix::unistd::chdir(&rootfs).map_err(|e| format!("chdir rootfs: {e}"))?;
    nix::unistd::pivot_root(".", ".").map_err(|e| format!("pivot_root: {e}"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| format!("detaching the old root: {e}"))?;
    nix::unistd::chdir("/").map_err(|e| format!("chdir /: {e}"))?;
    if let Some(linux) = spec.linux() {
        for p in linux.masked_paths().clone().unwrap_or_default() {
            mask(&p).map_err(|e| format!("masking {p}: {e}"))?;
        }
        for p in linux.readonly_paths().clone().unwrap_or_default() {
            read_only(Path::new(&p)).map_err(|e| format!("read-only {p}: {e}"))?;
        }
    }
    if root.readonly().unwrap_or(false) {
        remount_ro(Path::new("/")).map_err(|e| format!("read-only rootfs: {e}"))?;
    }
    if let Some(h) = spec.hostname() {
        if !h.is_empty() {
            nix::unistd::sethostname(h).map_err(|e| format!("sethostname: {e}"))?;
        }
    }
    for r in process.rlimits().clone().unwrap_or_default() {
        let name = serde_json::to_value(r.typ())
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let resource = rlimit_resource(&name).ok_or(format!("unknown rlimit {name}"))?;
        nix::sys::resource::setrlimit(resource, r.soft(), r.hard())
            .map_err(|e| format!("setrlimit {name}: {e}"))?;
    }
    // Path lookup happens before dropping privileges, as runc does.
    let env: Vec<String> = process.env().clone().unwrap_or_default();
    let args: Vec<String> = process.args().clone().unwrap_or_default();
    let program = find_program(args.first().ok_or("process.args is empty")?, &env)?;
    set_identity(process)?;
    nix::unistd::chdir(&cwd).map_err(|e| {
        format!(
            "chdir to cwd ({}) set in config.json failed: {e}",
            cwd.display()
        )
    })?;
    if process.no_new_privileges().unwrap_or(false) {
        nix::sys::prctl::set_no_new_privs().map_err(|e| format!("no_new_privs: {e}"))?;
    }
    umask(Mode::from_bits_truncate(0o022));
    let cstr = |s: &str| CString::new(s).map_err(|_| format!("{s:?} contains NUL"));
    Ok((
        cstr(&program)?,
        args.iter().map(|a| cstr(a)).collect::<Result<_, _>>()?,
        env.iter().map(|a| cstr(a)).collect::<Result<_, _>>()?,
    ))
}

/// The exec'd process, in the child, inside the container: identity, cwd, then exec.
/// Returns only on failure.
fn exec_child(process: &oci_spec::runtime::Process, filters: &[seccompiler::BpfProgram]) -> String {
    let run = || -> Result<std::convert::Infallible, String> {
        // Killed with the `exec` that waits for it (a caller that went away).
        nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
            .map_err(|e| format!("pdeathsig: {e}"))?;
        nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
        if process.terminal() == Some(true) {
            // Its stdin is the terminal the caller made: it becomes the session's.
            // SAFETY: TIOCSCTTY takes an integer argument; fd 0 is ours.
            if unsafe { nix::libc::ioctl(0, nix::libc::TIOCSCTTY, 0) } < 0 {
                return Err(format!(
                    "making stdin the controlling terminal: {}",
                    std::io::Error::last_os_error()
                ));
            }
        }
        let env: Vec<String> = process.env().clone().unwrap_or_default();
        let args: Vec<String> = process.args().clone().unwrap_or_default();
        let program = find_program(args.first().ok_or("process.args is empty")?, &env)?;
        set_identity(process)?;
        nix::unistd::chdir(process.cwd())
            .map_err(|e| format!("chdir to {}: {e}", process.cwd().display()))?;
        if process.no_new_privileges().unwrap_or(false) {
            nix::sys::prctl::set_no_new_privs().map_err(|e| format!("no_new_privs: {e}"))?;
        }
        let cstr = |s: &str| CString::new(s).map_err(|_| format!("{s:?} contains NUL"));
        let argv: Vec<CString> = args.iter().map(|a| cstr(a)).collect::<Result<_, _>>()?;
        let envp: Vec<CString> = env.iter().map(|a| cstr(a)).collect::<Result<_, _>>()?;
        let program = cstr(&program)?;
        crate::seccomp::install(filters).map_err(|e| e.to_string())?;
        nix::unistd::execve(&program, &argv, &envp)
            .map_err(|e| format!("exec {}: {e}", program.to_string_lossy()))
    };
    match run() {
        Err(e) => e,
        Ok(never) => match never {},
    }
}

/// Groups, gid, uid, then capabilities (the bounding set is cut while still root).
fn set_identity(process: &oci_spec::runtime::Process) -> Result<(), String> {
    use caps::CapSet;
    let caps = process.capabilities().clone().unwrap_or_default();
    let set_of =
        |s: &Option<oci_spec::runtime::Capabilities>| -> Result<caps::CapsHashSet, String> {
            s.clone()
                .unwrap_or_default()
                .iter()
                .map(|c| {
                    let name = serde_json::to_value(c)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default();
                    name.parse::<caps::Capability>()
                        .map_err(|_| format!("unknown capability {name}"))
                })
                .collect()
        };
    let bounding = set_of(caps.bounding())?;
    let effective = set_of(caps.effective())?;
    let permitted = set_of(caps.permitted())?;
    let inheritable = set_of(caps.inheritable())?;
    let ambient = set_of(caps.ambient())?;
    for c in caps::all() {
        if !bounding.contains(&c) {
            // Capabilities the kernel does not know fail with EINVAL: nothing to drop.
            let _ = caps::drop(None, CapSet::Bounding, c);
        }
    }
    let user = process.user();
    let groups: Vec<Gid> = user
        .additional_gids()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(Gid::from_raw)
        .collect();
    nix::unistd::setgroups(&groups).map_err(|e| format!("setgroups: {e}"))?;
    let gid = Gid::from_raw(user.gid());
    nix::unistd::setresgid(gid, gid, gid).map_err(|e| format!("setgid: {e}"))?;
    nix::sys::prctl::set_keepcaps(true).map_err(|e| format!("keepcaps: {e}"))?;
    let uid = Uid::from_raw(user.uid());
    nix::unistd::setresuid(uid, uid, uid).map_err(|e| format!("setuid: {e}"))?;
    nix::sys::prctl::set_keepcaps(false).map_err(|e| format!("keepcaps: {e}"))?;
    caps::set(
        None,
        CapSet::Effective,
        &effective.intersection(&permitted).cloned().collect(),
    )
    .map_err(|e| format!("effective capabilities: {e}"))?;
    caps::set(None, CapSet::Permitted, &permitted)
        .map_err(|e| format!("permitted capabilities: {e}"))?;
    caps::set(None, CapSet::Effective, &effective)
        .map_err(|e| format!("effective capabilities: {e}"))?;
    caps::set(None, CapSet::Inheritable, &inheritable)
        .map_err(|e| format!("inheritable capabilities: {e}"))?;
    if !ambient.is_empty() {
        caps::set(None, CapSet::Ambient, &ambient)
            .map_err(|e| format!("ambient capabilities: {e}"))?;
    }
    Ok(())
}

fn rlimit_resource(name: &str) -> Option<nix::sys::resource::Resource> {
    use nix::sys::resource::Resource as R;
    Some(match name {
        "RLIMIT_NOFILE" => R::RLIMIT_NOFILE,
        "RLIMIT_NPROC" => R::RLIMIT_NPROC,
        "RLIMIT_CORE" => R::RLIMIT_CORE,
        "RLIMIT_STACK" => R::RLIMIT_STACK,
        "RLIMIT_AS" => R::RLIMIT_AS,
        "RLIMIT_CPU" => R::RLIMIT_CPU,
        "RLIMIT_DATA" => R::RLIMIT_DATA,
        "RLIMIT_FSIZE" => R::RLIMIT_FSIZE,
        "RLIMIT_MEMLOCK" => R::RLIMIT_MEMLOCK,
        "RLIMIT_MSGQUEUE" => R::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => R::RLIMIT_NICE,
        "RLIMIT_RTPRIO" => R::RLIMIT_RTPRIO,
        "RLIMIT_SIGPENDING" => R::RLIMIT_SIGPENDING,
        _ => return None,
    })
}

/// The program to exec: a path as is, a bare name looked up in the process's PATH.
fn find_program(arg0: &str, env: &[String]) -> Result<String, String> {
    let executable = |p: &Path| {
        nix::unistd::access(p, nix::unistd::AccessFlags::X_OK).is_ok()
            && std::fs::metadata(p).is_ok_and(|m| m.is_file())
    };
    if arg0.contains('/') {
        return if executable(Path::new(arg0)) {
            Ok(arg0.to_owned())
        } else {
            Err(format!("exec: {arg0:?}: no such file or not executable"))
        };
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let p = Path::new(dir).join(arg0);
        if executable(&p) {
            return Ok(p.to_string_lossy().into_owned());
        }
    }
    Err(format!(
        "exec: {arg0:?}: executable file not found in $PATH"
    ))
}

/// `path` inside `root`, following symlinks as if `root` were `/` (no escape).
pub fn secure_join(root: &Path, path: &Path) -> std::io::Result<PathBuf> {
    let mut out = root.to_owned();
    let mut pending: Vec<std::ffi::OsString> = path
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(p) => Some(p.to_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut links = 0;
    while let Some(c) = pending.pop() {
        if c == ".." {
            if out != root {
                out.pop();
            }
            continue;
        }
        let next = out.join(&c);
        match std::fs::symlink_metadata(&next) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > 40 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        "too many levels of symbolic links",
                    ));
                }
                let target = std::fs::read_link(&next)?;
                if target.is_absolute() {
                    out = root.to_owned();
                }
                for t in target.components().rev() {
                    match t {
                        Component::Normal(p) => pending.push(p.to_owned()),
                        Component::ParentDir => pending.push("..".into()),
                        _ => {}
                    }
                }
            }
            _ => out = next,
        }
    }
    Ok(out)
}

struct MountOptions {
    flags: MsFlags,
    propagation: MsFlags,
    data: Vec<String>,
}

fn parse_mount_options(options: &[String]) -> MountOptions {
    let mut o = MountOptions {
        flags: MsFlags::empty(),
        propagation: MsFlags::empty(),
        data: Vec::new(),
    };
    for opt in options {
        let (set, clear) = match opt.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty()),
            "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty()),
            "private" => {
                o.propagation |= MsFlags::MS_PRIVATE;
                continue;
            }
            "rprivate" => {
                o.propagation |= MsFlags::MS_PRIVATE | MsFlags::MS_REC;
                continue;
            }
            "slave" => {
                o.propagation |= MsFlags::MS_SLAVE;
                continue;
            }
            "rslave" => {
                o.propagation |= MsFlags::MS_SLAVE | MsFlags::MS_REC;
                continue;
            }
            "shared" => {
                o.propagation |= MsFlags::MS_SHARED;
                continue;
            }
            "rshared" => {
                o.propagation |= MsFlags::MS_SHARED | MsFlags::MS_REC;
                continue;
            }
            _ => {
                o.data.push(opt.clone());
                continue;
            }
        };
        o.flags.insert(set);
        o.flags.remove(clear);
    }
    o
}

fn mount_one(rootfs: &Path, m: &oci_spec::runtime::Mount) -> std::io::Result<()> {
    let opts = parse_mount_options(&m.options().clone().unwrap_or_default());
    let kind = m.typ().clone().unwrap_or_default();
    let dest = secure_join(rootfs, m.destination())?;
    let bind = opts.flags.contains(MsFlags::MS_BIND) || kind == "bind";
    let source = m.source().clone().unwrap_or_default();
    if kind == "cgroup" || kind == "cgroup2" {
        // A read-only view of the container's cgroup is not provided yet.
        return Ok(());
    }
    if bind {
        let meta = std::fs::metadata(&source)?;
        if meta.is_dir() {
            std::fs::create_dir_all(&dest)?;
        } else {
            if let Some(p) = dest.parent() {
                std::fs::create_dir_all(p)?;
            }
            if !dest.exists() {
                std::fs::File::create(&dest)?;
            }
        }
        let rec = opts.flags & MsFlags::MS_REC;
        mount(
            Some(&source),
            &dest,
            None::<&str>,
            MsFlags::MS_BIND | rec,
            None::<&str>,
        )?;
        let extra = opts.flags - (MsFlags::MS_BIND | MsFlags::MS_REC);
        if !extra.is_empty() {
            remount_with(&dest, extra)?;
        }
    } else {
        std::fs::create_dir_all(&dest)?;
        let data = opts.data.join(",");
        let data = (!data.is_empty()).then_some(data);
        mount(
            Some(&source),
            &dest,
            Some(kind.as_str()),
            opts.flags,
            data.as_deref(),
        )?;
    }
    if !opts.propagation.is_empty() {
        mount(
            None::<&str>,
            &dest,
            None::<&str>,
            opts.propagation,
            None::<&str>,
        )?;
    }
    Ok(())
}

/// Flags of the mount at `path` that a bind remount must keep.
fn current_flags(path: &Path) -> std::io::Result<MsFlags> {
    use nix::sys::statvfs::FsFlags;
    let st = nix::sys::statvfs::statvfs(path)?;
    let f = st.flags();
    let mut out = MsFlags::empty();
    for (fs, ms) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
    ] {
        if f.contains(fs) {
            out |= ms;
        }
    }
    Ok(out)
}

fn remount_with(path: &Path, flags: MsFlags) -> std::io::Result<()> {
    let keep = current_flags(path)?;
    mount(
        None::<&str>,
        path,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | keep | flags,
        None::<&str>,
    )?;
    Ok(())
}

fn remount_ro(path: &Path) -> std::io::Result<()> {
    remount_with(path, MsFlags::MS_RDONLY)
}

fn mask(path: &str) -> std::io::Result<()> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(m) if m.is_dir() => Ok(mount(
            Some("tmpfs"),
            path,
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            None::<&str>,
        )?),
        Ok(_) => Ok(mount(
            Some("/dev/null"),
            path,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )?),
    }
}

fn read_only(path: &Path) -> std::io::Result<()> {
    if !path.exists() {
        return Ok(());
    }
    mount(
        Some(path),
        path,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )?;
    remount_ro(path)
}

/// Sets the loopback interface of a new network namespace up (as runc does).
fn loopback_up() -> std::io::Result<()> {
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain old data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in b"lo".iter().enumerate() {
        req.ifr_name[i] = *b as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq we own, on an open socket.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A device of the spec's `linux.devices` in the container's /dev (where the defaults are
/// already, they stay), with its mode and owner.
fn make_device(rootfs: &Path, d: &oci_spec::runtime::LinuxDevice) -> std::io::Result<()> {
    let path = secure_join(rootfs, d.path())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    if path.symlink_metadata().is_ok() {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let kind = match d.typ() {
        oci_spec::runtime::LinuxDeviceType::B => SFlag::S_IFBLK,
        oci_spec::runtime::LinuxDeviceType::P => SFlag::S_IFIFO,
        _ => SFlag::S_IFCHR,
    };
    let mode = Mode::from_bits_truncate(d.file_mode().unwrap_or(0o666));
    mknod(
        &path,
        kind,
        mode,
        makedev(d.major() as u64, d.minor() as u64),
    )?;
    // mknod applies the umask: set the mode as given.
    std::fs::set_permissions(
        &path,
        std::os::unix::fs::PermissionsExt::from_mode(mode.bits()),
    )?;
    nix::unistd::chown(
        &path,
        d.uid().map(Uid::from_raw),
        d.gid().map(Gid::from_raw),
    )?;
    Ok(())
}

/// The default devices of a container's /dev, and its usual links.
fn make_devices(rootfs: &Path) -> std::io::Result<()> {
    let dev = rootfs.join("dev");
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        let p = dev.join(name);
        mknod(
            &p,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(major, minor),
        )?;
    }
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        std::os::unix::fs::symlink(target, dev.join(name))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spec's device list becomes the rules in order; a FIFO rule is dropped rather than
    /// read as one about every device.
    #[test]
    fn device_rules_come_from_the_spec_in_order() {
        use oci_spec::runtime::{
            LinuxBuilder, LinuxDeviceCgroupBuilder, LinuxResourcesBuilder, SpecBuilder,
        };
        let rule = |allow, typ: Option<LinuxDeviceType>, major: Option<i64>, access: &str| {
            let mut b = LinuxDeviceCgroupBuilder::default()
                .allow(allow)
                .access(access);
            if let Some(t) = typ {
                b = b.typ(t);
            }
            if let Some(m) = major {
                b = b.major(m);
            }
            b.build().unwrap()
        };
        let resources = LinuxResourcesBuilder::default()
            .devices(vec![
                rule(false, None, None, "rwm"),
                rule(true, Some(LinuxDeviceType::P), None, "rwm"),
                rule(true, Some(LinuxDeviceType::C), Some(1), "rw"),
                rule(true, Some(LinuxDeviceType::B), Some(8), "m"),
            ])
            .build()
            .unwrap();
        let spec = SpecBuilder::default()
            .linux(
                LinuxBuilder::default()
                    .resources(resources)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let rules = limits_of(&spec).devices;
        let lines: Vec<(bool, String)> = rules.iter().map(|r| (r.allow, r.v1_line())).collect();
        assert_eq!(
            lines,
            [
                (false, "a *:* rwm".to_owned()),
                (true, "c 1:* rw".to_owned()),
                (true, "b 8:* m".to_owned()),
            ]
        );
    }

    #[test]
    fn signals_parse_by_name_and_number() {
        assert_eq!(parse_signal("TERM").unwrap(), Signal::SIGTERM);
        assert_eq!(parse_signal("sigkill").unwrap(), Signal::SIGKILL);
        assert_eq!(parse_signal("2").unwrap(), Signal::SIGINT);
        assert!(parse_signal("NOPE").is_err());
    }

    #[test]
    fn secure_join_stays_inside() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("a")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("a/abs")).unwrap();
        std::os::unix::fs::symlink("../../..", root.join("a/up")).unwrap();
        assert_eq!(
            secure_join(root, Path::new("/a/abs/passwd")).unwrap(),
            root.join("etc/passwd")
        );
        assert_eq!(
            secure_join(root, Path::new("/a/up/x")).unwrap(),
            root.join("x")
        );
        assert_eq!(
            secure_join(root, Path::new("../../x")).unwrap(),
            root.join("x")
        );
    }

    #[test]
    fn mount_options_split_flags_and_data() {
        let o = parse_mount_options(&[
            "nosuid".into(),
            "mode=755".into(),
            "rprivate".into(),
            "ro".into(),
        ]);
        assert!(o.flags.contains(MsFlags::MS_NOSUID | MsFlags::MS_RDONLY));
        assert_eq!(o.data, ["mode=755"]);
        assert!(o
            .propagation
            .contains(MsFlags::MS_PRIVATE | MsFlags::MS_REC));
    }
}
