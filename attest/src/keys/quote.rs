//! TPM2_Quote evidence: the attestation key signed a digest of PCR values for central's nonce.

use std::collections::{BTreeMap, BTreeSet};

use sha2::{Digest as _, Sha256};

use super::signature::verify_ak_signature;
use super::{check_attestation_key, KeyError};
use crate::tpm2::{
    Attest, Attested, ClockInfo, PcrSelection, TpmPublic, SHA256_LEN, TPM_ALG_SHA1, TPM_ALG_SHA256,
    TPM_ALG_SHA384, TPM_ALG_SHA512,
};

/// What a verified quote tells about the TPM besides the PCRs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuoteInfo {
    /// The TPM's clock, reset and restart counts when it quoted.
    pub clock_info: ClockInfo,
    /// The TPM vendor's firmware version.
    pub firmware_version: u64,
}

/// Verifies a TPM2_Quote: `signature_der` (DER ECDSA) is `ak`'s signature over `attest_bytes`
/// (the marshalled TPMS_ATTEST), a quote for `expected_nonce` over exactly one SHA-256 bank
/// selecting exactly the PCRs in `pcr_values`, whose digest is SHA-256 of those values
/// concatenated in ascending PCR order. The values are then the TPM's.
///
/// `ak` must pass [`check_attestation_key`].
///
/// # Errors
/// The [`KeyError`] of the first check that fails: the AK policy, [`KeyError::BadSignature`],
/// [`KeyError::Malformed`], [`KeyError::WrongAttestType`], [`KeyError::NonceMismatch`] (a replay),
/// [`KeyError::PcrSelectionMismatch`], [`KeyError::PcrDigestMismatch`] (a quote over other values).
pub fn verify_quote(
    ak: &TpmPublic,
    attest_bytes: &[u8],
    signature_der: &[u8],
    expected_nonce: &[u8],
    pcr_values: &BTreeMap<u8, [u8; SHA256_LEN]>,
) -> Result<QuoteInfo, KeyError> {
    check_attestation_key(ak)?;
    verify_ak_signature("quote", ak, attest_bytes, signature_der)?;
    let attest = Attest::parse(attest_bytes).map_err(|source| KeyError::Malformed {
        what: "quote (TPMS_ATTEST)",
        source,
    })?;
    let Attested::Quote {
        pcr_select,
        pcr_digest,
    } = &attest.attested
    else {
        return Err(KeyError::WrongAttestType {
            expected: "quote",
            found: "certification",
        });
    };
    // No nonce, no freshness: a quote with empty qualifying data could be kept and replayed.
    if expected_nonce.is_empty() || attest.extra_data != expected_nonce {
        return Err(KeyError::NonceMismatch);
    }
    let expected: BTreeSet<u8> = pcr_values.keys().copied().collect();
    match pcr_select.as_slice() {
        // A quote over no PCR says nothing about the boot: never accepted.
        [only] if only.hash == TPM_ALG_SHA256 && only.pcrs == expected && !expected.is_empty() => {}
        _ => {
            return Err(KeyError::PcrSelectionMismatch {
                expected: describe_pcrs(&expected),
                found: describe_selection(pcr_select),
            })
        }
    }
    let mut hasher = Sha256::new();
    for value in pcr_values.values() {
        hasher.update(value);
    }
    if hasher.finalize().as_slice() != pcr_digest.as_slice() {
        return Err(KeyError::PcrDigestMismatch);
    }
    Ok(QuoteInfo {
        clock_info: attest.clock_info,
        firmware_version: attest.firmware_version,
    })
}

/// "{0,1,7}".
fn describe_pcrs(pcrs: &BTreeSet<u8>) -> String {
    let list: Vec<String> = pcrs.iter().map(u8::to_string).collect();
    format!("{{{}}}", list.join(","))
}

/// "sha256:{0,1,7} sha1:{0}", or "no PCRs".
fn describe_selection(selection: &[PcrSelection]) -> String {
    if selection.is_empty() {
        return "no PCR bank".to_string();
    }
    let banks: Vec<String> = selection
        .iter()
        .map(|bank| {
            let name = match bank.hash {
                TPM_ALG_SHA1 => "sha1".to_string(),
                TPM_ALG_SHA256 => "sha256".to_string(),
                TPM_ALG_SHA384 => "sha384".to_string(),
                TPM_ALG_SHA512 => "sha512".to_string(),
                other => format!("hash {other:#06x}"),
            };
            format!("{name}:{}", describe_pcrs(&bank.pcrs))
        })
        .collect();
    banks.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selections_are_described_by_bank_and_index() {
        let selection = [
            PcrSelection {
                hash: TPM_ALG_SHA256,
                pcrs: BTreeSet::from([0, 7]),
            },
            PcrSelection {
                hash: 0x0012,
                pcrs: BTreeSet::new(),
            },
        ];
        assert_eq!(
            describe_selection(&selection),
            "sha256:{0,7} hash 0x0012:{}"
        );
        assert_eq!(describe_selection(&[]), "no PCR bank");
    }
}
