//! Device rules on cgroup v2: the unified hierarchy has no devices controller, so the kernel
//! asks a `BPF_PROG_TYPE_CGROUP_DEVICE` program attached to the cgroup whether each access
//! (mknod, read, write of a character or block device) is allowed, as runc and crun do.
//!
//! [`program`] is the pure part: the rules, in the order a spec lists them, become eBPF
//! bytecode through rbpf's assembler, tested by running it in rbpf's interpreter. [`attach`]
//! is the I/O: it loads the program with `bpf(2)` and attaches it to a cgroup directory. The
//! attachment lives as long as the cgroup, so removing the cgroup removes the program.

use crate::cgroups::{DeviceKind, DeviceRule};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// `BPF_DEVCG_DEV_BLOCK` and `BPF_DEVCG_DEV_CHAR`: the low 16 bits of the context's
/// `access_type`.
const DEV_BLOCK: u32 = 1;
const DEV_CHAR: u32 = 2;
/// `BPF_DEVCG_ACC_MKNOD`, `_READ`, `_WRITE`: its high 16 bits.
const ACC_MKNOD: u32 = 1;
const ACC_READ: u32 = 2;
const ACC_WRITE: u32 = 4;

/// The access bits of an OCI access string (`"rwm"` or a part of it).
fn access_bits(access: &str) -> u32 {
    access.chars().fold(0, |bits, c| match c {
        'r' => bits | ACC_READ,
        'w' => bits | ACC_WRITE,
        'm' => bits | ACC_MKNOD,
        _ => bits,
    })
}

/// The program's assembly for `rules`. The kernel's context is `struct bpf_cgroup_dev_ctx
/// { u32 access_type; u32 major; u32 minor; }`; the program returns 1 to allow, 0 to deny.
/// As with v1's `devices.allow`/`devices.deny` written in order, the last rule that matches
/// decides; an access that no rule matches is denied. An allow rule matches an access it
/// covers whole; a deny rule one it covers any part of.
pub fn assembly(rules: &[DeviceRule]) -> String {
    let mut asm = vec![
        "ldxw r2, [r1+0]".to_owned(),
        "and r2, 0xffff".to_owned(),
        "ldxw r3, [r1+0]".to_owned(),
        "rsh r3, 16".to_owned(),
        "ldxw r4, [r1+4]".to_owned(),
        "ldxw r5, [r1+8]".to_owned(),
    ];
    for rule in rules.iter().rev() {
        // A block per rule: tests that jump past the block when the access does not match,
        // then the rule's verdict. The flag marks the jumps.
        let mut block: Vec<(String, bool)> = Vec::new();
        match rule.kind {
            DeviceKind::All => {}
            DeviceKind::Char => block.push((format!("jne r2, {DEV_CHAR}"), true)),
            DeviceKind::Block => block.push((format!("jne r2, {DEV_BLOCK}"), true)),
        }
        if let Some(major) = rule.major {
            block.push((format!("jne r4, {major}"), true));
        }
        if let Some(minor) = rule.minor {
            block.push((format!("jne r5, {minor}"), true));
        }
        let bits = access_bits(&rule.access);
        if bits != ACC_MKNOD | ACC_READ | ACC_WRITE {
            block.push(("mov r6, r3".to_owned(), false));
            block.push((format!("and r6, {bits}"), false));
            if rule.allow {
                // An allow rule must cover the whole access: (access & bits) == access.
                block.push(("jne r6, r3".to_owned(), true));
            } else {
                // A deny rule denies any access it touches (as v1's devices controller
                // does): (access & bits) != 0.
                block.push(("jeq r6, 0".to_owned(), true));
            }
        }
        let unconditional = block.is_empty();
        block.push((format!("mov r0, {}", u32::from(rule.allow)), false));
        block.push(("exit".to_owned(), false));
        let len = block.len();
        asm.extend(block.into_iter().enumerate().map(|(i, (line, jump))| {
            if jump {
                format!("{line}, +{}", len - i - 1)
            } else {
                line
            }
        }));
        // A rule that matches every access decides alone: the kernel's verifier refuses
        // instructions that nothing reaches, so the earlier rules are left out.
        if unconditional {
            return asm.join("\n");
        }
    }
    asm.push("mov r0, 0".to_owned());
    asm.push("exit".to_owned());
    asm.join("\n")
}

