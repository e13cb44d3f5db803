//! The device side of TPM attestation: an attestation key (AK) that certifies the device key,
//! proves it lives in the same TPM as the endorsement key (credential activation), and quotes PCRs.
//!
//! # How a verifier uses it
//!
//! 1. The device sends its EK certificate ([`crate::ek_certificate`]), the AK's public area
//!    ([`AttestationKey::public_area`]) and the device key's ([`crate::TpmDeviceKey::public_area`]).
//! 2. The verifier checks the EK certificate against the TPM makers' CAs, then runs
//!    `MakeCredential(EK public, AK name, secret)`; only the TPM holding that EK, with the AK
//!    loaded, gets the secret back ([`AttestationKey::activate_credential`]). The name is a hash
//!    of the public area, attributes included, so a verifier that checks fixedTPM and restricted
//!    in the public area knows the key it reached has them.
//! 3. [`AttestationKey::certify`]: the AK signs the device key's name, so the device key is in the
//!    same TPM. [`AttestationKey::quote`]: the AK signs PCR values, with the verifier's nonce.
//!
//! # TPM resources
//!
//! The AK is a blob beside the device key's ([`crate::TpmDeviceKey`], same owner primary) and is
//! loaded only for the length of one call: swtpm without a resource manager holds three transient
//! objects, and the device key already uses one. Everything loaded (AK, EK, sessions) is flushed
//! before a call returns, on error paths too.
//!
//! [`AttestationKey::certify`] works in the device key's connection; the other calls take a
//! [`TpmAccess`]: a TCTI to open a connection for the call, or an open [`crate::TpmDeviceKey`]
//! whose connection to use. swtpm serves one connection at a time, so a process holding a device
//! key on swtpm passes that key; `/dev/tpmrm0` has no such limit.

use std::path::{Path, PathBuf};

use tss_esapi::abstraction::ek;
use tss_esapi::attributes::ObjectAttributes;
use tss_esapi::constants::response_code::Tss2ResponseCode;
use tss_esapi::constants::tss::{
    TPM2_RC_1, TPM2_RC_2, TPM2_RC_ECC_POINT, TPM2_RC_FAILURE, TPM2_RC_INSUFFICIENT,
    TPM2_RC_INTEGRITY, TPM2_RC_KEY, TPM2_RC_P, TPM2_RC_SCHEME, TPM2_RC_SIZE, TPM2_RC_TYPE,
    TPM2_RC_VALUE,
};
use tss_esapi::constants::SessionType;
use tss_esapi::handles::{AuthHandle, KeyHandle};
use tss_esapi::interface_types::algorithm::{
    AsymmetricAlgorithm, HashingAlgorithm, PublicAlgorithm,
};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    Attest, AttestInfo, Data, Digest, EccPoint, EccScheme, EncryptedSecret, HashScheme, IdObject,
    KeyDerivationFunctionScheme, Nonce, Public, PublicBuilder, PublicEccParametersBuilder,
    SignatureScheme, SymmetricDefinition, SymmetricDefinitionObject,
};
use tss_esapi::traits::Marshall;
use tss_esapi::Context;
use zeroize::Zeroizing;

use crate::blob::KeyBlob;
use crate::key::{ecdsa_signature_der, marshal_public};
use crate::owner_key::{
    create_owner_primary, flush, flush_session, load_or_create, load_under_owner_primary,
    read_blob, KeyKind, KeyShapeError,
};
use crate::pcr::{pcr_values_digest, read_pcrs_with, PcrSelection, PcrValues};
use crate::tcti::TpmAccess;
use crate::{TpmDeviceKey, TpmError};

/// Longest qualifying data (nonce) the TPM accepts in certify and quote (`TPM2B_DATA`).
pub const MAX_QUALIFYING_DATA_LEN: usize = 64;
/// Quotes made when the PCRs keep changing between a quote and reading them.
const QUOTE_ATTEMPTS: u32 = 5;

