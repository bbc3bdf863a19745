//! Image imports: root-filesystem tarballs, `docker save` archives (made here by hand, as
//! docker writes them) and OCI layouts (converted from them by skopeo when it is installed);
//! layer sharing, whiteouts, digest checks, and removal.

use shoal_runtime::digest::Digest;
use shoal_runtime::image::{ImageError, ImageStore, ImportOptions};
use shoal_runtime::rootfs::Overlay;
use std::path::{Path, PathBuf};

fn header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h
}

/// A layer tar from (path, Some(content)) files and (path, None) directories.
fn layer(entries: &[(&str, Option<&str>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (p, content) in entries {
        match content {
            Some(c) => {
                let mut h = header(tar::EntryType::Regular, c.len() as u64, 0o644);
                b.append_data(&mut h, p, c.as_bytes()).unwrap();
            }
            None => {
                let mut h = header(tar::EntryType::Directory, 0, 0o755);
                b.append_data(&mut h, p, std::io::empty()).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

fn base_layer() -> Vec<u8> {
    layer(&[
        ("etc", None),
        ("etc/a", Some("a\n")),
        ("etc/keep", Some("k\n")),
        ("dir", None),
        ("dir/x", Some("x\n")),
        ("dir/y", Some("y\n")),
    ])
}

fn top_layer() -> Vec<u8> {
    layer(&[
        ("etc/.wh.a", Some("")),
        ("dir", None),
        ("dir/.wh..wh..opq", Some("")),
        ("dir/z", Some("z\n")),
    ])
}

/// A `docker save` archive of one image with `layers`; `diff_ids` overrides the config's.
fn docker_save(path: &Path, tag: &str, layers: &[Vec<u8>], diff_ids: Option<Vec<String>>) {
    let ids =
        diff_ids.unwrap_or_else(|| layers.iter().map(|l| Digest::of(l).to_string()).collect());
    let config = serde_json::json!({
        "architecture": shoal_runtime::image::go_arch(),
        "os": "linux",
        "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"], "WorkingDir": "/w", "ExposedPorts": {"80/tcp": {}}},
        "rootfs": {"type": "layers", "diff_ids": ids},
        "history": [{"created_by": "test"}]
    });
    let config = serde_json::to_vec(&config).unwrap();
    let config_name = format!("{}.json", Digest::of(&config).hex());
    let mut names = Vec::new();
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    for (i, l) in layers.iter().enumerate() {
        let name = format!("layer{i}/layer.tar");
        let mut h = header(tar::EntryType::Regular, l.len() as u64, 0o644);
        b.append_data(&mut h, &name, &l[..]).unwrap();
        names.push(name);
    }
    let mut h = header(tar::EntryType::Regular, config.len() as u64, 0o644);
    b.append_data(&mut h, &config_name, &config[..]).unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!([
        {"Config": config_name, "RepoTags": [tag], "Layers": names}
    ]))
    .unwrap();
    let mut h = header(tar::EntryType::Regular, manifest.len() as u64, 0o644);
    b.append_data(&mut h, "manifest.json", &manifest[..])
        .unwrap();
    b.finish().unwrap();
}

fn contents(store: &ImageStore) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let list = |d: PathBuf| {
        let mut v: Vec<PathBuf> = std::fs::read_dir(d)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        v.sort();
        v
    };
    (
        list(store.root().join("blobs/sha256")),
        list(store.root().join("layers")),
    )
}

#[test]
fn rootfs_tarballs_need_a_tag_and_take_changes() {
    let d = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&d.path().join("store")).unwrap();
    let tar = d.path().join("rootfs.tar");
    std::fs::write(&tar, layer(&[("bin", None), ("bin/app", Some("#!"))])).unwrap();
    let err = store.import(&tar, &ImportOptions::default()).unwrap_err();
    assert!(err.to_string().contains("--tag"), "{err}");
    let imported = store
        .import(
            &tar,
            &ImportOptions {
                tag: Some("app:1".into()),
                changes: vec![r#"CMD ["/bin/app"]"#.into(), "ENV MODE=prod".into()],
                source_name: None,
            },
        )
        .unwrap();
    assert_eq!(imported[0].tags, ["app:1"]);
    let img = store.get("app:1").unwrap();
    assert_eq!(img.run_config().cmd, ["/bin/app"]);
    assert!(img.run_config().env.contains(&"MODE=prod".to_string()));
    assert_eq!(
        store.get(&img.record.id.hex()[..12]).unwrap().record.id,
        img.record.id
    );
    assert!(matches!(store.get("app:2"), Err(ImageError::NotFound(_))));
    // Importing the same tarball again adds nothing.
    let before = contents(&store);
    store
        .import(
            &tar,
            &ImportOptions {
                tag: Some("app:1".into()),
                changes: vec![r#"CMD ["/bin/app"]"#.into(), "ENV MODE=prod".into()],
                source_name: None,
            },
        )
        .unwrap();
    assert_eq!(contents(&store).1, before.1);
}

#[test]
fn docker_save_archives_share_layers_and_keep_whiteouts() {
    let d = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&d.path().join("store")).unwrap();
    let one = d.path().join("one.tar");
    let two = d.path().join("two.tar");
    docker_save(&one, "demo:1", &[base_layer(), top_layer()], None);
    docker_save(&two, "demo:base", &[base_layer()], None);
    let a = store.import(&one, &ImportOptions::default()).unwrap();
    let b = store.import(&two, &ImportOptions::default()).unwrap();
    assert_eq!(a[0].tags, ["demo:1"]);
    assert_eq!(b[0].tags, ["demo:base"]);
    assert_eq!(a[0].layers[0], b[0].layers[0], "the base layer is shared");
    assert_eq!(contents(&store).1.len(), 2, "two layers unpacked in all");
    let img = store.get("demo:1").unwrap();
    assert_eq!(img.run_config().working_dir, "/w");
    if !nix::unistd::geteuid().is_root() {
        shoal_testkit::skip("the overlay check needs root");
        return;
    }
    let c = d.path().join("c");
    let o = Overlay::under(&c);
    o.mount(&store.lower_dirs(&img)).unwrap();
    let merged = |p: &str| o.merged.join(p);
    let seen = (
        merged("etc/a").exists(),
        merged("etc/keep").exists(),
        merged("dir/x").exists(),
        merged("dir/z").exists(),
    );
    o.unmount().unwrap();
    assert_eq!(
        seen,
        (false, true, false, true),
        "whiteout hides etc/a, the opaque dir hides dir/x"
    );
}

#[test]
fn bad_archives_are_refused_and_leave_the_store_as_it_was() {
    let d = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&d.path().join("store")).unwrap();
    let good = d.path().join("good.tar");
    docker_save(&good, "demo:good", &[base_layer()], None);
    store.import(&good, &ImportOptions::default()).unwrap();
    let before = (contents(&store), store.list().unwrap());
    let bad = d.path().join("bad.tar");
    let wrong = Digest::of(b"something else").to_string();
    docker_save(
        &bad,
        "demo:bad",
        &[base_layer(), top_layer()],
        Some(vec![Digest::of(&base_layer()).to_string(), wrong]),
    );
    let err = store.import(&bad, &ImportOptions::default()).unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    assert!(err.to_string().contains("digest mismatch"), "{err}");
    assert_eq!((contents(&store), store.list().unwrap()), before);
    // A layer that claims the diff id of one already unpacked is checked all the same.
    let liar = d.path().join("liar.tar");
    docker_save(
        &liar,
        "demo:liar",
        &[top_layer()],
        Some(vec![Digest::of(&base_layer()).to_string()]),
    );
    let err = store.import(&liar, &ImportOptions::default()).unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    assert_eq!((contents(&store), store.list().unwrap()), before);
    let junk = d.path().join("junk.tar");
    std::fs::write(&junk, b"this is not a tar archive at all").unwrap();
    let err = store
        .import(
            &junk,
            &ImportOptions {
                tag: Some("x".into()),
                changes: vec![],
                source_name: None,
            },
        )
        .unwrap_err();
    assert!(err.to_string().contains("junk.tar"), "{err}");
    assert_eq!((contents(&store), store.list().unwrap()), before);
}

#[test]
fn oci_layouts_from_skopeo_import() {
    let Some(skopeo) = shoal_runtime::oci::which("skopeo") else {
        shoal_testkit::skip("skopeo is not installed (apt-get install skopeo)");
        return;
    };
    let d = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&d.path().join("store")).unwrap();
    let docker = d.path().join("docker.tar");
    docker_save(&docker, "demo:1", &[base_layer(), top_layer()], None);
    let oci = d.path().join("oci.tar");
    let out = std::process::Command::new(skopeo)
        .args(["--insecure-policy", "copy"])
        .arg(format!("docker-archive:{}", docker.display()))
        .arg(format!("oci-archive:{}:demo:oci", oci.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let imported = store.import(&oci, &ImportOptions::default()).unwrap();
    assert_eq!(imported[0].tags, ["demo:oci"]);
    assert_eq!(imported[0].layers.len(), 2);
    // The same layers as the docker archive's: nothing new is unpacked.
    let layers = contents(&store).1.len();
    store.import(&docker, &ImportOptions::default()).unwrap();
    assert_eq!(contents(&store).1.len(), layers);
    // A tampered blob is refused.
    let dir = d.path().join("layout");
    std::fs::create_dir_all(&dir).unwrap();
    tar::Archive::new(std::fs::File::open(&oci).unwrap())
        .unpack(&dir)
        .unwrap();
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let manifest_digest = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_owned();
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join("blobs/sha256").join(&manifest_digest)).unwrap(),
    )
    .unwrap();
    let layer = manifest["layers"][1]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_owned();
    let path = dir.join("blobs/sha256").join(layer);
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    let tampered = d.path().join("tampered.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&tampered).unwrap());
    b.append_dir_all(".", &dir).unwrap();
    b.finish().unwrap();
    drop(b);
    let fresh = ImageStore::open(&d.path().join("fresh")).unwrap();
    let err = fresh
        .import(&tampered, &ImportOptions::default())
        .unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    assert!(fresh.list().unwrap().is_empty());
    assert!(contents(&fresh).1.is_empty() && contents(&fresh).0.is_empty());
}

#[test]
fn removal_untags_refuses_while_used_and_collects_layers() {
    let d = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&d.path().join("store")).unwrap();
    let one = d.path().join("one.tar");
    docker_save(&one, "demo:1", &[base_layer(), top_layer()], None);
    store.import(&one, &ImportOptions::default()).unwrap();
    store.tag("demo:1", "demo:latest").unwrap();
    let none = |_: &Digest| Vec::<String>::new();
    assert_eq!(
        store.remove("demo:latest", &none).unwrap(),
        ["Untagged: demo:latest"]
    );
    let used = |_: &Digest| vec!["web.1".to_string()];
    let err = store.remove("demo:1", &used).unwrap_err();
    assert_eq!(
        err.to_string(),
        "image demo:1 is in use by container(s) web.1"
    );
    let done = store.remove("demo:1", &none).unwrap();
    assert_eq!(done[0], "Untagged: demo:1");
    assert!(store.list().unwrap().is_empty());
    assert_eq!(
        contents(&store),
        (vec![], vec![]),
        "blobs and layers are collected"
    );
}

