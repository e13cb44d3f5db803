//! Host integration tests of the data unlock flow: a real swtpm and the real cryptsetup on a
//! sparse file. Opening needs device-mapper, which the host lacks, so the opener checks the key
//! with `cryptsetup open --test-passphrase` instead (the QEMU tests open for real).

use std::path::{Path, PathBuf};
use std::process::Command;

use cairn_disk::{
    disk_key_opens, generate_recovery_key, is_luks, recovery_key_opens, DataUnlock, DiskKey,
    LuksError, OpenLuks, RecoveryReason, UnlockError, UnlockOutcome,
};
use cairn_testsupport::require_tool;
use cairn_tpm::{extend_pcr, read_pcrs, unseal_secret, SealedSecret};

mod common;

use common::{fixture, hex, mode, restart_tpm, start_tpm, tpm, TestPassphraseOpen};

#[test]
fn first_boot_formats_seals_and_later_boots_open() {
    let Some(tpm) = tpm() else { return };
    let Some(f) = fixture(&tpm) else { return };
    let c = &f.config;

    let UnlockOutcome::Formatted {
        opened,
        recovery_key,
    } = c.unlock(&TestPassphraseOpen).unwrap()
    else {
        panic!("first boot should format");
    };
    assert_eq!(opened, c.device);
    assert!(is_luks(&c.device).unwrap());
    assert_eq!(mode(&c.sealed_key), 0o600);
    let sealed = SealedSecret::read(&c.sealed_key).unwrap().unwrap();
    assert_eq!(sealed.pcrs().to_string(), "7,11");
    // The unsealed key opens keyslot 0 (checked with --test-passphrase), the recovery key slot 1.
    let key = unseal_secret(&c.tcti, &sealed).unwrap();
    assert!(disk_key_opens(&c.device, &DiskKey::from_bytes(&key).unwrap()).unwrap());
    assert!(recovery_key_opens(&c.device, &recovery_key).unwrap());
    // The key is on neither the blob nor the disk in clear.
    for file in [&c.sealed_key, &c.device] {
        let bytes = std::fs::read(file).unwrap();
        assert!(!bytes.windows(32).any(|w| w == key.as_slice()), "{file:?}");
    }

    // Next boot (reboot: PCRs reset to the same values).
    let tpm = restart_tpm(tpm);
    let c = DataUnlock {
        tcti: tpm.tcti(),
        ..c.clone()
    };
    match c.unlock(&TestPassphraseOpen).unwrap() {
        UnlockOutcome::Opened {
            opened,
            new_recovery_key: None,
        } => assert_eq!(opened, c.device),
        other => panic!("expected Opened, got {other:?}"),
    }
    drop(f.dir);
}

