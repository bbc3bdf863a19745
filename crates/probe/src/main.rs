//! `probe`: a statically linked test program the project imports as an image. It reports what
//! a container sees (`report`), serves that over HTTP (`serve`), exits with a chosen code
//! (`exit`), allocates memory (`alloc`), starts processes (`spawn`), sleeps (`sleep`) and makes
//! raw system calls a confined container must not make (`syscall`).
//! std only, so `rustc -C target-feature=+crt-static` builds it in seconds.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::process::{Command, ExitCode};
use std::time::Duration;

fn read(path: &str) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .trim()
        .to_owned()
}

fn status_field(name: &str) -> String {
    read("/proc/self/status")
        .lines()
        .find_map(|l| {
            l.strip_prefix(name)
                .map(|v| v.trim_start_matches(':').trim().to_owned())
        })
        .unwrap_or_default()
}

/// Local IPv4 addresses, from /proc/net/fib_trie (no libc needed).
fn addresses() -> Vec<String> {
    let text = read("/proc/net/fib_trie");
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for w in lines.windows(2) {
        if w[1].contains("/32 host LOCAL") {
            if let Some(a) = w[0].trim().strip_prefix("|-- ") {
                if !out.contains(&a.to_owned()) {
                    out.push(a.to_owned());
                }
            }
        }
    }
    out
}

fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn json_list(items: &[String]) -> String {
    format!(
        "[{}]",
        items
            .iter()
            .map(|s| json_str(s))
            .collect::<Vec<_>>()
            .join(",")
    )
}

/// What the process observes, as one JSON object.
fn report() -> String {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let mounts: Vec<String> = read("/proc/self/mountinfo")
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let sep = f.iter().position(|x| *x == "-")?;
            Some(format!("{} {}", f.get(4)?, f.get(sep + 1)?))
        })
        .collect();
    let mut fields = vec![
        ("pid", std::process::id().to_string()),
        ("hostname", json_str(&read("/proc/sys/kernel/hostname"))),
        ("uid", json_str(&status_field("Uid"))),
        ("gid", json_str(&status_field("Gid"))),
        ("groups", json_str(&status_field("Groups"))),
        ("cap_eff", json_str(&status_field("CapEff"))),
        ("cap_bnd", json_str(&status_field("CapBnd"))),
        ("cap_prm", json_str(&status_field("CapPrm"))),
        ("no_new_privs", json_str(&status_field("NoNewPrivs"))),
        ("seccomp", json_str(&status_field("Seccomp"))),
        (
            "cwd",
            json_str(
                &std::env::current_dir()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
            ),
        ),
        ("addresses", json_list(&addresses())),
        ("mounts", json_list(&mounts)),
        ("cgroup", json_str(&read("/proc/self/cgroup"))),
    ];
    fields.push((
        "env",
        format!(
            "{{{}}}",
            env.iter()
                .map(|(k, v)| format!("{}:{}", json_str(k), json_str(v)))
                .collect::<Vec<_>>()
                .join(",")
        ),
    ));
    format!(
        "{{{}}}",
        fields
            .iter()
            .map(|(k, v)| format!("{}:{v}", json_str(k)))
            .collect::<Vec<_>>()
            .join(",")
    )
}

