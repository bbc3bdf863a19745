//! The OCI runtime spec of a container, generated with `oci-spec` from what the task asks for
//! and what the image says ([`process_args`], [`process_env`] follow Docker's rules), with
//! Docker's defaults for the rest: namespaces, capabilities, masked and read-only paths, the
//! minimal /dev, and no_new_privs. Pure: the same input gives the same spec.

use crate::image::RunConfig;
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder, LinuxDeviceType,
    LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder,
    LinuxResourcesBuilder, Mount, MountBuilder, ProcessBuilder, RootBuilder, Spec, SpecBuilder,
    UserBuilder,
};
use shoal_api::security::{effective_capabilities, Seccomp};
use std::collections::HashSet;
use std::path::PathBuf;

/// The spec cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// Nothing to run: neither the task nor the image names a command.
    #[error("no command specified: the image has no entrypoint or cmd, and the service gives no command")]
    NoCommand,
    /// A value is invalid.
    #[error("{0}")]
    Invalid(String),
    /// oci-spec refused a value.
    #[error("building the OCI spec: {0}")]
    Oci(#[from] oci_spec::OciSpecError),
    /// The seccomp profile cannot be used.
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
}

/// A mount of the container, its source already resolved on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountInput {
    /// A host path (bind mount or a named volume's directory).
    Bind {
        /// Host path.
        source: PathBuf,
        /// Path inside the container.
        target: String,
        /// Read-only.
        read_only: bool,
    },
    /// A tmpfs.
    Tmpfs {
        /// Path inside the container.
        target: String,
        /// Size limit in bytes.
        size: Option<u64>,
    },
}

/// Everything the spec is made from.
#[derive(Debug, Clone, Default)]
pub struct SpecInput {
    /// Absolute path of the root filesystem.
    pub rootfs: PathBuf,
    /// Root filesystem mounted read-only.
    pub read_only_rootfs: bool,
    /// The process: argv (first is the program).
    pub args: Vec<String>,
    /// `KEY=value` environment.
    pub env: Vec<String>,
    /// Working directory.
    pub cwd: String,
    /// User and groups.
    pub uid: u32,
    /// Primary group.
    pub gid: u32,
    /// Supplementary groups.
    pub additional_gids: Vec<u32>,
    /// Host name inside the container.
    pub hostname: String,
    /// Mounts besides the defaults.
    pub mounts: Vec<MountInput>,
    /// Memory limit in bytes.
    pub memory: Option<u64>,
    /// CPU limit in billionths of a CPU.
    pub nano_cpus: Option<u64>,
    /// Pids limit.
    pub pids: Option<i64>,
    /// The cgroup (relative to the cgroup root, starting with `/`).
    pub cgroups_path: String,
    /// The process joins this network namespace instead of a new one.
    pub netns_path: Option<PathBuf>,
    /// Capabilities added to Docker's default set (`cap_add`).
    pub cap_add: Vec<String>,
    /// Capabilities dropped from it (`cap_drop`).
    pub cap_drop: Vec<String>,
    /// Every capability and device, no seccomp filter, /sys writable, nothing masked.
    pub privileged: bool,
    /// The seccomp filter.
    pub seccomp: Seccomp,
    /// The capabilities the node itself holds (its bounding set, bit N for capability N):
    /// a privileged container gets those of every capability.
    pub node_capabilities: Option<u64>,
    /// Host devices created in the container's /dev (a privileged container: every one of
    /// the host's, [`crate::devices::host_devices`]).
    pub devices: Vec<oci_spec::runtime::LinuxDevice>,
}

