//! Control groups for containers, v1 (one directory per controller, as on hosts that mount the
//! hybrid layout) and v2 (one unified directory, controllers enabled in the parents'
//! `cgroup.subtree_control`). The mode is read off the cgroup mount: /sys/fs/cgroup, or the
//! one `SHOAL_CGROUP_ROOT` names (a hybrid host's unified hierarchy, /sys/fs/cgroup/unified,
//! for one). Device rules go to the v1 devices controller, or on v2 into a BPF device program
//! ([`crate::devices_bpf`]).

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The cgroup mount point.
pub const ROOT: &str = "/sys/fs/cgroup";

/// The environment variable that names another cgroup mount point for the built-in runtime.
pub const ROOT_ENV: &str = "SHOAL_CGROUP_ROOT";

/// The cgroup mount point the runtime uses: `SHOAL_CGROUP_ROOT` when set, else [`ROOT`].
pub fn root() -> PathBuf {
    std::env::var_os(ROOT_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(ROOT))
}

/// Where the unified (v2) hierarchy is mounted, if it is: the runtime's root on a v2 host,
/// `/sys/fs/cgroup/unified` on a hybrid one.
pub fn unified_root() -> Option<PathBuf> {
    let root = root();
    if mode_at(&root) == Mode::V2 {
        return Some(root);
    }
    let hybrid = Path::new(ROOT).join("unified");
    (mode_at(&hybrid) == Mode::V2).then_some(hybrid)
}

/// v1 controllers a container gets a directory in.
const V1_CONTROLLERS: [&str; 5] = ["memory", "cpu", "pids", "devices", "freezer"];

/// Which hierarchy the host uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Controllers in separate v1 hierarchies.
    V1,
    /// The unified v2 hierarchy.
    V2,
}

/// The host's mode: v2 only when the runtime's cgroup mount is the unified hierarchy.
pub fn mode() -> Mode {
    mode_at(&root())
}

/// Whether `root` is a cgroup mount point: the unified hierarchy, or a directory of v1
/// hierarchies holding at least one controller the runtime uses.
pub fn is_mount(root: &Path) -> bool {
    is_cgroup2(root)
        || V1_CONTROLLERS
            .iter()
            .any(|c| root.join(c).join("cgroup.procs").exists())
}

fn mode_at(root: &Path) -> Mode {
    if root.join("cgroup.controllers").exists() {
        Mode::V2
    } else {
        Mode::V1
    }
}

/// Limits applied to a container's cgroup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    /// Memory limit in bytes.
    pub memory: Option<i64>,
    /// CPU quota and period, in microseconds.
    pub cpu: Option<(i64, u64)>,
    /// Maximum number of tasks.
    pub pids: Option<i64>,
    /// Device rules, in order: the last one that matches an access decides.
    pub devices: Vec<DeviceRule>,
}

/// Which devices a [`DeviceRule`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// Character and block devices.
    All,
    /// Character devices.
    Char,
    /// Block devices.
    Block,
}

/// One device rule, as the OCI spec's `linux.resources.devices` lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRule {
    /// Allow, or deny.
    pub allow: bool,
    /// Which devices.
    pub kind: DeviceKind,
    /// The major number; `None` for any.
    pub major: Option<i64>,
    /// The minor number; `None` for any.
    pub minor: Option<i64>,
    /// The accesses: `r` (read), `w` (write), `m` (mknod), or a part of `rwm`.
    pub access: String,
}

impl DeviceRule {
    /// The rule as a v1 `devices.allow`/`devices.deny` line, e.g. `c 1:3 rwm`.
    pub fn v1_line(&self) -> String {
        let kind = match self.kind {
            DeviceKind::All => 'a',
            DeviceKind::Char => 'c',
            DeviceKind::Block => 'b',
        };
        let num = |n: Option<i64>| n.map(|n| n.to_string()).unwrap_or_else(|| "*".into());
        format!(
            "{kind} {}:{} {}",
            num(self.major),
            num(self.minor),
            self.access
        )
    }
}

/// One container's cgroup.
#[derive(Debug, Clone)]
pub struct Cgroup {
    root: PathBuf,
    mode: Mode,
    /// Leaf directories: one per controller (v1) or one (v2).
    dirs: Vec<PathBuf>,
    /// Whether device rules given to [`Cgroup::create`] are enforced: by the devices
    /// controller (v1) or an attached BPF device program (v2).
    devices_enforced: bool,
}

fn write(path: &Path, value: &str) -> io::Result<()> {
    std::fs::write(path, value).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("writing {value:?} to {}: {e}", path.display()),
        )
    })
}

impl Cgroup {
    /// The cgroup at `path` (relative to the hierarchy root, e.g. `/shoal/abc`), not created.
    pub fn at(path: &str) -> Cgroup {
        Cgroup::at_root(&root(), path)
    }

