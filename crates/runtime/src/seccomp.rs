//! Seccomp: shoal's default profile (the effect of Docker's: what Docker's profile leaves out
//! is denied with EPERM, what it allows only with a capability is denied without it), a
//! profile resolved against a container's capabilities into the OCI spec's `linux.seccomp`
//! (which runc and crun compile with libseccomp), and that section compiled into BPF
//! programs for the built-in runtime with `seccompiler` (Firecracker's compiler), system
//! call names resolved with the `syscalls` crate.
//!
//! The default allows what no rule names, where Docker's lists what it allows; the
//! difference is only a system call newer than this list, which the kernel offers and
//! Docker's (older or newer) list may or may not name. docs/runtime.md lists what is denied.

use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompBuilder,
    LinuxSeccompOperator, LinuxSyscallBuilder,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};
use shoal_api::security::{normalize_capability, RuleFilter, SeccompArg, SeccompProfile};
use std::collections::BTreeMap;
use std::str::FromStr;

/// A seccomp section that cannot be built or compiled.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// A profile names an action or comparison the OCI spec does not have.
    #[error("seccomp profile: {0}")]
    Profile(String),
    /// seccompiler refused the filter.
    #[error("compiling the seccomp filter: {0}")]
    Compile(String),
    /// The kernel refused the filter.
    #[error("installing the seccomp filter: {0}")]
    Install(String),
}

const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

/// Namespace flags of clone(2) (CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID,
/// NEWNET): without CAP_SYS_ADMIN a clone asking for one is denied, as Docker's profile does.
const CLONE_NAMESPACES: u64 = 0x7E02_0000;

/// System calls denied unless the container holds the capability, as Docker's profile
/// allows them only with it. `None`: denied whatever the capabilities.
const DENIED: &[(Option<&str>, &[&str])] = &[
    (
        None,
        &[
            "add_key",
            "keyctl",
            "request_key",
            "kexec_load",
            "kexec_file_load",
            "create_module",
            "get_kernel_syms",
            "query_module",
            "nfsservctl",
            "uselib",
            "ustat",
            "sysfs",
            "_sysctl",
            "vm86",
            "vm86old",
            "userfaultfd",
            "io_uring_setup",
            "io_uring_enter",
            "io_uring_register",
            "afs_syscall",
            "tuxcall",
            "security",
            "vserver",
            "putpmsg",
            "getpmsg",
        ],
    ),
    (
        Some("SYS_ADMIN"),
        &[
            "mount",
            "umount",
            "umount2",
            "unshare",
            "setns",
            "pivot_root",
            "fsopen",
            "fsconfig",
            "fsmount",
            "fspick",
            "move_mount",
            "open_tree",
            "mount_setattr",
            "swapon",
            "swapoff",
            "quotactl",
            "quotactl_fd",
            "lookup_dcookie",
            "fanotify_init",
            "name_to_handle_at",
            "sethostname",
            "setdomainname",
        ],
    ),
    (Some("BPF"), &["bpf"]),
    (Some("PERFMON"), &["perf_event_open"]),
    (Some("DAC_READ_SEARCH"), &["open_by_handle_at"]),
    (Some("SYS_BOOT"), &["reboot"]),
    (
        Some("SYS_MODULE"),
        &["init_module", "finit_module", "delete_module"],
    ),
    (Some("SYS_PACCT"), &["acct"]),
    (
        Some("SYS_PTRACE"),
        &["kcmp", "pidfd_getfd", "process_madvise"],
    ),
    (Some("SYS_RAWIO"), &["iopl", "ioperm"]),
    (
        Some("SYS_TIME"),
        &["settimeofday", "stime", "clock_settime", "clock_adjtime"],
    ),
    (Some("SYS_TTY_CONFIG"), &["vhangup"]),
    (
        Some("SYS_NICE"),
        &[
            "get_mempolicy",
            "set_mempolicy",
            "set_mempolicy_home_node",
            "mbind",
            "move_pages",
            "migrate_pages",
        ],
    ),
    (Some("SYSLOG"), &["syslog"]),
];

