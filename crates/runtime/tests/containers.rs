//! Real containers from the project's own images, under the built-in runtime and (for the
//! differential test) runc. Root only: each test says why it skips elsewhere. Every mount,
//! cgroup and directory a test makes is removed by its guard, also when it fails.

use shoal_runtime::cgroups::Cgroup;
use shoal_runtime::image::{ImageStore, ImportOptions};
use shoal_runtime::logs;
use shoal_runtime::oci::{which, OciRuntime};
use shoal_runtime::rootfs::{is_mount_point, Overlay};
use shoal_runtime::shim::{read_exit, ExitRecord};
use shoal_runtime::spec::{self, MountInput, SpecInput};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};

fn supported() -> bool {
    match shoal_testkit::container_support() {
        Ok(()) => true,
        Err(why) => {
            shoal_testkit::skip(&format!("this host cannot run containers: {why}"));
            false
        }
    }
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A private node: image store, runtime state and a cgroup parent of its own.
struct Node {
    dir: tempfile::TempDir,
    store: ImageStore,
    cgroup_parent: String,
    bundles: std::sync::Mutex<Vec<PathBuf>>,
}

impl Node {
    fn new() -> Node {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(&dir.path().join("images")).unwrap();
        let images = dir.path().join("src");
        std::fs::create_dir_all(&images).unwrap();
        shoal_testkit::busybox_tar(&images.join("busybox.tar")).unwrap();
        shoal_testkit::probe_tar(&images.join("probe.tar")).unwrap();
        for (name, tar) in [("busybox", "busybox.tar"), ("probe", "probe.tar")] {
            store
                .import(
                    &images.join(tar),
                    &ImportOptions {
                        tag: Some(name.into()),
                        changes: vec![],
                        source_name: None,
                    },
                )
                .unwrap();
        }
        let cgroup_parent = format!(
            "/shoal-test-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        Node {
            dir,
            store,
            cgroup_parent,
            bundles: Default::default(),
        }
    }

    fn builtin(&self) -> OciRuntime {
        OciRuntime::new(
            "builtin",
            Path::new(env!("CARGO_BIN_EXE_shoal-runtime")),
            &self.dir.path().join("run/builtin"),
        )
    }

    fn runc(&self) -> Option<OciRuntime> {
        which("runc").map(|b| OciRuntime::new("runc", &b, &self.dir.path().join("run/runc")))
    }

    /// A bundle of `image` running `args`, with `edit` applied to the spec input.
    fn bundle(
        &self,
        id: &str,
        image: &str,
        args: &[&str],
        edit: impl FnOnce(&mut SpecInput),
    ) -> PathBuf {
        let img = self.store.get(image).unwrap();
        let dir = self.dir.path().join("containers").join(id);
        std::fs::create_dir_all(&dir).unwrap();
        let overlay = Overlay::under(&dir);
        overlay.mount(&self.store.lower_dirs(&img)).unwrap();
        self.bundles.lock().unwrap().push(dir.clone());
        let mut input = SpecInput {
            rootfs: overlay.merged.clone(),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: spec::process_env(&[], &img.run_config(), "probe-host", "/root"),
            cwd: "/".into(),
            hostname: "probe-host".into(),
            cgroups_path: format!("{}/{id}", self.cgroup_parent),
            ..Default::default()
        };
        edit(&mut input);
        let s = spec::build(&input).unwrap();
        s.save(dir.join("config.json")).unwrap();
        dir
    }

    /// Runs the bundle under a shim until it exits.
    fn run(&self, rt: &OciRuntime, id: &str, bundle: &Path) -> (ExitRecord, Vec<logs::LogEntry>) {
        let mut shim = self.spawn_shim(rt, id, bundle);
        let line = read_status(&mut shim);
        assert!(line.starts_with("ok "), "shim: {line}");
        shim.wait().unwrap();
        let exit = read_exit(bundle).expect("exit.json");
        let entries = logs::read(&bundle.join("container.log"), None).unwrap();
        rt.delete(id, true).unwrap();
        (exit, entries)
    }

    fn spawn_shim(&self, rt: &OciRuntime, id: &str, bundle: &Path) -> std::process::Child {
        shoal_runtime::shim::command(
            Path::new(env!("CARGO_BIN_EXE_shoal-runtime")),
            rt,
            bundle,
            id,
            &[],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
    }
}

fn read_status(shim: &mut std::process::Child) -> String {
    let mut line = String::new();
    std::io::BufReader::new(shim.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    line.trim().to_owned()
}

impl Drop for Node {
    fn drop(&mut self) {
        for rt in [Some(self.builtin()), self.runc()].into_iter().flatten() {
            if let Ok(entries) = std::fs::read_dir(&rt.root) {
                for e in entries.flatten() {
                    let _ = rt.delete(&e.file_name().to_string_lossy(), true);
                }
            }
        }
        for b in self.bundles.lock().unwrap().iter() {
            let _ = Overlay::under(b).unmount();
        }
        // runc makes the parent in every controller's hierarchy, not only those shoal uses.
        for base in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let dir = base.path().join(self.cgroup_parent.trim_start_matches('/'));
            for c in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if c.path().is_dir() {
                    let _ = std::fs::remove_dir(c.path());
                }
            }
            let _ = std::fs::remove_dir(&dir);
        }
        let _ = Cgroup::at(&self.cgroup_parent).remove(std::time::Duration::from_secs(2));
    }
}

fn report(entries: &[logs::LogEntry]) -> serde_json::Value {
    let text: String = entries
        .iter()
        .filter(|e| e.stream == "stdout")
        .map(|e| e.log.as_str())
        .collect();
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("probe report {text:?}: {e}"))
}

