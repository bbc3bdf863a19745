//! What confines a service's containers: capabilities added to or dropped from Docker's
//! default set, `privileged`, and the seccomp profile (`security_opt: seccomp=...`), with the
//! profile format Docker reads (`defaultAction`, `syscalls[].names|action|errnoRet|args`,
//! `includes`/`excludes` by capability and architecture). Validated here, so a bad profile
//! is refused at load time with the key that is wrong; the runtime turns a profile into the
//! OCI spec's `linux.seccomp` and, for the built-in runtime, into a BPF filter.

use serde::{Deserialize, Serialize};

/// Every Linux capability, by the name Docker and the OCI spec use (without `CAP_`), in the
/// kernel's order: the index is the capability's number.
pub const CAPABILITIES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Docker's default capabilities (without `CAP_`).
pub const DEFAULT_CAPABILITIES: [&str; 14] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// A capability name as Docker accepts it (`net_admin`, `CAP_NET_ADMIN`, `ALL`), in the
/// canonical form (`NET_ADMIN`, `ALL`); `None` when no such capability exists.
pub fn normalize_capability(name: &str) -> Option<String> {
    let upper = name.trim().to_ascii_uppercase();
    if upper == "ALL" {
        return Some(upper);
    }
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    CAPABILITIES
        .iter()
        .find(|c| **c == bare)
        .map(|c| (*c).to_owned())
}

/// The capabilities a container gets: Docker's defaults, then `cap_add`, then `cap_drop`
/// (`ALL` stands for every capability), or every capability when privileged. Sorted names
/// without `CAP_`. Unknown names are left out (the loader refuses them before this).
pub fn effective_capabilities(
    cap_add: &[String],
    cap_drop: &[String],
    privileged: bool,
) -> Vec<String> {
    let norm = |l: &[String]| -> Vec<String> {
        l.iter().filter_map(|c| normalize_capability(c)).collect()
    };
    let (add, drop) = (norm(cap_add), norm(cap_drop));
    let mut set: std::collections::BTreeSet<String> =
        if privileged || add.iter().any(|c| c == "ALL") {
            CAPABILITIES.iter().map(|c| (*c).to_owned()).collect()
        } else {
            DEFAULT_CAPABILITIES
                .iter()
                .map(|c| (*c).to_owned())
                .collect()
        };
    if !privileged {
        set.extend(add.into_iter().filter(|c| c != "ALL"));
        if drop.iter().any(|c| c == "ALL") {
            // `cap_drop: [ALL]` with `cap_add` keeps only what was added, as Docker does.
            set = norm(cap_add).into_iter().filter(|c| c != "ALL").collect();
        } else {
            for c in &drop {
                set.remove(c);
            }
        }
    }
    set.into_iter().collect()
}

/// The seccomp filter of a service's containers.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Seccomp {
    /// shoal's default profile (the effect of Docker's; see docs/runtime.md).
    #[default]
    Default,
    /// No filter (`seccomp=unconfined`).
    Unconfined,
    /// A profile in Docker's format (`seccomp=PROFILE.json`), read at deploy.
    Profile(Box<SeccompProfile>),
}

impl Seccomp {
    /// True for the default, which specs leave out.
    pub fn is_default(&self) -> bool {
        *self == Seccomp::Default
    }
}

/// A seccomp profile in Docker's format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SeccompProfile {
    /// What a system call no rule names gets (`SCMP_ACT_ERRNO`, `SCMP_ACT_ALLOW`, ...).
    pub default_action: String,
    /// The errno of `SCMP_ACT_ERRNO` as default action (default EPERM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_errno_ret: Option<u32>,
    /// Architectures the filter admits (`SCMP_ARCH_X86_64`, ...); informational here, the
    /// filter is always built for the node's own architecture.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub architectures: Vec<String>,
    /// Docker's per-architecture form of `architectures`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub arch_map: Vec<ArchMap>,
    /// The rules, first match first.
    #[serde(default)]
    pub syscalls: Vec<SeccompRule>,
}

/// An entry of Docker's `archMap`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArchMap {
    /// The main architecture.
    pub architecture: String,
    /// Its companions (e.g. x86 and x32 beside x86_64).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sub_architectures: Vec<String>,
}

/// One rule: these system calls, when their arguments match, get this action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SeccompRule {
    /// System call names (`name` alone in older profiles).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// The older single-name form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The action.
    pub action: String,
    /// The errno of `SCMP_ACT_ERRNO`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno_ret: Option<u32>,
    /// Conditions on the arguments, all of which must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<SeccompArg>,
    /// The rule applies only when these hold.
    #[serde(default, skip_serializing_if = "RuleFilter::is_empty")]
    pub includes: RuleFilter,
    /// The rule applies unless these hold.
    #[serde(default, skip_serializing_if = "RuleFilter::is_empty")]
    pub excludes: RuleFilter,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

impl SeccompRule {
    /// The system calls the rule names.
    pub fn all_names(&self) -> impl Iterator<Item = &str> {
        self.names
            .iter()
            .map(String::as_str)
            .chain(self.name.as_deref())
    }
}

/// A condition of Docker's `includes`/`excludes`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleFilter {
    /// Capabilities (`CAP_SYS_ADMIN`): includes needs all of them, excludes any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub caps: Vec<String>,
    /// Architectures (`amd64`, `arm64`, ...): includes needs one of them, excludes none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub arches: Vec<String>,
    /// Minimal kernel version (`4.8`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_kernel: Option<String>,
}

impl RuleFilter {
    /// True when the filter says nothing.
    pub fn is_empty(&self) -> bool {
        self.caps.is_empty() && self.arches.is_empty() && self.min_kernel.is_none()
    }
}

