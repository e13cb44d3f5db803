//! The endorsement key identity: a stable hash that names this TPM for enrollment, and the EK
//! certificate its maker wrote into NV.

use sha2::{Digest as _, Sha256};
use tss_esapi::abstraction::{ek, AsymmetricAlgorithmSelection};
use tss_esapi::constants::CapabilityType;
use tss_esapi::interface_types::algorithm::AsymmetricAlgorithm;
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::structures::{CapabilityData, Public};
use tss_esapi::Context;

use crate::tcti::TpmAccess;
use crate::TpmError;
use cairn_attest::der;

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
pub fn ek_public_sha256<'a>(access: impl Into<TpmAccess<'a>>) -> Result<String, TpmError> {
    access.into().run(|context| {
        let _span = tracing::info_span!("tpm.ek_public").entered();
        let err = |source| TpmError::EndorsementKey { source };
        let handle = ek::create_ek_object(context, AsymmetricAlgorithm::Rsa, None).map_err(err)?;
        let public = context.read_public(handle).map(|(public, _, _)| public);
        if let Err(e) = context.flush_context(handle.into()) {
            tracing::warn!(error = %e, "could not flush the transient endorsement key");
        }
        let spki = rsa_spki(&public.map_err(err)?)?;
        Ok(hex::encode(Sha256::digest(&spki)))
    })
}

/// NV index of the RSA 2048 EK certificate (TCG EK Credential Profile 2.0, low range).
pub const EK_CERT_NV_INDEX_RSA2048: u32 = 0x01c0_0002;

/// The RSA 2048 EK certificate (DER X.509) the TPM maker wrote into NV index 0x01c00002, or
/// `None` when the TPM has no such index (many firmware TPMs, and swtpm unless manufactured with
/// certificates).
///
/// Its public key is the EK [`ek_public_sha256`] hashes. NV areas are often larger than the
/// certificate: padding after the outer DER SEQUENCE is cut off. The certificate is not checked
/// here; the verifier checks it against the TPM makers' CAs.
///
/// # Errors
/// [`TpmError::BadTcti`] / [`TpmError::OpenTcti`] when the TPM cannot be reached,
/// [`TpmError::EkCertificate`] when the TPM refuses to list or read the index,
/// [`TpmError::BadEkCertificate`] when the index does not hold a DER SEQUENCE.
pub fn ek_certificate<'a>(access: impl Into<TpmAccess<'a>>) -> Result<Option<Vec<u8>>, TpmError> {
    access.into().run(ek_certificate_in)
}

fn ek_certificate_in(context: &mut Context) -> Result<Option<Vec<u8>>, TpmError> {
    let _span = tracing::info_span!("tpm.ek_certificate", nv_index = "0x01c00002").entered();
    let err = |source| TpmError::EkCertificate {
        index: EK_CERT_NV_INDEX_RSA2048,
        source,
    };
    if !nv_index_defined(context, EK_CERT_NV_INDEX_RSA2048).map_err(err)? {
        tracing::info!("the TPM has no RSA 2048 EK certificate in NV");
        return Ok(None);
    }
    let mut nv = ek::retrieve_ek_pubcert(
        context,
        AsymmetricAlgorithmSelection::Rsa(RsaKeyBits::Rsa2048),
    )
    .map_err(err)?;
    let len = der::outer_sequence_len(&nv).ok_or_else(|| TpmError::BadEkCertificate {
        index: EK_CERT_NV_INDEX_RSA2048,
        reason: format!(
            "its {} bytes do not start with a complete DER SEQUENCE",
            nv.len()
        ),
    })?;
    if len < nv.len() {
        tracing::debug!(
            nv_len = nv.len(),
            cert_len = len,
            "cut NV padding after the certificate"
        );
    }
    nv.truncate(len);
    Ok(Some(nv))
}

/// Whether NV index `index` is defined: the TPM lists handles from `index` on, so the first one
/// listed is `index` itself exactly when it exists.
fn nv_index_defined(context: &mut Context, index: u32) -> tss_esapi::Result<bool> {
    let (data, _more) = context
        .execute_without_session(|ctx| ctx.get_capability(CapabilityType::Handles, index, 1))?;
    let CapabilityData::Handles(handles) = data else {
        return Err(tss_esapi::Error::WrapperError(
            tss_esapi::WrapperErrorKind::WrongValueFromTpm,
        ));
    };
    Ok(handles
        .first()
        .is_some_and(|&handle| u32::from(handle) == index))
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