#[test]
fn the_probe_is_isolated() {
    if !supported() {
        return;
    }
    let node = Node::new();
    let b = node.bundle("iso", "probe", &["/probe", "report"], |_| {});
    let (exit, entries) = node.run(&node.builtin(), "iso", &b);
    assert_eq!(exit.code, 0, "{entries:?}");
    let r = report(&entries);
    assert_eq!(r["pid"], 1, "the process is PID 1 of its namespace");
    assert_eq!(r["hostname"], "probe-host");
    assert_eq!(
        r["addresses"],
        serde_json::json!(["127.0.0.1"]),
        "only loopback, and it is up"
    );
    let mounts: Vec<String> = r["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap().to_owned())
        .collect();
    let host = node.dir.path().to_string_lossy().into_owned();
    assert!(
        !mounts
            .iter()
            .any(|m| m.contains(&host) || m.starts_with("/work")),
        "host mounts are invisible: {mounts:?}"
    );
    for m in [
        "/ overlay",
        "/proc proc",
        "/dev tmpfs",
        "/dev/pts devpts",
        "/sys sysfs",
        // Masked (/dev/null bound over it) and read-only (bound onto itself) paths.
        "/proc/keys tmpfs",
        "/proc/sys proc",
    ] {
        assert!(
            mounts.contains(&m.to_string()),
            "{m} missing from {mounts:?}"
        );
    }
    assert_eq!(r["no_new_privs"], "1");
    assert_eq!(r["seccomp"], "2", "a seccomp filter is installed");
    // Docker's default capability set: 0x00000000a80425fb.
    assert_eq!(r["cap_eff"], "00000000a80425fb");
    assert_eq!(r["cap_bnd"], "00000000a80425fb");
}

#[test]
fn env_user_and_workdir_apply() {
    if !supported() {
        return;
    }
    let node = Node::new();
    let b = node.bundle("user", "probe", &["/probe", "report"], |i| {
        i.uid = 1000;
        i.gid = 1000;
        i.additional_gids = vec![50];
        i.cwd = "/srv/app".into();
        i.env.push("GREETING=hello".into());
    });
    let (exit, entries) = node.run(&node.builtin(), "user", &b);
    assert_eq!(exit.code, 0, "{entries:?}");
    let r = report(&entries);
    assert_eq!(r["uid"], "1000\t1000\t1000\t1000");
    assert_eq!(r["gid"], "1000\t1000\t1000\t1000");
    assert_eq!(r["groups"], "50");
    assert_eq!(
        r["cwd"], "/srv/app",
        "a missing working directory is created"
    );
    assert_eq!(r["env"]["GREETING"], "hello");
    assert_eq!(r["env"]["HOSTNAME"], "probe-host");
    assert_eq!(
        r["cap_eff"], "0000000000000000",
        "a non-root user has no effective capabilities"
    );
}

#[test]
fn exit_codes_and_both_streams_are_recorded() {
    if !supported() {
        return;
    }
    let node = Node::new();
    let b = node.bundle("exit", "probe", &["/probe", "exit", "7"], |_| {});
    let (exit, entries) = node.run(&node.builtin(), "exit", &b);
    assert_eq!(exit.code, 7);
    assert!(!exit.oom_killed);
    let streams: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| (e.stream.as_str(), e.log.as_str()))
        .collect();
    assert!(
        streams.contains(&("stdout", "probe: exiting with 7\n")),
        "{streams:?}"
    );
    assert!(
        streams.contains(&("stderr", "probe: to stderr\n")),
        "{streams:?}"
    );
}

