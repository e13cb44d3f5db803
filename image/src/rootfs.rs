//! The Debian root filesystem: mmdebstrap (minbase, root mode, merged-usr hook) pinned to the
//! lock, with the static OS layer copied in and configured inside the chroot; cached as a tarball
//! keyed by everything that goes into it; then extracted, checked against the lock, and split
//! into the root tree and the boot files (kernel, initramfs) that go into the UKIs.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_io::{FileError, PathContext};

use crate::lock::{self, Lock, LockError};
use crate::overlay::{self, OsFile, OverlayError};
use crate::recipe::Recipe;
use crate::tool::{tool, Tool, ToolError};

/// Bump when the way the cached tarball is made changes.
const CACHE_FORMAT: &str = "cairn-rootfs-v1";
const MMDEBSTRAP_TIMEOUT: Duration = Duration::from_secs(1200);
/// Run inside the lock-generation chroot: `name version sha256` for every installed package.
const LIST_PACKAGES_SH: &str = r#"set -eu
dpkg-query -W -f '${Package} ${Version}\n' | while read -r p v; do
  sha=$(apt-cache show "$p=$v" 2>/dev/null | sed -n 's/^SHA256: //p' | head -n1)
  printf '%s %s %s\n' "$p" "$v" "$sha"
done
"#;

