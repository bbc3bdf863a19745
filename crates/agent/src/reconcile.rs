//! The agent's decision core: given a task as assigned (with the newest status the agent knows)
//! and what the executor observes, the one next step. Pure, so every case is tested directly;
//! the task workers in `session` carry the steps out and ask again.

use crate::executor::Observed;
use shoal_api::task::{Task, TaskState, TaskStatus};
use shoal_api::units::Timestamp;
use shoal_api::TaskId;

/// The next step for one task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Nothing to do until the assignment changes.
    Wait,
    /// Create and start its container.
    Start,
    /// Its container runs: report it running (if not yet) and watch it.
    Watch {
        /// The container.
        container: String,
    },
    /// Its container ended: report how.
    ReportExit {
        /// The container.
        container: String,
        /// Exit status.
        code: i32,
    },
    /// Its container must stop.
    Stop {
        /// The container.
        container: String,
    },
    /// Nothing runs and the task should be down: report it shut down.
    ReportShutdown,
    /// The container vanished while the task was running.
    ReportLost,
    /// The task is finished and reported: remove its container.
    Remove {
        /// The container.
        container: String,
    },
}

/// Decides the next step.
pub fn step(task: &Task, status: &TaskStatus, observed: &Observed) -> Op {
    let finished = status.state.is_terminal();
    if task.desired_state > TaskState::Running {
        return match observed {
            Observed::Running { container } => Op::Stop {
                container: container.clone(),
            },
            Observed::Exited { container, .. } if finished => {
                if task.desired_state == TaskState::Remove {
                    Op::Remove {
                        container: container.clone(),
                    }
                } else {
                    Op::Wait
                }
            }
            Observed::Exited { .. } | Observed::Absent
                if !finished && status.state >= TaskState::Assigned =>
            {
                Op::ReportShutdown
            }
            _ => Op::Wait,
        };
    }
    if finished {
        return Op::Wait;
    }
    match observed {
        Observed::Absent if status.state < TaskState::Running => Op::Start,
        Observed::Absent => Op::ReportLost,
        Observed::Running { container } => Op::Watch {
            container: container.clone(),
        },
        Observed::Exited { container, code } => Op::ReportExit {
            container: container.clone(),
            code: *code,
        },
    }
}

/// The status for a container that exited with `code`; `reason` says why when the executor
/// knows more than the code (the OOM killer).
pub fn exit_status(
    code: i32,
    reason: Option<String>,
    container: &str,
    at: Timestamp,
) -> TaskStatus {
    let mut s = if code == 0 {
        TaskStatus::new(TaskState::Complete, at, "finished")
    } else {
        let mut s = TaskStatus::new(TaskState::Failed, at, "started");
        s.err = match reason {
            Some(r) => format!("task: non-zero exit ({code}): {r}"),
            None => format!("task: non-zero exit ({code})"),
        };
        s
    };
    s.exit_code = Some(code);
    s.container_id = container.to_owned();
    s
}

/// Tasks with a container on this node that the node's full assignment no longer names: the
/// cluster forgot them (removed while the node was away); their containers are stopped and
/// removed.
pub fn strays(local: &[TaskId], assigned: &[TaskId]) -> Vec<TaskId> {
    local
        .iter()
        .filter(|t| !assigned.contains(t))
        .cloned()
        .collect()
}

/// The newer of two statuses (by state; the later one on a tie).
pub fn newest(a: &TaskStatus, b: &TaskStatus) -> TaskStatus {
    if b.state >= a.state {
        b.clone()
    } else {
        a.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api::service::TaskTemplate;
    use shoal_api::TaskId;

    fn task(desired: TaskState) -> Task {
        Task {
            id: TaskId::from_bits(1),
            version: 1,
            service_id: shoal_api::ServiceId::from_bits(1),
            service_name: "s".into(),
            slot: 1,
            node_id: None,
            spec_version: 1,
            spec: TaskTemplate::default(),
            desired_state: desired,
            status: TaskStatus::new(TaskState::Assigned, Timestamp(0), ""),
            created_at: Timestamp(0),
            networks: Vec::new(),
        }
    }

    fn st(state: TaskState) -> TaskStatus {
        TaskStatus::new(state, Timestamp(0), "")
    }

    fn running() -> Observed {
        Observed::Running {
            container: "c".into(),
        }
    }

    #[test]
    fn runs_what_should_run_and_adopts_what_already_runs() {
        let t = task(TaskState::Running);
        assert_eq!(
            step(&t, &st(TaskState::Assigned), &Observed::Absent),
            Op::Start
        );
        assert_eq!(
            step(&t, &st(TaskState::Assigned), &running()),
            Op::Watch {
                container: "c".into()
            }
        );
        assert_eq!(
            step(&t, &st(TaskState::Running), &running()),
            Op::Watch {
                container: "c".into()
            }
        );
        assert_eq!(
            step(
                &t,
                &st(TaskState::Running),
                &Observed::Exited {
                    container: "c".into(),
                    code: 2
                }
            ),
            Op::ReportExit {
                container: "c".into(),
                code: 2
            }
        );
        assert_eq!(
            step(&t, &st(TaskState::Running), &Observed::Absent),
            Op::ReportLost
        );
        assert_eq!(
            step(
                &t,
                &st(TaskState::Failed),
                &Observed::Exited {
                    container: "c".into(),
                    code: 2
                }
            ),
            Op::Wait
        );
    }

    #[test]
    fn stops_what_should_not_run_and_removes_it_at_the_end() {
        let t = task(TaskState::Shutdown);
        assert_eq!(
            step(&t, &st(TaskState::Running), &running()),
            Op::Stop {
                container: "c".into()
            }
        );
        assert_eq!(
            step(
                &t,
                &st(TaskState::Running),
                &Observed::Exited {
                    container: "c".into(),
                    code: 143
                }
            ),
            Op::ReportShutdown
        );
        assert_eq!(
            step(&t, &st(TaskState::Assigned), &Observed::Absent),
            Op::ReportShutdown
        );
        assert_eq!(
            step(
                &t,
                &st(TaskState::Shutdown),
                &Observed::Exited {
                    container: "c".into(),
                    code: 143
                }
            ),
            Op::Wait
        );
        let t = task(TaskState::Remove);
        assert_eq!(
            step(
                &t,
                &st(TaskState::Shutdown),
                &Observed::Exited {
                    container: "c".into(),
                    code: 143
                }
            ),
            Op::Remove {
                container: "c".into()
            }
        );
    }

    #[test]
    fn containers_of_forgotten_tasks_are_strays() {
        let (a, b, c) = (
            TaskId::from_bits(1),
            TaskId::from_bits(2),
            TaskId::from_bits(3),
        );
        assert_eq!(
            strays(&[a.clone(), b.clone()], &[b.clone(), c.clone()]),
            vec![a]
        );
        assert!(strays(&[], &[c]).is_empty());
    }

    #[test]
    fn exit_codes_become_complete_or_failed() {
        assert_eq!(
            exit_status(0, None, "c", Timestamp(1)).state,
            TaskState::Complete
        );
        let failed = exit_status(3, None, "c", Timestamp(1));
        assert_eq!(
            (failed.state, failed.exit_code),
            (TaskState::Failed, Some(3))
        );
        assert_eq!(failed.err, "task: non-zero exit (3)");
        let oom = exit_status(137, Some("OOMKilled".into()), "c", Timestamp(1));
        assert_eq!(oom.err, "task: non-zero exit (137): OOMKilled");
    }
}
