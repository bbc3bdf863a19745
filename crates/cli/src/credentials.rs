//! Registry credentials in docker's `config.json` format: `~/.shoal/config.json` (or
//! `$SHOAL_CONFIG/config.json`), `{"auths": {"host:5000": {"auth": base64("user:password")}}}`,
//! and credential helpers (`credHelpers` per registry, or `credsStore`) read with
//! `docker-credential-NAME get`, as docker does. The file is written with mode 0600.

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use serde_json::{json, Value};
use std::io::Write;
use std::path::PathBuf;

fn path() -> Result<PathBuf> {
    let dir = match std::env::var_os("SHOAL_CONFIG") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?).join(".shoal"),
    };
    Ok(dir.join("config.json"))
}

fn load() -> Result<Value> {
    let p = path()?;
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b).with_context(|| format!("reading {}", p.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(json!({})),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

fn save(v: &Value) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let p = path()?;
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = p.with_extension("json.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(serde_json::to_string_pretty(v)?.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &p).with_context(|| format!("writing {}", p.display()))
}

/// Keeps `user`'s credentials for `registry`.
pub fn store(registry: &str, user: &str, password: &str) -> Result<()> {
    let mut v = load()?;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    if !v["auths"].is_object() {
        v["auths"] = json!({});
    }
    v["auths"][registry] = json!({ "auth": auth });
    save(&v)
}

/// Forgets `registry`'s credentials; false when there were none.
pub fn remove(registry: &str) -> Result<bool> {
    let mut v = load()?;
    let removed = v["auths"]
        .as_object_mut()
        .is_some_and(|a| a.remove(registry).is_some());
    if removed {
        save(&v)?;
    }
    Ok(removed)
}

/// The credentials kept for `registry`, from a helper or the file.
pub fn get(registry: &str) -> Result<Option<(String, String)>> {
    let v = load()?;
    let helper = v["credHelpers"][registry]
        .as_str()
        .or_else(|| v["credsStore"].as_str());
    if let Some(helper) = helper {
        let program = format!("docker-credential-{helper}");
        let mut child = std::process::Command::new(&program)
            .arg("get")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("running {program}"))?;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(registry.as_bytes())?;
        let out = child.wait_with_output()?;
        if out.status.success() {
            let c: Value = serde_json::from_slice(&out.stdout)
                .with_context(|| format!("{program} answered no JSON"))?;
            if let (Some(u), Some(p)) = (c["Username"].as_str(), c["Secret"].as_str()) {
                return Ok(Some((u.to_owned(), p.to_owned())));
            }
        }
    }
    let Some(auth) = v["auths"][registry]["auth"].as_str() else {
        return Ok(None);
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(auth)
        .context("config.json: an auth that is not base64")?;
    let decoded = String::from_utf8(decoded).context("config.json: an auth that is not text")?;
    let Some((u, p)) = decoded.split_once(':') else {
        bail!("config.json: an auth that is not user:password");
    };
    Ok(Some((u.to_owned(), p.to_owned())))
}

/// The `X-Registry-Auth` header for pulling `reference`, when credentials are kept for its
/// registry.
pub fn header_for(reference: &str) -> Result<Option<String>> {
    let registry = match reference.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first.to_owned()
        }
        _ => "docker.io".to_owned(),
    };
    Ok(get(&registry)?.map(|(u, p)| {
        base64::engine::general_purpose::STANDARD
            .encode(json!({"username": u, "password": p}).to_string())
    }))
}

/// The credentials kept for `image`'s registry, to send with a service
/// (`--with-registry-auth`).
pub fn registry_auth_for(image: &str) -> Result<Option<shoal_api::service::RegistryAuth>> {
    let Ok(r) = shoal_registry::reference::Reference::parse(image) else {
        return Ok(None);
    };
    Ok(
        get(&r.registry)?.map(|(username, password)| shoal_api::service::RegistryAuth {
            server: r.registry.clone(),
            username,
            password: Some(password),
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_round_trip_in_dockers_format() {
        let d = tempfile::tempdir().unwrap();
        // nextest runs each test in a process of its own: the variable is this test's.
        std::env::set_var("SHOAL_CONFIG", d.path());
        assert_eq!(get("10.0.0.1:5000").unwrap(), None);
        store("10.0.0.1:5000", "alice", "s3:cret").unwrap();
        let v: Value =
            serde_json::from_slice(&std::fs::read(d.path().join("config.json")).unwrap()).unwrap();
        assert_eq!(
            v["auths"]["10.0.0.1:5000"]["auth"],
            base64::engine::general_purpose::STANDARD.encode("alice:s3:cret")
        );
        assert_eq!(
            get("10.0.0.1:5000").unwrap(),
            Some(("alice".into(), "s3:cret".into()))
        );
        assert!(header_for("10.0.0.1:5000/app:1").unwrap().is_some());
        assert!(header_for("busybox").unwrap().is_none());
        assert!(remove("10.0.0.1:5000").unwrap());
        assert!(!remove("10.0.0.1:5000").unwrap());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.path().join("config.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
