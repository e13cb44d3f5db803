//! Image references (`[registry/]repository[:tag][@digest]`) normalized the way containerd and
//! Docker name images (`docker.io/library/busybox:latest`).

use std::fmt;

/// Why an image reference is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageRefError {
    /// The part after `@` is not a sha256 digest.
    #[error("digest {digest:?} is not a sha256 digest (sha256:<64 lowercase hex>)")]
    Digest {
        /// The digest as written.
        digest: String,
    },
    /// A tag with characters a registry refuses, or empty.
    #[error("tag {tag:?} is invalid (letters, digits, '_', '.', '-')")]
    Tag {
        /// The tag as written.
        tag: String,
    },
    /// No repository name after the registry.
    #[error("the repository name is empty")]
    EmptyRepository,
    /// A repository path component with characters a registry refuses, or empty.
    #[error(
        "repository component {component:?} is invalid (lowercase letters, digits, '_', '.', '-')"
    )]
    RepositoryComponent {
        /// The component as written.
        component: String,
    },
}

/// A parsed, normalized image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// Registry host with optional port, e.g. `docker.io`, `127.0.0.1:5000`.
    pub registry: String,
    /// Repository path, e.g. `library/busybox`, `team/web`.
    pub repository: String,
    /// Tag (`latest` when neither tag nor digest is given).
    pub tag: Option<String>,
    /// Manifest digest (`sha256:...`) when pinned.
    pub digest: Option<String>,
}

impl ImageRef {
    /// Parse `text`.
    ///
    /// # Errors
    /// When a part is empty or has characters a registry would refuse.
    pub fn parse(text: &str) -> Result<ImageRef, ImageRefError> {
        let (rest, digest) = match text.split_once('@') {
            Some((r, d)) => {
                check_digest(d)?;
                (r, Some(d.to_string()))
            }
            None => (text, None),
        };
        // A tag is after the last ':' when that ':' comes after the last '/'.
        let (name, tag) = match rest.rfind(':') {
            Some(i) if !rest[i..].contains('/') => (&rest[..i], Some(rest[i + 1..].to_string())),
            _ => (rest, None),
        };
        if let Some(tag) = &tag {
            let ok = !tag.is_empty()
                && tag.len() <= 128
                && tag
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
            if !ok {
                return Err(ImageRefError::Tag { tag: tag.clone() });
            }
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), path.to_string())
            }
            Some(_) => ("docker.io".to_string(), name.to_string()),
            None => ("docker.io".to_string(), format!("library/{name}")),
        };
        if registry.is_empty() || repository.is_empty() {
            return Err(ImageRefError::EmptyRepository);
        }
        for component in repository.split('/') {
            let ok = !component.is_empty()
                && component.chars().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-')
                })
                && component.starts_with(|c: char| c.is_ascii_alphanumeric());
            if !ok {
                return Err(ImageRefError::RepositoryComponent {
                    component: component.to_string(),
                });
            }
        }
        let tag = if tag.is_none() && digest.is_none() {
            Some("latest".to_string())
        } else {
            tag
        };
        Ok(ImageRef {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The host to talk to for the registry API (`registry-1.docker.io` for Docker Hub).
    pub fn api_host(&self) -> &str {
        if self.registry == "docker.io" {
            "registry-1.docker.io"
        } else {
            &self.registry
        }
    }

    /// What to ask the registry for: the digest when pinned, else the tag.
    pub fn manifest_reference(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// True for registries on this machine, which are spoken to over plain HTTP by default.
    pub fn is_local(&self) -> bool {
        let host = self
            .registry
            .rsplit_once(':')
            .map_or(self.registry.as_str(), |(h, _)| h);
        matches!(host, "localhost" | "127.0.0.1" | "[::1]")
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// Check a `sha256:<64 hex>` digest.
///
/// # Errors
/// When `digest` is not `sha256:` followed by 64 lowercase hex digits.
pub fn check_digest(digest: &str) -> Result<(), ImageRefError> {
    match digest.strip_prefix("sha256:") {
        Some(hex)
            if hex.len() == 64
                && hex
                    .chars()
                    .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)) =>
        {
            Ok(())
        }
        _ => Err(ImageRefError::Digest {
            digest: digest.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_like_docker() {
        assert_eq!(
            ImageRef::parse("busybox").unwrap().to_string(),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            ImageRef::parse("team/web:1.0").unwrap().to_string(),
            "docker.io/team/web:1.0"
        );
        let r = ImageRef::parse("127.0.0.1:5000/cairn/web:v2").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("127.0.0.1:5000", "cairn/web", Some("v2"))
        );
        assert!(r.is_local());
        let r = ImageRef::parse("localhost:5000/web").unwrap();
        assert_eq!(r.tag.as_deref(), Some("latest"));
        let d = format!("sha256:{}", "a".repeat(64));
        let r = ImageRef::parse(&format!("ghcr.io/x/y@{d}")).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.manifest_reference(), d);
        assert!(!r.is_local());
        assert_eq!(
            ImageRef::parse("busybox").unwrap().api_host(),
            "registry-1.docker.io"
        );
    }

    #[test]
    fn refuses_bad_references() {
        for bad in [
            "",
            "Web",
            "x:",
            "x@sha256:12",
            "a//b",
            "reg.io/-x",
            "x:bad tag",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad}");
        }
    }
}
