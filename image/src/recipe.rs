//! Image recipes: the data-only TOML files under `recipes/` that say what goes into an image.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// A recipe could not be read or is not valid.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    /// The file could not be read.
    #[error("cannot read recipe {path}: {source}")]
    Read {
        /// The recipe path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for a recipe (unknown or missing fields included).
    #[error("recipe {path} is not valid: {source}")]
    Parse {
        /// The recipe path.
        path: PathBuf,
        /// The TOML error, naming the field.
        source: toml::de::Error,
    },
    /// A recipe variant could not be written.
    #[error("cannot write recipe variant {path}: {source}")]
    Write {
        /// The file written.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A value is out of range or malformed.
    #[error("recipe {path}: {field} {problem}")]
    Invalid {
        /// The recipe path.
        path: PathBuf,
        /// The offending field.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
}

/// A parsed, validated recipe.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// What is built.
    pub target: Target,
    /// Where the packages come from.
    pub debian: Debian,
    /// The root filesystem image.
    pub root: Root,
    /// The initramfs.
    pub initramfs: Initramfs,
    /// The kernel command line.
    pub kernel: Kernel,
    /// The disk layout.
    pub partitions: Partitions,
    /// systemd-boot settings.
    pub boot: Boot,
    /// Fleet settings written into the agent config.
    pub fleet: Fleet,
    /// RAUC update bundle settings.
    pub update: Update,
    /// Where the recipe was read from (not in the file).
    #[serde(skip)]
    pub path: PathBuf,
}

/// `[target]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// Target name, used in output file names (`cairn-<name>.img`).
    pub name: String,
    /// Debian architecture.
    pub arch: String,
    /// OS release version.
    pub version: String,
}

/// `[debian]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Debian {
    /// Suite (codename).
    pub suite: String,
    /// apt source lines.
    pub mirrors: Vec<String>,
    /// The one timestamp used everywhere (SOURCE_DATE_EPOCH).
    pub source_date_epoch: i64,
    /// Packages installed on top of minbase.
    pub packages: Vec<String>,
}

/// `[root]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Root {
    /// zstd compression level of the squashfs root.
    pub zstd_level: u32,
    /// Paths (mksquashfs wildcards, relative to /) left out of the root image.
    #[serde(default)]
    pub exclude: Vec<String>,
}

/// `[initramfs]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Initramfs {
    /// Kernel modules in the initramfs (MODULES=list).
    pub modules: Vec<String>,
}

/// `[kernel]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kernel {
    /// Extra kernel command line arguments.
    pub cmdline_extra: String,
}

/// `[partitions]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Partitions {
    /// ESP size in MiB.
    pub esp_mib: u64,
    /// Size of each root slot in MiB.
    pub root_mib: u64,
    /// Data partition size in MiB (grown on first boot later).
    pub data_mib: u64,
    /// GPT disk GUID.
    pub disk_guid: String,
    /// ESP partition GUID.
    pub esp_uuid: String,
    /// root-a partition GUID.
    pub root_a_uuid: String,
    /// root-b partition GUID.
    pub root_b_uuid: String,
    /// data partition GUID.
    pub data_uuid: String,
    /// FAT volume id of the ESP (8 hex digits).
    pub esp_volume_id: String,
    /// Whether root-b gets the same root as root-a.
    pub fill_root_b: bool,
    /// dm-verity salt of the root filesystem (hex).
    pub verity_salt: String,
}

/// `[boot]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Boot {
    /// Boot tries per slot (systemd-boot boot counting).
    pub tries: u32,
    /// Menu timeout in seconds.
    pub timeout_s: u32,
    /// Seconds a counted (trial) boot may take to be marked good before the watchdog reboots it
    /// (each reboot spends one of `tries`).
    #[serde(default = "default_trial_deadline_s")]
    pub trial_deadline_s: u32,
}

fn default_trial_deadline_s() -> u32 {
    600
}

/// `[fleet]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fleet {
    /// Central's gRPC endpoint.
    pub central_url: String,
    /// Agent key storage mode.
    pub key_storage: String,
    /// PCRs (SHA-256 bank) the data partition's key is sealed to, e.g. `7,11`.
    pub data_pcrs: String,
    /// Registries (`host:port`) the agent may pull app images from over plain HTTP.
    #[serde(default)]
    pub plain_http_registries: Vec<String>,
    /// NTP servers (host names or addresses) for systemd-timesyncd, tried before those DHCP
    /// gives; empty: DHCP's and Debian's pool. Central's signed time corrects large offsets
    /// whatever these say.
    #[serde(default)]
    pub ntp_servers: Vec<String>,
}

