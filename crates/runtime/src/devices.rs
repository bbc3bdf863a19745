//! The host's devices, as a privileged container gets them (Docker's `--privileged`): every
//! character and block device under the host's `/dev`, with its numbers, mode and owner, for
//! the spec's `linux.devices` (runc and crun create them; so does the built-in runtime).

use oci_spec::runtime::{LinuxDevice, LinuxDeviceBuilder, LinuxDeviceType};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Directories of `/dev` that are not devices of the host's own (Docker skips the same): the
/// container gets its own `pts`, `shm` and `mqueue`.
const SKIPPED: [&str; 7] = ["pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"];

/// Every device under `dev` (the host's `/dev`), named as the container sees it
/// (`/dev/...`), sorted by path. Unreadable entries are left out. `/dev/console` is left out:
/// the runtime gives the container its own.
pub fn host_devices(dev: &Path) -> Vec<LinuxDevice> {
    let mut out = Vec::new();
    walk(dev, Path::new("/dev"), &mut out);
    out.sort_by(|a, b| a.path().cmp(b.path()));
    out
}

fn walk(dir: &Path, shown: &Path, out: &mut Vec<LinuxDevice>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Ok(meta) = entry.path().symlink_metadata() else {
            continue;
        };
        let inside = shown.join(&name);
        let kind = meta.file_type();
        if kind.is_dir() {
            if !SKIPPED.iter().any(|s| name == *s) {
                walk(&entry.path(), &inside, out);
            }
            continue;
        }
        let typ = if kind.is_block_device() {
            LinuxDeviceType::B
        } else if kind.is_char_device() {
            LinuxDeviceType::C
        } else {
            continue;
        };
        if inside == Path::new("/dev/console") {
            continue;
        }
        if let Some(d) = device(inside, typ, &meta) {
            out.push(d);
        }
    }
}

fn device(path: PathBuf, typ: LinuxDeviceType, meta: &std::fs::Metadata) -> Option<LinuxDevice> {
    let rdev = meta.rdev();
    LinuxDeviceBuilder::default()
        .path(path)
        .typ(typ)
        .major(nix::sys::stat::major(rdev) as i64)
        .minor(nix::sys::stat::minor(rdev) as i64)
        .file_mode(meta.mode() & 0o7777)
        .uid(meta.uid())
        .gid(meta.gid())
        .build()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hosts_devices_come_with_their_numbers_and_nothing_else() {
        let devices = host_devices(Path::new("/dev"));
        let null = devices
            .iter()
            .find(|d| d.path() == Path::new("/dev/null"))
            .expect("/dev/null is a host device");
        assert_eq!(
            (null.typ(), null.major(), null.minor()),
            (LinuxDeviceType::C, 1, 3)
        );
        assert!(devices.iter().all(|d| {
            let p = d.path().to_string_lossy();
            !p.starts_with("/dev/pts/") && !p.starts_with("/dev/shm/") && p != "/dev/console"
        }));
    }
}
