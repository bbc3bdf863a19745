//! Secrets and configs through the lab: a stack's secret (from a file) and config (from an
//! environment variable) reach the container on a worker with their target, owner and mode,
//! the secret in a tmpfs; the secret's value appears in nothing the API shows nor in any
//! daemon's log nor in any file under a host's data root; removal is refused while a service uses it; new content under the same name
//! is refused; `stack rm` takes them away.

use shoal_cluster_tests::*;

const VALUE: &str = "s3cr3t-value-7f1c";

const STACK: &str = "services:
  app:
    image: busybox
    command: [\"sleep\", \"600\"]
    user: \"1000\"
    secrets:
      - db_pw
      - source: db_pw
        target: private
        uid: \"1000\"
        gid: \"1000\"
        mode: 0400
    configs:
      - source: site
        target: /etc/site.conf
    deploy:
      placement:
        constraints: [node.role == worker]
secrets:
  db_pw:
    file: ./pw.txt
configs:
  site:
    environment: SITE_CONF
";

#[test]
fn secrets_reach_only_their_container_and_never_show() {
    let Some(lab) = container_lab("sec", 1, 1) else {
        return;
    };
    let dir = lab.state().dir.join("stack");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("pw.txt"), VALUE).unwrap();
    let file = dir.join("s.yml");
    std::fs::write(&file, STACK).unwrap();
    let shoal_bin = lab.state().bin_dir.join("shoal");
    let shoal = |host: &str, args: &[&str]| -> std::process::Output {
        lab.command(host, &shoal_bin)
            .unwrap()
            .env("SITE_CONF", "listen 80\n")
            .args(args)
            .output()
            .unwrap()
    };
    let f = file.to_str().unwrap();
    let out = shoal("m1", &deploy_args(f, "s"));
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Creating secret s_db_pw"), "{stdout}");
    assert!(stdout.contains("Creating config s_site"), "{stdout}");

    // Inside the container: targets, owners, modes; the secrets in a tmpfs.
    let out = shoal(
        "w1",
        &[
            "service",
            "exec",
            "s_app",
            "--",
            "sh",
            "-c",
            "cat /run/secrets/db_pw; echo; cat /run/secrets/private; echo; cat /etc/site.conf; \
             stat -c '%n %u %g %a' /run/secrets/db_pw /run/secrets/private /etc/site.conf; \
             grep -c ' /run/secrets/[a-z_]* tmpfs ' /proc/mounts",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        [
            VALUE,
            VALUE,
            "listen 80",
            "/run/secrets/db_pw 0 0 444",
            "/run/secrets/private 1000 1000 400",
            "/etc/site.conf 0 0 444",
            "2",
        ],
        "{text}"
    );

    // The value shows nowhere: inspect, lists, tasks, events, the daemons' logs. The config's
    // data does show, as docker shows it.
    let shown = [
        lab.shoal_ok("m1", &["secret", "inspect", "s_db_pw"])
            .unwrap(),
        lab.shoal_ok("m1", &["--format", "json", "secret", "ls"])
            .unwrap(),
        lab.shoal_ok("m1", &["--format", "json", "service", "inspect", "s_app"])
            .unwrap(),
        lab.shoal_ok("m1", &["--format", "json", "service", "ps", "s_app"])
            .unwrap(),
    ];
    for s in &shown {
        assert!(!s.contains(VALUE), "{s}");
    }
    let events = events_so_far(&lab, "m1");
    assert!(events.contains("s_db_pw"), "{events}");
    assert!(!events.contains(VALUE), "{events}");
    let config = lab
        .shoal_ok("m1", &["config", "inspect", "s_site"])
        .unwrap();
    assert!(config.contains("bGlzdGVuIDgwCg=="), "{config}");
    for h in ["m1", "w1"] {
        let log =
            std::fs::read_to_string(lab.state().dir.join(format!("hosts/{h}/shoald.log"))).unwrap();
        assert!(!log.contains(VALUE), "{h}'s log shows the secret");
        // Nor does any file on disk under the host's data root (the Raft log and snapshots
        // are sealed); a container's secrets tmpfs and root mounts are not disk, and skipped.
        let root = lab.state().dir.join(format!("hosts/{h}/data"));
        if let Some(file) = file_containing(&root, VALUE.as_bytes()) {
            panic!("{} holds the secret in the clear", file.display());
        }
    }

    // In use: not removed. New content under the same name: refused, nothing changed.
    let out = shoal("m1", &["secret", "rm", "s_db_pw"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("secret s_db_pw is in use by service s_app"),
        "{out:?}"
    );
    std::fs::write(dir.join("pw.txt"), "another value").unwrap();
    let out = shoal("m1", &deploy_args(f, "s"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("secret s_db_pw exists with other content"),
        "{err}"
    );
    assert!(
        !err.contains("another value") && !err.contains(VALUE),
        "{err}"
    );

    // `stack rm` takes them away.
    lab.shoal_ok("m1", &["stack", "rm", "s"]).unwrap();
    assert!(!lab
        .shoal_ok("m1", &["secret", "ls"])
        .unwrap()
        .contains("s_db_pw"));
    assert!(!lab
        .shoal_ok("m1", &["config", "ls"])
        .unwrap()
        .contains("s_site"));
    wait("the container and its secrets tmpfs to go", || {
        lab.containers("w1") == 0
            && !std::fs::read_to_string("/proc/self/mountinfo")
                .unwrap()
                .contains("/hosts/w1/data/containers/")
    });
}

/// A file under `root`, on `root`'s own file system, whose bytes hold `needle`.
fn file_containing(root: &std::path::Path, needle: &[u8]) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(root).ok()?.dev();
    let mut dirs = vec![root.to_owned()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(meta) = std::fs::symlink_metadata(e.path()) else {
                continue;
            };
            if meta.dev() != dev {
                continue;
            }
            if meta.is_dir() {
                dirs.push(e.path());
            } else if meta.is_file() {
                let bytes = std::fs::read(e.path()).unwrap_or_default();
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    return Some(e.path());
                }
            }
        }
    }
    None
}