/// Docker's default capabilities.
pub const DEFAULT_CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Paths hidden from the container (Docker's list).
pub const MASKED_PATHS: [&str; 11] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths the container can read but not write (Docker's list).
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The PATH a container gets when neither image nor task sets one.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The argv of the container's process, by Docker's rules: the task's command replaces the
/// image's entrypoint (and then drops the image's cmd); the task's args replace the cmd.
pub fn process_args(
    command: &[String],
    args: &[String],
    image: &RunConfig,
) -> Result<Vec<String>, SpecError> {
    let entrypoint = if command.is_empty() {
        image.entrypoint.clone()
    } else {
        command.to_vec()
    };
    let cmd = if !args.is_empty() {
        args.to_vec()
    } else if command.is_empty() {
        image.cmd.clone()
    } else {
        Vec::new()
    };
    let all: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if all.is_empty() {
        return Err(SpecError::NoCommand);
    }
    Ok(all)
}

/// The environment: the image's, overridden key by key by the task's, with PATH, HOSTNAME and
/// HOME filled in when absent.
pub fn process_env(
    task_env: &[String],
    image: &RunConfig,
    hostname: &str,
    home: &str,
) -> Vec<String> {
    let mut env: Vec<String> = Vec::new();
    let key = |e: &str| e.split('=').next().unwrap_or_default().to_owned();
    for e in image.env.iter().chain(task_env) {
        let k = key(e);
        env.retain(|x| key(x) != k);
        env.push(e.clone());
    }
    let has = |env: &[String], k: &str| env.iter().any(|e| key(e) == k);
    if !has(&env, "PATH") {
        env.insert(0, DEFAULT_PATH.to_owned());
    }
    if !has(&env, "HOSTNAME") {
        env.push(format!("HOSTNAME={hostname}"));
    }
    if !has(&env, "HOME") {
        env.push(format!("HOME={home}"));
    }
    env
}

fn mount(dest: &str, kind: &str, source: &str, options: &[&str]) -> Result<Mount, SpecError> {
    Ok(MountBuilder::default()
        .destination(dest)
        .typ(kind)
        .source(source)
        .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()?)
}

/// Makes the spec.
pub fn build(input: &SpecInput) -> Result<Spec, SpecError> {
    if input.args.is_empty() {
        return Err(SpecError::NoCommand);
    }
    let mut names = effective_capabilities(&input.cap_add, &input.cap_drop, input.privileged);
    if let (true, Some(mask)) = (input.privileged, input.node_capabilities) {
        names.retain(|n| {
            shoal_api::security::CAPABILITIES
                .iter()
                .position(|c| c == n)
                .is_some_and(|bit| mask & (1u64 << bit) != 0)
        });
    }
    let caps: HashSet<Capability> = names
        .iter()
        .filter_map(|n| serde_json::from_value(serde_json::Value::String(format!("CAP_{n}"))).ok())
        .collect();
    let capabilities = oci_spec::runtime::LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps.clone())
        .inheritable(HashSet::new())
        .ambient(HashSet::new())
        .build()?;
    let user = UserBuilder::default()
        .uid(input.uid)
        .gid(input.gid)
        .additional_gids(input.additional_gids.clone())
        .build()?;
    let process = ProcessBuilder::default()
        .terminal(false)
        .args(input.args.clone())
        .env(input.env.clone())
        .cwd(if input.cwd.is_empty() {
            "/"
        } else {
            &input.cwd
        })
        .user(user)
        .capabilities(capabilities)
        .no_new_privileges(true)
        .build()?;
    let mut mounts = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "noexec", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            if input.privileged {
                &["nosuid", "noexec", "nodev"]
            } else {
                &["nosuid", "noexec", "nodev", "ro"]
            },
        )?,
    ];
    for m in &input.mounts {
        match m {
            MountInput::Bind {
                source,
                target,
                read_only,
            } => {
                check_target(target)?;
                let mut opts = vec!["rbind", "rprivate"];
                if *read_only {
                    opts.push("ro");
                }
                mounts.push(mount(target, "bind", &source.to_string_lossy(), &opts)?);
            }
            MountInput::Tmpfs { target, size } => {
                check_target(target)?;
                let size = size.map(|s| format!("size={s}"));
                let mut opts = vec!["nosuid", "nodev", "noexec"];
                if let Some(s) = &size {
                    opts.push(s);
                }
                mounts.push(mount(target, "tmpfs", "tmpfs", &opts)?);
            }
        }
    }
    let mut namespaces = Vec::new();
    for kind in [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Network,
    ] {
        let mut b = LinuxNamespaceBuilder::default().typ(kind);
        if kind == LinuxNamespaceType::Network {
            if let Some(p) = &input.netns_path {
                b = b.path(p.clone());
            }
        }
        namespaces.push(b.build()?);
    }
    let mut resources = LinuxResourcesBuilder::default();
    let mut devices = vec![LinuxDeviceCgroupBuilder::default()
        .allow(input.privileged)
        .access("rwm")
        .build()?];
    // null, zero, full, random, urandom, tty, console, ptmx, and the pty slaves.
    for (kind, major, minor) in [
        (LinuxDeviceType::C, 1, Some(3)),
        (LinuxDeviceType::C, 1, Some(5)),
        (LinuxDeviceType::C, 1, Some(7)),
        (LinuxDeviceType::C, 1, Some(8)),
        (LinuxDeviceType::C, 1, Some(9)),
        (LinuxDeviceType::C, 5, Some(0)),
        (LinuxDeviceType::C, 5, Some(1)),
        (LinuxDeviceType::C, 5, Some(2)),
        (LinuxDeviceType::C, 136, None),
    ]
    .into_iter()
    .filter(|_| !input.privileged)
    {
        let mut b = LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .typ(kind)
            .major(major)
            .access("rwm");
        if let Some(m) = minor {
            b = b.minor(m);
        }
        devices.push(b.build()?);
    }
    // The devices given to the container are allowed too (a privileged one allows all).
    devices.extend(
        input
            .devices
            .iter()
            .filter(|_| !input.privileged)
            .map(oci_spec::runtime::LinuxDeviceCgroup::from),
    );
    resources = resources.devices(devices);
    if let Some(m) = input.memory {
        let m =
            i64::try_from(m).map_err(|_| SpecError::Invalid("memory limit too large".into()))?;
        resources = resources.memory(LinuxMemoryBuilder::default().limit(m).swap(m).build()?);
    }
    if let Some(n) = input.nano_cpus {
        let period: u64 = 100_000;
        let quota = (n as u128 * period as u128 / 1_000_000_000) as i64;
        resources = resources.cpu(
            LinuxCpuBuilder::default()
                .period(period)
                .quota(quota.max(1000))
                .build()?,
        );
    }
    if let Some(p) = input.pids {
        resources = resources.pids(LinuxPidsBuilder::default().limit(p).build()?);
    }
    let (masked, readonly): (&[&str], &[&str]) = if input.privileged {
        (&[], &[])
    } else {
        (&MASKED_PATHS, &READONLY_PATHS)
    };
    let mut linux = LinuxBuilder::default()
        .devices(input.devices.clone())
        .namespaces(namespaces)
        .resources(resources.build()?)
        .cgroups_path(PathBuf::from(&input.cgroups_path))
        .masked_paths(masked.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .readonly_paths(readonly.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    let seccomp = match (&input.seccomp, input.privileged) {
        // Privileged drops the default filter, not one the service names (as Docker).
        (Seccomp::Unconfined, _) | (Seccomp::Default, true) => None,
        (Seccomp::Default, false) => Some(crate::seccomp::default_for(&names)?),
        (Seccomp::Profile(p), _) => Some(crate::seccomp::resolve(p, &names)?),
    };
    if let Some(s) = seccomp {
        linux = linux.seccomp(s);
    }
    let linux = linux.build()?;
    let root = RootBuilder::default()
        .path(input.rootfs.clone())
        .readonly(input.read_only_rootfs)
        .build()?;
    Ok(SpecBuilder::default()
        .version("1.0.2")
        .root(root)
        .process(process)
        .hostname(input.hostname.clone())
        .mounts(mounts)
        .linux(linux)
        .build()?)
}

/// This process's bounding set, from /proc/self/status (`None` when it cannot be read).
pub fn node_capabilities() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapBnd:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

fn check_target(target: &str) -> Result<(), SpecError> {
    if !target.starts_with('/') {
        return Err(SpecError::Invalid(format!(
            "mount target {target:?} is not an absolute path"
        )));
    }
    if target.split('/').any(|c| c == "..") {
        return Err(SpecError::Invalid(format!(
            "mount target {target:?} contains `..`"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> RunConfig {
        RunConfig {
            entrypoint: vec!["/entry".into()],
            cmd: vec!["serve".into()],
            env: vec!["PATH=/bin".into(), "A=image".into()],
            ..Default::default()
        }
    }

    #[test]
    fn args_follow_docker() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            process_args(&[], &[], &image()).unwrap(),
            ["/entry", "serve"]
        );
        assert_eq!(
            process_args(&[], &s(&["x"]), &image()).unwrap(),
            ["/entry", "x"]
        );
        assert_eq!(process_args(&s(&["sh"]), &[], &image()).unwrap(), ["sh"]);
        assert_eq!(
            process_args(&s(&["sh"]), &s(&["-c", "true"]), &image()).unwrap(),
            ["sh", "-c", "true"]
        );
        assert!(matches!(
            process_args(&[], &[], &RunConfig::default()),
            Err(SpecError::NoCommand)
        ));
    }

    #[test]
    fn env_overrides_by_key() {
        let env = process_env(&["A=task".into()], &image(), "h", "/root");
        assert_eq!(env, ["PATH=/bin", "A=task", "HOSTNAME=h", "HOME=/root"]);
    }

    #[test]
    fn spec_has_limits_namespaces_and_mounts() {
        let spec = build(&SpecInput {
            rootfs: "/r".into(),
            args: vec!["/probe".into()],
            memory: Some(64 << 20),
            nano_cpus: Some(500_000_000),
            pids: Some(20),
            cgroups_path: "/shoal/x".into(),
            mounts: vec![MountInput::Tmpfs {
                target: "/cache".into(),
                size: Some(1 << 20),
            }],
            ..Default::default()
        })
        .unwrap();
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(json["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(json["linux"]["resources"]["pids"]["limit"], 20);
        assert_eq!(json["linux"]["namespaces"].as_array().unwrap().len(), 5);
        assert_eq!(json["process"]["noNewPrivileges"], true);
        let mounts = json["mounts"].as_array().unwrap();
        assert!(mounts.iter().any(|m| m["destination"] == "/cache"));
        assert!(build(&SpecInput {
            args: vec!["x".into()],
            mounts: vec![MountInput::Tmpfs {
                target: "rel".into(),
                size: None
            }],
            ..Default::default()
        })
        .is_err());
    }
}