#[test]
fn the_memory_limit_kills_the_probe() {
    if !supported() {
        return;
    }
    let node = Node::new();
    let b = node.bundle("oom", "probe", &["/probe", "alloc", "256"], |i| {
        i.memory = Some(32 << 20);
    });
    let (exit, entries) = node.run(&node.builtin(), "oom", &b);
    assert_eq!(exit.signal, Some(9), "{exit:?} {entries:?}");
    assert_eq!(exit.code, 137);
    assert!(exit.oom_killed, "{exit:?}");
    // The same program within its limit runs to the end.
    let b = node.bundle("fits", "probe", &["/probe", "alloc", "8"], |i| {
        i.memory = Some(64 << 20);
    });
    let (exit, _) = node.run(&node.builtin(), "fits", &b);
    assert_eq!((exit.code, exit.oom_killed), (0, false));
}

#[test]
fn the_pids_limit_stops_forks() {
    if !supported() {
        return;
    }
    let node = Node::new();
    let b = node.bundle("pids", "probe", &["/probe", "spawn", "40"], |i| {
        i.pids = Some(10);
    });
    let (exit, entries) = node.run(&node.builtin(), "pids", &b);
    assert_eq!(exit.code, 0, "{entries:?}");
    let line = entries
        .iter()
        .find(|e| e.log.starts_with("probe: spawned"))
        .unwrap();
    let n: u32 = line.log.trim().rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n < 10, "at most 9 children besides the probe, got {n}");
}

#[test]
fn mounts_bind_and_tmpfs() {
    if !supported() {
        return;
    }
    let node = Node::new();
    let data = node.dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("in"), "from the host\n").unwrap();
    let b = node.bundle(
        "mnt",
        "busybox",
        &["sh", "-c", "cat /data/in; echo out > /data/out; echo t > /scratch/t && cat /scratch/t; touch /ro/x || echo read-only"],
        |i| {
            i.mounts = vec![
                MountInput::Bind { source: data.clone(), target: "/data".into(), read_only: false },
                MountInput::Bind { source: data.clone(), target: "/ro".into(), read_only: true },
                MountInput::Tmpfs { target: "/scratch".into(), size: Some(1 << 20) },
            ];
        },
    );
    let (exit, entries) = node.run(&node.builtin(), "mnt", &b);
    let out: String = entries
        .iter()
        .filter(|e| e.stream == "stdout")
        .map(|e| e.log.as_str())
        .collect();
    assert_eq!(exit.code, 0, "{entries:?}");
    assert_eq!(out, "from the host\nt\nread-only\n");
    assert_eq!(std::fs::read_to_string(data.join("out")).unwrap(), "out\n");
}

#[test]
fn a_read_only_root_refuses_writes() {
    if !supported() {
        return;
    }
    let node = Node::new();
    let b = node.bundle(
        "ro",
        "busybox",
        &[
            "sh",
            "-c",
            "touch /x 2>/dev/null || echo refused; echo ok > /scratch/y && echo tmpfs writable",
        ],
        |i| {
            i.read_only_rootfs = true;
            i.mounts = vec![MountInput::Tmpfs {
                target: "/scratch".into(),
                size: None,
            }];
        },
    );
    let (exit, entries) = node.run(&node.builtin(), "ro", &b);
    let out: String = entries.iter().map(|e| e.log.as_str()).collect();
    assert_eq!(exit.code, 0, "{entries:?}");
    assert_eq!(out, "refused\ntmpfs writable\n");
}

