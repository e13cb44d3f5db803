//! The PCR 11 value systemd-stub 252 (Debian 12) leaves after booting a UKI, computed from the
//! UKI's bytes, so that an OS update can seal the disk key to its new boot chain in advance.
//!
//! # What systemd-stub 252 measures (src/boot/efi/stub.c, pe.c, src/fundamental/tpm-pcr.c)
//!
//! PCR 11 starts at 32 zero bytes. For each section of [`MEASURED_UKI_SECTIONS`], in that order
//! (`.pcrsig` is skipped: it holds signatures over this very PCR), when the UKI has it:
//!
//! 1. extend with SHA-256 of the section name *including its NUL*, e.g. `b".linux\0"`;
//! 2. extend with SHA-256 of the section's memory image: `VirtualSize` bytes at the section's
//!    address, i.e. the file bytes at `PointerToRawData`, zero-filled past `SizeOfRawData`
//!    ([`crate::Section::memory_image`]).
//!
//! Extending is `new = SHA-256(old || digest)`. Section lookup follows the stub exactly: a table
//! entry matches a name when its 8-byte name field *starts with* the name (`memcmp` over
//! `strlen(name)`), a later match replaces an earlier one, and a section whose `VirtualSize` is
//! 0 counts as absent.
//!
//! After the stub, `systemd-pcrphase` (units enabled by Debian's systemd 252, active only when
//! the stub measured) extends PCR 11 with boot phase words ([`BOOT_PHASES`]) as userspace
//! reaches them: [`pcr11_after_phases`]. `systemd-measure calculate --phase=` (empty phase)
//! prints the plain value this module predicts.

use sha2::{Digest as _, Sha256};

use crate::{sections, PeError, Section};

/// The PCR systemd-stub measures the UKI's sections into.
pub const UKI_PCR: u8 = 11;

/// The UKI sections systemd-stub 252 measures into PCR 11, in measurement order.
pub const MEASURED_UKI_SECTIONS: [&str; 7] = [
    ".linux", ".osrel", ".cmdline", ".initrd", ".splash", ".dtb", ".pcrpkey",
];

/// The boot phases `systemd-pcrphase` 252 measures into PCR 11, in boot order: `enter-initrd`
/// and `leave-initrd` (only with a systemd initrd; Cairn's initramfs-tools initrd has none),
/// `sysinit` (after `sysinit.target`), `ready` (before `systemd-user-sessions.service`).
pub const BOOT_PHASES: [&str; 4] = ["enter-initrd", "leave-initrd", "sysinit", "ready"];

/// The PCR 11 (SHA-256 bank) value systemd-stub 252 leaves after measuring the UKI `uki` (the
/// whole file, signed or not: the signature is not in a section), before any boot phase.
///
/// # Errors
/// [`PeError`] when `uki` is not a PE32+ image or a measured section lies outside the file.
pub fn predict_uki_pcr11(uki: &[u8]) -> Result<[u8; 32], PeError> {
    let table = sections(uki)?;
    let mut pcr = [0u8; 32];
    for name in MEASURED_UKI_SECTIONS {
        let Some(section) = find_section(&table, name) else {
            continue;
        };
        let mut name_nul = name.as_bytes().to_vec();
        name_nul.push(0);
        pcr = extend(&pcr, &Sha256::digest(&name_nul));
        let data = section.memory_image(uki)?;
        pcr = extend(&pcr, &Sha256::digest(&*data));
    }
    Ok(pcr)
}

/// `pcr11` extended with each word of `phases` in order, as `systemd-pcrphase` does (SHA-256 of
/// the word, without a NUL). E.g. PCR 11 after `sysinit.target` on a Cairn device:
/// `pcr11_after_phases(&predict_uki_pcr11(uki)?, &["sysinit"])`.
pub fn pcr11_after_phases(pcr11: &[u8; 32], phases: &[&str]) -> [u8; 32] {
    phases.iter().fold(*pcr11, |pcr, word| {
        extend(&pcr, &Sha256::digest(word.as_bytes()))
    })
}

/// The stub's lookup: the last table entry whose name field starts with `name`, if its
/// `VirtualSize` is not 0.
fn find_section<'a>(table: &'a [Section], name: &str) -> Option<&'a Section> {
    table
        .iter()
        .rfind(|s| s.name.starts_with(name.as_bytes()))
        .filter(|s| s.virtual_size != 0)
}

/// `SHA-256(old || digest)`.
fn extend(old: &[u8; 32], digest: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(old);
    hasher.update(digest);
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_pe;

    fn sha(bytes: &[u8]) -> Vec<u8> {
        Sha256::digest(bytes).to_vec()
    }

    #[test]
    fn measures_names_with_nul_then_data_in_stub_order() {
        // Table order differs from measurement order; .pcrsig and the stub's .text are skipped.
        let mut pe = test_pe(
            &[
                (".text", 4, 0x1000, 0x200, 0x200),
                (".cmdline", 3, 0x2000, 0x200, 0x400),
                (".pcrsig", 2, 0x3000, 0x200, 0x600),
                (".linux", 5, 0x4000, 0x200, 0x800),
            ],
            0xa00,
        );
        pe[0x400..0x403].copy_from_slice(b"ro ");
        pe[0x600..0x602].copy_from_slice(b"{}");
        pe[0x800..0x805].copy_from_slice(b"kernl");
        let mut expected = [0u8; 32];
        for part in [&b".linux\0"[..], b"kernl", b".cmdline\0", b"ro "] {
            expected = extend(&expected, &sha(part));
        }
        assert_eq!(predict_uki_pcr11(&pe).unwrap(), expected);
    }

    #[test]
    fn lookup_is_by_prefix_last_match_wins_and_empty_is_absent() {
        let mut pe = test_pe(
            &[
                (".linux", 1, 0x1000, 0x200, 0x200),
                (".linuxZ", 1, 0x2000, 0x200, 0x400),
                (".initrd", 0, 0x3000, 0x200, 0x600),
            ],
            0x800,
        );
        pe[0x200] = b'a';
        pe[0x400] = b'b';
        let mut expected = extend(&[0; 32], &sha(b".linux\0"));
        expected = extend(&expected, &sha(b"b"));
        assert_eq!(predict_uki_pcr11(&pe).unwrap(), expected);
    }

    #[test]
    fn a_truncated_uki_is_refused() {
        let pe = test_pe(&[(".linux", 0x400, 0x1000, 0x400, 0x200)], 0x300);
        assert!(matches!(
            predict_uki_pcr11(&pe),
            Err(PeError::SectionOutsideFile { .. })
        ));
        assert!(predict_uki_pcr11(b"not a PE").is_err());
    }

    #[test]
    fn phases_extend_the_word_without_nul() {
        let base = [7u8; 32];
        assert_eq!(pcr11_after_phases(&base, &[]), base);
        let once = extend(&base, &sha(b"sysinit"));
        assert_eq!(pcr11_after_phases(&base, &["sysinit"]), once);
        assert_eq!(
            pcr11_after_phases(&base, &["sysinit", "ready"]),
            extend(&once, &sha(b"ready"))
        );
    }
}
