//! A real `shoald` (simulated executor) in a temporary directory, driven through the `shoal`
//! CLI: deploy the example stacks, scale, update, watch the restart policy act on failing
//! tasks, lose a node, kill the daemon with SIGKILL and restart it.
//!
//! Every wait polls a condition with a generous bound that only a real fault reaches.

mod common;

use common::{examples, wait_for, Daemon};
use serde_json::Value;
use shoal_api::node::NodeDescription;
use shoal_api::wire::*;
use std::time::Duration;

#[test]
fn deploy_scale_fail_restart_and_survive_sigkill() {
    // Frequent snapshots, so the restart below restores a snapshot and replays the log after it.
    let mut d = Daemon::start_with(&["--snapshot-every", "20"]);
    let out = d.shoal(&["service", "ls"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("shoal cluster init"),
        "a clear error before init"
    );
    d.ok(&["cluster", "init"]);
    assert!(
        !d.shoal(&["cluster", "init"]).status.success(),
        "a second init is refused"
    );
    let out = d.shoal(&["image", "ls"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("simulated executor"),
        "{out:?}"
    );

    // Every example stack deploys and converges.
    let mut stacks = Vec::new();
    for entry in std::fs::read_dir(examples()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        d.ok(&[
            "stack",
            "deploy",
            "--wait",
            "--timeout",
            "30s",
            "-c",
            path.to_str().unwrap(),
            &name,
        ]);
        stacks.push(name);
    }
    assert!(stacks.contains(&"web".to_owned()));
    assert_eq!(d.replicas("web_web"), (3, 3));
    let listed = d.json(&["stack", "ls"]);
    assert_eq!(listed.as_array().unwrap().len(), stacks.len());

    // A bad file changes nothing and says where it is wrong.
    let bad = d.dir.path().join("bad.yml");
    std::fs::write(
        &bad,
        "services:\n  web:\n    image: x\n    deploy:\n      replicas: many\n",
    )
    .unwrap();
    let out = d.shoal(&["stack", "deploy", "-c", bad.to_str().unwrap(), "web"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.yml:5: services.web.deploy.replicas"),
        "{err}"
    );

    // Scale.
    d.ok(&["service", "scale", "web_web=5"]);
    wait_for("5 web replicas", || d.replicas("web_web") == (5, 5));

    // Rolling update: every running task ends up on the new image.
    d.ok(&["service", "update", "--image", "busybox:2", "web_web"]);
    wait_for("the update to complete", || {
        let s = &d.json(&["service", "inspect", "web_web"])[0];
        s["update_status"]["state"] == "completed" && d.replicas("web_web") == (5, 5)
    });
    let running: Vec<Value> = d
        .tasks("web_web")
        .into_iter()
        .filter(|t| t["status"]["state"] == "running")
        .collect();
    assert_eq!(running.len(), 5);
    assert!(running
        .iter()
        .all(|t| t["spec"]["container"]["image"] == "busybox:2"));

    // Restart policy: on-failure, two attempts; the tasks exit 3 after 100 ms.
    let failing = d.dir.path().join("failing.yml");
    std::fs::write(
        &failing,
        "services:\n  crash:\n    image: x\n    environment: {SHOAL_SIM_EXIT_AFTER: 100ms, SHOAL_SIM_EXIT_CODE: '3'}\n    deploy:\n      restart_policy: {condition: on-failure, delay: 50ms, max_attempts: 2}\n",
    )
    .unwrap();
    d.ok(&["stack", "deploy", "-c", failing.to_str().unwrap(), "fail"]);
    wait_for("three failed attempts", || {
        let tasks = d.tasks("fail_crash");
        tasks.len() == 3
            && tasks
                .iter()
                .all(|t| t["status"]["state"] == "failed" && t["status"]["exit_code"] == 3)
    });
    let ps = d.ok(&["stack", "ps", "fail"]);
    assert!(ps.contains("task: non-zero exit (3)"), "{ps}");

    // SIGKILL and restart: state is all there, the same tasks run, nothing is duplicated.
    let before: Vec<String> = d
        .tasks("web_web")
        .iter()
        .filter(|t| t["status"]["state"] == "running")
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect();
    let revision = d.json(&["cluster", "info"])["revision"].as_u64().unwrap();
    d.kill9();
    d.spawn();
    wait_for("the cluster to answer again", || {
        d.shoal(&["cluster", "info"]).status.success()
    });
    assert!(d.json(&["cluster", "info"])["revision"].as_u64().unwrap() >= revision);
    wait_for("web to run 5 again", || d.replicas("web_web") == (5, 5));
    let mut after: Vec<String> = d
        .tasks("web_web")
        .iter()
        .filter(|t| t["status"]["state"] == "running")
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect();
    let mut before = before;
    before.sort();
    after.sort();
    assert_eq!(
        before, after,
        "the running tasks were re-adopted, not replaced"
    );
    assert_eq!(
        d.tasks("fail_crash").len(),
        3,
        "no new attempts after the restart"
    );
    for s in &stacks {
        let name = format!("{s}_");
        let list = d.json(&["service", "ls"]);
        for svc in list.as_array().unwrap().iter().filter(|x| {
            x["service"]["spec"]["name"]
                .as_str()
                .unwrap()
                .starts_with(&name)
        }) {
            assert_eq!(svc["running"], svc["desired"], "{svc}");
        }
    }

    // Removal.
    d.ok(&["stack", "rm", "web"]);
    wait_for("web's services to go", || {
        !d.json(&["service", "ls"])
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["service"]["spec"]["name"] == "web_web")
    });
}

/// Initializes the cluster and registers a second node played by the test (no agent behind it).
fn join_fake_node(d: &Daemon, hostname: &str) -> RegisterResponse {
    d.ok(&["cluster", "init"]);
    wait_for("the local node", || {
        d.json(&["node", "ls"]).as_array().unwrap().len() == 1
    });
    let token = d.json(&["cluster", "info"])["worker_join_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(d.client().post(
        "/v1/dispatcher/register",
        &RegisterRequest {
            node_id: None,
            join_token: token,
            description: NodeDescription {
                hostname: hostname.into(),
                os: "linux".into(),
                arch: "amd64".into(),
                ..Default::default()
            },
            addr: String::new(),
            manager: false,
            raft_id: 0,
        },
    ))
    .unwrap()
}

#[test]
fn a_node_that_stops_heartbeating_is_marked_down_and_its_tasks_replaced() {
    let d = Daemon::start();

    // A second node joins, heartbeats for a while, then falls silent.
    let client = d.client();
    let reg = join_fake_node(&d, "ghost");
    let beating = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let beat = beating.clone();
    let hb = Heartbeat {
        node_id: reg.node_id.clone(),
        session_id: reg.session_id.clone(),
    };
    let heart = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        while beat.load(std::sync::atomic::Ordering::SeqCst) {
            let _: Result<HeartbeatResponse, _> =
                rt.block_on(client.post("/v1/dispatcher/heartbeat", &hb));
            std::thread::sleep(Duration::from_millis(100));
        }
    });

    let stack = d.dir.path().join("spread.yml");
    std::fs::write(
        &stack,
        "services:\n  app:\n    image: x\n    deploy:\n      replicas: 4\n",
    )
    .unwrap();
    d.ok(&["stack", "deploy", "-c", stack.to_str().unwrap(), "s"]);
    let ghost = reg.node_id.to_string();
    wait_for("tasks placed on both nodes", || {
        d.tasks("s_app")
            .iter()
            .filter(|t| t["node_id"] == ghost.as_str())
            .count()
            == 2
    });

    beating.store(false, std::sync::atomic::Ordering::SeqCst);
    heart.join().unwrap();
    wait_for("the silent node to be marked down", || {
        d.json(&["node", "inspect", &ghost])[0]["status"]["state"] == "down"
    });
    wait_for("its tasks to be replaced on the live node", || {
        d.replicas("s_app") == (4, 4)
    });
    let tasks = d.tasks("s_app");
    assert_eq!(
        tasks
            .iter()
            .filter(|t| t["node_id"] == ghost.as_str())
            .map(|t| t["status"]["state"].as_str().unwrap())
            .collect::<Vec<_>>(),
        vec!["orphaned", "orphaned"]
    );
}