/// The root filesystem could not be made or checked.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// An external tool failed.
    #[error(transparent)]
    Tool(#[from] ToolError),
    /// The lock does not match.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// Writing Cairn's files failed.
    #[error(transparent)]
    Overlay(#[from] OverlayError),
    /// Local file handling failed.
    #[error(transparent)]
    File(#[from] FileError),
    /// The root has no kernel or initramfs.
    #[error("no {what} in {dir}: is linux-image-amd64 in the recipe's packages and did update-initramfs run?")]
    MissingBootFile {
        /// kernel or initramfs.
        what: &'static str,
        /// Where it was looked for.
        dir: PathBuf,
    },
    /// A binary put into the root would not run there.
    #[error("{binary} cannot run in the image, libraries missing:\n{missing}\nbuild it on (or for) the image's Debian release, or add the library packages to the recipe")]
    MissingLibraries {
        /// The binary inside the root.
        binary: String,
        /// The `not found` lines from ldd.
        missing: String,
    },
}

/// The common mmdebstrap command for a recipe (without hooks, target and mirrors).
fn mmdebstrap_base(recipe: &Recipe) -> Tool {
    tool("mmdebstrap")
        .timeout(MMDEBSTRAP_TIMEOUT)
        .env(
            "SOURCE_DATE_EPOCH",
            recipe.debian.source_date_epoch.to_string(),
        )
        .env("LC_ALL", "C.UTF-8")
        .args([
            "--variant=minbase",
            "--mode=root",
            "--format=tar",
            "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
        ])
        .arg(format!("--architectures={}", recipe.target.arch))
        .arg(format!("--include={}", recipe.debian.packages.join(",")))
        // Documentation, manuals and translations have no use on an appliance (copyright files stay).
        .args([
            "--dpkgopt=path-exclude=/usr/share/man/*",
            "--dpkgopt=path-exclude=/usr/share/info/*",
            "--dpkgopt=path-exclude=/usr/share/doc/*",
            "--dpkgopt=path-include=/usr/share/doc/*/copyright",
            "--dpkgopt=path-exclude=/usr/share/locale/*",
            "--dpkgopt=path-exclude=/usr/share/lintian/*",
        ])
}

fn sh_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', "'\\''"))
}

/// Resolve the recipe's packages against the live mirror and return the full installed set with
/// versions and .deb digests (what `cairn-image lock` writes). Runs a throwaway mmdebstrap.
pub fn resolve_lock(recipe: &Recipe, work: &Path) -> Result<Lock, RootfsError> {
    fs::create_dir_all(work).at("create", work)?;
    let listing = work.join("packages.txt");
    let tar = work.join("lock-root.tar");
    let script = work.join("list-packages.sh");
    fs::write(&script, LIST_PACKAGES_SH).at("write", &script)?;
    mmdebstrap_base(recipe)
        .arg(format!(
            "--customize-hook=copy-in {} /tmp/",
            sh_quote(&script)
        ))
        .arg(format!(
            "--customize-hook=chroot \"$1\" /bin/sh /tmp/list-packages.sh > {}",
            sh_quote(&listing)
        ))
        .arg("--customize-hook=rm -f \"$1/tmp/list-packages.sh\"")
        .arg(&recipe.debian.suite)
        .arg(&tar)
        .args(&recipe.debian.mirrors)
        .run()?;
    let _ = fs::remove_file(&tar);
    let text = fs::read_to_string(&listing).at("read", &listing)?;
    Ok(lock::from_listing(&text, &listing)?)
}

/// The key of the cached root tarball: everything that decides its content.
pub fn cache_key(recipe: &Recipe, lock: &Lock, static_files: &[OsFile]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for part in [
        CACHE_FORMAT,
        &recipe.debian.suite,
        &recipe.target.arch,
        &recipe.debian.source_date_epoch.to_string(),
        &recipe.debian.mirrors.join("\n"),
        &recipe.debian.packages.join(","),
        &lock.digest(),
        &overlay::digest(static_files),
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())[..24].to_string()
}

/// Make the configured root tarball (or take it from `cache_dir`) and return its path.
pub fn bootstrap(
    recipe: &Recipe,
    lock: &Lock,
    static_files: &[OsFile],
    cache_dir: Option<&Path>,
    work: &Path,
) -> Result<(PathBuf, bool), RootfsError> {
    let key = cache_key(recipe, lock, static_files);
    if let Some(cache) = cache_dir {
        let cached = cache.join(format!("rootfs-{key}.tar"));
        if cached.is_file() {
            tracing::info!(path = %cached.display(), "using cached root filesystem");
            // Most recently used first when the cache is pruned.
            if let Ok(file) = fs::File::options().write(true).open(&cached) {
                let _ = file.set_modified(std::time::SystemTime::now());
            }
            return Ok((cached, true));
        }
    }
    let setup = work.join("setup");
    let overlay_dir = work.join("overlay");
    for dir in [&setup, &overlay_dir] {
        let _ = fs::remove_dir_all(dir);
        fs::create_dir_all(dir).at("create", dir)?;
    }
    fs::write(setup.join("cairn.conf"), overlay::INITRAMFS_CONF).at("write", &setup)?;
    fs::write(setup.join("cairn-lock.pref"), lock.apt_preferences()).at("write", &setup)?;
    overlay::write_files(&overlay_dir, static_files)?;
    let tar = work.join("rootfs.tar");
    let _ = fs::remove_file(&tar);
    mmdebstrap_base(recipe)
        .arg("--setup-hook=mkdir -p \"$1/etc/initramfs-tools/conf.d\" \"$1/etc/apt/preferences.d\"")
        .arg(format!(
            "--setup-hook=copy-in {} /etc/initramfs-tools/conf.d/",
            sh_quote(&setup.join("cairn.conf"))
        ))
        .arg(format!(
            "--setup-hook=copy-in {} /etc/apt/preferences.d/",
            sh_quote(&setup.join("cairn-lock.pref"))
        ))
        .arg(format!(
            "--customize-hook=sync-in {} /",
            sh_quote(&overlay_dir)
        ))
        .arg("--customize-hook=chroot \"$1\" /bin/sh /usr/lib/cairn/image-setup.sh")
        .arg(&recipe.debian.suite)
        .arg(&tar)
        .args(&recipe.debian.mirrors)
        .run()?;
    if let Some(cache) = cache_dir {
        fs::create_dir_all(cache).at("create cache dir", cache)?;
        let cached = cache.join(format!("rootfs-{key}.tar"));
        let tmp = cache.join(format!(".rootfs-{key}.tar.{}", std::process::id()));
        fs::copy(&tar, &tmp).at("copy into cache", &tmp)?;
        fs::rename(&tmp, &cached).at("rename into cache", &cached)?;
        prune_cache(cache, &cached);
    }
    Ok((tar, false))
}

/// Cached root tarballs kept (each is ~700 MiB): the update tests build the recipe and two
/// variants of it (version B, a bad version), which must not evict each other.
const CACHE_KEEP: usize = 3;

/// Remove cached root tarballs but `keep` and the most recently used others, [`CACHE_KEEP`] in
/// all (a key is stale once the lock or the static layer changed).
fn prune_cache(cache: &Path, keep: &Path) {
    let Ok(entries) = fs::read_dir(cache) else {
        return;
    };
    let mut others: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            e.path() != keep && name.starts_with("rootfs-") && name.ends_with(".tar")
        })
        .map(|e| {
            let used = e.metadata().and_then(|m| m.modified());
            (used.unwrap_or(std::time::UNIX_EPOCH), e.path())
        })
        .collect();
    others.sort_by_key(|(used, _)| std::cmp::Reverse(*used));
    for (_, path) in others.into_iter().skip(CACHE_KEEP - 1) {
        tracing::info!(path = %path.display(), "removing least recently used cached root filesystem");
        let _ = fs::remove_file(&path);
    }
}

