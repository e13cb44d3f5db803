//! Keys under the owner hierarchy's storage primary, kept on disk as TPM-wrapped blobs: the
//! primary's template, creating a key from a template and writing its blob, loading a blob, and
//! flushing objects and sessions again (swtpm, reached without a resource manager, holds only
//! three transient objects).
//!
//! The device key ([`crate::TpmDeviceKey`]), the attestation key ([`crate::AttestationKey`]) and
//! sealed secrets share this parent, so one owner seed backs every blob of a device.

use std::path::Path;

use tss_esapi::attributes::ObjectAttributes;
use tss_esapi::handles::{KeyHandle, ObjectHandle, SessionHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{
    EccParameter, EccPoint, EccScheme, Public, PublicBuilder, PublicEccParametersBuilder,
    SymmetricDefinitionObject,
};
use tss_esapi::Context;

use crate::blob::KeyBlob;
use crate::TpmError;
use cairn_attest::der::P256_COORDINATE_LEN;

/// A kind of key kept as a blob: how to make one and how to recognise one read from disk.
pub(crate) struct KeyKind {
    /// Names the key in messages and logs, e.g. `device signing key`.
    pub(crate) name: &'static str,
    /// The public template the key is created from.
    pub(crate) template: fn() -> tss_esapi::Result<Public>,
    /// Whether a public area (from disk or from the TPM) is this kind of key.
    pub(crate) check: fn(&Public) -> Result<(), KeyShapeError>,
}

/// Read the blob at `path` and check it holds a `kind` key, before touching the TPM: a damaged
/// file fails fast and clearly. `Ok(None)` when the file does not exist.
pub(crate) fn read_blob(kind: &KeyKind, path: &Path) -> Result<Option<KeyBlob>, TpmError> {
    let Some(blob) = KeyBlob::read(path)? else {
        return Ok(None);
    };
    (kind.check)(&blob.public).map_err(|reason| TpmError::BadBlob {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    })?;
    Ok(Some(blob))
}

/// Load `existing` under `primary`, or create a new `kind` key, write its blob to `blob_path`
/// and load it. An existing blob the TPM refuses is an error, never replaced.
pub(crate) fn load_or_create(
    context: &mut Context,
    primary: KeyHandle,
    kind: &KeyKind,
    existing: Option<KeyBlob>,
    blob_path: &Path,
) -> Result<(KeyHandle, KeyBlob), TpmError> {
    let blob = match existing {
        Some(blob) => {
            tracing::info!(key = kind.name, "loading the existing key blob");
            blob
        }
        None => {
            tracing::info!(
                key = kind.name,
                "no key blob yet: creating a new key in the TPM"
            );
            let blob = create_key(context, primary, kind)?;
            blob.write_atomic(blob_path)?;
            blob
        }
    };
    let key = load(context, primary, &blob, blob_path)?;
    Ok((key, blob))
}

/// Load `blob` (read from `blob_path`) under `primary`.
pub(crate) fn load(
    context: &mut Context,
    primary: KeyHandle,
    blob: &KeyBlob,
    blob_path: &Path,
) -> Result<KeyHandle, TpmError> {
    let _span = tracing::info_span!("tpm.load").entered();
    context
        .execute_with_session(Some(AuthSession::Password), |ctx| {
            ctx.load(primary, blob.private.clone(), blob.public.clone())
        })
        .map_err(|source| TpmError::LoadBlob {
            path: blob_path.to_path_buf(),
            source,
        })
}

/// Load `blob` (read from `blob_path`) under a freshly made owner primary, which is flushed again
/// before returning: afterwards the key alone occupies a TPM object slot.
pub(crate) fn load_under_owner_primary(
    context: &mut Context,
    blob: &KeyBlob,
    blob_path: &Path,
) -> Result<KeyHandle, TpmError> {
    let primary = create_owner_primary(context)?;
    let loaded = load(context, primary, blob, blob_path);
    flush(context, primary);
    loaded
}

/// Create a new `kind` key under `primary`; returns its public and wrapped private parts.
fn create_key(
    context: &mut Context,
    primary: KeyHandle,
    kind: &KeyKind,
) -> Result<KeyBlob, TpmError> {
    let _span = tracing::info_span!("tpm.create_key", key = kind.name).entered();
    let err = |source| TpmError::CreateKey {
        key: kind.name,
        source,
    };
    let template = (kind.template)().map_err(err)?;
    let created = context
        .execute_with_session(Some(AuthSession::Password), |ctx| {
            ctx.create(primary, template, None, None, None, None)
        })
        .map_err(err)?;
    (kind.check)(&created.out_public).map_err(|reason| TpmError::UnexpectedTpmOutput {
        what: "the new key's public area",
        reason: reason.to_string(),
    })?;
    Ok(KeyBlob {
        public: created.out_public,
        private: created.out_private,
    })
}

/// Create the owner hierarchy's storage primary (restricted ECC P-256 decrypt key, AES-128-CFB):
/// the TCG "SRK" template, so the same owner seed always gives the same key.
pub(crate) fn create_owner_primary(context: &mut Context) -> Result<KeyHandle, TpmError> {
    let _span = tracing::info_span!("tpm.create_primary", hierarchy = "owner").entered();
    let err = |source| TpmError::CreatePrimary {
        hierarchy: "owner",
        source,
    };
    let public = storage_primary_template().map_err(err)?;
    context
        .execute_with_session(Some(AuthSession::Password), |ctx| {
            ctx.create_primary(Hierarchy::Owner, public, None, None, None, None)
        })
        .map(|result| result.key_handle)
        .map_err(err)
}

fn storage_primary_template() -> tss_esapi::Result<Public> {
    let attributes = ObjectAttributes::builder()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_no_da(true)
        .with_restricted(true)
        .with_decrypt(true)
        .build()?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(
            PublicEccParametersBuilder::new_restricted_decryption_key(
                SymmetricDefinitionObject::AES_128_CFB,
                EccCurve::NistP256,
            )
            .build()?,
        )
        .with_ecc_unique_identifier(EccPoint::new(
            EccParameter::try_from(vec![0u8; P256_COORDINATE_LEN])?,
            EccParameter::try_from(vec![0u8; P256_COORDINATE_LEN])?,
        ))
        .build()
}

/// Flush a transient object, logging (not failing) when the TPM refuses.
pub(crate) fn flush(context: &mut Context, handle: KeyHandle) {
    if let Err(e) = context.flush_context(handle.into()) {
        tracing::warn!(error = %e, "could not flush a transient TPM object; a TPM object slot stays in use until the TPM context closes");
    }
}

/// Flush a session, logging (not failing) when the TPM refuses.
pub(crate) fn flush_session(context: &mut Context, session: AuthSession) {
    let handle = SessionHandle::from(session);
    if let Err(e) = context.flush_context(ObjectHandle::from(handle)) {
        tracing::warn!(error = %e, "could not flush a TPM session; a session slot stays in use until the TPM context closes");
    }
}

/// Why a public area is not the signing key Cairn makes.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KeyShapeError {
    /// Not an ECC key.
    #[error("the key is not an ECC key")]
    NotEcc,
    /// Another curve.
    #[error("the key is on curve {0:?}, not NIST P-256")]
    Curve(EccCurve),
    /// A decryption or restricted key.
    #[error("the key is not an unrestricted signing key")]
    NotSigning,
    /// Not a restricted signing-only key (an attestation key signs only TPM-made structures).
    #[error("the key is not a restricted signing-only key")]
    NotRestrictedSigning,
    /// Another name algorithm.
    #[error("the key's name algorithm is {0:?}, not SHA-256")]
    NameAlgorithm(HashingAlgorithm),
    /// The key may leave the TPM.
    #[error("the key is exportable (fixedTPM not set)")]
    Exportable,
    /// Another signature scheme.
    #[error("the key's scheme is {0:?}, not ECDSA with SHA-256")]
    Scheme(EccScheme),
    /// Not an ECC public area (for its SubjectPublicKeyInfo).
    #[error("not an ECC public area")]
    NotEccArea,
    /// A coordinate longer than P-256's.
    #[error("{name} coordinate of {len} bytes")]
    Coordinate {
        /// `x` or `y`.
        name: &'static str,
        /// Its length.
        len: usize,
    },
}

