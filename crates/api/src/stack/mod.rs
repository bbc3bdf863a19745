//! Stack files: the Compose format as `docker stack deploy` reads it.
//!
//! [`load`] turns one or more files into a normalized [`compose::Config`], the same shape
//! `docker stack config` prints; [`convert::convert`] turns that into the network and service
//! specs of a stack named `<stack>_<name>`. Both are pure: files, the environment and the working
//! directory come in as arguments, so the CLI does the reading and tests pass fixtures.
//!
//! The steps per file, in docker/cli's order: parse (anchors, merge keys, YAML 1.1 typing) →
//! refuse forbidden keys → interpolate variables → set aside `x-` extensions and keys docker
//! ignores (with docker's warnings) → read into typed, normalized form → resolve paths and
//! environment files. Then files are merged, later ones overriding earlier ones.

pub mod compose;
pub mod convert;
pub mod interpolate;
pub mod render;
pub mod yaml;

use compose::Config;
use serde_json::{Map, Value as J};
use std::collections::{BTreeMap, HashMap};

/// Keys `docker stack deploy` refuses, with the advice it gives.
pub const FORBIDDEN: &[(&str, &str)] = &[
    ("extends", "Support for `extends` is not implemented yet."),
    ("volume_driver", "Instead of setting the volume driver on the service, define a volume using the top-level `volumes` option and specify the driver there."),
    ("volumes_from", "To share a volume between services, define it using the top-level `volumes` option and reference it from each service that shares it using the service-level `volumes` option."),
    ("cpu_quota", "Set resource limits using deploy.resources"),
    ("cpu_shares", "Set resource limits using deploy.resources"),
    ("cpuset", "Set resource limits using deploy.resources"),
    ("mem_limit", "Set resource limits using deploy.resources"),
    ("memswap_limit", "Set resource limits using deploy.resources"),
];

/// Service keys `docker stack deploy` ignores with "Ignoring unsupported options". `restart` is
/// among them yet still read, as docker reads it, when `deploy.restart_policy` is absent.
pub const UNSUPPORTED: &[&str] = &[
    "build",
    "cgroup_parent",
    "cgroupns_mode",
    "devices",
    "domainname",
    "external_links",
    "ipc",
    "links",
    "mac_address",
    "network_mode",
    "pid",
    "restart",
    "shm_size",
    "sysctls",
    "ulimits",
    "userns_mode",
];

/// Service keys docker ignores as deprecated, with its explanation.
pub const DEPRECATED: &[(&str, &str)] = &[
    ("container_name", "Setting the container name is not supported."),
    ("expose", "Exposing ports is unnecessary - services on the same network can access each other's containers on any port."),
];

/// Service keys Docker Swarm honours and shoal does not yet: accepted with a warning.
pub const NOT_YET: &[&str] = &[
    "credential_spec",
    "dns",
    "dns_search",
    "extra_hosts",
    "isolation",
    "oom_score_adj",
];

/// A stack file's name and text.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// Name used in messages (the path as given).
    pub name: String,
    /// The YAML text.
    pub content: String,
}

/// What the loader may consult besides the files.
pub struct LoadOptions<'a> {
    /// Variables for interpolation and for environment entries without a value.
    pub env: &'a HashMap<String, String>,
    /// Directory relative paths are resolved against (the first file's directory).
    pub working_dir: &'a str,
    /// Reads an `env_file` (path already resolved against `working_dir`).
    pub read_file: &'a dyn Fn(&str) -> Result<String, String>,
    /// Take `$` literally (for text that was interpolated already, as docker's own output).
    pub skip_interpolation: bool,
}

impl std::fmt::Debug for LoadOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadOptions")
            .field("working_dir", &self.working_dir)
            .finish()
    }
}

/// A loaded stack and what the user should be told about it.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The normalized, merged configuration.
    pub config: Config,
    /// Warnings, worded as docker words them where docker warns.
    pub warnings: Vec<String>,
    /// The top-level `x-` extensions (a later file's replace an earlier's), kept for
    /// `stack config`.
    pub extensions: Map<String, J>,
}