/// Unpack a root tarball (owners, modes and xattrs kept) into `dest`.
pub fn extract(tar: &Path, dest: &Path) -> Result<(), RootfsError> {
    let _ = fs::remove_dir_all(dest);
    fs::create_dir_all(dest).at("create", dest)?;
    tool("tar")
        .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf"])
        .arg(tar)
        .arg("-C")
        .arg(dest)
        .run()?;
    Ok(())
}

/// Installed packages (name to version) from the root's dpkg status file.
pub fn installed_packages(root: &Path) -> Result<BTreeMap<String, InstalledPackage>, RootfsError> {
    let status = root.join("var/lib/dpkg/status");
    let text = fs::read_to_string(&status).at("read", &status)?;
    Ok(parse_dpkg_status(&text))
}

/// One installed package from the dpkg status file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledPackage {
    /// Exact version.
    pub version: String,
    /// Debian architecture (`amd64`, `all`).
    pub architecture: String,
}

/// Parse a dpkg status file, keeping packages whose status is `install ok installed`.
pub fn parse_dpkg_status(text: &str) -> BTreeMap<String, InstalledPackage> {
    let mut out = BTreeMap::new();
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|r| r.strip_prefix(':'))
                    .map(|v| v.trim().to_string())
            })
        };
        if let (Some(name), Some(version), Some(status)) =
            (field("Package"), field("Version"), field("Status"))
        {
            if status == "install ok installed" {
                let architecture = field("Architecture").unwrap_or_default();
                out.insert(
                    name,
                    InstalledPackage {
                        version,
                        architecture,
                    },
                );
            }
        }
    }
    out
}

/// Check the root holds exactly the locked package versions.
pub fn check_lock(root: &Path, lock: &Lock, lock_path: &Path) -> Result<(), RootfsError> {
    let installed: BTreeMap<String, String> = installed_packages(root)?
        .into_iter()
        .map(|(name, p)| (name, p.version))
        .collect();
    lock.check_installed(&installed, lock_path)?;
    Ok(())
}

/// Check `binary` (a path inside the root) finds all its shared libraries there.
pub fn check_libraries(root: &Path, binary: &str) -> Result<(), RootfsError> {
    let out = tool("chroot")
        .arg(root)
        .args(["/usr/bin/ldd", binary])
        .run()?;
    let stdout = out.stdout_text();
    let missing: Vec<&str> = stdout.lines().filter(|l| l.contains("not found")).collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(RootfsError::MissingLibraries {
            binary: binary.to_string(),
            missing: missing.join("\n"),
        })
    }
}