/// Check a public area is an unrestricted ECC P-256 signing key with ECDSA SHA-256 (or no fixed
/// scheme) that cannot leave the TPM (fixedTPM): the device key Cairn makes.
pub(crate) fn check_p256_signing(public: &Public) -> Result<(), KeyShapeError> {
    let Public::Ecc {
        object_attributes,
        parameters,
        ..
    } = public
    else {
        return Err(KeyShapeError::NotEcc);
    };
    if parameters.ecc_curve() != EccCurve::NistP256 {
        return Err(KeyShapeError::Curve(parameters.ecc_curve()));
    }
    if !object_attributes.sign_encrypt() || object_attributes.restricted() {
        return Err(KeyShapeError::NotSigning);
    }
    if !object_attributes.fixed_tpm() {
        return Err(KeyShapeError::Exportable);
    }
    match parameters.ecc_scheme() {
        EccScheme::EcDsa(hash) if hash.hashing_algorithm() == HashingAlgorithm::Sha256 => Ok(()),
        EccScheme::Null => Ok(()),
        other => Err(KeyShapeError::Scheme(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_storage_primary_is_not_a_signing_key() {
        let primary = storage_primary_template().unwrap();
        let err = check_p256_signing(&primary).unwrap_err();
        assert!(matches!(err, KeyShapeError::NotSigning), "{err}");
        assert_eq!(
            err.to_string(),
            "the key is not an unrestricted signing key"
        );
        let attributes = primary.object_attributes();
        assert!(attributes.restricted() && attributes.decrypt());
    }
}
