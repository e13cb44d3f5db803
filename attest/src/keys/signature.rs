//! The attestation key's ECDSA P-256 signature over a TPMS_ATTEST.

use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1};

use super::KeyError;
use crate::tpm2::TpmPublic;

/// Largest accepted DER ECDSA signature (P-256 needs at most 72 bytes).
pub const MAX_SIGNATURE_LEN: usize = 128;

/// Verifies `signature_der` (ASN.1 `Ecdsa-Sig-Value`) by `ak` over SHA-256 of `message`.
pub(super) fn verify_ak_signature(
    what: &'static str,
    ak: &TpmPublic,
    message: &[u8],
    signature_der: &[u8],
) -> Result<(), KeyError> {
    if signature_der.len() > MAX_SIGNATURE_LEN {
        return Err(KeyError::SignatureTooLarge {
            what,
            len: signature_der.len(),
            max: MAX_SIGNATURE_LEN,
        });
    }
    let point = ak.p256_point().map_err(|source| KeyError::Malformed {
        what: "attestation key public area",
        source,
    })?;
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, point)
        .verify(message, signature_der)
        .map_err(|_| KeyError::BadSignature { what })
}