/// The kernel and initramfs taken out of the root's /boot.
#[derive(Debug, Clone)]
pub struct BootFiles {
    /// Kernel release (`6.1.0-27-amd64`).
    pub kernel_release: String,
    /// The kernel image (EFI stub bzImage).
    pub kernel: PathBuf,
    /// The initramfs.
    pub initrd: PathBuf,
}

/// Move the kernel and initramfs out of `root/boot` into `dest` (they live in the UKIs, not in
/// the root filesystem) and drop the dangling /vmlinuz and /initrd.img links.
pub fn take_boot_files(root: &Path, dest: &Path) -> Result<BootFiles, RootfsError> {
    let boot = root.join("boot");
    let mut kernels: Vec<String> = fs::read_dir(&boot)
        .at("list", &boot)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|name| name.strip_prefix("vmlinuz-").map(str::to_string))
        .collect();
    kernels.sort();
    let release = kernels.pop().ok_or_else(|| RootfsError::MissingBootFile {
        what: "kernel",
        dir: boot.clone(),
    })?;
    let kernel_src = boot.join(format!("vmlinuz-{release}"));
    let initrd_src = boot.join(format!("initrd.img-{release}"));
    if !initrd_src.is_file() {
        return Err(RootfsError::MissingBootFile {
            what: "initramfs",
            dir: boot,
        });
    }
    fs::create_dir_all(dest).at("create", dest)?;
    let kernel = dest.join("vmlinuz");
    let initrd = dest.join("initrd.img");
    fs::copy(&kernel_src, &kernel).at("copy", &kernel_src)?;
    fs::copy(&initrd_src, &initrd).at("copy", &initrd_src)?;
    for entry in fs::read_dir(&boot).at("list", &boot)?.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with("vmlinuz-") || name.starts_with("initrd.img-") {
            fs::remove_file(&path).at("remove", &path)?;
        }
    }
    for link in ["vmlinuz", "vmlinuz.old", "initrd.img", "initrd.img.old"] {
        let path = root.join(link);
        if fs::symlink_metadata(&path).is_ok() {
            fs::remove_file(&path).at("remove", &path)?;
        }
    }
    Ok(BootFiles {
        kernel_release: release,
        kernel,
        initrd,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_keeps_the_most_recently_used_tarballs() {
        let dir = tempfile::tempdir().unwrap();
        let now = std::time::SystemTime::now();
        for (i, name) in [
            "rootfs-1.tar",
            "rootfs-2.tar",
            "rootfs-3.tar",
            "rootfs-4.tar",
        ]
        .iter()
        .enumerate()
        {
            let f = fs::File::create(dir.path().join(name)).unwrap();
            f.set_modified(now - Duration::from_secs(100 * (4 - i as u64)))
                .unwrap();
        }
        fs::write(dir.path().join("other"), b"").unwrap();
        prune_cache(dir.path(), &dir.path().join("rootfs-1.tar"));
        let mut left: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            ["other", "rootfs-1.tar", "rootfs-3.tar", "rootfs-4.tar"]
        );
    }

    #[test]
    fn parses_dpkg_status_keeping_installed_only() {
        let text = "Package: bash\nStatus: install ok installed\nArchitecture: amd64\nVersion: 5.2\n\n\
                    Package: gone\nStatus: deinstall ok config-files\nVersion: 1\n\n\
                    Package: tzdata\nStatus: install ok installed\nArchitecture: all\nVersion: 2024a\nDescription: x\n y\n";
        let pkgs = parse_dpkg_status(text);
        assert_eq!(pkgs.len(), 2);
        assert_eq!(
            pkgs["tzdata"],
            InstalledPackage {
                version: "2024a".into(),
                architecture: "all".into()
            }
        );
    }
}
