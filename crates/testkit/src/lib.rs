//! Test support shared by the crates' tests, the benchmark and the demo: the two images the
//! project makes itself and a check that this host can run containers.
//!
//! - busybox: Debian's busybox-static as `/bin/busybox` with a link per applet, plus
//!   /etc/passwd and /etc/group;
//! - probe: the statically linked `probe` program (crates/probe), built with `rustc -C
//!   target-feature=+crt-static`, as `/probe`, with the same /etc files and busybox beside it.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Applets linked in the busybox image.
pub const APPLETS: &[&str] = &[
    "sh", "ash", "cat", "echo", "env", "hostname", "id", "ls", "mkdir", "mount", "ps", "pwd", "rm",
    "sleep", "test", "true", "false", "touch", "wget", "httpd", "nc", "grep", "head", "tail", "wc",
    "date", "kill", "seq", "yes", "dd", "printf", "tee", "ip", "ifconfig", "nslookup", "stat",
    "readlink", "df", "uname", "whoami", "chmod", "chown", "ln", "cp", "mv",
];

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
daemon:x:1:1:daemon:/usr/sbin:/bin/false\n\
www-data:x:33:33:www-data:/var/www:/bin/false\n\
app:x:1000:1000:app:/home/app:/bin/sh\n\
nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";

const GROUP: &str =
    "root:x:0:\ndaemon:x:1:\nwww-data:x:33:\nstaff:x:50:app\napp:x:1000:\nnogroup:x:65534:\n";

/// A test cannot run here (no root, a tool missing): it says so and returns. Under `CI=true`
/// (as `.ci/run` runs) it fails instead, with the same words, so that nothing passes silently.
pub fn skip(why: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("cannot run under CI=true: {why}");
    }
    eprintln!("skipped: {why}");
}

/// Where Debian's busybox-static puts its binary.
pub const BUSYBOX: &str = "/bin/busybox";

/// Why this host cannot run containers, if it cannot (not root, no overlayfs, no cgroups, no
/// busybox-static).
pub fn container_support() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("not root".into());
    }
    let fs = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !fs.contains("overlay") {
        return Err("overlayfs is not available".into());
    }
    if !Path::new("/sys/fs/cgroup").exists() {
        return Err("/sys/fs/cgroup is missing".into());
    }
    if !is_static(Path::new(BUSYBOX)) {
        return Err(format!(
            "{BUSYBOX} is not a static busybox (apt-get install busybox-static)"
        ));
    }
    Ok(())
}

fn is_static(p: &Path) -> bool {
    Command::new("file")
        .arg("-L")
        .arg(p)
        .output()
        .map(|o| {
            let s = String::from_utf8_lossy(&o.stdout);
            s.contains("statically linked") || s.contains("static-pie")
        })
        // Without `file`, trust that the binary exists.
        .unwrap_or_else(|_| p.exists())
}

/// The workspace's target directory.
pub fn target_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(d);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target")
}

