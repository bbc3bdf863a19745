//! The test harness shared by the whole-daemon tests: a real `shoald` in a temporary
//! directory, driven through the `shoal` CLI, killed (with whatever containers it started)
//! when dropped. Every wait polls a condition with a generous bound that only a real fault
//! reaches.
#![allow(dead_code)]

use serde_json::Value;
use shoal_client::{Client, Endpoint};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BOUND: Duration = Duration::from_secs(30);

pub fn bin(name: &str) -> PathBuf {
    let shoal = PathBuf::from(env!("CARGO_BIN_EXE_shoal"));
    let path = shoal.with_file_name(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace first (cargo build --workspace)",
        path.display()
    );
    path
}

/// A daemon in a temporary directory, killed when dropped.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    extra: Vec<String>,
}

impl Daemon {
    pub fn start() -> Daemon {
        Daemon::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let mut d = Daemon {
            dir,
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        d.spawn();
        d
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("shoal.sock")
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("shoald.log"))
            .unwrap();
        let child = Command::new(bin("shoald"))
            .args(["--data-root"])
            .arg(self.dir.path().join("data"))
            .arg("--socket")
            .arg(self.socket())
            .args(["--hostname", "test-node", "--log", "info,raft=warn"])
            // Nothing of the tests' leaves the machine.
            .args(["--block-registry", "docker.io"])
            .args(self.executor_args())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_for("the daemon's socket", || {
            std::os::unix::net::UnixStream::connect(self.socket()).is_ok()
        });
    }

    pub fn kill9(&mut self) {
        let mut child = self.child.take().unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        child.wait().unwrap();
    }

    pub fn shoal(&self, args: &[&str]) -> Output {
        Command::new(bin("shoal"))
            .env("SHOAL_HOST", format!("unix://{}", self.socket().display()))
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs the CLI with `input` on its stdin.
    pub fn shoal_with_input(&self, args: &[&str], input: &[u8]) -> Output {
        use std::io::Write;
        let mut child = Command::new(bin("shoal"))
            .env("SHOAL_HOST", format!("unix://{}", self.socket().display()))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    }

    /// Runs the CLI and expects success.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.shoal(args);
        assert!(
            out.status.success(),
            "shoal {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--format", "json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ok(&all)).unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("shoald.log")).unwrap_or_default()
    }

    pub fn client(&self) -> Client {
        Client::new(Endpoint::Unix(self.socket()))
    }

    /// (running, desired) of a service, from `service ls`.
    pub fn replicas(&self, name: &str) -> (u64, u64) {
        let list = self.json(&["service", "ls"]);
        let s = list
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["service"]["spec"]["name"] == name)
            .unwrap_or_else(|| panic!("no service {name}"));
        (
            s["running"].as_u64().unwrap(),
            s["desired"].as_u64().unwrap(),
        )
    }

    pub fn tasks(&self, service: &str) -> Vec<Value> {
        self.json(&["service", "ps", service])
            .as_array()
            .unwrap()
            .clone()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if self.uses_containers() {
            self.remove_containers();
        }
    }
}

pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < BOUND, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/stacks")
}

static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Why this host cannot run the container tests, printed when they skip.
pub fn containers_supported() -> bool {
    match shoal_testkit::container_support() {
        Ok(()) => true,
        Err(why) => {
            shoal_testkit::skip(&format!("this host cannot run containers: {why}"));
            false
        }
    }
}

impl Daemon {
    /// A daemon that runs real containers, with its own runtime directory and cgroup parent.
    pub fn with_containers(extra: &[&str]) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let parent = format!(
            "/shoal-test-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        );
        let mut args: Vec<String> = vec![
            "--executor".into(),
            "container".into(),
            "--exec-root".into(),
            dir.path().join("run").to_string_lossy().into_owned(),
            "--cgroup-parent".into(),
            parent,
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut d = Daemon {
            dir,
            child: None,
            extra: args,
        };
        d.spawn();
        d
    }

    fn executor_args(&self) -> Vec<String> {
        if self.extra.iter().any(|a| a == "--executor") {
            Vec::new()
        } else {
            vec!["--executor".into(), "sim".into()]
        }
    }

    fn uses_containers(&self) -> bool {
        self.extra.iter().any(|a| a == "container")
    }

    /// The daemon's cgroup parent.
    pub fn cgroup_parent(&self) -> String {
        let i = self
            .extra
            .iter()
            .position(|a| a == "--cgroup-parent")
            .unwrap();
        self.extra[i + 1].clone()
    }

    /// Imports the project's busybox and probe images.
    pub fn import_images(&self) {
        let dir = self.dir.path().join("img");
        std::fs::create_dir_all(&dir).unwrap();
        shoal_testkit::busybox_tar(&dir.join("busybox.tar")).unwrap();
        shoal_testkit::probe_tar(&dir.join("probe.tar")).unwrap();
        self.ok(&[
            "image",
            "import",
            dir.join("busybox.tar").to_str().unwrap(),
            "--tag",
            "busybox:latest",
            "--change",
            r#"CMD ["sh"]"#,
        ]);
        self.ok(&[
            "image",
            "import",
            dir.join("probe.tar").to_str().unwrap(),
            "--tag",
            "probe:latest",
            "--change",
            r#"ENTRYPOINT ["/probe"]"#,
        ]);
    }

    /// The host pid of a task's container.
    pub fn container_pid(&self, task_id: &str) -> i32 {
        let p = self
            .dir
            .path()
            .join("data/containers")
            .join(task_id)
            .join("init.pid");
        std::fs::read_to_string(&p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .trim()
            .parse()
            .unwrap()
    }

    /// Shim processes of this daemon's containers.
    pub fn shims(&self) -> Vec<i32> {
        let needle = self.dir.path().to_string_lossy().into_owned();
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
            .filter(|pid| {
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                cmd.contains(" shim ") && cmd.contains(&needle)
            })
            .collect()
    }

    /// Kills and removes everything the daemon's containers left: shims, runtime state,
    /// mounts, cgroups.
    fn remove_containers(&self) {
        for pid in self.shims() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let runtime_root = self.dir.path().join("run/runtime");
        for rt in std::fs::read_dir(&runtime_root)
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = rt.file_name().to_string_lossy().into_owned();
            let binary = if name == "builtin" {
                bin("shoal-runtime")
            } else {
                PathBuf::from(&name)
            };
            for c in std::fs::read_dir(rt.path()).into_iter().flatten().flatten() {
                let _ = Command::new(&binary)
                    .arg("--root")
                    .arg(rt.path())
                    .args(["delete", "--force"])
                    .arg(c.file_name())
                    .output();
            }
        }
        let root = self.dir.path().to_string_lossy().into_owned();
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
            .filter(|m| m.starts_with(&root))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        let parent = self.cgroup_parent();
        for base in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let dir = base.path().join(parent.trim_start_matches('/'));
            if dir.is_dir() {
                for c in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                    if c.path().is_dir() {
                        let _ = std::fs::remove_dir(c.path());
                    }
                }
                let _ = std::fs::remove_dir(&dir);
            }
        }
    }
}
