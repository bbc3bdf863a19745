//! Processes run inside a node's running containers (`container exec`, health checks): the
//! container's own process from its `config.json` (user, capabilities, env, cwd) with the
//! command replaced and the caller's env, user and workdir laid over it, run through the
//! node's OCI runtime (`exec --process FILE ID`, the built-in runtime and runc alike), so it
//! joins the container's namespaces and cgroup.

use crate::container::{ContainerExecutor, ContainerMeta};
use crate::executor::{ExecError, Executor, Observed};
use shoal_api::wire::ExecSpec;
use std::process::Stdio;

/// A process started in a container: its stdout and stderr piped (stdin too when
/// interactive), or all three on a terminal whose master side is `terminal`; wait on `child`.
#[derive(Debug)]
pub struct Running {
    /// The runtime's `exec` process (it exits with the process's code).
    pub child: tokio::process::Child,
    /// The terminal's master side, with `tty`.
    pub terminal: Option<std::os::fd::OwnedFd>,
    /// The process file the runtime reads, removed when this is dropped.
    _process_file: tempfile::TempPath,
}

impl ContainerExecutor {
    /// The container `name` names: its id (the task id) or a unique prefix of it, its name
    /// (docker's `service.slot.taskid`), or `service.slot` when one container has it (the
    /// newest running one wins over exited ones).
    pub fn find_container(&self, name: &str) -> Result<ContainerMeta, ExecError> {
        let all = self.containers();
        if let Some(c) = all
            .iter()
            .find(|c| c.id == name || c.name == name || format!("{}.{}", c.name, c.id) == name)
        {
            return Ok(c.clone());
        }
        // `service.slot` (the name without its task id), or a prefix of the id.
        let slot = format!("{name}.");
        let matches: Vec<&ContainerMeta> = all
            .iter()
            .filter(|c| c.id.starts_with(name) || c.name.starts_with(&slot))
            .collect();
        let running: Vec<&ContainerMeta> = matches
            .iter()
            .copied()
            .filter(|c| matches!(self.observe(&c.task), Observed::Running { .. }))
            .collect();
        if let ([one], true) = (running.as_slice(), matches.len() > 1) {
            return Ok((*one).clone());
        }
        match matches.as_slice() {
            [one] if !name.is_empty() => Ok((*one).clone()),
            [] | [_] => Err(ExecError::NotFound(name.to_owned())),
            _ => Err(ExecError::Rejected(format!(
                "{name:?} names {} containers: give more of the id",
                matches.len()
            ))),
        }
    }

