//! The Compose file as `docker stack deploy` understands it, normalized: every short syntax
//! expanded to its long form, sizes in bytes, durations in Go's notation. Serializing a
//! [`Config`] gives the same shape `docker stack config` prints, for the keys shoal reads.
//!
//! Deserialization accepts each key's every documented form (string or list, mapping or list,
//! short or long syntax) and, where interpolation may have turned a number into a string, the
//! string too, as docker/cli's type casts do.

use crate::units::{parse_bytes, Duration};
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};
use serde_json::Value as J;
use std::collections::BTreeMap;

/// A whole stack file (or several merged).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The file format version, as a string.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de_version"
    )]
    pub version: Option<String>,
    /// Services by name.
    #[serde(default, deserialize_with = "de_nullable_map")]
    pub services: BTreeMap<String, ServiceConfig>,
    /// Networks by name.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "de_nullable_map"
    )]
    pub networks: BTreeMap<String, NetworkConfig>,
    /// Volumes by name.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "de_nullable_map"
    )]
    pub volumes: BTreeMap<String, VolumeConfig>,
    /// Secrets by name.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "de_nullable_map"
    )]
    pub secrets: BTreeMap<String, FileObjectConfig>,
    /// Configs by name.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "de_nullable_map"
    )]
    pub configs: BTreeMap<String, FileObjectConfig>,
}

/// One service.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Capabilities added to Docker's default set.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "de_string_list"
    )]
    pub cap_add: Vec<String>,
    /// Capabilities dropped from it.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "de_string_list"
    )]
    pub cap_drop: Vec<String>,
    /// Replaces the image's command (shell-split when a string).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de_shell_command"
    )]
    pub command: Option<Vec<String>>,
    /// Secrets given as files.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "de_file_refs"
    )]
    pub configs: Vec<FileRefConfig>,
    /// Start order (a shoal extension; docker ignores it): a list of services, or a map of
    /// services to `{condition: service_started|service_healthy}`.
    #[serde(default, skip_serializing_if = "DependsOn::is_empty")]
    pub depends_on: DependsOn,
    /// Swarm deployment settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy: Option<DeployConfig>,
    /// Replaces the image's entrypoint (shell-split when a string).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de_shell_command"
    )]
    pub entrypoint: Option<Vec<String>>,
    /// Environment; a variable without a value is taken from the loader's environment.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "de_mapping_with_equals"
    )]
    pub environment: BTreeMap<String, Option<String>>,
    /// Files of `KEY=VALUE` lines read into the environment.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "de_string_list"
    )]
    pub env_file: Vec<String>,
    /// Container hostname.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Health check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<HealthCheckConfig>,
    /// Image reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Run an init process.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de_opt_bool"
    )]
    pub init: Option<bool>,
    /// Container labels.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "de_labels"
    )]
    pub labels: BTreeMap<String, String>,
    /// Where the container's output goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logging: Option<LoggingConfig>,
    /// Networks to attach, with per-network settings.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "de_service_networks"
    )]
    pub networks: BTreeMap<String, Option<ServiceNetworkConfig>>,
    /// Published ports.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "de_ports"
    )]
    pub ports: Vec<PortConfig>,
    /// Every capability and device, no seccomp filter.
    #[serde(
        default,
        skip_serializing_if = "is_false",
        deserialize_with = "de_bool"
    )]
    pub privileged: bool,
    /// Root file system read-only.
    #[serde(
        default,
        skip_serializing_if = "is_false",
        deserialize_with = "de_bool"
    )]
    pub read_only: bool,
    /// Restart policy of `docker run`; used when `deploy.restart_policy` is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<String>,
    /// Secrets given as files.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "de_file_refs"
    )]
    pub secrets: Vec<FileRefConfig>,
    /// `seccomp=unconfined|PROFILE.json`, `no-new-privileges[=true]`; `apparmor=` and
    /// `label=` are read with a warning.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "de_string_list"
    )]
    pub security_opt: Vec<String>,
    /// The seccomp profile `security_opt` names, read by the loader.
    #[serde(skip)]
    pub seccomp_profile: Option<crate::security::SeccompProfile>,
    /// Keep stdin open.
    #[serde(
        default,
        skip_serializing_if = "is_false",
        deserialize_with = "de_bool"
    )]
    pub stdin_open: bool,
    /// Time between the stop signal and SIGKILL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_grace_period: Option<Duration>,
    /// Signal that stops the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// tmpfs mounts, by path.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "de_string_list"
    )]
    pub tmpfs: Vec<String>,
    /// Allocate a terminal.
    #[serde(
        default,
        skip_serializing_if = "is_false",
        deserialize_with = "de_bool"
    )]
    pub tty: bool,
    /// User to run as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Mounts.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "de_volumes"
    )]
    pub volumes: Vec<VolumeMountConfig>,
    /// Working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
}

