//! Unpacking one image layer (a tar stream: plain, gzip or zstd) into a directory that overlayfs can
//! stack: OCI whiteouts (`.wh.NAME`, `.wh..wh..opq`) become overlayfs whiteouts (a 0:0 character
//! device, the `trusted.overlay.opaque` attribute), device nodes and fifos are made with mknod,
//! and no entry may land outside the directory.

use crate::digest::{Digest, HashingReader};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Component, Path, PathBuf};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// Opens `reader` as a tar stream, decompressing it when it starts with the gzip or the zstd
/// magic (OCI's `+gzip` and `+zstd` layers).
pub fn decompressed<'a, R: BufRead + 'a>(mut reader: R) -> io::Result<Box<dyn Read + 'a>> {
    let head = reader.fill_buf()?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::bufread::MultiGzDecoder::new(reader)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let decoder = ruzstd::decoding::StreamingDecoder::new(reader)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("zstd: {e}")))?;
        Ok(Box::new(decoder))
    } else {
        Ok(Box::new(reader))
    }
}

/// The entry's path made relative and checked: no `..`, no root, no prefix.
fn clean_path(raw: &Path) -> io::Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("entry {} leaves the layer", raw.display()),
                ))
            }
        }
    }
    Ok(out)
}

/// Creates the parents of `rel` under `dst` and checks that they resolve inside `dst` (a symlink
/// in the layer must not redirect an entry outside).
fn parent_inside(dst: &Path, rel: &Path) -> io::Result<PathBuf> {
    let parent = dst.join(rel.parent().unwrap_or(Path::new("")));
    std::fs::create_dir_all(&parent)?;
    let real = parent.canonicalize()?;
    if !real.starts_with(dst.canonicalize()?) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("entry {} resolves outside the layer", rel.display()),
        ));
    }
    Ok(real)
}

/// An I/O error with the causes the tar crate keeps inside it.
pub fn describe(e: &io::Error) -> String {
    let mut out = e.to_string();
    let mut inner: Option<&(dyn std::error::Error + 'static)> =
        e.get_ref().map(|r| r as &(dyn std::error::Error + 'static));
    while let Some(i) = inner {
        let s = i.to_string();
        if !out.contains(&s) {
            out = format!("{out}: {s}");
        }
        inner = i.source();
    }
    out
}

/// Unpacks the layer read from `reader` (plain or gzip tar) into `dst` and returns the digest of
/// the uncompressed tar (the layer's diff id) and the unpacked size.
pub fn unpack(reader: impl Read, dst: &Path) -> io::Result<(Digest, u64)> {
    let plain = decompressed(BufReader::new(reader))?;
    let mut hashing = HashingReader::new(plain);
    let size = unpack_tar(&mut hashing, dst)?;
    let (diff_id, _) = hashing.finish()?;
    Ok((diff_id, size))
}

fn unpack_tar(reader: &mut dyn Read, dst: &Path) -> io::Result<u64> {
    std::fs::create_dir_all(dst)?;
    let root = nix::unistd::geteuid().is_root();
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(root);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(root);
    archive.set_overwrite(true);
    let mut size = 0u64;
    // Directory times are set after their contents, as later entries would change them.
    for entry in archive.entries()? {
        let mut entry = entry?;
        let raw = entry.path()?.into_owned();
        let rel = clean_path(&raw)?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        let name = rel
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        let kind = entry.header().entry_type();
        if name == OPAQUE {
            let dir = parent_inside(dst, &rel)?;
            if root {
                xattr_set(&dir, "trusted.overlay.opaque", b"y")?;
            }
            continue;
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            let parent = parent_inside(dst, &rel)?;
            let target = parent.join(hidden);
            remove_any(&target)?;
            if root {
                mknod(&target, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))
                    .map_err(io::Error::from)?;
            }
            continue;
        }
        if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            let parent = parent_inside(dst, &rel)?;
            let target = parent.join(&name);
            remove_any(&target)?;
            let header = entry.header();
            let mode = Mode::from_bits_truncate(header.mode()? & 0o7777);
            let (flag, dev) = if kind.is_fifo() {
                (SFlag::S_IFIFO, 0)
            } else {
                let major = header.device_major()?.unwrap_or(0) as u64;
                let minor = header.device_minor()?.unwrap_or(0) as u64;
                let flag = if kind.is_block_special() {
                    SFlag::S_IFBLK
                } else {
                    SFlag::S_IFCHR
                };
                (flag, makedev(major, minor))
            };
            // Device nodes need CAP_MKNOD; without it (tests as a user) they are left out.
            if root || kind.is_fifo() {
                mknod(&target, flag, mode, dev).map_err(io::Error::from)?;
                if root {
                    let uid = header.uid()? as u32;
                    let gid = header.gid()? as u32;
                    nix::unistd::chown(
                        &target,
                        Some(nix::unistd::Uid::from_raw(uid)),
                        Some(nix::unistd::Gid::from_raw(gid)),
                    )
                    .map_err(io::Error::from)?;
                }
            }
            continue;
        }
        size += entry.header().size().unwrap_or(0);
        if !entry.unpack_in(dst)? {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("entry {} leaves the layer", raw.display()),
            ));
        }
    }
    Ok(size)
}

fn remove_any(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn xattr_set(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let n = std::ffi::CString::new(name)?;
    // SAFETY: both strings are NUL-terminated and live across the call; value's pointer and
    // length describe a valid slice.
    let rc = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, path, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn unpacks_and_reports_the_diff_id() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = tar_of(&[("etc/hostname", b"x\n"), ("./bin/sh", b"#!")]);
        let (id, size) = unpack(&bytes[..], dir.path()).unwrap();
        assert_eq!(id, Digest::of(&bytes));
        assert_eq!(size, 4);
        assert_eq!(
            std::fs::read(dir.path().join("etc/hostname")).unwrap(),
            b"x\n"
        );
    }

    #[test]
    fn gzip_layers_hash_the_uncompressed_tar() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let bytes = tar_of(&[("a", b"1")]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&bytes).unwrap();
        let (id, _) = unpack(&gz.finish().unwrap()[..], dir.path()).unwrap();
        assert_eq!(id, Digest::of(&bytes));
    }

    #[test]
    fn zstd_layers_hash_the_uncompressed_tar() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = tar_of(&[("a", b"1"), ("b/c", b"22")]);
        let zst = ruzstd::encoding::compress_to_vec(
            &bytes[..],
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        assert_eq!(&zst[..4], &[0x28, 0xb5, 0x2f, 0xfd]);
        let (id, _) = unpack(&zst[..], dir.path()).unwrap();
        assert_eq!(id, Digest::of(&bytes));
        assert_eq!(std::fs::read(dir.path().join("b/c")).unwrap(), b"22");
    }

    #[test]
    fn refuses_entries_that_leave_the_layer() {
        let dir = tempfile::tempdir().unwrap();
        let mut raw = tar_of(&[("xx/evil", b"1")]);
        // Rewrite the name in place to one with `..` (the builder refuses to write it).
        raw[..7].copy_from_slice(b"../evil");
        raw[7] = 0;
        let mut h = tar::Header::from_byte_slice(&raw[..512]).clone();
        h.set_cksum();
        raw[..512].copy_from_slice(h.as_bytes());
        let err = unpack(&raw[..], dir.path()).unwrap_err();
        assert!(err.to_string().contains("leaves the layer"), "{err}");
    }
}
