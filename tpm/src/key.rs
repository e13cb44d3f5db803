//! The device signing key: a non-exportable ECC P-256 key under the owner hierarchy, kept on disk
//! as a TPM-wrapped blob and loaded into the TPM while the device runs.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use sha2::{Digest as _, Sha256};
use tss_esapi::attributes::ObjectAttributes;
use tss_esapi::constants::tss::{TPM2_RH_NULL, TPM2_ST_HASHCHECK};
use tss_esapi::handles::KeyHandle;
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{
    Digest, EccParameter, EccPoint, EccScheme, HashScheme, HashcheckTicket, Public, PublicBuilder,
    PublicEccParametersBuilder, Signature, SignatureScheme,
};
use tss_esapi::traits::Marshall;
use tss_esapi::tss2_esys::TPMT_TK_HASHCHECK;
use tss_esapi::Context;

use crate::owner_key::{
    check_p256_signing, create_owner_primary, flush, load_or_create, read_blob, KeyKind,
    KeyShapeError,
};
use crate::tcti::open_context;
use crate::TpmError;
use cairn_attest::der::{self, P256_COORDINATE_LEN};

/// The device key: an unrestricted P-256 ECDSA signing key.
pub(crate) const DEVICE_KEY: KeyKind = KeyKind {
    name: "device signing key",
    template: signing_key_template,
    check: check_p256_signing,
};

/// The device's signing key, held in the TPM.
///
/// The private key never leaves the TPM in clear: on disk there is only a blob the TPM encrypted
/// under its owner primary key, so the blob is useless on another machine or after a TPM clear.
/// The key is `fixedTPM` and `fixedParent` (not exportable or duplicable) and has an empty
/// authorization value.
///
/// Holds one TPM context (behind a mutex, so the key is `Send + Sync`) and keeps the key loaded
/// in it until dropped; the context flushes it on drop.
pub struct TpmDeviceKey {
    context: Mutex<Context>,
    key: KeyHandle,
    spki_der: Vec<u8>,
    public_area: Vec<u8>,
}

impl std::fmt::Debug for TpmDeviceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TpmDeviceKey")
            .field("public_key_spki_der_len", &self.spki_der.len())
            .finish_non_exhaustive()
    }
}

impl TpmDeviceKey {
    /// Load the key from `blob_path` (public+private blob written by an earlier call) or create a
    /// new non-exportable ECC P-256 signing key under the owner hierarchy's primary and write the
    /// blob (0600, atomic write+rename).
    ///
    /// The owner primary is recreated from a fixed template each time (same seed and template give
    /// the same key), used as the parent, and flushed again. An existing blob that the TPM refuses
    /// is an error, never silently replaced: replacing it would change the device's identity.
    ///
    /// # Errors
    /// [`TpmError::BadTcti`] / [`TpmError::OpenTcti`] when the TPM cannot be reached,
    /// [`TpmError::CreatePrimary`], [`TpmError::CreateKey`], [`TpmError::ReadBlob`],
    /// [`TpmError::BadBlob`] (damaged file), [`TpmError::LoadBlob`] (blob from another TPM or a
    /// cleared TPM), [`TpmError::WriteBlob`].
    pub fn open_or_create(tcti: &str, blob_path: &Path) -> Result<Self, TpmError> {
        let _span =
            tracing::info_span!("tpm.device_key.open", path = %blob_path.display()).entered();
        let existing = read_blob(&DEVICE_KEY, blob_path)?;
        let mut context = open_context(tcti)?;
        let primary = create_owner_primary(&mut context)?;
        let loaded = load_or_create(&mut context, primary, &DEVICE_KEY, existing, blob_path);
        // The primary is only needed as the parent: free its slot whatever happened.
        flush(&mut context, primary);
        let (key, blob) = loaded?;

        let spki_der = p256_spki(&blob.public).map_err(|reason| TpmError::UnexpectedTpmOutput {
            what: "the device key's public area",
            reason: reason.to_string(),
        })?;
        let public_area = marshal_public(&blob.public, "the device key's public area")?;
        Ok(TpmDeviceKey {
            context: Mutex::new(context),
            key,
            spki_der,
            public_area,
        })
    }

    /// The key's public area as the TPM marshals it (TPMT_PUBLIC, without the TPM2B size): what
    /// the TPM hashes into the key's name (nameAlg SHA-256 || SHA-256 of these bytes), which a
    /// [`crate::Certification`] of this key names.
    pub fn public_area(&self) -> Vec<u8> {
        self.public_area.clone()
    }

    /// Run `f` with this key's TPM context and the key's handle in it, holding the context's lock:
    /// transient handles are only valid in the context that loaded them, so another key that has
    /// to work with this one (the attestation key certifying it) is loaded into this context.
    pub(crate) fn with_loaded_key<R>(&self, f: impl FnOnce(&mut Context, KeyHandle) -> R) -> R {
        f(&mut self.lock(), self.key)
    }

    /// DER SubjectPublicKeyInfo of the P-256 public key (id-ecPublicKey, prime256v1, uncompressed
    /// point).
    pub fn public_key_spki_der(&self) -> Vec<u8> {
        self.spki_der.clone()
    }

