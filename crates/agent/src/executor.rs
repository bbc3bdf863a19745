//! Executors run containers for the agent. [`Executor`] is the narrow interface the agent
//! needs; [`SimExecutor`] implements it with pretend containers that only keep time.
//!
//! The simulated executor honours three environment variables of a task, so stack files can
//! describe behaviour for tests and dry runs:
//! - `SHOAL_SIM_EXIT_AFTER=500ms`: the container exits after that long (default: never);
//! - `SHOAL_SIM_EXIT_CODE=1`: with that status (default 0);
//! - `SHOAL_SIM_REJECT=reason`: the container cannot be created (the task is rejected).
//!
//! Its containers are recorded in `<state_dir>/containers.json`, so, like real containers, they
//! outlive a restart of the daemon: the agent re-adopts them, and one whose exit time passed
//! meanwhile is seen as exited with its code.

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use shoal_api::task::Task;
use shoal_api::units::{Duration, Timestamp};
use shoal_api::TaskId;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// An executor operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecError {
    /// The task cannot run here (bad image, bad spec): the task is rejected.
    #[error("{0}")]
    Rejected(String),
    /// Something failed while running it.
    #[error("{0}")]
    Failed(String),
    /// No such container.
    #[error("no container {0}")]
    NotFound(String),
}

/// What the executor knows of a task's container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// No container.
    Absent,
    /// Running.
    Running {
        /// Its id.
        container: String,
    },
    /// Exited.
    Exited {
        /// Its id.
        container: String,
        /// Exit status.
        code: i32,
    },
}

/// Runs containers for tasks.
pub trait Executor: Send + Sync + 'static {
    /// Its name, reported with the node (`simulated`, `builtin`, `runc`).
    fn name(&self) -> &'static str;
    /// Tasks that have a container here (running or not).
    fn tasks(&self) -> Vec<TaskId> {
        Vec::new()
    }
    /// How the node reports it (`container (runc)`); the name by default.
    fn describe(&self) -> String {
        self.name().to_owned()
    }
    /// What runs for `task`.
    fn observe(&self, task: &TaskId) -> Observed;
    /// Creates and starts the task's container; returns its id.
    fn start(&self, task: &Task) -> BoxFuture<'static, Result<String, ExecError>>;
    /// Resolves with the exit status once the container exits.
    fn wait(&self, container: &str) -> BoxFuture<'static, Result<i32, ExecError>>;
    /// Stops the container: the stop signal, then SIGKILL after `grace`.
    fn stop(&self, container: &str, grace: Duration) -> BoxFuture<'static, Result<(), ExecError>>;
    /// Removes a stopped container and what it used.
    fn remove(&self, container: &str) -> Result<(), ExecError>;
    /// The json-file log of the task's container, when the executor keeps one.
    fn log_path(&self, _task: &TaskId) -> Option<std::path::PathBuf> {
        None
    }
    /// The host's overlay networking, when the executor attaches containers to networks.
    fn network(&self) -> Option<std::sync::Arc<shoal_overlay_net::HostNetwork>> {
        None
    }
    /// Why an exited container ended, when its code alone does not say (the OOM killer).
    fn exit_reason(&self, _container: &str) -> Option<String> {
        None
    }
    /// The health check the task's container follows (its service's over its image's), if
    /// it has one and this executor can run it.
    fn health_policy(&self, _task: &Task) -> Option<crate::health::Policy> {
        None
    }
    /// Runs one health check in the container: whether it passed, and what it printed.
    fn health_check(
        &self,
        container: &str,
        _policy: &crate::health::Policy,
    ) -> BoxFuture<'static, (bool, String)> {
        let container = container.to_owned();
        Box::pin(async move { (false, format!("{container}: no health checks here")) })
    }
    /// Keeps the secrets and configs an assignment brought, for the tasks it starts (`full`:
    /// they are all it needs).
    fn set_files(&self, _files: &[shoal_api::secret::FileObject], _full: bool) {}
    /// Records the verdict and the last check's output, for `container ls|inspect`.
    fn record_health(&self, _container: &str, _health: shoal_api::task::Health, _output: &str) {}
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SimContainer {
    task: TaskId,
    started: Timestamp,
    /// When it exits on its own.
    exit_at: Option<Timestamp>,
    code: i32,
    /// Set once it exited.
    exited: Option<i32>,
}

