//! Small files of an image's root file system (its `/etc/passwd` and `/etc/group`), read before
//! the service's container exists.
//!
//! The image's layers are already unpacked as snapshots: a read-only view of the top one (made
//! under a short lease, so containerd collects it should the agent die) is mounted by a
//! short-lived thread inside a mount namespace of its own, with every mount private. The kernel's
//! overlayfs merges the layers (upper layers win, whiteouts and opaque directories hide what they
//! delete), nothing of the mount is ever visible outside that thread, and it disappears with the
//! thread even if the agent is killed half-way. Files are opened with `RESOLVE_IN_ROOT`, so a
//! symbolic link in the image (`/etc/passwd -> /usr/share/...`) resolves inside the image and
//! never reaches the host's files, and non-blocking, so a FIFO cannot hang the agent; only
//! regular files up to a size limit are read.

use std::collections::HashMap;
use std::ffi::CString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use containerd_client::types::Mount;
use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use rustix::mount::{MountFlags, MountPropagationFlags};
use tracing::{info, warn};

use super::ContainerError;
use crate::containerd::Containerd;
use crate::image::ImageInfo;
use crate::userns::{shift_tree, IdRange, Shifted};

/// Longest life of the lease of a view, should the agent die before removing it.
const LEASE_TTL: Duration = Duration::from_secs(600);
/// Longest life of the lease under which a remapped copy of an image is made: long enough to
/// copy a large image on slow flash, after which containerd collects what an agent that died
/// half-way left.
pub(crate) const REMAP_LEASE_TTL: Duration = Duration::from_secs(6 * 3600);

/// Longest option string `mount(2)` takes (one page, with its terminating NUL).
const MAX_MOUNT_DATA: usize = 4095;

