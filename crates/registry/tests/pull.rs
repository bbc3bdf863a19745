//! Pulls from a real registry (Debian's docker-registry, distribution 2.8) on the loopback of a
//! network namespace of the test's own, filled by skopeo: an image pushed by skopeo is pulled
//! and its digest matches; an unknown tag says "manifest unknown"; a corrupted blob is refused
//! and the store is left as it was.

use shoal_registry::{pull, Progress, PullOptions, RegistryError};
use shoal_runtime::image::ImageStore;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Registry(Child);

impl Registry {
    /// Starts docker-registry with `config` and waits until it answers on `addr`.
    fn start(config: &Path, addr: &str) -> Registry {
        let registry = Registry(
            Command::new("docker-registry")
                .args(["serve", config.to_str().unwrap()])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        );
        let start = Instant::now();
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the registry on {addr} did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        registry
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An OCI layout of one image: the busybox root filesystem as its layer.
fn busybox_layout(dir: &Path) {
    let rootfs = dir.with_extension("tar");
    shoal_testkit::busybox_tar(&rootfs).unwrap();
    shoal_testkit::oci_layout(dir, &rootfs, &["sh"], shoal_runtime::image::go_arch(), "1").unwrap();
}

/// An OCI layout whose tag `multi` names an index of two images, for this machine's
/// architecture and another; returns the config digest of this machine's.
fn multi_platform_layout(dir: &Path) -> String {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let d = shoal_runtime::digest::Digest::of(bytes).to_string();
        std::fs::write(blobs.join(&d["sha256:".len()..]), bytes).unwrap();
        d
    };
    let rootfs = dir.with_extension("tar");
    shoal_testkit::busybox_tar(&rootfs).unwrap();
    let layer = std::fs::read(&rootfs).unwrap();
    let layer_digest = put(&layer);
    let ours = shoal_runtime::image::go_arch();
    let other = if ours == "arm64" { "amd64" } else { "arm64" };
    let mut entries = Vec::new();
    let mut our_config = String::new();
    for arch in [other, ours] {
        let config = serde_json::json!({
            "architecture": arch, "os": "linux", "config": {"Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        })
        .to_string();
        let config_digest = put(config.as_bytes());
        if arch == ours {
            our_config = config_digest.clone();
        }
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer.len()}],
        })
        .to_string();
        entries.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": put(manifest.as_bytes()), "size": manifest.len(),
            "platform": {"os": "linux", "architecture": arch},
        }));
    }
    let nested = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    })
    .to_string();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json",
                       "digest": put(nested.as_bytes()), "size": nested.len(),
                       "annotations": {"org.opencontainers.image.ref.name": "multi"}}],
    });
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    our_config
}

fn tools() -> bool {
    for (tool, pkg) in [
        ("skopeo", "skopeo"),
        ("docker-registry", "docker-registry"),
        ("ip", "iproute2"),
    ] {
        if shoal_runtime::oci::which(tool).is_none() {
            shoal_testkit::skip(&format!("{tool} is not installed (apt-get install {pkg})"));
            return false;
        }
    }
    if !nix::unistd::geteuid().is_root() {
        shoal_testkit::skip("registry tests need root (a network namespace of their own)");
        return false;
    }
    true
}

