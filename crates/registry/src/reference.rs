//! Image references as docker reads them: `busybox` is `docker.io/library/busybox:latest`,
//! `host:5000/ns/app` names a registry because its first component has a `.` or a `:` (or is
//! `localhost`), and `@sha256:…` pins a digest.

use crate::RegistryError;
use std::fmt;

/// Docker Hub's name in references.
pub const DOCKER_HUB: &str = "docker.io";

/// Where Docker Hub's API answers.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// The registry (`docker.io`, `host:5000`).
    pub registry: String,
    /// The repository (`library/busybox`, `ns/app`).
    pub repository: String,
    /// The tag (`latest` when neither a tag nor a digest is given).
    pub tag: Option<String>,
    /// A pinned digest (`sha256:…`).
    pub digest: Option<String>,
}

impl Reference {
    /// Parses `reference`, normalized as docker does.
    pub fn parse(reference: &str) -> Result<Reference, RegistryError> {
        let bad = |why: &str| RegistryError::BadReference(reference.to_owned(), why.to_owned());
        let r = reference.trim();
        if r.is_empty() || r.contains(char::is_whitespace) {
            return Err(bad("empty, or has spaces"));
        }
        let (rest, digest) = match r.split_once('@') {
            Some((n, d)) => {
                if !d.starts_with("sha256:") || d.len() != 71 {
                    return Err(bad("a digest is sha256: and 64 hex digits"));
                }
                (n, Some(d.to_owned()))
            }
            None => (r, None),
        };
        let (name, tag) = match rest.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => (n, Some(t.to_owned())),
            _ => (rest, None),
        };
        if tag.as_deref() == Some("") {
            return Err(bad("empty tag"));
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_owned(), rest.to_owned())
            }
            _ => (DOCKER_HUB.to_owned(), name.to_owned()),
        };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if repository.is_empty()
            || repository
                .chars()
                .any(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/".contains(c)))
        {
            return Err(bad(
                "repository names are lower-case letters, digits, '.', '_', '-', '/'",
            ));
        }
        let tag = if tag.is_none() && digest.is_none() {
            Some("latest".to_owned())
        } else {
            tag
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The host the API is reached at.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// What the manifest is asked for by: the digest if pinned, else the tag.
    pub fn manifest_ref(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// The name the image store keeps it under (`host:5000/ns/app:tag`, `busybox:latest`).
    pub fn store_name(&self) -> String {
        let name = match (
            self.registry.as_str(),
            self.repository.strip_prefix("library/"),
        ) {
            (DOCKER_HUB, Some(short)) => short.to_owned(),
            (DOCKER_HUB, None) => self.repository.clone(),
            (reg, _) => format!("{reg}/{}", self.repository),
        };
        match (&self.tag, &self.digest) {
            (Some(t), _) => format!("{name}:{t}"),
            (None, Some(d)) => format!("{name}@{d}"),
            (None, None) => format!("{name}:latest"),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_normalize_as_docker_does() {
        let r = Reference::parse("busybox").unwrap();
        assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
        assert_eq!(r.api_host(), "registry-1.docker.io");
        assert_eq!(r.store_name(), "busybox:latest");
        let r = Reference::parse("host:5000/ns/app").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("host:5000", "ns/app")
        );
        assert_eq!(r.store_name(), "host:5000/ns/app:latest");
        let r = Reference::parse("localhost/app:1.2").unwrap();
        assert_eq!(r.registry, "localhost");
        assert_eq!(r.tag.as_deref(), Some("1.2"));
        let d = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("10.0.0.1:5000/app@{d}")).unwrap();
        assert_eq!(r.manifest_ref(), d);
        assert_eq!(r.tag, None);
        let r = Reference::parse("me/app:v1").unwrap();
        assert_eq!(r.to_string(), "docker.io/me/app:v1");
        assert!(Reference::parse("App").is_err());
        assert!(Reference::parse("app@sha256:12").is_err());
        assert!(Reference::parse("app:").is_err());
    }
}
