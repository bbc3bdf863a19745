//! From a loaded stack to the specs the cluster stores: networks and services named
//! `<stack>_<name>` and labelled with the stack, with Swarm's defaults filled in and everything
//! the cluster would refuse (a bad constraint, an undeclared network) refused here first.

use super::compose::{Config, ServiceConfig};
use crate::constraint::Constraint;
use crate::network::NetworkSpec;
use crate::service::*;
use crate::units::Duration;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Everything one `stack deploy` creates or updates.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StackSpec {
    /// The stack's name.
    pub name: String,
    /// Networks the stack creates (external ones are only referred to).
    pub networks: Vec<NetworkSpec>,
    /// External networks the services use, which must exist already.
    #[serde(default)]
    pub external_networks: Vec<String>,
    /// The services.
    pub services: Vec<ServiceSpec>,
    /// The secrets and configs the stack declares (not the external ones), their data read
    /// by the client from `sources` before the stack is sent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<StackFile>,
}

/// A secret or config of a stack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StackFile {
    /// Secret or config.
    pub kind: crate::secret::FileKind,
    /// Name, labels and data.
    pub spec: crate::secret::FileObjectSpec,
    /// Where the client reads the data (not sent).
    #[serde(skip)]
    pub source: FileSource,
}

/// Where a stack's secret or config comes from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum FileSource {
    /// Nothing to read (sent with its data).
    #[default]
    None,
    /// A file (its path resolved against the stack file's directory).
    File(String),
    /// An environment variable of the client.
    Environment(String),
}

/// A stack that loads but cannot be deployed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConvertError {
    /// Key path, as `services.web.deploy.mode`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

fn err(path: impl Into<String>, message: impl Into<String>) -> ConvertError {
    ConvertError {
        path: path.into(),
        message: message.into(),
    }
}

/// True for a valid stack name: lowercase letters, digits, `-` and `_`, starting with a letter
/// or digit, at most 63 characters.
pub fn valid_stack_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Parses a decimal CPU count into billionths (`"0.5"` is 500000000).
pub fn parse_nano_cpus(s: &str) -> Option<u64> {
    let f: f64 = s.trim().parse().ok()?;
    (f >= 0.0 && f.is_finite()).then(|| (f * 1e9).round() as u64)
}