/// A service's `logging`: the driver and its options.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingConfig {
    /// Driver name (`json-file` when not given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// Driver options (`max-size`, `max-file`, …).
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "de_labels"
    )]
    pub options: BTreeMap<String, String>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// `deploy:`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployConfig {
    /// `replicated` or `global`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Number of tasks.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de_opt_u64"
    )]
    pub replicas: Option<u64>,
    /// Service labels.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "de_labels"
    )]
    pub labels: BTreeMap<String, String>,
    /// Update settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_config: Option<UpdateConfigConfig>,
    /// Rollback settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_config: Option<UpdateConfigConfig>,
    /// Limits and reservations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourcesConfig>,
    /// Restart policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<RestartPolicyConfig>,
    /// Placement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<PlacementConfig>,
    /// `vip` or `dnsrr`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_mode: Option<String>,
}

/// `update_config:` and `rollback_config:`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateConfigConfig {
    /// Tasks at once.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de_opt_u64"
    )]
    pub parallelism: Option<u64>,
    /// Wait between batches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<Duration>,
    /// `pause`, `continue` or `rollback`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_action: Option<String>,
    /// Watch time after each task update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitor: Option<Duration>,
    /// Tolerated failure ratio.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de_opt_f64"
    )]
    pub max_failure_ratio: Option<f64>,
    /// `stop-first` or `start-first`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<String>,
}

/// `resources:`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourcesConfig {
    /// Ceilings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<ResourceConfig>,
    /// Reservations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservations: Option<ResourceConfig>,
}

/// One of `limits:` or `reservations:`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceConfig {
    /// CPUs as a decimal string (`'0.5'`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de_cpus"
    )]
    pub cpus: Option<String>,
    /// Bytes, printed as a string as docker does.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de_bytes",
        serialize_with = "ser_bytes"
    )]
    pub memory: Option<u64>,
    /// Process count limit.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de_opt_u64"
    )]
    pub pids: Option<u64>,
}

/// `restart_policy:`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartPolicyConfig {
    /// `none`, `on-failure` or `any`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    /// Wait before restarting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<Duration>,
    /// Restarts allowed in the window.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de_opt_u64"
    )]
    pub max_attempts: Option<u64>,
    /// Window over which attempts count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Duration>,
}

/// `placement:`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlacementConfig {
    /// Constraint expressions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<String>,
    /// Spread preferences.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preferences: Vec<PreferenceConfig>,
    /// Tasks per node at most.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de_opt_u64"
    )]
    pub max_replicas_per_node: Option<u64>,
}

/// One placement preference.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreferenceConfig {
    /// Descriptor to spread over.
    pub spread: String,
}

/// `healthcheck:`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// The test; a string becomes `["CMD-SHELL", string]`.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "de_health_test"
    )]
    pub test: Vec<String>,
    /// Time a check may take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Time between checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// Failures before unhealthy.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de_opt_u64"
    )]
    pub retries: Option<u64>,
    /// Grace after start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_period: Option<Duration>,
    /// Interval during the grace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_interval: Option<Duration>,
    /// Turn off the image's check.
    #[serde(
        default,
        skip_serializing_if = "is_false",
        deserialize_with = "de_bool"
    )]
    pub disable: bool,
}