/// Asks the first `nameserver` of /etc/resolv.conf for the A records of `name` (a minimal DNS
/// client: a static binary has no working getaddrinfo for DNS).
fn dns_a(name: &str) -> Vec<String> {
    let conf = read("/etc/resolv.conf");
    let Some(server) = conf
        .lines()
        .find_map(|l| l.trim().strip_prefix("nameserver"))
        .map(|s| s.trim().to_owned())
    else {
        return Vec::new();
    };
    let mut q: Vec<u8> = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    let Ok(sock) = std::net::UdpSocket::bind("0.0.0.0:0") else {
        return Vec::new();
    };
    let _ = sock.set_read_timeout(Some(Duration::from_secs(3)));
    if sock.send_to(&q, format!("{server}:53")).is_err() {
        return Vec::new();
    }
    let mut buf = [0u8; 2048];
    let Ok(n) = sock.recv(&mut buf) else {
        return Vec::new();
    };
    let b = &buf[..n];
    if n < 12 {
        return Vec::new();
    }
    let answers = u16::from_be_bytes([b[6], b[7]]) as usize;
    // Skips a name (labels, or a compression pointer) from `i`.
    let skip = |mut i: usize| -> usize {
        while i < b.len() {
            let l = b[i] as usize;
            if l == 0 {
                return i + 1;
            }
            if l & 0xc0 == 0xc0 {
                return i + 2;
            }
            i += l + 1;
        }
        i
    };
    let mut i = skip(12) + 4;
    let mut out = Vec::new();
    for _ in 0..answers {
        i = skip(i);
        if i + 10 > b.len() {
            break;
        }
        let kind = u16::from_be_bytes([b[i], b[i + 1]]);
        let len = u16::from_be_bytes([b[i + 8], b[i + 9]]) as usize;
        i += 10;
        if kind == 1 && len == 4 && i + 4 <= b.len() {
            out.push(format!("{}.{}.{}.{}", b[i], b[i + 1], b[i + 2], b[i + 3]));
        }
        i += len;
    }
    out
}

fn resolve(name: &str) -> Vec<String> {
    let mut out: Vec<String> = read("/etc/hosts")
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let addr = f.next()?;
            f.any(|n| n == name).then(|| addr.to_owned())
        })
        .collect();
    if out.is_empty() && name.parse::<std::net::Ipv4Addr>().is_ok() {
        out.push(name.to_owned());
    }
    if out.is_empty() {
        out = dns_a(name);
    }
    out
}

fn alloc(mb: usize) -> Vec<u8> {
    let mut v = vec![0u8; mb << 20];
    // Touch every page so the memory is really used.
    for i in (0..v.len()).step_by(4096) {
        v[i] = 1;
    }
    v
}

fn respond(mut s: TcpStream) {
    let mut line = String::new();
    let mut r = BufReader::new(s.try_clone().expect("clone"));
    if r.read_line(&mut line).is_err() {
        return;
    }
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" || h == "\n" {
            break;
        }
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let (code, body) = if path == "/" {
        // The report, with the address the connection came from.
        let client = s
            .peer_addr()
            .map(|a| a.ip().to_string())
            .unwrap_or_default();
        (
            200,
            format!("{{\"client\":{},{}", json_str(&client), &report()[1..]),
        )
    } else if let Some(n) = path.strip_prefix("/exit/") {
        let code: i32 = n.parse().unwrap_or(1);
        let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nbye");
        std::process::exit(code);
    } else if let Some(n) = path.strip_prefix("/alloc/") {
        let mb: usize = n.parse().unwrap_or(1);
        std::mem::forget(alloc(mb));
        (200, format!("{{\"allocated_mb\":{mb}}}"))
    } else if let Some(n) = path.strip_prefix("/resolve/") {
        (200, json_list(&resolve(n)))
    } else {
        (404, "{\"error\":\"not found\"}".to_owned())
    };
    let reason = if code == 200 { "OK" } else { "Not Found" };
    let _ = write!(
        s,
        "HTTP/1.0 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
}

/// A raw system call (x86_64 Linux) with up to four arguments: the result, or minus the errno.
#[cfg(target_arch = "x86_64")]
fn raw_syscall(nr: i64, a: [i64; 4]) -> i64 {
    let ret: i64;
    // SAFETY: the system calls made here take integers or pointers to live, NUL-terminated
    // buffers of the caller; `syscall` clobbers rcx and r11 only.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") nr => ret,
            in("rdi") a[0],
            in("rsi") a[1],
            in("rdx") a[2],
            in("r10") a[3],
            // The fifth and sixth arguments (mount's data pointer among them) are null.
            in("r8") 0i64,
            in("r9") 0i64,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack)
        );
    }
    ret
}

