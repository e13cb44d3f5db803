//! The host id range of every app, persisted so an app keeps its range (and so the owners of
//! its files stay right) across agent restarts and reboots.
//!
//! Ranges are [`IDS_PER_APP`] ids from [`FIRST_HOST_ID`] on, above the host's users and the
//! subordinate ranges Debian hands out (`/etc/subuid` starts at 100000). An app keeps its range
//! while its files may exist; the search for a free one starts at a hash of the app name, so an
//! app that comes back usually gets its old range again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Container ids 0 to 65535 of an app, mapped to a host range of that size.
pub const IDS_PER_APP: u32 = 65_536;
/// The first host id of the first range.
pub const FIRST_HOST_ID: u32 = 1 << 24;
/// Most ranges: the last one ends below 2^31, where some tools take ids for negative numbers.
pub const MAX_RANGES: u32 = ((1 << 31) - FIRST_HOST_ID) / IDS_PER_APP;

/// The ids an app's containers run as on the host: container id `n` is host id `host_start + n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct IdRange {
    /// Host id of container id 0.
    pub host_start: u32,
}

impl IdRange {
    /// The range with index `index` (none past [`MAX_RANGES`]).
    pub fn nth(index: u32) -> Option<IdRange> {
        (index < MAX_RANGES).then(|| IdRange {
            host_start: FIRST_HOST_ID + index * IDS_PER_APP,
        })
    }

    /// Whether `host_id` is in this range.
    pub fn contains(&self, host_id: u32) -> bool {
        (self.host_start..self.host_start + IDS_PER_APP).contains(&host_id)
    }

    /// The host id of container id `id`, or `None` when the range has no such id.
    pub fn host_id(&self, id: u32) -> Option<u32> {
        (id < IDS_PER_APP).then(|| self.host_start + id)
    }

    /// The host id a file owned by host id `id` gets when it moves into this range: ids of the
    /// container's range (0 to 65535, as in an image or a volume made before) move up by
    /// `host_start`; ids already in the range stay; any other id stays as it is (the container
    /// sees it as the overflow id, `nobody`). So shifting twice is the same as shifting once,
    /// and a shift cut short by a power cut is finished by the next one.
    pub fn shifted(&self, id: u32) -> u32 {
        match self.host_id(id) {
            Some(host) => host,
            None => id,
        }
    }

    /// The `uid_map`/`gid_map` line of the range.
    pub fn map_line(&self) -> String {
        format!("0 {} {IDS_PER_APP}\n", self.host_start)
    }
}

/// Why no id range could be read, written or found.
#[derive(Debug, thiserror::Error)]
pub enum RangeError {
    /// Every range is taken.
    #[error(
        "no free id range left for app {app}: all {MAX_RANGES} are taken by apps; remove apps"
    )]
    Exhausted {
        /// The app.
        app: String,
    },
    /// The allocation file could not be read or written.
    #[error("cannot {action} the id ranges of apps in {path}: {reason}; check that the data dir is writable (a corrupt file must be repaired by hand: the owners of app files depend on it)")]
    State {
        /// `read` or `write`.
        action: &'static str,
        /// Path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct RangeFile {
    /// Range of each app.
    apps: BTreeMap<String, IdRange>,
}

/// The id range of every app, persisted in a JSON file.
#[derive(Debug)]
pub struct IdRanges {
    path: PathBuf,
    apps: BTreeMap<String, IdRange>,
}

