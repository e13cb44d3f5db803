//! Keeping the data partition unlocking across a signed OS update: before rebooting into the new
//! slot, seal the same disk key to the new slot's predicted PCR values (`<sealed_key>.next`);
//! after the new slot is marked good, forget the old slot's copy (`<sealed_key>.prev`).
//! [`crate::SealedKeyFile`] documents the files and the power-cut-safe rule.
//!
//! Typical use by the agent, after installing the update's UKI into the other slot:
//!
//! ```ignore
//! let pcr11 = cairn_pe::predict_uki_pcr11(&std::fs::read(new_uki)?)?;
//! flow.seal_for_next_boot(&[(cairn_pe::UKI_PCR, pcr11)])?; // PCR 7 stays as sealed now
//! // reboot into the new slot; after its health checks pass:
//! flow.forget_previous_boot_chain()?;
//! ```
//!
//! # PCR 11 at runtime (systemd 252)
//!
//! Re-sealing needs the disk key, so the current copy must unseal *now*. The unlock runs before
//! `sysinit.target`; afterwards Debian's `systemd-pcrphase-sysinit.service` and
//! `systemd-pcrphase.service` extend PCR 11 with `sysinit` and `ready` (whenever systemd-stub
//! measured the UKI), which closes the sealed key for the rest of the boot. On such a system
//! [`DataUnlock::seal_for_next_boot`] fails with [`UnlockError::CurrentKeyUnusable`] naming those
//! phases; the image must mask those units (or the re-seal must run before `sysinit.target`).

use std::path::PathBuf;

use cairn_pe::{pcr11_after_phases, BOOT_PHASES, UKI_PCR};
use cairn_tpm::{seal_secret_to, PcrChange, PcrValues, SealedSecret, TpmError};

use crate::luks;
use crate::sealed_keys::{self, SealedKeyFile};
use crate::unlock::{DataUnlock, RecoveryReason, UnlockError};

impl DataUnlock {
    /// The path of one sealed copy of the disk key (`<sealed_key>`, `.next` or `.prev`).
    pub fn sealed_key_path(&self, which: SealedKeyFile) -> PathBuf {
        which.path(&self.sealed_key)
    }

    /// Seal the disk key to the boot chain of the next boot and write it to `<sealed_key>.next`
    /// (atomically, 0600), so that an OS update in the other slot unlocks without the recovery
    /// key.
    ///
    /// `predicted` gives the values the changing PCRs will hold when the next boot unlocks (e.g.
    /// PCR 11 from `cairn_pe::predict_uki_pcr11` of the new UKI); every other PCR of the policy
    /// keeps the value the current copy is sealed to (PCR 7 stays: same Secure Boot db
    /// certificate). First the current copy must unseal with the current PCRs and its key must
    /// open the LUKS device (checked without device-mapper, nothing is written to the device),
    /// so a copy is never made of a key that does not work. The current copy is not touched: if
    /// the prediction is wrong, or the next boot is the old chain, it keeps unlocking.
    ///
    /// # Errors
    /// - [`UnlockError::BadPrediction`]: a PCR outside the policy, given twice, or a policy PCR
    ///   with neither a prediction nor a value in the current copy.
    /// - [`UnlockError::NotFormatted`]: the device is not LUKS yet.
    /// - [`UnlockError::CurrentKeyUnusable`]: the current copy is missing, damaged, refused by
    ///   the TPM (PCRs changed since the unlock, other TPM) or its key does not open the device.
    /// - [`UnlockError::Tpm`] (TPM unreachable, sealing or writing `.next` failed),
    ///   [`UnlockError::Luks`].
    pub fn seal_for_next_boot(&self, predicted: &[(u8, [u8; 32])]) -> Result<(), UnlockError> {
        let predicted_pcrs: Vec<String> = predicted.iter().map(|(i, _)| i.to_string()).collect();
        let _span = tracing::info_span!(
            "disk.seal_for_next_boot",
            device = %self.device.display(),
            pcrs = %self.pcrs,
            predicted = %predicted_pcrs.join(","),
        )
        .entered();
        let predicted = self.check_prediction(predicted)?;
        if !luks::is_luks(&self.device)? {
            return Err(UnlockError::NotFormatted {
                device: self.device.clone(),
            });
        }
        let current_path = self.sealed_key_path(SealedKeyFile::Current);
        let unusable = |reason: RecoveryReason, boot_phases| UnlockError::CurrentKeyUnusable {
            path: current_path.clone(),
            reason,
            boot_phases,
        };
        let current = match SealedSecret::read(&current_path) {
            Ok(Some(current)) => current,
            Ok(None) => {
                return Err(unusable(
                    RecoveryReason::SealedKeyMissing {
                        path: current_path.clone(),
                    },
                    None,
                ))
            }
            Err(e @ TpmError::BadSealedBlob { .. }) => {
                return Err(unusable(
                    RecoveryReason::SealedKeyDamaged {
                        detail: e.to_string(),
                    },
                    None,
                ))
            }
            Err(e) => return Err(e.into()),
        };
        let key = match self.unseal_disk_key(&current_path)? {
            Ok(key) => key,
            Err(reason) => {
                let phases = match &reason {
                    RecoveryReason::PcrMismatch { changed_pcrs } => {
                        closed_by_boot_phases(current.expected_pcrs(), changed_pcrs)
                    }
                    _ => None,
                };
                return Err(unusable(reason, phases));
            }
        };
        if !luks::disk_key_opens(&self.device, &key)? {
            return Err(unusable(RecoveryReason::KeyRejected, None));
        }
        let expected = self.next_boot_values(&predicted, current.expected_pcrs())?;
        let next = seal_secret_to(&self.tcti, key.as_bytes(), &expected)?;
        let next_path = self.sealed_key_path(SealedKeyFile::Next);
        next.write_atomic(&next_path)?;
        let values: Vec<String> = expected
            .iter()
            .map(|(index, value)| format!("{index}={}", hex(value)))
            .collect();
        tracing::info!(path = %next_path.display(), pcrs = %values.join(" "), "disk key sealed for the next boot");
        Ok(())
    }