/// A port in long form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortConfig {
    /// `ingress` or `host`.
    #[serde(default = "ingress")]
    pub mode: String,
    /// Container port.
    #[serde(deserialize_with = "de_u16")]
    pub target: u16,
    /// Published port.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de_opt_u16"
    )]
    pub published: Option<u16>,
    /// `tcp`, `udp` or `sctp`.
    #[serde(default = "tcp")]
    pub protocol: String,
}

fn ingress() -> String {
    "ingress".to_owned()
}

fn tcp() -> String {
    "tcp".to_owned()
}

/// A mount in long form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeMountConfig {
    /// `volume`, `bind` or `tmpfs`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Volume name or host path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Path in the container.
    pub target: String,
    /// Read-only.
    #[serde(
        default,
        skip_serializing_if = "is_false",
        deserialize_with = "de_bool"
    )]
    pub read_only: bool,
    /// Accepted for compatibility (macOS only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<String>,
    /// tmpfs options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmpfs: Option<TmpfsOptions>,
    /// bind options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Option<BindOptions>,
    /// volume options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<VolumeOptions>,
}

/// `tmpfs:` of a long-form mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TmpfsOptions {
    /// Size in bytes.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de_bytes"
    )]
    pub size: Option<u64>,
}

/// `bind:` of a long-form mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindOptions {
    /// Propagation mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub propagation: Option<String>,
}

/// `volume:` of a long-form mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeOptions {
    /// Do not copy the image's content into a new volume.
    #[serde(
        default,
        skip_serializing_if = "is_false",
        deserialize_with = "de_bool"
    )]
    pub nocopy: bool,
}

/// A secret or config reference of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRefConfig {
    /// The object's name in the file.
    pub source: String,
    /// Path in the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Owner.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de_opt_stringish"
    )]
    pub uid: Option<String>,
    /// Group.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de_opt_stringish"
    )]
    pub gid: Option<String>,
    /// Mode (`0440` in the file is octal: 288).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de_opt_u32"
    )]
    pub mode: Option<u32>,
}

/// A service's settings on one network.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceNetworkConfig {
    /// Extra names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// Fixed IPv4 address (accepted, not yet used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4_address: Option<String>,
    /// Fixed IPv6 address (accepted, not yet used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_address: Option<String>,
    /// Driver options.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "de_labels"
    )]
    pub driver_opts: BTreeMap<String, String>,
}

/// A top-level network.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// Name in the cluster; for external networks, the existing network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Driver (`overlay`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// Driver options.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "de_labels"
    )]
    pub driver_opts: BTreeMap<String, String>,
    /// Address management.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipam: Option<IpamConfig>,
    /// Exists outside the stack.
    #[serde(
        default,
        skip_serializing_if = "is_false",
        deserialize_with = "de_external"
    )]
    pub external: bool,
    /// No route out.
    #[serde(
        default,
        skip_serializing_if = "is_false",
        deserialize_with = "de_bool"
    )]
    pub internal: bool,
    /// Standalone containers may attach.
    #[serde(
        default,
        skip_serializing_if = "is_false",
        deserialize_with = "de_bool"
    )]
    pub attachable: bool,
    /// Labels.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "de_labels"
    )]
    pub labels: BTreeMap<String, String>,
}

/// `ipam:`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpamConfig {
    /// IPAM driver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// Pools.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub config: Vec<IpamPool>,
}

/// One IPAM pool.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpamPool {
    /// Subnet in CIDR form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
}

/// A top-level volume.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeConfig {
    /// Name on the hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Driver (`local`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// Driver options.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "de_labels"
    )]
    pub driver_opts: BTreeMap<String, String>,
    /// Exists outside the stack.
    #[serde(
        default,
        skip_serializing_if = "is_false",
        deserialize_with = "de_external"
    )]
    pub external: bool,
    /// Labels.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "de_labels"
    )]
    pub labels: BTreeMap<String, String>,
}

/// A top-level secret or config.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileObjectConfig {
    /// Name in the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// File holding the data, relative to the stack file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Environment variable holding the data (the Compose specification's form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// Exists outside the stack.
    #[serde(
        default,
        skip_serializing_if = "is_false",
        deserialize_with = "de_external"
    )]
    pub external: bool,
    /// Labels.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "de_labels"
    )]
    pub labels: BTreeMap<String, String>,
    /// Template driver (accepted, not used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_driver: Option<String>,
}

