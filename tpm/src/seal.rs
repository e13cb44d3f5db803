//! Sealing a small secret (the data-disk key) to PCR values of the boot chain, and unsealing it.
//!
//! # Recipe (proven on swtpm, see FINDINGS.md)
//!
//! - Seal: read the selected SHA-256 PCRs; a trial session runs `PolicyPCR(selection, digest of
//!   those values)` and gives the policy digest; a KeyedHash sealed data object with that
//!   `authPolicy`, `userWithAuth` clear (only the policy can release it), fixedTPM + fixedParent,
//!   is created under the owner storage primary (the same primary as the device key,
//!   [`crate::TpmDeviceKey`]). The result is a [`SealedSecret`]: the recorded PCR values, the
//!   public area and the TPM-encrypted private area.
//! - Unseal: load under the primary (another TPM, or this TPM after a clear, refuses:
//!   [`UnsealError::WrongTpm`]); a policy session runs `PolicyPCR` over the *current* values;
//!   `Unseal` succeeds only when they equal the recorded ones. On a policy failure the current
//!   values are read and compared, and [`UnsealError::PcrMismatch`] names each changed PCR with
//!   the sealed and the current value.
//! - Bus protection: the create command's secret and the unseal response travel encrypted
//!   (sessions salted with the storage primary, parameter encryption), so a sniffer on the TPM bus
//!   of a discrete TPM sees no key.
//!
//! # Signed OS updates
//!
//! A plain PCR policy breaks on every OS update: the new slot's UKI measures to a new PCR 11.
//! Two ways keep the disk unlocking without manual steps:
//!
//! 1. Re-seal before reboot (implemented: `cairn_disk::DataUnlock::seal_for_next_boot`, with PCR
//!    11 predicted from the new UKI by `cairn_pe::predict_uki_pcr11`): the disk key is sealed a
//!    second time to the new slot's predicted PCR values ([`seal_secret_to`] takes explicit
//!    expected values for that), keeping both blobs until the new slot is marked good. Simple,
//!    but the running system must still be able to unseal the current blob (systemd-pcrphase
//!    closes it after `sysinit.target`) and a failed prediction means recovery in the new slot
//!    (the old slot keeps unlocking).
//! 2. `PolicyAuthorize` (the intended design, like systemd's signed PCR policies): the sealed
//!    object's policy becomes `PolicyAuthorize(fleet PCR-policy public key)` (plus PolicyPCR 7 for
//!    Secure Boot state), sealed once. Each signed update carries, next to the RAUC bundle, a
//!    signature by the fleet key over the PolicyPCR digest of the new slot's predicted PCR 11
//!    values (computed at image build time: the UKI sections are known there). To unseal, the
//!    agent runs `PolicyPCR` on the current values, asks the TPM to verify the fleet signature
//!    over that digest (`VerifySignature` -> ticket), then `PolicyAuthorize` with the ticket. Any
//!    boot chain the fleet key signed unlocks; nothing on the device has to predict PCRs and no
//!    re-seal is needed on update. Revocation of old signed policies needs a policy counter
//!    (`PolicyNV` on a monotonic NV index) bumped when a slot is retired.
//!
//! The blob format is versioned (`CAIRNSEALED1`); the authorized policy would be a new version.

use tss_esapi::attributes::{ObjectAttributes, SessionAttributesBuilder};
use tss_esapi::constants::response_code::{Tss2ResponseCode, Tss2ResponseCodeKind};
use tss_esapi::constants::SessionType;
use tss_esapi::handles::{KeyHandle, ObjectHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    Digest, KeyedHashScheme, Public, PublicBuilder, PublicKeyedHashParameters, SensitiveData,
    SymmetricDefinition,
};
use tss_esapi::Context;
use zeroize::Zeroizing;

use crate::owner_key::{create_owner_primary, flush, flush_session};
use crate::pcr::{pcr_values_digest, policy_pcr_digest, read_pcrs_with, PcrSelection, PcrValues};
use crate::sealed_blob::{check_sealed_public, SealedSecret};
use crate::tcti::open_context;
use crate::TpmError;

