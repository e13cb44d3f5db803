//! The secret and config files of a service (its Compose `secrets` and `configs`): written under
//! the run dir, which is a tmpfs on a device, so no secret value is ever written to the data
//! partition and none outlives a reboot; owned by the ids the Compose file gives (moved into the
//! app's id range when it has one) with its mode; bind-mounted read-only at their targets.
//!
//! Each file is written to a temporary name, given its owner and mode, then renamed over the
//! old one; the directories above it are host root's with mode 0700, so no other host user can
//! reach a file at any step. The whole directory of a service is written afresh each time its
//! container is made or its task started (after a reboot the tmpfs is empty), and removed with
//! its container: a file never outlives the container it was written for.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use cairn_compose::{FileMount, ServiceSpec};

use super::{io_err, ContainerError, RuntimeConfig};
use crate::userns::IdRange;

/// What the files of one service are made from.
pub struct ServiceFiles<'a> {
    /// App name.
    pub app: &'a str,
    /// Service name.
    pub service: &'a str,
    /// The service spec (its `secrets` and `configs`).
    pub spec: &'a ServiceSpec,
    /// Secret values of the app by name.
    pub secrets: &'a BTreeMap<String, Vec<u8>>,
    /// Config texts of the app by name ([`cairn_compose::AppSpec::configs`]).
    pub configs: &'a BTreeMap<String, String>,
    /// The app's id range (`None`: the host's ids).
    pub range: Option<IdRange>,
}

/// One file written for a service: where it is on the host and where it goes in the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenFile {
    /// Path on the host, under [`RuntimeConfig::service_files_dir`].
    pub path: PathBuf,
    /// Absolute path inside the container.
    pub target: String,
}

/// The file of `mount`, the `index`th entry of the service's `secrets` (`kind` "secret") or
/// `configs` ("config"): an entry each, since one source may be mounted twice with different
/// owners or modes.
fn file_name(kind: &str, index: usize, mount: &FileMount) -> String {
    format!("{kind}-{index}-{}", mount.source)
}

/// Write every secret and config file of a service, replacing what its directory held; the
/// files in the order of its `secrets`, then its `configs`.
///
/// # Errors
/// [`ContainerError::MissingSecret`] when a secret used has no value (nothing is written then),
/// [`ContainerError::Spec`] for a config that is not declared or an id outside the app's
/// range, [`ContainerError::Io`] when a file cannot be written.
pub fn write_service_files(
    cfg: &RuntimeConfig,
    files: &ServiceFiles<'_>,
) -> Result<Vec<WrittenFile>, ContainerError> {
    let mut contents: Vec<(String, &[u8], &FileMount)> = Vec::new();
    for (i, mount) in files.spec.secrets.iter().enumerate() {
        let value =
            files
                .secrets
                .get(&mount.source)
                .ok_or_else(|| ContainerError::MissingSecret {
                    app: files.app.into(),
                    name: mount.source.clone(),
                })?;
        contents.push((file_name("secret", i, mount), value, mount));
    }
    for (i, mount) in files.spec.configs.iter().enumerate() {
        let text = files
            .configs
            .get(&mount.source)
            .ok_or_else(|| ContainerError::Spec {
                reason: format!(
                    "config {:?} is not declared in the app's top-level `configs`; declare it there",
                    mount.source
                ),
            })?;
        contents.push((file_name("config", i, mount), text.as_bytes(), mount));
    }
    let dir = cfg.service_files_dir(files.app, files.service);
    remove_service_files(cfg, files.app, files.service)?;
    if contents.is_empty() {
        return Ok(Vec::new());
    }
    private_dirs(cfg, &dir)?;
    let mut written = Vec::with_capacity(contents.len());
    for (name, data, mount) in contents {
        let uid = host_id(files.range, mount.uid)?;
        let gid = host_id(files.range, mount.gid)?;
        let path = dir.join(name);
        write_owned(&path, data, uid, gid, mount.mode)?;
        written.push(WrittenFile {
            path,
            target: mount.target.clone(),
        });
    }
    Ok(written)
}

