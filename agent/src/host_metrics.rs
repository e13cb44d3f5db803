//! Host metrics sent in every heartbeat: CPU busy share since the previous sample, load, memory,
//! file-system usage of the watched mount points, temperature sensors and uptime.
//!
//! Everything is read from `/proc`, `/sys` and `statvfs(3)`: cheap reads of in-memory kernel
//! files, so a sample costs well under a millisecond. The `/proc` and `/sys` roots are
//! injectable ([`HostSampler::with_roots`]) so tests run against sample files in a temporary
//! directory. A part that cannot be read is left out of the sample (and logged once per distinct
//! failure); it never stops a heartbeat.

use std::path::{Path, PathBuf};

use cairn_proto::v1::{FilesystemUsage, HostMetrics, TemperatureReading};
use tracing::warn;

/// Most temperature sensors reported (a board with hundreds of hwmon inputs stays small).
pub const MAX_TEMPERATURE_SENSORS: usize = 32;

/// Why one part of a sample could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HostMetricsError {
    /// A kernel file could not be read.
    #[error("could not read {path}: {source}; is procfs/sysfs mounted?")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O failure.
        source: std::io::Error,
    },
    /// A kernel file does not have the expected format.
    #[error("{path} does not parse: {problem}; this kernel's format is not supported, report it")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// `statvfs` failed on a watched mount point.
    #[error("statvfs({path}) failed: {source}; check the mount point in `metrics_mounts`")]
    Statvfs {
        /// The mount point.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Cumulative CPU time from the first line of `/proc/stat`, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    /// Ticks not idle (user, nice, system, irq, softirq, steal).
    pub busy: u64,
    /// All ticks (busy plus idle and iowait).
    pub total: u64,
}

impl CpuTimes {
    /// Busy share (0-100) between `earlier` and `self`; `None` when no time passed.
    pub fn percent_since(&self, earlier: &CpuTimes) -> Option<f64> {
        let total = self.total.checked_sub(earlier.total)?;
        let busy = self.busy.checked_sub(earlier.busy)?;
        if total == 0 {
            return None;
        }
        Some((busy as f64 * 100.0 / total as f64).clamp(0.0, 100.0))
    }
}