#[test]
fn changed_pcr_7_needs_recovery_and_leaves_the_disk_untouched() {
    let Some(tpm) = tpm() else { return };
    let Some(f) = fixture(&tpm) else { return };
    let c = &f.config;
    let UnlockOutcome::Formatted { recovery_key, .. } = c.unlock(&TestPassphraseOpen).unwrap()
    else {
        panic!("first boot should format");
    };
    let sealed_pcr7 = read_pcrs(&c.tcti, &c.pcrs).unwrap()[&7];
    let disk_before = std::fs::read(&c.device).unwrap();
    let blob_before = std::fs::read(&c.sealed_key).unwrap();

    extend_pcr(&c.tcti, 7, b"Secure Boot db changed").unwrap();
    let now_pcr7 = read_pcrs(&c.tcti, &c.pcrs).unwrap()[&7];

    let outcome = c.unlock(&TestPassphraseOpen).unwrap();
    let UnlockOutcome::NeedsRecovery(RecoveryReason::PcrMismatch { changed_pcrs }) = &outcome
    else {
        panic!("expected NeedsRecovery(PcrMismatch), got {outcome:?}");
    };
    assert_eq!(changed_pcrs.len(), 1, "{changed_pcrs:?}");
    assert_eq!(changed_pcrs[0].index, 7);
    assert_eq!(changed_pcrs[0].expected_hex, hex(&sealed_pcr7));
    assert_eq!(changed_pcrs[0].actual_hex, hex(&now_pcr7));
    assert_eq!(
        std::fs::read(&c.device).unwrap(),
        disk_before,
        "disk changed"
    );
    assert_eq!(
        std::fs::read(&c.sealed_key).unwrap(),
        blob_before,
        "blob changed"
    );

    // A wrong recovery key changes nothing either.
    let err = c
        .recover(&generate_recovery_key().unwrap(), &TestPassphraseOpen)
        .unwrap_err();
    assert!(
        matches!(err, UnlockError::RecoveryKeyRejected { .. }),
        "{err:?}"
    );
    assert_eq!(
        std::fs::read(&c.device).unwrap(),
        disk_before,
        "disk changed"
    );

    // Recovery with the escrowed key re-seals to the new boot chain: TPM unlock works again.
    c.recover(&recovery_key, &TestPassphraseOpen).unwrap();
    let resealed = SealedSecret::read(&c.sealed_key).unwrap().unwrap();
    assert_eq!(resealed.expected_pcrs()[&7], now_pcr7);
    assert!(matches!(
        c.unlock(&TestPassphraseOpen).unwrap(),
        UnlockOutcome::Opened {
            new_recovery_key: None,
            ..
        }
    ));
    assert!(recovery_key_opens(&c.device, &recovery_key).unwrap());
}

#[test]
fn stolen_disk_with_another_tpm_stays_locked() {
    let Some(tpm) = tpm() else { return };
    let Some(f) = fixture(&tpm) else { return };
    let c = &f.config;
    assert!(matches!(
        c.unlock(&TestPassphraseOpen).unwrap(),
        UnlockOutcome::Formatted { .. }
    ));
    let disk_before = std::fs::read(&c.device).unwrap();

    let thief = start_tpm();
    let stolen = DataUnlock {
        tcti: thief.tcti(),
        ..c.clone()
    };
    let outcome = stolen.unlock(&TestPassphraseOpen).unwrap();
    assert!(
        matches!(
            &outcome,
            UnlockOutcome::NeedsRecovery(RecoveryReason::WrongTpm { .. })
        ),
        "{outcome:?}"
    );
    let UnlockOutcome::NeedsRecovery(reason) = outcome else {
        unreachable!()
    };
    assert!(reason.to_string().contains("another TPM"), "{reason}");
    assert_eq!(
        std::fs::read(&c.device).unwrap(),
        disk_before,
        "disk changed"
    );
}

#[test]
fn missing_or_damaged_sealed_key_needs_recovery() {
    let Some(tpm) = tpm() else { return };
    let Some(f) = fixture(&tpm) else { return };
    let c = &f.config;
    assert!(matches!(
        c.unlock(&TestPassphraseOpen).unwrap(),
        UnlockOutcome::Formatted { .. }
    ));
    let blob = std::fs::read(&c.sealed_key).unwrap();
    let disk_before = std::fs::read(&c.device).unwrap();

    std::fs::write(&c.sealed_key, &blob[..blob.len() - 3]).unwrap();
    let outcome = c.unlock(&TestPassphraseOpen).unwrap();
    assert!(
        matches!(&outcome, UnlockOutcome::NeedsRecovery(RecoveryReason::SealedKeyDamaged { detail }) if detail.contains("truncated")),
        "{outcome:?}"
    );

    std::fs::remove_file(&c.sealed_key).unwrap();
    let outcome = c.unlock(&TestPassphraseOpen).unwrap();
    assert!(
        matches!(
            &outcome,
            UnlockOutcome::NeedsRecovery(RecoveryReason::SealedKeyMissing { .. })
        ),
        "{outcome:?}"
    );
    assert_eq!(
        std::fs::read(&c.device).unwrap(),
        disk_before,
        "disk changed"
    );
}

