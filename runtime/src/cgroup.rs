//! The cgroup every app container runs under, and what the kernel did to a container's cgroup.
//!
//! All containers sit below one parent (`RuntimeConfig::cgroup_parent`, `/cairn`). Its
//! ceilings are set before any container starts: memory leaves room for containerd, the agent
//! and the rest of the system ([`AppsCeiling::for_machine`]), a pids maximum stops forks across
//! all apps, and a CPU weight below the system's default lets the system win under contention
//! while idle CPU stays usable by apps. Both cgroup v2 (the device) and v1 (some build hosts)
//! are handled; the files differ, the meaning does not.
//!
//! A service whose Compose file sets no memory or CPU limit gets
//! [`AppsCeiling::service_defaults`].
//!
//! [`oom_killed`] reads whether the kernel's OOM killer killed a process of a container's
//! cgroup, so a status can say "out of memory" instead of a bare exit status 137.

use std::path::{Path, PathBuf};

use cairn_compose::ResourceLimits;

/// Where cgroup file systems are mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Memory kept for the system at least (containerd, the agent, journald, the kernel).
const MIN_SYSTEM_RESERVE: u64 = 256 << 20;
/// Tasks (processes and threads) of all apps together.
const APPS_PIDS_MAX: u64 = 8192;
/// cgroup v2 `cpu.weight` of the apps' parent (the system's units have the default 100).
const APPS_CPU_WEIGHT: u64 = 50;

/// Why the apps' parent cgroup could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A cgroup file or directory could not be written.
    #[error("cannot set up the apps' cgroup at {}: {source}; check that cgroups are mounted at {CGROUP_ROOT} and the agent runs as root", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// Ceilings of the apps' parent cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppsCeiling {
    /// Memory all apps together may use.
    pub memory_bytes: u64,
    /// Processes and threads all apps together may have.
    pub pids: u64,
    /// CPU weight (cgroup v2 scale, 1-10000, default 100).
    pub cpu_weight: u64,
}

impl AppsCeiling {
    /// The ceilings for a machine with `total_memory` bytes of RAM: the system keeps an
    /// eighth of it, and at least 256 MiB.
    pub fn for_machine(total_memory: u64) -> AppsCeiling {
        let reserve = (total_memory / 8).max(MIN_SYSTEM_RESERVE);
        AppsCeiling {
            memory_bytes: total_memory.saturating_sub(reserve).max(MIN_SYSTEM_RESERVE),
            pids: APPS_PIDS_MAX,
            cpu_weight: APPS_CPU_WEIGHT,
        }
    }
}

impl AppsCeiling {
    /// Limits of a service whose Compose file sets none: half the apps' memory, so one
    /// service cannot starve the others, and on a machine with `cpus` of at least 2, all CPUs
    /// but half of one (one CPU is too little to hold back).
    pub fn service_defaults(&self, cpus: usize) -> ResourceLimits {
        ResourceLimits {
            memory_bytes: Some(self.memory_bytes / 2),
            cpu_millis: (cpus >= 2).then(|| cpus as u64 * 1000 - 500),
        }
    }
}

/// Whether `root` is a cgroup v2 (unified) hierarchy.
fn unified(root: &Path) -> bool {
    root.join("cgroup.controllers").exists()
}

/// The files to write for `ceiling` on the hierarchy at `root`, parent cgroup `parent`.
fn ceiling_files(root: &Path, parent: &str, ceiling: &AppsCeiling) -> Vec<(PathBuf, String)> {
    let parent = parent.trim_matches('/');
    if unified(root) {
        let dir = root.join(parent);
        vec![
            (dir.join("memory.max"), ceiling.memory_bytes.to_string()),
            (dir.join("pids.max"), ceiling.pids.to_string()),
            (dir.join("cpu.weight"), ceiling.cpu_weight.to_string()),
        ]
    } else {
        // v1 cpu.shares: 1024 is the default weight, as 100 is in v2.
        let shares = ceiling.cpu_weight * 1024 / 100;
        vec![
            (
                root.join("memory")
                    .join(parent)
                    .join("memory.limit_in_bytes"),
                ceiling.memory_bytes.to_string(),
            ),
            (
                root.join("pids").join(parent).join("pids.max"),
                ceiling.pids.to_string(),
            ),
            (
                root.join("cpu").join(parent).join("cpu.shares"),
                shares.to_string(),
            ),
        ]
    }
}