/// Read `paths` (absolute, inside the image) from the root file system of `image`. A file that
/// does not exist is `None`. `scratch` is a directory of the agent's in which an (always empty)
/// mount point is made and removed.
///
/// # Errors
/// [`ContainerError::ImageRootfs`] when the image cannot be looked into (its snapshot is missing,
/// the mount fails), [`ContainerError::ImageFile`] when a file is not a regular file, is larger
/// than `max_bytes` or cannot be read.
#[tracing::instrument(skip(ctr, image, scratch), fields(image = %image.name))]
pub(crate) async fn read_image_files(
    ctr: &Containerd,
    image: &ImageInfo,
    scratch: &Path,
    paths: &[&'static str],
    max_bytes: u64,
) -> Result<Vec<Option<Vec<u8>>>, ContainerError> {
    let rootfs_err = |reason: String| ContainerError::ImageRootfs {
        image: image.name.clone(),
        reason,
    };
    let key = format!("cairn-read-{:016x}", rand::random::<u64>());
    ctr.create_lease(&key, LEASE_TTL, HashMap::new())
        .await
        .map_err(|e| rootfs_err(e.to_string()))?;
    let result = async {
        let mounts = ctr
            .view_snapshot(&key, &image.chain_id, Some(&key))
            .await
            .map_err(|e| rootfs_err(e.to_string()))?;
        let image_name = image.name.clone();
        let paths = paths.to_vec();
        on_own_thread(image, scratch, &key, "reading", move |mount_point| {
            read_in_own_namespace(&image_name, &mounts, mount_point, &paths, max_bytes)
        })
        .await
    }
    .await;
    if let Err(e) = ctr.remove_snapshot(&key).await {
        warn!(%key, error = %e, "cannot remove a view snapshot; containerd collects it when its lease expires");
    }
    if let Err(e) = ctr.delete_lease(&key).await {
        warn!(%key, error = %e, "cannot delete a lease; it expires by itself");
    }
    result
}

/// The name of the committed snapshot holding `image`'s root file system with every owner moved
/// into `range` (see [`remapped_snapshot`]).
pub(crate) fn remapped_name(image: &ImageInfo, range: IdRange) -> String {
    format!("cairn-userns-{}-{}", range.host_start, image.chain_id)
}

/// The committed snapshot of `image` whose files belong to `range`, for containers in a user
/// namespace mapped to it: made on first use from the image's top layer (prepared under
/// `lease`, mounted writable by a short-lived thread in a mount namespace of its own, every
/// owner moved with [`shift_tree`], committed), then shared by every container of that range
/// and image. runc 1.1 has no idmapped mounts, so this copy is how image files get their
/// owners; it costs a copy of every file the first time (overlayfs copies a file up to change
/// its owner). Prepare the container's snapshot on it under the same `lease`: until a snapshot
/// refers to it, only the lease keeps containerd from collecting it.
///
/// # Errors
/// [`ContainerError::ImageRootfs`] when the snapshot cannot be prepared, mounted, shifted or
/// committed.
#[tracing::instrument(skip(ctr, image, scratch), fields(image = %image.name))]
pub(crate) async fn remapped_snapshot(
    ctr: &Containerd,
    image: &ImageInfo,
    range: IdRange,
    scratch: &Path,
    lease: &str,
) -> Result<String, ContainerError> {
    let rootfs_err = |reason: String| ContainerError::ImageRootfs {
        image: image.name.clone(),
        reason,
    };
    let name = remapped_name(image, range);
    if ctr
        .stat_snapshot(&name)
        .await
        .map_err(|e| rootfs_err(e.to_string()))?
        .is_some()
    {
        return Ok(name);
    }
    let key = format!("cairn-remap-{:016x}", rand::random::<u64>());
    let made = async {
        let mounts = ctr
            .prepare_snapshot(&key, &image.chain_id, HashMap::new(), Some(lease))
            .await
            .map_err(|e| rootfs_err(e.to_string()))?;
        let image_name = image.name.clone();
        let shifted = on_own_thread(image, scratch, &key, "shifting", move |mount_point| {
            let shift = || -> Result<Shifted, String> {
                mount_in_own_namespace(&mounts, mount_point, false)?;
                let shifted = shift_tree(mount_point, range).map_err(|e| e.to_string())?;
                // On disk before the commit: a power cut must not leave a committed copy whose
                // owners are half moved, which every later container would reuse.
                let root = rustix::fs::open(
                    mount_point,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| format!("cannot open it to sync: {e}"))?;
                rustix::fs::syncfs(&root).map_err(|e| format!("cannot sync it: {e}"))?;
                Ok(shifted)
            };
            shift().map_err(|reason| ContainerError::ImageRootfs {
                image: image_name,
                reason,
            })
        })
        .await?;
        info!(
            entries = shifted.entries,
            changed = shifted.changed,
            host_start = range.host_start,
            "image files moved into the app's id range"
        );
        match ctr.commit_snapshot(&name, &key, Some(lease)).await {
            // Another container of the same range and image made it first.
            Err(e) if e.is_already_exists() => {
                let _ = ctr.remove_snapshot(&key).await;
                Ok(())
            }
            other => other.map_err(|e| rootfs_err(e.to_string())),
        }
    }
    .await;
    if let Err(e) = made {
        if let Err(undo) = ctr.remove_snapshot(&key).await {
            warn!(%key, error = %undo, "cannot remove a half-made snapshot; containerd collects it with its lease");
        }
        return Err(e);
    }
    Ok(name)
}

/// Make mount point `<scratch>/<key>`, run `work` on it on a thread of its own (which ends right
/// after, so the mount namespace `work` enters goes with it) and remove the mount point again.
/// `what` names the work in the message should the thread panic.
async fn on_own_thread<T: Send + 'static>(
    image: &ImageInfo,
    scratch: &Path,
    key: &str,
    what: &str,
    work: impl FnOnce(&Path) -> Result<T, ContainerError> + Send + 'static,
) -> Result<T, ContainerError> {
    let rootfs_err = |reason: String| ContainerError::ImageRootfs {
        image: image.name.clone(),
        reason,
    };
    let target = std::path::absolute(scratch.join(key))
        .map_err(|e| rootfs_err(format!("no mount point: {e}")))?;
    std::fs::create_dir_all(&target).map_err(|source| ContainerError::Io {
        path: target.clone(),
        source,
    })?;
    let mount_point = target.clone();
    let joined =
        tokio::task::spawn_blocking(move || std::thread::spawn(move || work(&mount_point)).join())
            .await;
    let _ = std::fs::remove_dir(&target);
    match joined {
        Ok(Ok(result)) => result,
        _ => Err(rootfs_err(format!("the thread {what} it panicked"))),
    }
}