// ---- lenient readers -------------------------------------------------------------------------

fn type_name(v: &J) -> &'static str {
    match v {
        J::Null => "null",
        J::Bool(_) => "a boolean",
        J::Number(_) => "a number",
        J::String(_) => "a string",
        J::Array(_) => "a list",
        J::Object(_) => "a mapping",
    }
}

fn expected<E: de::Error>(what: &str, got: &J) -> E {
    E::custom(format!("must be {what}, got {} ({got})", type_name(got)))
}

fn scalar_string(v: &J) -> Option<String> {
    match v {
        J::String(s) => Some(s.clone()),
        J::Number(n) => Some(n.to_string()),
        J::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn de_version<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match J::deserialize(d)? {
        J::Null => Ok(None),
        J::String(s) => Ok(Some(s)),
        other => Err(expected(r#"a string (quote it: version: "3.9")"#, &other)),
    }
}

fn de_nullable_map<'de, D, T>(d: D) -> Result<BTreeMap<String, T>, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    let map = Option::<BTreeMap<String, Option<T>>>::deserialize(d)?.unwrap_or_default();
    Ok(map
        .into_iter()
        .map(|(k, v)| (k, v.unwrap_or_default()))
        .collect())
}

fn de_u64_value<E: de::Error>(v: &J) -> Result<u64, E> {
    match v {
        J::Number(n) => n
            .as_u64()
            .ok_or_else(|| expected("a non-negative integer", v)),
        J::String(s) => s
            .trim()
            .parse()
            .map_err(|_| expected("a non-negative integer", v)),
        _ => Err(expected("a non-negative integer", v)),
    }
}

fn de_opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match J::deserialize(d)? {
        J::Null => Ok(None),
        v => de_u64_value(&v).map(Some),
    }
}

fn de_u16<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    let v = J::deserialize(d)?;
    let n = de_u64_value::<D::Error>(&v)?;
    u16::try_from(n).map_err(|_| expected("a port number (0 to 65535)", &v))
}

fn de_opt_u16<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    match J::deserialize(d)? {
        J::Null => Ok(None),
        v => {
            let n = de_u64_value::<D::Error>(&v)?;
            u16::try_from(n)
                .map(Some)
                .map_err(|_| expected("a port number (0 to 65535)", &v))
        }
    }
}

fn de_opt_u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    match J::deserialize(d)? {
        J::Null => Ok(None),
        v => {
            let n = de_u64_value::<D::Error>(&v)?;
            u32::try_from(n)
                .map(Some)
                .map_err(|_| expected("a file mode", &v))
        }
    }
}

fn de_opt_f64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    match J::deserialize(d)? {
        J::Null => Ok(None),
        J::Number(n) => Ok(n.as_f64()),
        J::String(s) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| expected("a number", &J::String(s))),
        v => Err(expected("a number", &v)),
    }
}

fn bool_value<E: de::Error>(v: &J) -> Result<bool, E> {
    match v {
        J::Bool(b) => Ok(*b),
        J::String(s) => match s.to_ascii_lowercase().as_str() {
            "true" | "yes" | "y" | "on" => Ok(true),
            "false" | "no" | "n" | "off" => Ok(false),
            _ => Err(expected("a boolean", v)),
        },
        _ => Err(expected("a boolean", v)),
    }
}

fn de_bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    bool_value(&J::deserialize(d)?)
}

fn de_opt_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    match J::deserialize(d)? {
        J::Null => Ok(None),
        v => bool_value(&v).map(Some),
    }
}

fn de_opt_stringish<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match J::deserialize(d)? {
        J::Null => Ok(None),
        v => scalar_string(&v)
            .map(Some)
            .ok_or_else(|| expected("a string", &v)),
    }
}

fn de_cpus<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match J::deserialize(d)? {
        J::Null => Ok(None),
        v @ (J::String(_) | J::Number(_)) => {
            let s = scalar_string(&v).unwrap_or_default();
            match s.parse::<f64>() {
                Ok(f) if f >= 0.0 => Ok(Some(s)),
                _ => Err(expected("a number of CPUs such as '0.5'", &v)),
            }
        }
        v => Err(expected("a number of CPUs such as '0.5'", &v)),
    }
}