/// shoal's default profile, in Docker's format: every capability condition is an
/// `excludes.caps`, resolved per container by [`resolve`].
pub fn default_profile() -> SeccompProfile {
    use shoal_api::security::SeccompRule as Rule;
    let errno = |names: &[&str], cap: Option<&str>| Rule {
        names: names.iter().map(|n| (*n).to_owned()).collect(),
        name: None,
        action: "SCMP_ACT_ERRNO".into(),
        errno_ret: Some(EPERM),
        args: Vec::new(),
        includes: RuleFilter::default(),
        excludes: RuleFilter {
            caps: cap.map(|c| vec![format!("CAP_{c}")]).unwrap_or_default(),
            ..RuleFilter::default()
        },
        comment: None,
    };
    let mut syscalls: Vec<Rule> = DENIED.iter().map(|(cap, n)| errno(n, *cap)).collect();
    // New namespaces through clone need CAP_SYS_ADMIN: one rule per namespace flag.
    for bit in (0..64).filter(|b| CLONE_NAMESPACES & (1u64 << b) != 0) {
        let flag = 1u64 << bit;
        syscalls.push(Rule {
            args: vec![SeccompArg {
                index: 0,
                value: flag,
                value_two: flag,
                op: "SCMP_CMP_MASKED_EQ".into(),
            }],
            ..errno(&["clone"], Some("SYS_ADMIN"))
        });
    }
    // clone3 keeps its flags in memory a filter cannot read: it answers ENOSYS, and the C
    // library falls back to clone.
    syscalls.push(Rule {
        errno_ret: Some(ENOSYS),
        ..errno(&["clone3"], Some("SYS_ADMIN"))
    });
    // AF_VSOCK sockets reach the hypervisor, never another container.
    syscalls.push(Rule {
        args: vec![SeccompArg {
            index: 0,
            value: 40,
            value_two: 0,
            op: "SCMP_CMP_EQ".into(),
        }],
        ..errno(&["socket"], None)
    });
    SeccompProfile {
        default_action: "SCMP_ACT_ALLOW".into(),
        default_errno_ret: None,
        architectures: Vec::new(),
        arch_map: Vec::new(),
        syscalls,
    }
}

fn action(name: &str) -> Result<LinuxSeccompAction, SeccompError> {
    Ok(match name {
        "SCMP_ACT_ALLOW" => LinuxSeccompAction::ScmpActAllow,
        "SCMP_ACT_ERRNO" => LinuxSeccompAction::ScmpActErrno,
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => LinuxSeccompAction::ScmpActKillThread,
        "SCMP_ACT_KILL_PROCESS" => LinuxSeccompAction::ScmpActKillProcess,
        "SCMP_ACT_TRAP" => LinuxSeccompAction::ScmpActTrap,
        "SCMP_ACT_LOG" => LinuxSeccompAction::ScmpActLog,
        other => return Err(SeccompError::Profile(format!("unknown action {other:?}"))),
    })
}

/// The architecture names Docker's `includes.arches` uses for this machine.
fn arch_names() -> &'static [&'static str] {
    match std::env::consts::ARCH {
        "x86_64" => &["amd64", "x86_64", "x32"],
        "aarch64" => &["arm64", "aarch64"],
        "x86" => &["x86", "386"],
        _ => &[],
    }
}

fn applies(rule: &shoal_api::security::SeccompRule, caps: &[String]) -> bool {
    let has = |c: &String| normalize_capability(c).is_some_and(|c| caps.contains(&c));
    let arch = |a: &String| arch_names().contains(&a.as_str());
    let inc = &rule.includes;
    let exc = &rule.excludes;
    inc.caps.iter().all(has)
        && (inc.arches.is_empty() || inc.arches.iter().any(arch))
        && !exc.caps.iter().any(has)
        && !exc.arches.iter().any(arch)
}

/// The OCI `linux.seccomp` section of `profile` for a container holding `caps` (names
/// without `CAP_`): rules whose `includes`/`excludes` do not hold are left out, as Docker
/// does (`minKernel` is taken as met: shoal needs a 5.x kernel or newer).
pub fn resolve(profile: &SeccompProfile, caps: &[String]) -> Result<LinuxSeccomp, SeccompError> {
    let mut syscalls = Vec::new();
    for rule in profile.syscalls.iter().filter(|r| applies(r, caps)) {
        let mut args = Vec::new();
        for a in &rule.args {
            let (op, value, value_two) = match a.op.as_str() {
                "SCMP_CMP_EQ" => (LinuxSeccompOperator::ScmpCmpEq, a.value, None),
                "SCMP_CMP_NE" => (LinuxSeccompOperator::ScmpCmpNe, a.value, None),
                "SCMP_CMP_LT" => (LinuxSeccompOperator::ScmpCmpLt, a.value, None),
                "SCMP_CMP_LE" => (LinuxSeccompOperator::ScmpCmpLe, a.value, None),
                "SCMP_CMP_GT" => (LinuxSeccompOperator::ScmpCmpGt, a.value, None),
                "SCMP_CMP_GE" => (LinuxSeccompOperator::ScmpCmpGe, a.value, None),
                "SCMP_CMP_MASKED_EQ" => (
                    LinuxSeccompOperator::ScmpCmpMaskedEq,
                    a.value,
                    Some(a.value_two),
                ),
                other => {
                    return Err(SeccompError::Profile(format!(
                        "unknown comparison {other:?}"
                    )))
                }
            };
            let mut b = LinuxSeccompArgBuilder::default()
                .index(a.index as usize)
                .value(value)
                .op(op);
            if let Some(v2) = value_two {
                b = b.value_two(v2);
            }
            args.push(
                b.build()
                    .map_err(|e| SeccompError::Profile(e.to_string()))?,
            );
        }
        let mut b = LinuxSyscallBuilder::default()
            .names(rule.all_names().map(str::to_owned).collect::<Vec<_>>())
            .action(action(&rule.action)?);
        if let Some(e) = rule.errno_ret {
            b = b.errno_ret(e);
        }
        if !args.is_empty() {
            b = b.args(args);
        }
        syscalls.push(
            b.build()
                .map_err(|e| SeccompError::Profile(e.to_string()))?,
        );
    }
    let mut b = LinuxSeccompBuilder::default()
        .default_action(action(&profile.default_action)?)
        .syscalls(syscalls);
    if let Some(e) = profile.default_errno_ret {
        b = b.default_errno_ret(e);
    }
    b.build().map_err(|e| SeccompError::Profile(e.to_string()))
}