/// Converts a loaded stack into specs.
pub fn convert(stack: &str, config: &Config) -> Result<StackSpec, ConvertError> {
    if !valid_stack_name(stack) {
        return Err(err(
            "stack",
            format!("invalid stack name {stack:?}: use lowercase letters, digits, '-' and '_'"),
        ));
    }
    let label = BTreeMap::from([(STACK_LABEL.to_owned(), stack.to_owned())]);
    let scoped = |name: &str| format!("{stack}_{name}");

    // Networks the services use; a service with none joins the stack's `default` network.
    let mut used: BTreeSet<String> = BTreeSet::new();
    for (name, service) in &config.services {
        if service.networks.is_empty() {
            used.insert("default".to_owned());
        }
        for net in service.networks.keys() {
            if net != "default" && !config.networks.contains_key(net) {
                return Err(err(
                    format!("services.{name}.networks"),
                    format!("service {name:?} refers to network {net:?}, which is not declared under networks"),
                ));
            }
            used.insert(net.clone());
        }
    }
    let mut networks = Vec::new();
    let mut external_networks = Vec::new();
    let mut network_names = BTreeMap::new();
    for key in &used {
        let declared = config.networks.get(key).cloned().unwrap_or_default();
        if declared.external {
            let name = declared.name.clone().unwrap_or_else(|| key.clone());
            external_networks.push(name.clone());
            network_names.insert(key.clone(), name);
            continue;
        }
        let driver = declared
            .driver
            .clone()
            .unwrap_or_else(|| "overlay".to_owned());
        if driver != "overlay" {
            return Err(err(
                format!("networks.{key}.driver"),
                format!("driver {driver:?} is not supported: stack networks are overlay networks"),
            ));
        }
        let subnet = declared
            .ipam
            .as_ref()
            .and_then(|i| i.config.iter().find_map(|p| p.subnet.clone()))
            .unwrap_or_default();
        let name = declared.name.clone().unwrap_or_else(|| scoped(key));
        let mut labels = declared.labels.clone();
        labels.extend(label.clone());
        networks.push(NetworkSpec {
            name: name.clone(),
            driver,
            attachable: declared.attachable,
            internal: declared.internal,
            subnet,
            labels,
            driver_opts: declared.driver_opts.clone(),
        });
        network_names.insert(key.clone(), name);
    }

    if let Some(cycle) = dependency_cycle(config) {
        return Err(err("services", format!("depends_on has a cycle: {cycle}")));
    }
    let mut services = Vec::new();
    for (name, service) in &config.services {
        services.push(convert_service(
            stack,
            name,
            service,
            config,
            &network_names,
            &label,
        )?);
    }
    let mut files = Vec::new();
    for (kind, section, decls) in [
        (crate::secret::FileKind::Secret, "secrets", &config.secrets),
        (crate::secret::FileKind::Config, "configs", &config.configs),
    ] {
        for (key, decl) in decls {
            if decl.external {
                continue;
            }
            let source = match (&decl.file, &decl.environment) {
                (Some(f), None) => FileSource::File(f.clone()),
                (None, Some(e)) => FileSource::Environment(e.clone()),
                _ => {
                    return Err(err(
                        format!("{section}.{key}"),
                        "set one of file or environment (or external: true)".to_owned(),
                    ))
                }
            };
            let mut labels = decl.labels.clone();
            labels.extend(label.clone());
            files.push(StackFile {
                kind,
                spec: crate::secret::FileObjectSpec {
                    name: decl.name.clone().unwrap_or_else(|| scoped(key)),
                    labels,
                    data: Vec::new(),
                },
                source,
            });
        }
    }

    Ok(StackSpec {
        name: stack.to_owned(),
        networks,
        external_networks,
        services,
        files,
    })
}

/// The service's `logging`, its json-file options checked.
fn log_driver(path: &str, s: &ServiceConfig) -> Result<Option<LogDriver>, ConvertError> {
    let Some(l) = &s.logging else { return Ok(None) };
    let name = l.driver.clone().unwrap_or_else(|| "json-file".into());
    if let Some(size) = l.options.get("max-size") {
        crate::units::parse_bytes(size)
            .map_err(|e| err(format!("{path}.logging.options.max-size"), e.to_string()))?;
    }
    if let Some(n) = l.options.get("max-file") {
        if n.parse::<u32>().map_or(true, |n| n == 0) {
            return Err(err(
                format!("{path}.logging.options.max-file"),
                format!("must be a positive integer, got {n:?}"),
            ));
        }
    }
    if let Some(c) = l.options.get("compress") {
        if c != "true" && c != "false" {
            return Err(err(
                format!("{path}.logging.options.compress"),
                format!("must be true or false, got {c:?}"),
            ));
        }
    }
    Ok(Some(LogDriver {
        name,
        options: l.options.clone(),
    }))
}

