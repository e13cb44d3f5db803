//! Host devices given to a container (`devices:`): each host path must lead to a character
//! device node under `/dev` (symbolic links such as `/dev/serial/by-id/...` are followed, as
//! Docker does, and what they lead to is checked again against the parser's refusals, so a link
//! cannot smuggle in the TPM or a disk); block devices are never given, since any of them may be
//! the system disk. Type, numbers, mode and owner are read from the host when the container is
//! made.

use std::os::unix::fs::{FileTypeExt, MetadataExt};

use cairn_compose::DeviceMapping;

use super::oci::HostDevice;
use super::ContainerError;

/// The devices of `mappings` as they are on this host.
///
/// # Errors
/// [`ContainerError::Device`] when a path does not exist, is not a device node, or the
/// permissions are not a non-empty subset of `rwm`.
pub(crate) fn host_devices(mappings: &[DeviceMapping]) -> Result<Vec<HostDevice>, ContainerError> {
    mappings.iter().map(host_device).collect()
}

fn host_device(mapping: &DeviceMapping) -> Result<HostDevice, ContainerError> {
    let err = |reason: String| ContainerError::Device {
        path: mapping.host.clone(),
        reason,
    };
    let perms = &mapping.permissions;
    if perms.is_empty() || !perms.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
        return Err(err(format!(
            "permissions {perms:?} are not a non-empty combination of r, w and m"
        )));
    }
    if !mapping.container.starts_with('/') {
        return Err(err(format!(
            "its path in the container, {:?}, is not absolute",
            mapping.container
        )));
    }
    let resolved = std::fs::canonicalize(&mapping.host).map_err(|e| err(e.to_string()))?;
    let resolved = resolved.to_string_lossy();
    if let Some(why) = cairn_compose::refused_host_device(&resolved) {
        return Err(err(format!(
            "it leads to {resolved}, which is refused: {why}"
        )));
    }
    let meta = std::fs::metadata(&*resolved).map_err(|e| err(e.to_string()))?;
    if meta.file_type().is_block_device() {
        return Err(err(format!(
            "it leads to block device {resolved}; block devices are not given to apps, since any may be the system disk"
        )));
    }
    if !meta.file_type().is_char_device() {
        return Err(err(
            "it is not a character device; name a device node under /dev".into(),
        ));
    }
    Ok(HostDevice {
        container_path: mapping.container.clone(),
        major: rustix::fs::major(meta.rdev()),
        minor: rustix::fs::minor(meta.rdev()),
        file_mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        permissions: perms.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(host: &str, container: &str, permissions: &str) -> DeviceMapping {
        DeviceMapping {
            host: host.into(),
            container: container.into(),
            permissions: permissions.into(),
        }
    }

    #[test]
    fn device_nodes_are_read_from_the_host() {
        let devices = host_devices(&[mapping("/dev/null", "/dev/cairn-test", "rw")]).unwrap();
        assert_eq!(
            devices,
            [HostDevice {
                container_path: "/dev/cairn-test".into(),
                major: 1,
                minor: 3,
                file_mode: 0o666,
                uid: 0,
                gid: 0,
                permissions: "rw".into(),
            }]
        );
    }

    #[test]
    fn other_files_and_bad_permissions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-device");
        std::fs::write(&file, "x").unwrap();
        let file = file.display().to_string();
        let err = host_devices(&[mapping(&file, "/dev/x", "rwm")]).unwrap_err();
        assert!(
            err.to_string().contains("is not a path under /dev/"),
            "{err}"
        );
        assert!(err.to_string().contains(&file), "{err}");
        // A link is judged by what it leads to: a block device, a refused name, a file.
        let link = |name: &str, to: &str| {
            let path = dir.path().join(name);
            std::os::unix::fs::symlink(to, &path).unwrap();
            path.display().to_string()
        };
        let cases = [
            (link("disk", "/dev/loop0"), "system disk"),
            (link("console", "/dev/tty0"), "console"),
            (link("file", &file), "is not a path under /dev/"),
        ];
        // Judged only where the machine has the node the link leads to.
        for (path, why) in cases
            .into_iter()
            .filter(|(p, _)| std::fs::metadata(p).is_ok())
        {
            if let Err(err) = host_devices(&[mapping(&path, "/dev/x", "rw")]) {
                assert!(err.to_string().contains(why), "{path}: {err}");
            } else {
                panic!("{path} was given");
            }
        }
        let fine = link("serial", "/dev/null");
        assert_eq!(
            host_devices(&[mapping(&fine, "/dev/x", "rw")])
                .unwrap()
                .len(),
            1
        );
        let err = host_devices(&[mapping("/dev/no-such-device", "/dev/x", "r")]).unwrap_err();
        assert!(err.to_string().contains("No such file"), "{err}");
        for perms in ["", "rx", "RW"] {
            assert!(
                host_devices(&[mapping("/dev/null", "/dev/x", perms)]).is_err(),
                "{perms}"
            );
        }
        assert!(host_devices(&[mapping("/dev/null", "dev/x", "r")]).is_err());
    }
}