/// A stack file is not valid. Every variant names the file, and the key path and line where
/// known. Nothing is deployed from a file that fails to load.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LoadError {
    /// Not YAML.
    #[error("{file}:{line}: not valid YAML: {message}")]
    Syntax {
        /// File.
        file: String,
        /// Line.
        line: usize,
        /// Parser's message.
        message: String,
    },
    /// Keys docker refuses.
    #[error("{file}: Compose file contains unsupported options:\n\n{}", list_forbidden(.found))]
    Forbidden {
        /// File.
        file: String,
        /// (service.key, advice, line).
        found: Vec<(String, &'static str, usize)>,
    },
    /// A variable could not be substituted.
    #[error("{file}:{line}: {source}")]
    Interpolation {
        /// File.
        file: String,
        /// Line.
        line: usize,
        /// What went wrong.
        #[source]
        source: interpolate::InterpolateError,
    },
    /// A key has a wrong value or is unknown.
    #[error("{file}:{}: {path}: {message}", line.map(|l| l.to_string()).unwrap_or_else(|| "?".into()))]
    Invalid {
        /// File.
        file: String,
        /// Key path, as `services.web.deploy.replicas`.
        path: String,
        /// Line, when known.
        line: Option<usize>,
        /// What is wrong.
        message: String,
    },
}