fn parse_error(path: &Path, problem: impl Into<String>) -> HostMetricsError {
    HostMetricsError::Parse {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

/// Parse the aggregate `cpu` line of `/proc/stat` (`path` names the file in errors).
pub fn parse_proc_stat(path: &Path, text: &str) -> Result<CpuTimes, HostMetricsError> {
    let line = text
        .lines()
        .find(|l| l.starts_with("cpu "))
        .ok_or_else(|| parse_error(path, "no aggregate `cpu ` line"))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse::<u64>())
        .collect::<Result<_, _>>()
        .map_err(|e| parse_error(path, format!("cpu line has a non-number: {e}")))?;
    if fields.len() < 4 {
        return Err(parse_error(
            path,
            format!("cpu line has {} fields, expected at least 4", fields.len()),
        ));
    }
    // user nice system idle iowait irq softirq steal (guest time is already in user and nice).
    let get = |i: usize| fields.get(i).copied().unwrap_or(0);
    let idle = get(3).saturating_add(get(4));
    let busy = [0, 1, 2, 5, 6, 7]
        .iter()
        .fold(0u64, |sum, &i| sum.saturating_add(get(i)));
    Ok(CpuTimes {
        busy,
        total: busy.saturating_add(idle),
    })
}

/// Parse `/proc/meminfo` into (total, available) bytes. `MemAvailable` (Linux 3.14+) falls back
/// to `MemFree` on older kernels.
pub fn parse_meminfo(path: &Path, text: &str) -> Result<(u64, u64), HostMetricsError> {
    let field = |name: &str| -> Result<Option<u64>, HostMetricsError> {
        let Some(line) = text.lines().find(|l| l.split(':').next() == Some(name)) else {
            return Ok(None);
        };
        let mut parts = line.split(':').nth(1).unwrap_or("").split_whitespace();
        let value: u64 = parts
            .next()
            .ok_or_else(|| parse_error(path, format!("{name} has no value")))?
            .parse()
            .map_err(|e| parse_error(path, format!("{name}: {e}")))?;
        let bytes = match parts.next() {
            Some("kB") => value.saturating_mul(1024),
            None => value,
            Some(unit) => {
                return Err(parse_error(
                    path,
                    format!("{name} has unknown unit {unit:?}"),
                ))
            }
        };
        Ok(Some(bytes))
    };
    let total = field("MemTotal")?.ok_or_else(|| parse_error(path, "no MemTotal line"))?;
    let available = match field("MemAvailable")? {
        Some(v) => v,
        None => field("MemFree")?
            .ok_or_else(|| parse_error(path, "neither MemAvailable nor MemFree"))?,
    };
    Ok((total, available.min(total)))
}

/// First number of a whitespace-separated file (`/proc/loadavg`, `/proc/uptime`).
pub fn parse_first_number(path: &Path, text: &str) -> Result<f64, HostMetricsError> {
    let first = text
        .split_whitespace()
        .next()
        .ok_or_else(|| parse_error(path, "file is empty"))?;
    let value: f64 = first
        .parse()
        .map_err(|e| parse_error(path, format!("{first:?}: {e}")))?;
    if !value.is_finite() || value < 0.0 {
        return Err(parse_error(
            path,
            format!("{value} is not a non-negative number"),
        ));
    }
    Ok(value)
}

/// Parse a sysfs temperature file (millidegrees Celsius) into degrees.
pub fn parse_millicelsius(path: &Path, text: &str) -> Result<f64, HostMetricsError> {
    let value: i64 = text
        .trim()
        .parse()
        .map_err(|e| parse_error(path, format!("{:?}: {e}", text.trim())))?;
    // Sensors report -273.15 to a few hundred degrees; anything else is a broken driver.
    if !(-274_000..=1_000_000).contains(&value) {
        return Err(parse_error(
            path,
            format!("{value} m°C is out of any sensor's range"),
        ));
    }
    Ok(value as f64 / 1000.0)
}

/// Samples host metrics; keeps the previous CPU counters to compute a busy share.
#[derive(Debug)]
pub struct HostSampler {
    proc_root: PathBuf,
    sys_root: PathBuf,
    mounts: Vec<PathBuf>,
    previous_cpu: Option<CpuTimes>,
    last_warning: Option<String>,
}

impl HostSampler {
    /// A sampler of this host (`/proc`, `/sys`) watching `mounts`.
    pub fn new(mounts: Vec<PathBuf>) -> Self {
        Self::with_roots("/proc", "/sys", mounts)
    }

    /// A sampler reading `proc_root` and `sys_root` instead of `/proc` and `/sys` (tests).
    pub fn with_roots(
        proc_root: impl Into<PathBuf>,
        sys_root: impl Into<PathBuf>,
        mounts: Vec<PathBuf>,
    ) -> Self {
        HostSampler {
            proc_root: proc_root.into(),
            sys_root: sys_root.into(),
            mounts,
            previous_cpu: None,
            last_warning: None,
        }
    }

    fn read(path: &Path) -> Result<String, HostMetricsError> {
        std::fs::read_to_string(path).map_err(|source| HostMetricsError::Read {
            path: path.to_path_buf(),
            source,
        })
    }

    /// One sample. Parts that fail are left out; the failures are returned beside it.
    pub fn sample_with_errors(&mut self) -> (HostMetrics, Vec<HostMetricsError>) {
        let mut errors = Vec::new();
        let mut metrics = HostMetrics::default();

        let stat = self.proc_root.join("stat");
        match Self::read(&stat).and_then(|t| parse_proc_stat(&stat, &t)) {
            Ok(now) => {
                metrics.cpu_percent = self.previous_cpu.and_then(|prev| now.percent_since(&prev));
                self.previous_cpu = Some(now);
            }
            Err(e) => errors.push(e),
        }
        let meminfo = self.proc_root.join("meminfo");
        match Self::read(&meminfo).and_then(|t| parse_meminfo(&meminfo, &t)) {
            Ok((total, available)) => {
                metrics.memory_total_bytes = total;
                metrics.memory_available_bytes = available;
            }
            Err(e) => errors.push(e),
        }
        let loadavg = self.proc_root.join("loadavg");
        match Self::read(&loadavg).and_then(|t| parse_first_number(&loadavg, &t)) {
            Ok(load) => metrics.load1 = load,
            Err(e) => errors.push(e),
        }
        let uptime = self.proc_root.join("uptime");
        match Self::read(&uptime).and_then(|t| parse_first_number(&uptime, &t)) {
            Ok(seconds) => metrics.uptime_seconds = seconds as u64,
            Err(e) => errors.push(e),
        }
        for mount in &self.mounts {
            match filesystem_usage(mount) {
                Ok(Some(usage)) => metrics.filesystems.push(usage),
                Ok(None) => {}
                Err(e) => errors.push(e),
            }
        }
        metrics.temperatures = self.temperatures(&mut errors);
        (metrics, errors)
    }

    /// One sample; a new kind of failure is logged once (a missing sensor does not flood the
    /// journal every heartbeat).
    pub fn sample(&mut self) -> HostMetrics {
        let (metrics, errors) = self.sample_with_errors();
        let summary = errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        if !errors.is_empty() && self.last_warning.as_deref() != Some(summary.as_str()) {
            warn!(errors = %summary, "some host metrics could not be read; they are left out of heartbeats");
        }
        self.last_warning = (!errors.is_empty()).then_some(summary);
        metrics
    }

    /// Thermal zones (`class/thermal/thermal_zone*/temp`) and hwmon inputs
    /// (`class/hwmon/hwmon*/temp*_input`). Missing directories mean no sensors.
    fn temperatures(&self, errors: &mut Vec<HostMetricsError>) -> Vec<TemperatureReading> {
        let mut readings = Vec::new();
        let thermal = self.sys_root.join("class/thermal");
        for zone in sorted_entries(&thermal, |n| n.starts_with("thermal_zone")) {
            let temp = zone.join("temp");
            if !temp.exists() {
                continue;
            }
            let name = file_name(&zone);
            let sensor = match std::fs::read_to_string(zone.join("type")) {
                Ok(kind) if !kind.trim().is_empty() => format!("{name} {}", kind.trim()),
                _ => name,
            };
            match Self::read(&temp).and_then(|t| parse_millicelsius(&temp, &t)) {
                Ok(celsius) => readings.push(TemperatureReading { sensor, celsius }),
                Err(e) => errors.push(e),
            }
        }
        let hwmon = self.sys_root.join("class/hwmon");
        for chip in sorted_entries(&hwmon, |n| n.starts_with("hwmon")) {
            let chip_name = std::fs::read_to_string(chip.join("name"))
                .map(|n| n.trim().to_owned())
                .unwrap_or_default();
            for input in sorted_entries(&chip, |n| n.starts_with("temp") && n.ends_with("_input")) {
                let file = file_name(&input);
                let index = file.trim_end_matches("_input");
                let label = std::fs::read_to_string(chip.join(format!("{index}_label")))
                    .map(|l| l.trim().to_owned())
                    .unwrap_or_default();
                let mut sensor = format!("{}/{index}", file_name(&chip));
                for extra in [&chip_name, &label] {
                    if !extra.is_empty() {
                        sensor.push(' ');
                        sensor.push_str(extra);
                    }
                }
                match Self::read(&input).and_then(|t| parse_millicelsius(&input, &t)) {
                    Ok(celsius) => readings.push(TemperatureReading { sensor, celsius }),
                    Err(e) => errors.push(e),
                }
            }
        }
        readings.truncate(MAX_TEMPERATURE_SENSORS);
        for reading in &mut readings {
            reading.sensor = cairn_proto::truncate_status_text(&reading.sensor, 64);
        }
        readings
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Entries of `dir` whose names pass `keep`, in natural order (`thermal_zone2` before
/// `thermal_zone10`); none when `dir` cannot be read.
fn sorted_entries(dir: &Path, keep: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_str().is_some_and(&keep))
        .map(|e| e.path())
        .collect();
    paths.sort_by_key(|p| {
        let name = file_name(p);
        let digits: String = name.chars().filter(char::is_ascii_digit).collect();
        (
            name.trim_end_matches(|c: char| c.is_ascii_digit())
                .to_owned(),
            digits.len(),
            digits,
            name,
        )
    });
    paths
}

/// Used and total bytes of the file system holding `mount`; `None` when `mount` does not exist.
pub fn filesystem_usage(mount: &Path) -> Result<Option<FilesystemUsage>, HostMetricsError> {
    let err = |source| HostMetricsError::Statvfs {
        path: mount.to_path_buf(),
        source,
    };
    let stats = match rustix::fs::statvfs(mount) {
        Ok(stats) => stats,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(e) => return Err(err(e.into())),
    };
    let (fragment, blocks, free_blocks) = (stats.f_frsize, stats.f_blocks, stats.f_bfree);
    let total = blocks.saturating_mul(fragment);
    let free = free_blocks.saturating_mul(fragment);
    Ok(Some(FilesystemUsage {
        mount_point: mount.display().to_string(),
        used_bytes: total.saturating_sub(free),
        total_bytes: total,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT_1: &str = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 100 0 50 800 50 0 0 0 0 0\nintr 1\n";
    const STAT_2: &str = "cpu  250 0 100 1000 50 0 0 0 0 0\ncpu0 250 0 100 1000 50 0 0 0 0 0\n";
    const MEMINFO: &str = "MemTotal:        2048000 kB\nMemFree:          100000 kB\nMemAvailable:    1024000 kB\nBuffers:            1 kB\n";

    fn write(root: &Path, rel: &str, text: &str) {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn fake_host(dir: &Path) -> (PathBuf, PathBuf) {
        let proc_root = dir.join("proc");
        let sys_root = dir.join("sys");
        write(&proc_root, "stat", STAT_1);
        write(&proc_root, "meminfo", MEMINFO);
        write(&proc_root, "loadavg", "0.52 0.40 0.30 1/200 12345\n");
        write(&proc_root, "uptime", "3600.75 7000.00\n");
        write(&sys_root, "class/thermal/thermal_zone0/temp", "45500\n");
        write(
            &sys_root,
            "class/thermal/thermal_zone0/type",
            "x86_pkg_temp\n",
        );
        write(&sys_root, "class/thermal/thermal_zone10/temp", "30000\n");
        write(&sys_root, "class/thermal/thermal_zone2/temp", "31000\n");
        write(&sys_root, "class/hwmon/hwmon1/name", "nvme\n");
        write(&sys_root, "class/hwmon/hwmon1/temp1_input", "38850\n");
        write(&sys_root, "class/hwmon/hwmon1/temp1_label", "Composite\n");
        write(&sys_root, "class/hwmon/hwmon1/fan1_input", "1200\n");
        (proc_root, sys_root)
    }

    #[test]
    fn samples_every_part_from_sample_files() {
        let dir = tempfile::tempdir().unwrap();
        let (proc_root, sys_root) = fake_host(dir.path());
        let missing = dir.path().join("no-such-mount");
        let mut sampler = HostSampler::with_roots(
            &proc_root,
            &sys_root,
            vec![dir.path().to_path_buf(), missing],
        );
        let (first, errors) = sampler.sample_with_errors();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            first.cpu_percent, None,
            "no busy share without a previous sample"
        );
        assert_eq!(first.memory_total_bytes, 2048000 * 1024);
        assert_eq!(first.memory_available_bytes, 1024000 * 1024);
        assert_eq!(first.load1, 0.52);
        assert_eq!(first.uptime_seconds, 3600);
        assert_eq!(
            first.filesystems.len(),
            1,
            "a missing mount point is skipped"
        );
        let fs = &first.filesystems[0];
        assert_eq!(fs.mount_point, dir.path().display().to_string());
        assert!(
            fs.total_bytes > 0 && fs.used_bytes <= fs.total_bytes,
            "{fs:?}"
        );
        let temps: Vec<(&str, f64)> = first
            .temperatures
            .iter()
            .map(|t| (t.sensor.as_str(), t.celsius))
            .collect();
        assert_eq!(
            temps,
            vec![
                ("thermal_zone0 x86_pkg_temp", 45.5),
                ("thermal_zone2", 31.0),
                ("thermal_zone10", 30.0),
                ("hwmon1/temp1 nvme Composite", 38.85),
            ]
        );

        // busy went 150 -> 350 (+200), total 1000 -> 1400 (+400): 50 %.
        write(&proc_root, "stat", STAT_2);
        let (second, errors) = sampler.sample_with_errors();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(second.cpu_percent, Some(50.0));
    }

    #[test]
    fn broken_files_are_typed_errors_and_other_parts_still_sampled() {
        let dir = tempfile::tempdir().unwrap();
        let (proc_root, sys_root) = fake_host(dir.path());
        write(&proc_root, "meminfo", "MemFree: 12 kB\n");
        write(&proc_root, "loadavg", "");
        write(&sys_root, "class/thermal/thermal_zone2/temp", "hot\n");
        std::fs::remove_file(proc_root.join("uptime")).unwrap();
        let mut sampler = HostSampler::with_roots(&proc_root, &sys_root, vec![]);
        let (metrics, errors) = sampler.sample_with_errors();
        let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 4, "{messages:?}");
        assert!(
            messages[0].contains("meminfo") && messages[0].contains("no MemTotal"),
            "{messages:?}"
        );
        assert!(
            messages[1].contains("loadavg") && messages[1].contains("empty"),
            "{messages:?}"
        );
        assert!(
            matches!(&errors[2], HostMetricsError::Read { path, .. } if path.ends_with("uptime"))
        );
        assert!(
            messages[3].contains("thermal_zone2/temp") && messages[3].contains("\"hot\""),
            "{messages:?}"
        );
        assert_eq!(metrics.memory_total_bytes, 0);
        assert_eq!(
            metrics.temperatures.len(),
            3,
            "the good sensors are still read"
        );
    }

    #[test]
    fn parsers_validate_their_input() {
        let p = Path::new("/proc/stat");
        assert!(parse_proc_stat(p, "intr 5\n")
            .unwrap_err()
            .to_string()
            .contains("no aggregate"));
        assert!(parse_proc_stat(p, "cpu  1 2 x 4\n")
            .unwrap_err()
            .to_string()
            .contains("non-number"));
        assert!(parse_proc_stat(p, "cpu  1 2\n")
            .unwrap_err()
            .to_string()
            .contains("2 fields"));
        // An old kernel with only 4 fields still works.
        assert_eq!(
            parse_proc_stat(p, "cpu  1 2 3 4\n").unwrap(),
            CpuTimes { busy: 6, total: 10 }
        );
        let m = Path::new("/proc/meminfo");
        assert_eq!(
            parse_meminfo(m, "MemTotal: 10 kB\nMemFree: 4 kB\n").unwrap(),
            (10240, 4096)
        );
        assert!(parse_meminfo(m, "MemTotal: 10 MB\n")
            .unwrap_err()
            .to_string()
            .contains("unknown unit"));
        assert!(parse_first_number(m, "-1 2").is_err());
        assert!(parse_first_number(m, "NaN").is_err());
        assert!(parse_millicelsius(m, "99999999999").is_err());
        assert_eq!(parse_millicelsius(m, "-5000\n").unwrap(), -5.0);
        // Counters that went backwards (a wrapped or reset counter) give no share.
        let a = CpuTimes {
            busy: 10,
            total: 20,
        };
        assert_eq!(CpuTimes { busy: 5, total: 30 }.percent_since(&a), None);
        assert_eq!(a.percent_since(&a), None);
    }

    #[test]
    fn real_host_is_sampled() {
        let mut sampler = HostSampler::new(vec!["/".into()]);
        let (first, errors) = sampler.sample_with_errors();
        assert!(errors.is_empty(), "{errors:?}");
        assert!(first.memory_total_bytes > 0 && first.uptime_seconds > 0);
        assert_eq!(first.filesystems[0].mount_point, "/");
        std::thread::sleep(std::time::Duration::from_millis(30));
        let second = sampler.sample();
        assert!(second
            .cpu_percent
            .is_none_or(|p| (0.0..=100.0).contains(&p)));
    }
}