    /// The booted slot is good (the update is committed): remove `<sealed_key>.prev`, the copy
    /// sealed to the slot booted before, so that booting back into it needs the recovery key
    /// (no silent downgrade). Returns whether a copy was removed. `.next` is left alone: it is
    /// replaced by the next [`DataUnlock::seal_for_next_boot`].
    ///
    /// # Errors
    /// [`UnlockError::SealedKeyFileIo`] when the file cannot be removed.
    pub fn forget_previous_boot_chain(&self) -> Result<bool, UnlockError> {
        let _span = tracing::info_span!("disk.forget_previous_boot_chain").entered();
        let removed = sealed_keys::remove(&self.sealed_key, &[SealedKeyFile::Previous]).map_err(
            |source| UnlockError::SealedKeyFileIo {
                action: "remove",
                path: self.sealed_key_path(SealedKeyFile::Previous),
                source,
            },
        )?;
        for path in &removed {
            tracing::info!(path = %path.display(), "the previous boot chain no longer unlocks the data partition");
        }
        Ok(!removed.is_empty())
    }

    /// `predicted` as a map, each PCR once and in the policy.
    fn check_prediction(&self, predicted: &[(u8, [u8; 32])]) -> Result<PcrValues, UnlockError> {
        let bad = |reason: String| UnlockError::BadPrediction {
            reason,
            pcrs: self.pcrs.to_string(),
        };
        let mut values = PcrValues::new();
        for &(index, value) in predicted {
            if !self.pcrs.contains(index) {
                return Err(bad(format!("PCR {index} is not in the sealing policy")));
            }
            if values.insert(index, value).is_some() {
                return Err(bad(format!("PCR {index} is given twice")));
            }
        }
        Ok(values)
    }

    /// The values to seal to: the prediction, else the value sealed in the current copy.
    fn next_boot_values(
        &self,
        predicted: &PcrValues,
        current: &PcrValues,
    ) -> Result<PcrValues, UnlockError> {
        self.pcrs
            .indices()
            .map(|index| {
                let value = predicted.get(&index).or_else(|| current.get(&index));
                value
                    .map(|v| (index, *v))
                    .ok_or_else(|| UnlockError::BadPrediction {
                        reason: format!(
                            "PCR {index} has no predicted value and the current sealed key is not \
                         sealed to it"
                        ),
                        pcrs: self.pcrs.to_string(),
                    })
            })
            .collect()
    }
}

/// When PCR 11 is the only changed PCR and its value is the sealed one extended by consecutive
/// `systemd-pcrphase` boot phases: those phases.
fn closed_by_boot_phases(sealed: &PcrValues, changed: &[PcrChange]) -> Option<Vec<String>> {
    let [change] = changed else { return None };
    let sealed_value = sealed.get(&UKI_PCR).filter(|_| change.index == UKI_PCR)?;
    (0..BOOT_PHASES.len())
        .flat_map(|start| (start + 1..=BOOT_PHASES.len()).map(move |end| &BOOT_PHASES[start..end]))
        .find(|phases| hex(&pcr11_after_phases(sealed_value, phases)) == change.actual_hex)
        .map(|phases| phases.iter().map(ToString::to_string).collect())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(index: u8, expected: &[u8; 32], actual: &[u8; 32]) -> PcrChange {
        PcrChange {
            index,
            expected_hex: hex(expected),
            actual_hex: hex(actual),
        }
    }

    #[test]
    fn recognises_a_key_closed_by_systemd_pcrphase() {
        let sealed = PcrValues::from([(7, [7; 32]), (11, [11; 32])]);
        let after = pcr11_after_phases(&[11; 32], &["sysinit", "ready"]);
        let phases = closed_by_boot_phases(&sealed, &[change(11, &[11; 32], &after)]);
        assert_eq!(
            phases,
            Some(vec!["sysinit".to_string(), "ready".to_string()])
        );
        let err = UnlockError::CurrentKeyUnusable {
            path: "/efi/k".into(),
            reason: RecoveryReason::KeyRejected,
            boot_phases: phases,
        };
        assert!(err.to_string().contains("mask systemd-pcrphase"), "{err}");

        // Another UKI, or PCR 7 changing too: not the boot phases.
        let other = [0x42; 32];
        assert_eq!(
            closed_by_boot_phases(&sealed, &[change(11, &[11; 32], &other)]),
            None
        );
        let both = [change(7, &[7; 32], &other), change(11, &[11; 32], &after)];
        assert_eq!(closed_by_boot_phases(&sealed, &both), None);
    }
}
