//! The sealed copies of the disk key across OS updates and rollbacks, and the rule that keeps the
//! data partition unlocking through power cuts at any point.
//!
//! # Files (all beside the configured `sealed_key` path, on the ESP)
//!
//! - `<sealed_key>` ([`SealedKeyFile::Current`]): sealed to the boot chain that unlocked last.
//! - `<sealed_key>.next` ([`SealedKeyFile::Next`]): sealed to the predicted PCR values of an OS
//!   update staged in the other slot ([`crate::DataUnlock::seal_for_next_boot`]), or, after a
//!   rollback, to the slot that was rolled back from.
//! - `<sealed_key>.prev` ([`SealedKeyFile::Previous`]): after booting into an update, sealed to
//!   the slot that was booted before it, the rollback target, until the new slot is marked good
//!   ([`crate::DataUnlock::forget_previous_boot_chain`]).
//!
//! Every file seals the same disk key; each is bound to a different boot chain.
//!
//! # Rule
//!
//! 1. Unlock tries `<sealed_key>`, then `.next`, then `.prev` (those present), and opens with the
//!    first whose key the TPM releases and LUKS accepts. Recovery is needed only when none does;
//!    the reason is that of the first present file (normally `<sealed_key>`'s PCR mismatch).
//! 2. The file that worked becomes `<sealed_key>`:
//!    - `.next` worked (booted into the update): `<sealed_key>` -> `.prev`, `.next` ->
//!      `<sealed_key>`;
//!    - `.prev` worked (fell back to the old slot before the update was marked good):
//!      `<sealed_key>` -> `.next` (unless a `.next` exists: then it is dropped), `.prev` ->
//!      `<sealed_key>`.
//! 3. Staging an update writes `.next` atomically (a 0600 temp file, fsync, rename, fsync of the
//!    directory) and touches nothing else. Marking the booted slot good removes `.prev`. Recovery
//!    and first boot remove `.next` and `.prev` (they hold a disk key that is no longer valid).
//!
//! Each step is one `rename` (or `unlink`) followed by an fsync of the directory. At every point
//! between two steps each valid copy is present under one of the three names and unlock tries all
//! three, so a power cut never strands the key: cut before the reboot into the update (old chain
//! boots, `<sealed_key>` works, `.next` stays staged), cut in the middle of a promotion (only
//! `.prev` and `.next` exist; whichever chain boots finds its copy), cut during the first boot of
//! the update (promotion is repeated). Promotion is best effort: when a rename fails (ESP
//! read-only, full) the unlock still succeeds and the next boot promotes again.

use cairn_tpm::sync_parent;
use std::path::{Path, PathBuf};

/// Which sealed copy of the disk key a file holds (see the module docs for the rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SealedKeyFile {
    /// `<sealed_key>`: the boot chain that unlocked last.
    Current,
    /// `<sealed_key>.next`: an OS update's predicted boot chain, or the slot rolled back from.
    Next,
    /// `<sealed_key>.prev`: the slot booted before the update, until the update is marked good.
    Previous,
}

impl SealedKeyFile {
    /// The order in which unlock tries the files.
    pub const UNLOCK_ORDER: [SealedKeyFile; 3] = [
        SealedKeyFile::Current,
        SealedKeyFile::Next,
        SealedKeyFile::Previous,
    ];

    /// This file's path for the configured `sealed_key` path (`Current` is `sealed_key` itself,
    /// the others append `.next` / `.prev` to its file name).
    pub fn path(self, sealed_key: &Path) -> PathBuf {
        let suffix = match self {
            SealedKeyFile::Current => return sealed_key.to_path_buf(),
            SealedKeyFile::Next => ".next",
            SealedKeyFile::Previous => ".prev",
        };
        let mut name = sealed_key.file_name().unwrap_or_default().to_os_string();
        name.push(suffix);
        sealed_key.with_file_name(name)
    }
}

/// `current`, `next`, `previous`.
impl std::fmt::Display for SealedKeyFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SealedKeyFile::Current => "current",
            SealedKeyFile::Next => "next",
            SealedKeyFile::Previous => "previous",
        })
    }
}