#[test]
fn prune_removes_images_that_lost_their_tags_and_with_all_every_unused_one() {
    let d = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&d.path().join("store")).unwrap();
    let one = d.path().join("one.tar");
    docker_save(&one, "demo:1", &[base_layer()], None);
    let two = d.path().join("two.tar");
    docker_save(&two, "demo:1", &[base_layer(), top_layer()], None);
    let old = store.import(&one, &ImportOptions::default()).unwrap()[0]
        .id
        .clone();
    let new = store.import(&two, &ImportOptions::default()).unwrap()[0]
        .id
        .clone();
    assert_eq!(
        store.list().unwrap().len(),
        2,
        "the old image lost its tag and stays"
    );
    let none = |_: &Digest| Vec::<String>::new();
    let done = store.prune(false, &none).unwrap();
    assert_eq!(done, [format!("Deleted: {old}")]);
    let used = |_: &Digest| vec!["web.1".to_string()];
    assert!(
        store.prune(true, &used).unwrap().is_empty(),
        "an image in use stays"
    );
    let done = store.prune(true, &none).unwrap();
    assert_eq!(done.last().unwrap(), &format!("Deleted: {new}"));
    assert_eq!(contents(&store), (vec![], vec![]));
}

#[test]
fn images_of_many_layers_mount() {
    if !nix::unistd::geteuid().is_root() {
        shoal_testkit::skip("mounting overlayfs needs root");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    // A data root as long as a real one, so the layer paths are as long as they will be.
    let store = ImageStore::open(&d.path().join("var/lib/shoal/images")).unwrap();
    let layers: Vec<Vec<u8>> = (0..60)
        .map(|i| {
            let name = format!("f{i}");
            let content = format!("{i}\n");
            layer(&[(name.as_str(), Some(content.as_str()))])
        })
        .collect();
    let archive = d.path().join("tall.tar");
    docker_save(&archive, "tall:1", &layers, None);
    store.import(&archive, &ImportOptions::default()).unwrap();
    let img = store.get("tall:1").unwrap();
    let o = Overlay::under(&d.path().join("c"));
    o.mount(&store.lower_dirs(&img)).unwrap();
    let seen = (0..60).all(|i| o.merged.join(format!("f{i}")).exists());
    o.unmount().unwrap();
    assert!(seen, "every layer's file is in the merged tree");
}
