//! shoal's container runtime, the part of a node that turns a task into an isolated process:
//!
//! - [`image`]: a content-addressed image store (OCI image-layout blobs, layers unpacked once
//!   and shared) and the importers for root-filesystem tarballs, `docker save` archives and OCI
//!   image-layout archives;
//! - [`rootfs`]: the overlayfs root of a container, image layers read-only under a writable one;
//! - [`spec`]: the OCI runtime spec of a container, generated with `oci-spec`;
//! - [`linux`]: the built-in OCI runtime (namespaces, mounts, pivot_root, cgroups, capabilities)
//!   behind the `shoal-runtime` binary, which takes the same command line as runc;
//! - [`oci`]: a driver for any OCI runtime binary (the built-in one, runc, crun);
//! - [`shim`]: the per-container monitor that outlives the daemon, reaps the container, writes
//!   its logs and records its exit;
//! - [`logs`]: json-file logs; [`volume`]: named volumes; [`user`]: /etc/passwd lookups.

pub mod cgroups;
pub mod devices;
pub mod devices_bpf;
pub mod digest;
pub mod image;
pub mod layer;
pub mod linux;
pub mod logs;
pub mod oci;
pub mod rootfs;
pub mod seccomp;
pub mod shim;
pub mod spec;
pub mod user;
pub mod volume;

/// The current wall-clock time in milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// Writes `bytes` to `path` atomically (a temporary file beside it, then a rename).
pub fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
