//! Secrets and configs: named, immutable files kept by the cluster (through Raft) and given to
//! the containers of the services that name them. A secret's data is never shown by the API
//! (not in `inspect`, events or errors) and reaches only the nodes that run a task using it; a
//! config's data is shown, as docker shows it.

use crate::units::Timestamp;
use crate::FileObjectId;
use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;

/// The most data a secret or config may hold (Swarm's limit).
pub const MAX_SIZE: usize = 500 * 1024;

/// Secret or config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    /// Mounted in a tmpfs, never shown.
    Secret,
    /// Mounted from the node's disk, shown by `inspect`.
    Config,
}

impl FileKind {
    /// `secret` or `config`.
    pub fn as_str(self) -> &'static str {
        match self {
            FileKind::Secret => "secret",
            FileKind::Config => "config",
        }
    }
}

impl std::fmt::Display for FileKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a user declares: a name, labels and the data.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileObjectSpec {
    /// Unique among objects of its kind.
    pub name: String,
    /// Labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The bytes (base64 on the wire); empty where the API hides a secret's.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        serialize_with = "to_base64",
        deserialize_with = "from_base64"
    )]
    pub data: Vec<u8>,
}

impl std::fmt::Debug for FileObjectSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileObjectSpec")
            .field("name", &self.name)
            .field("labels", &self.labels)
            .field("data", &format_args!("<{} bytes>", self.data.len()))
            .finish()
    }
}

impl FileObjectSpec {
    /// Checks the name and size; the error names the object.
    pub fn check(&self, kind: FileKind) -> Result<(), String> {
        let ok_name = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && self.name.as_bytes()[0].is_ascii_alphanumeric();
        if !ok_name {
            return Err(format!(
                "{kind} name {:?}: 1 to 64 letters, digits, '-', '_' or '.', starting with a letter or digit",
                self.name
            ));
        }
        if self.data.len() > MAX_SIZE {
            return Err(format!(
                "{kind} {}: {} bytes, more than the {MAX_SIZE} a {kind} may hold",
                self.name,
                self.data.len()
            ));
        }
        Ok(())
    }
}

fn to_base64<S: Serializer>(data: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(data))
}

fn from_base64<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let text = String::deserialize(d)?;
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(serde::de::Error::custom)
}

/// A secret or config the cluster holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileObject {
    /// Its id.
    pub id: FileObjectId,
    /// Secret or config.
    pub kind: FileKind,
    /// Store revision of its last change.
    pub version: u64,
    /// When it was created.
    pub created_at: Timestamp,
    /// Name, labels, data.
    pub spec: FileObjectSpec,
}

impl FileObject {
    /// The object as the API shows it: a secret without its data.
    pub fn redacted(mut self) -> FileObject {
        if self.kind == FileKind::Secret {
            self.spec.data = Vec::new();
        }
        self
    }
}
