//! Resolving a container's `user` (`name`, `uid`, `name:group`, `uid:gid`) against the image's
//! own /etc/passwd and /etc/group, as Docker does: names must exist there, numbers need not.

use std::path::Path;

/// The ids a container process runs with.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResolvedUser {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups (from /etc/group).
    pub additional_gids: Vec<u32>,
    /// Home directory (for `HOME`).
    pub home: String,
}

/// The user cannot be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unable to find user {user}: {reason}")]
pub struct UserError {
    /// The user as given.
    pub user: String,
    /// Why.
    pub reason: String,
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

fn passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(PasswdEntry {
                name: f.first()?.to_string(),
                uid: f.get(2)?.parse().ok()?,
                gid: f.get(3)?.parse().ok()?,
                home: f.get(5).map(|s| s.to_string()).unwrap_or_default(),
            })
        })
        .collect()
}

/// (name, gid, members)
fn groups(text: &str) -> Vec<(String, u32, Vec<String>)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some((
                f.first()?.to_string(),
                f.get(2)?.parse().ok()?,
                f.get(3)
                    .map(|m| {
                        m.split(',')
                            .filter(|s| !s.is_empty())
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default(),
            ))
        })
        .collect()
}

/// Resolves `user` with the contents of the image's passwd and group files (pure).
pub fn resolve_with(
    user: &str,
    passwd_text: &str,
    group_text: &str,
) -> Result<ResolvedUser, UserError> {
    let err = |reason: &str| UserError {
        user: user.to_owned(),
        reason: reason.to_owned(),
    };
    let users = passwd(passwd_text);
    let all_groups = groups(group_text);
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let u = if u.is_empty() { "0" } else { u };
    let entry = users.iter().find(|e| e.name == u).or_else(|| {
        u.parse::<u32>()
            .ok()
            .and_then(|n| users.iter().find(|e| e.uid == n))
    });
    let (uid, mut gid, name, home) = match (entry, u.parse::<u32>()) {
        (Some(e), _) => (e.uid, e.gid, Some(e.name.clone()), e.home.clone()),
        (None, Ok(n)) => (n, 0, None, "/".to_owned()),
        (None, Err(_)) => return Err(err("no matching entries in passwd file")),
    };
    if let Some(g) = g {
        gid = match all_groups.iter().find(|(n, _, _)| n == g) {
            Some((_, id, _)) => *id,
            None => g
                .parse()
                .map_err(|_| err("no matching entries in group file"))?,
        };
    }
    let additional_gids = match (&name, g) {
        (Some(name), None) => all_groups
            .iter()
            .filter(|(_, id, members)| members.contains(name) && *id != gid)
            .map(|(_, id, _)| *id)
            .collect(),
        _ => Vec::new(),
    };
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
        home: if home.is_empty() { "/".into() } else { home },
    })
}

/// Resolves `user` against the files of the root filesystem at `rootfs`.
pub fn resolve(user: &str, rootfs: &Path) -> Result<ResolvedUser, UserError> {
    let read = |p: &str| std::fs::read_to_string(rootfs.join(p)).unwrap_or_default();
    resolve_with(user, &read("etc/passwd"), &read("etc/group"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nwww:x:33:33:www:/var/www:/bin/false\n";
    const GROUP: &str = "root:x:0:\nwww:x:33:\nlogs:x:40:www\n";

    #[test]
    fn names_and_numbers() {
        let r = resolve_with("www", PASSWD, GROUP).unwrap();
        assert_eq!((r.uid, r.gid, r.additional_gids), (33, 33, vec![40]));
        assert_eq!(r.home, "/var/www");
        let r = resolve_with("1000:1000", PASSWD, GROUP).unwrap();
        assert_eq!((r.uid, r.gid), (1000, 1000));
        let r = resolve_with("www:logs", PASSWD, GROUP).unwrap();
        assert_eq!((r.uid, r.gid), (33, 40));
        assert_eq!(resolve_with("", PASSWD, GROUP).unwrap().uid, 0);
        let e = resolve_with("nobody", PASSWD, GROUP).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unable to find user nobody: no matching entries in passwd file"
        );
        assert!(resolve_with("www:nogroup", PASSWD, GROUP).is_err());
    }
}