/// The attestation key: a restricted ECC P-256 signing key (ECDSA SHA-256) under the owner
/// hierarchy, kept on disk as a TPM-wrapped blob like the device key.
///
/// Restricted means it signs only structures the TPM made itself (attestations, quotes), never
/// outside data that could pass for one. It is fixedTPM and fixedParent and has an empty
/// authorization value. It holds no TPM connection: each call loads it and flushes it again
/// (see the module docs).
pub struct AttestationKey {
    blob_path: PathBuf,
    blob: KeyBlob,
    public_area: Vec<u8>,
}

impl std::fmt::Debug for AttestationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttestationKey")
            .field("blob_path", &self.blob_path)
            .field("public_area_len", &self.public_area.len())
            .finish_non_exhaustive()
    }
}

/// A TPM2_Certify of the device key by the attestation key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certification {
    /// The marshalled TPMS_ATTEST (magic `TPM_GENERATED_VALUE`, type `TPM_ST_ATTEST_CERTIFY`,
    /// the qualifying data as `extraData`, the device key's name), as the TPM signed it.
    pub attest: Vec<u8>,
    /// ECDSA P-256 signature over SHA-256(`attest`) by the attestation key, DER `Ecdsa-Sig-Value`.
    pub signature_der: Vec<u8>,
}

/// A TPM2_Quote of SHA-256 PCRs by the attestation key, and the PCR values it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quote {
    /// The marshalled TPMS_ATTEST (type `TPM_ST_ATTEST_QUOTE`, the nonce as `extraData`, the PCR
    /// selection and the SHA-256 digest of the selected values), as the TPM signed it.
    pub attest: Vec<u8>,
    /// ECDSA P-256 signature over SHA-256(`attest`) by the attestation key, DER `Ecdsa-Sig-Value`.
    pub signature_der: Vec<u8>,
    /// The quoted PCRs' values, read right after the quote: SHA-256 of their concatenation (index
    /// order) is the quote's PCR digest.
    pub pcr_values: PcrValues,
}

/// The attestation key: restricted P-256 ECDSA signing.
const ATTESTATION_KEY: KeyKind = KeyKind {
    name: "attestation key",
    template: attestation_key_template,
    check: check_attestation_key,
};