/// Makes one system call a confined container is denied: its result or minus the errno.
#[cfg(target_arch = "x86_64")]
fn forbidden_syscall(which: &str) -> Option<i64> {
    let path = c"/dev/probe-block";
    let none = c"none";
    // A target that does not exist: allowed, the call fails with ENOENT and mounts nothing.
    let target = c"/nonexistent-probe-target";
    Some(match which {
        // keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, create)
        "keyctl" => raw_syscall(250, [0, -3, 1, 0]),
        // unshare(CLONE_NEWUTS)
        "unshare" => raw_syscall(272, [0x0400_0000, 0, 0, 0]),
        // mknod(path, S_IFBLK | 0600, makedev(8, 0)), then open it for reading
        "mknod-block" => {
            let r = raw_syscall(133, [path.as_ptr() as i64, 0o60600, 8 << 8, 0]);
            if r < 0 {
                r
            } else {
                // open(path, O_RDONLY)
                let fd = raw_syscall(2, [path.as_ptr() as i64, 0, 0, 0]);
                let _ = std::fs::remove_file("/dev/probe-block");
                fd.min(0)
            }
        }
        // mknod(path, S_IFCHR | 0600, makedev(1, 3)) (a null device, which the default
        // rules allow), then open it for writing
        "mknod-null" => {
            let path = c"/dev/probe-null";
            let r = raw_syscall(133, [path.as_ptr() as i64, 0o20600, 1 << 8 | 3, 0]);
            if r < 0 {
                r
            } else {
                // open(path, O_WRONLY)
                let fd = raw_syscall(2, [path.as_ptr() as i64, 1, 0, 0]);
                let _ = std::fs::remove_file("/dev/probe-null");
                fd.min(0)
            }
        }
        // mount("none", "/nonexistent-probe-target", "tmpfs", 0, NULL)
        "mount" => raw_syscall(
            165,
            [
                none.as_ptr() as i64,
                target.as_ptr() as i64,
                c"tmpfs".as_ptr() as i64,
                0,
            ],
        ),
        _ => return None,
    })
}

#[cfg(not(target_arch = "x86_64"))]
fn forbidden_syscall(_which: &str) -> Option<i64> {
    None
}

