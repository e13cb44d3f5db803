//! The software bill of materials: every Debian package in the root filesystem (name, version,
//! architecture, .deb SHA256 from the lock) plus the Cairn files added on top, as JSON.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::lock::Lock;
use crate::rootfs::InstalledPackage;
use std::collections::BTreeMap;

/// The SBOM could not be written.
#[derive(Debug, thiserror::Error)]
pub enum SbomError {
    /// Writing failed.
    #[error("cannot write the SBOM {path}: {source}")]
    Write {
        /// The SBOM path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// The SBOM document.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Sbom {
    /// Format marker.
    pub format: &'static str,
    /// Image target name.
    pub target: String,
    /// Image version.
    pub version: String,
    /// Debian suite.
    pub suite: String,
    /// Build timestamp (SOURCE_DATE_EPOCH).
    pub source_date_epoch: i64,
    /// Debian packages, sorted by name.
    pub packages: Vec<SbomPackage>,
    /// Files Cairn added (path and SHA256), sorted by path.
    pub files: Vec<SbomFile>,
}

/// One package.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SbomPackage {
    /// Package name.
    pub name: String,
    /// Exact version.
    pub version: String,
    /// Architecture.
    pub architecture: String,
    /// SHA256 of the .deb (from the lock), when known.
    pub sha256: Option<String>,
}

/// One file added by Cairn.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SbomFile {
    /// Absolute path in the image.
    pub path: String,
    /// SHA256 of the content.
    pub sha256: String,
}

/// Identity of the image an SBOM describes.
#[derive(Debug, Clone)]
pub struct SbomSubject<'a> {
    /// Target name.
    pub target: &'a str,
    /// Version.
    pub version: &'a str,
    /// Debian suite.
    pub suite: &'a str,
    /// SOURCE_DATE_EPOCH.
    pub source_date_epoch: i64,
}

/// Build the SBOM from the installed packages, the lock's digests and the added files.
pub fn sbom(
    subject: &SbomSubject<'_>,
    installed: &BTreeMap<String, InstalledPackage>,
    lock: &Lock,
    added: &[crate::overlay::OsFile],
) -> Sbom {
    use sha2::{Digest, Sha256};
    let packages = installed
        .iter()
        .map(|(name, pkg)| SbomPackage {
            name: name.clone(),
            version: pkg.version.clone(),
            architecture: pkg.architecture.clone(),
            sha256: lock
                .packages
                .get(name)
                .filter(|locked| locked.version == pkg.version)
                .and_then(|locked| locked.sha256.clone()),
        })
        .collect();
    let mut files: Vec<SbomFile> = added
        .iter()
        .map(|f| SbomFile {
            path: format!("/{}", f.path),
            sha256: hex::encode(Sha256::digest(&f.contents)),
        })
        .collect();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Sbom {
        format: "cairn-sbom/1",
        target: subject.target.to_string(),
        version: subject.version.to_string(),
        suite: subject.suite.to_string(),
        source_date_epoch: subject.source_date_epoch,
        packages,
        files,
    }
}

/// Write the SBOM as pretty JSON.
pub fn write(sbom: &Sbom, path: &Path) -> Result<(), SbomError> {
    let mut text = serde_json::to_string_pretty(sbom).expect("SBOM serializes");
    text.push('\n');
    std::fs::write(path, text).map_err(|source| SbomError::Write {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_installed_packages_with_locked_digests() {
        let sha = "ab".repeat(32);
        let lock =
            Lock::parse(&format!("bash=5.2 sha256:{sha}\ncurl=1\n"), Path::new("x")).unwrap();
        let installed: BTreeMap<String, InstalledPackage> = [
            (
                "bash".to_string(),
                InstalledPackage {
                    version: "5.2".into(),
                    architecture: "amd64".into(),
                },
            ),
            (
                "curl".to_string(),
                InstalledPackage {
                    version: "2".into(),
                    architecture: "amd64".into(),
                },
            ),
        ]
        .into();
        let added = [crate::overlay::OsFile {
            path: "etc/x".into(),
            mode: 0o644,
            contents: b"x".to_vec(),
        }];
        let subject = SbomSubject {
            target: "t",
            version: "1",
            suite: "bookworm",
            source_date_epoch: 1,
        };
        let doc = sbom(&subject, &installed, &lock, &added);
        assert_eq!(doc.packages[0].sha256.as_deref(), Some(sha.as_str()));
        assert_eq!(
            doc.packages[1].sha256, None,
            "a digest for another version must not be claimed"
        );
        assert_eq!(doc.files[0].path, "/etc/x");
        let json = serde_json::to_value(&doc).unwrap();
        assert_eq!(json["packages"][0]["name"], "bash");
    }
}