fn restart_policy(path: &str, s: &ServiceConfig) -> Result<RestartPolicy, ConvertError> {
    let mut policy = RestartPolicy::default();
    match s.deploy.as_ref().and_then(|d| d.restart_policy.as_ref()) {
        Some(rp) => {
            if let Some(c) = &rp.condition {
                policy.condition = match c.as_str() {
                    "none" => RestartCondition::None,
                    "on-failure" => RestartCondition::OnFailure,
                    "any" => RestartCondition::Any,
                    other => {
                        return Err(err(
                            format!("{path}.deploy.restart_policy.condition"),
                            format!("unknown condition {other:?} (use none, on-failure or any)"),
                        ))
                    }
                };
            }
            if let Some(d) = rp.delay {
                policy.delay = d;
            }
            policy.max_attempts = rp.max_attempts.unwrap_or(0);
            policy.window = rp.window.unwrap_or_default();
        }
        None => {
            if let Some(restart) = &s.restart {
                let (mode, attempts) = restart.split_once(':').unwrap_or((restart.as_str(), ""));
                policy.condition = match mode {
                    "no" => RestartCondition::None,
                    "always" | "unless-stopped" => RestartCondition::Any,
                    "on-failure" => RestartCondition::OnFailure,
                    other => {
                        return Err(err(
                            format!("{path}.restart"),
                            format!("unknown restart policy {other:?} (use no, always, on-failure or unless-stopped)"),
                        ))
                    }
                };
                if !attempts.is_empty() {
                    policy.max_attempts = attempts.parse().map_err(|_| {
                        err(
                            format!("{path}.restart"),
                            format!("bad retry count in {restart:?}"),
                        )
                    })?;
                }
            }
        }
    }
    Ok(policy)
}

fn update_config(
    path: &str,
    c: Option<&super::compose::UpdateConfigConfig>,
) -> Result<UpdateConfig, ConvertError> {
    let mut out = UpdateConfig::default();
    let Some(c) = c else { return Ok(out) };
    if let Some(p) = c.parallelism {
        out.parallelism = p;
    }
    if let Some(d) = c.delay {
        out.delay = d;
    }
    if let Some(m) = c.monitor {
        out.monitor = m;
    }
    if let Some(r) = c.max_failure_ratio {
        out.max_failure_ratio = r;
    }
    if let Some(a) = &c.failure_action {
        out.failure_action = match a.as_str() {
            "pause" => FailureAction::Pause,
            "continue" => FailureAction::Continue,
            "rollback" => FailureAction::Rollback,
            other => {
                return Err(err(
                    format!("{path}.failure_action"),
                    format!("unknown failure action {other:?} (use pause, continue or rollback)"),
                ))
            }
        };
    }
    if let Some(o) = &c.order {
        out.order = match o.as_str() {
            "stop-first" => UpdateOrder::StopFirst,
            "start-first" => UpdateOrder::StartFirst,
            other => {
                return Err(err(
                    format!("{path}.order"),
                    format!("unknown order {other:?} (use stop-first or start-first)"),
                ))
            }
        };
    }
    Ok(out)
}

fn amounts(
    path: &str,
    r: Option<&super::compose::ResourceConfig>,
) -> Result<ResourceAmounts, ConvertError> {
    let Some(r) = r else {
        return Ok(ResourceAmounts::default());
    };
    let nano_cpus = match &r.cpus {
        Some(c) => parse_nano_cpus(c)
            .ok_or_else(|| err(format!("{path}.cpus"), format!("invalid CPU count {c:?}")))?,
        None => 0,
    };
    Ok(ResourceAmounts {
        nano_cpus,
        memory_bytes: r.memory.unwrap_or(0),
        pids: r.pids.unwrap_or(0),
    })
}

/// The seccomp filter `security_opt` asks for (the loader has read and checked a profile).
fn seccomp(s: &ServiceConfig) -> crate::security::Seccomp {
    use crate::security::Seccomp;
    let mut out = Seccomp::Default;
    for o in &s.security_opt {
        match super::security_opt(o) {
            super::SecurityOpt::SeccompUnconfined => out = Seccomp::Unconfined,
            super::SecurityOpt::SeccompProfile(_) => {
                if let Some(p) = &s.seccomp_profile {
                    out = Seccomp::Profile(Box::new(p.clone()));
                }
            }
            _ => {}
        }
    }
    out
}

