//! The endorsement key identity: a stable hash that names this TPM for enrollment.

use sha2::{Digest as _, Sha256};
use tss_esapi::abstraction::ek;
use tss_esapi::interface_types::algorithm::AsymmetricAlgorithm;
use tss_esapi::structures::Public;

use crate::der;
use crate::tcti::open_context;
use crate::TpmError;

/// The RSA exponent a TPM public area reports as 0.
const DEFAULT_RSA_EXPONENT: u32 = 65537;

/// Lower-case hex SHA-256 of the endorsement key's public key as DER SubjectPublicKeyInfo (the
/// standard RSA 2048 EK template of the TCG EK Credential Profile; `rsaEncryption` with
/// `RSAPublicKey { n, e = 65537 }`).
///
/// The EK is derived from the TPM's endorsement seed, so the hash is the same on every call and
/// boot, and differs between TPMs. It is the same as hashing the DER public key written by
/// `tpm2_createek -G rsa -f der -u ek.der`. The EK is created transiently and flushed again.
///
/// # Errors
/// [`TpmError::BadTcti`] / [`TpmError::OpenTcti`] when the TPM cannot be reached,
/// [`TpmError::EndorsementKey`] when the TPM refuses to create or read the EK.
pub fn ek_public_sha256(tcti: &str) -> Result<String, TpmError> {
    let mut context = open_context(tcti)?;
    let _span = tracing::info_span!("tpm.ek_public").entered();
    let err = |source| TpmError::EndorsementKey { source };
    let handle = ek::create_ek_object(&mut context, AsymmetricAlgorithm::Rsa, None).map_err(err)?;
    let public = context.read_public(handle).map(|(public, _, _)| public);
    if let Err(e) = context.flush_context(handle.into()) {
        tracing::warn!(error = %e, "could not flush the transient endorsement key");
    }
    let spki = rsa_spki(&public.map_err(err)?)?;
    Ok(hex::encode(Sha256::digest(&spki)))
}

/// SubjectPublicKeyInfo of an RSA public area.
fn rsa_spki(public: &Public) -> Result<Vec<u8>, TpmError> {
    let Public::Rsa {
        parameters, unique, ..
    } = public
    else {
        return Err(TpmError::UnexpectedTpmOutput {
            what: "the endorsement key public area",
            reason: "not an RSA key".to_string(),
        });
    };
    let exponent = match parameters.exponent().value() {
        0 => DEFAULT_RSA_EXPONENT,
        e => e,
    };
    if unique.value().is_empty() {
        return Err(TpmError::UnexpectedTpmOutput {
            what: "the endorsement key public area",
            reason: "empty RSA modulus".to_string(),
        });
    }
    Ok(der::spki_rsa(unique.value(), exponent))
}