/// Largest secret the TPM seals (`MAX_SYM_DATA`).
pub const MAX_SECRET_LEN: usize = 128;

/// A PCR whose current value differs from the value a secret was sealed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrChange {
    /// PCR index (SHA-256 bank).
    pub index: u8,
    /// The value at sealing time, lower-case hex.
    pub expected_hex: String,
    /// The value now, lower-case hex.
    pub actual_hex: String,
}

impl std::fmt::Display for PcrChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PCR {} sealed to {} is now {}",
            self.index, self.expected_hex, self.actual_hex
        )
    }
}

/// Why a sealed secret could not be unsealed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UnsealError {
    /// The boot chain changed: some sealed PCRs hold other values than at sealing time.
    #[error(
        "the TPM refused to unseal because the boot chain changed since sealing ({}); firmware, \
         Secure Boot keys, bootloader or kernel/UKI are not the ones the secret was sealed to, so \
         it stays locked; unlock with the recovery key (which re-seals to the current boot \
         chain) if the change is legitimate, otherwise treat the device as tampered with",
        changes_summary(changed)
    )]
    PcrMismatch {
        /// Each changed PCR with its sealed and current value, by index.
        changed: Vec<PcrChange>,
    },

    /// The TPM cannot load the sealed object: it belongs to another TPM.
    #[error(
        "this TPM cannot load the sealed blob ({source}): it was sealed by another TPM (the disk \
         was moved to another device), this TPM was cleared since, or the blob was damaged; this \
         TPM can never unseal it: use the recovery key"
    )]
    WrongTpm {
        /// The TPM's refusal.
        #[source]
        source: tss_esapi::Error,
    },

    /// The policy check failed although the sealed PCRs hold the recorded values.
    #[error(
        "the TPM refused the PCR policy ({source}) although the sealed PCRs hold the recorded \
         values; the blob or TPM state is inconsistent: retry once after a reboot, then use the \
         recovery key"
    )]
    PolicyRefused {
        /// The TPM's refusal.
        #[source]
        source: tss_esapi::Error,
    },

    /// Any other TPM failure (TPM unreachable, primary key, unexpected answers).
    #[error(transparent)]
    Tpm(#[from] TpmError),
}

fn changes_summary(changed: &[PcrChange]) -> String {
    let parts: Vec<String> = changed.iter().map(ToString::to_string).collect();
    parts.join("; ")
}

/// Seal `secret` (1..=128 bytes) to the current values of the `pcrs` (SHA-256 bank).
///
/// The secret is never logged and travels to the TPM encrypted. The returned blob holds nothing
/// secret in clear; store it anywhere (e.g. [`SealedSecret::write_atomic`]).
///
/// # Errors
/// [`TpmError::BadSecret`] for an empty or too long secret, [`TpmError::BadTcti`] /
/// [`TpmError::OpenTcti`], [`TpmError::ReadPcrs`], [`TpmError::CreatePrimary`],
/// [`TpmError::Seal`], [`TpmError::UnexpectedTpmOutput`].
pub fn seal_secret(
    tcti: &str,
    secret: &[u8],
    pcrs: &PcrSelection,
) -> Result<SealedSecret, TpmError> {
    check_secret(secret)?;
    let mut context = open_context(tcti)?;
    let expected = read_pcrs_with(&mut context, pcrs)?;
    seal_with(&mut context, secret, expected)
}

/// Seal `secret` to given PCR values instead of the current ones, e.g. the predicted values of an
/// OS update's boot chain (see the module docs). The PCRs sealed to are the keys of `expected`.
///
/// # Errors
/// Like [`seal_secret`], and [`TpmError::BadPcrSelection`] for an empty map or a PCR index ≥ 24.
pub fn seal_secret_to(
    tcti: &str,
    secret: &[u8],
    expected: &PcrValues,
) -> Result<SealedSecret, TpmError> {
    check_secret(secret)?;
    PcrSelection::new(expected.keys().copied())?;
    let mut context = open_context(tcti)?;
    seal_with(&mut context, secret, expected.clone())
}

