//! The per-container monitor (`shoal-runtime shim`). The agent starts one per container; it
//! leaves the agent's session and becomes a child subreaper, runs the OCI runtime's `create`
//! and `start` with pipes as the container's stdout and stderr, reports `ok PID` (or `error
//! MESSAGE`) on its own stdout, then writes what the container prints to its json-file log,
//! reaps it, and records how it ended in `exit.json`. It outlives a restart of the daemon, so
//! the agent re-adopts a running container by its directory alone.

use crate::cgroups::Cgroup;
use crate::logs::{LineSplitter, LogWriter};
use crate::oci::{clean_message, OciRuntime};
use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, signal, SigHandler, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// How a container ended (`exit.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// Exit status; 128 + N when killed by signal N (as Docker reports it).
    pub code: i32,
    /// The signal that killed it.
    #[serde(default)]
    pub signal: Option<i32>,
    /// The kernel's OOM killer killed a process of the container.
    #[serde(default)]
    pub oom_killed: bool,
    /// When it ended (ms since the epoch).
    pub finished: u64,
    /// It never ran: why.
    #[serde(default)]
    pub error: Option<String>,
}

/// What the shim works with.
#[derive(Debug, Clone)]
pub struct ShimArgs {
    /// The OCI runtime that runs the container.
    pub runtime: OciRuntime,
    /// Container id.
    pub id: String,
    /// The bundle (the container's directory: config.json, rootfs).
    pub bundle: PathBuf,
    /// How the log is rotated.
    pub rotation: crate::logs::Rotation,
    /// Logging driver `none`: the output is read and dropped.
    pub discard_output: bool,
}

/// Files of a container directory the shim writes.
pub mod files {
    /// The shim's pid.
    pub const SHIM_PID: &str = "shim.pid";
    /// The container's init pid.
    pub const INIT_PID: &str = "init.pid";
    /// The json-file log.
    pub const LOG: &str = "container.log";
    /// How it ended.
    pub const EXIT: &str = "exit.json";
}

/// The command that starts a shim (`SHIM shim [EXTRA] --runtime … --bundle B ID`); `extra`
/// carries the log options (`--log-max-size`, `--log-max-file`, `--no-log`). The shim reports
/// `ok PID` or `error MESSAGE` on its stdout.
pub fn command(
    shim: &Path,
    runtime: &OciRuntime,
    bundle: &Path,
    id: &str,
    extra: &[String],
) -> std::process::Command {
    let mut c = std::process::Command::new(shim);
    c.arg("shim")
        .args(extra)
        .arg("--runtime")
        .arg(&runtime.binary)
        .arg("--runtime-name")
        .arg(&runtime.name)
        .arg("--runtime-root")
        .arg(&runtime.root)
        .arg("--bundle")
        .arg(bundle)
        .arg(id);
    c
}

/// Reads a container's exit record, if it ended.
pub fn read_exit(dir: &Path) -> Option<ExitRecord> {
    std::fs::read(dir.join(files::EXIT))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

fn record(dir: &Path, r: &ExitRecord) {
    let bytes = serde_json::to_vec(r).expect("exit record serializes");
    if let Err(e) = crate::write_atomic(&dir.join(files::EXIT), &bytes) {
        eprintln!("shim: writing exit.json: {e}");
    }
}

fn report(status: &mut Option<std::fs::File>, line: &str) {
    if let Some(mut f) = status.take() {
        let _ = writeln!(f, "{line}");
    }
}

/// Runs the shim; returns its exit status.
pub fn run(args: &ShimArgs) -> i32 {
    // SAFETY: fd 1 is the status pipe the agent gave us; nothing else owns it in this process.
    let mut status = Some(std::fs::File::from(unsafe {
        <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(1)
    }));
    match run_inner(args, &mut status) {
        Ok(()) => 0,
        Err(message) => {
            record(
                &args.bundle,
                &ExitRecord {
                    code: 128,
                    signal: None,
                    oom_killed: false,
                    finished: crate::now_ms(),
                    error: Some(message.clone()),
                },
            );
            report(&mut status, &format!("error {message}"));
            1
        }
    }
}

fn drain(fd: &OwnedFd) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = nix::fcntl::fcntl(
        std::os::fd::AsRawFd::as_raw_fd(fd),
        nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK),
    );
    let mut f = std::fs::File::from(fd.try_clone().expect("dup"));
    let _ = f.read_to_end(&mut out);
    out
}