/// The default profile as the OCI section for `caps`.
pub fn default_for(caps: &[String]) -> Result<LinuxSeccomp, SeccompError> {
    resolve(&default_profile(), caps)
}

/// Rules by system call number; `None` matches whatever the arguments.
type RulesByCall = BTreeMap<i64, Option<Vec<SeccompRule>>>;

fn seccompiler_action(a: LinuxSeccompAction, errno: Option<u32>) -> SeccompAction {
    match a {
        LinuxSeccompAction::ScmpActAllow => SeccompAction::Allow,
        LinuxSeccompAction::ScmpActErrno => SeccompAction::Errno(errno.unwrap_or(EPERM)),
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            SeccompAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => SeccompAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => SeccompAction::Trap,
        LinuxSeccompAction::ScmpActLog => SeccompAction::Log,
        // No notifier or tracer is attached: such calls fail as if not implemented.
        LinuxSeccompAction::ScmpActNotify | LinuxSeccompAction::ScmpActTrace => {
            SeccompAction::Errno(ENOSYS)
        }
    }
}

/// The programs that enforce `section`, in the order to install them. The kernel runs every
/// installed filter and keeps the most severe verdict (the newest one among equals), so the
/// section becomes one filter for the default action (everything any rule names is let
/// through it) and, after it, one filter per other action with that action's rules. System
/// call names this architecture does not have are skipped, as libseccomp skips them for runc.
pub fn compile(section: &LinuxSeccomp) -> Result<Vec<BpfProgram>, SeccompError> {
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(|e: seccompiler::BackendError| SeccompError::Compile(e.to_string()))?;
    let default = seccompiler_action(section.default_action(), section.default_errno_ret());
    // Rules by action (in the order first seen), then by system call number; `None` rules
    // mean "whatever the arguments".
    let mut groups: Vec<(SeccompAction, RulesByCall)> = Vec::new();
    let mut named = RulesByCall::new();
    let add = |map: &mut RulesByCall, nr: i64, rule: Option<SeccompRule>| {
        let entry = map.entry(nr).or_insert_with(|| Some(Vec::new()));
        match (entry.as_mut(), rule) {
            (Some(rules), Some(r)) => rules.push(r),
            (_, None) => *entry = None,
            (None, Some(_)) => {}
        }
    };
    for sc in section.syscalls().clone().unwrap_or_default() {
        let act = seccompiler_action(sc.action(), sc.errno_ret());
        let args = sc.args().clone().unwrap_or_default();
        let rule = if args.is_empty() {
            None
        } else {
            let mut conds = Vec::new();
            for a in &args {
                let op = match a.op() {
                    LinuxSeccompOperator::ScmpCmpEq => SeccompCmpOp::Eq,
                    LinuxSeccompOperator::ScmpCmpNe => SeccompCmpOp::Ne,
                    LinuxSeccompOperator::ScmpCmpLt => SeccompCmpOp::Lt,
                    LinuxSeccompOperator::ScmpCmpLe => SeccompCmpOp::Le,
                    LinuxSeccompOperator::ScmpCmpGt => SeccompCmpOp::Gt,
                    LinuxSeccompOperator::ScmpCmpGe => SeccompCmpOp::Ge,
                    LinuxSeccompOperator::ScmpCmpMaskedEq => SeccompCmpOp::MaskedEq(a.value()),
                };
                let value = match a.op() {
                    LinuxSeccompOperator::ScmpCmpMaskedEq => a.value_two().unwrap_or(0),
                    _ => a.value(),
                };
                let index = u8::try_from(a.index())
                    .map_err(|_| SeccompError::Compile(format!("argument {}", a.index())))?;
                conds.push(
                    SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, value)
                        .map_err(|e| SeccompError::Compile(e.to_string()))?,
                );
            }
            Some(SeccompRule::new(conds).map_err(|e| SeccompError::Compile(e.to_string()))?)
        };
        for name in sc.names() {
            let Ok(nr) = syscalls::Sysno::from_str(name) else {
                continue;
            };
            let nr = i64::from(nr.id());
            add(&mut named, nr, rule.clone());
            if act != default {
                let pos = match groups.iter().position(|(a, _)| *a == act) {
                    Some(p) => p,
                    None => {
                        groups.push((act.clone(), BTreeMap::new()));
                        groups.len() - 1
                    }
                };
                add(&mut groups[pos].1, nr, rule.clone());
            }
        }
    }
    let finish = |m: RulesByCall| -> BTreeMap<i64, Vec<SeccompRule>> {
        m.into_iter()
            .map(|(nr, r)| (nr, r.unwrap_or_default()))
            .collect()
    };
    let build = |rules, mismatch, on_match| -> Result<BpfProgram, SeccompError> {
        let filter = SeccompFilter::new(rules, mismatch, on_match, arch)
            .map_err(|e| SeccompError::Compile(e.to_string()))?;
        filter
            .try_into()
            .map_err(|e: seccompiler::BackendError| SeccompError::Compile(e.to_string()))
    };
    let mut programs = Vec::new();
    if default != SeccompAction::Allow {
        programs.push(build(finish(named), default.clone(), SeccompAction::Allow)?);
    }
    for (act, rules) in groups {
        if act != SeccompAction::Allow {
            programs.push(build(finish(rules), SeccompAction::Allow, act)?);
        }
    }
    Ok(programs)
}