#[derive(Debug, Default)]
struct SimState {
    containers: BTreeMap<String, SimContainer>,
    /// Wakes waiters when a container exits.
    exits: BTreeMap<String, watch::Sender<Option<i32>>>,
}

/// Pretend containers: they start at once, run until their exit time or a stop, and persist.
#[derive(Debug, Clone)]
pub struct SimExecutor {
    state_file: PathBuf,
    state: Arc<Mutex<SimState>>,
}

/// The current wall-clock time.
pub(crate) fn now() -> Timestamp {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp(d.as_millis() as u64)
}

fn env_of<'a>(task: &'a Task, key: &str) -> Option<&'a str> {
    task.spec
        .container
        .env
        .iter()
        .find_map(|e| e.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

impl SimExecutor {
    /// Opens the executor, re-adopting containers recorded in `state_dir`.
    pub fn open(state_dir: &Path) -> std::io::Result<SimExecutor> {
        std::fs::create_dir_all(state_dir)?;
        let state_file = state_dir.join("containers.json");
        let containers: BTreeMap<String, SimContainer> = match std::fs::read(&state_file) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e),
        };
        let mut state = SimState {
            containers,
            exits: BTreeMap::new(),
        };
        let ids: Vec<String> = state.containers.keys().cloned().collect();
        for id in ids {
            let (tx, _) = watch::channel(state.containers[&id].exited);
            state.exits.insert(id, tx);
        }
        Ok(SimExecutor {
            state_file,
            state: Arc::new(Mutex::new(state)),
        })
    }

    fn persist(&self, state: &SimState) {
        let bytes = serde_json::to_vec(&state.containers).expect("state serializes");
        let tmp = self.state_file.with_extension("json.tmp");
        if let Err(e) =
            std::fs::write(&tmp, bytes).and_then(|_| std::fs::rename(&tmp, &self.state_file))
        {
            tracing::warn!(error = %e, path = %self.state_file.display(), "simulated executor state not saved");
        }
    }

    /// Marks containers whose exit time passed as exited.
    fn settle(&self, state: &mut SimState) -> bool {
        let t = now();
        let mut changed = false;
        for (id, c) in state.containers.iter_mut() {
            if c.exited.is_none() && c.exit_at.is_some_and(|at| at <= t) {
                c.exited = Some(c.code);
                if let Some(tx) = state.exits.get(id) {
                    tx.send_replace(Some(c.code));
                }
                changed = true;
            }
        }
        changed
    }

    fn exit(&self, container: &str, code: i32) {
        let mut state = self.state.lock().expect("sim lock");
        if let Some(c) = state.containers.get_mut(container) {
            if c.exited.is_none() {
                c.exited = Some(code);
                if let Some(tx) = state.exits.get(container) {
                    tx.send_replace(Some(code));
                }
                self.persist(&state);
            }
        }
    }
}