/// `[update]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Update {
    /// RAUC compatible string.
    pub compatible: String,
}

impl Recipe {
    /// Read and validate a recipe file.
    pub fn load(path: &Path) -> Result<Recipe, RecipeError> {
        let text = std::fs::read_to_string(path).map_err(|source| RecipeError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Recipe::parse(&text, path)
    }

    /// Parse and validate recipe text; `path` is only used in messages and to find the lock.
    pub fn parse(text: &str, path: &Path) -> Result<Recipe, RecipeError> {
        let mut recipe: Recipe = toml::from_str(text).map_err(|source| RecipeError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        recipe.path = path.to_path_buf();
        recipe.validate()?;
        Ok(recipe)
    }

    /// The lock file beside the recipe (`<name>.lock`).
    pub fn lock_path(&self) -> PathBuf {
        self.path.with_extension("lock")
    }

    fn invalid(&self, field: &'static str, problem: impl Into<String>) -> RecipeError {
        RecipeError::Invalid {
            path: self.path.clone(),
            field,
            problem: problem.into(),
        }
    }

    fn validate(&self) -> Result<(), RecipeError> {
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        };
        if !name_ok(&self.target.name) {
            return Err(self.invalid("target.name", "must be non-empty [A-Za-z0-9._-]"));
        }
        if !name_ok(&self.target.version) {
            return Err(self.invalid("target.version", "must be non-empty [A-Za-z0-9._-]"));
        }
        if self.debian.mirrors.is_empty() {
            return Err(self.invalid("debian.mirrors", "needs at least one apt source line"));
        }
        if self.debian.source_date_epoch <= 0 {
            return Err(self.invalid("debian.source_date_epoch", "must be a positive UNIX time"));
        }
        for pkg in &self.debian.packages {
            if pkg.is_empty() || pkg.contains(|c: char| c.is_whitespace() || c == '=' || c == ',') {
                return Err(self.invalid("debian.packages", format!("has a bad name {pkg:?}")));
            }
        }
        if !(1..=22).contains(&self.root.zstd_level) {
            return Err(self.invalid("root.zstd_level", "must be 1..=22"));
        }
        for pattern in &self.root.exclude {
            if pattern.is_empty() || pattern.starts_with('/') || pattern.contains("..") {
                return Err(self.invalid(
                    "root.exclude",
                    format!("{pattern:?} must be a relative path"),
                ));
            }
        }
        for module in &self.initramfs.modules {
            if !name_ok(module) {
                return Err(self.invalid("initramfs.modules", format!("has a bad name {module:?}")));
            }
        }
        if self.kernel.cmdline_extra.contains("cairn.")
            || self.kernel.cmdline_extra.contains("root=")
        {
            return Err(self.invalid(
                "kernel.cmdline_extra",
                "must not set root= or cairn.* (the build sets them per slot)",
            ));
        }
        let p = &self.partitions;
        if p.esp_mib < 33 {
            return Err(self.invalid("partitions.esp_mib", "must be at least 33 (FAT32)"));
        }
        if p.root_mib == 0 || p.data_mib == 0 {
            return Err(self.invalid("partitions", "root_mib and data_mib must be > 0"));
        }
        for (field, uuid) in [
            ("partitions.disk_guid", &p.disk_guid),
            ("partitions.esp_uuid", &p.esp_uuid),
            ("partitions.root_a_uuid", &p.root_a_uuid),
            ("partitions.root_b_uuid", &p.root_b_uuid),
            ("partitions.data_uuid", &p.data_uuid),
        ] {
            if !is_uuid(uuid) {
                return Err(self.invalid(field, format!("{uuid:?} is not a UUID")));
            }
        }
        if p.esp_volume_id.len() != 8 || !p.esp_volume_id.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(self.invalid("partitions.esp_volume_id", "must be 8 hex digits"));
        }
        if p.verity_salt.is_empty()
            || p.verity_salt.len() > 512
            || hex::decode(&p.verity_salt).is_err()
        {
            return Err(self.invalid("partitions.verity_salt", "must be hex (1..256 bytes)"));
        }
        if self.boot.tries == 0 {
            return Err(self.invalid("boot.tries", "must be at least 1"));
        }
        if self.boot.trial_deadline_s < 60 {
            return Err(self.invalid(
                "boot.trial_deadline_s",
                "must be at least 60 (a slow first boot must not be rebooted)",
            ));
        }
        if !self.fleet.central_url.starts_with("https://") {
            return Err(self.invalid("fleet.central_url", "must start with https://"));
        }
        if !["auto", "tpm", "software"].contains(&self.fleet.key_storage.as_str()) {
            return Err(self.invalid("fleet.key_storage", "must be auto, tpm or software"));
        }
        if self.fleet.data_pcrs.is_empty()
            || !self
                .fleet
                .data_pcrs
                .split(',')
                .all(|p| p.trim().parse::<u8>().is_ok_and(|n| n < 24))
        {
            return Err(self.invalid(
                "fleet.data_pcrs",
                "must list PCR numbers 0-23 separated by ',' (e.g. \"7,11\")",
            ));
        }
        if self.fleet.plain_http_registries.iter().any(|r| {
            r.is_empty() || r.contains(['/', '"', '\\']) || r.contains(char::is_whitespace)
        }) {
            return Err(self.invalid(
                "fleet.plain_http_registries",
                "each entry must be a registry host[:port]",
            ));
        }
        if self.fleet.ntp_servers.len() > 16
            || self.fleet.ntp_servers.iter().any(|s| {
                s.is_empty()
                    || s.len() > 253
                    || !s
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || ".-:".contains(c))
            })
        {
            return Err(self.invalid(
                "fleet.ntp_servers",
                "must list at most 16 NTP servers, each a host name or IP address",
            ));
        }
        if !name_ok(&self.update.compatible) {
            return Err(self.invalid("update.compatible", "must be non-empty [A-Za-z0-9._-]"));
        }
        Ok(())
    }
}