fn de_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match J::deserialize(d)? {
        J::Null => Ok(None),
        J::Number(n) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| expected("a size", &J::Number(n))),
        J::String(s) => parse_bytes(&s).map(Some).map_err(de::Error::custom),
        v => Err(expected("a size such as 50M", &v)),
    }
}

fn ser_bytes<S: serde::Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(n) => s.collect_str(n),
        None => s.serialize_none(),
    }
}

fn de_external<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    match J::deserialize(d)? {
        // `external: {name: x}` is the old way to name it; the loader moves the name to `name`.
        J::Object(_) => Ok(true),
        v => bool_value(&v),
    }
}

fn string_list<E: de::Error>(v: J) -> Result<Vec<String>, E> {
    match v {
        J::Null => Ok(Vec::new()),
        J::String(s) => Ok(vec![s]),
        J::Array(items) => items
            .into_iter()
            .map(|i| scalar_string(&i).ok_or_else(|| expected("a string", &i)))
            .collect(),
        v => Err(expected("a string or a list of strings", &v)),
    }
}

fn de_string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    string_list(J::deserialize(d)?)
}

/// Splits a command line as a POSIX shell would, without expansions (as docker's shlex).
pub fn shell_split(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err(format!("unclosed single quote in {s:?}")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err(format!("unclosed double quote in {s:?}")),
                        },
                        Some(c) => word.push(c),
                        None => return Err(format!("unclosed double quote in {s:?}")),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(c) = chars.next() {
                    word.push(c);
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

fn de_shell_command<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    match J::deserialize(d)? {
        J::Null => Ok(None),
        J::String(s) => shell_split(&s).map(Some).map_err(de::Error::custom),
        v => string_list(v).map(Some),
    }
}

fn de_health_test<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    match J::deserialize(d)? {
        J::String(s) => Ok(vec!["CMD-SHELL".to_owned(), s]),
        v => string_list(v),
    }
}

fn de_mapping_with_equals<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, Option<String>>, D::Error> {
    match J::deserialize(d)? {
        J::Null => Ok(BTreeMap::new()),
        J::Object(map) => map
            .into_iter()
            .map(|(k, v)| match v {
                J::Null => Ok((k, None)),
                v => scalar_string(&v)
                    .map(|s| (k.clone(), Some(s)))
                    .ok_or_else(|| expected("a string, a number or null", &v)),
            })
            .collect(),
        J::Array(items) => items
            .into_iter()
            .map(|i| {
                let s = scalar_string(&i).ok_or_else(|| expected("a KEY=VALUE string", &i))?;
                Ok(match s.split_once('=') {
                    Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
                    None => (s, None),
                })
            })
            .collect(),
        v => Err(expected("a mapping or a list of KEY=VALUE strings", &v)),
    }
}

fn de_labels<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let map = de_mapping_with_equals(d)?;
    Ok(map
        .into_iter()
        .map(|(k, v)| (k, v.unwrap_or_default()))
        .collect())
}

fn de_service_networks<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, Option<ServiceNetworkConfig>>, D::Error> {
    match J::deserialize(d)? {
        J::Null => Ok(BTreeMap::new()),
        J::Array(items) => items
            .into_iter()
            .map(|i| match i {
                J::String(s) => Ok((s, None)),
                other => Err(expected("a network name", &other)),
            })
            .collect(),
        J::Object(map) => map
            .into_iter()
            .map(|(k, v)| match v {
                J::Null => Ok((k, None)),
                v => serde_json::from_value(v)
                    .map(|c| (k, Some(c)))
                    .map_err(de::Error::custom),
            })
            .collect(),
        v => Err(expected("a list of network names or a mapping", &v)),
    }
}

fn de_file_refs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<FileRefConfig>, D::Error> {
    let items = match J::deserialize(d)? {
        J::Null => return Ok(Vec::new()),
        J::Array(items) => items,
        v => return Err(expected("a list", &v)),
    };
    items
        .into_iter()
        .map(|i| match i {
            J::String(source) => Ok(FileRefConfig {
                source,
                target: None,
                uid: None,
                gid: None,
                mode: None,
            }),
            v @ J::Object(_) => serde_json::from_value(v).map_err(de::Error::custom),
            v => Err(expected("a name or a mapping with source", &v)),
        })
        .collect()
}