impl Executor for SimExecutor {
    fn name(&self) -> &'static str {
        "simulated"
    }

    fn tasks(&self) -> Vec<TaskId> {
        let state = self.state.lock().expect("sim lock");
        let mut ids: Vec<TaskId> = state.containers.values().map(|c| c.task.clone()).collect();
        ids.sort();
        ids.dedup();
        ids
    }

    fn observe(&self, task: &TaskId) -> Observed {
        let mut state = self.state.lock().expect("sim lock");
        if self.settle(&mut state) {
            self.persist(&state);
        }
        let found = state
            .containers
            .iter()
            .filter(|(_, c)| &c.task == task)
            .max_by_key(|(_, c)| c.started);
        match found {
            None => Observed::Absent,
            Some((id, c)) => match c.exited {
                None => Observed::Running {
                    container: id.clone(),
                },
                Some(code) => Observed::Exited {
                    container: id.clone(),
                    code,
                },
            },
        }
    }

    fn start(&self, task: &Task) -> BoxFuture<'static, Result<String, ExecError>> {
        let result = (|| {
            if let Some(reason) = env_of(task, "SHOAL_SIM_REJECT") {
                return Err(ExecError::Rejected(reason.to_owned()));
            }
            let exit_after = match env_of(task, "SHOAL_SIM_EXIT_AFTER") {
                Some(d) => Some(
                    d.parse::<Duration>()
                        .map_err(|e| ExecError::Rejected(format!("SHOAL_SIM_EXIT_AFTER: {e}")))?,
                ),
                None => None,
            };
            let code = match env_of(task, "SHOAL_SIM_EXIT_CODE") {
                Some(c) => c.parse::<i32>().map_err(|_| {
                    ExecError::Rejected(format!("SHOAL_SIM_EXIT_CODE: {c:?} is not a number"))
                })?,
                None => 0,
            };
            let started = now();
            let id = format!("sim-{}", task.id);
            let container = SimContainer {
                task: task.id.clone(),
                started,
                exit_at: exit_after.map(|d| started.after(d)),
                code,
                exited: None,
            };
            let mut state = self.state.lock().expect("sim lock");
            state.containers.insert(id.clone(), container);
            let (tx, _) = watch::channel(None);
            state.exits.insert(id.clone(), tx);
            self.persist(&state);
            Ok(id)
        })();
        Box::pin(async move { result })
    }

    fn wait(&self, container: &str) -> BoxFuture<'static, Result<i32, ExecError>> {
        let this = self.clone();
        let id = container.to_owned();
        Box::pin(async move {
            let (mut rx, exit_at) = {
                let state = this.state.lock().expect("sim lock");
                let c = state
                    .containers
                    .get(&id)
                    .ok_or_else(|| ExecError::NotFound(id.clone()))?;
                (state.exits[&id].subscribe(), c.exit_at)
            };
            let timer = async {
                match exit_at {
                    Some(at) => {
                        tokio::time::sleep(std::time::Duration::from_millis(
                            at.0.saturating_sub(now().0),
                        ))
                        .await
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = rx.wait_for(|e| e.is_some()) => Ok(r.ok().and_then(|c| *c).unwrap_or(137)),
                _ = timer => {
                    let code = this.state.lock().expect("sim lock").containers.get(&id).map_or(0, |c| c.code);
                    this.exit(&id, code);
                    Ok(code)
                }
            }
        })
    }

    fn stop(&self, container: &str, _grace: Duration) -> BoxFuture<'static, Result<(), ExecError>> {
        // A pretend process stops at once on its stop signal: exit status 143 (SIGTERM).
        self.exit(container, 143);
        Box::pin(async { Ok(()) })
    }

    fn remove(&self, container: &str) -> Result<(), ExecError> {
        let mut state = self.state.lock().expect("sim lock");
        state.containers.remove(container);
        state.exits.remove(container);
        self.persist(&state);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api::service::TaskTemplate;
    use shoal_api::task::{TaskState, TaskStatus};

    fn task(env: &[&str]) -> Task {
        let mut spec = TaskTemplate::default();
        spec.container.env = env.iter().map(|s| s.to_string()).collect();
        Task {
            id: TaskId::from_bits(7),
            version: 1,
            service_id: shoal_api::ServiceId::from_bits(1),
            service_name: "s".into(),
            slot: 1,
            node_id: None,
            spec_version: 1,
            spec,
            desired_state: TaskState::Running,
            status: TaskStatus::new(TaskState::Assigned, Timestamp(0), ""),
            created_at: Timestamp(0),
            networks: Vec::new(),
        }
    }

    #[tokio::test]
    async fn containers_exit_with_their_code_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let exec = SimExecutor::open(dir.path()).unwrap();
        let t = task(&["SHOAL_SIM_EXIT_AFTER=50ms", "SHOAL_SIM_EXIT_CODE=3"]);
        let id = exec.start(&t).await.unwrap();
        assert_eq!(
            exec.observe(&t.id),
            Observed::Running {
                container: id.clone()
            }
        );
        let reopened = SimExecutor::open(dir.path()).unwrap();
        assert_eq!(reopened.wait(&id).await.unwrap(), 3);
        assert_eq!(
            reopened.observe(&t.id),
            Observed::Exited {
                container: id.clone(),
                code: 3
            }
        );
        reopened.remove(&id).unwrap();
        assert_eq!(
            SimExecutor::open(dir.path()).unwrap().observe(&t.id),
            Observed::Absent
        );
    }

    #[tokio::test]
    async fn reject_and_stop() {
        let dir = tempfile::tempdir().unwrap();
        let exec = SimExecutor::open(dir.path()).unwrap();
        assert_eq!(
            exec.start(&task(&["SHOAL_SIM_REJECT=no such image"])).await,
            Err(ExecError::Rejected("no such image".into()))
        );
        let id = exec.start(&task(&[])).await.unwrap();
        let waiting = exec.wait(&id);
        exec.stop(&id, Duration::from_secs(1)).await.unwrap();
        assert_eq!(waiting.await.unwrap(), 143);
    }
}
