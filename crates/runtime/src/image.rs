//! The image store: content-addressed blobs in OCI image-layout form, each layer unpacked once
//! (by diff id) and shared by every image that has it, and an index of images and their tags.
//!
//! ```text
//! <root>/blobs/sha256/<hex>   manifests, configs, layer archives as imported
//! <root>/layers/<hex>/        a layer unpacked, named by its diff id (overlayfs lower dir)
//! <root>/images.json          the images: id (config digest), manifest, layers, tags
//! <root>/tmp/                 imports in progress
//! ```
//!
//! Three kinds of file import ([`ImageStore::import`]): a root-filesystem tarball (as `docker
//! import`, with `--change` instructions for its config), a `docker save` archive and an OCI
//! image-layout archive (as `skopeo copy … oci-archive:` writes). Every digest is checked while
//! the content streams; a failed import removes what it wrote, so the store is as it was.

use crate::digest::{Digest, HashingWriter};
use crate::layer;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// OCI media types written by the store.
pub mod media {
    /// An OCI image manifest.
    pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// An OCI image index.
    pub const INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// An OCI image config.
    pub const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    /// An uncompressed layer.
    pub const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
    /// A gzip layer.
    pub const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    /// Docker's manifest list.
    pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
}

/// An image store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Reading or writing failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Why it failed.
        source: io::Error,
    },
    /// The archive is not one the store can import.
    #[error("{0}")]
    BadArchive(String),
    /// Content does not match its digest.
    #[error("{what}: digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// Which content.
        what: String,
        /// The digest it should have.
        expected: String,
        /// The digest it has.
        actual: String,
    },
    /// No such image.
    #[error("no such image: {0}")]
    NotFound(String),
    /// The image is used by containers.
    #[error("image {image} is in use by container(s) {containers}")]
    InUse {
        /// The image.
        image: String,
        /// The containers using it.
        containers: String,
    },
    /// A reference or tag is malformed.
    #[error("invalid reference {0:?}: {1}")]
    BadReference(String, String),
    /// A `--change` instruction is malformed.
    #[error("invalid change {0:?}: {1}")]
    BadChange(String, String),
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> ImageError {
    let context = context.into();
    move |source| ImageError::Io { context, source }
}

/// A content descriptor (manifest, config or layer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type.
    #[serde(default)]
    pub media_type: String,
    /// Content digest.
    pub digest: Digest,
    /// Size in bytes.
    pub size: u64,
    /// Annotations (the tag of an image in an OCI layout's index).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Platform of a manifest in an index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

/// The platform of an image in an index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// CPU architecture (`amd64`).
    #[serde(default)]
    pub architecture: String,
    /// Operating system (`linux`).
    #[serde(default)]
    pub os: String,
}

/// An image manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// Its media type.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub media_type: String,
    /// The config.
    pub config: Descriptor,
    /// The layers, base first.
    pub layers: Vec<Descriptor>,
}

/// An image index (the top of an OCI layout).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Always 2.
    pub schema_version: u32,
    /// Its media type.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub media_type: String,
    /// The manifests (or nested indexes).
    pub manifests: Vec<Descriptor>,
}

/// How a container runs by default: the `config` part of an image config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    /// The user (`uid[:gid]` or names).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    /// `KEY=value` pairs.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_vec"
    )]
    pub env: Vec<String>,
    /// The entrypoint.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_vec"
    )]
    pub entrypoint: Vec<String>,
    /// The command (arguments of the entrypoint).
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_vec"
    )]
    pub cmd: Vec<String>,
    /// Working directory.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub working_dir: String,
    /// Labels.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_map"
    )]
    pub labels: BTreeMap<String, String>,
    /// Stop signal.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stop_signal: String,
    /// The image's health check (docker's `HEALTHCHECK`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<ImageHealthcheck>,
}

/// An image's health check, as docker writes it in the config (durations in nanoseconds).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageHealthcheck {
    /// `["CMD", …]`, `["CMD-SHELL", "…"]` or `["NONE"]`.
    #[serde(default, deserialize_with = "null_vec")]
    pub test: Vec<String>,
    /// Between checks.
    #[serde(default)]
    pub interval: u64,
    /// A check's limit.
    #[serde(default)]
    pub timeout: u64,
    /// Grace after start.
    #[serde(default)]
    pub start_period: u64,
    /// Between checks during the start period.
    #[serde(default)]
    pub start_interval: u64,
    /// Failures in a row before unhealthy.
    #[serde(default)]
    pub retries: u64,
}

fn null_vec<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
}

fn null_map<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    Ok(Option::<BTreeMap<String, String>>::deserialize(d)?.unwrap_or_default())
}

/// The layer list of an image config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    /// Always `layers`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Digests of the uncompressed layers, base first.
    pub diff_ids: Vec<Digest>,
}

/// An image config (the parts shoal reads; others are kept in the blob as they were).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageConfig {
    /// Creation time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// CPU architecture.
    #[serde(default)]
    pub architecture: String,
    /// Operating system.
    #[serde(default)]
    pub os: String,
    /// How containers run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<RunConfig>,
    /// The layers.
    pub rootfs: RootFs,
}