/// Changes that make a second version of a recipe (the QEMU update tests' "version B" and "bad"
/// builds): everything else, the lock included, stays the same.
#[derive(Debug, Clone, Default)]
pub struct RecipeVariant<'a> {
    /// The new `target.version`.
    pub version: &'a str,
    /// Packages added to `debian.packages` (not in the lock: build with `allow_lock_drift`).
    pub add_packages: &'a [&'a str],
    /// Appended to `kernel.cmdline_extra` (e.g. `init=/bin/false` for a version that never
    /// boots).
    pub cmdline_append: Option<&'a str>,
}

impl Recipe {
    /// `variant` of this recipe in memory, validated; the lock stays this recipe's (for
    /// `tests/src/image.rs build_image_with`).
    pub fn variant(&self, variant: &RecipeVariant<'_>) -> Result<Recipe, RecipeError> {
        let mut recipe = self.clone();
        recipe.target.version = variant.version.to_string();
        recipe
            .debian
            .packages
            .extend(variant.add_packages.iter().map(|p| p.to_string()));
        if let Some(extra) = variant.cmdline_append {
            recipe.kernel.cmdline_extra = format!("{} {extra}", recipe.kernel.cmdline_extra)
                .trim()
                .to_string();
        }
        recipe.validate()?;
        Ok(recipe)
    }
}

/// Write `variant` of the recipe at `base` into `dir` under the same file name, with a copy of
/// its lock beside it (so [`Recipe::lock_path`] finds it), and load it. Comments are not kept.
pub fn write_variant(
    base: &Path,
    dir: &Path,
    variant: &RecipeVariant<'_>,
) -> Result<Recipe, RecipeError> {
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|source| RecipeError::Read {
            path: path.to_path_buf(),
            source,
        })
    };
    let base_recipe = Recipe::load(base)?;
    let mut table: toml::Table =
        toml::from_str(&read(base)?).map_err(|source| RecipeError::Parse {
            path: base.to_path_buf(),
            source,
        })?;
    fn section<'t>(table: &'t mut toml::Table, name: &str) -> Option<&'t mut toml::Table> {
        table.get_mut(name)?.as_table_mut()
    }
    if let Some(target) = section(&mut table, "target") {
        target.insert("version".into(), variant.version.into());
    }
    if let Some(packages) =
        section(&mut table, "debian").and_then(|d| d.get_mut("packages")?.as_array_mut())
    {
        packages.extend(variant.add_packages.iter().map(|p| toml::Value::from(*p)));
    }
    if let Some(extra) = variant.cmdline_append {
        if let Some(kernel) = section(&mut table, "kernel") {
            let joined = format!("{} {extra}", base_recipe.kernel.cmdline_extra);
            kernel.insert("cmdline_extra".into(), joined.trim().into());
        }
    }
    let file_name = base
        .file_name()
        .unwrap_or(std::ffi::OsStr::new("recipe.toml"));
    let path = dir.join(file_name);
    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RecipeError::Write { path, source }
    };
    std::fs::create_dir_all(dir).map_err(write_err(dir))?;
    let text = format!(
        "# Variant of {} (version {}, written by cairn_image::recipe::write_variant).\n{}",
        base.display(),
        variant.version,
        toml::to_string(&table).expect("a TOML table serializes")
    );
    std::fs::write(&path, text).map_err(write_err(&path))?;
    let lock = path.with_extension("lock");
    std::fs::copy(base_recipe.lock_path(), &lock).map_err(write_err(&lock))?;
    Recipe::load(&path)
}

fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.chars().all(|c| c.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_recipe() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../recipes/qemu-x86_64.toml")
    }

    #[test]
    fn the_committed_recipe_is_valid() {
        let recipe = Recipe::load(&repo_recipe()).unwrap();
        assert_eq!(recipe.target.name, "qemu-x86_64");
        assert_eq!(recipe.fleet.central_url, "https://10.0.2.2:7443");
        assert!(recipe.lock_path().ends_with("recipes/qemu-x86_64.lock"));
    }

    #[test]
    fn a_variant_changes_version_packages_and_cmdline_only() {
        let dir = tempfile::tempdir().unwrap();
        let base = Recipe::load(&repo_recipe()).unwrap();
        let variant = RecipeVariant {
            version: "0.2.0",
            add_packages: &["less"],
            cmdline_append: Some("cairn.test=1x"),
        };
        // cmdline_extra must not set cairn.*: the variant is validated like any recipe.
        assert!(write_variant(&repo_recipe(), dir.path(), &variant).is_err());
        let variant = RecipeVariant {
            cmdline_append: Some("init=/bin/false"),
            ..variant
        };
        let b = write_variant(&repo_recipe(), dir.path(), &variant).unwrap();
        assert_eq!(b.target.version, "0.2.0");
        assert_eq!(b.debian.packages.last().map(String::as_str), Some("less"));
        assert_eq!(b.debian.packages.len(), base.debian.packages.len() + 1);
        assert!(b.kernel.cmdline_extra.ends_with(
            " panic=10 loglevel=4 systemd.show_status=1 systemd.gpt_auto=0 init=/bin/false"
        ));
        assert_eq!(b.lock_path(), dir.path().join("qemu-x86_64.lock"));
        assert_eq!(
            std::fs::read(b.lock_path()).unwrap(),
            std::fs::read(base.lock_path()).unwrap()
        );
        assert_eq!(b.partitions.verity_salt, base.partitions.verity_salt);
        assert_eq!(b.update.compatible, base.update.compatible);
        // The same change in memory (lock beside the original recipe).
        let m = base.variant(&variant).unwrap();
        assert_eq!(m.target.version, b.target.version);
        assert_eq!(m.debian.packages, b.debian.packages);
        assert_eq!(m.kernel.cmdline_extra, b.kernel.cmdline_extra);
        assert_eq!(m.lock_path(), base.lock_path());
    }

    #[test]
    fn unknown_fields_and_bad_values_are_refused() {
        let text = std::fs::read_to_string(repo_recipe()).unwrap();
        let typo = text.replace("esp_mib", "esp_mb");
        assert!(matches!(
            Recipe::parse(&typo, Path::new("x.toml")),
            Err(RecipeError::Parse { .. })
        ));
        let bad_uuid = text.replace("5a9c0d1e-2b3f", "5a9c0d1e-2b3");
        let err = Recipe::parse(&bad_uuid, Path::new("x.toml")).unwrap_err();
        assert!(err.to_string().contains("disk_guid"), "{err}");
        let root = text.replace("panic=10", "panic=10 root=/dev/sda2");
        assert!(Recipe::parse(&root, Path::new("x.toml")).is_err());
        let ntp = text.replace("ntp_servers = []", "ntp_servers = [\"pool ntp.org\"]");
        let err = Recipe::parse(&ntp, Path::new("x.toml")).unwrap_err();
        assert!(err.to_string().contains("fleet.ntp_servers"), "{err}");
    }
}