/// The program's bytecode for `rules`.
pub fn program(rules: &[DeviceRule]) -> Vec<u8> {
    rbpf::assembler::assemble(&assembly(rules))
        .expect("the device program's assembly is generated well-formed")
}

/// `bpf(2)` commands, program and attach types, from linux/bpf.h.
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

/// The leading fields of `union bpf_attr` for `BPF_PROG_LOAD`; the kernel zero-fills the rest.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
}

/// The leading fields of `union bpf_attr` for `BPF_PROG_ATTACH`.
#[repr(C)]
#[derive(Default)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: attr is a live, initialized repr(C) prefix of union bpf_attr for `cmd`, and
    // the size passed is its own; pointers inside it point at buffers that outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Loads `code` as a device program. It is loaded without the verifier's log (which costs
/// time, and fails a load whose log overflows its buffer); a refused program is loaded again
/// with it, for the reason.
fn load(code: &[u8]) -> io::Result<OwnedFd> {
    let license = c"Apache-2.0";
    let try_load = |log: Option<&mut Vec<u8>>| {
        let mut attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
            insn_cnt: (code.len() / 8) as u32,
            insns: code.as_ptr() as u64,
            license: license.as_ptr() as u64,
            ..Default::default()
        };
        if let Some(log) = log {
            attr.log_level = 1;
            attr.log_size = log.len() as u32;
            attr.log_buf = log.as_mut_ptr() as u64;
        }
        bpf(BPF_PROG_LOAD, &mut attr)
    };
    let fd = try_load(None).map_err(|e| {
        let mut log = vec![0u8; 256 * 1024];
        let _ = try_load(Some(&mut log));
        let text = String::from_utf8_lossy(&log);
        let text = text.trim_end_matches('\0').trim();
        let why = if text.is_empty() {
            String::new()
        } else {
            format!(" (verifier: {text})")
        };
        io::Error::new(e.kind(), format!("loading the device program: {e}{why}"))
    })?;
    // SAFETY: BPF_PROG_LOAD returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Loads the program for `rules` and attaches it to the cgroup v2 directory `dir`. Programs
