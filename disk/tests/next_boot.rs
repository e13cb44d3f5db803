//! Host integration tests of OS updates and the sealed disk key: a real swtpm and the real
//! cryptsetup on a sparse file. A boot of slot X is modelled as a TPM restart (PCRs reset) and
//! PCR 11 extended with "UKI X", as systemd-stub would measure that slot's UKI.

use std::collections::BTreeMap;

use cairn_disk::{
    DataUnlock, RecoveryKey, RecoveryReason, SealedKeyFile, UnlockError, UnlockOutcome,
};
use cairn_testsupport::Swtpm;
use cairn_tpm::{extend_pcr, extended_value, SealedSecret};

mod common;

use common::{fixture, mode, restart_tpm, tpm, TestPassphraseOpen};

const UKI_A: &[u8] = b"UKI A";
const UKI_B: &[u8] = b"UKI B";

/// A device: its TPM, its unlock configuration and the directory holding disk and sealed keys.
struct Device {
    tpm: Option<Swtpm>,
    flow: DataUnlock,
    recovery_key: RecoveryKey,
    _dir: tempfile::TempDir,
}

impl Device {
    /// First boot of slot A: formats, seals to PCR 7 and PCR 11 = "UKI A". `None`: skipped.
    fn first_boot() -> Option<Device> {
        let tpm = tpm()?;
        let f = fixture(&tpm)?;
        extend_pcr(&tpm.tcti(), 11, UKI_A).unwrap();
        let outcome = f.config.unlock(&TestPassphraseOpen).unwrap();
        let UnlockOutcome::Formatted { recovery_key, .. } = outcome else {
            panic!("the first boot should format, got {outcome:?}");
        };
        Some(Device {
            tpm: Some(tpm),
            flow: f.config,
            recovery_key,
            _dir: f.dir,
        })
    }

    /// Reboot into the slot whose UKI measures as `uki`, with PCR 7 extended by `pcr7` (a
    /// Secure Boot change) when given.
    fn reboot(&mut self, uki: &[u8], pcr7: Option<&[u8]>) {
        let tpm = restart_tpm(self.tpm.take().unwrap());
        self.flow.tcti = tpm.tcti();
        if let Some(event) = pcr7 {
            extend_pcr(&self.flow.tcti, 7, event).unwrap();
        }
        extend_pcr(&self.flow.tcti, 11, uki).unwrap();
        self.tpm = Some(tpm);
    }

    /// The sealed-key files present, by role.
    fn copies(&self) -> BTreeMap<String, Vec<u8>> {
        SealedKeyFile::UNLOCK_ORDER
            .iter()
            .filter_map(|&which| {
                let bytes = std::fs::read(self.flow.sealed_key_path(which)).ok()?;
                Some((which.to_string(), bytes))
            })
            .collect()
    }

    /// Seal for the next boot into slot B; returns the current copy and the new `.next` copy.
    fn stage_update_to_b(&self) -> (Vec<u8>, Vec<u8>) {
        let current = std::fs::read(&self.flow.sealed_key).unwrap();
        self.flow
            .seal_for_next_boot(&[(11, pcr11_of(UKI_B))])
            .unwrap();
        let next = std::fs::read(self.flow.sealed_key_path(SealedKeyFile::Next)).unwrap();
        (current, next)
    }

    /// The files as a power cut after the first rename of a promotion leaves them: `a` as
    /// `.prev`, `b` as `.next`, no current copy.
    fn cut_in_promotion(&self, a: &[u8], b: &[u8]) {
        let _ = std::fs::remove_file(&self.flow.sealed_key);
        std::fs::write(self.flow.sealed_key_path(SealedKeyFile::Previous), a).unwrap();
        std::fs::write(self.flow.sealed_key_path(SealedKeyFile::Next), b).unwrap();
    }

    /// Reboot into the slot whose UKI measures as `uki`: it must unlock and leave exactly the
    /// `expected` sealed copies.
    fn boot_and_unlock(&mut self, uki: &[u8], expected: &[(&str, &[u8])]) {
        self.reboot(uki, None);
        self.assert_opens();
        assert_eq!(self.copies(), with(expected));
    }

    fn disk(&self) -> Vec<u8> {
        std::fs::read(&self.flow.device).unwrap()
    }

    fn assert_opens(&self) {
        let outcome = self.flow.unlock(&TestPassphraseOpen).unwrap();
        assert!(
            matches!(
                outcome,
                UnlockOutcome::Opened {
                    new_recovery_key: None,
                    ..
                }
            ),
            "{outcome:?}"
        );
    }