fn convert_service(
    stack: &str,
    name: &str,
    s: &ServiceConfig,
    config: &Config,
    network_names: &BTreeMap<String, String>,
    stack_label: &BTreeMap<String, String>,
) -> Result<ServiceSpec, ConvertError> {
    let path = format!("services.{name}");
    let image = s.image.clone().filter(|i| !i.is_empty()).ok_or_else(|| {
        err(
            &path,
            format!("service {name:?} has no image (shoal does not build images)"),
        )
    })?;
    let deploy = s.deploy.clone().unwrap_or_default();
    let mode = match deploy.mode.as_deref() {
        None | Some("replicated") => ServiceMode::Replicated {
            replicas: deploy.replicas.unwrap_or(1),
        },
        Some("global") => {
            if deploy.replicas.is_some() {
                return Err(err(
                    format!("{path}.deploy.replicas"),
                    "replicas can only be used with replicated mode",
                ));
            }
            ServiceMode::Global
        }
        Some(other) => {
            return Err(err(
                format!("{path}.deploy.mode"),
                format!("unknown mode {other:?} (use replicated or global)"),
            ))
        }
    };
    let placement = deploy.placement.clone().unwrap_or_default();
    Constraint::parse_all(&placement.constraints).map_err(|e| {
        err(
            format!("{path}.deploy.placement.constraints"),
            e.to_string(),
        )
    })?;
    for p in &placement.preferences {
        if !p.spread.starts_with("node.labels.") && !p.spread.starts_with("engine.labels.") {
            return Err(err(
                format!("{path}.deploy.placement.preferences"),
                format!("cannot spread over {:?}: use node.labels.NAME", p.spread),
            ));
        }
    }
    let endpoint_mode = match deploy.endpoint_mode.as_deref() {
        None | Some("vip") => EndpointMode::Vip,
        Some("dnsrr") => EndpointMode::Dnsrr,
        Some(other) => {
            return Err(err(
                format!("{path}.deploy.endpoint_mode"),
                format!("unknown endpoint mode {other:?} (use vip or dnsrr)"),
            ))
        }
    };
    let mut ports = Vec::new();
    for (i, p) in s.ports.iter().enumerate() {
        if !matches!(p.mode.as_str(), "ingress" | "host") {
            return Err(err(
                format!("{path}.ports[{i}].mode"),
                format!("unknown mode {:?} (use ingress or host)", p.mode),
            ));
        }
        // With or without `published`: the cluster publishes one for a port without it.
        if endpoint_mode == EndpointMode::Dnsrr && p.mode == "ingress" {
            return Err(err(
                format!("{path}.ports[{i}]"),
                "a service in dnsrr endpoint mode can publish ports in host mode only",
            ));
        }
        ports.push(PortConfig {
            target: p.target,
            published: p.published,
            protocol: p.protocol.clone(),
            mode: p.mode.clone(),
        });
    }

    let mut mounts = Vec::new();
    for (i, v) in s.volumes.iter().enumerate() {
        let kind = match v.kind.as_str() {
            "volume" => MountKind::Volume,
            "bind" => MountKind::Bind,
            "tmpfs" => MountKind::Tmpfs,
            other => {
                return Err(err(
                    format!("{path}.volumes[{i}].type"),
                    format!("mount type {other:?} is not supported (use volume, bind or tmpfs)"),
                ))
            }
        };
        let source = match (kind, &v.source) {
            (MountKind::Volume, Some(src)) => match config.volumes.get(src) {
                Some(decl) if decl.external => decl.name.clone().unwrap_or_else(|| src.clone()),
                Some(decl) => decl
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("{stack}_{src}")),
                None => {
                    return Err(err(
                        format!("{path}.volumes[{i}]"),
                        format!("named volume {src:?} is not declared under volumes"),
                    ))
                }
            },
            (_, src) => src.clone().unwrap_or_default(),
        };
        mounts.push(Mount {
            kind,
            source,
            target: v.target.clone(),
            read_only: v.read_only,
            tmpfs_size: v.tmpfs.as_ref().and_then(|t| t.size),
        });
    }
    for t in &s.tmpfs {
        mounts.push(Mount {
            kind: MountKind::Tmpfs,
            source: String::new(),
            target: t.clone(),
            read_only: false,
            tmpfs_size: None,
        });
    }

    let files = |refs: &[super::compose::FileRefConfig],
                 kind: &str|
     -> Result<Vec<FileReference>, ConvertError> {
        let decls = if kind == "secrets" {
            &config.secrets
        } else {
            &config.configs
        };
        refs.iter()
            .map(|r| {
                let decl = decls.get(&r.source).ok_or_else(|| {
                    err(
                        format!("{path}.{kind}"),
                        format!(
                            "{} {:?} is not declared under {kind}",
                            &kind[..kind.len() - 1],
                            r.source
                        ),
                    )
                })?;
                let source = match (&decl.name, decl.external) {
                    (Some(n), _) => n.clone(),
                    (None, true) => r.source.clone(),
                    (None, false) => format!("{stack}_{}", r.source),
                };
                let target = r.target.clone().unwrap_or_else(|| {
                    if kind == "secrets" {
                        format!("/run/secrets/{}", r.source)
                    } else {
                        format!("/{}", r.source)
                    }
                });
                let target = if kind == "secrets" && !target.starts_with('/') {
                    format!("/run/secrets/{target}")
                } else {
                    target
                };
                Ok(FileReference {
                    source,
                    target,
                    uid: r.uid.clone().unwrap_or_else(|| "0".into()),
                    gid: r.gid.clone().unwrap_or_else(|| "0".into()),
                    mode: r.mode.unwrap_or(0o444),
                })
            })
            .collect()
    };

    let healthcheck = s.healthcheck.as_ref().map(|h| HealthCheck {
        test: if h.disable {
            vec!["NONE".to_owned()]
        } else {
            h.test.clone()
        },
        interval: h.interval,
        timeout: h.timeout,
        retries: h.retries,
        start_period: h.start_period,
        start_interval: h.start_interval,
    });

    let networks = if s.networks.is_empty() {
        vec![NetworkAttachmentSpec {
            target: network_names["default"].clone(),
            aliases: vec![name.to_owned()],
        }]
    } else {
        s.networks
            .iter()
            .map(|(net, cfg)| {
                let mut aliases = vec![name.to_owned()];
                aliases.extend(cfg.iter().flat_map(|c| c.aliases.iter().cloned()));
                NetworkAttachmentSpec {
                    target: network_names[net].clone(),
                    aliases,
                }
            })
            .collect()
    };

    let env = s
        .environment
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}")))
        .collect();
    let mut container_labels = s.labels.clone();
    container_labels.extend(stack_label.clone());
    let mut labels = deploy.labels.clone();
    labels.extend(stack_label.clone());
    let resources = deploy.resources.clone().unwrap_or_default();

    Ok(ServiceSpec {
        name: format!("{stack}_{name}"),
        labels,
        mode,
        task: TaskTemplate {
            container: ContainerSpec {
                image,
                command: s.entrypoint.clone().unwrap_or_default(),
                args: s.command.clone().unwrap_or_default(),
                env,
                dir: s.working_dir.clone().unwrap_or_default(),
                user: s.user.clone().unwrap_or_default(),
                hostname: s.hostname.clone().unwrap_or_default(),
                labels: container_labels,
                mounts,
                healthcheck,
                stop_signal: s.stop_signal.clone().unwrap_or_default(),
                stop_grace_period: s.stop_grace_period.or(Some(Duration::from_secs(10))),
                secrets: files(&s.secrets, "secrets")?,
                configs: files(&s.configs, "configs")?,
                read_only: s.read_only,
                tty: s.tty,
                open_stdin: s.stdin_open,
                registry_auth: None,
                init: s.init,
                cap_add: s.cap_add.clone(),
                cap_drop: s.cap_drop.clone(),
                privileged: s.privileged,
                seccomp: seccomp(s),
            },
            resources: Resources {
                limits: amounts(
                    &format!("{path}.deploy.resources.limits"),
                    resources.limits.as_ref(),
                )?,
                reservations: amounts(
                    &format!("{path}.deploy.resources.reservations"),
                    resources.reservations.as_ref(),
                )?,
            },
            restart_policy: restart_policy(&path, s)?,
            log_driver: log_driver(&path, s)?,
            placement: Placement {
                constraints: placement.constraints.clone(),
                preferences: placement
                    .preferences
                    .iter()
                    .map(|p| PlacementPreference {
                        spread: p.spread.clone(),
                    })
                    .collect(),
                max_replicas_per_node: placement.max_replicas_per_node.unwrap_or(0),
            },
            networks,
            force_update: 0,
        },
        update_config: update_config(
            &format!("{path}.deploy.update_config"),
            deploy.update_config.as_ref(),
        )?,
        rollback_config: update_config(
            &format!("{path}.deploy.rollback_config"),
            deploy.rollback_config.as_ref(),
        )?,
        endpoint: EndpointSpec {
            mode: endpoint_mode,
            ports,
        },
        depends_on: dependencies(stack, &path, s, config)?,
    })
}