/// Runs on a thread of its own, which ends right after: enter a new mount namespace, mount the
/// view on `target` and read the files.
fn read_in_own_namespace(
    image: &str,
    mounts: &[Mount],
    target: &Path,
    paths: &[&'static str],
    max_bytes: u64,
) -> Result<Vec<Option<Vec<u8>>>, ContainerError> {
    let rootfs_err = |reason: String| ContainerError::ImageRootfs {
        image: image.to_string(),
        reason,
    };
    mount_in_own_namespace(mounts, target, true).map_err(rootfs_err)?;
    let root = rustix::fs::open(
        target,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| rootfs_err(format!("cannot open its root: {e}")))?;
    paths
        .iter()
        .map(|path| {
            read_file(&root, path, max_bytes).map_err(|reason| ContainerError::ImageFile {
                image: image.to_string(),
                path: (*path).to_string(),
                reason,
            })
        })
        .collect()
}

/// On a thread that ends right after the caller is done: enter a new mount namespace with every
/// mount private and mount containerd's `mounts` on `target` (read-only, or writable for a
/// snapshot being prepared). Nothing of it is ever visible outside the thread.
fn mount_in_own_namespace(mounts: &[Mount], target: &Path, read_only: bool) -> Result<(), String> {
    // SAFETY: kept unsafe because rustix's unshare is (unsharing the file descriptor table would
    // let this thread see descriptors other threads do not); only the mount namespace (and with
    // it the thread's root and working directory) is unshared, and the caller's thread ends
    // right after, so its namespace, and every mount in it, is never used again.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS) }.map_err(
        |e| format!("cannot make a mount namespace: {e}; the agent needs CAP_SYS_ADMIN"),
    )?;
    rustix::mount::mount_change(
        "/",
        MountPropagationFlags::REC | MountPropagationFlags::PRIVATE,
    )
    .map_err(|e| format!("cannot make the mounts private: {e}"))?;
    if mounts.is_empty() {
        return Err("containerd gave no mounts for its snapshot".into());
    }
    for m in mounts {
        mount_layers(m, target, read_only)
            .map_err(|e| format!("cannot mount its layers ({} {}): {e}", m.r#type, m.source))?;
    }
    Ok(())
}

/// Read regular file `path` below `root` (symbolic links resolved inside `root`); `None` when it
/// does not exist.
fn read_file(
    root: &rustix::fd::OwnedFd,
    path: &str,
    max_bytes: u64,
) -> Result<Option<Vec<u8>>, String> {
    let resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS | ResolveFlags::NO_XDEV;
    let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY;
    let fd = match rustix::fs::openat2(
        root,
        path.trim_start_matches('/'),
        flags,
        Mode::empty(),
        resolve,
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT | Errno::NOTDIR) => return Ok(None),
        Err(e) => return Err(format!("cannot open it: {e}")),
    };
    let stat = rustix::fs::fstat(&fd).map_err(|e| format!("cannot stat it: {e}"))?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Err("it is not a regular file".into());
    }
    let too_big = |size: u64| format!("it is {size} bytes, more than the {max_bytes} Cairn reads");
    if stat.st_size as u64 > max_bytes {
        return Err(too_big(stat.st_size as u64));
    }
    let mut data = Vec::new();
    std::fs::File::from(fd)
        .take(max_bytes + 1)
        .read_to_end(&mut data)
        .map_err(|e| format!("cannot read it: {e}"))?;
    if data.len() as u64 > max_bytes {
        return Err(too_big(data.len() as u64));
    }
    Ok(Some(data))
}

/// How to mount one of containerd's mounts: bind (recursive or not) or a file system with its
/// option string; always read-only, nosuid, nodev, noexec.
#[derive(Debug, PartialEq, Eq)]
enum MountPlan {
    Bind { recursive: bool },
    Fs { data: String },
}

fn plan_mount(m: &Mount) -> MountPlan {
    let mut bind = m.r#type == "bind";
    let mut recursive = false;
    let mut data = Vec::new();
    for option in &m.options {
        match option.as_str() {
            "bind" => bind = true,
            "rbind" => {
                bind = true;
                recursive = true;
            }
            // Always read-only, without devices, setuid or execution (forced below).
            "ro" | "rw" | "nosuid" | "suid" | "nodev" | "dev" | "noexec" | "exec" => {}
            other => data.push(other),
        }
    }
    if bind {
        MountPlan::Bind { recursive }
    } else {
        MountPlan::Fs {
            data: data.join(","),
        }
    }
}