#[test]
fn delete_leaves_no_mount_cgroup_or_directory() {
    if !supported() {
        return;
    }
    let node = Node::new();
    let rt = node.builtin();
    let b = node.bundle("gone", "busybox", &["sleep", "1000"], |i| {
        i.memory = Some(64 << 20);
        i.nano_cpus = Some(500_000_000);
        i.pids = Some(30);
    });
    let mut shim = node.spawn_shim(&rt, "gone", &b);
    assert!(read_status(&mut shim).starts_with("ok "));
    assert_eq!(rt.state("gone").unwrap().status, "running");
    let cgroup = Cgroup::at(&format!("{}/gone", node.cgroup_parent));
    assert!(cgroup.exists());
    if cgroup.mode() == shoal_runtime::cgroups::Mode::V1 {
        let rel = format!("{}/gone", node.cgroup_parent.trim_start_matches('/'));
        let read = |f: &str| {
            std::fs::read_to_string(format!("/sys/fs/cgroup/{f}"))
                .unwrap()
                .trim()
                .to_owned()
        };
        assert_eq!(
            read(&format!("memory/{rel}/memory.limit_in_bytes")),
            (64u64 << 20).to_string()
        );
        assert_eq!(read(&format!("cpu/{rel}/cpu.cfs_quota_us")), "50000");
        assert_eq!(read(&format!("cpu/{rel}/cpu.cfs_period_us")), "100000");
        assert_eq!(read(&format!("pids/{rel}/pids.max")), "30");
    }
    rt.kill("gone", "KILL").unwrap();
    shim.wait().unwrap();
    assert_eq!(read_exit(&b).unwrap().code, 137);
    rt.delete("gone", false).unwrap();
    Overlay::under(&b).unmount().unwrap();
    assert!(!cgroup.exists(), "cgroup removed");
    assert!(!rt.root.join("gone").exists(), "runtime state removed");
    assert!(!is_mount_point(&b.join("rootfs")), "rootfs unmounted");
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mountinfo.contains(&b.to_string_lossy().into_owned()),
        "no mount left under the bundle"
    );
}

#[test]
fn a_bad_command_fails_at_create_with_its_reason() {
    if !supported() {
        return;
    }
    let node = Node::new();
    let rt = node.builtin();
    let b = node.bundle("nocmd", "busybox", &["no-such-program"], |_| {});
    let mut shim = node.spawn_shim(&rt, "nocmd", &b);
    let line = read_status(&mut shim);
    shim.wait().unwrap();
    assert!(
        line.starts_with("error ") && line.contains("executable file not found"),
        "{line}"
    );
    assert!(read_exit(&b).unwrap().error.is_some());
    assert!(!rt.root.join("nocmd").exists());
    assert!(!Cgroup::at(&format!("{}/nocmd", node.cgroup_parent)).exists());
}