    /// Unlock must need recovery because of a PCR mismatch; returns the changed PCR indices.
    fn assert_pcr_mismatch(&self) -> Vec<u8> {
        match self.flow.unlock(&TestPassphraseOpen).unwrap() {
            UnlockOutcome::NeedsRecovery(RecoveryReason::PcrMismatch { changed_pcrs }) => {
                changed_pcrs.iter().map(|c| c.index).collect()
            }
            other => panic!("expected NeedsRecovery(PcrMismatch), got {other:?}"),
        }
    }
}

/// PCR 11 after a reboot into the slot whose UKI measures as `uki`.
fn pcr11_of(uki: &[u8]) -> [u8; 32] {
    extended_value(
        &[0; 32],
        ring::digest::digest(&ring::digest::SHA256, uki).as_ref(),
    )
}

fn with(entries: &[(&str, &[u8])]) -> BTreeMap<String, Vec<u8>> {
    entries
        .iter()
        .map(|(name, bytes)| (name.to_string(), bytes.to_vec()))
        .collect()
}

#[test]
fn an_update_unlocks_with_the_next_copy_which_then_becomes_current() {
    let Some(mut d) = Device::first_boot() else {
        return;
    };
    let disk = d.disk();

    let (a, b) = d.stage_update_to_b();
    assert_eq!(mode(&d.flow.sealed_key_path(SealedKeyFile::Next)), 0o600);
    let sealed = SealedSecret::from_bytes(&b).unwrap();
    assert_eq!(sealed.expected_pcrs()[&11], pcr11_of(UKI_B));
    let current = SealedSecret::from_bytes(&a).unwrap();
    assert_eq!(sealed.expected_pcrs()[&7], current.expected_pcrs()[&7]);
    assert_eq!(d.copies(), with(&[("current", &a), ("next", &b)]));

    d.boot_and_unlock(UKI_B, &[("current", &b), ("previous", &a)]);
    assert_eq!(d.disk(), disk, "the LUKS device was written to");

    // The update is marked good: the old slot's copy goes, booting back needs recovery.
    assert!(d.flow.forget_previous_boot_chain().unwrap());
    assert!(!d.flow.forget_previous_boot_chain().unwrap());
    assert_eq!(d.copies(), with(&[("current", &b)]));
    d.reboot(UKI_B, None);
    d.assert_opens();
    d.reboot(UKI_A, None);
    assert_eq!(d.assert_pcr_mismatch(), vec![11]);
}

#[test]
fn a_rollback_before_the_update_is_marked_good_unlocks_with_the_previous_copy() {
    let Some(mut d) = Device::first_boot() else {
        return;
    };
    let (a, b) = d.stage_update_to_b();
    d.reboot(UKI_B, None);
    d.assert_opens();

    // Health checks fail, the boot counter runs out: the old slot boots again.
    d.boot_and_unlock(UKI_A, &[("current", &a), ("next", &b)]);
    // Booting the failed slot again (chosen by hand) still unlocks.
    d.boot_and_unlock(UKI_B, &[("current", &b), ("previous", &a)]);
}

#[test]
fn a_power_cut_before_the_reboot_into_the_update_keeps_the_current_copy_working() {
    let Some(mut d) = Device::first_boot() else {
        return;
    };
    let (a, b) = d.stage_update_to_b();

    // Power cut: the old chain boots; the staged copy stays for the update.
    d.boot_and_unlock(UKI_A, &[("current", &a), ("next", &b)]);
    d.boot_and_unlock(UKI_B, &[("current", &b), ("previous", &a)]);
}

#[test]
fn a_power_cut_in_the_middle_of_a_promotion_still_unlocks_either_slot() {
    let Some(mut d) = Device::first_boot() else {
        return;
    };
    let (a, b) = d.stage_update_to_b();
    d.cut_in_promotion(&a, &b);
    d.boot_and_unlock(UKI_B, &[("current", &b), ("previous", &a)]);

    // The same cut, but the old slot boots.
    d.cut_in_promotion(&a, &b);
    d.boot_and_unlock(UKI_A, &[("current", &a), ("next", &b)]);
}

#[test]
fn a_wrong_prediction_needs_recovery_in_the_new_slot_and_leaves_the_old_copy_working() {
    let Some(mut d) = Device::first_boot() else {
        return;
    };
    d.flow
        .seal_for_next_boot(&[(11, pcr11_of(b"UKI B as predicted"))])
        .unwrap();
    let copies = d.copies();
    let disk = d.disk();

    d.reboot(UKI_B, None);
    // The reason is the current copy's: PCR 11 sealed to slot A's UKI.
    assert_eq!(d.assert_pcr_mismatch(), vec![11]);
    assert_eq!(d.copies(), copies, "a sealed copy changed");
    assert_eq!(d.disk(), disk, "the LUKS device was written to");

    // The boot counter falls back to the old slot: it unlocks as before.
    d.reboot(UKI_A, None);
    d.assert_opens();
    assert_eq!(d.copies(), copies);
}