/// The service's `depends_on`: services of the same stack, each with its condition.
fn dependencies(
    stack: &str,
    path: &str,
    s: &ServiceConfig,
    config: &Config,
) -> Result<Vec<Dependency>, ConvertError> {
    s.depends_on
        .0
        .iter()
        .map(|(name, condition)| {
            if !config.services.contains_key(name) {
                return Err(err(
                    format!("{path}.depends_on"),
                    format!("service {name:?} is not a service of this stack"),
                ));
            }
            let condition = match condition.as_str() {
                "service_started" => DependencyCondition::ServiceStarted,
                "service_healthy" => DependencyCondition::ServiceHealthy,
                other => {
                    return Err(err(
                        format!("{path}.depends_on.{name}.condition"),
                        format!("{other:?}: use service_started or service_healthy"),
                    ))
                }
            };
            Ok(Dependency {
                service: format!("{stack}_{name}"),
                condition,
            })
        })
        .collect()
}

/// A `depends_on` cycle, as `a -> b -> a`, if the services have one.
pub fn dependency_cycle(config: &Config) -> Option<String> {
    fn visit<'a>(
        config: &'a Config,
        name: &'a str,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<String> {
        if let Some(i) = path.iter().position(|p| *p == name) {
            let mut cycle: Vec<&str> = path[i..].to_vec();
            cycle.push(name);
            return Some(cycle.join(" -> "));
        }
        if !done.insert(name) {
            return None;
        }
        path.push(name);
        if let Some(s) = config.services.get(name) {
            for (dep, _) in &s.depends_on.0 {
                if let Some(c) = visit(config, dep, path, done) {
                    return Some(c);
                }
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    for name in config.services.keys() {
        let mut path = Vec::new();
        if let Some(c) = visit(config, name, &mut path, &mut done) {
            return Some(c);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stack::{load, LoadOptions, SourceFile};
    use std::collections::HashMap;

    fn spec(src: &str) -> Result<StackSpec, ConvertError> {
        let env = HashMap::new();
        let opts = LoadOptions {
            env: &env,
            working_dir: "/srv",
            read_file: &|_| Err("none".into()),
            skip_interpolation: false,
        };
        let loaded = load(
            &[SourceFile {
                name: "s.yml".into(),
                content: src.into(),
            }],
            &opts,
        )
        .unwrap();
        convert("web", &loaded.config)
    }

    #[test]
    fn depends_on_takes_both_forms_and_refuses_cycles_and_strangers() {
        let st = spec(
            "services:\n  db:\n    image: x\n  cache:\n    image: x\n  app:\n    image: x\n    depends_on:\n      db:\n        condition: service_healthy\n      cache: {}\n  web:\n    image: x\n    depends_on: [app]\n",
        )
        .unwrap();
        let app = st.services.iter().find(|s| s.name == "web_app").unwrap();
        assert_eq!(
            app.depends_on,
            [
                Dependency {
                    service: "web_cache".into(),
                    condition: DependencyCondition::ServiceStarted
                },
                Dependency {
                    service: "web_db".into(),
                    condition: DependencyCondition::ServiceHealthy
                },
            ]
        );
        // Cycles are refused by the loader already (see stack::tests).
        let err = spec("services:\n  a:\n    image: x\n    depends_on: [nope]\n").unwrap_err();
        assert!(
            err.to_string()
                .contains("\"nope\" is not a service of this stack"),
            "{err}"
        );
        let err = spec(
            "services:\n  a:\n    image: x\n    depends_on:\n      b:\n        condition: service_completed_successfully\n  b:\n    image: x\n",
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("use service_started or service_healthy"),
            "{err}"
        );
    }

    #[test]
    fn names_labels_and_defaults_follow_swarm() {
        let s = spec("services:\n  api:\n    image: a\n    command: serve --port 80\n    volumes: ['data:/d']\nvolumes:\n  data:\n").unwrap();
        assert_eq!(s.networks[0].name, "web_default");
        let api = &s.services[0];
        assert_eq!(api.name, "web_api");
        assert_eq!(api.stack(), Some("web"));
        assert_eq!(api.mode, ServiceMode::Replicated { replicas: 1 });
        assert_eq!(api.task.container.args, ["serve", "--port", "80"]);
        assert_eq!(api.task.container.mounts[0].source, "web_data");
        assert_eq!(api.task.restart_policy, RestartPolicy::default());
        assert_eq!(api.task.networks[0].target, "web_default");
        assert_eq!(api.update_config.parallelism, 1);
    }

    #[test]
    fn a_bare_restart_becomes_the_restart_policy() {
        let s = spec("services:\n  a:\n    image: a\n    restart: 'on-failure:3'\n").unwrap();
        let p = s.services[0].task.restart_policy;
        assert_eq!(
            (p.condition, p.max_attempts),
            (RestartCondition::OnFailure, 3)
        );
        let s = spec("services:\n  a:\n    image: a\n    restart: 'no'\n    deploy:\n      restart_policy: {condition: any}\n").unwrap();
        assert_eq!(
            s.services[0].task.restart_policy.condition,
            RestartCondition::Any
        );
    }

    #[test]
    fn resources_and_global_mode_convert() {
        let s = spec("services:\n  a:\n    image: a\n    deploy:\n      mode: global\n      resources:\n        limits: {cpus: '0.5', memory: 50M, pids: 10}\n").unwrap();
        let a = &s.services[0];
        assert_eq!(a.mode, ServiceMode::Global);
        assert_eq!(a.task.resources.limits.nano_cpus, 500_000_000);
        assert_eq!(a.task.resources.limits.memory_bytes, 52_428_800);
        assert_eq!(a.task.resources.limits.pids, 10);
    }

    #[test]
    fn mistakes_are_refused_with_their_key() {
        let e = spec("services:\n  a:\n    image: a\n    networks: [nope]\n").unwrap_err();
        assert_eq!(e.path, "services.a.networks");
        let e = spec("services:\n  a:\n    image: a\n    deploy:\n      placement:\n        constraints: [node=foo]\n").unwrap_err();
        assert_eq!(e.path, "services.a.deploy.placement.constraints");
        let e = spec("services:\n  a:\n    deploy: {replicas: 2}\n").unwrap_err();
        assert!(e.message.contains("has no image"));
        let e = spec("services:\n  a:\n    image: a\n    deploy: {mode: global, replicas: 2}\n")
            .unwrap_err();
        assert_eq!(e.path, "services.a.deploy.replicas");
        assert!(convert("Bad Name", &Default::default()).is_err());
    }
}
