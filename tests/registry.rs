//! Images from a registry through the lab: Debian's docker-registry runs in m1's namespace,
//! skopeo pushes the probe image there, and a stack whose image exists only in the registry
//! runs on every worker, each pulling it where its task lands; the deploy pins the image to
//! its digest, so a tag moved later changes nothing until the next deploy; an image the
//! registry does not have leaves the registry's reason on the task.

use shoal_cluster_tests::*;
use std::process::Child;

struct Registry(Child);

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const STACK: &str = "services:
  app:
    image: 198.18.0.11:5000/tools/probe:1
    command: [\"serve\", \"8080\"]
    init: true
    deploy:
      replicas: 2
      placement:
        constraints: [node.role == worker]
        max_replicas_per_node: 1
";

#[test]
fn a_stack_whose_image_is_only_in_the_registry_runs_on_every_worker() {
    for (tool, pkg) in [("skopeo", "skopeo"), ("docker-registry", "docker-registry")] {
        if shoal_testkit::which(tool).is_none() {
            shoal_testkit::skip(&format!("{tool} is not installed (apt-get install {pkg})"));
            return;
        }
    }
    let Some(lab) =
        container_lab_with_args("reg", 1, 2, &["--insecure-registry", "198.18.0.11:5000"])
    else {
        return;
    };
    let dir = lab.state().dir.join("registry");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 198.18.0.11:5000\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    let _registry = Registry(
        lab.command("m1", std::path::Path::new("docker-registry"))
            .unwrap()
            .args(["serve", config.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let rootfs = dir.join("probe.tar");
    shoal_testkit::probe_tar(&rootfs).unwrap();
    let layout = dir.join("layout");
    shoal_testkit::oci_layout(&layout, &rootfs, &["/probe"], go_arch(), "1").unwrap();
    wait("the registry to answer", || {
        lab.command("m1", std::path::Path::new("skopeo"))
            .unwrap()
            .args(["--insecure-policy", "copy", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:1", layout.display()))
            .arg("docker://198.18.0.11:5000/tools/probe:1")
            .output()
            .unwrap()
            .status
            .success()
    });

    deploy(&lab, "m1", "r", STACK);
    let hosts = hostnames(&lab, "m1");
    let on: std::collections::BTreeSet<String> = running_on(&lab, "m1", "r_app")
        .iter()
        .map(|n| hosts[n].clone())
        .collect();
    assert_eq!(on, ["w1", "w2"].map(String::from).into());
    for w in ["w1", "w2"] {
        let images = lab.shoal_ok(w, &["image", "ls"]).unwrap();
        assert!(
            images.contains("198.18.0.11:5000/tools/probe"),
            "{w}: {images}"
        );
    }
    // The deploy pinned the image to the digest its tag had (`--resolve-image always`).
    let digest_of = |tag: &str| -> String {
        let out = lab
            .command("m1", std::path::Path::new("skopeo"))
            .unwrap()
            .args(["inspect", "--tls-verify=false"])
            .arg(format!("docker://198.18.0.11:5000/tools/probe:{tag}"))
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["Digest"].as_str().unwrap().to_owned()
    };
    let image = || -> String {
        let s: serde_json::Value = serde_json::from_str(
            &lab.shoal_ok("m1", &["--format", "json", "service", "inspect", "r_app"])
                .unwrap(),
        )
        .unwrap();
        s[0]["spec"]["task"]["container"]["image"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let first = digest_of("1");
    assert_eq!(image(), format!("198.18.0.11:5000/tools/probe:1@{first}"));
    // The tag moves to another image: nothing changes until the next deploy, and
    // `--resolve-image changed` keeps the digest of an image the file did not change.
    let moved = dir.join("moved");
    // The same program by another path: another config, so another digest.
    shoal_testkit::oci_layout(&moved, &rootfs, &["/./probe"], go_arch(), "1").unwrap();
    let out = lab
        .command("m1", std::path::Path::new("skopeo"))
        .unwrap()
        .args(["--insecure-policy", "copy", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:1", moved.display()))
        .arg("docker://198.18.0.11:5000/tools/probe:1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let second = digest_of("1");
    assert_ne!(first, second);
    let file = lab.state().dir.join("r.yml");
    let f = file.to_str().unwrap();
    lab.shoal_ok(
        "m1",
        &[
            "stack",
            "deploy",
            "--resolve-image",
            "changed",
            "-c",
            f,
            "r",
        ],
    )
    .unwrap();
    assert_eq!(image(), format!("198.18.0.11:5000/tools/probe:1@{first}"));
    lab.shoal_ok(
        "m1",
        &["stack", "deploy", "--resolve-image", "never", "-c", f, "r"],
    )
    .unwrap();
    assert_eq!(image(), "198.18.0.11:5000/tools/probe:1");
    lab.shoal_ok("m1", &deploy_args(f, "r")).unwrap();
    assert_eq!(image(), format!("198.18.0.11:5000/tools/probe:1@{second}"));
    wait("both replicas to run the moved tag's image", || {
        let t = tasks(&lab, "m1", "r_app");
        t.iter()
            .filter(|t| t["desired_state"] == "running" && t["status"]["state"] == "running")
            .filter(|t| {
                t["spec"]["container"]["image"]
                    .as_str()
                    .is_some_and(|i| i.ends_with(&second))
            })
            .count()
            == 2
    });

    // `image pull` on a node, by hand.
    let out = lab
        .shoal_ok("m1", &["image", "pull", "198.18.0.11:5000/tools/probe:1"])
        .unwrap();
    assert!(
        out.contains("Pulled: 198.18.0.11:5000/tools/probe:1"),
        "{out}"
    );
    // `image push` from one node, `image pull` on another.
    let out = lab
        .shoal_ok(
            "m1",
            &["image", "push", "probe", "198.18.0.11:5000/tools/mine:2"],
        )
        .unwrap();
    assert!(
        out.contains("Pushed: 198.18.0.11:5000/tools/mine:2"),
        "{out}"
    );
    let out = lab
        .shoal_ok("w1", &["image", "pull", "198.18.0.11:5000/tools/mine:2"])
        .unwrap();
    assert!(
        out.contains("Pulled: 198.18.0.11:5000/tools/mine:2"),
        "{out}"
    );
    // `service update --image` pins the new image too.
    lab.shoal_ok(
        "m1",
        &[
            "service",
            "update",
            "--image",
            "198.18.0.11:5000/tools/mine:2",
            "r_app",
        ],
    )
    .unwrap();
    let mine = {
        let out = lab
            .command("m1", std::path::Path::new("skopeo"))
            .unwrap()
            .args(["inspect", "--tls-verify=false"])
            .arg("docker://198.18.0.11:5000/tools/mine:2")
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["Digest"].as_str().unwrap().to_owned()
    };
    assert_eq!(image(), format!("198.18.0.11:5000/tools/mine:2@{mine}"));

    // An image the registry does not have: the task says why.
    let file = lab.state().dir.join("nope.yml");
    std::fs::write(
        &file,
        STACK
            .replace("tools/probe:1", "tools/nope:1")
            .replace("replicas: 2", "replicas: 1"),
    )
    .unwrap();
    lab.shoal_ok(
        "m1",
        &["stack", "deploy", "-c", file.to_str().unwrap(), "n"],
    )
    .unwrap();
    wait("the failed pull to show on the task", || {
        tasks(&lab, "m1", "n_app").iter().any(|t| {
            t["status"]["state"] == "rejected"
                && t["status"]["err"].as_str().is_some_and(|e| {
                    e.contains("pulling 198.18.0.11:5000/tools/nope:1")
                        && e.contains("manifest unknown")
                })
        })
    });
}


fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}