#[test]
fn service_logs_gather_lines_from_every_node() {
    let d = Daemon::start();
    // A second node, played by this test: it heartbeats and answers log subscriptions for its
    // tasks with a line each, as an agent does.
    let client = d.client();
    let reg = join_fake_node(&d, "remote");
    let running = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let agent = {
        let running = running.clone();
        let client = client.clone();
        let reg = reg.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async move {
                let hb = Heartbeat {
                    node_id: reg.node_id.clone(),
                    session_id: reg.session_id.clone(),
                };
                let beat_client = client.clone();
                let beat_running = running.clone();
                tokio::spawn(async move {
                    while beat_running.load(std::sync::atomic::Ordering::SeqCst) {
                        let _: Result<HeartbeatResponse, _> =
                            beat_client.post("/v1/dispatcher/heartbeat", &hb).await;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                });
                while running.load(std::sync::atomic::Ordering::SeqCst) {
                    let path = format!(
                        "/v1/dispatcher/logs?node_id={}&session_id={}&wait_ms=200",
                        reg.node_id, reg.session_id
                    );
                    let Ok(subs) = client.get::<Vec<LogSubscription>>(&path).await else {
                        return;
                    };
                    for sub in subs {
                        let lines = sub
                            .tasks
                            .iter()
                            .map(|t| LogLine {
                                task_id: t.clone(),
                                service: String::new(),
                                slot: 0,
                                node_id: reg.node_id.clone(),
                                stream: "stdout".into(),
                                time: "2026-11-22T00:00:00.000000000Z".into(),
                                line: format!("hello from {t}\n"),
                            })
                            .collect();
                        let body = LogPublish {
                            session: reg.session_id.clone(),
                            lines,
                            done: true,
                        };
                        let _: LogPublishResponse = client
                            .post(
                                &format!("/v1/dispatcher/logs/{}?node_id={}", sub.id, reg.node_id),
                                &body,
                            )
                            .await
                            .unwrap();
                    }
                }
            });
        })
    };
    let stack = d.dir.path().join("spread.yml");
    std::fs::write(
        &stack,
        "services:\n  app:\n    image: x\n    deploy:\n      replicas: 4\n",
    )
    .unwrap();
    d.ok(&["stack", "deploy", "-c", stack.to_str().unwrap(), "s"]);
    let remote = reg.node_id.to_string();
    wait_for("tasks placed on both nodes", || {
        d.tasks("s_app")
            .iter()
            .filter(|t| t["node_id"] == remote.as_str())
            .count()
            == 2
    });
    let remote_tasks: Vec<String> = d
        .tasks("s_app")
        .iter()
        .filter(|t| t["node_id"] == remote.as_str())
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect();
    // Both nodes answer (the local one has no output: its executor is simulated), and the
    // command ends once they have.
    let out = d.ok(&["service", "logs", "s_app"]);
    let mut lines: Vec<&str> = out.lines().collect();
    lines.sort();
    assert_eq!(lines.len(), 2, "{out}");
    for task in &remote_tasks {
        let line = lines
            .iter()
            .find(|l| l.ends_with(&format!("| hello from {task}")))
            .unwrap_or_else(|| panic!("no line from {task}: {out}"));
        assert!(line.starts_with("s_app."), "{line}");
        assert!(line.contains(&format!(".{}@remote", &task[..12])), "{line}");
    }
    running.store(false, std::sync::atomic::Ordering::SeqCst);
    agent.join().unwrap();
}