/// Remove the files of a service (nothing to do when it has none).
///
/// # Errors
/// [`ContainerError::Io`] when the directory cannot be removed.
pub fn remove_service_files(
    cfg: &RuntimeConfig,
    app: &str,
    service: &str,
) -> Result<(), ContainerError> {
    let dir = cfg.service_files_dir(app, service);
    match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(&dir)(e)),
        _ => Ok(()),
    }
}

/// The host id of container id `id`: in the app's range when it has one, else `id` itself.
fn host_id(range: Option<IdRange>, id: u32) -> Result<u32, ContainerError> {
    match range {
        None => Ok(id),
        Some(range) => range.host_id(id).ok_or_else(|| ContainerError::Spec {
            reason: format!("id {id} of a secret or config file is outside the app's ids (0 to 65535); give a smaller uid or gid"),
        }),
    }
}

/// Make `dir` and the directories between it and the run dir: `apps` with mode 0711 (others
/// may pass, not list), everything below it host root's with mode 0700.
fn private_dirs(cfg: &RuntimeConfig, dir: &Path) -> Result<(), ContainerError> {
    let apps = cfg.network.run_dir.join("apps");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(&apps)
        .map_err(io_err(&apps))?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(dir))?;
    // A directory made before (by an older agent, or with another umask) is tightened too.
    let mut at = dir;
    while at != apps {
        std::fs::set_permissions(at, std::fs::Permissions::from_mode(0o700)).map_err(io_err(at))?;
        at = at.parent().unwrap_or(&apps);
    }
    Ok(())
}