    /// ECDSA P-256 over SHA-256 of `message` (hash computed on host, signed in TPM); DER-encoded
    /// Ecdsa-Sig-Value (SEQUENCE of two INTEGERs), as X.509 and TLS expect.
    ///
    /// # Errors
    /// [`TpmError::Sign`] when the TPM refuses (e.g. it was reset and the key is no longer
    /// loaded), [`TpmError::UnexpectedTpmOutput`] when it answers with a non-ECDSA signature.
    pub fn sign_sha256(&self, message: &[u8]) -> Result<Vec<u8>, TpmError> {
        let _span = tracing::info_span!("tpm.sign", len = message.len()).entered();
        let digest = Digest::try_from(Sha256::digest(message).to_vec())
            .map_err(|source| TpmError::Sign { source })?;
        let validation = null_hashcheck_ticket().map_err(|source| TpmError::Sign { source })?;
        let scheme = SignatureScheme::EcDsa {
            hash_scheme: HashScheme::new(HashingAlgorithm::Sha256),
        };
        let signature = self
            .lock()
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.sign(self.key, digest, scheme, validation)
            })
            .map_err(|source| TpmError::Sign { source })?;
        ecdsa_signature_der(signature)
    }

    /// The context, even if another thread panicked while holding it (the TPM context itself
    /// stays consistent: every call is a complete TPM command).
    fn lock(&self) -> MutexGuard<'_, Context> {
        self.context.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Attributes of the device key: not exportable (fixedTPM, fixedParent), generated in the TPM,
/// usable with its (empty) auth value, unrestricted signing only.
pub(crate) fn signing_key_attributes() -> tss_esapi::Result<ObjectAttributes> {
    ObjectAttributes::builder()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_sign_encrypt(true)
        .build()
}

fn signing_key_template() -> tss_esapi::Result<Public> {
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(signing_key_attributes()?)
        .with_ecc_parameters(
            PublicEccParametersBuilder::new_unrestricted_signing_key(
                EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)),
                EccCurve::NistP256,
            )
            .build()?,
        )
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
}

/// A P-256 ECDSA signature from the TPM as a DER `Ecdsa-Sig-Value` (SEQUENCE of two INTEGERs), as
/// X.509, TLS and ring's `ECDSA_P256_SHA256_ASN1` expect.
pub(crate) fn ecdsa_signature_der(signature: Signature) -> Result<Vec<u8>, TpmError> {
    let unexpected = |reason: String| TpmError::UnexpectedTpmOutput {
        what: "an ECDSA signature",
        reason,
    };
    let Signature::EcDsa(ecc) = signature else {
        return Err(unexpected(format!(
            "got a {:?} signature",
            signature.algorithm()
        )));
    };
    let r = ecc.signature_r().value();
    let s = ecc.signature_s().value();
    if r.len() > P256_COORDINATE_LEN || s.len() > P256_COORDINATE_LEN {
        return Err(unexpected(format!("r/s of {}/{} bytes", r.len(), s.len())));
    }
    Ok(der::ecdsa_signature(r, s))
}

/// The TPMT_PUBLIC bytes of `public` (`what` names it in the error).
pub(crate) fn marshal_public(public: &Public, what: &'static str) -> Result<Vec<u8>, TpmError> {
    public
        .marshall()
        .map_err(|e| TpmError::UnexpectedTpmOutput {
            what,
            reason: format!("cannot marshal it: {e}"),
        })
}

/// SubjectPublicKeyInfo of an ECC P-256 public area.
fn p256_spki(public: &Public) -> Result<Vec<u8>, KeyShapeError> {
    let Public::Ecc { unique, .. } = public else {
        return Err(KeyShapeError::NotEccArea);
    };
    let pad = |coordinate: &EccParameter, name: &'static str| {
        der::left_pad(coordinate.value(), P256_COORDINATE_LEN).ok_or(KeyShapeError::Coordinate {
            name,
            len: coordinate.value().len(),
        })
    };
    Ok(der::spki_ec_p256(
        &pad(unique.x(), "x")?,
        &pad(unique.y(), "y")?,
    ))
}

/// The "no ticket" hashcheck: allowed for unrestricted signing keys.
fn null_hashcheck_ticket() -> tss_esapi::Result<HashcheckTicket> {
    HashcheckTicket::try_from(TPMT_TK_HASHCHECK {
        tag: TPM2_ST_HASHCHECK,
        hierarchy: TPM2_RH_NULL,
        digest: Default::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn device_key_is_send_and_sync() {
        assert_send_sync::<TpmDeviceKey>();
    }

    #[test]
    fn the_template_describes_an_unrestricted_p256_signing_key() {
        let signing = signing_key_template().unwrap();
        check_p256_signing(&signing).unwrap();
        assert!(!signing.object_attributes().restricted());
    }

    #[test]
    fn spki_pads_short_coordinates() {
        let public = PublicBuilder::new()
            .with_public_algorithm(PublicAlgorithm::Ecc)
            .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
            .with_object_attributes(signing_key_attributes().unwrap())
            .with_ecc_parameters(
                PublicEccParametersBuilder::new_unrestricted_signing_key(
                    EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)),
                    EccCurve::NistP256,
                )
                .build()
                .unwrap(),
            )
            .with_ecc_unique_identifier(EccPoint::new(
                EccParameter::try_from(vec![1u8; 31]).unwrap(),
                EccParameter::try_from(vec![2u8; 32]).unwrap(),
            ))
            .build()
            .unwrap();
        let spki = p256_spki(&public).unwrap();
        assert_eq!(spki.len(), 91);
        assert_eq!(&spki[26..28], &[0x04, 0x00]);
        assert_eq!(&spki[28..59], &[1u8; 31]);
    }
}