/// An image as the store records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Image id: the digest of its config.
    pub id: Digest,
    /// Digest of its manifest.
    pub manifest: Digest,
    /// Diff ids of its layers, base first.
    pub layers: Vec<Digest>,
    /// Its tags (`name:tag`).
    pub tags: Vec<String>,
    /// When it was imported (ms since the epoch).
    pub imported: u64,
    /// Unpacked size of its layers in bytes.
    pub size: u64,
}

/// An image with its config, as [`ImageStore::get`] returns it.
#[derive(Debug, Clone)]
pub struct Image {
    /// The record.
    pub record: ImageRecord,
    /// Its config.
    pub config: ImageConfig,
}

impl Image {
    /// How containers of this image run by default.
    pub fn run_config(&self) -> RunConfig {
        self.config.config.clone().unwrap_or_default()
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct IndexFile {
    images: Vec<ImageRecord>,
    /// Unpacked size of each layer, by diff id.
    #[serde(default)]
    layer_sizes: BTreeMap<Digest, u64>,
}

/// Options of an import.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Tag for the imported image (required for a root-filesystem tarball).
    pub tag: Option<String>,
    /// Dockerfile instructions applied to the config of a root-filesystem tarball: `CMD`,
    /// `ENTRYPOINT`, `ENV`, `WORKDIR`, `USER`, `LABEL`, `STOPSIGNAL`.
    pub changes: Vec<String>,
    /// How messages name the archive (the user's file name when the store reads a copy).
    pub source_name: Option<String>,
}

/// Turns a user's reference into the form tags are stored in: `name:tag`, with docker.io's
/// default prefixes removed and `:latest` added when no tag is given.
pub fn normalize(reference: &str) -> Result<String, ImageError> {
    let bad = |why: &str| ImageError::BadReference(reference.to_owned(), why.to_owned());
    let r = reference.trim();
    if r.is_empty() {
        return Err(bad("empty"));
    }
    if r.contains(char::is_whitespace) || r.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(bad("names are lower case, without spaces"));
    }
    let r = r
        .strip_prefix("docker.io/library/")
        .or_else(|| r.strip_prefix("index.docker.io/library/"))
        .or_else(|| r.strip_prefix("docker.io/"))
        .unwrap_or(r);
    let last = r.rsplit('/').next().unwrap_or(r);
    if r.contains('@') {
        return Ok(r.to_owned());
    }
    if last.contains(':') {
        let tag = last.rsplit(':').next().unwrap_or_default();
        if tag.is_empty() {
            return Err(bad("empty tag"));
        }
        Ok(r.to_owned())
    } else {
        Ok(format!("{r}:latest"))
    }
}

/// The content-addressed image store of one node.
#[derive(Debug)]
pub struct ImageStore {
    root: PathBuf,
    /// Serializes imports and removals (they edit the index and may collect garbage).
    lock: Mutex<()>,
}

impl ImageStore {
    /// Opens (creating) the store at `root` and clears imports a crash interrupted.
    pub fn open(root: &Path) -> Result<ImageStore, ImageError> {
        for d in ["blobs/sha256", "layers", "tmp"] {
            let p = root.join(d);
            std::fs::create_dir_all(&p).map_err(io_err(format!("creating {}", p.display())))?;
        }
        let tmp = root.join("tmp");
        if let Ok(entries) = std::fs::read_dir(&tmp) {
            for e in entries.flatten() {
                let _ = remove_tree(&e.path());
            }
        }
        let store = ImageStore {
            root: root.to_owned(),
            lock: Mutex::new(()),
        };
        Ok(store)
    }

    /// Where the store lives.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    /// The file of a blob (manifest, config, compressed or plain layer) in the store.
    pub fn blob_file(&self, d: &Digest) -> PathBuf {
        self.blob_path(d)
    }

    /// The directory a layer is unpacked in.
    pub fn layer_dir(&self, diff_id: &Digest) -> PathBuf {
        self.root.join("layers").join(diff_id.hex())
    }

