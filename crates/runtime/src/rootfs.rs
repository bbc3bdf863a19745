//! A container's root filesystem: an overlayfs mount of the image's layers (read-only, top
//! first) under a writable upper directory of the container's own, removed with it.

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use std::io;
use std::path::{Path, PathBuf};

/// The directories of one container's overlay, all under its own directory.
#[derive(Debug, Clone)]
pub struct Overlay {
    /// Writable layer.
    pub upper: PathBuf,
    /// overlayfs work directory (same filesystem as `upper`).
    pub work: PathBuf,
    /// Where the merged tree is mounted.
    pub merged: PathBuf,
}

impl Overlay {
    /// The overlay directories under `dir`.
    pub fn under(dir: &Path) -> Overlay {
        Overlay {
            upper: dir.join("upper"),
            work: dir.join("work"),
            merged: dir.join("rootfs"),
        }
    }

    /// The mount options for `lower` (top first).
    pub fn options(&self, lower: &[PathBuf]) -> io::Result<String> {
        if lower.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an image has at least one layer",
            ));
        }
        let mut parts = Vec::new();
        for p in lower.iter().chain([&self.upper, &self.work]) {
            let s = p.to_string_lossy();
            if s.contains([':', ',']) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("overlay path {s} contains ':' or ','"),
                ));
            }
            parts.push(s.into_owned());
        }
        let (dirs, rest) = parts.split_at(lower.len());
        let data = format!(
            "lowerdir={},upperdir={},workdir={}",
            dirs.join(":"),
            rest[0],
            rest[1]
        );
        // The kernel reads mount data from one page.
        if data.len() >= 4096 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} layers do not fit in overlayfs mount options",
                    lower.len()
                ),
            ));
        }
        Ok(data)
    }

    /// Creates the directories and mounts the overlay.
    pub fn mount(&self, lower: &[PathBuf]) -> io::Result<()> {
        let data = self.options(lower)?;
        for d in [&self.upper, &self.work, &self.merged] {
            std::fs::create_dir_all(d)?;
        }
        mount(
            Some("overlay"),
            &self.merged,
            Some("overlay"),
            MsFlags::empty(),
            Some(data.as_str()),
        )
        .map_err(|e| {
            io::Error::new(
                io::Error::from(e).kind(),
                format!("mounting overlay on {}: {e}", self.merged.display()),
            )
        })
    }

    /// Whether the merged directory is a mount point now.
    pub fn is_mounted(&self) -> bool {
        is_mount_point(&self.merged)
    }

    /// Unmounts the overlay (nothing to do when it is not mounted).
    pub fn unmount(&self) -> io::Result<()> {
        if !self.is_mounted() {
            return Ok(());
        }
        match umount2(&self.merged, MntFlags::empty()) {
            Ok(()) => Ok(()),
            Err(nix::errno::Errno::EBUSY) => Ok(umount2(&self.merged, MntFlags::MNT_DETACH)?),
            Err(e) => Err(e.into()),
        }
    }
}

/// Whether `path` is listed as a mount point in /proc/self/mountinfo.
pub fn is_mount_point(path: &Path) -> bool {
    let Ok(real) = path.canonicalize() else {
        return false;
    };
    let want = real.to_string_lossy().replace(' ', "\\040");
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_list_layers_top_first() {
        let o = Overlay::under(Path::new("/c"));
        let s = o.options(&["/l/2".into(), "/l/1".into()]).unwrap();
        assert_eq!(s, "lowerdir=/l/2:/l/1,upperdir=/c/upper,workdir=/c/work");
        assert!(o.options(&[]).is_err());
        assert!(o.options(&["/a:b".into()]).is_err());
    }
}