    /// The same under another cgroup mount point (tests use a plain directory).
    pub fn at_root(root: &Path, path: &str) -> Cgroup {
        let rel = path.trim_start_matches('/');
        let mode = mode_at(root);
        let dirs = match mode {
            Mode::V2 => vec![root.join(rel)],
            Mode::V1 => V1_CONTROLLERS
                .iter()
                .map(|c| root.join(c))
                .filter(|d| d.exists())
                .map(|d| d.join(rel))
                .collect(),
        };
        let mut cg = Cgroup {
            root: root.to_owned(),
            mode,
            dirs,
            devices_enforced: false,
        };
        cg.devices_enforced = cg.mode == Mode::V1 && cg.dir_of("devices").is_some();
        cg
    }

    /// Whether the device rules it was created with are enforced by the kernel. False on a
    /// v1 host without the devices controller, and on a v2 host whose kernel refused the
    /// device program (the reason is logged); a runtime then keeps CAP_MKNOD from the
    /// container.
    pub fn enforces_devices(&self) -> bool {
        self.devices_enforced
    }

    /// Its mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    fn dir_of(&self, controller: &str) -> Option<&PathBuf> {
        match self.mode {
            Mode::V2 => self.dirs.first(),
            Mode::V1 => self.dirs.iter().find(|d| {
                d.strip_prefix(&self.root)
                    .is_ok_and(|r| r.starts_with(controller))
            }),
        }
    }

    /// Creates the cgroup and applies `limits`.
    pub fn create(path: &str, limits: &Limits) -> io::Result<Cgroup> {
        Cgroup::create_at(&root(), path, limits)
    }

    /// The same under another cgroup mount point.
    pub fn create_at(root: &Path, path: &str, limits: &Limits) -> io::Result<Cgroup> {
        let mut cg = Cgroup::at_root(root, path);
        if cg.mode == Mode::V2 {
            enable_v2_controllers(root, &cg.dirs[0])?;
        }
        for d in &cg.dirs {
            std::fs::create_dir_all(d)
                .map_err(|e| io::Error::new(e.kind(), format!("creating {}: {e}", d.display())))?;
        }
        if let Err(e) = cg.apply(limits) {
            let _ = cg.remove(Duration::from_millis(100));
            return Err(e);
        }
        Ok(cg)
    }

    fn apply(&mut self, limits: &Limits) -> io::Result<()> {
        match self.mode {
            Mode::V1 => {
                if let (Some(m), Some(d)) = (limits.memory, self.dir_of("memory")) {
                    write(&d.join("memory.limit_in_bytes"), &m.to_string())?;
                    let sw = d.join("memory.memsw.limit_in_bytes");
                    if sw.exists() {
                        write(&sw, &m.to_string())?;
                    }
                }
                if let (Some((quota, period)), Some(d)) = (limits.cpu, self.dir_of("cpu")) {
                    write(&d.join("cpu.cfs_period_us"), &period.to_string())?;
                    write(&d.join("cpu.cfs_quota_us"), &quota.to_string())?;
                }
                if let (Some(p), Some(d)) = (limits.pids, self.dir_of("pids")) {
                    write(&d.join("pids.max"), &p.to_string())?;
                }
                if let Some(d) = self.dir_of("devices") {
                    for rule in &limits.devices {
                        let file = if rule.allow {
                            "devices.allow"
                        } else {
                            "devices.deny"
                        };
                        write(&d.join(file), &rule.v1_line())?;
                    }
                }
            }
            Mode::V2 => {
                let d = &self.dirs[0];
                if let Some(m) = limits.memory {
                    write(&d.join("memory.max"), &m.to_string())?;
                    let sw = d.join("memory.swap.max");
                    if sw.exists() {
                        write(&sw, "0")?;
                    }
                }
                if let Some((quota, period)) = limits.cpu {
                    write(&d.join("cpu.max"), &format!("{quota} {period}"))?;
                }
                if let Some(p) = limits.pids {
                    write(&d.join("pids.max"), &p.to_string())?;
                }
                // A plain directory (the unit tests') takes no program.
                if !limits.devices.is_empty() && is_cgroup2(d) {
                    match crate::devices_bpf::attach(d, &limits.devices) {
                        Ok(()) => self.devices_enforced = true,
                        Err(e) => tracing::warn!(
                            cgroup = %d.display(),
                            error = %e,
                            "device rules not enforced; the container gets no CAP_MKNOD"
                        ),
                    }
                }
            }
        }
        Ok(())
    }

    /// Moves `pid` into the cgroup.
    pub fn add(&self, pid: i32) -> io::Result<()> {
        for d in &self.dirs {
            write(&d.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// Processes in the cgroup.
    pub fn pids(&self) -> Vec<i32> {
        let Some(d) = self.dirs.first() else {
            return Vec::new();
        };
        std::fs::read_to_string(d.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// How many times the kernel's OOM killer killed a process of this cgroup.
    pub fn oom_kills(&self) -> u64 {
        let (dir, file) = match self.mode {
            Mode::V1 => (self.dir_of("memory"), "memory.oom_control"),
            Mode::V2 => (self.dirs.first(), "memory.events"),
        };
        let Some(dir) = dir else { return 0 };
        std::fs::read_to_string(dir.join(file))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Whether any of its directories exists.
    pub fn exists(&self) -> bool {
        self.dirs.iter().any(|d| d.exists())
    }

    /// Removes the cgroup, waiting up to `wait` for its processes to be gone.
    pub fn remove(&self, wait: Duration) -> io::Result<()> {
        let deadline = Instant::now() + wait;
        for d in &self.dirs {
            loop {
                match std::fs::remove_dir(d) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e)
                        if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline =>
                    {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => {
                        return Err(io::Error::new(
                            e.kind(),
                            format!("removing {}: {e}", d.display()),
                        ))
                    }
                }
            }
        }
        Ok(())
    }
}

/// Whether `dir` is on a cgroup2 file system.
fn is_cgroup2(dir: &Path) -> bool {
    use nix::sys::statfs::{statfs, CGROUP2_SUPER_MAGIC};
    statfs(dir).is_ok_and(|s| s.filesystem_type() == CGROUP2_SUPER_MAGIC)
}

/// Enables memory, cpu and pids in every ancestor's `cgroup.subtree_control` down to `leaf`.
fn enable_v2_controllers(root: &Path, leaf: &Path) -> io::Result<()> {
    let available = std::fs::read_to_string(root.join("cgroup.controllers"))?;
    let wanted: Vec<&str> = ["memory", "cpu", "pids"]
        .into_iter()
        .filter(|c| available.split_whitespace().any(|a| a == *c))
        .collect();
    let rel = leaf.strip_prefix(root).unwrap_or(leaf);
    let mut dir = root.to_owned();
    let parents: Vec<_> = rel.components().collect();
    for (i, c) in parents.iter().enumerate() {
        if i + 1 == parents.len() {
            break;
        }
        for w in &wanted {
            // Already enabled, or not delegable here: either way the leaf gets what it can.
            let _ = std::fs::write(dir.join("cgroup.subtree_control"), format!("+{w}"));
        }
        dir.push(c);
        std::fs::create_dir_all(&dir)?;
    }
    for w in &wanted {
        let _ = std::fs::write(dir.join("cgroup.subtree_control"), format!("+{w}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_cgroup_mount_is_one() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_mount(dir.path()));
        if Path::new(ROOT).join("memory/cgroup.procs").exists() {
            assert!(is_mount(Path::new(ROOT)));
        }
        if let Some(unified) = unified_root() {
            assert!(is_mount(&unified));
        }
    }

    fn deny_all() -> DeviceRule {
        DeviceRule {
            allow: false,
            kind: DeviceKind::All,
            major: None,
            minor: None,
            access: "rwm".into(),
        }
    }

    fn read(p: &Path) -> String {
        std::fs::read_to_string(p).unwrap_or_default()
    }

    /// A directory laid out like a cgroup v2 mount (plain files stand in for the kernel's).
    #[test]
    fn v2_enables_controllers_down_the_tree_and_writes_limits() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::write(
            root.join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        let limits = Limits {
            memory: Some(64 << 20),
            cpu: Some((50_000, 100_000)),
            pids: Some(20),
            devices: vec![deny_all()],
        };
        let cg = Cgroup::create_at(root, "/shoal/c1", &limits).unwrap();
        assert_eq!(cg.mode(), Mode::V2);
        assert_eq!(read(&root.join("cgroup.subtree_control")), "+pids");
        assert_eq!(read(&root.join("shoal/cgroup.subtree_control")), "+pids");
        let leaf = root.join("shoal/c1");
        assert_eq!(read(&leaf.join("memory.max")), (64u64 << 20).to_string());
        assert_eq!(read(&leaf.join("cpu.max")), "50000 100000");
        assert_eq!(read(&leaf.join("pids.max")), "20");
        std::fs::write(leaf.join("memory.events"), "oom 1\noom_kill 2\n").unwrap();
        assert_eq!(cg.oom_kills(), 2);
    }

    #[test]
    fn v1_writes_each_controller() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        for c in ["memory", "cpu", "pids", "devices"] {
            std::fs::create_dir_all(root.join(c)).unwrap();
        }
        let limits = Limits {
            memory: Some(1 << 20),
            cpu: Some((10_000, 100_000)),
            pids: Some(5),
            devices: vec![
                deny_all(),
                DeviceRule {
                    allow: true,
                    kind: DeviceKind::Char,
                    major: Some(1),
                    minor: Some(3),
                    access: "rwm".into(),
                },
            ],
        };
        let cg = Cgroup::create_at(root, "/shoal/c1", &limits).unwrap();
        assert_eq!(cg.mode(), Mode::V1);
        assert_eq!(
            read(&root.join("memory/shoal/c1/memory.limit_in_bytes")),
            "1048576"
        );
        assert_eq!(read(&root.join("cpu/shoal/c1/cpu.cfs_quota_us")), "10000");
        assert_eq!(read(&root.join("pids/shoal/c1/pids.max")), "5");
        // The last rule written is what a plain file keeps.
        assert_eq!(
            read(&root.join("devices/shoal/c1/devices.allow")),
            "c 1:3 rwm"
        );
        assert!(
            !root.join("freezer").exists(),
            "controllers the host lacks are skipped"
        );
    }
}