/// The same bundle under the built-in runtime and under runc: the probe must see the same.
#[test]
fn builtin_and_runc_agree() {
    if !supported() {
        return;
    }
    let node = Node::new();
    let Some(runc) = node.runc() else {
        shoal_testkit::skip("runc is not installed (apt-get install runc)");
        return;
    };
    let edit = |i: &mut SpecInput| {
        i.uid = 33;
        i.gid = 33;
        i.cwd = "/var/www".into();
        i.memory = Some(64 << 20);
        i.pids = Some(50);
        i.env.push("MODE=diff".into());
        i.mounts = vec![MountInput::Tmpfs {
            target: "/cache".into(),
            size: None,
        }];
    };
    let b1 = node.bundle("diff-builtin", "probe", &["/probe", "report"], edit);
    let b2 = node.bundle("diff-runc", "probe", &["/probe", "report"], edit);
    let (e1, l1) = node.run(&node.builtin(), "diff-builtin", &b1);
    let (e2, l2) = node.run(&runc, "diff-runc", &b2);
    assert_eq!((e1.code, e2.code), (0, 0), "{l1:?} {l2:?}");
    let (r1, r2) = (report(&l1), report(&l2));
    for key in [
        "pid",
        "hostname",
        "uid",
        "gid",
        "groups",
        "cap_eff",
        "cap_bnd",
        "cap_prm",
        "no_new_privs",
        "seccomp",
        "cwd",
        "addresses",
        "env",
    ] {
        assert_eq!(
            r1[key], r2[key],
            "{key} differs: builtin {} vs runc {}",
            r1[key], r2[key]
        );
    }
    let set = |r: &serde_json::Value| {
        let mut v: Vec<String> = r["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_str().unwrap().to_owned())
            .collect();
        v.sort();
        v.dedup();
        v
    };
    assert_eq!(set(&r1), set(&r2), "mount tables differ");
}

/// The built-in runtime, and runc when it is installed (otherwise says so: a failure under
/// CI=true).
fn builtin_and_runc(node: &Node) -> Vec<OciRuntime> {
    let mut runtimes = vec![node.builtin()];
    match node.runc() {
        Some(r) => runtimes.push(r),
        None => shoal_testkit::skip("runc is not installed (apt-get install runc)"),
    }
    runtimes
}

#[test]
fn seccomp_and_device_rules_confine_under_both_runtimes() {
    use shoal_api::security::{parse_profile, Seccomp};
    if !supported() {
        return;
    }
    let node = Node::new();
    let runtimes = builtin_and_runc(&node);
    let calls = [
        "/probe",
        "syscall",
        "keyctl",
        "unshare",
        "mknod-block",
        "mknod-null",
        "mount",
    ];
    let custom = parse_profile(
        r#"{"defaultAction":"SCMP_ACT_ALLOW",
            "syscalls":[{"names":["keyctl"],"action":"SCMP_ACT_ERRNO","errnoRet":38}]}"#,
    )
    .unwrap();
    type Edit = Box<dyn Fn(&mut SpecInput)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            // Denied by the filter (keyctl, unshare, mount) and by the device rules (mknod of
            // a block device); a null device may be made and opened.
            "default",
            Box::new(|_| {}),
            "keyctl: errno 1\nunshare: errno 1\nmknod-block: errno 1\nmknod-null: ok\nmount: errno 1\n",
        ),
        (
            // No filter: keyctl works and mount reaches the kernel (which looks the target
            // up before it checks the capability); capabilities and device rules still hold.
            "unconfined",
            Box::new(|i| i.seccomp = Seccomp::Unconfined),
            "keyctl: ok\nunshare: errno 1\nmknod-block: errno 1\nmknod-null: ok\nmount: errno 2\n",
        ),
        (
            // CAP_SYS_ADMIN lifts the filter's namespace and mount rules (mount then fails
            // only because its target does not exist); keyctl stays denied.
            "sysadmin",
            Box::new(|i| i.cap_add = vec!["SYS_ADMIN".into()]),
            "keyctl: errno 1\nunshare: ok\nmknod-block: errno 1\nmknod-null: ok\nmount: errno 2\n",
        ),
        (
            // The profile replaces the default: only keyctl is filtered, with its errno.
            "profile",
            Box::new(move |i| i.seccomp = Seccomp::Profile(Box::new(custom.clone()))),
            "keyctl: errno 38\nunshare: errno 1\nmknod-block: errno 1\nmknod-null: ok\nmount: errno 2\n",
        ),
    ];
    for rt in &runtimes {
        for (name, edit, want) in &cases {
            let id = format!("sc-{name}-{}", rt.name);
            let b = node.bundle(&id, "probe", &calls, edit);
            let (exit, entries) = node.run(rt, &id, &b);
            let out: String = entries.iter().map(|e| e.log.as_str()).collect();
            assert_eq!(exit.code, 0, "{}: {name}: {entries:?}", rt.name);
            assert_eq!(out, *want, "{} with the {name} case", rt.name);
        }
    }
}