impl AttestationKey {
    /// Load the attestation key from `blob_path` or create it under the owner hierarchy's
    /// primary and write its blob (0600, atomic write+rename), exactly as
    /// [`TpmDeviceKey::open_or_create`] does for the device key.
    ///
    /// The TPM loads the blob once to prove it accepts it; the key is flushed again. An existing
    /// blob that the TPM refuses is an error, never silently replaced: the verifier knows this
    /// AK.
    ///
    /// # Errors
    /// [`TpmError::BadTcti`] / [`TpmError::OpenTcti`], [`TpmError::CreatePrimary`],
    /// [`TpmError::CreateKey`], [`TpmError::ReadBlob`], [`TpmError::BadBlob`] (damaged file or not
    /// an attestation key), [`TpmError::LoadBlob`] (blob from another TPM or a cleared TPM),
    /// [`TpmError::WriteBlob`].
    pub fn open_or_create<'a>(
        access: impl Into<TpmAccess<'a>>,
        blob_path: &Path,
    ) -> Result<Self, TpmError> {
        let _span =
            tracing::info_span!("tpm.attestation_key.open", path = %blob_path.display()).entered();
        let existing = read_blob(&ATTESTATION_KEY, blob_path)?;
        let blob = access.into().run(|context| {
            let primary = create_owner_primary(context)?;
            let loaded = load_or_create(context, primary, &ATTESTATION_KEY, existing, blob_path);
            flush(context, primary);
            let (key, blob) = loaded?;
            flush(context, key);
            Ok(blob)
        })?;
        let public_area = marshal_public(&blob.public, "the attestation key's public area")?;
        Ok(AttestationKey {
            blob_path: blob_path.to_path_buf(),
            blob,
            public_area,
        })
    }

    /// The key's public area as the TPM marshals it (TPMT_PUBLIC, without the TPM2B size). Its
    /// name, which a verifier passes to MakeCredential, is nameAlg SHA-256 (`00 0b`) followed by
    /// SHA-256 of these bytes.
    pub fn public_area(&self) -> Vec<u8> {
        self.public_area.clone()
    }

    /// TPM2_Certify: the attestation key signs the device key's name with `qualifying_data` (the
    /// verifier's nonce, at most 64 bytes), proving the device key lives in this TPM.
    ///
    /// Runs in `device_key`'s TPM context (its handle is only valid there): the AK is loaded into
    /// that context for the call and flushed again.
    ///
    /// # Errors
    /// [`TpmError::QualifyingData`] for more than 64 bytes, [`TpmError::CreatePrimary`],
    /// [`TpmError::LoadBlob`] (the device key is on another TPM, or this TPM was cleared),
    /// [`TpmError::Certify`], [`TpmError::UnexpectedTpmOutput`].
    pub fn certify(
        &self,
        device_key: &TpmDeviceKey,
        qualifying_data: &[u8],
    ) -> Result<Certification, TpmError> {
        let _span = tracing::info_span!("tpm.certify", qualifying_data_len = qualifying_data.len())
            .entered();
        let data = qualifying(qualifying_data)?;
        let (attest, signature) = device_key.with_loaded_key(|context, device| {
            self.with_loaded(context, |context, ak| {
                context
                    .execute_with_sessions(
                        (
                            Some(AuthSession::Password),
                            Some(AuthSession::Password),
                            None,
                        ),
                        |ctx| ctx.certify(device.into(), ak, data, ecdsa_sha256()),
                    )
                    .map_err(|source| TpmError::Certify { source })
            })
        })?;
        Ok(Certification {
            attest: marshal_attest(&attest)?,
            signature_der: ecdsa_signature_der(signature)?,
        })
    }

    /// TPM2_ActivateCredential: recover the secret a verifier sealed with MakeCredential to this
    /// TPM's RSA 2048 EK (the TCG default template) and this AK's name. `id_object` and
    /// `encrypted_secret` are the contents of the TPM2B_ID_OBJECT and TPM2B_ENCRYPTED_SECRET
    /// (without their size prefixes).
    ///
    /// The EK is authorized by its standard policy (PolicySecret on the endorsement hierarchy,
    /// whose authorization must be empty); the AK by its empty password. The secret is returned
    /// in a buffer zeroed on drop and never logged.
    ///
    /// # Errors
    /// [`TpmError::ActivateCredential`] when the TPM refuses: the credential was not made for this
    /// TPM's EK and this AK. [`TpmError::BadCredential`] for oversized inputs,
    /// [`TpmError::EndorsementKey`], [`TpmError::LoadBlob`], [`TpmError::ActivateCredentialFailed`]
    /// for other TPM failures.
    pub fn activate_credential<'a>(
        &self,
        access: impl Into<TpmAccess<'a>>,
        id_object: &[u8],
        encrypted_secret: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, TpmError> {
        let _span = tracing::info_span!("tpm.activate_credential").entered();
        let credential =
            IdObject::try_from(id_object.to_vec()).map_err(|_| TpmError::BadCredential {
                what: "credential blob (TPM2B_ID_OBJECT)",
                len: id_object.len(),
            })?;
        let secret = EncryptedSecret::try_from(encrypted_secret.to_vec()).map_err(|_| {
            TpmError::BadCredential {
                what: "encrypted secret (TPM2B_ENCRYPTED_SECRET)",
                len: encrypted_secret.len(),
            }
        })?;
        let activated = access.into().run(|context| {
            self.with_loaded(context, |context, ak| {
                let ek = ek::create_ek_object(context, AsymmetricAlgorithm::Rsa, None)
                    .map_err(|source| TpmError::EndorsementKey { source })?;
                let result = activate_with_ek_policy(context, ak, ek, credential, secret);
                flush(context, ek);
                result
            })
        });
        match &activated {
            Ok(_) => tracing::info!("credential activated"),
            Err(e) => tracing::warn!(error = %e, "credential not activated"),
        }
        activated
    }

    /// TPM2_Quote: the attestation key signs the SHA-256 bank values of PCRs `pcrs` (indices
    /// 0..=23) with `nonce` (at most 64 bytes) as `extraData`.
    ///
    /// The quoted values are read right after the quote in the same connection and checked
    /// against the quote's PCR digest; when a PCR was extended in between, the quote is made
    /// again (up to five times).
    ///
    /// # Errors
    /// [`TpmError::BadPcrSelection`], [`TpmError::QualifyingData`], [`TpmError::LoadBlob`],
    /// [`TpmError::Quote`], [`TpmError::ReadPcrs`], [`TpmError::PcrsChanging`],
    /// [`TpmError::UnexpectedTpmOutput`].
    pub fn quote<'a>(
        &self,
        access: impl Into<TpmAccess<'a>>,
        nonce: &[u8],
        pcrs: &[u8],
    ) -> Result<Quote, TpmError> {
        let selection = PcrSelection::new(pcrs.iter().copied())?;
        let _span =
            tracing::info_span!("tpm.quote", pcrs = %selection, nonce_len = nonce.len()).entered();
        let data = qualifying(nonce)?;
        access.into().run(|context| {
            self.with_loaded(context, |context, ak| {
                quote_consistent(context, ak, data, &selection)
            })
        })
    }

    /// Run `f` with the AK loaded into `context`; the AK is flushed again whatever `f` returns.
    fn with_loaded<R>(
        &self,
        context: &mut Context,
        f: impl FnOnce(&mut Context, KeyHandle) -> Result<R, TpmError>,
    ) -> Result<R, TpmError> {
        let ak = load_under_owner_primary(context, &self.blob, &self.blob_path)?;
        let result = f(context, ak);
        flush(context, ak);
        result
    }
}