/// The static probe binary, built once into the target directory.
pub fn probe_binary() -> io::Result<PathBuf> {
    let dir = target_dir().join("shoal-test");
    std::fs::create_dir_all(&dir)?;
    let out = dir.join("probe");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../probe/src/main.rs");
    let fresh = match (std::fs::metadata(&out), std::fs::metadata(&src)) {
        (Ok(o), Ok(s)) => o.modified()? >= s.modified()?,
        _ => false,
    };
    if fresh {
        return Ok(out);
    }
    // Build in a directory of this process's own, then rename: rustc names its intermediate
    // object files after the crate, so concurrent builds in one directory overwrite each
    // other's (the linker then dies of SIGBUS), and no process may see half a binary.
    let work = dir.join(format!("build.{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let tmp = work.join("probe");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let status = Command::new(rustc)
        .args([
            "--edition",
            "2021",
            "-O",
            "-C",
            "target-feature=+crt-static",
            "-o",
        ])
        .arg(&tmp)
        .arg(&src)
        .status()?;
    let result = if status.success() {
        std::fs::rename(&tmp, &out)
    } else {
        Err(io::Error::other("building the probe failed"))
    };
    let _ = std::fs::remove_dir_all(&work);
    result.map(|()| out)
}

fn file_header(size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_entry_type(tar::EntryType::Regular);
    h
}

fn dir_entry(b: &mut tar::Builder<std::fs::File>, path: &str, mode: u32) -> io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(mode);
    h.set_size(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    b.append_data(&mut h, path, io::empty())
}

fn base(b: &mut tar::Builder<std::fs::File>) -> io::Result<()> {
    for (d, mode) in [
        ("bin", 0o755),
        ("etc", 0o755),
        ("tmp", 0o1777),
        ("proc", 0o555),
        ("sys", 0o555),
        ("dev", 0o755),
        ("root", 0o700),
        ("home", 0o755),
        ("var", 0o755),
        ("var/www", 0o755),
    ] {
        dir_entry(b, d, mode)?;
    }
    for (p, text) in [("etc/passwd", PASSWD), ("etc/group", GROUP)] {
        let mut h = file_header(text.len() as u64, 0o644);
        b.append_data(&mut h, p, text.as_bytes())?;
    }
    let bb = std::fs::read(BUSYBOX)?;
    let mut h = file_header(bb.len() as u64, 0o755);
    b.append_data(&mut h, "bin/busybox", &bb[..])?;
    for a in APPLETS {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        b.append_link(&mut h, format!("bin/{a}"), "busybox")?;
    }
    Ok(())
}

/// Writes the busybox root filesystem tarball to `path`.
pub fn busybox_tar(path: &Path) -> io::Result<()> {
    if !Path::new("/bin/busybox").is_file() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "the test images are made from Debian's static busybox, and /bin/busybox is missing: apt-get install busybox-static",
        ));
    }
    let mut b = tar::Builder::new(std::fs::File::create(path)?);
    base(&mut b)?;
    b.finish()
}

/// Writes the probe root filesystem tarball (busybox's, plus `/probe`) to `path`.
pub fn probe_tar(path: &Path) -> io::Result<()> {
    let probe = std::fs::read(probe_binary()?)?;
    let mut b = tar::Builder::new(std::fs::File::create(path)?);
    base(&mut b)?;
    let mut h = file_header(probe.len() as u64, 0o755);
    b.append_data(&mut h, "probe", &probe[..])?;
    b.finish()
}

/// Writes an OCI image layout into `dir` (for skopeo to push): one uncompressed layer, the
/// root-filesystem tarball at `rootfs`, with `entrypoint`, for `arch` (Go's names), tagged
/// `tag` in the layout's index.
pub fn oci_layout(
    dir: &Path,
    rootfs: &Path,
    entrypoint: &[&str],
    arch: &str,
    tag: &str,
) -> io::Result<()> {
    use sha2::Digest as _;
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    let put = |bytes: &[u8]| -> io::Result<String> {
        let hex = hex::encode(sha2::Sha256::digest(bytes));
        std::fs::write(blobs.join(&hex), bytes)?;
        Ok(format!("sha256:{hex}"))
    };
    let layer = std::fs::read(rootfs)?;
    let layer_digest = put(&layer)?;
    let config = serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "config": {"Entrypoint": entrypoint},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    })
    .to_string();
    let config_digest = put(config.as_bytes())?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": layer.len()}],
    })
    .to_string();
    let manifest_digest = put(manifest.as_bytes())?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": manifest_digest, "size": manifest.len(),
                       "annotations": {"org.opencontainers.image.ref.name": tag}}],
    });
    std::fs::write(dir.join("index.json"), index.to_string())?;
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)
}

/// A binary of the workspace (`shoal-runtime`, `shoald`) beside the running test's profile
/// directory (`target/debug/deps/test-… → target/debug/NAME`); build the workspace's binaries
/// first (`cargo build --workspace --bins`).
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_owned();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace first (cargo build --workspace --bins)",
        path.display()
    );
    path
}

/// The path of `program` on `PATH` (or in /usr/sbin and /usr/bin, which a test's PATH may
/// lack), if it is there.
pub fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(["/usr/sbin".into(), "/usr/bin".into()])
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}