/// On cgroup v2 the device rules are a BPF device program attached to the container's cgroup:
/// the built-in runtime keeps CAP_MKNOD there, a null device can be made and opened, a block
/// device cannot (unless the container is privileged). On a hybrid host (v1 controllers, v2 at /sys/fs/cgroup/unified) the runtime
/// is pointed at the unified hierarchy, and the test checks that v1's devices controller had
/// no part in it.
#[test]
fn device_rules_hold_on_cgroup_v2_through_a_bpf_program() {
    use shoal_runtime::cgroups;
    if !supported() {
        return;
    }
    let Some(unified) = cgroups::unified_root() else {
        shoal_testkit::skip("this host mounts no cgroup2 hierarchy");
        return;
    };
    // nextest runs each test in a process of its own: the runtimes it starts inherit this.
    std::env::set_var(cgroups::ROOT_ENV, &unified);
    let node = Node::new();
    let rt = node.builtin();
    let calls = ["/probe", "syscall", "mknod-block", "mknod-null"];
    let b = node.bundle("v2-dev", "probe", &calls, |_| {});
    let (exit, entries) = node.run(&rt, "v2-dev", &b);
    let out: String = entries.iter().map(|e| e.log.as_str()).collect();
    assert_eq!(exit.code, 0, "{entries:?}");
    assert_eq!(out, "mknod-block: errno 1\nmknod-null: ok\n");
    // A privileged container's rules allow every device: the block device is made, and its
    // open fails at most because the host has no such disk (ENXIO), never with EPERM.
    let b = node.bundle("v2-priv", "probe", &calls, |i| {
        i.privileged = true;
        i.node_capabilities = spec::node_capabilities();
    });
    let (exit, entries) = node.run(&rt, "v2-priv", &b);
    let out: String = entries.iter().map(|e| e.log.as_str()).collect();
    assert_eq!(exit.code, 0, "{entries:?}");
    assert!(
        out == "mknod-block: ok\nmknod-null: ok\n"
            || out == "mknod-block: errno 6\nmknod-null: ok\n",
        "{out}"
    );
    // A process exec'd into a running container joins its cgroup, so the program holds for
    // it too (it keeps CAP_MKNOD as the container does).
    let b = node.bundle("v2-exec", "probe", &["/probe", "sleep", "60"], |_| {});
    let mut shim = node.spawn_shim(&rt, "v2-exec", &b);
    let line = read_status(&mut shim);
    assert!(line.starts_with("ok "), "shim: {line}");
    let spec = oci_spec::runtime::Spec::load(b.join("config.json")).unwrap();
    let mut process = spec.process().clone().unwrap();
    process.set_args(Some(calls.iter().map(|s| s.to_string()).collect()));
    let file = b.join("exec-process.json");
    std::fs::write(&file, serde_json::to_vec(&process).unwrap()).unwrap();
    let out = rt.exec_command("v2-exec", &file).output().unwrap();
    rt.delete("v2-exec", true).unwrap();
    shim.wait().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "mknod-block: errno 1\nmknod-null: ok\n"
    );
    let b = node.bundle(
        "v2-cg",
        "probe",
        &["/probe", "cat", "/proc/self/cgroup"],
        |_| {},
    );
    let (exit, entries) = node.run(&rt, "v2-cg", &b);
    let out: String = entries.iter().map(|e| e.log.as_str()).collect();
    assert_eq!(exit.code, 0, "{entries:?}");
    let line = |prefix: &str| {
        out.lines()
            .find(|l| l.starts_with(prefix))
            .map(str::to_owned)
    };
    let own = format!("{}/v2-cg", node.cgroup_parent);
    assert_eq!(
        line("0::").as_deref(),
        Some(format!("0::{own}").as_str()),
        "{out}"
    );
    if let Some(devices) = out.lines().find(|l| l.contains(":devices:")) {
        assert!(
            !devices.ends_with(&own),
            "v1's devices controller was used: {out}"
        );
    }
}

/// A privileged container gets the host's devices in its /dev (as Docker's --privileged); an
/// unprivileged one only the defaults. Only looked at, never opened.
#[test]
fn a_privileged_container_sees_the_hosts_devices_under_both_runtimes() {
    use oci_spec::runtime::LinuxDeviceType;
    if !supported() {
        return;
    }
    let node = Node::new();
    let runtimes = builtin_and_runc(&node);
    let devices = shoal_runtime::devices::host_devices(Path::new("/dev"));
    let block = devices
        .iter()
        .find(|d| d.typ() == LinuxDeviceType::B)
        .expect("the host has a block device (a loop device at least)")
        .clone();
    let path = block.path().to_str().unwrap().to_owned();
    let script = format!("stat -c '%F %t:%T %a' {path} 2>/dev/null || echo absent");
    let want = format!(
        "block special file {:x}:{:x} {:o}\n",
        block.major(),
        block.minor(),
        block.file_mode().unwrap()
    );
    for rt in &runtimes {
        for privileged in [true, false] {
            let id = format!("dev-{privileged}-{}", rt.name);
            let devices = devices.clone();
            let b = node.bundle(&id, "busybox", &["/bin/sh", "-c", &script], move |i| {
                i.privileged = privileged;
                if privileged {
                    // As the agent gives a privileged container.
                    i.node_capabilities = spec::node_capabilities();
                    i.devices = devices;
                }
            });
            let (exit, entries) = node.run(rt, &id, &b);
            let out: String = entries.iter().map(|e| e.log.as_str()).collect();
            assert_eq!(exit.code, 0, "{}: {entries:?}", rt.name);
            let expected = if privileged {
                want.as_str()
            } else {
                "absent\n"
            };
            assert_eq!(out, expected, "{} privileged={privileged}", rt.name);
        }
    }
}