/// Quote until the PCR values read right after a quote match its digest.
fn quote_consistent(
    context: &mut Context,
    ak: KeyHandle,
    data: Data,
    selection: &PcrSelection,
) -> Result<Quote, TpmError> {
    let quote_err = |source| TpmError::Quote {
        pcrs: selection.to_string(),
        source,
    };
    let list = selection.to_tss().map_err(quote_err)?;
    for attempt in 1..=QUOTE_ATTEMPTS {
        let (attest, signature) = context
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.quote(ak, data.clone(), ecdsa_sha256(), list.clone())
            })
            .map_err(quote_err)?;
        let pcr_values = read_pcrs_with(context, selection)?;
        let AttestInfo::Quote { info } = attest.attested() else {
            return Err(TpmError::UnexpectedTpmOutput {
                what: "a quote",
                reason: format!("attestation of type {:?}", attest.attestation_type()),
            });
        };
        if info.pcr_digest().value() == pcr_values_digest(&pcr_values) {
            return Ok(Quote {
                attest: marshal_attest(&attest)?,
                signature_der: ecdsa_signature_der(signature)?,
                pcr_values,
            });
        }
        tracing::debug!(
            attempt,
            "a quoted PCR changed before it was read; quoting again"
        );
    }
    Err(TpmError::PcrsChanging {
        pcrs: selection.to_string(),
        attempts: QUOTE_ATTEMPTS,
    })
}

/// ActivateCredential with `ak` (password) and `ek` (a policy session satisfying the EK's
/// PolicySecret(endorsement) policy); the session is flushed again.
fn activate_with_ek_policy(
    context: &mut Context,
    ak: KeyHandle,
    ek: KeyHandle,
    credential: IdObject,
    secret: EncryptedSecret,
) -> Result<Zeroizing<Vec<u8>>, TpmError> {
    let failed = |source| TpmError::ActivateCredentialFailed { source };
    let session = context
        .start_auth_session(
            None,
            None,
            None,
            SessionType::Policy,
            SymmetricDefinition::AES_128_CFB,
            HashingAlgorithm::Sha256,
        )
        .map_err(failed)?
        .ok_or_else(|| TpmError::UnexpectedTpmOutput {
            what: "a session",
            reason: "the TPM returned no policy session handle".to_string(),
        })?;
    let result = activate_in_session(context, ak, ek, session, credential, secret);
    flush_session(context, session);
    result
}