#[test]
fn images_pushed_by_skopeo_are_pulled_checked_and_refused_when_corrupt() {
    if !tools() {
        return;
    }
    // A network namespace of this test process's own: the registry's port and every request
    // stay on its loopback.
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
    assert!(Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .unwrap()
        .success());
    let d = tempfile::tempdir().unwrap();
    let storage = d.path().join("registry");
    let config = d.path().join("registry.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:5000\n",
            storage.display()
        ),
    )
    .unwrap();
    let _registry = Registry::start(&config, "127.0.0.1:5000");
    let layout = d.path().join("layout");
    busybox_layout(&layout);
    skopeo(&[
        "--insecure-policy",
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{}:1", layout.display()),
        "docker://127.0.0.1:5000/tools/bb:1",
    ]);
    let pushed_by_skopeo: serde_json::Value = serde_json::from_slice(&skopeo(&[
        "inspect",
        "--tls-verify=false",
        "docker://127.0.0.1:5000/tools/bb:1",
    ]))
    .unwrap();
    let pushed_digest = pushed_by_skopeo["Digest"].as_str().unwrap().to_owned();

    let store = Arc::new(ImageStore::open(&d.path().join("store")).unwrap());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let opts = PullOptions::default();
    let record = rt
        .block_on(pull(
            store.clone(),
            "127.0.0.1:5000/tools/bb:1",
            &opts,
            |_| {},
        ))
        .unwrap();
    assert_eq!(record.manifest.to_string(), pushed_digest);
    let image = store.get("127.0.0.1:5000/tools/bb:1").unwrap();
    assert_eq!(image.record.id, record.id);
    assert!(!store.lower_dirs(&image).is_empty());

    // By digest, too.
    let by_digest = format!("127.0.0.1:5000/tools/bb@{}", pushed_digest);
    let again = rt
        .block_on(pull(store.clone(), &by_digest, &opts, |_| {}))
        .unwrap();
    assert_eq!(again.id, record.id);

    // An unknown tag: the registry's words.
    let err = rt
        .block_on(pull(
            store.clone(),
            "127.0.0.1:5000/tools/bb:nope",
            &opts,
            |_| {},
        ))
        .unwrap_err();
    assert!(
        matches!(&err, RegistryError::Registry { status: 404, .. })
            && err.to_string().contains("manifest unknown"),
        "{err}"
    );

    // A multi-platform index: the pull picks this machine's image.
    let multi = d.path().join("multi");
    let ours = multi_platform_layout(&multi);
    skopeo(&[
        "--insecure-policy",
        "copy",
        "--all",
        "--dest-tls-verify=false",
        &format!("oci:{}:multi", multi.display()),
        "docker://127.0.0.1:5000/tools/multi:1",
    ]);
    let picked = rt
        .block_on(pull(
            store.clone(),
            "127.0.0.1:5000/tools/multi:1",
            &opts,
            |_| {},
        ))
        .unwrap();
    assert_eq!(picked.id.to_string(), ours);

    // Push: an image imported here (a root-filesystem tarball) goes up in chunks; skopeo
    // copies it back and the digests match. The pulled image pushed to another repository of
    // the same registry is mounted there, not sent again.
    let tarball = d.path().join("rootfs.tar");
    shoal_testkit::busybox_tar(&tarball).unwrap();
    let imported = store
        .import(
            &tarball,
            &shoal_runtime::image::ImportOptions {
                tag: Some("local/bb:7".into()),
                ..Default::default()
            },
        )
        .unwrap();
    let pushed = rt
        .block_on(shoal_registry::push(
            store.clone(),
            "local/bb:7",
            "127.0.0.1:5000/pushed/bb:7",
            &opts,
            |_| {},
        ))
        .unwrap();
    assert_eq!(pushed, imported[0].manifest.to_string());
    let back = d.path().join("back");
    skopeo(&[
        "--insecure-policy",
        "copy",
        "--src-tls-verify=false",
        "docker://127.0.0.1:5000/pushed/bb:7",
        &format!("oci:{}:7", back.display()),
    ]);
    let there: serde_json::Value = serde_json::from_slice(&skopeo(&[
        "inspect",
        "--tls-verify=false",
        "docker://127.0.0.1:5000/pushed/bb:7",
    ]))
    .unwrap();
    assert_eq!(
        there["Digest"],
        pushed.as_str(),
        "the registry holds the manifest as pushed"
    );
    let mounted = rt
        .block_on(shoal_registry::push(
            store.clone(),
            "127.0.0.1:5000/tools/bb:1",
            "127.0.0.1:5000/other/bb:1",
            &opts,
            |_| {},
        ))
        .unwrap();
    assert_eq!(mounted, record.manifest.to_string());

    // A layer the host holds already is not fetched again: with the image still here under
    // another name, a pull of a tag needs no layer from the registry.
    store
        .remove("127.0.0.1:5000/tools/bb:1", &|_| Vec::new())
        .unwrap();
    let fetched = std::sync::Mutex::new(Vec::new());
    rt.block_on(pull(
        store.clone(),
        "127.0.0.1:5000/tools/bb:1",
        &opts,
        |p| {
            if let Progress::Start { digest, .. } = p {
                fetched.lock().unwrap().push(digest);
            }
        },
    ))
    .unwrap();
    assert_eq!(fetched.lock().unwrap().len(), 0, "{fetched:?}");

    let empty = || {
        for r in store.list().unwrap() {
            for t in &r.tags {
                let _ = store.remove(t, &|_| Vec::new());
            }
        }
    };
    // Two pulls at once of names that share their blobs fetch each blob once.
    skopeo(&[
        "--insecure-policy",
        "copy",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        "docker://127.0.0.1:5000/tools/bb:1",
        "docker://127.0.0.1:5000/tools/bb:2",
    ]);
    empty();
    fetched.lock().unwrap().clear();
    let count = |p: Progress| {
        if let Progress::Start { digest, .. } = p {
            fetched.lock().unwrap().push(digest);
        }
    };
    let (a, b) = rt.block_on(async {
        futures::join!(
            pull(store.clone(), "127.0.0.1:5000/tools/bb:1", &opts, count),
            pull(store.clone(), "127.0.0.1:5000/tools/bb:2", &opts, count),
        )
    });
    a.unwrap();
    b.unwrap();
    let mut all = fetched.lock().unwrap().clone();
    let n = all.len();
    all.sort();
    all.dedup();
    assert_eq!(n, all.len(), "a blob was fetched twice: {all:?}");

    // A registry that serves a corrupted layer: refused, and the store is as it was (no image
    // here holds that layer any more).
    empty();
    let before = store.list().unwrap();
    // The layer as the registry holds it (skopeo compressed it on the way up).
    let layer = pushed_by_skopeo["Layers"][0].as_str().unwrap();
    let hex = layer.trim_start_matches("sha256:").to_owned();
    let data = storage
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(&hex)
        .join("data");
    let len = std::fs::metadata(&data).unwrap().len();
    std::fs::write(&data, vec![b'x'; len as usize]).unwrap();
    let err = rt
        .block_on(pull(
            store.clone(),
            "127.0.0.1:5000/tools/bb:1",
            &opts,
            |_| {},
        ))
        .unwrap_err();
    assert!(err.to_string().contains("refused"), "{err}");
    assert_eq!(store.list().unwrap(), before);
    let leftovers = std::fs::read_dir(store.root().join("tmp")).unwrap().count();
    assert_eq!(leftovers, 0, "the failed pull left files behind");

    // Over TLS: a registry on an address of this namespace's own (not loopback, so not plain
    // HTTP), its certificate from a CA of the test's; pulled once the CA is in certs.d.
    assert!(Command::new("ip")
        .args(["addr", "add", "192.0.2.1/32", "dev", "lo"])
        .status()
        .unwrap()
        .success());
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let mut server_params = rcgen::CertificateParams::new(vec!["192.0.2.1".to_owned()]).unwrap();
    server_params.subject_alt_names = vec![rcgen::SanType::IpAddress("192.0.2.1".parse().unwrap())];
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server = server_params.signed_by(&server_key, &ca, &ca_key).unwrap();
    std::fs::write(d.path().join("server.crt"), server.pem()).unwrap();
    std::fs::write(d.path().join("server.key"), server_key.serialize_pem()).unwrap();
    let tls_config = d.path().join("tls.yml");
    std::fs::write(
        &tls_config,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: 192.0.2.1:5443\n  tls:\n    certificate: {}\n    key: {}\n",
            d.path().join("tls-data").display(),
            d.path().join("server.crt").display(),
            d.path().join("server.key").display()
        ),
    )
    .unwrap();
    let _tls_registry = Registry::start(&tls_config, "192.0.2.1:5443");
    skopeo(&[
        "--insecure-policy",
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{}:1", layout.display()),
        "docker://192.0.2.1:5443/tools/bb:1",
    ]);
    let certs = d.path().join("certs.d");
    let tls_opts = PullOptions {
        certs_dir: Some(certs.clone()),
        ..PullOptions::default()
    };
    let err = rt
        .block_on(pull(
            store.clone(),
            "192.0.2.1:5443/tools/bb:1",
            &tls_opts,
            |_| {},
        ))
        .unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");
    std::fs::create_dir_all(certs.join("192.0.2.1:5443")).unwrap();
    std::fs::write(certs.join("192.0.2.1:5443/ca.crt"), ca.pem()).unwrap();
    let record = rt
        .block_on(pull(
            store.clone(),
            "192.0.2.1:5443/tools/bb:1",
            &tls_opts,
            |_| {},
        ))
        .unwrap();
    assert_eq!(
        store.get("192.0.2.1:5443/tools/bb:1").unwrap().record.id,
        record.id
    );

    // Basic auth (htpasswd) behind TLS: no credentials and a wrong password are refused in the
    // registry's words; the right ones pull, and `login` checks them the same way.
    let hash = bcrypt::hash("s3cret", 5).unwrap();
    std::fs::write(d.path().join("htpasswd"), format!("alice:{hash}\n")).unwrap();
    let auth_config = d.path().join("auth.yml");
    std::fs::write(
        &auth_config,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             auth:\n  htpasswd:\n    realm: shoal-test\n    path: {}\n\
             http:\n  addr: 192.0.2.1:5444\n  tls:\n    certificate: {}\n    key: {}\n",
            d.path().join("auth-data").display(),
            d.path().join("htpasswd").display(),
            d.path().join("server.crt").display(),
            d.path().join("server.key").display()
        ),
    )
    .unwrap();
    let _auth_registry = Registry::start(&auth_config, "192.0.2.1:5444");
    skopeo(&[
        "--insecure-policy",
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        "alice:s3cret",
        &format!("oci:{}:1", layout.display()),
        "docker://192.0.2.1:5444/private/bb:1",
    ]);
    std::fs::create_dir_all(certs.join("192.0.2.1:5444")).unwrap();
    std::fs::write(certs.join("192.0.2.1:5444/ca.crt"), ca.pem()).unwrap();
    let with = |creds: Option<(&str, &str)>| PullOptions {
        certs_dir: Some(certs.clone()),
        credentials: creds.map(|(u, p)| (u.to_owned(), p.to_owned())),
        ..PullOptions::default()
    };
    let err = rt
        .block_on(pull(
            store.clone(),
            "192.0.2.1:5444/private/bb:1",
            &with(None),
            |_| {},
        ))
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::Registry { status: 401, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("user name and password"), "{err}");
    let err = rt
        .block_on(pull(
            store.clone(),
            "192.0.2.1:5444/private/bb:1",
            &with(Some(("alice", "wrong"))),
            |_| {},
        ))
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::Registry { status: 401, .. }),
        "{err}"
    );
    assert!(rt
        .block_on(shoal_registry::login(
            "192.0.2.1:5444",
            &with(Some(("alice", "wrong")))
        ))
        .is_err());
    rt.block_on(shoal_registry::login(
        "192.0.2.1:5444",
        &with(Some(("alice", "s3cret"))),
    ))
    .unwrap();
    rt.block_on(pull(
        store.clone(),
        "192.0.2.1:5444/private/bb:1",
        &with(Some(("alice", "s3cret"))),
        |_| {},
    ))
    .unwrap();
}

/// Runs skopeo, which must succeed; its output.
fn skopeo(args: &[&str]) -> Vec<u8> {
    let out = Command::new("skopeo").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "skopeo {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}
