//! `Enrollment.Time`: central's clock, signed with the key of the TLS certificate it serves, for
//! devices whose own clock is wrong. The agent checks the signature against the certificate it
//! saw on the same connection, so the answer is bound to central's name and fleet CA; the nonce
//! makes an old answer useless.

use cairn_proto::v1::{TimeRequest, TimeResponse};
use cairn_proto::{time_signed_message, TIME_NONCE_BYTES};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};

/// Signs time answers with central's TLS server key.
pub struct TimeSigner {
    key: EcdsaKeyPair,
    rng: SystemRandom,
}

/// The TLS key cannot sign time answers.
#[derive(Debug, thiserror::Error)]
#[error("central's TLS key cannot sign time answers ({0}); it must be an ECDSA P-256 PKCS#8 key")]
pub struct TimeKeyError(String);

/// A `TimeRequest` central refuses.
#[derive(Debug, thiserror::Error)]
#[error("nonce must be {min} to {max} random bytes, got {got}", min = TIME_NONCE_BYTES.start(), max = TIME_NONCE_BYTES.end())]
pub struct BadTimeRequest {
    got: usize,
}

impl TimeSigner {
    /// A signer for the PEM PKCS#8 key of central's TLS certificate.
    pub fn from_key_pem(key_pem: &str) -> Result<Self, TimeKeyError> {
        let der = pem::parse(key_pem).map_err(|e| TimeKeyError(e.to_string()))?;
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, der.contents(), &rng)
            .map_err(|e| TimeKeyError(e.to_string()))?;
        Ok(TimeSigner { key, rng })
    }

    /// The signed answer to `request` at `unix_ms`.
    pub fn answer(
        &self,
        request: &TimeRequest,
        unix_ms: i64,
    ) -> Result<TimeResponse, BadTimeRequest> {
        if !TIME_NONCE_BYTES.contains(&request.nonce.len()) {
            return Err(BadTimeRequest {
                got: request.nonce.len(),
            });
        }
        let message = time_signed_message(&request.nonce, unix_ms);
        let signature = self
            .key
            .sign(&self.rng, &message)
            .expect("ECDSA signing with a valid key and system randomness does not fail");
        Ok(TimeResponse {
            nonce: request.nonce.clone(),
            unix_ms,
            signature: signature.as_ref().to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1};

    #[test]
    fn answers_verify_with_the_certificate_key_and_bad_nonces_are_refused() {
        let key = rcgen::KeyPair::generate().unwrap();
        let signer = TimeSigner::from_key_pem(&key.serialize_pem()).unwrap();
        let request = TimeRequest { nonce: vec![7; 32] };
        let answer = signer.answer(&request, 1_800_000_000_123).unwrap();
        assert_eq!(answer.nonce, request.nonce);
        let public = UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, key.public_key_raw());
        public
            .verify(
                &time_signed_message(&request.nonce, answer.unix_ms),
                &answer.signature,
            )
            .unwrap();
        // Another time or nonce does not verify with the same signature.
        assert!(public
            .verify(
                &time_signed_message(&request.nonce, answer.unix_ms + 1),
                &answer.signature
            )
            .is_err());
        for bad in [0usize, 15, 65] {
            let err = signer
                .answer(
                    &TimeRequest {
                        nonce: vec![1; bad],
                    },
                    0,
                )
                .unwrap_err();
            assert!(err.to_string().contains(&format!("got {bad}")), "{err}");
        }
        assert!(TimeSigner::from_key_pem("not a key").is_err());
    }
}