fn activate_in_session(
    context: &mut Context,
    ak: KeyHandle,
    ek: KeyHandle,
    session: AuthSession,
    credential: IdObject,
    secret: EncryptedSecret,
) -> Result<Zeroizing<Vec<u8>>, TpmError> {
    let failed = |source| TpmError::ActivateCredentialFailed { source };
    let policy = PolicySession::try_from(session).map_err(failed)?;
    context
        .execute_with_session(Some(AuthSession::Password), |ctx| {
            ctx.policy_secret(
                policy,
                AuthHandle::Endorsement,
                Nonce::default(),
                Digest::default(),
                Nonce::default(),
                None,
            )
        })
        .map_err(failed)?;
    let activated = context
        .execute_with_sessions((Some(AuthSession::Password), Some(session), None), |ctx| {
            ctx.activate_credential(ak, ek, credential, secret)
        });
    match activated {
        Ok(digest) => Ok(Zeroizing::new(digest.value().to_vec())),
        Err(source) if is_refusal(context, &source) => Err(TpmError::ActivateCredential { source }),
        Err(source) => Err(failed(source)),
    }
}

/// Whether ActivateCredential's `error` is the TPM refusing the credential itself rather than
/// failing: a format-one error on parameter 1 (`credentialBlob`: its integrity check under this
/// AK's name fails) or 2 (`secret`: it does not decrypt with this EK).
///
/// libtpms (swtpm) answers a secret that does not decrypt with a bare `TPM_RC_FAILURE`, the code
/// a TPM in failure mode gives for every command; so that code counts as a refusal only when the
/// TPM still answers another command.
fn is_refusal(context: &mut Context, error: &tss_esapi::Error) -> bool {
    let tss_esapi::Error::Tss2Error(rc) = *error else {
        return false;
    };
    let kinds = [
        TPM2_RC_INTEGRITY,
        TPM2_RC_VALUE,
        TPM2_RC_SIZE,
        TPM2_RC_KEY,
        TPM2_RC_TYPE,
        TPM2_RC_SCHEME,
        TPM2_RC_INSUFFICIENT,
        TPM2_RC_ECC_POINT,
    ];
    let on_a_parameter = kinds.iter().any(|&kind| {
        [TPM2_RC_1, TPM2_RC_2]
            .iter()
            .any(|&n| rc == Tss2ResponseCode::from(kind + TPM2_RC_P + n))
    });
    on_a_parameter
        || (rc == Tss2ResponseCode::from(TPM2_RC_FAILURE) && context.get_random(1).is_ok())
}

/// `qualifying_data` as a TPM2B_DATA.
fn qualifying(qualifying_data: &[u8]) -> Result<Data, TpmError> {
    let too_long = || TpmError::QualifyingData {
        len: qualifying_data.len(),
    };
    if qualifying_data.len() > MAX_QUALIFYING_DATA_LEN {
        return Err(too_long());
    }
    Data::try_from(qualifying_data.to_vec()).map_err(|_| too_long())
}

/// The signing scheme of every AK signature.
fn ecdsa_sha256() -> SignatureScheme {
    SignatureScheme::EcDsa {
        hash_scheme: HashScheme::new(HashingAlgorithm::Sha256),
    }
}

/// The TPMS_ATTEST bytes the TPM signed.
fn marshal_attest(attest: &Attest) -> Result<Vec<u8>, TpmError> {
    attest
        .marshall()
        .map_err(|e| TpmError::UnexpectedTpmOutput {
            what: "an attestation structure",
            reason: format!("cannot marshal it: {e}"),
        })
}

