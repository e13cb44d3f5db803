//! Clearing the TPM's owner hierarchy (TPM2_Clear), the TPM half of a crypto-erase.
//!
//! TPM2_Clear replaces the storage primary seed, so no blob wrapped under the owner hierarchy
//! (the device key, the attestation key, sealed disk keys, and every copy of them) can be loaded
//! again by this or any TPM. The endorsement seed is kept: the EK, and so the hash that names the
//! TPM at enrollment ([`crate::ek_public_sha256`]), does not change.

use tss_esapi::constants::response_code::Tss2ResponseCodeKind;
use tss_esapi::handles::AuthHandle;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::Context;

use crate::tcti::TpmAccess;
use crate::TpmError;

/// Clear the owner hierarchy (TPM2_Clear, authorized by the lockout hierarchy with an empty
/// password, as on a freshly provisioned TPM): every owner-hierarchy blob becomes unloadable for
/// good, the EK stays.
///
/// Through a [`crate::TpmDeviceKey`]'s connection, that key is unloaded by the clear: it cannot
/// sign afterwards and is only good for dropping.
///
/// # Errors
/// [`TpmError::BadTcti`] / [`TpmError::OpenTcti`] when the TPM cannot be reached,
/// [`TpmError::ClearRefused`] when the lockout authorization is set, the TPM is in
/// dictionary-attack lockout or clearing is disabled, [`TpmError::Clear`] for other failures.
pub fn clear_owner_hierarchy<'a>(access: impl Into<TpmAccess<'a>>) -> Result<(), TpmError> {
    access.into().run(clear_in)
}

fn clear_in(context: &mut Context) -> Result<(), TpmError> {
    let _span = tracing::info_span!("tpm.clear", hierarchy = "owner").entered();
    context
        .execute_with_session(Some(AuthSession::Password), |ctx| {
            ctx.clear(AuthHandle::Lockout)
        })
        .map_err(|source| {
            if is_refusal(&source) {
                TpmError::ClearRefused { source }
            } else {
                TpmError::Clear { source }
            }
        })?;
    tracing::warn!("TPM owner hierarchy cleared: every owner-hierarchy key blob is now unusable");
    Ok(())
}

/// Whether the TPM refused the clear by policy (authorization, lockout, ClearControl) rather than
/// failing to run it.
fn is_refusal(error: &tss_esapi::Error) -> bool {
    let tss_esapi::Error::Tss2Error(rc) = error else {
        return false;
    };
    matches!(
        rc.kind(),
        Some(
            Tss2ResponseCodeKind::AuthFail
                | Tss2ResponseCodeKind::BadAuth
                | Tss2ResponseCodeKind::Lockout
                | Tss2ResponseCodeKind::Disabled
        )
    )
}