fn run_inner(args: &ShimArgs, status: &mut Option<std::fs::File>) -> Result<(), String> {
    let dir = &args.bundle;
    let _ = nix::unistd::setsid();
    nix::sys::prctl::set_child_subreaper(true).map_err(|e| format!("subreaper: {e}"))?;
    // SAFETY: setting SIGHUP/SIGINT to ignored installs no handler code.
    unsafe {
        let _ = signal(Signal::SIGHUP, SigHandler::SigIgn);
        let _ = signal(Signal::SIGINT, SigHandler::SigIgn);
    }
    crate::write_atomic(
        &dir.join(files::SHIM_PID),
        std::process::id().to_string().as_bytes(),
    )
    .map_err(|e| format!("writing shim.pid: {e}"))?;
    let mut log = if args.discard_output {
        None
    } else {
        Some(
            LogWriter::open_with(&dir.join(files::LOG), args.rotation)
                .map_err(|e| format!("opening the log: {e}"))?,
        )
    };
    let (out_r, out_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    let (err_r, err_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    let pid_file = dir.join(files::INIT_PID);
    let created = args
        .runtime
        .create_command(&args.id, dir, &pid_file)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out_w))
        .stderr(Stdio::from(err_w))
        .status()
        .map_err(|e| format!("cannot run {}: {e}", args.runtime.binary.display()))?;
    if !created.success() {
        let mut said = drain(&err_r);
        said.extend(drain(&out_r));
        return Err(clean_message(&said));
    }
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or("the runtime wrote no pid file")?;
    if let Err(e) = args.runtime.start(&args.id) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        return Err(e.message);
    }
    report(status, &format!("ok {pid}"));
    let code = pump_and_reap(pid, [out_r, err_r], &mut log);
    let cgroups_path = oci_spec::runtime::Spec::load(dir.join("config.json"))
        .ok()
        .and_then(|s| s.linux().as_ref().and_then(|l| l.cgroups_path().clone()));
    let oom_killed = cgroups_path
        .map(|p| Cgroup::at(&p.to_string_lossy()).oom_kills() > 0)
        .unwrap_or(false);
    let (code, signal) = code;
    record(
        dir,
        &ExitRecord {
            code,
            signal,
            oom_killed,
            finished: crate::now_ms(),
            error: None,
        },
    );
    Ok(())
}

/// Copies the container's output to the log until it has exited and its pipes are closed (or
/// half a second after its exit, when something else holds them); returns its exit.
fn pump_and_reap(pid: i32, pipes: [OwnedFd; 2], log: &mut Option<LogWriter>) -> (i32, Option<i32>) {
    let names = ["stdout", "stderr"];
    let mut open = [true, true];
    let mut splitters = [LineSplitter::default(), LineSplitter::default()];
    let mut exit: Option<(i32, Option<i32>)> = None;
    let mut exited_at: Option<std::time::Instant> = None;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if exit.is_none() {
            exit = reap(pid, WaitPidFlag::WNOHANG);
            if exit.is_some() {
                exited_at = Some(std::time::Instant::now());
            }
        }
        if !open.iter().any(|o| *o) {
            break;
        }
        if exited_at.is_some_and(|t| t.elapsed() > std::time::Duration::from_millis(500)) {
            break;
        }
        let mut fds: Vec<PollFd> = Vec::new();
        let mut which = Vec::new();
        for (i, p) in pipes.iter().enumerate() {
            if open[i] {
                fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
                which.push(i);
            }
        }
        // Output and the end of output wake the loop; the timeout only catches an exit whose
        // pipes stay open.
        let timeout = if exit.is_some() { 50u16 } else { 1000 };
        if poll(&mut fds, PollTimeout::from(timeout)).is_err() {
            continue;
        }
        let ready: Vec<(usize, bool)> = fds
            .iter()
            .zip(&which)
            .map(|(f, i)| (*i, f.revents().is_some_and(|r| !r.is_empty())))
            .collect();
        drop(fds);
        for (i, is_ready) in ready {
            if !is_ready {
                continue;
            }
            match nix::unistd::read(std::os::fd::AsRawFd::as_raw_fd(&pipes[i]), &mut buf) {
                Ok(0) | Err(_) => {
                    open[i] = false;
                    if let (Some(rest), Some(log)) = (splitters[i].finish(), log.as_mut()) {
                        let _ = log.write(names[i], &[rest]);
                    }
                }
                Ok(n) => {
                    let lines = splitters[i].push(&buf[..n]);
                    if let Some(log) = log.as_mut() {
                        if let Err(e) = log.write(names[i], &lines) {
                            eprintln!("shim: writing the log: {e}");
                        }
                    }
                }
            }
        }
    }
    match exit {
        Some(e) => e,
        None => reap(pid, WaitPidFlag::empty()).unwrap_or((255, None)),
    }
}

/// Reaps children; returns the container's exit once it is among them.
fn reap(pid: i32, flags: WaitPidFlag) -> Option<(i32, Option<i32>)> {
    loop {
        match waitpid(None::<Pid>, Some(flags)) {
            Ok(WaitStatus::Exited(p, code)) if p.as_raw() == pid => return Some((code, None)),
            Ok(WaitStatus::Signaled(p, sig, _)) if p.as_raw() == pid => {
                return Some((128 + sig as i32, Some(sig as i32)))
            }
            Ok(WaitStatus::StillAlive) => return None,
            Ok(_) => continue,
            // No children: the container was not reparented to us (it is gone or never was).
            Err(_) => {
                return if crate::linux::live_start_time(pid).is_none() {
                    Some((255, None))
                } else {
                    None
                }
            }
        }
    }
}
