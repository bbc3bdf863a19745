//! Networks as cluster objects. The data plane (VXLAN, bridges, DNS) comes later; today a
//! network has an id, a VNI and a subnet allocated by the manager, and services attach to it.

use crate::ids::NetworkId;
use crate::units::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Lowest VXLAN network identifier shoal hands out (lower ones are left to operators).
pub const FIRST_VNI: u32 = 4096;

/// What a user asks for.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    /// Name, unique in the cluster (`<stack>_<name>` for stack networks).
    pub name: String,
    /// Only `overlay` is supported.
    #[serde(default = "default_driver")]
    pub driver: String,
    /// Whether standalone containers may attach.
    #[serde(default)]
    pub attachable: bool,
    /// Requested subnet in CIDR form; allocated when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subnet: String,
    /// Labels (stack networks carry `com.docker.stack.namespace`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Driver options, kept as given.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub driver_opts: BTreeMap<String, String>,
}

fn default_driver() -> String {
    "overlay".to_owned()
}

/// A network the cluster holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// Its id.
    pub id: NetworkId,
    /// Store revision of its last change.
    pub version: u64,
    /// When it was created.
    pub created_at: Timestamp,
    /// What was asked for.
    pub spec: NetworkSpec,
    /// VXLAN id, unique in the cluster, at least [`FIRST_VNI`].
    pub vni: u32,
    /// Subnet in CIDR form.
    pub subnet: String,
    /// Gateway address of the subnet.
    pub gateway: String,
}