    /// Starts `spec` in the running container `id`, stdout and stderr piped, stdin closed.
    pub fn exec(&self, id: &str, spec: &ExecSpec) -> Result<Running, ExecError> {
        if spec.cmd.is_empty() {
            return Err(ExecError::Rejected("exec: no command given".into()));
        }
        let dir = self.dir(id);
        let config = oci_spec::runtime::Spec::load(dir.join("config.json"))
            .map_err(|_| ExecError::NotFound(id.to_owned()))?;
        let mut process = config
            .process()
            .clone()
            .ok_or_else(|| ExecError::Failed(format!("container {id} has no process")))?;
        process.set_args(Some(spec.cmd.clone()));
        process.set_terminal(Some(spec.tty));
        process.set_console_size(None);
        let mut env = process.env().clone().unwrap_or_default();
        for e in &spec.env {
            let key = e.split('=').next().unwrap_or(e);
            env.retain(|old| old.split('=').next() != Some(key));
            env.push(e.clone());
        }
        process.set_env(Some(env));
        if let Some(w) = spec.workdir.as_deref().filter(|w| !w.is_empty()) {
            if !w.starts_with('/') {
                return Err(ExecError::Rejected(format!(
                    "exec: workdir {w:?} is not an absolute path"
                )));
            }
            process.set_cwd(w.into());
        }
        if let Some(u) = spec.user.as_deref().filter(|u| !u.is_empty()) {
            let rootfs = config
                .root()
                .as_ref()
                .map(|r| r.path().clone())
                .unwrap_or_default();
            let rootfs = if rootfs.is_absolute() {
                rootfs
            } else {
                dir.join(rootfs)
            };
            let r = shoal_runtime::user::resolve(u, &rootfs)
                .map_err(|e| ExecError::Rejected(format!("exec: {e}")))?;
            let mut user = process.user().clone();
            user.set_uid(r.uid);
            user.set_gid(r.gid);
            user.set_additional_gids(Some(r.additional_gids));
            process.set_user(user);
        }
        let file = tempfile::Builder::new()
            .prefix("exec-")
            .suffix(".json")
            .tempfile_in(&dir)
            .map_err(|e| ExecError::Failed(format!("writing the process file: {e}")))?;
        serde_json::to_writer(file.as_file(), &process)
            .map_err(|e| ExecError::Failed(format!("writing the process file: {e}")))?;
        let path = file.into_temp_path();
        let mut cmd: tokio::process::Command = self.runtime().exec_command(id, &path).into();
        let mut terminal = None;
        if spec.tty {
            let size = spec.size.map(|[rows, cols]| nix::pty::Winsize {
                ws_row: rows,
                ws_col: cols,
                ws_xpixel: 0,
                ws_ypixel: 0,
            });
            let pty = nix::pty::openpty(size.as_ref(), None)
                .map_err(|e| ExecError::Failed(format!("opening a terminal: {e}")))?;
            let slave = std::fs::File::from(pty.slave);
            let dup = |f: &std::fs::File| {
                f.try_clone()
                    .map(Stdio::from)
                    .map_err(|e| ExecError::Failed(format!("opening a terminal: {e}")))
            };
            cmd.stdin(dup(&slave)?)
                .stdout(dup(&slave)?)
                .stderr(Stdio::from(slave));
            terminal = Some(pty.master);
        } else {
            cmd.stdin(if spec.interactive {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        }
        cmd.kill_on_drop(true);
        let child = cmd
            .spawn()
            .map_err(|e| ExecError::Failed(format!("starting {}: {e}", self.runtime().name)))?;
        Ok(Running {
            child,
            terminal,
            _process_file: path,
        })
    }
}

/// Output of a health check kept (docker keeps 4 KiB).
const HEALTH_OUTPUT: usize = 4096;

impl ContainerExecutor {
    /// Runs the policy's command in the container: passed when it exits 0 within the timeout
    /// (killed when it does not).
    pub(crate) async fn run_health_check(
        &self,
        container: &str,
        policy: &crate::health::Policy,
    ) -> (bool, String) {
        let spec = ExecSpec {
            cmd: policy.cmd.clone(),
            ..Default::default()
        };
        let mut running = match self.exec(container, &spec) {
            Ok(r) => r,
            Err(e) => return (false, e.to_string()),
        };
        let mut stdout = running.child.stdout.take().expect("piped");
        let mut stderr = running.child.stderr.take().expect("piped");
        let read = async {
            use tokio::io::AsyncReadExt;
            let (mut out, mut err) = (Vec::new(), Vec::new());
            let _ = futures::join!(stdout.read_to_end(&mut out), stderr.read_to_end(&mut err));
            out.extend_from_slice(&err);
            let status = running.child.wait().await;
            (status, out)
        };
        match tokio::time::timeout(policy.timeout, read).await {
            Ok((status, out)) => {
                let mut text = String::from_utf8_lossy(&out).into_owned();
                if text.len() > HEALTH_OUTPUT {
                    let mut cut = HEALTH_OUTPUT;
                    while !text.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    text.truncate(cut);
                }
                (status.is_ok_and(|s| s.success()), text)
            }
            Err(_) => {
                let _ = running.child.kill().await;
                (
                    false,
                    format!("Health check exceeded timeout ({:?})", policy.timeout),
                )
            }
        }
    }

    /// The container's health verdict and its last check's output, if it is checked.
    pub fn health_of(&self, container: &str) -> Option<(shoal_api::task::Health, String)> {
        self.health
            .lock()
            .expect("health lock")
            .get(container)
            .cloned()
    }
}