pub(crate) fn check_secret(secret: &[u8]) -> Result<(), TpmError> {
    if secret.is_empty() || secret.len() > MAX_SECRET_LEN {
        return Err(TpmError::BadSecret { len: secret.len() });
    }
    Ok(())
}

fn seal_with(
    context: &mut Context,
    secret: &[u8],
    expected: PcrValues,
) -> Result<SealedSecret, TpmError> {
    let selection = PcrSelection::new(expected.keys().copied())?;
    let _span = tracing::info_span!("tpm.seal", pcrs = %selection, len = secret.len()).entered();
    let err = |source| TpmError::Seal { source };
    let policy = trial_policy_digest(context, &selection, &expected)?;
    let template = sealed_object_template(policy).map_err(err)?;
    let sensitive = SensitiveData::try_from(secret.to_vec()).map_err(err)?;

    let primary = create_owner_primary(context)?;
    let created = (|| {
        let session = salted_session(context, primary, SessionType::Hmac)?;
        let result = context.execute_with_session(Some(session), |ctx| {
            ctx.create(primary, template, None, Some(sensitive), None, None)
        });
        flush_session(context, session);
        result
    })();
    flush(context, primary);
    let created = created.map_err(err)?;

    check_sealed_public(&created.out_public, &expected).map_err(|reason| {
        TpmError::UnexpectedTpmOutput {
            what: "the new sealed object",
            reason: reason.to_string(),
        }
    })?;
    tracing::info!("secret sealed to PCRs {selection}");
    Ok(SealedSecret {
        expected,
        public: created.out_public,
        private: created.out_private,
    })
}

/// The policy digest of PolicyPCR over `expected`, as a TPM trial session computes it, checked
/// against the software computation (the same check blob parsing makes later).
fn trial_policy_digest(
    context: &mut Context,
    selection: &PcrSelection,
    expected: &PcrValues,
) -> Result<Digest, TpmError> {
    let err = |source| TpmError::Seal { source };
    let session = context
        .start_auth_session(
            None,
            None,
            None,
            SessionType::Trial,
            SymmetricDefinition::AES_128_CFB,
            HashingAlgorithm::Sha256,
        )
        .map_err(err)?
        .ok_or_else(|| no_session("trial"))?;
    let digest = (|| {
        let policy = PolicySession::try_from(session)?;
        let pcr_digest = Digest::try_from(pcr_values_digest(expected).to_vec())?;
        context.policy_pcr(policy, pcr_digest, selection.to_tss()?)?;
        context.policy_get_digest(policy)
    })();
    flush_session(context, session);
    let digest = digest.map_err(err)?;
    if digest.value() != policy_pcr_digest(expected)? {
        return Err(TpmError::UnexpectedTpmOutput {
            what: "the PolicyPCR trial digest",
            reason: "differs from the digest computed in software".to_string(),
        });
    }
    Ok(digest)
}

/// Unseal `sealed` with the TPM behind `tcti`. The secret is returned in a buffer zeroed on drop
/// and is never logged.
///
/// # Errors
/// - [`UnsealError::PcrMismatch`]: the boot chain changed; names each changed PCR.
/// - [`UnsealError::WrongTpm`]: another TPM sealed it (stolen disk) or this TPM was cleared.
/// - [`UnsealError::PolicyRefused`]: policy failed although the PCRs match (should not happen).
/// - [`UnsealError::Tpm`]: TPM unreachable, primary key or other TPM failures.
pub fn unseal_secret(tcti: &str, sealed: &SealedSecret) -> Result<Zeroizing<Vec<u8>>, UnsealError> {
    let selection = sealed.pcrs();
    let _span = tracing::info_span!("tpm.unseal", pcrs = %selection).entered();
    let mut context = open_context(tcti)?;
    let primary = create_owner_primary(&mut context)?;
    let result = unseal_under(&mut context, primary, sealed, &selection);
    flush(&mut context, primary);
    match &result {
        Ok(_) => tracing::info!("secret unsealed"),
        Err(e) => tracing::warn!(error = %e, "unseal refused"),
    }
    result
}

