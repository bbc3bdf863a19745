//! Named volumes of the local driver: a directory per volume under the node's data root,
//! created on first use and kept after the containers that used it are gone.
//!
//! ```text
//! <root>/<name>/_data        what containers see
//! <root>/<name>/volume.json  name, driver, labels, creation time
//! ```

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

/// A volume operation failed.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// The name is not usable.
    #[error("invalid volume name {0:?}: use letters, digits, `_`, `.` and `-`, starting with a letter or digit")]
    BadName(String),
    /// No such volume.
    #[error("no such volume: {0}")]
    NotFound(String),
    /// Containers use it.
    #[error("volume {name} is in use by container(s) {containers}")]
    InUse {
        /// The volume.
        name: String,
        /// The containers.
        containers: String,
    },
    /// Reading or writing failed.
    #[error("volume {name}: {source}")]
    Io {
        /// The volume.
        name: String,
        /// Why.
        source: io::Error,
    },
}

/// A volume as `volume ls|inspect` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    /// Its name.
    pub name: String,
    /// Always `local`.
    pub driver: String,
    /// Where its data lives on the node.
    pub mountpoint: PathBuf,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// When it was created (ms since the epoch).
    pub created: u64,
}

/// The node's named volumes.
#[derive(Debug, Clone)]
pub struct VolumeStore {
    root: PathBuf,
}

fn valid(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        && name.len() <= 255
}

impl VolumeStore {
    /// The store at `root`.
    pub fn open(root: &Path) -> io::Result<VolumeStore> {
        std::fs::create_dir_all(root)?;
        Ok(VolumeStore {
            root: root.to_owned(),
        })
    }

    /// The volume `name`, created (with `labels`) when it does not exist.
    pub fn ensure(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<Volume, VolumeError> {
        if !valid(name) {
            return Err(VolumeError::BadName(name.to_owned()));
        }
        if let Ok(v) = self.get(name) {
            return Ok(v);
        }
        let io = |source| VolumeError::Io {
            name: name.to_owned(),
            source,
        };
        let dir = self.root.join(name);
        std::fs::create_dir_all(dir.join("_data")).map_err(io)?;
        let v = Volume {
            name: name.to_owned(),
            driver: "local".into(),
            mountpoint: dir.join("_data"),
            labels: labels.clone(),
            created: crate::now_ms(),
        };
        let bytes = serde_json::to_vec_pretty(&v).expect("volume serializes");
        crate::write_atomic(&dir.join("volume.json"), &bytes).map_err(io)?;
        Ok(v)
    }

    /// The volume `name`.
    pub fn get(&self, name: &str) -> Result<Volume, VolumeError> {
        if !valid(name) {
            return Err(VolumeError::BadName(name.to_owned()));
        }
        let bytes = std::fs::read(self.root.join(name).join("volume.json"))
            .map_err(|_| VolumeError::NotFound(name.to_owned()))?;
        serde_json::from_slice(&bytes).map_err(|e| VolumeError::Io {
            name: name.to_owned(),
            source: io::Error::new(io::ErrorKind::InvalidData, e),
        })
    }

    /// Fills an empty volume with what the image has at its mount point, as Docker does when
    /// a volume is first mounted; returns whether it copied anything.
    pub fn populate(&self, volume: &Volume, from: &Path) -> io::Result<bool> {
        let io_err =
            |e: io::Error| io::Error::new(e.kind(), format!("volume {}: {e}", volume.name));
        let empty = std::fs::read_dir(&volume.mountpoint)
            .map_err(io_err)?
            .next()
            .is_none();
        if !empty || !from.is_dir() {
            return Ok(false);
        }
        copy_tree(from, &volume.mountpoint).map_err(io_err)?;
        let meta = std::fs::metadata(from)?;
        copy_owner_and_mode(&meta, &volume.mountpoint)?;
        Ok(true)
    }

    /// Every volume, by name.
    pub fn list(&self) -> Vec<Volume> {
        let mut out: Vec<Volume> = std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| self.get(&e.file_name().to_string_lossy()).ok())
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Removes a volume and its data; refused while `users` is not empty.
    pub fn remove(&self, name: &str, users: &[String]) -> Result<(), VolumeError> {
        self.get(name)?;
        if !users.is_empty() {
            return Err(VolumeError::InUse {
                name: name.to_owned(),
                containers: users.join(", "),
            });
        }
        std::fs::remove_dir_all(self.root.join(name)).map_err(|source| VolumeError::Io {
            name: name.to_owned(),
            source,
        })
    }
}

fn copy_owner_and_mode(meta: &std::fs::Metadata, dst: &Path) -> io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if nix::unistd::geteuid().is_root() {
        nix::unistd::chown(
            dst,
            Some(nix::unistd::Uid::from_raw(meta.uid())),
            Some(nix::unistd::Gid::from_raw(meta.gid())),
        )?;
    }
    std::fs::set_permissions(dst, std::fs::Permissions::from_mode(meta.mode() & 0o7777))
}