/// A condition on one argument of a system call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SeccompArg {
    /// Which argument (0 to 5).
    pub index: u32,
    /// The value compared with (the mask for `SCMP_CMP_MASKED_EQ`).
    pub value: u64,
    /// The expected masked value for `SCMP_CMP_MASKED_EQ`.
    #[serde(default)]
    pub value_two: u64,
    /// `SCMP_CMP_EQ`, `SCMP_CMP_NE`, `SCMP_CMP_LT`, `SCMP_CMP_LE`, `SCMP_CMP_GT`,
    /// `SCMP_CMP_GE` or `SCMP_CMP_MASKED_EQ`.
    pub op: String,
}

/// Actions a profile may name.
pub const SECCOMP_ACTIONS: [&str; 7] = [
    "SCMP_ACT_ALLOW",
    "SCMP_ACT_ERRNO",
    "SCMP_ACT_KILL",
    "SCMP_ACT_KILL_THREAD",
    "SCMP_ACT_KILL_PROCESS",
    "SCMP_ACT_TRAP",
    "SCMP_ACT_LOG",
];

/// Comparisons a profile may name.
pub const SECCOMP_OPS: [&str; 7] = [
    "SCMP_CMP_EQ",
    "SCMP_CMP_NE",
    "SCMP_CMP_LT",
    "SCMP_CMP_LE",
    "SCMP_CMP_GT",
    "SCMP_CMP_GE",
    "SCMP_CMP_MASKED_EQ",
];

/// A profile that cannot be used, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ProfileError {
    /// The JSON path of the wrong value (`syscalls[3].action`).
    pub key: String,
    /// What is wrong.
    pub message: String,
}

/// Reads a profile in Docker's format and checks every action, comparison and argument index.
pub fn parse_profile(json: &str) -> Result<SeccompProfile, ProfileError> {
    let de = &mut serde_json::Deserializer::from_str(json);
    let profile: SeccompProfile = serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        ProfileError {
            key: if key == "." { "profile".into() } else { key },
            message: e.into_inner().to_string(),
        }
    })?;
    check_profile(&profile)?;
    Ok(profile)
}

/// Checks a profile's actions, comparisons and argument indexes.
pub fn check_profile(p: &SeccompProfile) -> Result<(), ProfileError> {
    let bad = |key: String, message: String| Err(ProfileError { key, message });
    if !SECCOMP_ACTIONS.contains(&p.default_action.as_str()) {
        return bad(
            "defaultAction".into(),
            format!(
                "unknown action {:?} (one of {})",
                p.default_action,
                SECCOMP_ACTIONS.join(", ")
            ),
        );
    }
    for (i, r) in p.syscalls.iter().enumerate() {
        if r.all_names().next().is_none() {
            return bad(
                format!("syscalls[{i}].names"),
                "a rule names no system call".into(),
            );
        }
        if !SECCOMP_ACTIONS.contains(&r.action.as_str()) {
            return bad(
                format!("syscalls[{i}].action"),
                format!(
                    "unknown action {:?} (one of {})",
                    r.action,
                    SECCOMP_ACTIONS.join(", ")
                ),
            );
        }
        for (j, a) in r.args.iter().enumerate() {
            if a.index > 5 {
                return bad(
                    format!("syscalls[{i}].args[{j}].index"),
                    format!("argument {} does not exist (0 to 5)", a.index),
                );
            }
            if !SECCOMP_OPS.contains(&a.op.as_str()) {
                return bad(
                    format!("syscalls[{i}].args[{j}].op"),
                    format!(
                        "unknown comparison {:?} (one of {})",
                        a.op,
                        SECCOMP_OPS.join(", ")
                    ),
                );
            }
        }
        for c in r.includes.caps.iter().chain(&r.excludes.caps) {
            if normalize_capability(c).is_none() {
                return bad(
                    format!("syscalls[{i}]"),
                    format!("unknown capability {c:?}"),
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn capabilities_follow_docker() {
        let d = effective_capabilities(&[], &[], false);
        assert_eq!(d.len(), 14);
        let c = effective_capabilities(&s(&["net_admin"]), &s(&["CAP_MKNOD"]), false);
        assert!(c.contains(&"NET_ADMIN".into()) && !c.contains(&"MKNOD".into()));
        assert_eq!(
            effective_capabilities(&s(&["NET_BIND_SERVICE"]), &s(&["ALL"]), false),
            s(&["NET_BIND_SERVICE"])
        );
        assert_eq!(effective_capabilities(&[], &s(&["ALL"]), true).len(), 41);
        assert_eq!(
            normalize_capability("cap_sys_admin").as_deref(),
            Some("SYS_ADMIN")
        );
        assert_eq!(normalize_capability("FLY"), None);
    }

    #[test]
    fn profiles_are_checked_with_the_key() {
        let ok = r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
            {"names":["keyctl"],"action":"SCMP_ACT_ERRNO","errnoRet":1,
             "excludes":{"caps":["CAP_SYS_ADMIN"]}},
            {"name":"personality","action":"SCMP_ACT_ALLOW",
             "args":[{"index":0,"value":8,"op":"SCMP_CMP_EQ"}]}]}"#;
        let p = parse_profile(ok).unwrap();
        assert_eq!(
            p.syscalls[1].all_names().collect::<Vec<_>>(),
            ["personality"]
        );
        let e = parse_profile(&ok.replace("SCMP_CMP_EQ", "EQ")).unwrap_err();
        assert_eq!(e.key, "syscalls[1].args[0].op");
        let e = parse_profile(r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["x"]}]}"#)
            .unwrap_err();
        assert!(e.key.starts_with("syscalls[0]"), "{e}");
        let e = parse_profile(r#"{"defaultAction":"NOPE"}"#).unwrap_err();
        assert_eq!(e.key, "defaultAction");
        assert!(parse_profile("not json").is_err());
    }
}