fn unseal_under(
    context: &mut Context,
    primary: KeyHandle,
    sealed: &SealedSecret,
    selection: &PcrSelection,
) -> Result<Zeroizing<Vec<u8>>, UnsealError> {
    let object = context
        .execute_with_session(Some(AuthSession::Password), |ctx| {
            ctx.load(primary, sealed.private.clone(), sealed.public.clone())
        })
        .map_err(|source| match tpm_response_kind(&source) {
            // The TPM rejected the blob itself (integrity, binding, size, ...): not its own.
            Some(_) if is_format_one(&source) => UnsealError::WrongTpm { source },
            _ => UnsealError::Tpm(TpmError::Unseal { source }),
        })?;
    let result = unseal_loaded(context, primary, object, sealed, selection);
    flush(context, object);
    result
}

fn unseal_loaded(
    context: &mut Context,
    primary: KeyHandle,
    object: KeyHandle,
    sealed: &SealedSecret,
    selection: &PcrSelection,
) -> Result<Zeroizing<Vec<u8>>, UnsealError> {
    let tpm_err = |source| UnsealError::Tpm(TpmError::Unseal { source });
    // Any PCR extend between PolicyPCR and Unseal (TPM_RC_PCR_CHANGED) voids the session. Early in
    // boot that is common, not rare: with Secure Boot on, the kernel's IMA arch policy measures
    // every module udev loads into PCR 10. Retry with a short pause until the burst is over.
    for attempt in 0..PCR_CHANGED_ATTEMPTS {
        if attempt > 0 {
            std::thread::sleep(std::time::Duration::from_millis(
                50 * u64::from(attempt.min(10)),
            ));
        }
        let session = salted_session(context, primary, SessionType::Policy).map_err(tpm_err)?;
        let result = (|| {
            let policy = PolicySession::try_from(session)?;
            context.policy_pcr(policy, Digest::default(), selection.to_tss()?)?;
            context
                .execute_with_session(Some(session), |ctx| ctx.unseal(ObjectHandle::from(object)))
        })();
        flush_session(context, session);
        let source = match result {
            Ok(data) => return Ok(Zeroizing::new(data.value().to_vec())),
            Err(source) => source,
        };
        match tpm_response_kind(&source) {
            Some(Tss2ResponseCodeKind::PcrChanged) if attempt + 1 < PCR_CHANGED_ATTEMPTS => {
                tracing::debug!(attempt, "a PCR was extended during the unseal; retrying");
                continue;
            }
            Some(Tss2ResponseCodeKind::PolicyFail) => {
                let current = read_pcrs_with(context, selection)?;
                let changed = pcr_changes(&sealed.expected, &current);
                if changed.is_empty() {
                    return Err(UnsealError::PolicyRefused { source });
                }
                return Err(UnsealError::PcrMismatch { changed });
            }
            _ => return Err(tpm_err(source)),
        }
    }
    unreachable!("the last attempt always returns")
}

/// Unseal attempts when PCRs keep being extended meanwhile (about 20 s of pauses in all).
const PCR_CHANGED_ATTEMPTS: u32 = 48;

/// The PCRs of `expected` whose value in `current` differs (or is missing), by index.
pub(crate) fn pcr_changes(expected: &PcrValues, current: &PcrValues) -> Vec<PcrChange> {
    expected
        .iter()
        .filter_map(|(&index, value)| {
            let actual = current.get(&index);
            (actual != Some(value)).then(|| PcrChange {
                index,
                expected_hex: hex::encode(value),
                actual_hex: actual.map(hex::encode).unwrap_or_default(),
            })
        })
        .collect()
}