/// of the parent cgroups keep applying (`BPF_F_ALLOW_MULTI`): an access needs all of them.
pub fn attach(dir: &Path, rules: &[DeviceRule]) -> io::Result<()> {
    let prog = load(&program(rules))?;
    let cgroup = std::fs::File::open(dir)
        .map_err(|e| io::Error::new(e.kind(), format!("opening {}: {e}", dir.display())))?;
    let mut attach = ProgAttachAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
    };
    bpf(BPF_PROG_ATTACH, &mut attach).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("attaching the device program to {}: {e}", dir.display()),
        )
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(
        allow: bool,
        kind: DeviceKind,
        major: Option<i64>,
        minor: Option<i64>,
        access: &str,
    ) -> DeviceRule {
        DeviceRule {
            allow,
            kind,
            major,
            minor,
            access: access.into(),
        }
    }

    /// Runs the program in rbpf's interpreter on one access.
    fn decide(rules: &[DeviceRule], kind: u32, access: u32, major: u32, minor: u32) -> bool {
        let code = program(rules);
        let vm = rbpf::EbpfVmRaw::new(Some(&code)).unwrap();
        let mut ctx = Vec::new();
        ctx.extend_from_slice(&(kind | (access << 16)).to_le_bytes());
        ctx.extend_from_slice(&major.to_le_bytes());
        ctx.extend_from_slice(&minor.to_le_bytes());
        match vm.execute_program(&mut ctx).unwrap() {
            0 => false,
            1 => true,
            other => panic!("the program returned {other}"),
        }
    }

    /// Docker's default: everything denied, then /dev/null (1:3) and /dev/zero (1:5) in full,
    /// mknod of any character device, and /dev/pts (136:*) read and write.
    pub(super) fn docker_like() -> Vec<DeviceRule> {
        vec![
            rule(false, DeviceKind::All, None, None, "rwm"),
            rule(true, DeviceKind::Char, Some(1), Some(3), "rwm"),
            rule(true, DeviceKind::Char, Some(1), Some(5), "rwm"),
            rule(true, DeviceKind::Char, None, None, "m"),
            rule(true, DeviceKind::Char, Some(136), None, "rw"),
        ]
    }

    #[test]
    fn the_listed_devices_are_allowed_and_nothing_else() {
        let rules = docker_like();
        let rw = ACC_READ | ACC_WRITE;
        assert!(decide(&rules, DEV_CHAR, rw, 1, 3), "/dev/null");
        assert!(decide(&rules, DEV_CHAR, ACC_MKNOD, 1, 5), "mknod /dev/zero");
        assert!(
            decide(&rules, DEV_CHAR, ACC_MKNOD, 10, 200),
            "mknod any char"
        );
        assert!(
            !decide(&rules, DEV_CHAR, ACC_READ, 10, 200),
            "but not open it"
        );
        assert!(decide(&rules, DEV_CHAR, ACC_WRITE, 136, 7), "a pty");
        assert!(!decide(&rules, DEV_CHAR, ACC_MKNOD | ACC_READ, 136, 7));
        assert!(!decide(&rules, DEV_BLOCK, ACC_MKNOD, 8, 0), "mknod a disk");
        assert!(!decide(&rules, DEV_BLOCK, ACC_READ, 8, 0), "read a disk");
        assert!(
            !decide(&rules, DEV_BLOCK, ACC_READ, 1, 3),
            "the type counts"
        );
        assert!(
            !decide(&rules, DEV_CHAR, ACC_READ, 1, 4),
            "the minor counts"
        );
    }

    #[test]
    fn the_last_matching_rule_decides() {
        let rules = vec![
            rule(true, DeviceKind::All, None, None, "rwm"),
            rule(false, DeviceKind::Block, Some(8), None, "w"),
        ];
        assert!(decide(&rules, DEV_BLOCK, ACC_READ, 8, 1));
        assert!(!decide(&rules, DEV_BLOCK, ACC_WRITE, 8, 1));
        assert!(!decide(&rules, DEV_BLOCK, ACC_READ | ACC_WRITE, 8, 1));
        assert!(decide(&rules, DEV_CHAR, ACC_WRITE, 8, 1));
        assert!(!decide(&[], DEV_CHAR, ACC_READ, 1, 3), "no rule: denied");
    }

    #[test]
    fn the_program_passes_rbpfs_verifier_for_any_rule_shape() {
        let kinds = [DeviceKind::All, DeviceKind::Char, DeviceKind::Block];
        let mut rules = Vec::new();
        for kind in kinds {
            for major in [None, Some(4095)] {
                for minor in [None, Some(1 << 19)] {
                    for access in ["rwm", "r", "wm", ""] {
                        rules.push(rule(true, kind, major, minor, access));
                    }
                }
            }
        }
        let code = program(&rules);
        assert!(rbpf::EbpfVmRaw::new(Some(&code)).is_ok());
        // A rule's empty access matches no access; the reversed first rule still decides.
        assert!(decide(&rules, DEV_BLOCK, ACC_READ, 4095, 1 << 19));
    }
}

#[cfg(test)]
mod kernel_tests {
    use super::*;

    /// A program the kernel refuses comes back with the verifier's reason.
    #[test]
    fn a_refused_program_says_why() {
        if !nix::unistd::geteuid().is_root() {
            return shoal_testkit::skip("loading a device program needs root");
        }
        // No exit: the verifier refuses to run off the end.
        let code = rbpf::assembler::assemble("mov r0, 1").unwrap();
        let e = load(&code).unwrap_err().to_string();
        assert!(e.starts_with("loading the device program: "), "{e}");
        assert!(e.contains("(verifier: "), "{e}");
    }

    /// The kernel's verifier takes the program, whether a rule matches every access or none
    /// does, and it attaches to a real cgroup2 directory.
    #[test]
    fn the_kernel_loads_and_attaches_the_program() {
        if !nix::unistd::geteuid().is_root() {
            return shoal_testkit::skip("attaching a device program needs root");
        }
        let Some(root) = crate::cgroups::unified_root() else {
            return shoal_testkit::skip("this host mounts no cgroup2 hierarchy");
        };
        let dir = root.join(format!("shoal-devices-bpf-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        let mut result = Vec::new();
        for rules in [
            tests::docker_like(),
            tests::docker_like()[1..].to_vec(),
            vec![],
        ] {
            result.push(attach(&dir, &rules));
        }
        std::fs::remove_dir(&dir).unwrap();
        for r in result {
            r.unwrap();
        }
    }
}