/// Write `data` to `path` owned by host ids `uid`:`gid` with permission bits `mode`: into a
/// temporary file only root may open, given its owner and mode, then renamed over `path`.
fn write_owned(
    path: &Path,
    data: &[u8],
    uid: u32,
    gid: u32,
    mode: u32,
) -> Result<(), ContainerError> {
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    file.write_all(data).map_err(io_err(&tmp))?;
    let owner = (
        rustix::fs::Uid::from_raw(uid),
        rustix::fs::Gid::from_raw(gid),
    );
    rustix::fs::fchown(&file, Some(owner.0), Some(owner.1)).map_err(|e| io_err(&tmp)(e.into()))?;
    // After the chown, which would clear set-id bits.
    let bits = rustix::fs::Mode::from_raw_mode(mode & 0o777);
    rustix::fs::fchmod(&file, bits).map_err(|e| io_err(&tmp)(e.into()))?;
    file.sync_all().map_err(io_err(&tmp))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use cairn_compose::AppSpec;

    const APP: &str = "services:
  web:
    image: x
    secrets:
      - token
      - {source: token, target: /etc/web/key, uid: 1000, gid: 1001, mode: 0400}
    configs:
      - {source: site.conf, target: /etc/web/site.conf, uid: 33, mode: 0640}
  db:
    image: y
secrets:
  token: {}
configs:
  site.conf:
    content: site=berlin
";

    fn config_in(dir: &Path) -> RuntimeConfig {
        let mut cfg = RuntimeConfig::new(dir.join("data"));
        cfg.network.run_dir = dir.join("run");
        cfg
    }

    fn write(
        cfg: &RuntimeConfig,
        spec: &AppSpec,
        service: &str,
        secrets: &BTreeMap<String, Vec<u8>>,
        range: Option<IdRange>,
    ) -> Result<Vec<WrittenFile>, ContainerError> {
        write_service_files(
            cfg,
            &ServiceFiles {
                app: &spec.name,
                service,
                spec: &spec.services[service],
                secrets,
                configs: &spec.configs,
                range,
            },
        )
    }

    /// Whether the test may give files other owners; a loud skip when not.
    fn as_root() -> bool {
        let root = rustix::process::geteuid().is_root();
        if !root {
            eprintln!("\n======== SKIP: not root, cannot chown; this test did NOT run ========\n");
        }
        root
    }

    fn mode_of(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn files_go_under_the_run_dir_with_their_owner_and_mode() {
        if !as_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let cfg = config_in(dir.path());
        let spec = AppSpec::parse("c.yml", "shop", APP).unwrap();
        let secrets = BTreeMap::from([("token".to_string(), b"s3cret".to_vec())]);
        let files = write(&cfg, &spec, "web", &secrets, None).unwrap();
        let targets: Vec<&str> = files.iter().map(|f| f.target.as_str()).collect();
        assert_eq!(
            targets,
            ["/run/secrets/token", "/etc/web/key", "/etc/web/site.conf"]
        );
        let files_dir = dir.path().join("run/apps/shop/web/files");
        for f in &files {
            assert_eq!(f.path.parent().unwrap(), files_dir);
            assert!(!f.path.starts_with(&cfg.data_dir));
        }
        assert_eq!(std::fs::read(&files[0].path).unwrap(), b"s3cret");
        assert_eq!(
            std::fs::read_to_string(&files[2].path).unwrap(),
            "site=berlin"
        );
        let meta = |i: usize| std::fs::metadata(&files[i].path).unwrap();
        assert_eq!(
            (meta(0).uid(), meta(0).gid(), mode_of(&files[0].path)),
            (0, 0, 0o444)
        );
        assert_eq!(
            (meta(1).uid(), meta(1).gid(), mode_of(&files[1].path)),
            (1000, 1001, 0o400)
        );
        assert_eq!(
            (meta(2).uid(), meta(2).gid(), mode_of(&files[2].path)),
            (33, 0, 0o640)
        );
        // No other host user reaches them, and no temporary file is left.
        for d in [
            "run/apps/shop",
            "run/apps/shop/web",
            "run/apps/shop/web/files",
        ] {
            assert_eq!(mode_of(&dir.path().join(d)), 0o700, "{d}");
        }
        assert_eq!(mode_of(&dir.path().join("run/apps")), 0o711);
        assert_eq!(std::fs::read_dir(&files_dir).unwrap().count(), 3);
        // A service without files has no directory.
        assert!(write(&cfg, &spec, "db", &secrets, None).unwrap().is_empty());
        assert!(!dir.path().join("run/apps/shop/db").exists());
    }

    #[test]
    fn owners_move_into_the_apps_id_range() {
        if !as_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let cfg = config_in(dir.path());
        let spec = AppSpec::parse("c.yml", "shop", APP).unwrap();
        let secrets = BTreeMap::from([("token".to_string(), b"s3cret".to_vec())]);
        let range = IdRange::nth(3).unwrap();
        let files = write(&cfg, &spec, "web", &secrets, Some(range)).unwrap();
        let start = range.host_start;
        let owner = |i: usize| {
            let meta = std::fs::metadata(&files[i].path).unwrap();
            (meta.uid(), meta.gid())
        };
        assert_eq!(owner(0), (start, start));
        assert_eq!(owner(1), (start + 1000, start + 1001));
        assert_eq!(owner(2), (start + 33, start));
        assert_eq!(mode_of(&files[1].path), 0o400);
    }

    #[test]
    fn a_missing_secret_writes_nothing_and_names_the_secret_only() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config_in(dir.path());
        let spec = AppSpec::parse("c.yml", "shop", APP).unwrap();
        let err = write(&cfg, &spec, "web", &BTreeMap::new(), None).unwrap_err();
        assert!(
            matches!(&err, ContainerError::MissingSecret { name, .. } if name == "token"),
            "{err}"
        );
        assert!(!cfg.service_files_dir("shop", "web").exists());
    }

    #[test]
    fn rewriting_replaces_what_the_service_had() {
        if !as_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let cfg = config_in(dir.path());
        let spec = AppSpec::parse("c.yml", "shop", APP).unwrap();
        let mut secrets = BTreeMap::from([("token".to_string(), b"old".to_vec())]);
        write(&cfg, &spec, "web", &secrets, None).unwrap();
        let stale = cfg.service_files_dir("shop", "web").join("secret-9-gone");
        std::fs::write(&stale, "x").unwrap();
        secrets.insert("token".into(), b"new".to_vec());
        let files = write(&cfg, &spec, "web", &secrets, None).unwrap();
        assert_eq!(std::fs::read(&files[0].path).unwrap(), b"new");
        assert!(!stale.exists());
        remove_service_files(&cfg, "shop", "web").unwrap();
        assert!(!cfg.service_files_dir("shop", "web").exists());
        remove_service_files(&cfg, "shop", "web").unwrap();
    }
}