/// The public template of a sealed data object released only by `policy`.
pub(crate) fn sealed_object_template(policy: Digest) -> tss_esapi::Result<Public> {
    let attributes = ObjectAttributes::builder()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_user_with_auth(false)
        .with_admin_with_policy(true)
        .with_no_da(true)
        .build()?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::KeyedHash)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_auth_policy(policy)
        .with_keyed_hash_parameters(PublicKeyedHashParameters::new(KeyedHashScheme::Null))
        .with_keyed_hash_unique_identifier(Digest::default())
        .build()
}

/// A session salted with `primary` whose command's first parameter and response's first parameter
/// are encrypted (AES-128-CFB): the secret never crosses the TPM bus in clear.
pub(crate) fn salted_session(
    context: &mut Context,
    primary: KeyHandle,
    kind: SessionType,
) -> tss_esapi::Result<AuthSession> {
    let session = context
        .start_auth_session(
            Some(primary),
            None,
            None,
            kind,
            SymmetricDefinition::AES_128_CFB,
            HashingAlgorithm::Sha256,
        )?
        .ok_or(tss_esapi::Error::WrapperError(
            tss_esapi::WrapperErrorKind::WrongValueFromTpm,
        ))?;
    let (attributes, mask) = SessionAttributesBuilder::new()
        .with_continue_session(true)
        .with_decrypt(true)
        .with_encrypt(true)
        .build();
    if let Err(e) = context.tr_sess_set_attributes(session, attributes, mask) {
        flush_session(context, session);
        return Err(e);
    }
    Ok(session)
}

fn no_session(kind: &str) -> TpmError {
    TpmError::UnexpectedTpmOutput {
        what: "a session",
        reason: format!("the TPM returned no {kind} session handle"),
    }
}

/// The TPM response code kind of a TPM error, `None` for wrapper/TSS-layer errors.
pub(crate) fn tpm_response_kind(error: &tss_esapi::Error) -> Option<Tss2ResponseCodeKind> {
    match error {
        tss_esapi::Error::Tss2Error(rc) => rc.kind(),
        tss_esapi::Error::WrapperError(_) => None,
    }
}

pub(crate) fn is_format_one(error: &tss_esapi::Error) -> bool {
    matches!(
        error,
        tss_esapi::Error::Tss2Error(Tss2ResponseCode::FormatOne(_))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_exactly_the_changed_pcrs() {
        let expected = PcrValues::from([(7, [1; 32]), (11, [2; 32]), (14, [3; 32])]);
        let current = PcrValues::from([(7, [1; 32]), (11, [9; 32])]);
        let changes = pcr_changes(&expected, &current);
        assert_eq!(changes.len(), 2);
        assert_eq!(changes[0].index, 11);
        assert_eq!(changes[0].expected_hex, "02".repeat(32));
        assert_eq!(changes[0].actual_hex, "09".repeat(32));
        assert_eq!(changes[1].index, 14);
        assert_eq!(changes[1].actual_hex, "");
        let message = UnsealError::PcrMismatch { changed: changes }.to_string();
        assert!(message.contains("PCR 11 sealed to 0202"), "{message}");
        assert!(message.contains("recovery key"), "{message}");
        assert!(pcr_changes(&expected, &expected).is_empty());
    }

    #[test]
    fn refuses_empty_and_oversized_secrets() {
        assert!(matches!(
            check_secret(&[]),
            Err(TpmError::BadSecret { len: 0 })
        ));
        assert!(check_secret(&[0; MAX_SECRET_LEN]).is_ok());
        let err = check_secret(&[0; MAX_SECRET_LEN + 1]).unwrap_err();
        assert!(err.to_string().contains("129"), "{err}");
    }

    #[test]
    fn template_is_a_policy_only_sealed_object() {
        let public = sealed_object_template(Digest::try_from(vec![5; 32]).unwrap()).unwrap();
        let attributes = public.object_attributes();
        assert!(!attributes.user_with_auth());
        assert!(attributes.fixed_tpm() && attributes.fixed_parent());
        assert!(!attributes.sensitive_data_origin());
    }
}
