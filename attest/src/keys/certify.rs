//! TPM2_Certify evidence: the attestation key vouches that another object (the device key) is
//! loaded in the same TPM.

use super::signature::verify_ak_signature;
use super::{check_attestation_key, KeyError};
use crate::tpm2::{Attest, Attested, TpmPublic};

/// Verifies a TPM2_Certify: `signature_der` (DER ECDSA) is `ak`'s signature over `attest_bytes`
/// (the marshalled TPMS_ATTEST), which is a certification of `certified` (its name matches)
/// carrying `expected_extra_data` as qualifying data.
///
/// `ak` must pass [`check_attestation_key`]: only a restricted key guarantees the TPM produced
/// what it signed. Whether `certified` is an acceptable device key is
/// [`super::check_device_key`]'s job.
///
/// # Errors
/// The [`KeyError`] of the first check that fails: the AK policy, [`KeyError::BadSignature`],
/// [`KeyError::Malformed`], [`KeyError::WrongAttestType`], [`KeyError::CertifiedNameMismatch`],
/// [`KeyError::ExtraDataMismatch`].
pub fn verify_certify(
    ak: &TpmPublic,
    attest_bytes: &[u8],
    signature_der: &[u8],
    certified: &TpmPublic,
    expected_extra_data: &[u8],
) -> Result<(), KeyError> {
    check_attestation_key(ak)?;
    verify_ak_signature("certify", ak, attest_bytes, signature_der)?;
    let attest = Attest::parse(attest_bytes).map_err(|source| KeyError::Malformed {
        what: "certification (TPMS_ATTEST)",
        source,
    })?;
    let Attested::Certify { name, .. } = &attest.attested else {
        return Err(KeyError::WrongAttestType {
            expected: "certification",
            found: "quote",
        });
    };
    if name.as_slice() != certified.name() {
        return Err(KeyError::CertifiedNameMismatch {
            expected: hex::encode(certified.name()),
            certified: hex::encode(name),
        });
    }
    if attest.extra_data != expected_extra_data {
        return Err(KeyError::ExtraDataMismatch);
    }
    Ok(())
}
