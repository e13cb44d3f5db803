//! Marking the running boot good (systemd-boot automatic boot assessment).
//!
//! systemd-boot counts tries in the entry's file name (`cairn-a+2-1.conf`: 2 left, 1 done) and
//! falls back to the other slot once they run out. Debian ships `systemd-bless-boot` in a package
//! the image does not carry, and the right moment is ours to decide anyway: the boot is good once
//! the agent has reached central (data unlocked, network up, identity usable). Without this every
//! device would give up its slot after three reboots — and boot the other slot's UKI, which the
//! data partition's key is not sealed to. Blessing = renaming the entry to drop the counter
//! (what systemd-bless-boot does), made durable on the ESP.
//!
//! [`slots`] holds the rest of the A/B boot logic: which slot systemd-boot boots, RAUC's custom
//! bootloader backend, and installing a slot's UKI from an update bundle.

pub mod slots;

use std::path::{Path, PathBuf};

pub use crate::config::BootConfig;

/// The EFI variable systemd-boot sets, only for a counted boot, to the ESP path of the entry file
/// it booted, counter included (`\loader\entries\cairn-a+2-1.conf`). (`LoaderEntrySelected`
/// holds the id without the counter.)
const LOADER_BOOT_COUNT_PATH: &str =
    "/sys/firmware/efi/efivars/LoaderBootCountPath-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";

/// Why the boot could not be marked good.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The EFI variable, the entry or the config could not be read, or the entry not renamed.
    #[error("boot: cannot {what} {path}: {source}; check the file and that the ESP is mounted read-write")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
}

/// The entry file name without its try counter, when it has one: `cairn-a+2-1.conf` →
/// `cairn-a.conf`; `cairn-a.conf` → `None`.
pub fn blessed_name(entry: &str) -> Option<String> {
    let stem = entry.strip_suffix(".conf")?;
    let (base, counter) = stem.rsplit_once('+')?;
    let (left, done) = counter.split_once('-').unwrap_or((counter, "0"));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (!base.is_empty() && digits(left) && digits(done)).then(|| format!("{base}.conf"))
}

/// Decode the UTF-16LE value of an efivarfs file (4 bytes of attributes first), NUL-trimmed.
fn efi_string(raw: &[u8]) -> Option<String> {
    let units: Vec<u16> = raw
        .get(4..)?
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16(&units).ok()
}

/// Mark the running boot good: drop the try counter from the entry systemd-boot booted. Returns
/// the new name when it renamed one; `None` when the boot was not counted (no systemd-boot, or
/// already blessed).
pub fn bless_current_boot(cfg: &BootConfig) -> Result<Option<String>, BootError> {
    let _span = tracing::info_span!("boot.bless", esp = %cfg.esp.display()).entered();
    let Ok(raw) = std::fs::read(LOADER_BOOT_COUNT_PATH) else {
        return Ok(None);
    };
    let Some(esp_path) = efi_string(&raw) else {
        return Ok(None);
    };
    let Some((dir, entry)) = split_esp_path(&esp_path) else {
        return Ok(None);
    };
    let Some(blessed) = blessed_name(&entry) else {
        return Ok(None);
    };
    bless_entry(&cfg.esp.join(dir), &entry, &blessed)
}

/// `\loader\entries\x.conf` → (`loader/entries`, `x.conf`).
fn split_esp_path(esp_path: &str) -> Option<(PathBuf, String)> {
    let relative = esp_path.replace('\\', "/");
    let relative = Path::new(relative.trim_start_matches('/'));
    let entry = relative.file_name()?.to_str()?.to_string();
    Some((relative.parent()?.to_path_buf(), entry))
}

fn bless_entry(dir: &Path, entry: &str, blessed: &str) -> Result<Option<String>, BootError> {
    let from = dir.join(entry);
    if !from.exists() {
        // Already renamed by an earlier connection of this boot.
        return Ok(None);
    }
    let to = dir.join(blessed);
    let io = |what, path: &Path| {
        let path = path.to_path_buf();
        move |source| BootError::Io { what, path, source }
    };
    std::fs::rename(&from, &to).map_err(io("rename", &from))?;
    sync_dir(&to).map_err(io("sync", &to))?;
    tracing::info!(
        entry,
        blessed,
        "boot marked good: systemd-boot will keep booting this slot"
    );
    Ok(Some(blessed.to_string()))
}

#[cfg(feature = "tpm")]
fn sync_dir(path: &Path) -> std::io::Result<()> {
    cairn_tpm::sync_parent(path)
}

#[cfg(not(feature = "tpm"))]
fn sync_dir(path: &Path) -> std::io::Result<()> {
    std::fs::File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_dropped_and_other_names_left_alone() {
        assert_eq!(
            blessed_name("cairn-a+2-1.conf").as_deref(),
            Some("cairn-a.conf")
        );
        assert_eq!(
            blessed_name("cairn-b+3.conf").as_deref(),
            Some("cairn-b.conf")
        );
        assert_eq!(
            blessed_name("cairn-a+0-5.conf").as_deref(),
            Some("cairn-a.conf")
        );
        assert_eq!(blessed_name("cairn-a.conf"), None);
        assert_eq!(blessed_name("cairn-a+x-1.conf"), None);
        assert_eq!(blessed_name("+1-1.conf"), None);
        assert_eq!(blessed_name("cairn-a+1-1"), None);
    }

    #[test]
    fn decodes_the_efi_variable() {
        let mut raw = vec![6, 0, 0, 0];
        for u in "\\loader\\entries\\cairn-a+2-1.conf"
            .encode_utf16()
            .chain([0])
        {
            raw.extend_from_slice(&u.to_le_bytes());
        }
        assert_eq!(
            efi_string(&raw).as_deref(),
            Some("\\loader\\entries\\cairn-a+2-1.conf")
        );
        assert_eq!(efi_string(&[1, 2]), None);
        assert_eq!(
            split_esp_path("\\loader\\entries\\cairn-a+2-1.conf"),
            Some((
                PathBuf::from("loader/entries"),
                "cairn-a+2-1.conf".to_string()
            ))
        );
    }

    #[test]
    fn renames_the_booted_entry_once() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cairn-a+2-1.conf"), "title a\n").unwrap();
        std::fs::write(dir.path().join("cairn-b+3-0.conf"), "title b\n").unwrap();
        let renamed = bless_entry(dir.path(), "cairn-a+2-1.conf", "cairn-a.conf").unwrap();
        assert_eq!(renamed.as_deref(), Some("cairn-a.conf"));
        assert_eq!(
            std::fs::read_to_string(dir.path().join("cairn-a.conf")).unwrap(),
            "title a\n"
        );
        assert!(
            dir.path().join("cairn-b+3-0.conf").exists(),
            "the other slot is untouched"
        );
        assert_eq!(
            bless_entry(dir.path(), "cairn-a+2-1.conf", "cairn-a.conf").unwrap(),
            None
        );
    }
}