impl IdRanges {
    /// Load the ranges in `path` (none when the file does not exist).
    ///
    /// # Errors
    /// When the file cannot be read or is not what [`IdRanges`] writes.
    pub fn load(path: &Path) -> Result<IdRanges, RangeError> {
        let state = |reason: String| RangeError::State {
            action: "read",
            path: path.to_path_buf(),
            reason,
        };
        let apps: BTreeMap<String, IdRange> = match std::fs::read(path) {
            Ok(bytes) => {
                serde_json::from_slice::<RangeFile>(&bytes)
                    .map_err(|e| state(e.to_string()))?
                    .apps
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(state(e.to_string())),
        };
        let mut seen = std::collections::HashSet::new();
        for (app, range) in &apps {
            let valid = range.host_start >= FIRST_HOST_ID
                && (range.host_start - FIRST_HOST_ID).is_multiple_of(IDS_PER_APP)
                && (range.host_start - FIRST_HOST_ID) / IDS_PER_APP < MAX_RANGES;
            if !valid {
                return Err(state(format!(
                    "app {app:?} has range {}, which is not one Cairn hands out",
                    range.host_start
                )));
            }
            if !seen.insert(range.host_start) {
                return Err(state(format!(
                    "range {} is given to two apps, {app:?} among them",
                    range.host_start
                )));
            }
        }
        Ok(IdRanges {
            path: path.to_path_buf(),
            apps,
        })
    }

    /// The range of `app`, if it has one.
    pub fn get(&self, app: &str) -> Option<IdRange> {
        self.apps.get(app).copied()
    }

    /// The range of `app`, allocating (and persisting) one when it has none.
    ///
    /// # Errors
    /// When every range is taken or the file cannot be written.
    pub fn allocate(&mut self, app: &str) -> Result<IdRange, RangeError> {
        if let Some(range) = self.get(app) {
            return Ok(range);
        }
        let digest = Sha256::digest(app.as_bytes());
        let start = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]) % MAX_RANGES;
        let taken: std::collections::HashSet<u32> =
            self.apps.values().map(|r| r.host_start).collect();
        let free = (0..MAX_RANGES)
            .filter_map(|i| IdRange::nth((start + i) % MAX_RANGES))
            .find(|r| !taken.contains(&r.host_start))
            .ok_or_else(|| RangeError::Exhausted { app: app.into() })?;
        self.apps.insert(app.to_string(), free);
        if let Err(e) = self.save() {
            self.apps.remove(app);
            return Err(e);
        }
        Ok(free)
    }

    /// Forget the range of `app` (persisted): only once none of its files is left.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn release(&mut self, app: &str) -> Result<(), RangeError> {
        if self.apps.remove(app).is_some() {
            self.save()?;
        }
        Ok(())
    }

    fn save(&self) -> Result<(), RangeError> {
        let state = |reason: String| RangeError::State {
            action: "write",
            path: self.path.clone(),
            reason,
        };
        let file = RangeFile {
            apps: self.apps.clone(),
        };
        let json = serde_json::to_vec_pretty(&file).map_err(|e| state(e.to_string()))?;
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| state(e.to_string()))?;
        }
        cairn_io::write_atomic(&self.path, &json, 0o600).map_err(|e| state(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_disjoint_above_host_ids_and_below_2_pow_31() {
        let first = IdRange::nth(0).unwrap();
        let last = IdRange::nth(MAX_RANGES - 1).unwrap();
        assert_eq!(first.host_start, 16_777_216);
        assert!(u64::from(last.host_start) + u64::from(IDS_PER_APP) <= 1 << 31);
        assert!(IdRange::nth(MAX_RANGES).is_none());
        assert_eq!(first.map_line(), "0 16777216 65536\n");
        // Shifting is idempotent and leaves foreign ids alone.
        for id in [0, 1000, 65_535] {
            let once = first.shifted(id);
            assert_eq!(once, 16_777_216 + id);
            assert_eq!(first.shifted(once), once);
            assert!(first.contains(once));
        }
        assert_eq!(first.shifted(70_000), 70_000);
        assert_eq!(first.host_id(65_536), None);
    }

    #[test]
    fn allocation_is_stable_collision_free_and_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("userns").join("ranges.json");
        let mut ranges = IdRanges::load(&path).unwrap();
        let shop = ranges.allocate("shop").unwrap();
        let cafe = ranges.allocate("cafe").unwrap();
        assert_ne!(shop, cafe);
        assert_eq!(ranges.allocate("shop").unwrap(), shop);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let mut again = IdRanges::load(&path).unwrap();
        assert_eq!(again.get("shop"), Some(shop));
        again.release("shop").unwrap();
        // Back after a release: the same hash start, so the same range while it is free.
        assert_eq!(again.allocate("shop").unwrap(), shop);
    }

    #[test]
    fn a_file_with_a_range_cairn_never_hands_out_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ranges.json");
        for (json, expected) in [
            (
                r#"{"apps":{"a":{"host_start":0}}}"#,
                "not one Cairn hands out",
            ),
            (
                r#"{"apps":{"a":{"host_start":16777217}}}"#,
                "not one Cairn hands out",
            ),
            (
                r#"{"apps":{"a":{"host_start":16777216},"b":{"host_start":16777216}}}"#,
                "given to two apps",
            ),
            ("not json", "expected"),
        ] {
            std::fs::write(&path, json).unwrap();
            let err = IdRanges::load(&path).unwrap_err().to_string();
            assert!(err.contains(expected), "{json}: {err}");
        }
    }
}