/// Installs `programs` on the calling thread (no_new_privs is set first, as it must be for
/// an unprivileged caller). The last step before exec: the filters bind what follows.
pub fn install(programs: &[BpfProgram]) -> Result<(), SeccompError> {
    for p in programs {
        seccompiler::apply_filter(p).map_err(|e| SeccompError::Install(e.to_string()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names_of(s: &LinuxSeccomp) -> Vec<String> {
        s.syscalls()
            .clone()
            .unwrap_or_default()
            .iter()
            .flat_map(|r| r.names().clone())
            .collect()
    }

    #[test]
    fn the_default_denies_by_capability() {
        let plain: Vec<String> = shoal_api::security::DEFAULT_CAPABILITIES
            .iter()
            .map(|c| (*c).to_owned())
            .collect();
        let s = default_for(&plain).unwrap();
        assert_eq!(s.default_action(), LinuxSeccompAction::ScmpActAllow);
        let names = names_of(&s);
        for n in [
            "keyctl",
            "unshare",
            "mount",
            "setns",
            "bpf",
            "kexec_load",
            "clone3",
        ] {
            assert!(names.contains(&n.to_owned()), "{n} not denied");
        }
        let clone_rules = names.iter().filter(|n| *n == "clone").count();
        assert_eq!(clone_rules, 7, "one rule per namespace flag");
        let mut admin = plain.clone();
        admin.push("SYS_ADMIN".into());
        let names = names_of(&default_for(&admin).unwrap());
        assert!(!names.contains(&"unshare".to_owned()));
        assert!(!names.contains(&"clone".to_owned()));
        assert!(
            names.contains(&"keyctl".to_owned()),
            "denied whatever the capabilities"
        );
    }

    #[test]
    fn profiles_resolve_includes_and_compile() {
        let p = shoal_api::security::parse_profile(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":1,"syscalls":[
              {"names":["read","write","exit_group","no_such_call"],"action":"SCMP_ACT_ALLOW"},
              {"names":["ptrace"],"action":"SCMP_ACT_ALLOW","includes":{"caps":["CAP_SYS_PTRACE"]}},
              {"names":["clone3"],"action":"SCMP_ACT_ERRNO","errnoRet":38},
              {"names":["personality"],"action":"SCMP_ACT_ALLOW",
               "args":[{"index":0,"value":8,"op":"SCMP_CMP_EQ"}]}]}"#,
        )
        .unwrap();
        let s = resolve(&p, &["CHOWN".into()]).unwrap();
        assert!(!names_of(&s).contains(&"ptrace".to_owned()));
        let s = resolve(&p, &["SYS_PTRACE".into()]).unwrap();
        assert!(names_of(&s).contains(&"ptrace".to_owned()));
        // A default filter and one for ENOSYS.
        assert_eq!(compile(&s).unwrap().len(), 2);
        // The default profile: EPERM rules and ENOSYS for clone3 (the default allows).
        assert_eq!(compile(&default_for(&[]).unwrap()).unwrap().len(), 2);
    }
}