    fn read_index(&self) -> Result<IndexFile, ImageError> {
        let path = self.root.join("images.json");
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| ImageError::BadArchive(format!("{} is damaged: {e}", path.display()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(IndexFile::default()),
            Err(e) => Err(io_err(format!("reading {}", path.display()))(e)),
        }
    }

    fn write_index(&self, index: &IndexFile) -> Result<(), ImageError> {
        let path = self.root.join("images.json");
        let bytes = serde_json::to_vec_pretty(index).expect("index serializes");
        crate::write_atomic(&path, &bytes).map_err(io_err(format!("writing {}", path.display())))
    }

    /// Every image.
    pub fn list(&self) -> Result<Vec<ImageRecord>, ImageError> {
        Ok(self.read_index()?.images)
    }

    fn find<'a>(images: &'a [ImageRecord], reference: &str) -> Option<&'a ImageRecord> {
        let r = reference.trim();
        let hex = r.strip_prefix("sha256:").unwrap_or(r);
        if hex.len() >= 12 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            if let Some(i) = images.iter().find(|i| i.id.hex().starts_with(hex)) {
                return Some(i);
            }
        }
        let name = normalize(r).ok()?;
        if let Some((_, digest)) = name.split_once('@') {
            return images.iter().find(|i| i.manifest.as_str() == digest);
        }
        images.iter().find(|i| i.tags.contains(&name))
    }

    /// The image a reference (`name[:tag]`, `name@sha256:…`, an id or id prefix) names.
    pub fn get(&self, reference: &str) -> Result<Image, ImageError> {
        let index = self.read_index()?;
        let record = Self::find(&index.images, reference)
            .ok_or_else(|| ImageError::NotFound(reference.to_owned()))?
            .clone();
        let path = self.blob_path(&record.id);
        let bytes = std::fs::read(&path).map_err(io_err(format!("reading {}", path.display())))?;
        let config: ImageConfig = serde_json::from_slice(&bytes)
            .map_err(|e| ImageError::BadArchive(format!("config of {reference}: {e}")))?;
        Ok(Image { record, config })
    }

    /// The layer directories of an image, top first (overlayfs `lowerdir` order), each by a
    /// short link (`l/<16 hex>`, as Docker's overlay2 does) so that images of many layers fit
    /// in the page the kernel reads mount options from.
    pub fn lower_dirs(&self, image: &Image) -> Vec<PathBuf> {
        image
            .record
            .layers
            .iter()
            .rev()
            .map(|l| self.short_link(l).unwrap_or_else(|_| self.layer_dir(l)))
            .collect()
    }

    fn short_link(&self, diff_id: &Digest) -> io::Result<PathBuf> {
        let links = self.root.join("l");
        let link = links.join(&diff_id.hex()[..16]);
        let target = Path::new("../layers").join(diff_id.hex());
        match std::fs::read_link(&link) {
            Ok(t) if t == target => return Ok(link),
            // Another layer with the same prefix: use the full path for this one.
            Ok(_) => return Ok(self.layer_dir(diff_id)),
            Err(_) => {}
        }
        std::fs::create_dir_all(&links)?;
        match std::os::unix::fs::symlink(&target, &link) {
            Ok(()) => Ok(link),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if std::fs::read_link(&link)? == target {
                    Ok(link)
                } else {
                    Ok(self.layer_dir(diff_id))
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Adds a tag to an image.
    pub fn tag(&self, reference: &str, tag: &str) -> Result<(), ImageError> {
        let _g = self.lock.lock().expect("image store lock");
        let tag = normalize(tag)?;
        let mut index = self.read_index()?;
        let id = Self::find(&index.images, reference)
            .ok_or_else(|| ImageError::NotFound(reference.to_owned()))?
            .id
            .clone();
        for i in index.images.iter_mut() {
            i.tags.retain(|t| t != &tag);
            if i.id == id {
                i.tags.push(tag.clone());
                i.tags.sort();
            }
        }
        self.write_index(&index)
    }

    /// Removes a tag, or the image when it is named by id or by its last tag. Refused while
    /// `in_use(image id)` names containers. Returns what was done, as docker prints it.
    pub fn remove(
        &self,
        reference: &str,
        in_use: &dyn Fn(&Digest) -> Vec<String>,
    ) -> Result<Vec<String>, ImageError> {
        let _g = self.lock.lock().expect("image store lock");
        let mut index = self.read_index()?;
        let record = Self::find(&index.images, reference)
            .ok_or_else(|| ImageError::NotFound(reference.to_owned()))?
            .clone();
        let by_tag = normalize(reference)
            .ok()
            .filter(|t| record.tags.contains(t));
        let mut done = Vec::new();
        if let Some(tag) = &by_tag {
            if record.tags.len() > 1 {
                let r = index
                    .images
                    .iter_mut()
                    .find(|i| i.id == record.id)
                    .expect("found above");
                r.tags.retain(|t| t != tag);
                self.write_index(&index)?;
                return Ok(vec![format!("Untagged: {tag}")]);
            }
        }
        let users = in_use(&record.id);
        if !users.is_empty() {
            return Err(ImageError::InUse {
                image: reference.to_owned(),
                containers: users.join(", "),
            });
        }
        index.images.retain(|i| i.id != record.id);
        self.write_index(&index)?;
        for t in &record.tags {
            done.push(format!("Untagged: {t}"));
        }
        done.push(format!("Deleted: {}", record.id));
        self.collect_garbage(&index);
        Ok(done)
    }

    /// `image prune`: removes images no container uses that have no tag left (a tag moved to
    /// a newer import or pull), or, with `all`, every image no container uses. Returns what
    /// it did, as `remove` words it.
    pub fn prune(
        &self,
        all: bool,
        in_use: &dyn Fn(&Digest) -> Vec<String>,
    ) -> Result<Vec<String>, ImageError> {
        let candidates: Vec<ImageRecord> = self
            .list()?
            .into_iter()
            .filter(|i| (all || i.tags.is_empty()) && in_use(&i.id).is_empty())
            .collect();
        let mut done = Vec::new();
        for i in candidates {
            done.extend(self.remove(i.id.as_str(), in_use)?);
        }
        Ok(done)
    }

    /// Removes blobs and layers no image refers to.
    fn collect_garbage(&self, index: &IndexFile) {
        let mut blobs: BTreeSet<String> = BTreeSet::new();
        let mut layers: BTreeSet<String> = BTreeSet::new();
        for i in &index.images {
            blobs.insert(i.id.hex().to_owned());
            blobs.insert(i.manifest.hex().to_owned());
            if let Ok(bytes) = std::fs::read(self.blob_path(&i.manifest)) {
                if let Ok(m) = serde_json::from_slice::<Manifest>(&bytes) {
                    blobs.extend(m.layers.iter().map(|l| l.digest.hex().to_owned()));
                }
            }
            layers.extend(i.layers.iter().map(|l| l.hex().to_owned()));
        }
        let sweep = |dir: PathBuf, keep: &BTreeSet<String>| {
            if let Ok(entries) = std::fs::read_dir(&dir) {
                for e in entries.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if !keep.contains(&name) {
                        if let Err(err) = remove_tree(&e.path()) {
                            tracing::warn!(path = %e.path().display(), error = %err, "cannot remove unused image content");
                        }
                    }
                }
            }
        };
        sweep(self.root.join("blobs/sha256"), &blobs);
        sweep(self.root.join("layers"), &layers);
        // Links whose layer is gone.
        for e in std::fs::read_dir(self.root.join("l"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if !e.path().exists() {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// Imports an archive; see the module docs for the kinds. Returns the images it added.
    pub fn import(
        &self,
        file: &Path,
        options: &ImportOptions,
    ) -> Result<Vec<ImageRecord>, ImageError> {
        let tag = options.tag.as_deref().map(normalize).transpose()?;
        let _g = self.lock.lock().expect("image store lock");
        let staging = tempfile::Builder::new()
            .prefix("import-")
            .tempdir_in(self.root.join("tmp"))
            .map_err(io_err("creating a staging directory"))?;
        let before = self.read_index()?;
        let name = options
            .source_name
            .clone()
            .unwrap_or_else(|| file.display().to_string());
        let result = self.import_staged(file, &name, tag, options, staging.path());
        if result.is_err() {
            // Whatever the failed import wrote is referenced by no image.
            self.collect_garbage(&before);
        }
        let _ = remove_tree(staging.path());
        result
    }

    fn import_staged(
        &self,
        file: &Path,
        name: &str,
        tag: Option<String>,
        options: &ImportOptions,
        staging: &Path,
    ) -> Result<Vec<ImageRecord>, ImageError> {
        let names = archive_names(file, name)?;
        let top = |n: &str| names.iter().any(|x| x.trim_start_matches("./") == n);
        let found = if top("oci-layout") && top("index.json") {
            extract(file, name, staging)?;
            self.import_oci_layout(staging)?
        } else if top("manifest.json") && !names.iter().any(|n| is_rootfs_marker(n)) {
            extract(file, name, staging)?;
            self.import_docker_save(staging)?
        } else {
            let Some(tag) = tag.clone() else {
                return Err(ImageError::BadArchive(format!(
                    "{} is a root-filesystem tarball: give the image a name with --tag",
                    name
                )));
            };
            vec![(
                self.import_rootfs(file, name, &options.changes, staging)?,
                vec![tag],
            )]
        };
        self.record_found(found, name, tag, staging)
    }

    /// Imports an OCI image layout already unpacked in `dir` (a registry pull's staging
    /// directory), tagged `tag`. Every blob's digest is checked as in [`ImageStore::import`];
    /// a failure leaves the store as it was.
    pub fn import_layout(
        &self,
        dir: &Path,
        name: &str,
        tag: &str,
    ) -> Result<Vec<ImageRecord>, ImageError> {
        let tag = normalize(tag)?;
        let _g = self.lock.lock().expect("image store lock");
        let before = self.read_index()?;
        let result = self
            .import_oci_layout(dir)
            .and_then(|found| self.record_found(found, name, Some(tag), dir));
        if result.is_err() {
            self.collect_garbage(&before);
        }
        result
    }

    /// Records imported images and their tags in the index.
    fn record_found(
        &self,
        found: Vec<(ImageRecord, Vec<String>)>,
        name: &str,
        tag: Option<String>,
        staging: &Path,
    ) -> Result<Vec<ImageRecord>, ImageError> {
        if found.is_empty() {
            return Err(ImageError::BadArchive(format!("{} holds no image", name)));
        }
        if tag.is_some() && found.len() > 1 {
            return Err(ImageError::BadArchive(format!(
                "{} holds {} images: --tag names one",
                name,
                found.len()
            )));
        }
        let mut index = self.read_index()?;
        let mut added = Vec::new();
        for (mut record, mut tags) in found {
            if let Some(t) = &tag {
                tags = vec![t.clone()];
            }
            let tags: Vec<String> = tags
                .iter()
                .map(|t| normalize(t))
                .collect::<Result<_, _>>()?;
            for i in index.images.iter_mut() {
                i.tags.retain(|t| !tags.contains(t));
            }
            record.size = record
                .layers
                .iter()
                .map(|l| index.layer_sizes.get(l).copied().unwrap_or(0))
                .sum();
            match index.images.iter_mut().find(|i| i.id == record.id) {
                Some(existing) => {
                    existing.tags.extend(tags);
                    existing.tags.sort();
                    existing.tags.dedup();
                    added.push(existing.clone());
                }
                None => {
                    record.tags = tags;
                    record.tags.sort();
                    index.images.push(record.clone());
                    added.push(record);
                }
            }
        }
        // Sizes of layers unpacked by this import were noted in the staging directory.
        for (diff, size) in read_sizes(staging) {
            index.layer_sizes.insert(diff, size);
        }
        for r in index.images.iter_mut() {
            r.size = r
                .layers
                .iter()
                .map(|l| index.layer_sizes.get(l).copied().unwrap_or(0))
                .sum();
        }
        let added = added
            .into_iter()
            .map(|a| {
                index
                    .images
                    .iter()
                    .find(|i| i.id == a.id)
                    .cloned()
                    .unwrap_or(a)
            })
            .collect();
        self.write_index(&index)?;
        Ok(added)
    }

    /// Copies `reader` into the blob store; checks `expected` when given.
    fn put_blob(
        &self,
        reader: &mut dyn Read,
        expected: Option<&Digest>,
        what: &str,
    ) -> Result<(Digest, u64), ImageError> {
        let tmp = tempfile::NamedTempFile::new_in(self.root.join("tmp"))
            .map_err(io_err("creating a blob"))?;
        let mut w = HashingWriter::new(tmp);
        io::copy(reader, &mut w).map_err(io_err(format!("reading {what}")))?;
        let (digest, size, tmp) = w.finish();
        if let Some(e) = expected {
            if e != &digest {
                return Err(ImageError::DigestMismatch {
                    what: what.to_owned(),
                    expected: e.to_string(),
                    actual: digest.to_string(),
                });
            }
        }
        let dst = self.blob_path(&digest);
        if !dst.exists() {
            tmp.persist(&dst)
                .map_err(|e| io_err(format!("storing {what}"))(e.error))?;
        }
        Ok((digest, size))
    }

    fn put_json(&self, value: &impl Serialize, what: &str) -> Result<(Digest, u64), ImageError> {
        let bytes = serde_json::to_vec(value).expect("json serializes");
        self.put_blob(&mut &bytes[..], None, what)
    }

    /// Unpacks the layer stored as blob `blob` unless its diff id is already unpacked; checks
    /// the diff id against `expected` when given. Returns the diff id.
    fn unpack_layer(
        &self,
        blob: &Digest,
        expected: Option<&Digest>,
        what: &str,
        staging: &Path,
    ) -> Result<Digest, ImageError> {
        if let Some(e) = expected {
            if self.layer_dir(e).exists() {
                // Already unpacked: the archive's copy must still be the same layer.
                let file =
                    File::open(self.blob_path(blob)).map_err(io_err(format!("opening {what}")))?;
                let plain = layer::decompressed(BufReader::new(file))
                    .map_err(io_err(format!("reading {what}")))?;
                let (actual, _) = crate::digest::HashingReader::new(plain)
                    .finish()
                    .map_err(|e| ImageError::BadArchive(format!("{what}: {e}")))?;
                if &actual != e {
                    return Err(ImageError::DigestMismatch {
                        what: format!("{what} (diff id)"),
                        expected: e.to_string(),
                        actual: actual.to_string(),
                    });
                }
                return Ok(e.clone());
            }
        }
        let dir = tempfile::Builder::new()
            .prefix("layer-")
            .tempdir_in(self.root.join("tmp"))
            .map_err(io_err("creating a layer directory"))?;
        let file = File::open(self.blob_path(blob)).map_err(io_err(format!("opening {what}")))?;
        let (diff_id, size) = layer::unpack(file, dir.path())
            .map_err(|e| ImageError::BadArchive(format!("{what}: {}", layer::describe(&e))))?;
        if let Some(e) = expected {
            if e != &diff_id {
                return Err(ImageError::DigestMismatch {
                    what: format!("{what} (diff id)"),
                    expected: e.to_string(),
                    actual: diff_id.to_string(),
                });
            }
        }
        let dst = self.layer_dir(&diff_id);
        if dst.exists() {
            return Ok(diff_id);
        }
        let path = dir.keep();
        std::fs::rename(&path, &dst).map_err(io_err(format!("storing {what}")))?;
        note_size(staging, &diff_id, size);
        Ok(diff_id)
    }

    fn import_rootfs(
        &self,
        file: &Path,
        name: &str,
        changes: &[String],
        staging: &Path,
    ) -> Result<ImageRecord, ImageError> {
        let mut run = RunConfig {
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            ..Default::default()
        };
        for c in changes {
            apply_change(&mut run, c)?;
        }
        let mut f = File::open(file).map_err(io_err(format!("opening {name}")))?;
        let gzip = {
            let mut magic = [0u8; 2];
            let n = f.read(&mut magic).map_err(io_err("reading"))?;
            n == 2 && magic == [0x1f, 0x8b]
        };
        let mut f = File::open(file).map_err(io_err(format!("opening {name}")))?;
        let what = name.to_owned();
        let (blob, size) = self.put_blob(&mut f, None, &what)?;
        let diff_id = self.unpack_layer(&blob, None, &what, staging)?;
        let config = ImageConfig {
            created: Some(rfc3339_now()),
            architecture: go_arch().to_owned(),
            os: "linux".into(),
            config: Some(run),
            rootfs: RootFs {
                kind: "layers".into(),
                diff_ids: vec![diff_id.clone()],
            },
        };
        let (config_digest, config_size) = self.put_json(&config, "image config")?;
        let manifest = Manifest {
            schema_version: 2,
            media_type: media::MANIFEST.into(),
            config: descriptor(media::CONFIG, config_digest.clone(), config_size),
            layers: vec![descriptor(
                if gzip {
                    media::LAYER_GZIP
                } else {
                    media::LAYER_TAR
                },
                blob,
                size,
            )],
        };
        let (manifest_digest, _) = self.put_json(&manifest, "image manifest")?;
        Ok(ImageRecord {
            id: config_digest,
            manifest: manifest_digest,
            layers: vec![diff_id],
            tags: vec![],
            imported: crate::now_ms(),
            size: 0,
        })
    }

    fn import_docker_save(
        &self,
        dir: &Path,
    ) -> Result<Vec<(ImageRecord, Vec<String>)>, ImageError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Entry {
            config: String,
            #[serde(default)]
            repo_tags: Option<Vec<String>>,
            layers: Vec<String>,
        }
        let path = dir.join("manifest.json");
        let bytes = std::fs::read(&path).map_err(io_err("reading manifest.json"))?;
        let entries: Vec<Entry> = serde_json::from_slice(&bytes)
            .map_err(|e| ImageError::BadArchive(format!("manifest.json: {e}")))?;
        let mut out = Vec::new();
        for entry in entries {
            let config_path = inside(dir, &entry.config)?;
            let config_bytes =
                std::fs::read(&config_path).map_err(io_err(format!("reading {}", entry.config)))?;
            // The config's file is named by its digest: check it.
            let actual = Digest::of(&config_bytes);
            if let Some(named) = hex_in_name(&entry.config) {
                if named != actual.hex() {
                    return Err(ImageError::DigestMismatch {
                        what: entry.config.clone(),
                        expected: format!("sha256:{named}"),
                        actual: actual.to_string(),
                    });
                }
            }
            let config: ImageConfig = serde_json::from_slice(&config_bytes)
                .map_err(|e| ImageError::BadArchive(format!("{}: {e}", entry.config)))?;
            if config.rootfs.diff_ids.len() != entry.layers.len() {
                return Err(ImageError::BadArchive(format!(
                    "{}: {} layers listed but the config has {} diff ids",
                    entry.config,
                    entry.layers.len(),
                    config.rootfs.diff_ids.len()
                )));
            }
            let (config_digest, config_size) =
                self.put_blob(&mut &config_bytes[..], None, &entry.config)?;
            let mut layer_descs = Vec::new();
            let mut diff_ids = Vec::new();
            for (i, l) in entry.layers.iter().enumerate() {
                let p = inside(dir, l)?;
                let mut f = File::open(&p).map_err(io_err(format!("opening {l}")))?;
                let (blob, size) = self.put_blob(&mut f, None, l)?;
                let gz = is_gzip(&self.blob_path(&blob));
                let diff = self.unpack_layer(&blob, Some(&config.rootfs.diff_ids[i]), l, dir)?;
                diff_ids.push(diff);
                layer_descs.push(descriptor(
                    if gz {
                        media::LAYER_GZIP
                    } else {
                        media::LAYER_TAR
                    },
                    blob,
                    size,
                ));
            }
            let manifest = Manifest {
                schema_version: 2,
                media_type: media::MANIFEST.into(),
                config: descriptor(media::CONFIG, config_digest.clone(), config_size),
                layers: layer_descs,
            };
            let (manifest_digest, _) = self.put_json(&manifest, "image manifest")?;
            out.push((
                ImageRecord {
                    id: config_digest,
                    manifest: manifest_digest,
                    layers: diff_ids,
                    tags: vec![],
                    imported: crate::now_ms(),
                    size: 0,
                },
                entry.repo_tags.unwrap_or_default(),
            ));
        }
        Ok(out)
    }

    fn import_oci_layout(&self, dir: &Path) -> Result<Vec<(ImageRecord, Vec<String>)>, ImageError> {
        let layout = std::fs::read(dir.join("oci-layout")).map_err(io_err("reading oci-layout"))?;
        let v: serde_json::Value = serde_json::from_slice(&layout)
            .map_err(|e| ImageError::BadArchive(format!("oci-layout: {e}")))?;
        if v.get("imageLayoutVersion").and_then(|v| v.as_str()) != Some("1.0.0") {
            return Err(ImageError::BadArchive(
                "oci-layout: imageLayoutVersion is not 1.0.0".into(),
            ));
        }
        let bytes = std::fs::read(dir.join("index.json")).map_err(io_err("reading index.json"))?;
        let index: Index = serde_json::from_slice(&bytes)
            .map_err(|e| ImageError::BadArchive(format!("index.json: {e}")))?;
        let mut out = Vec::new();
        for d in &index.manifests {
            let mut tags = Vec::new();
            for key in [
                "io.containerd.image.name",
                "org.opencontainers.image.ref.name",
            ] {
                if let Some(name) = d.annotations.get(key) {
                    // A bare ref name is a tag only ("latest"); a full one names the image.
                    if name.contains(':') || name.contains('/') {
                        tags.push(name.clone());
                        break;
                    }
                }
            }
            let record = self.import_oci_manifest(dir, d)?;
            out.push((record, tags));
        }
        Ok(out)
    }

    fn read_verified(&self, dir: &Path, d: &Descriptor) -> Result<Vec<u8>, ImageError> {
        let p = dir.join("blobs/sha256").join(d.digest.hex());
        let bytes = std::fs::read(&p).map_err(io_err(format!("reading blob {}", d.digest)))?;
        let actual = Digest::of(&bytes);
        if actual != d.digest || bytes.len() as u64 != d.size {
            return Err(ImageError::DigestMismatch {
                what: format!("blob {} ({} bytes)", d.digest, d.size),
                expected: d.digest.to_string(),
                actual: format!("{actual} ({} bytes)", bytes.len()),
            });
        }
        Ok(bytes)
    }

    fn import_oci_manifest(&self, dir: &Path, d: &Descriptor) -> Result<ImageRecord, ImageError> {
        let bytes = self.read_verified(dir, d)?;
        if d.media_type == media::INDEX || d.media_type == media::DOCKER_LIST {
            let nested: Index = serde_json::from_slice(&bytes)
                .map_err(|e| ImageError::BadArchive(format!("index {}: {e}", d.digest)))?;
            let pick = nested
                .manifests
                .iter()
                .find(|m| {
                    m.platform
                        .as_ref()
                        .is_some_and(|p| p.os == "linux" && p.architecture == go_arch())
                })
                .ok_or_else(|| {
                    ImageError::BadArchive(format!(
                        "index {} has no image for linux/{}",
                        d.digest,
                        go_arch()
                    ))
                })?;
            return self.import_oci_manifest(dir, pick);
        }
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| ImageError::BadArchive(format!("manifest {}: {e}", d.digest)))?;
        let config_bytes = self.read_verified(dir, &manifest.config)?;
        let config: ImageConfig = serde_json::from_slice(&config_bytes).map_err(|e| {
            ImageError::BadArchive(format!("config {}: {e}", manifest.config.digest))
        })?;
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(ImageError::BadArchive(format!(
                "manifest {} lists {} layers but its config has {} diff ids",
                d.digest,
                manifest.layers.len(),
                config.rootfs.diff_ids.len()
            )));
        }
        let mut diff_ids = Vec::new();
        for (i, l) in manifest.layers.iter().enumerate() {
            let p = dir.join("blobs/sha256").join(l.digest.hex());
            let mut f = File::open(&p).map_err(io_err(format!("opening layer {}", l.digest)))?;
            let what = format!("layer {}", l.digest);
            let (blob, size) = self.put_blob(&mut f, Some(&l.digest), &what)?;
            if size != l.size {
                return Err(ImageError::BadArchive(format!(
                    "{what}: {size} bytes, the manifest says {}",
                    l.size
                )));
            }
            diff_ids.push(self.unpack_layer(
                &blob,
                Some(&config.rootfs.diff_ids[i]),
                &what,
                dir,
            )?);
        }
        self.put_blob(
            &mut &config_bytes[..],
            Some(&manifest.config.digest),
            "config",
        )?;
        self.put_blob(&mut &bytes[..], Some(&d.digest), "manifest")?;
        Ok(ImageRecord {
            id: manifest.config.digest.clone(),
            manifest: d.digest.clone(),
            layers: diff_ids,
            tags: vec![],
            imported: crate::now_ms(),
            size: 0,
        })
    }
}

fn descriptor(media_type: &str, digest: Digest, size: u64) -> Descriptor {
    Descriptor {
        media_type: media_type.into(),
        digest,
        size,
        annotations: BTreeMap::new(),
        platform: None,
    }
}

/// Top-level files that show a tarball is a root filesystem, not an image archive.
fn is_rootfs_marker(name: &str) -> bool {
    let n = name.trim_start_matches("./");
    n.starts_with("bin/") || n.starts_with("etc/") || n.starts_with("usr/")
}

fn is_gzip(path: &Path) -> bool {
    let mut magic = [0u8; 2];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == [0x1f, 0x8b]
}

/// The 64-hex digest in a file name such as `abc….json` or `blobs/sha256/abc…`.
fn hex_in_name(name: &str) -> Option<&str> {
    let base = name.rsplit('/').next()?;
    let stem = base.strip_suffix(".json").unwrap_or(base);
    (stem.len() == 64 && stem.bytes().all(|b| b.is_ascii_hexdigit())).then_some(stem)
}

/// `rel` under `dir`, refusing paths that leave it.
fn inside(dir: &Path, rel: &str) -> Result<PathBuf, ImageError> {
    let p = Path::new(rel);
    if p.is_absolute()
        || p.components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(ImageError::BadArchive(format!(
            "path {rel:?} leaves the archive"
        )));
    }
    Ok(dir.join(p))
}

/// Names of the entries of a (maybe gzip) tar archive.
fn archive_names(file: &Path, name: &str) -> Result<Vec<String>, ImageError> {
    let f = File::open(file).map_err(io_err(format!("opening {}", name)))?;
    let reader =
        layer::decompressed(BufReader::new(f)).map_err(io_err(format!("reading {}", name)))?;
    let mut archive = tar::Archive::new(reader);
    let mut names = Vec::new();
    let bad = |e: io::Error| ImageError::BadArchive(format!("{} is not a tar archive: {e}", name));
    for entry in archive.entries().map_err(bad)? {
        let entry = entry.map_err(bad)?;
        names.push(entry.path().map_err(bad)?.to_string_lossy().into_owned());
    }
    if names.is_empty() {
        return Err(ImageError::BadArchive(format!(
            "{} is empty or not a tar archive",
            name
        )));
    }
    Ok(names)
}

/// Extracts an image archive (regular files, directories, symlinks) into `dir`.
fn extract(file: &Path, name: &str, dir: &Path) -> Result<(), ImageError> {
    let f = File::open(file).map_err(io_err(format!("opening {}", name)))?;
    let reader =
        layer::decompressed(BufReader::new(f)).map_err(io_err(format!("reading {}", name)))?;
    let mut archive = tar::Archive::new(reader);
    archive
        .unpack(dir)
        .map_err(|e| ImageError::BadArchive(format!("{}: {}", name, layer::describe(&e))))
}

fn note_size(staging: &Path, diff: &Digest, size: u64) {
    let path = staging.join(".layer-sizes");
    let mut sizes: BTreeMap<Digest, u64> = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    sizes.insert(diff.clone(), size);
    let _ = std::fs::write(&path, serde_json::to_vec(&sizes).expect("serializes"));
}

fn read_sizes(staging: &Path) -> BTreeMap<Digest, u64> {
    std::fs::read(staging.join(".layer-sizes"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn remove_tree(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// The Go name of this machine's architecture, as image configs use.
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn rfc3339_now() -> String {
    let secs = crate::now_ms() / 1000;
    let (y, mo, d, h, mi, s) = civil(secs);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// Splits seconds since the epoch into UTC calendar fields.
pub(crate) fn civil(secs: u64) -> (i64, u32, u32, u32, u32, u32) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's days-from-civil inverse.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        m,
        d,
        (rem / 3600) as u32,
        ((rem % 3600) / 60) as u32,
        (rem % 60) as u32,
    )
}

/// Applies one Dockerfile instruction of `docker import --change` to a run config.
pub fn apply_change(run: &mut RunConfig, change: &str) -> Result<(), ImageError> {
    let bad = |why: &str| ImageError::BadChange(change.to_owned(), why.to_owned());
    let (instr, rest) = change
        .trim()
        .split_once(char::is_whitespace)
        .ok_or_else(|| bad("expected INSTRUCTION ARGUMENTS"))?;
    let rest = rest.trim();
    let exec_form = |rest: &str| -> Result<Vec<String>, ImageError> {
        if rest.starts_with('[') {
            serde_json::from_str(rest).map_err(|e| bad(&format!("bad JSON array: {e}")))
        } else {
            Ok(vec!["/bin/sh".into(), "-c".into(), rest.to_owned()])
        }
    };
    match instr.to_ascii_uppercase().as_str() {
        "CMD" => run.cmd = exec_form(rest)?,
        "ENTRYPOINT" => run.entrypoint = exec_form(rest)?,
        "WORKDIR" => run.working_dir = rest.to_owned(),
        "USER" => run.user = rest.to_owned(),
        "STOPSIGNAL" => run.stop_signal = rest.to_owned(),
        "ENV" | "LABEL" => {
            let pairs: Vec<(String, String)> = if rest.contains('=') {
                rest.split_whitespace()
                    .map(|kv| {
                        let (k, v) = kv
                            .split_once('=')
                            .ok_or_else(|| bad("expected KEY=value"))?;
                        Ok((k.to_owned(), v.trim_matches('"').to_owned()))
                    })
                    .collect::<Result<_, ImageError>>()?
            } else {
                let (k, v) = rest
                    .split_once(char::is_whitespace)
                    .ok_or_else(|| bad("expected KEY value"))?;
                vec![(k.to_owned(), v.trim().to_owned())]
            };
            for (k, v) in pairs {
                if instr.eq_ignore_ascii_case("ENV") {
                    run.env.retain(|e| e.split('=').next() != Some(k.as_str()));
                    run.env.push(format!("{k}={v}"));
                } else {
                    run.labels.insert(k, v);
                }
            }
        }
        "EXPOSE" | "VOLUME" => {}
        other => return Err(bad(&format!("{other} is not supported by import"))),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_normalize_like_docker() {
        assert_eq!(normalize("busybox").unwrap(), "busybox:latest");
        assert_eq!(
            normalize("docker.io/library/busybox:1.36").unwrap(),
            "busybox:1.36"
        );
        assert_eq!(
            normalize("registry:5000/team/app").unwrap(),
            "registry:5000/team/app:latest"
        );
        assert!(normalize("Busybox").is_err());
        assert!(normalize("").is_err());
    }

    #[test]
    fn changes_follow_dockerfile_forms() {
        let mut r = RunConfig::default();
        apply_change(&mut r, r#"CMD ["httpd", "-f"]"#).unwrap();
        apply_change(&mut r, "ENTRYPOINT echo hi").unwrap();
        apply_change(&mut r, "ENV A=1 B=2").unwrap();
        apply_change(&mut r, "ENV A 3").unwrap();
        apply_change(&mut r, "WORKDIR /srv").unwrap();
        assert_eq!(r.cmd, ["httpd", "-f"]);
        assert_eq!(r.entrypoint, ["/bin/sh", "-c", "echo hi"]);
        assert_eq!(r.env, ["B=2", "A=3"]);
        assert_eq!(r.working_dir, "/srv");
        assert!(apply_change(&mut r, "RUN make").is_err());
        assert!(apply_change(&mut r, "CMD [oops").is_err());
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(civil(1_700_000_000), (2023, 11, 14, 22, 13, 20));
    }
}