/// An overlay option string too long for `mount(2)`: the directory all `lowerdir`s share and the
/// string with them relative to it (what containerd does, for images with many layers).
fn compact_lowerdirs(data: &str) -> Option<(PathBuf, String)> {
    let options: Vec<&str> = data.split(',').collect();
    let lower = options.iter().find_map(|o| o.strip_prefix("lowerdir="))?;
    let dirs: Vec<&Path> = lower.split(':').map(Path::new).collect();
    let mut common = dirs.first()?.parent();
    while let Some(dir) = common {
        if dirs.iter().all(|d| d.starts_with(dir)) {
            break;
        }
        common = dir.parent();
    }
    let common = common?;
    let relative: Vec<String> = dirs
        .iter()
        .map(|d| d.strip_prefix(common).map(|r| r.display().to_string()))
        .collect::<Result<_, _>>()
        .ok()?;
    let rewritten: Vec<String> = options
        .iter()
        .map(|o| match o.strip_prefix("lowerdir=") {
            Some(_) => format!("lowerdir={}", relative.join(":")),
            None => (*o).to_string(),
        })
        .collect();
    Some((common.to_path_buf(), rewritten.join(",")))
}

fn mount_layers(m: &Mount, target: &Path, read_only: bool) -> std::io::Result<()> {
    let mut flags = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    if read_only {
        flags |= MountFlags::RDONLY;
    }
    match plan_mount(m) {
        MountPlan::Bind { recursive } => {
            if recursive {
                rustix::mount::mount_bind_recursive(m.source.as_str(), target)?;
            } else {
                rustix::mount::mount_bind(m.source.as_str(), target)?;
            }
            // A bind mount takes its flags only when remounted.
            rustix::mount::mount_remount(target, MountFlags::BIND | flags, "")?;
        }
        MountPlan::Fs { mut data } => {
            if data.len() > MAX_MOUNT_DATA {
                let (dir, relative) = compact_lowerdirs(&data).ok_or_else(|| {
                    std::io::Error::other(format!(
                        "its option string is {} bytes, too long for mount(2)",
                        data.len()
                    ))
                })?;
                // This thread's working directory is its own (the new mount namespace came with
                // a copy of the file system context).
                std::env::set_current_dir(&dir)?;
                data = relative;
            }
            let data = CString::new(data).map_err(std::io::Error::other)?;
            rustix::mount::mount(
                m.source.as_str(),
                target,
                m.r#type.as_str(),
                flags,
                data.as_c_str(),
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(typ: &str, source: &str, options: &[&str]) -> Mount {
        Mount {
            r#type: typ.into(),
            source: source.into(),
            target: String::new(),
            options: options.iter().map(|o| o.to_string()).collect(),
        }
    }

    #[test]
    fn views_mount_read_only_as_given() {
        assert_eq!(
            plan_mount(&mount("bind", "/s/1/fs", &["ro", "rbind"])),
            MountPlan::Bind { recursive: true }
        );
        assert_eq!(
            plan_mount(&mount(
                "overlay",
                "overlay",
                &["index=off", "lowerdir=/s/2/fs:/s/1/fs", "rw"]
            )),
            MountPlan::Fs {
                data: "index=off,lowerdir=/s/2/fs:/s/1/fs".into()
            }
        );
    }

    #[test]
    fn long_lowerdirs_become_relative() {
        let dirs: Vec<String> = (0..80)
            .map(|n| {
                format!(
                    "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/{n}/fs"
                )
            })
            .collect();
        let data = format!("index=off,lowerdir={}", dirs.join(":"));
        assert!(data.len() > MAX_MOUNT_DATA);
        let (dir, relative) = compact_lowerdirs(&data).unwrap();
        assert_eq!(
            dir,
            Path::new("/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots")
        );
        assert!(
            relative.starts_with("index=off,lowerdir=0/fs:1/fs:"),
            "{relative}"
        );
        assert!(relative.len() < MAX_MOUNT_DATA);
        assert_eq!(compact_lowerdirs("index=off"), None);
    }
}