fn usage() -> ExitCode {
    eprintln!("usage: probe report | serve [PORT] | udpserve [PORT] | dig NAME | exit CODE | alloc MB [SECS] | spawn N | sleep SECS | get HOST:PORT [PATH] | cat FILE | write FILE TEXT | syscall keyctl|unshare|mknod-block|mknod-null|mount...");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| args.get(i).map(String::as_str);
    match arg(1) {
        Some("report") => {
            println!("{}", report());
            ExitCode::SUCCESS
        }
        Some("serve") => {
            let port = arg(2).unwrap_or("8080");
            let listener = match TcpListener::bind(format!("0.0.0.0:{port}")) {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("probe: bind :{port}: {e}");
                    return ExitCode::from(1);
                }
            };
            println!(
                "probe: serving on :{port} as {}",
                read("/proc/sys/kernel/hostname")
            );
            for s in listener.incoming().flatten() {
                std::thread::spawn(move || respond(s));
            }
            ExitCode::SUCCESS
        }
        Some("exit") => {
            let code: u8 = arg(2).and_then(|c| c.parse().ok()).unwrap_or(0);
            println!("probe: exiting with {code}");
            eprintln!("probe: to stderr");
            ExitCode::from(code)
        }
        Some("alloc") => {
            let mb: usize = arg(2).and_then(|c| c.parse().ok()).unwrap_or(1);
            let v = alloc(mb);
            println!("probe: allocated {mb} MiB");
            let secs: u64 = arg(3).and_then(|c| c.parse().ok()).unwrap_or(0);
            std::thread::sleep(Duration::from_secs(secs));
            drop(v);
            ExitCode::SUCCESS
        }
        Some("spawn") => {
            let n: usize = arg(2).and_then(|c| c.parse().ok()).unwrap_or(1);
            let mut children = Vec::new();
            for _ in 0..n {
                match Command::new("/proc/self/exe").args(["sleep", "30"]).spawn() {
                    Ok(c) => children.push(c),
                    Err(_) => break,
                }
            }
            println!("probe: spawned {}", children.len());
            for mut c in children {
                let _ = c.kill();
                let _ = c.wait();
            }
            ExitCode::SUCCESS
        }
        Some("sleep") => {
            let secs: f64 = arg(2).and_then(|c| c.parse().ok()).unwrap_or(3600.0);
            std::thread::sleep(Duration::from_secs_f64(secs));
            ExitCode::SUCCESS
        }
        Some("udpserve") => {
            // Answers each datagram with this container's hostname and the sender's address.
            let port = arg(2).unwrap_or("8080");
            let sock = match std::net::UdpSocket::bind(format!("0.0.0.0:{port}")) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("probe: bind udp :{port}: {e}");
                    return ExitCode::from(1);
                }
            };
            println!("probe: serving udp on :{port}");
            let host = read("/proc/sys/kernel/hostname");
            let mut buf = [0u8; 512];
            while let Ok((_, from)) = sock.recv_from(&mut buf) {
                let reply = format!(
                    "{{\"hostname\":{},\"client\":{}}}",
                    json_str(&host),
                    json_str(&from.ip().to_string())
                );
                let _ = sock.send_to(reply.as_bytes(), from);
            }
            ExitCode::SUCCESS
        }
        Some("dig") => {
            let Some(name) = arg(2) else { return usage() };
            println!("{}", json_list(&resolve(name)));
            ExitCode::SUCCESS
        }
        Some("get") => {
            let Some(addr) = arg(2) else { return usage() };
            let path = arg(3).unwrap_or("/");
            // NAME:PORT goes through /etc/hosts and the resolver first.
            let addr = match addr.rsplit_once(':') {
                Some((host, port)) if host.parse::<std::net::Ipv4Addr>().is_err() => {
                    match resolve(host).first() {
                        Some(ip) => format!("{ip}:{port}"),
                        None => {
                            eprintln!("probe: cannot resolve {host}");
                            return ExitCode::from(1);
                        }
                    }
                }
                _ => addr.to_owned(),
            };
            let addr = addr.as_str();
            let target: Vec<std::net::SocketAddr> = addr
                .to_socket_addrs()
                .map(|a| a.collect())
                .unwrap_or_default();
            let Some(target) = target.first() else {
                eprintln!("probe: bad address {addr}");
                return ExitCode::from(1);
            };
            match TcpStream::connect_timeout(target, Duration::from_secs(5)) {
                Ok(mut s) => {
                    let _ = write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
                    let mut body = String::new();
                    let _ = s.read_to_string(&mut body);
                    let body = body.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or(&body);
                    println!("{body}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("probe: connect {addr}: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Some("cat") => match arg(2).map(std::fs::read_to_string) {
            Some(Ok(t)) => {
                print!("{t}");
                ExitCode::SUCCESS
            }
            _ => ExitCode::from(1),
        },
        Some("write") => match (arg(2), arg(3)) {
            (Some(p), Some(t)) => match std::fs::write(p, t) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("probe: write {p}: {e}");
                    ExitCode::from(1)
                }
            },
            _ => usage(),
        },
        Some("syscall") if args.len() > 2 => {
            // One line per call: `NAME: ok` or `NAME: errno N`.
            for name in &args[2..] {
                match forbidden_syscall(name) {
                    Some(r) if r < 0 => println!("{name}: errno {}", -r),
                    Some(_) => println!("{name}: ok"),
                    None => return usage(),
                }
            }
            ExitCode::SUCCESS
        }
        _ => usage(),
    }
}
