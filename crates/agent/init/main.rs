//! `shoal-init`: PID 1 for containers with `init: true` (as Docker's `--init`). It starts the
//! container's command, forwards every signal it gets to it, reaps the zombies that orphaned
//! processes leave, and exits as the command did (128 + N when a signal N killed it).
//!
//! std only and built statically by the agent's build script, so it runs in any image.

use std::process::Command;

/// glibc's `sigset_t` (1024 bits).
#[repr(C)]
struct SigSet([u64; 16]);

/// `siginfo_t` (128 bytes; `si_signo` first).
#[repr(C)]
struct SigInfo {
    signo: i32,
    rest: [u8; 124],
}

#[repr(C)]
struct Timespec {
    sec: i64,
    nsec: i64,
}

extern "C" {
    fn sigfillset(set: *mut SigSet) -> i32;
    fn sigprocmask(how: i32, set: *const SigSet, old: *mut SigSet) -> i32;
    fn sigtimedwait(set: *const SigSet, info: *mut SigInfo, timeout: *const Timespec) -> i32;
    fn kill(pid: i32, sig: i32) -> i32;
    fn waitpid(pid: i32, status: *mut i32, options: i32) -> i32;
}

const SIG_BLOCK: i32 = 0;
const SIG_SETMASK: i32 = 2;
const WNOHANG: i32 = 1;
const SIGCHLD: i32 = 17;

/// Reaps every exited child; returns the command's exit status once it is among them.
fn reap(child: i32) -> Option<i32> {
    let mut result = None;
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes the status into the integer we own.
        let pid = unsafe { waitpid(-1, &mut status, WNOHANG) };
        if pid <= 0 {
            return result;
        }
        if pid == child {
            let signal = status & 0x7f;
            result = Some(if signal == 0 {
                (status >> 8) & 0xff
            } else {
                128 + signal
            });
        }
    }
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--") {
        args.remove(0);
    }
    let Some(program) = args.first().cloned() else {
        eprintln!("usage: shoal-init [--] PROGRAM [ARGS...]");
        std::process::exit(2);
    };
    let mut all = SigSet([0; 16]);
    // SAFETY: the set is ours; blocking every signal lets the loop below take them in turn.
    unsafe {
        sigfillset(&mut all);
        sigprocmask(SIG_BLOCK, &all, std::ptr::null_mut());
    }
    let mut command = Command::new(&program);
    command.args(&args[1..]);
    // The command starts with no signal blocked (it would inherit our mask otherwise).
    // SAFETY: the closure runs in the forked child before exec and only calls sigprocmask,
    // which is async-signal-safe.
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(|| {
            let none = SigSet([0; 16]);
            sigprocmask(SIG_SETMASK, &none, std::ptr::null_mut());
            Ok(())
        });
    }
    let child = match command.spawn() {
        Ok(c) => c.id() as i32,
        Err(e) => {
            eprintln!("shoal-init: {program}: {e}");
            std::process::exit(if e.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 });
        }
    };
    let timeout = Timespec { sec: 1, nsec: 0 };
    loop {
        let mut info = SigInfo { signo: 0, rest: [0; 124] };
        // SAFETY: the set, info and timeout are ours and live across the call.
        let sig = unsafe { sigtimedwait(&all, &mut info, &timeout) };
        if sig > 0 && sig != SIGCHLD {
            // SAFETY: kill only sends a signal.
            unsafe { kill(child, sig) };
        }
        if let Some(code) = reap(child) {
            std::process::exit(code);
        }
    }
}