/// Parses `a` or `a-b` into a range of ports.
fn port_range(s: &str) -> Result<(u16, u16), String> {
    let bad = || format!("invalid port {s:?}");
    let (lo, hi) = match s.split_once('-') {
        Some((a, b)) => (a, b),
        None => (s, s),
    };
    let lo: u16 = lo.parse().map_err(|_| bad())?;
    let hi: u16 = hi.parse().map_err(|_| bad())?;
    if hi < lo {
        return Err(bad());
    }
    Ok((lo, hi))
}

/// Expands a short-syntax port (`3000`, `8000:80`, `127.0.0.1:80:80/udp`, `9090-9091:8080-8081`).
pub fn parse_short_port(spec: &str) -> Result<Vec<PortConfig>, String> {
    let (body, protocol) = match spec.rsplit_once('/') {
        Some((b, p)) => (b, p.to_owned()),
        None => (spec, "tcp".to_owned()),
    };
    if !matches!(protocol.as_str(), "tcp" | "udp" | "sctp") {
        return Err(format!("invalid protocol {protocol:?} in port {spec:?}"));
    }
    let parts: Vec<&str> = body.rsplitn(3, ':').collect();
    let (target, published) = match parts.as_slice() {
        [t] => (*t, None),
        [t, p] => (*t, Some(*p)),
        [t, p, _ip] => (*t, Some(*p)),
        _ => return Err(format!("invalid port {spec:?}")),
    };
    let (t_lo, t_hi) = port_range(target)?;
    let published = match published {
        Some("") | None => None,
        Some(p) => Some(port_range(p)?),
    };
    let count = t_hi - t_lo;
    if let Some((p_lo, p_hi)) = published {
        if p_hi - p_lo != count && p_lo != p_hi {
            return Err(format!("port ranges of different sizes in {spec:?}"));
        }
    }
    Ok((0..=count)
        .map(|i| PortConfig {
            mode: ingress(),
            target: t_lo + i,
            published: published.map(|(p_lo, p_hi)| if p_lo == p_hi { p_lo } else { p_lo + i }),
            protocol: protocol.clone(),
        })
        .collect())
}

fn de_ports<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PortConfig>, D::Error> {
    let items = match J::deserialize(d)? {
        J::Null => return Ok(Vec::new()),
        J::Array(items) => items,
        v => return Err(expected("a list", &v)),
    };
    let mut out = Vec::new();
    for item in items {
        match item {
            J::Number(n) => {
                out.extend(parse_short_port(&n.to_string()).map_err(de::Error::custom)?)
            }
            J::String(s) => out.extend(parse_short_port(&s).map_err(de::Error::custom)?),
            v @ J::Object(_) => out.push(serde_json::from_value(v).map_err(de::Error::custom)?),
            v => return Err(expected("a port or a mapping", &v)),
        }
    }
    Ok(out)
}

fn is_path_like(s: &str) -> bool {
    s.starts_with('/') || s.starts_with('.') || s.starts_with('~')
}

/// Expands a short-syntax volume (`/data`, `name:/data`, `./dir:/data:ro`).
pub fn parse_short_volume(spec: &str) -> Result<VolumeMountConfig, String> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (source, target, mode) = match parts.as_slice() {
        [t] => (None, *t, None),
        [s, t] => (Some(*s), *t, None),
        [s, t, m] => (Some(*s), *t, Some(*m)),
        _ => return Err(format!("invalid volume {spec:?}: too many colons")),
    };
    if target.is_empty() {
        return Err(format!("invalid volume {spec:?}: empty target"));
    }
    let mut read_only = false;
    let mut nocopy = false;
    for opt in mode.unwrap_or("").split(',').filter(|o| !o.is_empty()) {
        match opt {
            "ro" => read_only = true,
            "rw" => read_only = false,
            "nocopy" => nocopy = true,
            "z" | "Z" | "cached" | "delegated" | "consistent" | "shared" | "rshared" | "slave"
            | "rslave" | "private" | "rprivate" => {}
            other => return Err(format!("invalid volume {spec:?}: unknown option {other:?}")),
        }
    }
    let kind = match source {
        Some(s) if is_path_like(s) => "bind",
        _ => "volume",
    };
    Ok(VolumeMountConfig {
        kind: kind.to_owned(),
        source: source.map(str::to_owned),
        target: target.to_owned(),
        read_only,
        consistency: None,
        tmpfs: None,
        bind: None,
        volume: nocopy.then_some(VolumeOptions { nocopy }),
    })
}