/// Create the apps' parent cgroup `parent` under `root` (normally [`CGROUP_ROOT`]) and set
/// its ceilings. Idempotent: the agent calls it at every start. On cgroup v2 the memory, pids
/// and cpu controllers are enabled for the parent first (systemd normally has done so).
///
/// # Errors
/// [`CgroupError::Io`] naming the file that could not be written.
pub fn limit_apps(root: &Path, parent: &str, ceiling: &AppsCeiling) -> Result<(), CgroupError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CgroupError::Io { path, source }
    };
    if unified(root) {
        let control = root.join("cgroup.subtree_control");
        let enabled = std::fs::read_to_string(&control).map_err(io(&control))?;
        for controller in ["memory", "pids", "cpu"] {
            if !enabled.split_whitespace().any(|c| c == controller) {
                std::fs::write(&control, format!("+{controller}")).map_err(io(&control))?;
            }
        }
    }
    for (file, value) in ceiling_files(root, parent, ceiling) {
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        std::fs::write(&file, &value).map_err(io(&file))?;
    }
    Ok(())
}

/// Whether the OOM killer killed a process in container `id`'s cgroup (`parent/id` under
/// `root`). `false` when the cgroup is gone or the kernel does not count OOM kills.
pub fn oom_killed(root: &Path, parent: &str, id: &str) -> bool {
    let path = format!("{}/{id}", parent.trim_matches('/'));
    let file = if unified(root) {
        root.join(path).join("memory.events")
    } else {
        root.join("memory").join(path).join("memory.oom_control")
    };
    std::fs::read_to_string(file).is_ok_and(|text| {
        text.lines()
            .filter_map(|l| l.strip_prefix("oom_kill "))
            .any(|n| n.trim().parse::<u64>().is_ok_and(|n| n > 0))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn the_system_keeps_an_eighth_of_memory_and_at_least_256_mib() {
        assert_eq!(
            AppsCeiling::for_machine(8 * GIB).memory_bytes,
            7 * GIB,
            "an eighth of 8 GiB is 1 GiB"
        );
        assert_eq!(
            AppsCeiling::for_machine(GIB).memory_bytes,
            GIB - (256 << 20),
            "a small box keeps 256 MiB"
        );
        assert_eq!(AppsCeiling::for_machine(0).memory_bytes, 256 << 20);
    }

    fn fake_v2() -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        std::fs::write(root.path().join("cgroup.subtree_control"), "memory pids\n").unwrap();
        root
    }

    #[test]
    fn a_service_without_limits_gets_half_the_apps_memory_and_all_but_half_a_cpu() {
        let ceiling = AppsCeiling::for_machine(2 * GIB);
        let limits = ceiling.service_defaults(4);
        assert_eq!(limits.memory_bytes, Some(ceiling.memory_bytes / 2));
        assert_eq!(limits.cpu_millis, Some(3500));
        assert_eq!(ceiling.service_defaults(1).cpu_millis, None);
    }

    #[test]
    fn v2_ceilings_are_written_to_the_parent() {
        let root = fake_v2();
        let ceiling = AppsCeiling::for_machine(2 * GIB);
        limit_apps(root.path(), "/cairn", &ceiling).unwrap();
        let read = |f: &str| std::fs::read_to_string(root.path().join("cairn").join(f)).unwrap();
        assert_eq!(read("memory.max"), ceiling.memory_bytes.to_string());
        assert_eq!(read("pids.max"), "8192");
        assert_eq!(read("cpu.weight"), "50");
        // A plain file stands in for the kernel's: the last write is the missing controller.
        let control = std::fs::read_to_string(root.path().join("cgroup.subtree_control")).unwrap();
        assert_eq!(control, "+cpu");
    }

    #[test]
    fn v1_ceilings_go_to_each_controllers_hierarchy() {
        let root = tempfile::tempdir().unwrap();
        limit_apps(root.path(), "cairn", &AppsCeiling::for_machine(4 * GIB)).unwrap();
        let read = |f: &str| std::fs::read_to_string(root.path().join(f)).unwrap();
        assert_eq!(
            read("memory/cairn/memory.limit_in_bytes"),
            (7 * GIB / 2).to_string()
        );
        assert_eq!(read("pids/cairn/pids.max"), "8192");
        assert_eq!(read("cpu/cairn/cpu.shares"), "512");
    }

    #[test]
    fn oom_kills_are_read_from_either_hierarchy() {
        let v2 = fake_v2();
        let dir = v2.path().join("cairn/app_s");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 0\n",
        )
        .unwrap();
        assert!(!oom_killed(v2.path(), "/cairn", "app_s"));
        std::fs::write(dir.join("memory.events"), "oom 1\noom_kill 1\n").unwrap();
        assert!(oom_killed(v2.path(), "/cairn", "app_s"));
        assert!(!oom_killed(v2.path(), "/cairn", "gone"));

        let v1 = tempfile::tempdir().unwrap();
        let dir = v1.path().join("memory/cairn/app_s");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )
        .unwrap();
        assert!(oom_killed(v1.path(), "/cairn", "app_s"));
    }
}