/// Make `winner`, which just unlocked the disk, the current file (rule 2 of the module docs).
/// Each rename is followed by an fsync of the directory.
pub(crate) fn promote(sealed_key: &Path, winner: SealedKeyFile) -> std::io::Result<()> {
    let path = |which: SealedKeyFile| which.path(sealed_key);
    let current = path(SealedKeyFile::Current);
    let displaced_to = match winner {
        SealedKeyFile::Current => return Ok(()),
        SealedKeyFile::Next => Some(SealedKeyFile::Previous),
        // Never overwrite a staged update with the copy of a slot that just failed.
        SealedKeyFile::Previous if path(SealedKeyFile::Next).exists() => None,
        SealedKeyFile::Previous => Some(SealedKeyFile::Next),
    };
    let _span = tracing::info_span!("disk.sealed_key.promote", from = %winner).entered();
    if let Some(displaced_to) = displaced_to {
        if current.exists() {
            rename_durably(&current, &path(displaced_to))?;
            tracing::info!(
                "the sealed key that did not unlock is kept as the {displaced_to} copy for a boot back into its slot"
            );
        }
    }
    rename_durably(&path(winner), &current)?;
    tracing::info!("the {winner} sealed key is now the current one");
    Ok(())
}

/// Remove the `which` copies that exist; the directory is fsynced after each removal. Returns the
/// removed paths.
pub(crate) fn remove(sealed_key: &Path, which: &[SealedKeyFile]) -> std::io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for file in which {
        let path = file.path(sealed_key);
        match std::fs::remove_file(&path) {
            Ok(()) => {
                sync_parent(&path)?;
                removed.push(path);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}

/// `rename(from, to)` (replacing `to`), then make the new name durable
/// ([`cairn_tpm::sync_parent`]).
fn rename_durably(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::rename(from, to)?;
    sync_parent(to)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(files: &[(SealedKeyFile, &str)]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("data-key.sealed");
        for (which, content) in files {
            std::fs::write(which.path(&key), content).unwrap();
        }
        (dir, key)
    }

    fn contents(key: &Path) -> Vec<(SealedKeyFile, String)> {
        SealedKeyFile::UNLOCK_ORDER
            .iter()
            .filter_map(|&which| {
                let text = std::fs::read_to_string(which.path(key)).ok()?;
                Some((which, text))
            })
            .collect()
    }

    use SealedKeyFile::{Current, Next, Previous};

    #[test]
    fn paths_append_to_the_file_name() {
        let key = Path::new("/efi/cairn/data-key.sealed");
        assert_eq!(Current.path(key), key);
        assert_eq!(Next.path(key), Path::new("/efi/cairn/data-key.sealed.next"));
        assert_eq!(
            Previous.path(key),
            Path::new("/efi/cairn/data-key.sealed.prev")
        );
        assert_eq!(Next.to_string(), "next");
    }

    #[test]
    fn booting_into_the_update_keeps_the_old_copy_as_previous() {
        let (_dir, key) = setup(&[(Current, "A"), (Next, "B")]);
        promote(&key, Next).unwrap();
        assert_eq!(
            contents(&key),
            vec![(Current, "B".into()), (Previous, "A".into())]
        );
        // Rolling back before the update was marked good swaps them back.
        promote(&key, Previous).unwrap();
        assert_eq!(
            contents(&key),
            vec![(Current, "A".into()), (Next, "B".into())]
        );
        promote(&key, Current).unwrap();
        assert_eq!(
            contents(&key),
            vec![(Current, "A".into()), (Next, "B".into())]
        );
    }

    #[test]
    fn a_promotion_cut_in_the_middle_is_completed() {
        // Power cut after `<key>` -> `.prev`, before `.next` -> `<key>`.
        let (_dir, key) = setup(&[(Next, "B"), (Previous, "A")]);
        promote(&key, Next).unwrap();
        assert_eq!(
            contents(&key),
            vec![(Current, "B".into()), (Previous, "A".into())]
        );
        // The same state, but the old chain boots.
        let (_dir, key) = setup(&[(Next, "B"), (Previous, "A")]);
        promote(&key, Previous).unwrap();
        assert_eq!(
            contents(&key),
            vec![(Current, "A".into()), (Next, "B".into())]
        );
    }

    #[test]
    fn a_rollback_never_overwrites_a_staged_update() {
        let (_dir, key) = setup(&[(Current, "B"), (Next, "C"), (Previous, "A")]);
        promote(&key, Previous).unwrap();
        assert_eq!(
            contents(&key),
            vec![(Current, "A".into()), (Next, "C".into())]
        );
    }

    #[test]
    fn removes_only_what_exists() {
        let (_dir, key) = setup(&[(Current, "A"), (Previous, "P")]);
        let removed = remove(&key, &[Next, Previous]).unwrap();
        assert_eq!(removed, vec![Previous.path(&key)]);
        assert_eq!(contents(&key), vec![(Current, "A".into())]);
    }
}