fn de_volumes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<VolumeMountConfig>, D::Error> {
    let items = match J::deserialize(d)? {
        J::Null => return Ok(Vec::new()),
        J::Array(items) => items,
        v => return Err(expected("a list", &v)),
    };
    items
        .into_iter()
        .map(|i| match i {
            J::String(s) => parse_short_volume(&s).map_err(de::Error::custom),
            v @ J::Object(_) => serde_json::from_value(v).map_err(de::Error::custom),
            v => Err(expected("a volume or a mapping", &v)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_ports_expand_like_docker() {
        let p = parse_short_port("9090-9091:8080-8081").unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!((p[1].target, p[1].published), (8081, Some(9091)));
        let p = parse_short_port("127.0.0.1:8001:8001/udp").unwrap();
        assert_eq!(
            (p[0].target, p[0].published, p[0].protocol.as_str()),
            (8001, Some(8001), "udp")
        );
        let p = parse_short_port("3000").unwrap();
        assert_eq!((p[0].target, p[0].published), (3000, None));
        assert!(parse_short_port("80:x").is_err());
        assert!(parse_short_port("80/icmp").is_err());
    }

    #[test]
    fn short_volumes_expand_like_docker() {
        let v = parse_short_volume("~/configs:/etc/configs/:ro").unwrap();
        assert_eq!((v.kind.as_str(), v.read_only), ("bind", true));
        let v = parse_short_volume("data:/var/lib/mysql").unwrap();
        assert_eq!(v.kind, "volume");
        let v = parse_short_volume("/var/lib/mysql").unwrap();
        assert_eq!((v.kind.as_str(), v.source), ("volume", None));
        assert!(parse_short_volume("a:/b:bogus").is_err());
    }

    #[test]
    fn commands_split_as_a_shell_does() {
        assert_eq!(shell_split("bundle exec thin -p 3000").unwrap().len(), 5);
        assert_eq!(
            shell_split(r#"sh -c "echo 'hi there'""#).unwrap(),
            vec!["sh", "-c", "echo 'hi there'"]
        );
        assert!(shell_split("echo 'oops").is_err());
    }
}

/// `depends_on`: services and the condition each must reach (`service_started` when the
/// list form names it). Printed as a list when every condition is the default, as docker's
/// schema has it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DependsOn(pub Vec<(String, String)>);

impl DependsOn {
    /// True when nothing is named.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for DependsOn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        if self.0.iter().all(|(_, c)| c == "service_started") {
            return s.collect_seq(self.0.iter().map(|(n, _)| n));
        }
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (n, c) in &self.0 {
            let mut cond = BTreeMap::new();
            cond.insert("condition", c);
            m.serialize_entry(n, &cond)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for DependsOn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Entry {
            #[serde(default)]
            condition: Option<String>,
            #[serde(default)]
            #[allow(dead_code)]
            restart: Option<bool>,
            #[serde(default)]
            #[allow(dead_code)]
            required: Option<bool>,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            List(Vec<String>),
            Map(BTreeMap<String, Option<Entry>>),
        }
        Ok(DependsOn(match Option::<Form>::deserialize(d)? {
            None => Vec::new(),
            Some(Form::List(l)) => l
                .into_iter()
                .map(|n| (n, "service_started".to_owned()))
                .collect(),
            Some(Form::Map(m)) => m
                .into_iter()
                .map(|(n, e)| {
                    let c = e
                        .and_then(|e| e.condition)
                        .unwrap_or_else(|| "service_started".to_owned());
                    (n, c)
                })
                .collect(),
        }))
    }
}
