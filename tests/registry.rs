//! Images from a registry through the lab: the lab's registry (`shoal-lab up --registry`,
//! Debian's docker-registry) is every host's Docker Hub mirror, so the workers pull the test
//! images instead of importing them; skopeo pushes the probe image there, and a stack whose
//! image exists only in the registry runs on every worker, each pulling it where its task
//! lands; the deploy pins the image to its digest, so a tag moved later changes nothing until
//! the next deploy; an image the registry does not have leaves the registry's reason on the
//! task. A second registry speaks TLS (its CA in the daemons' certs.d) and wants a password:
//! a deploy without `--with-registry-auth` is refused there in the registry's words, one with
//! it runs on every worker, and the password appears in nothing the API shows.

use shoal_cluster_tests::*;
use std::process::Child;

struct Registry(Child);

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The registry that speaks TLS and wants a password (in m1's namespace).
const PRIVATE: &str = "198.18.0.11:5001";
const PASSWORD: &str = "s3cret-pw";

const STACK: &str = "services:
  app:
    image: 198.18.0.250:5000/tools/probe:1
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
    let mut config = shoal_lab::LabConfig::new("reg", 1, 2);
    config.registry = true;
    // The second registry, with TLS and a password, runs in m1's namespace; its CA goes in
    // the daemons' certs.d once the lab is up.
    let certs = shoal_lab::default_dir("reg").join("certs.d");
    config.daemon_args = vec![
        "--registry-certs-dir".into(),
        certs.to_string_lossy().into_owned(),
    ];
    let Some(lab) = container_lab_from(config) else {
        return;
    };
    // Only m1 imported the test images; the workers pull them through the mirror.
    assert!(!lab
        .shoal_ok("w1", &["image", "ls"])
        .unwrap()
        .contains("probe"));
    let dir = lab.state().dir.join("registry-test");
    std::fs::create_dir_all(&dir).unwrap();
    let rootfs = dir.join("probe.tar");
    shoal_testkit::probe_tar(&rootfs).unwrap();
    let layout = dir.join("layout");
    shoal_testkit::oci_layout(&layout, &rootfs, &["/probe"], go_arch(), "1").unwrap();
    wait("the registry to answer", || {
        lab.command("m1", std::path::Path::new("skopeo"))
            .unwrap()
            .args(["--insecure-policy", "copy", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:1", layout.display()))
            .arg("docker://198.18.0.250:5000/tools/probe:1")
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
            images.contains("198.18.0.250:5000/tools/probe"),
            "{w}: {images}"
        );
    }
    // The deploy pinned the image to the digest its tag had (`--resolve-image always`).
    let digest_of = |tag: &str| -> String {
        let out = lab
            .command("m1", std::path::Path::new("skopeo"))
            .unwrap()
            .args(["inspect", "--tls-verify=false"])
            .arg(format!("docker://198.18.0.250:5000/tools/probe:{tag}"))
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
    assert_eq!(image(), format!("198.18.0.250:5000/tools/probe:1@{first}"));
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
        .arg("docker://198.18.0.250:5000/tools/probe:1")
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
    assert_eq!(image(), format!("198.18.0.250:5000/tools/probe:1@{first}"));
    lab.shoal_ok(
        "m1",
        &["stack", "deploy", "--resolve-image", "never", "-c", f, "r"],
    )
    .unwrap();
    assert_eq!(image(), "198.18.0.250:5000/tools/probe:1");
    lab.shoal_ok("m1", &deploy_args(f, "r")).unwrap();
    assert_eq!(image(), format!("198.18.0.250:5000/tools/probe:1@{second}"));
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
        .shoal_ok("m1", &["image", "pull", "198.18.0.250:5000/tools/probe:1"])
        .unwrap();
    assert!(
        out.contains("Pulled: 198.18.0.250:5000/tools/probe:1"),
        "{out}"
    );
    // `image push` from one node, `image pull` on another.
    let out = lab
        .shoal_ok(
            "m1",
            &["image", "push", "probe", "198.18.0.250:5000/tools/mine:2"],
        )
        .unwrap();
    assert!(
        out.contains("Pushed: 198.18.0.250:5000/tools/mine:2"),
        "{out}"
    );
    let out = lab
        .shoal_ok("w1", &["image", "pull", "198.18.0.250:5000/tools/mine:2"])
        .unwrap();
    assert!(
        out.contains("Pulled: 198.18.0.250:5000/tools/mine:2"),
        "{out}"
    );
    // `service update --image` pins the new image too.
    lab.shoal_ok(
        "m1",
        &[
            "service",
            "update",
            "--image",
            "198.18.0.250:5000/tools/mine:2",
            "r_app",
        ],
    )
    .unwrap();
    let mine = {
        let out = lab
            .command("m1", std::path::Path::new("skopeo"))
            .unwrap()
            .args(["inspect", "--tls-verify=false"])
            .arg("docker://198.18.0.250:5000/tools/mine:2")
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["Digest"].as_str().unwrap().to_owned()
    };
    assert_eq!(image(), format!("198.18.0.250:5000/tools/mine:2@{mine}"));

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
                    e.contains("pulling 198.18.0.250:5000/tools/nope:1")
                        && e.contains("manifest unknown")
                })
        })
    });
    // The workers pull Docker Hub's images through the lab's mirror.
    deploy(
        &lab,
        "m1",
        "h",
        "services:\n  bb:\n    image: busybox\n    command: [\"sleep\", \"600\"]\n    deploy:\n      mode: global\n      placement:\n        constraints: [node.role == worker]\n",
    );
    assert!(lab
        .shoal_ok("w2", &["image", "ls"])
        .unwrap()
        .contains("busybox"));

    // A registry that wants a password, over TLS with a CA of the test's, which the daemons
    // find in their certs.d; the CLI keeps its credentials in a file of its own.
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let host = PRIVATE.split(':').next().unwrap();
    let mut server_params = rcgen::CertificateParams::new(vec![host.to_owned()]).unwrap();
    server_params.subject_alt_names = vec![rcgen::SanType::IpAddress(host.parse().unwrap())];
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server = server_params.signed_by(&server_key, &ca, &ca_key).unwrap();
    std::fs::write(dir.join("server.crt"), server.pem()).unwrap();
    std::fs::write(dir.join("server.key"), server_key.serialize_pem()).unwrap();
    std::fs::create_dir_all(certs.join(PRIVATE)).unwrap();
    std::fs::write(certs.join(PRIVATE).join("ca.crt"), ca.pem()).unwrap();
    let hash = bcrypt::hash(PASSWORD, 4).unwrap();
    std::fs::write(dir.join("htpasswd"), format!("alice:{hash}\n")).unwrap();
    let config = dir.join("private.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             auth:\n  htpasswd:\n    realm: shoal-test\n    path: {}\n\
             http:\n  addr: {PRIVATE}\n  tls:\n    certificate: {}\n    key: {}\n",
            dir.join("private-data").display(),
            dir.join("htpasswd").display(),
            dir.join("server.crt").display(),
            dir.join("server.key").display()
        ),
    )
    .unwrap();
    let _private = Registry(
        lab.command("m1", std::path::Path::new("docker-registry"))
            .unwrap()
            .args(["serve", config.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let cli_config = dir.join("cli");
    let shoal_bin = lab.state().bin_dir.join("shoal");
    let shoal = |host: &str, args: &[&str]| -> std::process::Output {
        lab.command(host, &shoal_bin)
            .unwrap()
            .env("SHOAL_CONFIG", &cli_config)
            .args(args)
            .output()
            .unwrap()
    };
    wait("the private registry to refuse a wrong password", || {
        let out = shoal("m1", &["login", "-u", "alice", "-p", "wrong", PRIVATE]);
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr)
                .contains("unauthorized: authentication required")
    });
    let out = shoal("m1", &["login", "-u", "alice", "-p", PASSWORD, PRIVATE]);
    assert!(out.status.success(), "{out:?}");
    let image = format!("{PRIVATE}/private/probe:1");
    let out = shoal("m1", &["image", "push", "probe", &image]);
    assert!(out.status.success(), "{out:?}");

    // Without --with-registry-auth the workers are refused, in the registry's words.
    let file = dir.join("p.yml");
    std::fs::write(
        &file,
        STACK
            .replace("198.18.0.250:5000/tools/probe:1", &image)
            .replace("replicas: 2", "replicas: 1"),
    )
    .unwrap();
    let out = shoal(
        "m1",
        &["stack", "deploy", "-c", file.to_str().unwrap(), "p"],
    );
    assert!(out.status.success(), "{out:?}");
    wait("the refused pull to show on the task", || {
        tasks(&lab, "m1", "p_app").iter().any(|t| {
            t["status"]["state"] == "rejected"
                && t["status"]["err"]
                    .as_str()
                    .is_some_and(|e| e.contains(&image) && e.contains("user name and password"))
        })
    });

    // With it, both workers pull with the deployer's credentials, and the deploy pins the
    // digest (the manager resolved the tag with them too).
    let file = dir.join("q.yml");
    std::fs::write(
        &file,
        STACK.replace("198.18.0.250:5000/tools/probe:1", &image),
    )
    .unwrap();
    let out = shoal(
        "m1",
        &[
            "stack",
            "deploy",
            "--with-registry-auth",
            "--wait",
            "-c",
            file.to_str().unwrap(),
            "q",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("could not be accessed"),
        "{out:?}"
    );
    let on: std::collections::BTreeSet<String> = running_on(&lab, "m1", "q_app")
        .iter()
        .map(|n| hosts[n].clone())
        .collect();
    assert_eq!(on, ["w1", "w2"].map(String::from).into());
    let inspect = lab
        .shoal_ok("m1", &["--format", "json", "service", "inspect", "q_app"])
        .unwrap();
    let s: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    let container = &s[0]["spec"]["task"]["container"];
    assert_eq!(container["registry_auth"]["username"], "alice");
    assert!(container["image"].as_str().unwrap().contains("@sha256:"));
    // The password is in nothing the API shows: services, tasks, events.
    let tasks_json = lab
        .shoal_ok("m1", &["--format", "json", "service", "ps", "q_app"])
        .unwrap();
    let events = events_so_far(&lab, "m1");
    assert!(events.contains("q_app"), "{events}");
    for shown in [&inspect, &tasks_json, &events] {
        assert!(!shown.contains(PASSWORD), "{shown}");
    }
    // An update without the flag keeps the credentials.
    let out = shoal("m1", &["service", "update", "--replicas", "1", "q_app"]);
    assert!(out.status.success(), "{out:?}");
    wait("q_app to scale to 1", || {
        running_on(&lab, "m1", "q_app").len() == 1
    });
    let again: serde_json::Value = serde_json::from_str(
        &lab.shoal_ok("m1", &["--format", "json", "service", "inspect", "q_app"])
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        again[0]["spec"]["task"]["container"]["registry_auth"]["username"],
        "alice"
    );
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}