fn list_forbidden(found: &[(String, &'static str, usize)]) -> String {
    found
        .iter()
        .map(|(key, advice, line)| format!("line {line}: {key}: {advice}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl LoadError {
    fn invalid(file: &str, path: &str, lines: &HashMap<String, usize>, message: String) -> Self {
        LoadError::Invalid {
            file: file.to_owned(),
            path: path.to_owned(),
            line: line_of(lines, path),
            message,
        }
    }
}

/// The line of `path`, or of its nearest ancestor that has one.
fn line_of(lines: &HashMap<String, usize>, path: &str) -> Option<usize> {
    let mut p = path;
    loop {
        if let Some(l) = lines.get(p) {
            return Some(*l);
        }
        let cut = p.rfind(['.', '['])?;
        p = &p[..cut];
    }
}

/// Loads and merges stack files (later files override earlier ones, as docker merges them).
pub fn load(files: &[SourceFile], opts: &LoadOptions<'_>) -> Result<Loaded, LoadError> {
    let mut warnings = Vec::new();
    let mut merged: Option<J> = None;
    let mut extensions = Map::new();
    for file in files {
        let (config, x) = load_one(file, opts, &mut warnings)?;
        extensions.extend(x);
        let value = serde_json::to_value(&config).expect("config serializes");
        merged = Some(match merged {
            None => value,
            Some(base) => merge_configs(base, value),
        });
    }
    let merged = merged.unwrap_or_else(|| J::Object(Map::new()));
    let config: Config = serde_json::from_value(merged).map_err(|e| LoadError::Invalid {
        file: files.last().map(|f| f.name.clone()).unwrap_or_default(),
        path: String::new(),
        line: None,
        message: format!("merged files do not agree: {e}"),
    })?;
    // The merge went through JSON, which leaves the profiles out: read them for the result.
    let mut config = config;
    for (name, service) in config.services.iter_mut() {
        for (i, opt) in service.security_opt.iter().enumerate() {
            if let SecurityOpt::SeccompProfile(path) = security_opt(opt) {
                let full = join_path(opts.working_dir, path);
                let profile = (opts.read_file)(&full)
                    .map_err(|e| format!("cannot read {full}: {e}"))
                    .and_then(|text| {
                        crate::security::parse_profile(&text)
                            .map_err(|e| format!("seccomp profile {full}: {e}"))
                    })
                    .map_err(|message| LoadError::Invalid {
                        file: files.last().map(|f| f.name.clone()).unwrap_or_default(),
                        path: format!("services.{name}.security_opt[{i}]"),
                        line: None,
                        message,
                    })?;
                service.seccomp_profile = Some(profile);
            }
        }
    }
    // A cycle that only the merge of several files makes.
    if let Some(cycle) = convert::dependency_cycle(&config) {
        return Err(LoadError::Invalid {
            file: files.last().map(|f| f.name.clone()).unwrap_or_default(),
            path: "services".into(),
            line: None,
            message: format!("depends_on has a cycle: {cycle}"),
        });
    }
    warnings.dedup();
    Ok(Loaded {
        config,
        warnings,
        extensions,
    })
}

fn load_one(
    file: &SourceFile,
    opts: &LoadOptions<'_>,
    warnings: &mut Vec<String>,
) -> Result<(Config, Map<String, J>), LoadError> {
    let name = file.name.as_str();
    let mut tree = yaml::parse(&file.content).map_err(|e| LoadError::Syntax {
        file: name.to_owned(),
        line: e.line,
        message: e.message,
    })?;
    let yaml::Value::Map(top) = &tree.value else {
        return Err(LoadError::Invalid {
            file: name.to_owned(),
            path: String::new(),
            line: Some(tree.line),
            message: "the top level must be a mapping".into(),
        });
    };
    check_forbidden(name, top)?;
    if !opts.skip_interpolation {
        interpolate::interpolate_tree(&mut tree, opts.env).map_err(|(line, source)| {
            LoadError::Interpolation {
                file: name.to_owned(),
                line,
                source,
            }
        })?;
    }
    let mut lines = HashMap::new();
    let mut value = yaml::to_json(&tree, "", &mut lines);
    let extensions: Map<String, J> = value
        .as_object()
        .map(|top| {
            top.iter()
                .filter(|(k, _)| k.starts_with("x-"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    set_aside_ignored(&mut value, warnings);
    move_external_names(&mut value);
    let mut config: Config = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        let message = match message.strip_prefix("unknown field ") {
            Some(rest) => format!(
                "additional property {} is not allowed",
                rest.split(',').next().unwrap_or(rest).trim_matches('`')
            ),
            None => message,
        };
        LoadError::invalid(name, &path, &lines, message)
    })?;
    if let Some(v) = &config.version {
        if !v.starts_with('3') {
            return Err(LoadError::invalid(
                name,
                "version",
                &lines,
                format!("unsupported Compose file version {v:?}: docker stack deploy reads version 3 files (or files without a version)"),
            ));
        }
    }
    resolve(&mut config, name, opts, &lines)?;
    if let Some(cycle) = convert::dependency_cycle(&config) {
        let first = cycle.split(" -> ").next().unwrap_or_default();
        return Err(LoadError::invalid(
            name,
            &format!("services.{first}.depends_on"),
            &lines,
            format!("a cycle: {cycle}"),
        ));
    }
    Ok((config, extensions))
}

fn check_forbidden(file: &str, top: &[(String, yaml::Node)]) -> Result<(), LoadError> {
    let mut found = Vec::new();
    for (key, services) in top {
        if key != "services" {
            continue;
        }
        let yaml::Value::Map(services) = &services.value else {
            continue;
        };
        for (service, def) in services {
            let yaml::Value::Map(def) = &def.value else {
                continue;
            };
            for (k, v) in def {
                if let Some((_, advice)) = FORBIDDEN.iter().find(|(f, _)| f == k) {
                    found.push((format!("services.{service}.{k}"), *advice, v.line));
                }
            }
        }
    }
    if found.is_empty() {
        Ok(())
    } else {
        Err(LoadError::Forbidden {
            file: file.to_owned(),
            found,
        })
    }
}

/// Removes `x-` extensions and the service keys docker ignores, recording docker's warnings.
fn set_aside_ignored(value: &mut J, warnings: &mut Vec<String>) {
    let Some(top) = value.as_object_mut() else {
        return;
    };
    top.retain(|k, _| !k.starts_with("x-"));
    for section in ["networks", "volumes", "secrets", "configs"] {
        if let Some(J::Object(entries)) = top.get_mut(section) {
            for entry in entries.values_mut() {
                if let J::Object(fields) = entry {
                    fields.retain(|k, _| !k.starts_with("x-"));
                }
            }
        }
    }
    let mut unsupported = Vec::new();
    let mut deprecated = Vec::new();
    let mut not_yet = Vec::new();
    if let Some(J::Object(services)) = top.get_mut("services") {
        for service in services.values_mut() {
            let J::Object(fields) = service else { continue };
            fields.retain(|k, _| !k.starts_with("x-"));
            for key in fields.keys() {
                if UNSUPPORTED.contains(&key.as_str()) {
                    unsupported.push(key.clone());
                } else if let Some((k, why)) = DEPRECATED.iter().find(|(d, _)| d == key) {
                    deprecated.push(format!("{k}: {why}"));
                } else if NOT_YET.contains(&key.as_str()) {
                    not_yet.push(key.clone());
                }
            }
            // `restart` stays: it becomes the restart policy when deploy has none.
            fields.retain(|k, _| {
                k == "restart"
                    || !(UNSUPPORTED.contains(&k.as_str())
                        || DEPRECATED.iter().any(|(d, _)| d == k)
                        || NOT_YET.contains(&k.as_str()))
            });
            let generic = ["limits", "reservations"].into_iter().any(|kind| {
                fields
                    .get_mut("deploy")
                    .and_then(|d| d.get_mut("resources"))
                    .and_then(|r| r.get_mut(kind))
                    .and_then(J::as_object_mut)
                    .and_then(|r| r.remove("generic_resources"))
                    .is_some()
            });
            if generic {
                not_yet.push("deploy.resources.*.generic_resources".into());
            }
            // Read, but no terminal or open stdin is given to a main process yet.
            for key in ["tty", "stdin_open"] {
                if fields.get(key) == Some(&J::Bool(true)) {
                    not_yet.push(key.to_owned());
                }
            }
            if let Some(J::Array(opts)) = fields.get("security_opt") {
                for o in opts.iter().filter_map(J::as_str) {
                    match security_opt(o) {
                        SecurityOpt::Ignored => {
                            not_yet.push(format!("security_opt {o} (no such security module)"))
                        }
                        SecurityOpt::NoNewPrivileges(false) => {
                            not_yet.push(format!("security_opt {o} (no_new_privs is always set)"))
                        }
                        _ => {}
                    }
                }
            }
            let driver = fields
                .get("logging")
                .and_then(|l| l.get("driver"))
                .and_then(J::as_str);
            if let Some(d) = driver {
                if !crate::service::LOG_DRIVERS.contains(&d) {
                    not_yet.push(format!("logging.driver {d} (json-file is used)"));
                }
            }
        }
    }
    for section in ["secrets", "configs"] {
        if let Some(J::Object(entries)) = top.get(section) {
            for (name, entry) in entries {
                for key in ["driver", "template_driver"] {
                    if entry.get(key).is_some() {
                        not_yet.push(format!("{section}.{name}.{key}"));
                    }
                }
            }
        }
    }
    for list in [&mut unsupported, &mut deprecated, &mut not_yet] {
        list.sort();
        list.dedup();
    }
    if !unsupported.is_empty() {
        warnings.push(format!(
            "Ignoring unsupported options: {}",
            unsupported.join(", ")
        ));
    }
    if !deprecated.is_empty() {
        warnings.push(format!(
            "Ignoring deprecated options:\n\n{}",
            deprecated.join("\n")
        ));
    }
    if !not_yet.is_empty() {
        warnings.push(format!(
            "Ignoring options shoal does not support yet: {}",
            not_yet.join(", ")
        ));
    }
}

/// `external: {name: x}` (the older form) becomes `name: x, external: true`; an external object
/// without a name is named by its key, as docker does.
fn move_external_names(value: &mut J) {
    for section in ["networks", "volumes", "secrets", "configs"] {
        let Some(J::Object(entries)) = value.get_mut(section) else {
            continue;
        };
        for (key, entry) in entries.iter_mut() {
            let J::Object(fields) = entry else { continue };
            if let Some(J::Object(ext)) = fields.get("external") {
                if let Some(name) = ext.get("name").cloned() {
                    fields.insert("name".into(), name);
                }
                fields.insert("external".into(), J::Bool(true));
            }
            if fields.get("external") == Some(&J::Bool(true)) && !fields.contains_key("name") {
                fields.insert("name".into(), J::String(key.clone()));
            }
        }
    }
}

/// A relative path joined to `dir` and cleaned as docker's loader does (Go's `filepath.Join`:
/// no `.`, `..` or trailing `/`); an absolute path is kept as written, as docker keeps it.
fn join_path(dir: &str, p: &str) -> String {
    if p.starts_with('/') {
        return p.to_owned();
    }
    clean_path(&format!("{dir}/{p}"))
}

/// Go's `path.Clean`, lexically.
fn clean_path(p: &str) -> String {
    let rooted = p.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|l| *l != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            other => parts.push(other),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_owned(),
        (false, false) => joined,
    }
}

/// Reads env-file text as docker does: `KEY=VALUE` lines, `#` comments, a bare `KEY` taken from
/// the environment.
pub fn parse_env_file(text: &str) -> Vec<(String, Option<String>)> {
    text.lines()
        .map(str::trim_start)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| match l.split_once('=') {
            Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
            None => (l.trim_end().to_owned(), None),
        })
        .collect()
}

/// One `security_opt` entry, as Docker reads it (`=` or the older `:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecurityOpt<'a> {
    /// `seccomp=unconfined`.
    SeccompUnconfined,
    /// `seccomp=PATH`.
    SeccompProfile(&'a str),
    /// `no-new-privileges`, `no-new-privileges=true`: always on in shoal.
    NoNewPrivileges(bool),
    /// `apparmor=...`, `label=...`: no such module here; read with a warning.
    Ignored,
    /// Anything else.
    Unknown,
}

/// Reads one `security_opt` entry.
pub fn security_opt(opt: &str) -> SecurityOpt<'_> {
    let (key, value) = match opt.split_once(['=', ':']) {
        Some((k, v)) => (k, Some(v)),
        None => (opt, None),
    };
    match (key, value) {
        ("seccomp", Some("unconfined")) => SecurityOpt::SeccompUnconfined,
        ("seccomp", Some(path)) if !path.is_empty() => SecurityOpt::SeccompProfile(path),
        ("no-new-privileges", None) => SecurityOpt::NoNewPrivileges(true),
        ("no-new-privileges", Some("true")) => SecurityOpt::NoNewPrivileges(true),
        ("no-new-privileges", Some("false")) => SecurityOpt::NoNewPrivileges(false),
        ("apparmor" | "label", Some(_)) => SecurityOpt::Ignored,
        _ => SecurityOpt::Unknown,
    }
}

fn resolve(
    config: &mut Config,
    file: &str,
    opts: &LoadOptions<'_>,
    lines: &HashMap<String, usize>,
) -> Result<(), LoadError> {
    let lookup = |k: &str| opts.env.get(k).cloned();
    for (name, service) in config.services.iter_mut() {
        // Environment: files first, then the service's own entries; an entry without a value
        // takes the loader's environment.
        let mut env: BTreeMap<String, Option<String>> = BTreeMap::new();
        let mut put = |k: String, v: Option<String>| {
            let resolved = match v {
                Some(v) if !v.is_empty() => Some(v),
                other => lookup(&k).or(other),
            };
            env.insert(k, resolved);
        };
        for (i, env_file) in service.env_file.iter().enumerate() {
            let path = join_path(opts.working_dir, env_file);
            let text = (opts.read_file)(&path).map_err(|e| {
                LoadError::invalid(
                    file,
                    &format!("services.{name}.env_file[{i}]"),
                    lines,
                    format!("cannot read {path}: {e}"),
                )
            })?;
            for (k, v) in parse_env_file(&text) {
                put(k, v);
            }
        }
        for (k, v) in std::mem::take(&mut service.environment) {
            put(k, v);
        }
        service.environment = env;
        for (i, opt) in service.security_opt.iter().enumerate() {
            let key = format!("services.{name}.security_opt[{i}]");
            match security_opt(opt) {
                SecurityOpt::SeccompProfile(path) => {
                    let full = join_path(opts.working_dir, path);
                    let text = (opts.read_file)(&full).map_err(|e| {
                        LoadError::invalid(file, &key, lines, format!("cannot read {full}: {e}"))
                    })?;
                    // Checked here for the line; read again once the files are merged.
                    crate::security::parse_profile(&text).map_err(|e| {
                        LoadError::invalid(
                            file,
                            &key,
                            lines,
                            format!("seccomp profile {full}: {e}"),
                        )
                    })?;
                }
                SecurityOpt::Unknown => {
                    return Err(LoadError::invalid(
                        file,
                        &key,
                        lines,
                        format!(
                            "unknown option {opt:?} (use seccomp=unconfined, \
                             seccomp=PROFILE.json or no-new-privileges)"
                        ),
                    ))
                }
                _ => {}
            }
        }
        for (list, which) in [
            (&service.cap_add, "cap_add"),
            (&service.cap_drop, "cap_drop"),
        ] {
            for (i, c) in list.iter().enumerate() {
                if crate::security::normalize_capability(c).is_none() {
                    return Err(LoadError::invalid(
                        file,
                        &format!("services.{name}.{which}[{i}]"),
                        lines,
                        format!("unknown capability {c:?}"),
                    ));
                }
            }
        }
        for (i, mount) in service.volumes.iter_mut().enumerate() {
            if mount.kind != "bind" {
                continue;
            }
            let Some(source) = mount.source.as_mut() else {
                return Err(LoadError::invalid(
                    file,
                    &format!("services.{name}.volumes[{i}]"),
                    lines,
                    "a bind mount needs a source".into(),
                ));
            };
            if let Some(rest) = source.strip_prefix('~') {
                if let Some(home) = lookup("HOME") {
                    *source = format!("{home}{rest}");
                }
            }
            *source = join_path(opts.working_dir, source);
        }
    }
    for obj in config
        .secrets
        .values_mut()
        .chain(config.configs.values_mut())
    {
        if let Some(f) = obj.file.as_mut() {
            *f = join_path(opts.working_dir, f);
        }
    }
    Ok(())
}

/// Merges two normalized configs as docker/cli does: services merge key by key, with maps
/// merged, `command`/`entrypoint` and scalars replaced, ports, volumes, secrets and configs
/// merged by their identity (published port, target, source) and other lists appended; the
/// top-level networks, volumes, secrets and configs are replaced entry by entry.
pub fn merge_configs(base: J, over: J) -> J {
    let (J::Object(mut base), J::Object(over)) = (base, over) else {
        return J::Null;
    };
    for (key, value) in over {
        match key.as_str() {
            "services" => {
                let entry = base.entry(key).or_insert_with(|| J::Object(Map::new()));
                if let (J::Object(b), J::Object(o)) = (entry, value) {
                    for (name, service) in o {
                        let merged = match b.remove(&name) {
                            Some(existing) => merge_service(existing, service),
                            None => service,
                        };
                        b.insert(name, merged);
                    }
                }
            }
            "networks" | "volumes" | "secrets" | "configs" => {
                let entry = base.entry(key).or_insert_with(|| J::Object(Map::new()));
                if let (J::Object(b), J::Object(o)) = (entry, value) {
                    b.extend(o);
                }
            }
            _ => {
                base.insert(key, value);
            }
        }
    }
    J::Object(base)
}

fn identity(list: &str, item: &J) -> Option<String> {
    let field = |k: &str| item.get(k).map(|v| v.to_string()).unwrap_or_default();
    match list {
        "ports" => Some(format!("{}/{}", field("published"), field("target"))),
        "volumes" => Some(field("target")),
        "secrets" | "configs" => Some(field("source")),
        _ => None,
    }
}

fn merge_service(base: J, over: J) -> J {
    merge_value("", base, over)
}

fn merge_value(key: &str, base: J, over: J) -> J {
    match (base, over) {
        (J::Object(mut b), J::Object(o)) => {
            for (k, v) in o {
                let merged = match b.remove(&k) {
                    Some(existing) => merge_value(&k, existing, v),
                    None => v,
                };
                b.insert(k, merged);
            }
            J::Object(b)
        }
        (J::Array(mut b), J::Array(o)) if !matches!(key, "command" | "entrypoint" | "test") => {
            for item in o {
                match identity(key, &item) {
                    Some(id) => {
                        if let Some(pos) = b
                            .iter()
                            .position(|e| identity(key, e).as_ref() == Some(&id))
                        {
                            b[pos] = item;
                        } else {
                            b.push(item);
                        }
                    }
                    None => b.push(item),
                }
            }
            J::Array(b)
        }
        (_, over) => over,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts_with<'a>(env: &'a HashMap<String, String>) -> LoadOptions<'a> {
        LoadOptions {
            env,
            working_dir: "/srv",
            read_file: &|p| Err(format!("no file {p}")),
            skip_interpolation: false,
        }
    }

    fn load_str(src: &str) -> Result<Loaded, LoadError> {
        let env = HashMap::from([("TAG".to_owned(), "1.2".to_owned())]);
        load(
            &[SourceFile {
                name: "stack.yml".into(),
                content: src.into(),
            }],
            &opts_with(&env),
        )
    }

    #[test]
    fn a_depends_on_cycle_is_refused_at_load_time() {
        let err = load_str(
            "services:\n  a:\n    image: x\n    depends_on: [b]\n  b:\n    image: x\n    depends_on: [a]\n",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "stack.yml:4: services.a.depends_on: a cycle: a -> b -> a"
        );
    }

    #[test]
    fn keys_read_but_not_honoured_are_named_in_a_warning() {
        let l = load_str(
            "services:\n  a:\n    image: x\n    tty: true\n    stdin_open: false\nsecrets:\n  s:\n    file: ./x\n    template_driver: golang\n",
        )
        .unwrap();
        assert_eq!(
            l.warnings,
            ["Ignoring options shoal does not support yet: secrets.s.template_driver, tty"]
        );
    }

    #[test]
    fn a_small_stack_loads_and_normalizes() {
        let l = load_str(
            "version: '3.9'\nservices:\n  web:\n    image: nginx:${TAG}\n    ports: ['8080:80']\n    deploy:\n      replicas: 3\n      restart_policy: {condition: on-failure, delay: 90s}\n",
        )
        .unwrap();
        let web = &l.config.services["web"];
        assert_eq!(web.image.as_deref(), Some("nginx:1.2"));
        assert_eq!(web.ports[0].published, Some(8080));
        let deploy = web.deploy.as_ref().unwrap();
        assert_eq!(deploy.replicas, Some(3));
        assert_eq!(
            deploy
                .restart_policy
                .as_ref()
                .unwrap()
                .delay
                .unwrap()
                .to_string(),
            "1m30s"
        );
    }

    #[test]
    fn errors_name_file_key_and_line() {
        let err = load_str("services:\n  web:\n    image: a\n    deploy:\n      replicas: lots\n")
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("stack.yml:5: services.web.deploy.replicas: "),
            "{text}"
        );
        assert!(text.contains("non-negative integer"), "{text}");
    }

    #[test]
    fn unknown_keys_are_refused_where_they_are() {
        let err = load_str("services:\n  web:\n    image: a\n    replica: 3\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "stack.yml:4: services.web.replica: additional property replica is not allowed"
        );
    }

    #[test]
    fn forbidden_keys_are_refused_with_docker_advice() {
        let err = load_str("services:\n  web:\n    image: a\n    mem_limit: 5m\n").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("unsupported options"), "{text}");
        assert!(
            text.contains(
                "line 4: services.web.mem_limit: Set resource limits using deploy.resources"
            ),
            "{text}"
        );
    }

    #[test]
    fn unsupported_keys_warn_as_docker_does() {
        let l = load_str(
            "services:\n  web:\n    image: a\n    build: .\n    links: [db]\n    container_name: x\n    restart: always\n",
        )
        .unwrap();
        assert_eq!(
            l.warnings[0],
            "Ignoring unsupported options: build, links, restart"
        );
        assert!(l.warnings[1].starts_with("Ignoring deprecated options:"));
        assert_eq!(l.config.services["web"].restart.as_deref(), Some("always"));
    }

    #[test]
    fn relative_paths_are_joined_and_cleaned_as_docker_does() {
        assert_eq!(join_path("/tmp", "./data/"), "/tmp/data");
        assert_eq!(join_path("/tmp/a", "../b/./c/"), "/tmp/b/c");
        assert_eq!(join_path("/tmp", "."), "/tmp");
        assert_eq!(join_path("/", "../x"), "/x");
        assert_eq!(join_path("/tmp", "/srv/x/../y/"), "/srv/x/../y/");
    }

    #[test]
    fn version_must_be_a_string_of_the_3_family() {
        assert!(load_str("version: 3.9\nservices: {}\n")
            .unwrap_err()
            .to_string()
            .contains("must be a string"));
        assert!(load_str("version: '2.4'\nservices: {}\n")
            .unwrap_err()
            .to_string()
            .contains("unsupported Compose file version"));
    }

    #[test]
    fn interpolation_errors_carry_the_line() {
        let err = load_str("services:\n  web:\n    image: ${NOPE:?set NOPE}\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "stack.yml:3: required variable NOPE is missing a value: set NOPE"
        );
    }

    #[test]
    fn later_files_override_earlier_ones() {
        let env = HashMap::new();
        let files = [
            SourceFile {
                name: "a.yml".into(),
                content: "services:\n  web:\n    image: a\n    command: [x, y]\n    environment: {A: '1', B: '2'}\n    ports: ['80:80']\n".into(),
            },
            SourceFile {
                name: "b.yml".into(),
                content: "services:\n  web:\n    image: b\n    command: [z]\n    environment: {B: '3'}\n    ports: ['80:8080', '443:443']\n".into(),
            },
        ];
        let l = load(&files, &opts_with(&env)).unwrap();
        let web = &l.config.services["web"];
        assert_eq!(web.image.as_deref(), Some("b"));
        assert_eq!(web.command.as_deref(), Some(&["z".to_owned()][..]));
        assert_eq!(web.environment["A"].as_deref(), Some("1"));
        assert_eq!(web.environment["B"].as_deref(), Some("3"));
        assert_eq!(web.ports.len(), 3);
    }

    #[test]
    fn env_files_and_bind_paths_resolve_against_the_working_dir() {
        let env = HashMap::from([
            ("HOME".to_owned(), "/home/u".to_owned()),
            ("C".to_owned(), "from-env".to_owned()),
        ]);
        let read = |p: &str| {
            if p == "/srv/app.env" {
                Ok("# comment\nA=1\nC\n".to_owned())
            } else {
                Err("missing".to_owned())
            }
        };
        let opts = LoadOptions {
            env: &env,
            working_dir: "/srv",
            read_file: &read,
            skip_interpolation: false,
        };
        let src = "services:\n  web:\n    image: a\n    env_file: app.env\n    volumes: ['./d:/d', '~/x:/x']\n";
        let l = load(
            &[SourceFile {
                name: "s.yml".into(),
                content: src.into(),
            }],
            &opts,
        )
        .unwrap();
        let web = &l.config.services["web"];
        assert_eq!(web.environment["A"].as_deref(), Some("1"));
        assert_eq!(web.environment["C"].as_deref(), Some("from-env"));
        assert_eq!(web.volumes[0].source.as_deref(), Some("/srv/d"));
        assert_eq!(web.volumes[1].source.as_deref(), Some("/home/u/x"));
    }

    #[test]
    fn security_options_are_read_and_checked_with_the_line() {
        use crate::security::Seccomp;
        let env = HashMap::new();
        let read = |p: &str| match p {
            "/srv/deny-keyctl.json" => Ok(r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
                {"names":["keyctl"],"action":"SCMP_ACT_ERRNO"}]}"#
                .to_owned()),
            "/srv/bad.json" => Ok(r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
                {"names":["keyctl"],"action":"DENY"}]}"#
                .to_owned()),
            _ => Err("missing".to_owned()),
        };
        let opts = LoadOptions {
            env: &env,
            working_dir: "/srv",
            read_file: &read,
            skip_interpolation: false,
        };
        let load_src = |src: &str| {
            load(
                &[SourceFile {
                    name: "s.yml".into(),
                    content: src.into(),
                }],
                &opts,
            )
        };
        let head = "services:\n  web:\n    image: a\n";
        let l = load_src(&format!(
            "{head}    cap_add: [net_admin]\n    cap_drop: [MKNOD]\n    security_opt: [seccomp=./deny-keyctl.json, no-new-privileges]\n"
        ))
        .unwrap();
        assert!(l.warnings.is_empty(), "{:?}", l.warnings);
        let spec = super::convert::convert("st", &l.config).unwrap();
        let c = &spec.services[0].task.container;
        assert_eq!(
            (c.cap_add.clone(), c.cap_drop.clone()),
            (vec!["net_admin".to_owned()], vec!["MKNOD".to_owned()])
        );
        assert!(matches!(&c.seccomp, Seccomp::Profile(p) if p.syscalls[0].names == ["keyctl"]));
        let l = load_src(&format!(
            "{head}    security_opt: ['seccomp:unconfined']\n    privileged: true\n"
        ))
        .unwrap();
        let spec = super::convert::convert("st", &l.config).unwrap();
        let c = &spec.services[0].task.container;
        assert_eq!(c.seccomp, Seccomp::Unconfined);
        assert!(c.privileged);
        // What cannot be honoured is said; what is wrong is refused with file, line and key.
        let l = load_src(&format!(
            "{head}    security_opt: ['label=type:svirt_apache_t']\n"
        ))
        .unwrap();
        assert!(
            l.warnings.iter().any(|w| w.contains("label=type")),
            "{:?}",
            l.warnings
        );
        let e = load_src(&format!("{head}    cap_add: [FLY]\n"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "s.yml:4: services.web.cap_add[0]: unknown capability \"FLY\""
        );
        let e = load_src(&format!("{head}    security_opt: [apparmor]\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("s.yml:4: services.web.security_opt[0]: unknown option"),
            "{e}"
        );
        let e = load_src(&format!("{head}    security_opt: [seccomp=bad.json]\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("services.web.security_opt[0]: seccomp profile /srv/bad.json: syscalls[0].action: unknown action \"DENY\""), "{e}");
        let e = load_src(&format!("{head}    security_opt: [seccomp=nope.json]\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot read /srv/nope.json"), "{e}");
    }
}
