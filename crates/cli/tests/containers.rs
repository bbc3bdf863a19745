//! A real `shoald` running real containers (built-in runtime), driven through the `shoal` CLI:
//! stacks of the project's busybox and probe images answer requests, write logs, hit their
//! memory limit, keep named volumes, are refused when their image is missing, and survive a
//! SIGKILL of the daemon. Root only: each test says why it skips elsewhere. The harness kills
//! and removes every container, mount and cgroup when a test ends, also when it fails.

mod common;

use common::{containers_supported, wait_for, Daemon};
use serde_json::Value;
use std::process::Command;

fn write_stack(d: &Daemon, name: &str, yaml: &str) -> String {
    let p = d.dir.path().join(format!("{name}.yml"));
    std::fs::write(&p, yaml).unwrap();
    p.to_string_lossy().into_owned()
}

fn deploy(d: &Daemon, name: &str, yaml: &str) {
    if let Err(e) = deploy_result(d, name, yaml) {
        panic!("deploying {name}: {e}");
    }
}

fn running_ids(d: &Daemon, service: &str) -> Vec<String> {
    let mut ids: Vec<String> = d
        .tasks(service)
        .iter()
        .filter(|t| t["status"]["state"] == "running")
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

/// Runs the host's copy of the probe inside the container's network namespace.
fn probe_get(pid: i32, path: &str) -> String {
    let probe = shoal_testkit::probe_binary().unwrap();
    let out = Command::new("nsenter")
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .arg(probe)
        .args(["get", "127.0.0.1:8080", path])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

const PROBES: &str = r#"
services:
  api:
    image: probe
    command: ["serve", "8080"]
    hostname: probe-api
    # The probe has no SIGTERM handler and is PID 1: TERM does nothing, SIGKILL follows.
    stop_grace_period: 1s
    environment:
      ROLE: api
    deploy:
      replicas: 2
"#;

#[test]
fn a_stack_of_probes_serves_http_and_logs() {
    if !containers_supported() {
        return;
    }
    let d = Daemon::with_containers(&[]);
    d.ok(&["cluster", "init"]);
    d.import_images();
    deploy(&d, "p", PROBES);
    let ids = running_ids(&d, "p_api");
    assert_eq!(ids.len(), 2);
    for id in &ids {
        let report: Value =
            serde_json::from_str(probe_get(d.container_pid(id), "/").trim()).unwrap();
        assert_eq!(report["hostname"], "probe-api");
        assert_eq!(report["pid"], 1);
        assert_eq!(report["env"]["ROLE"], "api");
    }
    // Its output is in the service's logs, with the task named.
    wait_for("the serving line in the logs", || {
        d.ok(&["service", "logs", "p_api"])
            .matches("probe: serving on :8080")
            .count()
            == 2
    });
    let tail = d.ok(&["service", "logs", "--tail", "1", "p_api"]);
    assert_eq!(tail.lines().count(), 2, "{tail}");
    assert!(tail.lines().all(|l| l.starts_with("p_api.")), "{tail}");
    // Times and ids on request; a window in time.
    let detailed = d.ok(&[
        "service",
        "logs",
        "--timestamps",
        "--details",
        "--since",
        "1h",
        "p_api",
    ]);
    let line = detailed
        .lines()
        .find(|l| l.contains("probe: serving"))
        .unwrap_or_else(|| panic!("{detailed}"));
    let after_bar = line.split("| ").nth(1).unwrap();
    let (time, rest) = after_bar.split_once(' ').unwrap();
    assert!(time.ends_with('Z') && time.len() == 30, "{line}");
    assert!(
        rest.starts_with("com.docker.swarm.node.id=")
            && rest.contains(",com.docker.swarm.task.id="),
        "{line}"
    );
    assert_eq!(
        d.ok(&["service", "logs", "--until", "2001-01-01", "p_api"]),
        ""
    );
    assert_eq!(
        d.ok(&["service", "logs", "--since", time, "--until", time, "p_api"]),
        ""
    );
    assert!(d
        .ok(&["service", "logs", "--since", time, "p_api"])
        .contains("probe: serving"));
    let info = d.json(&["image", "inspect", "probe"]);
    assert_eq!(info[0]["entrypoint"], serde_json::json!(["/probe"]));
    assert_eq!(info[0]["tags"], serde_json::json!(["probe:latest"]));
    assert_eq!(info[0]["containers"].as_array().unwrap().len(), 2);
    // A rolling update to another tag replaces both containers.
    d.ok(&["image", "tag", "probe", "probe:2"]);
    d.ok(&["service", "update", "--image", "probe:2", "p_api"]);
    wait_for("both replicas on probe:2", || {
        let tasks = d.tasks("p_api");
        tasks
            .iter()
            .filter(|t| t["status"]["state"] == "running")
            .all(|t| t["spec"]["container"]["image"] == "probe:2")
            && tasks
                .iter()
                .filter(|t| t["status"]["state"] == "running")
                .count()
                == 2
    });
    wait_for("the old containers stopped", || d.shims().len() == 2);
    let ids = running_ids(&d, "p_api");
    for id in &ids {
        assert!(probe_get(d.container_pid(id), "/").contains("probe-api"));
    }
    // A tag goes while another remains; the image itself cannot while containers use it.
    assert_eq!(
        d.ok(&["image", "rm", "probe"]).trim(),
        "Untagged: probe:latest"
    );
    let out = d.shoal(&["image", "rm", "probe:2"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("in use"),
        "{out:?}"
    );
    d.ok(&["stack", "rm", "p"]);
    wait_for("containers removed", || d.shims().is_empty());
    wait_for("container directories removed", || {
        std::fs::read_dir(d.dir.path().join("data/containers"))
            .unwrap()
            .count()
            == 0
    });
    let cg = std::path::Path::new("/sys/fs/cgroup/memory")
        .join(d.cgroup_parent().trim_start_matches('/'));
    let left: Vec<_> = std::fs::read_dir(&cg)
        .map(|r| r.flatten().filter(|e| e.path().is_dir()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "cgroups left: {left:?}");
    let out = d.ok(&["image", "rm", "probe:2"]);
    assert!(out.contains("Deleted: sha256:"), "{out}");
}

#[test]
fn missing_images_reject_and_the_oom_killer_fails_tasks() {
    if !containers_supported() {
        return;
    }
    let d = Daemon::with_containers(&[]);
    d.ok(&["cluster", "init"]);
    d.import_images();
    // A file that is no image archive is refused with its name, and nothing changes.
    let before = d.ok(&["image", "ls"]);
    let junk = d.dir.path().join("junk.tar");
    std::fs::write(&junk, "not an archive").unwrap();
    let out = d.shoal(&["image", "import", junk.to_str().unwrap(), "--tag", "junk"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("junk.tar") && err.contains("not a tar archive"),
        "{err}"
    );
    assert_eq!(d.ok(&["image", "ls"]), before);
    // docker's spellings: `import FILE NAME:TAG` and `load -i FILE`.
    let img = d.dir.path().join("img");
    d.ok(&[
        "image",
        "import",
        img.join("busybox.tar").to_str().unwrap(),
        "bb:2",
    ]);
    d.ok(&[
        "image",
        "load",
        "-i",
        img.join("probe.tar").to_str().unwrap(),
        "--tag",
        "pr:2",
    ]);
    let ls = d.ok(&["image", "ls"]);
    assert!(
        ls.lines()
            .any(|l| l.starts_with("bb ") && l.contains(" 2 ")),
        "{ls}"
    );
    assert!(
        ls.lines()
            .any(|l| l.starts_with("pr ") && l.contains(" 2 ")),
        "{ls}"
    );
    let file = write_stack(
        &d,
        "bad",
        r#"
services:
  ghost:
    image: nope:1
    deploy:
      restart_policy: {condition: none}
  hog:
    image: probe
    command: ["alloc", "256", "60"]
    deploy:
      restart_policy: {condition: none}
      resources:
        limits: {memory: 32M}
"#,
    );
    d.ok(&["stack", "deploy", "-c", &file, "bad"]);
    wait_for("the ghost task rejected", || {
        d.tasks("bad_ghost").iter().any(|t| {
            t["status"]["state"] == "rejected"
                && t["status"]["err"]
                    == "pulling nope:1: docker.io: this node does not contact it (shoald --block-registry)"
        })
    });
    wait_for("the hog task failed", || {
        d.tasks("bad_hog")
            .iter()
            .any(|t| t["status"]["state"] == "failed")
    });
    let hog = d.tasks("bad_hog");
    let err = hog[0]["status"]["err"].as_str().unwrap();
    assert!(err.contains("OOMKilled"), "{err}");
    assert_eq!(hog[0]["status"]["exit_code"], 137);
}

#[test]
fn a_named_volume_outlives_its_container() {
    if !containers_supported() {
        return;
    }
    let d = Daemon::with_containers(&[]);
    d.ok(&["cluster", "init"]);
    d.import_images();
    // The first task writes a file and fails; its replacement finds the file and stays up.
    deploy(
        &d,
        "v",
        r#"
services:
  keeper:
    image: busybox
    command: ["sh", "-c", "trap 'exit 0' TERM; if [ -f /data/seen ]; then echo found $$(cat /data/seen); while true; do sleep 1; done; else echo first > /data/seen; exit 3; fi"]
    volumes:
      - state:/data
    deploy:
      restart_policy: {condition: on-failure, delay: 0s}
volumes:
  state:
"#,
    );
    wait_for("a replacement running", || {
        let tasks = d.tasks("v_keeper");
        tasks.iter().any(|t| t["status"]["state"] == "failed")
            && tasks.iter().any(|t| t["status"]["state"] == "running")
    });
    wait_for("the replacement saw the file", || {
        d.ok(&["service", "logs", "v_keeper"])
            .contains("found first")
    });
    // Bind mounts and tmpfs from the stack file.
    let host = d.dir.path().join("shared");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(host.join("greeting"), "hi from the host\n").unwrap();
    deploy(
        &d,
        "m",
        &format!(
            r#"
services:
  reader:
    image: busybox
    command: ["sh", "-c", "trap 'exit 0' TERM; cat /host/greeting; echo t > /scratch/t && echo tmpfs ok; touch /host/x 2>/dev/null || echo read-only; while true; do sleep 1; done"]
    volumes:
      - type: bind
        source: {}
        target: /host
        read_only: true
    tmpfs:
      - /scratch
"#,
            host.display()
        ),
    );
    wait_for("the reader's output", || {
        let out = d.ok(&["service", "logs", "--no-task-ids", "m_reader"]);
        out.contains("hi from the host") && out.contains("tmpfs ok") && out.contains("read-only")
    });
    let vols = d.json(&["volume", "ls"]);
    assert_eq!(vols[0]["name"], "v_state");
    assert!(
        !d.shoal(&["volume", "rm", "v_state"]).status.success(),
        "in use"
    );
    d.ok(&["stack", "rm", "v"]);
    d.ok(&["stack", "rm", "m"]);
    wait_for("containers removed", || d.shims().is_empty());
    wait_for("volume unused", || {
        d.shoal(&["volume", "rm", "v_state"]).status.success()
    });
}

#[test]
fn containers_survive_a_daemon_sigkill_and_are_readopted() {
    if !containers_supported() {
        return;
    }
    let mut d = Daemon::with_containers(&[]);
    d.ok(&["cluster", "init"]);
    d.import_images();
    // No restarts: every container that runs at the end is one that ran before.
    deploy(
        &d,
        "p",
        &PROBES.replace(
            "      replicas: 2",
            "      replicas: 2\n      restart_policy: {condition: none}",
        ),
    );
    let before = running_ids(&d, "p_api");
    assert_eq!(before.len(), 2);
    let mut shims = d.shims();
    shims.sort();
    assert_eq!(shims.len(), 2);
    d.kill9();
    // The containers run on without the daemon.
    for id in &before {
        assert!(probe_get(d.container_pid(id), "/").contains("probe-api"));
    }
    // A container of a task the cluster does not know (as one whose task was removed while
    // its node was away) is removed once the node is back.
    let stray = shoal_api::TaskId::from_bits(0xdead).to_string();
    let stray_dir = d.dir.path().join("data/containers").join(&stray);
    std::fs::create_dir_all(&stray_dir).unwrap();
    std::fs::write(
        stray_dir.join("meta.json"),
        serde_json::json!({
            "id": stray, "task": stray, "name": "gone.1", "image": "probe",
            "image_id": format!("sha256:{}", "0".repeat(64)), "volumes": [],
            "stop_signal": "TERM", "created": 0
        })
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        stray_dir.join("exit.json"),
        r#"{"code":0,"signal":null,"oom_killed":false,"finished":0,"error":null}"#,
    )
    .unwrap();
    d.spawn();
    wait_for("the stray container removed", || !stray_dir.exists());
    wait_for("the node ready again", || {
        d.shoal(&["node", "ls"]).status.success()
            && d.json(&["node", "ls"])[0]["status"]["state"] == "ready"
    });
    // An exit after the restart is seen: the agent watches the re-adopted container.
    probe_get(d.container_pid(&before[0]), "/exit/5");
    wait_for("the exit recorded", || {
        d.tasks("p_api").iter().any(|t| {
            t["id"] == before[0].as_str()
                && t["status"]["state"] == "failed"
                && t["status"]["exit_code"] == 5
        })
    });
    // The other container is the same one, adopted, not started again.
    assert_eq!(running_ids(&d, "p_api"), vec![before[1].clone()]);
    wait_for("the exited container's shim gone", || d.shims().len() == 1);
    assert!(
        shims.contains(&d.shims()[0]),
        "no new container was started"
    );
}

#[test]
fn runc_runs_the_same_stack() {
    if !containers_supported() {
        return;
    }
    if shoal_testkit::which("runc").is_none() {
        shoal_testkit::skip("runc is not installed (apt-get install runc)");
        return;
    }
    let d = Daemon::with_containers(&["--oci-runtime", "runc"]);
    d.ok(&["cluster", "init"]);
    d.import_images();
    deploy(&d, "p", PROBES);
    assert_eq!(
        d.json(&["node", "ls"])[0]["description"]["executor"],
        "container (runc)"
    );
    for id in running_ids(&d, "p_api") {
        let report: Value =
            serde_json::from_str(probe_get(d.container_pid(&id), "/").trim()).unwrap();
        assert_eq!(report["hostname"], "probe-api");
        assert_eq!(report["pid"], 1);
    }
    exec_runs_inside_the_container(&d);
    d.ok(&["stack", "rm", "p"]);
    d.ok(&["stack", "rm", "x"]);
    wait_for("containers removed", || d.shims().is_empty());
}

const EXEC_STACK: &str = "services:
  app:
    image: busybox
    command: [\"sleep\", \"600\"]
    hostname: exec-app
    user: \"1000:1000\"
    working_dir: /tmp
    environment: [FOO=bar]
";

#[test]
fn exec_runs_inside_the_container_under_the_builtin_runtime() {
    if !containers_supported() {
        return;
    }
    let d = Daemon::with_containers(&[]);
    d.ok(&["cluster", "init"]);
    d.import_images();
    exec_runs_inside_the_container(&d);
    d.ok(&["stack", "rm", "x"]);
    wait_for("containers removed", || d.shims().is_empty());
}

/// `service exec` and `container exec` run in the container's namespaces and cgroup, as its
/// user with its env and workdir unless told otherwise, and exit with the process's code.
fn exec_runs_inside_the_container(d: &Daemon) {
    deploy(d, "x", EXEC_STACK);
    let out = d.ok(&[
        "service",
        "exec",
        "x_app",
        "--",
        "sh",
        "-c",
        "id -u; id -g; pwd; echo $FOO; hostname; tr '\\0' ' ' < /proc/1/cmdline; echo; \
         [ \"$(cat /proc/1/cgroup)\" = \"$(cat /proc/self/cgroup)\" ] && echo same-cgroup",
    ]);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "1000",
            "1000",
            "/tmp",
            "bar",
            "exec-app",
            "sleep 600 ",
            "same-cgroup"
        ],
        "{out}"
    );
    let out = d.ok(&[
        "container",
        "exec",
        "-u",
        "0",
        "-w",
        "/",
        "-e",
        "FOO=baz",
        "x_app.1",
        "--",
        "sh",
        "-c",
        "id -u; pwd; echo $FOO",
    ]);
    assert_eq!(out.lines().collect::<Vec<_>>(), ["0", "/", "baz"], "{out}");
    let out = d.shoal(&[
        "container",
        "exec",
        "x_app.1",
        "--",
        "sh",
        "-c",
        "echo oops >&2; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n");
    // -i: stdin reaches the process, and its end ends it; -t: a terminal.
    let out = d.shoal_with_input(
        &[
            "container",
            "exec",
            "-i",
            "x_app.1",
            "--",
            "sh",
            "-c",
            "cat; echo end; exit 4",
        ],
        b"one\ntwo\n",
    );
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "one\ntwo\nend\n");
    let out = d.shoal(&[
        "container",
        "exec",
        "-t",
        "x_app.1",
        "--",
        "sh",
        "-c",
        "test -t 0 && test -t 1 && echo on-a-terminal",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("on-a-terminal"),
        "{out:?}"
    );
    let out = d.shoal(&["container", "exec", "nope", "--", "true"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no container nope"));
    let ls = d.ok(&["container", "ls"]);
    assert!(ls.contains("x_app.1.") && ls.contains("running"), "{ls}");
}

const HEALTH_STACK: &str = "services:
  app:
    image: busybox
    command: [\"sh\", \"-c\", \"sleep 1; touch /tmp/ok; exec sleep 600\"]
    stop_grace_period: 1s
    healthcheck:
      test: [\"CMD\", \"test\", \"-f\", \"/tmp/ok\"]
      interval: 300ms
      retries: 2
      start_period: 30s
";

#[test]
fn a_task_runs_once_healthy_and_an_unhealthy_one_is_replaced() {
    if !containers_supported() {
        return;
    }
    let d = Daemon::with_containers(&[]);
    d.ok(&["cluster", "init"]);
    d.import_images();
    // `--wait` returns once the task runs, which it does only once its check passed.
    deploy(&d, "h", HEALTH_STACK);
    let tasks = d.tasks("h_app");
    let first = tasks
        .iter()
        .find(|t| t["desired_state"] == "running")
        .unwrap()
        .clone();
    assert_eq!(first["status"]["state"], "running", "{first}");
    assert_eq!(first["status"]["health"], "healthy", "{first}");
    let ls = d.ok(&["container", "ls"]);
    assert!(ls.contains("running (healthy)"), "{ls}");
    let ps = d.ok(&["service", "ps", "h_app"]);
    assert!(ps.contains("running (healthy)"), "{ps}");
    // The check fails from now on: the task fails as unhealthy and a new one replaces it.
    d.ok(&["service", "exec", "h_app", "--", "rm", "/tmp/ok"]);
    wait_for("the unhealthy task to fail and be replaced", || {
        let tasks = d.tasks("h_app");
        let failed = tasks.iter().any(|t| {
            t["id"] == first["id"]
                && t["status"]["state"] == "failed"
                && t["status"]["health"] == "unhealthy"
                && t["status"]["err"] == "unhealthy container"
        });
        let replaced = tasks.iter().any(|t| {
            t["id"] != first["id"]
                && t["status"]["state"] == "running"
                && t["status"]["health"] == "healthy"
        });
        failed && replaced
    });
    d.ok(&["stack", "rm", "h"]);
    wait_for("containers removed", || d.shims().is_empty());
}

/// A service whose tasks take a second to stop (the shell ignores SIGTERM) and run once
/// healthy; `ORDER` and `FAILURE` are filled in.
const UPDATE_STACK: &str = "services:
  app:
    image: busybox
    command: [\"sh\", \"-c\", \"touch /tmp/ok; echo v1; sleep 600\"]
    stop_grace_period: 1s
    healthcheck:
      test: [\"CMD\", \"test\", \"-f\", \"/tmp/ok\"]
      interval: 200ms
      retries: 1
    deploy:
      replicas: 1
      update_config:
        order: ORDER
        failure_action: FAILURE
        monitor: 30s
";

/// Deploys `yaml` as stack `name`; the CLI's output when it fails.
fn deploy_result(d: &Daemon, name: &str, yaml: &str) -> Result<(), String> {
    let file = write_stack(d, name, yaml);
    let out = d.shoal(&[
        "stack",
        "deploy",
        "--wait",
        "--timeout",
        "60s",
        "-c",
        &file,
        name,
    ]);
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// When a task's status last changed, in ms.
fn since(t: &Value) -> u64 {
    t["status"]["since"].as_u64().unwrap()
}

#[test]
fn updates_keep_their_order_and_a_broken_one_rolls_back() {
    if !containers_supported() {
        return;
    }
    let d = Daemon::with_containers(&[]);
    d.ok(&["cluster", "init"]);
    d.import_images();
    for order in ["stop-first", "start-first"] {
        let stack = UPDATE_STACK
            .replace("ORDER", order)
            .replace("FAILURE", "pause");
        deploy_result(&d, "u", &stack).unwrap();
        let old = d.tasks("u_app")[0].clone();
        deploy_result(&d, "u", &stack.replace("echo v1", "echo v2")).unwrap();
        // Start-first: the old task is still stopping when the new one runs.
        wait_for("the old task to stop", || {
            d.tasks("u_app")
                .iter()
                .any(|t| t["id"] == old["id"] && t["status"]["state"] == "shutdown")
        });
        let tasks = d.tasks("u_app");
        let old = tasks.iter().find(|t| t["id"] == old["id"]).unwrap();
        let new = tasks
            .iter()
            .find(|t| t["desired_state"] == "running" && t["status"]["state"] == "running")
            .unwrap();
        // The old task's status last changed when it stopped; the new one's when it became
        // healthy, so running.
        if order == "stop-first" {
            assert!(since(old) <= since(new), "{order}: {old}\n{new}");
        } else {
            assert!(since(new) <= since(old), "{order}: {old}\n{new}");
        }
        d.ok(&["stack", "rm", "u"]);
        wait_for("stack u removed", || d.shims().is_empty());
    }

    // An update to an image that cannot run (the probe image has no shell) fails within
    // `monitor`: with `failure_action: rollback` the service goes back by itself, and the
    // deploy says so.
    let stack = UPDATE_STACK
        .replace("ORDER", "start-first")
        .replace("FAILURE", "rollback");
    deploy_result(&d, "r", &stack).unwrap();
    let err = deploy_result(&d, "r", &stack.replace("image: busybox", "image: probe")).unwrap_err();
    assert!(
        err.contains("r_app: update rolled back due to failure or early termination of task"),
        "{err}"
    );
    let s = &d.json(&["service", "inspect", "r_app"])[0];
    assert_eq!(s["spec"]["task"]["container"]["image"], "busybox", "{s}");
    assert_eq!(s["update_status"]["state"], "rollback_completed", "{s}");
    let running: Vec<Value> = d
        .tasks("r_app")
        .into_iter()
        .filter(|t| t["status"]["state"] == "running")
        .collect();
    assert_eq!(running.len(), 1);
    assert_eq!(running[0]["spec"]["container"]["image"], "busybox");
    // `service rollback` by hand: back to the spec before the last update.
    d.ok(&[
        "service",
        "update",
        "--update-failure-action",
        "pause",
        "r_app",
    ]);
    let out = d.ok(&["service", "rollback", "r_app"]);
    assert_eq!(out.trim(), "r_app");
    wait_for("the manual rollback to complete", || {
        d.json(&["service", "inspect", "r_app"])[0]["update_status"]["state"]
            == "rollback_completed"
    });
    let s = &d.json(&["service", "inspect", "r_app"])[0];
    assert_eq!(
        s["spec"]["update_config"]["failure_action"], "rollback",
        "{s}"
    );
    assert_eq!(
        s["previous_spec"]["update_config"]["failure_action"], "pause",
        "{s}"
    );
    // An update whose tasks start but never pass their health check rolls back too.
    let err = deploy_result(&d, "r", &stack.replace("touch /tmp/ok; ", "")).unwrap_err();
    assert!(err.contains("r_app: update rolled back due to"), "{err}");
    let s = &d.json(&["service", "inspect", "r_app"])[0];
    assert!(
        s["spec"]["task"]["container"]["args"][2]
            .as_str()
            .unwrap()
            .contains("touch /tmp/ok"),
        "{s}"
    );
    assert!(d
        .tasks("r_app")
        .iter()
        .any(|t| t["status"]["health"] == "unhealthy" && t["status"]["state"] == "failed"));
    d.ok(&["stack", "rm", "r"]);
    wait_for("containers removed", || d.shims().is_empty());
}

/// `db` becomes healthy two seconds after it starts; `app` depends on it being healthy.
const DEPENDS_STACK: &str = "services:
  db:
    image: busybox
    command: [\"sh\", \"-c\", \"sleep 2; touch /tmp/ok; exec sleep 600\"]
    stop_grace_period: 1s
    healthcheck:
      test: [\"CMD\", \"test\", \"-f\", \"/tmp/ok\"]
      interval: 200ms
      retries: 1
      start_period: 30s
  app:
    image: busybox
    command: [\"sleep\", \"600\"]
    stop_grace_period: 1s
    depends_on:
      db:
        condition: service_healthy
";

#[test]
fn depends_on_service_healthy_holds_a_service_until_its_dependency_is_healthy() {
    if !containers_supported() {
        return;
    }
    let d = Daemon::with_containers(&[]);
    d.ok(&["cluster", "init"]);
    d.import_images();
    deploy(&d, "o", DEPENDS_STACK);
    let db = d.tasks("o_db")[0].clone();
    let app = d.tasks("o_app")[0].clone();
    assert_eq!(db["status"]["health"], "healthy", "{db}");
    // The app's task was made only once db's task ran healthy.
    assert!(
        app["created_at"].as_u64().unwrap() >= db["status"]["since"].as_u64().unwrap(),
        "app made before db was healthy:\n{db}\n{app}"
    );
    d.ok(&["stack", "rm", "o"]);
    wait_for("containers removed", || d.shims().is_empty());
}

const CONFINED_STACK: &str = "services:
  plain:
    image: probe
    command: [\"sleep\", \"600\"]
    stop_grace_period: 1s
  open:
    image: probe
    command: [\"sleep\", \"600\"]
    stop_grace_period: 1s
    cap_add: [SYS_ADMIN]
    security_opt: [seccomp=unconfined]
  custom:
    image: probe
    command: [\"sleep\", \"600\"]
    stop_grace_period: 1s
    security_opt: [seccomp=./deny-keyctl.json]
";

const PRIVILEGED_STACK: &str = "services:
  root:
    image: probe
    command: [\"sleep\", \"600\"]
    stop_grace_period: 1s
    privileged: true
";

/// Confinement from the stack file: the default seccomp filter and device rules, the filter
/// lifted by `seccomp=unconfined`, a profile of the service's own, `cap_add`, and
/// `privileged` refused until the cluster allows it. Checked through `container exec`, which
/// runs under the container's filter too.
#[test]
fn stack_files_choose_the_confinement() {
    if !containers_supported() {
        return;
    }
    let d = Daemon::with_containers(&[]);
    d.ok(&["cluster", "init"]);
    d.import_images();
    std::fs::write(
        d.dir.path().join("deny-keyctl.json"),
        r#"{"defaultAction":"SCMP_ACT_ALLOW",
            "syscalls":[{"names":["keyctl"],"action":"SCMP_ACT_ERRNO","errnoRet":38}]}"#,
    )
    .unwrap();
    deploy(&d, "sec", CONFINED_STACK);
    let calls = |task: &str| {
        d.ok(&[
            "container",
            "exec",
            task,
            "--",
            "/probe",
            "syscall",
            "keyctl",
            "unshare",
            "mknod-block",
            "mount",
        ])
    };
    assert_eq!(
        calls("sec_plain.1"),
        "keyctl: errno 1\nunshare: errno 1\nmknod-block: errno 1\nmount: errno 1\n"
    );
    assert_eq!(
        calls("sec_open.1"),
        "keyctl: ok\nunshare: ok\nmknod-block: errno 1\nmount: errno 2\n"
    );
    assert_eq!(
        calls("sec_custom.1"),
        "keyctl: errno 38\nunshare: errno 1\nmknod-block: errno 1\nmount: errno 2\n"
    );
    let refused = deploy_result(&d, "priv", PRIVILEGED_STACK).unwrap_err();
    assert!(
        refused.contains("privileged container, which this cluster does not allow"),
        "{refused}"
    );
    assert!(
        !d.ok(&["service", "ls"]).contains("priv_root"),
        "nothing was created"
    );
    d.ok(&["cluster", "update", "--allow-privileged", "true"]);
    assert!(d.ok(&["cluster", "info"]).contains("Privileged:   allowed"));
    deploy(&d, "priv", PRIVILEGED_STACK);
    let out = calls("priv_root.1");
    assert!(out.starts_with("keyctl: ok\nunshare: ok\n"), "{out}");
    assert!(
        !out.contains("mknod-block: errno 1"),
        "a privileged container may make device nodes: {out}"
    );
    d.ok(&["stack", "rm", "sec"]);
    d.ok(&["stack", "rm", "priv"]);
    wait_for("containers removed", || d.shims().is_empty());
}
