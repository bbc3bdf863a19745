//! The container executor on its own: tasks from the project's images started, stopped with
//! their stop signal and grace period, refused for the reasons Docker gives, re-adopted by a
//! new executor (as after a daemon restart) and removed without a trace. Root only.

use shoal_agent::container::{ContainerConfig, ContainerExecutor};
use shoal_agent::executor::{ExecError, Executor, Observed};
use shoal_api::service::{ContainerSpec, Mount, MountKind, TaskTemplate};
use shoal_api::task::{Task, TaskState, TaskStatus};
use shoal_api::units::{Duration, Timestamp};
use shoal_api::{ServiceId, TaskId};
use shoal_runtime::image::ImportOptions;
use shoal_runtime::oci::OciRuntime;
use std::sync::atomic::{AtomicU32, Ordering};

static SEQ: AtomicU32 = AtomicU32::new(0);

struct Node {
    dir: tempfile::TempDir,
    exec: ContainerExecutor,
    parent: String,
}

impl Node {
    fn new() -> Option<Node> {
        if let Err(why) = shoal_testkit::container_support() {
            shoal_testkit::skip(&format!("this host cannot run containers: {why}"));
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let shim = shoal_testkit::workspace_binary("shoal-runtime");
        let parent = format!(
            "/shoal-agent-test-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let exec = ContainerExecutor::open(ContainerConfig {
            data_root: dir.path().join("data"),
            runtime: OciRuntime::new("builtin", &shim, &dir.path().join("run")),
            shim,
            cgroup_parent: parent.clone(),
            insecure_registries: Vec::new(),
            registry_mirrors: Vec::new(),
            blocked_registries: vec!["docker.io".into()],
            registry_certs_dir: None,
        })
        .unwrap();
        let tar = dir.path().join("busybox.tar");
        shoal_testkit::busybox_tar(&tar).unwrap();
        exec.images()
            .import(
                &tar,
                &ImportOptions {
                    tag: Some("busybox".into()),
                    changes: vec![],
                    source_name: None,
                },
            )
            .unwrap();
        Some(Node { dir, exec, parent })
    }

    fn reopen(&self) -> ContainerExecutor {
        let shim = shoal_testkit::workspace_binary("shoal-runtime");
        ContainerExecutor::open(ContainerConfig {
            data_root: self.dir.path().join("data"),
            runtime: OciRuntime::new("builtin", &shim, &self.dir.path().join("run")),
            shim,
            cgroup_parent: self.parent.clone(),
            insecure_registries: Vec::new(),
            registry_mirrors: Vec::new(),
            blocked_registries: vec!["docker.io".into()],
            registry_certs_dir: None,
        })
        .unwrap()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for c in self.exec.containers() {
            let _ = self.exec.remove(&c.id);
        }
        for base in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::remove_dir(base.path().join(self.parent.trim_start_matches('/')));
        }
    }
}

fn task(n: u128, container: ContainerSpec) -> Task {
    Task {
        id: TaskId::from_bits(n),
        version: 1,
        service_id: ServiceId::from_bits(1),
        service_name: "svc".into(),
        slot: n as u64,
        node_id: None,
        spec_version: 1,
        spec: TaskTemplate {
            container,
            ..Default::default()
        },
        desired_state: TaskState::Running,
        status: TaskStatus::new(TaskState::Assigned, Timestamp(0), "assigned"),
        created_at: Timestamp(0),
        networks: Vec::new(),
    }
}

fn sh(script: &str) -> ContainerSpec {
    ContainerSpec {
        image: "busybox".into(),
        command: vec!["sh".into(), "-c".into(), script.into()],
        ..Default::default()
    }
}

#[tokio::test]
async fn stop_uses_the_signal_then_sigkill_after_the_grace_period() {
    let Some(node) = Node::new() else { return };
    let polite = task(1, sh("trap 'exit 0' TERM; while true; do sleep 0.1; done"));
    let stubborn = task(2, sh("trap '' TERM; while true; do sleep 0.1; done"));
    let a = node.exec.start(&polite).await.unwrap();
    let b = node.exec.start(&stubborn).await.unwrap();
    assert!(matches!(
        node.exec.observe(&polite.id),
        Observed::Running { .. }
    ));
    // A long grace: the polite container exits on TERM, well before it.
    node.exec.stop(&a, Duration::from_secs(60)).await.unwrap();
    assert_eq!(
        node.exec.observe(&polite.id),
        Observed::Exited {
            container: a.clone(),
            code: 0
        }
    );
    // The stubborn one ignores TERM and is killed once the grace period is over.
    node.exec
        .stop(&b, Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(
        node.exec.observe(&stubborn.id),
        Observed::Exited {
            container: b.clone(),
            code: 137
        }
    );
    for c in [&a, &b] {
        node.exec.remove(c).unwrap();
    }
    assert_eq!(node.exec.observe(&polite.id), Observed::Absent);
    assert!(node.exec.containers().is_empty());
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mountinfo.contains(&*node.dir.path().to_string_lossy()),
        "no mount left"
    );
}