/// Copies directories, files and symlinks (with owners and modes) from `src` into `dst`.
fn copy_tree(src: &Path, dst: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let meta = std::fs::symlink_metadata(&from)?;
        let kind = meta.file_type();
        if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&from)?, &to)?;
            if nix::unistd::geteuid().is_root() {
                let _ = std::os::unix::fs::lchown(&to, Some(meta.uid()), Some(meta.gid()));
            }
            continue;
        }
        if kind.is_dir() {
            std::fs::create_dir(&to)?;
            copy_tree(&from, &to)?;
        } else if kind.is_file() {
            std::fs::copy(&from, &to)?;
        } else {
            // Device nodes, fifos and sockets are not copied into volumes.
            continue;
        }
        copy_owner_and_mode(&meta, &to)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_are_created_once_and_kept() {
        let d = tempfile::tempdir().unwrap();
        let s = VolumeStore::open(d.path()).unwrap();
        let v = s.ensure("data", &BTreeMap::new()).unwrap();
        std::fs::write(v.mountpoint.join("f"), "x").unwrap();
        let again = s.ensure("data", &BTreeMap::new()).unwrap();
        assert_eq!(v, again);
        assert_eq!(std::fs::read(again.mountpoint.join("f")).unwrap(), b"x");
        assert_eq!(s.list().len(), 1);
        assert!(matches!(
            s.remove("data", &["c1".into()]),
            Err(VolumeError::InUse { .. })
        ));
        s.remove("data", &[]).unwrap();
        assert!(matches!(s.get("data"), Err(VolumeError::NotFound(_))));
        assert!(matches!(
            s.ensure("../x", &BTreeMap::new()),
            Err(VolumeError::BadName(_))
        ));
    }

    #[test]
    fn an_empty_volume_takes_the_image_content_once() {
        let d = tempfile::tempdir().unwrap();
        let s = VolumeStore::open(&d.path().join("vols")).unwrap();
        let image = d.path().join("image/srv");
        std::fs::create_dir_all(image.join("sub")).unwrap();
        std::fs::write(image.join("sub/conf"), "default").unwrap();
        std::os::unix::fs::symlink("sub/conf", image.join("link")).unwrap();
        let v = s.ensure("data", &BTreeMap::new()).unwrap();
        assert!(s.populate(&v, &image).unwrap());
        assert_eq!(
            std::fs::read_to_string(v.mountpoint.join("link")).unwrap(),
            "default"
        );
        std::fs::write(v.mountpoint.join("sub/conf"), "changed").unwrap();
        assert!(
            !s.populate(&v, &image).unwrap(),
            "a volume with data is left alone"
        );
        assert_eq!(
            std::fs::read_to_string(v.mountpoint.join("sub/conf")).unwrap(),
            "changed"
        );
    }
}
