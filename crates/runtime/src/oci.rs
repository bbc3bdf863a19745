//! Drives an OCI runtime binary by its command line (`--root R create --bundle B --pid-file P
//! ID`, `start`, `state`, `kill`, `delete`), the contract runc, crun and the built-in
//! `shoal-runtime` all keep; so one bundle runs under any of them.

use crate::linux::StateReport;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// How long one OCI runtime command (`start`, `kill`, `state`, `delete`) may take.
pub const COMMAND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A runtime command failed.
#[derive(Debug, thiserror::Error)]
#[error("{runtime} {op} {id}: {message}")]
pub struct OciError {
    /// Which runtime.
    pub runtime: String,
    /// The command.
    pub op: String,
    /// The container.
    pub id: String,
    /// What it said.
    pub message: String,
}

/// An OCI runtime binary and the state directory it is given.
#[derive(Debug, Clone)]
pub struct OciRuntime {
    /// Short name (`builtin`, `runc`, `crun`, or the path given).
    pub name: String,
    /// The binary.
    pub binary: PathBuf,
    /// Its `--root`.
    pub root: PathBuf,
    /// Global options given before every command (such as crun's `--cgroup-manager=disabled`).
    pub global_args: Vec<String>,
}

/// Finds `name` in PATH (or takes it as a path when it has a `/`).
pub fn which(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return p.is_file().then_some(p);
    }
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([
            "/usr/sbin".into(),
            "/usr/bin".into(),
            "/sbin".into(),
            "/bin".into(),
        ])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

impl OciRuntime {
    /// A runtime binary with state under `root`.
    pub fn new(name: &str, binary: &Path, root: &Path) -> OciRuntime {
        OciRuntime {
            name: name.to_owned(),
            binary: binary.to_owned(),
            root: root.to_owned(),
            global_args: Vec::new(),
        }
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.binary);
        c.args(&self.global_args).arg("--root").arg(&self.root);
        c
    }

    /// The `create` command, for a caller that sets its stdio (the shim).
    pub fn create_command(&self, id: &str, bundle: &Path, pid_file: &Path) -> Command {
        let mut c = self.command();
        c.arg("create")
            .arg("--bundle")
            .arg(bundle)
            .arg("--pid-file")
            .arg(pid_file)
            .arg(id);
        c
    }

    fn run(&self, op: &str, id: &str, args: &[&str]) -> Result<Vec<u8>, OciError> {
        let mut child = self
            .command()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                self.error(op, id, format!("cannot run {}: {e}", self.binary.display()))
            })?;
        let drain = |mut r: Box<dyn std::io::Read + Send>| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = r.read_to_end(&mut buf);
                buf
            })
        };
        let out = drain(Box::new(child.stdout.take().expect("piped")));
        let err = drain(Box::new(child.stderr.take().expect("piped")));
        let started = std::time::Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if started.elapsed() < COMMAND_TIMEOUT => {
                    std::thread::sleep(std::time::Duration::from_millis(2))
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(self.error(
                        op,
                        id,
                        format!("{} did not finish within {COMMAND_TIMEOUT:?}", self.name),
                    ));
                }
                Err(e) => return Err(self.error(op, id, format!("waiting: {e}"))),
            }
        };
        let stdout = out.join().unwrap_or_default();
        let stderr = err.join().unwrap_or_default();
        if status.success() {
            Ok(stdout)
        } else {
            Err(self.error(op, id, clean_message(&stderr)))
        }
    }

    fn error(&self, op: &str, id: &str, message: String) -> OciError {
        OciError {
            runtime: self.name.clone(),
            op: op.to_owned(),
            id: id.to_owned(),
            message,
        }
    }

    /// The `exec` command (`exec --process FILE ID`, as runc spells it), for a caller that
    /// sets its stdio.
    pub fn exec_command(&self, id: &str, process_file: &Path) -> Command {
        let mut c = self.command();
        c.arg("exec").arg("--process").arg(process_file).arg(id);
        c
    }

    /// Creates a container with this process's stdio (the caller's choice).
    pub fn create(&self, id: &str, bundle: &Path, pid_file: &Path) -> Result<(), OciError> {
        let bundle = bundle.to_string_lossy();
        let pid = pid_file.to_string_lossy();
        self.run(
            "create",
            id,
            &["create", "--bundle", &bundle, "--pid-file", &pid, id],
        )
        .map(|_| ())
    }

    /// Starts a created container.
    pub fn start(&self, id: &str) -> Result<(), OciError> {
        self.run("start", id, &["start", id]).map(|_| ())
    }

    /// Sends a signal (`TERM`, `KILL`, …) to the container's init.
    pub fn kill(&self, id: &str, signal: &str) -> Result<(), OciError> {
        self.run("kill", id, &["kill", id, signal]).map(|_| ())
    }

    /// Deletes the container (`force` kills it first).
    pub fn delete(&self, id: &str, force: bool) -> Result<(), OciError> {
        let args: &[&str] = if force {
            &["delete", "--force", id]
        } else {
            &["delete", id]
        };
        self.run("delete", id, args).map(|_| ())
    }

    /// The container's state.
    pub fn state(&self, id: &str) -> Result<StateReport, OciError> {
        let out = self.run("state", id, &["state", id])?;
        serde_json::from_slice(&out)
            .map_err(|e| self.error("state", id, format!("bad output: {e}")))
    }
}

/// A runtime's error output as one line: runc's `level=error msg="…"` reduced to its message.
pub fn clean_message(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let mut lines: Vec<String> = Vec::new();
    for l in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let msg = match l.find("msg=\"") {
            Some(i) => l[i + 5..].trim_end_matches('"').replace("\\\"", "\""),
            None => l.to_owned(),
        };
        lines.push(msg);
    }
    if lines.is_empty() {
        "failed without a message".into()
    } else {
        lines.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runc_messages_are_unwrapped() {
        let m =
            clean_message(b"time=\"x\" level=error msg=\"container \\\"a\\\" does not exist\"\n");
        assert_eq!(m, "container \"a\" does not exist");
        assert_eq!(clean_message(b""), "failed without a message");
    }
}