#[tokio::test]
async fn bad_tasks_are_rejected_with_docker_reasons() {
    let Some(node) = Node::new() else { return };
    let cases = [
        (
            ContainerSpec {
                image: "nope".into(),
                ..Default::default()
            },
            "pulling nope: docker.io: this node does not contact it (shoald --block-registry)",
        ),
        (
            ContainerSpec {
                user: "ghost".into(),
                ..sh("true")
            },
            "unable to find user ghost: no matching entries in passwd file",
        ),
        (
            ContainerSpec {
                mounts: vec![Mount {
                    kind: MountKind::Bind,
                    source: "/no/such/dir".into(),
                    target: "/x".into(),
                    read_only: false,
                    tmpfs_size: None,
                }],
                ..sh("true")
            },
            "invalid mount config for type \"bind\": bind source path does not exist: /no/such/dir",
        ),
    ];
    for (i, (spec, reason)) in cases.into_iter().enumerate() {
        let t = task(10 + i as u128, spec);
        match node.exec.start(&t).await {
            Err(ExecError::Rejected(r)) => assert_eq!(r, reason),
            other => panic!("{reason}: {other:?}"),
        }
        assert_eq!(
            node.exec.observe(&t.id),
            Observed::Absent,
            "nothing left behind"
        );
    }
    // A program that does not exist fails at start, with the runtime's reason.
    let t = task(
        20,
        ContainerSpec {
            command: vec!["no-such-program".into()],
            ..sh("")
        },
    );
    match node.exec.start(&t).await {
        Err(ExecError::Failed(r)) => assert!(r.contains("executable file not found"), "{r}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_new_executor_readopts_running_containers() {
    let Some(node) = Node::new() else { return };
    let t = task(
        30,
        sh("trap 'exit 0' TERM; echo up; while true; do sleep 0.1; done"),
    );
    let c = node.exec.start(&t).await.unwrap();
    let again = node.reopen();
    assert_eq!(
        again.observe(&t.id),
        Observed::Running {
            container: c.clone()
        }
    );
    let waiter = {
        let again = again.clone();
        let c = c.clone();
        tokio::spawn(async move { again.wait(&c).await })
    };
    again.stop(&c, Duration::from_secs(30)).await.unwrap();
    assert_eq!(waiter.await.unwrap().unwrap(), 0);
    let log = shoal_runtime::logs::read(&again.log_file(&t.id), None).unwrap();
    assert_eq!(log[0].log, "up\n");
    again.remove(&c).unwrap();
}

#[tokio::test]
async fn volumes_start_with_the_image_files_and_anonymous_ones_go_with_the_container() {
    let Some(node) = Node::new() else { return };
    let volume = |source: &str, target: &str| Mount {
        kind: MountKind::Volume,
        source: source.into(),
        target: target.into(),
        read_only: false,
        tmpfs_size: None,
    };
    let spec = ContainerSpec {
        mounts: vec![volume("", "/etc"), volume("kept", "/var")],
        ..sh("head -1 /etc/passwd; ls /var")
    };
    let t = task(40, spec);
    let c = node.exec.start(&t).await.unwrap();
    assert_eq!(node.exec.wait(&c).await.unwrap(), 0);
    let log = shoal_runtime::logs::read(&node.exec.log_file(&t.id), None).unwrap();
    let out: Vec<&str> = log.iter().map(|e| e.log.as_str()).collect();
    assert_eq!(
        out,
        ["root:x:0:0:root:/root:/bin/sh\n", "www\n"],
        "copied from the image"
    );
    let names = |e: &ContainerExecutor| -> Vec<String> {
        e.volumes().list().into_iter().map(|v| v.name).collect()
    };
    assert_eq!(
        names(&node.exec),
        [format!("{}-0", t.id), "kept".to_string()]
    );
    node.exec.remove(&c).unwrap();
    assert_eq!(
        names(&node.exec),
        ["kept"],
        "the anonymous volume went with its container"
    );
}

#[tokio::test]
async fn init_forwards_the_stop_signal() {
    let Some(node) = Node::new() else { return };
    // busybox sleep as PID 1 would ignore SIGTERM; under shoal-init it is PID 2 and dies of it.
    let spec = ContainerSpec {
        init: Some(true),
        command: vec![
            "sh".into(),
            "-c".into(),
            "echo pid $$; exec sleep 1000".into(),
        ],
        ..sh("")
    };
    let t = task(50, spec);
    let c = node.exec.start(&t).await.unwrap();
    let log = node.exec.log_file(&t.id);
    let mut seen = String::new();
    for _ in 0..500 {
        seen = shoal_runtime::logs::read(&log, None)
            .unwrap()
            .iter()
            .map(|e| e.log.clone())
            .collect();
        if !seen.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(seen, "pid 2\n");
    node.exec.stop(&c, Duration::from_secs(60)).await.unwrap();
    assert_eq!(
        node.exec.observe(&t.id),
        Observed::Exited {
            container: c.clone(),
            code: 143
        },
        "SIGTERM reached sleep through the init"
    );
    node.exec.remove(&c).unwrap();
}

#[tokio::test]
async fn json_file_logs_rotate_at_max_size() {
    let Some(node) = Node::new() else { return };
    let mut t = task(
        60,
        sh("i=0; while [ $i -lt 200 ]; do echo line $i; i=$((i+1)); done"),
    );
    t.spec.log_driver = Some(shoal_api::service::LogDriver {
        name: "json-file".into(),
        options: [
            ("max-size".to_string(), "2k".to_string()),
            ("max-file".to_string(), "2".to_string()),
            ("compress".to_string(), "false".to_string()),
        ]
        .into(),
    });
    let c = node.exec.start(&t).await.unwrap();
    assert_eq!(node.exec.wait(&c).await.unwrap(), 0);
    let log = node.exec.log_file(&t.id);
    let rotated = shoal_runtime::logs::rotated(&log, 1);
    assert!(rotated.exists(), "rotated once at least");
    assert!(
        !shoal_runtime::logs::rotated(&log, 2).exists(),
        "max-file 2 keeps two files"
    );
    assert!(std::fs::metadata(&log).unwrap().len() < 2048 + 200);
    let (entries, _) = shoal_runtime::logs::read_all(&log).unwrap();
    assert_eq!(entries.last().unwrap().log, "line 199\n");
    assert!(entries.len() < 200, "older lines were dropped");
    node.exec.remove(&c).unwrap();
}