/// Attributes of the AK: not exportable, generated in the TPM, usable with its empty auth value,
/// restricted signing only.
fn attestation_key_attributes() -> tss_esapi::Result<ObjectAttributes> {
    ObjectAttributes::builder()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_restricted(true)
        .with_sign_encrypt(true)
        .with_decrypt(false)
        .build()
}

fn attestation_key_template() -> tss_esapi::Result<Public> {
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attestation_key_attributes()?)
        .with_ecc_parameters(
            PublicEccParametersBuilder::new()
                .with_symmetric(SymmetricDefinitionObject::Null)
                .with_ecc_scheme(EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)))
                .with_curve(EccCurve::NistP256)
                .with_key_derivation_function_scheme(KeyDerivationFunctionScheme::Null)
                .with_is_signing_key(true)
                .with_is_decryption_key(false)
                .with_restricted(true)
                .build()?,
        )
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
}

/// Check a public area is the AK Cairn makes: ECC P-256, restricted signing only, ECDSA SHA-256,
/// fixedTPM, name algorithm SHA-256.
fn check_attestation_key(public: &Public) -> Result<(), KeyShapeError> {
    let Public::Ecc {
        object_attributes,
        name_hashing_algorithm,
        parameters,
        ..
    } = public
    else {
        return Err(KeyShapeError::NotEcc);
    };
    if parameters.ecc_curve() != EccCurve::NistP256 {
        return Err(KeyShapeError::Curve(parameters.ecc_curve()));
    }
    if !object_attributes.sign_encrypt()
        || !object_attributes.restricted()
        || object_attributes.decrypt()
    {
        return Err(KeyShapeError::NotRestrictedSigning);
    }
    if !object_attributes.fixed_tpm() {
        return Err(KeyShapeError::Exportable);
    }
    if *name_hashing_algorithm != HashingAlgorithm::Sha256 {
        return Err(KeyShapeError::NameAlgorithm(*name_hashing_algorithm));
    }
    match parameters.ecc_scheme() {
        EccScheme::EcDsa(hash) if hash.hashing_algorithm() == HashingAlgorithm::Sha256 => Ok(()),
        other => Err(KeyShapeError::Scheme(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn attestation_key_is_send_and_sync() {
        assert_send_sync::<AttestationKey>();
    }

    #[test]
    fn the_template_is_a_restricted_p256_ecdsa_signing_key() {
        let template = attestation_key_template().unwrap();
        check_attestation_key(&template).unwrap();
        let attributes = template.object_attributes();
        assert!(attributes.fixed_tpm() && attributes.fixed_parent());
        assert!(attributes.sensitive_data_origin() && attributes.user_with_auth());
        assert!(attributes.restricted() && attributes.sign_encrypt() && !attributes.decrypt());
        assert_eq!(template.name_hashing_algorithm(), HashingAlgorithm::Sha256);
    }

    #[test]
    fn the_device_key_is_not_an_attestation_key() {
        let device = (crate::key::DEVICE_KEY.template)().unwrap();
        let err = check_attestation_key(&device).unwrap_err();
        assert!(matches!(err, KeyShapeError::NotRestrictedSigning), "{err}");
        let err =
            crate::owner_key::check_p256_signing(&attestation_key_template().unwrap()).unwrap_err();
        assert!(matches!(err, KeyShapeError::NotSigning), "{err}");
    }

    #[test]
    fn qualifying_data_is_at_most_64_bytes() {
        assert_eq!(qualifying(&[]).unwrap().value(), b"");
        assert_eq!(qualifying(&[7; 64]).unwrap().value(), [7; 64]);
        let err = qualifying(&[7; 65]).unwrap_err();
        assert!(matches!(err, TpmError::QualifyingData { len: 65 }), "{err}");
        assert!(err.to_string().contains("at most 64 bytes"), "{err}");
    }
}