#[test]
fn unreachable_tpm_is_an_error_not_a_recovery_case() {
    let Some(tpm) = tpm() else { return };
    let Some(f) = fixture(&tpm) else { return };
    let c = &f.config;
    assert!(matches!(
        c.unlock(&TestPassphraseOpen).unwrap(),
        UnlockOutcome::Formatted { .. }
    ));
    let disk_before = std::fs::read(&c.device).unwrap();
    drop(tpm);
    let err = c.unlock(&TestPassphraseOpen).unwrap_err();
    assert!(matches!(err, UnlockError::Tpm(_)), "{err:?}");
    assert_eq!(
        std::fs::read(&c.device).unwrap(),
        disk_before,
        "disk changed"
    );
}

#[test]
fn first_boot_refuses_a_device_with_a_file_system_before_sealing() {
    let Some(tpm) = tpm() else { return };
    let Some(f) = fixture(&tpm) else { return };
    if !require_tool("mkfs.ext4") {
        return;
    }
    let c = &f.config;
    let status = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&c.device)
        .status()
        .unwrap();
    assert!(status.success());
    let disk_before = std::fs::read(&c.device).unwrap();
    let err = c.unlock(&TestPassphraseOpen).unwrap_err();
    assert!(
        matches!(err, UnlockError::Luks(LuksError::NotBlank { .. })),
        "{err:?}"
    );
    assert!(!c.sealed_key.exists(), "nothing should have been sealed");
    assert_eq!(
        std::fs::read(&c.device).unwrap(),
        disk_before,
        "disk changed"
    );
}

#[test]
fn interrupted_first_boots_are_completed() {
    let Some(tpm) = tpm() else { return };
    let Some(f) = fixture(&tpm) else { return };
    let c = &f.config;
    // Cut off after writing the blob, before luksFormat: a stale blob next to a blank disk.
    std::fs::write(&c.sealed_key, b"stale").unwrap();
    let UnlockOutcome::Formatted { .. } = c.unlock(&TestPassphraseOpen).unwrap() else {
        panic!("should format");
    };

    // Cut off after luksFormat, before the recovery key was added: a new one is added and
    // returned for escrow.
    let status = Command::new("cryptsetup")
        .args(["luksKillSlot", "--batch-mode"])
        .arg(&c.device)
        .arg("1")
        .stdin(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let UnlockOutcome::Opened {
        new_recovery_key: Some(recovery_key),
        ..
    } = c.unlock(&TestPassphraseOpen).unwrap()
    else {
        panic!("should open and add a recovery key");
    };
    assert!(recovery_key_opens(&c.device, &recovery_key).unwrap());
}

/// An opener that reports the data partition as already open (agent restarted after unlocking).
struct AlreadyOpen;

impl OpenLuks for AlreadyOpen {
    fn open(&self, _: &Path, _: &DiskKey, _: &str) -> Result<PathBuf, LuksError> {
        panic!("must not open again");
    }

    fn already_open(&self, _: &Path, name: &str) -> Result<Option<PathBuf>, LuksError> {
        Ok(Some(Path::new("/dev/mapper").join(name)))
    }
}

#[test]
fn an_already_open_partition_is_not_unsealed_again() {
    let Some(tpm) = tpm() else { return };
    let Some(f) = fixture(&tpm) else { return };
    let c = &f.config;
    assert!(matches!(
        c.unlock(&TestPassphraseOpen).unwrap(),
        UnlockOutcome::Formatted { .. }
    ));
    // After unlocking, PCR 7 changes (e.g. a measurement that closes the sealed key for the rest
    // of the boot); an agent restart must still find its data open, not demand recovery.
    extend_pcr(&c.tcti, 7, b"closed for this boot").unwrap();
    match c.unlock(&AlreadyOpen).unwrap() {
        UnlockOutcome::Opened {
            opened,
            new_recovery_key: None,
        } => assert_eq!(opened, Path::new("/dev/mapper/cairn-data")),
        other => panic!("expected Opened, got {other:?}"),
    }
}