#[test]
fn an_unexpected_boot_chain_change_still_needs_recovery_naming_the_pcr() {
    let Some(mut d) = Device::first_boot() else {
        return;
    };
    d.flow.seal_for_next_boot(&[(11, pcr11_of(UKI_B))]).unwrap();
    let copies = d.copies();
    let disk = d.disk();

    // The predicted UKI, but Secure Boot changed (PCR 7): no copy unlocks.
    d.reboot(UKI_B, Some(b"Secure Boot db changed"));
    let changed = d.assert_pcr_mismatch();
    assert!(changed.contains(&7), "{changed:?}");
    // The old slot with the changed Secure Boot state: only PCR 7 is named.
    d.reboot(UKI_A, Some(b"Secure Boot db changed"));
    assert_eq!(d.assert_pcr_mismatch(), vec![7]);
    assert_eq!(d.copies(), copies, "a sealed copy changed");
    assert_eq!(d.disk(), disk, "the LUKS device was written to");
}

#[test]
fn sealing_for_the_next_boot_needs_a_current_key_that_works_now() {
    let Some(mut d) = Device::first_boot() else {
        return;
    };
    let next_path = d.flow.sealed_key_path(SealedKeyFile::Next);

    for bad in [vec![(12, [0; 32])], vec![(11, [1; 32]), (11, [2; 32])]] {
        let err = d.flow.seal_for_next_boot(&bad).unwrap_err();
        assert!(matches!(err, UnlockError::BadPrediction { .. }), "{err:?}");
    }

    // systemd-pcrphase measured `sysinit` after the unlock: the key is closed for this boot.
    extend_pcr(&d.flow.tcti, 11, b"sysinit").unwrap();
    let err = d.flow.seal_for_next_boot(&[(11, [1; 32])]).unwrap_err();
    let UnlockError::CurrentKeyUnusable {
        reason: RecoveryReason::PcrMismatch { .. },
        boot_phases: Some(phases),
        ..
    } = &err
    else {
        panic!("expected CurrentKeyUnusable with boot phases, got {err:?}");
    };
    assert_eq!(phases, &["sysinit"]);
    assert!(err.to_string().contains("systemd-pcrphase"), "{err}");

    // Any other change since the unlock.
    d.reboot(UKI_A, Some(b"Secure Boot db changed"));
    let err = d.flow.seal_for_next_boot(&[(11, [1; 32])]).unwrap_err();
    assert!(
        matches!(
            &err,
            UnlockError::CurrentKeyUnusable {
                boot_phases: None,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("recovery key"), "{err}");
    assert!(!next_path.exists(), "nothing may be written");

    // No current copy at all.
    d.reboot(UKI_A, None);
    std::fs::remove_file(&d.flow.sealed_key).unwrap();
    let err = d.flow.seal_for_next_boot(&[(11, [1; 32])]).unwrap_err();
    assert!(
        matches!(
            &err,
            UnlockError::CurrentKeyUnusable {
                reason: RecoveryReason::SealedKeyMissing { .. },
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!next_path.exists(), "nothing may be written");
}

#[test]
fn sealing_for_the_next_boot_refuses_an_unformatted_device() {
    let Some(tpm) = tpm() else { return };
    let Some(f) = fixture(&tpm) else { return };
    let err = f.config.seal_for_next_boot(&[(11, [1; 32])]).unwrap_err();
    assert!(matches!(err, UnlockError::NotFormatted { .. }), "{err:?}");
    assert!(!f.config.sealed_key.exists());
}

#[test]
fn recovery_drops_the_copies_of_the_replaced_disk_key() {
    let Some(mut d) = Device::first_boot() else {
        return;
    };
    d.flow.seal_for_next_boot(&[(11, pcr11_of(UKI_B))]).unwrap();
    d.reboot(UKI_B, None);
    d.assert_opens();
    d.flow
        .seal_for_next_boot(&[(11, pcr11_of(b"UKI C"))])
        .unwrap();
    assert_eq!(d.copies().len(), 3, "current, next and previous");

    d.reboot(UKI_B, Some(b"Secure Boot db changed"));
    d.assert_pcr_mismatch();
    d.flow
        .recover(&d.recovery_key, &TestPassphraseOpen)
        .unwrap();
    // `.next` and `.prev` sealed the old disk key, which keyslot 0 no longer holds.
    assert_eq!(d.copies().into_keys().collect::<Vec<_>>(), ["current"]);
    d.reboot(UKI_B, Some(b"Secure Boot db changed"));
    d.assert_opens();
}
