//! The RSA-2048 endorsement key public key and its identity hash.

use sha2::{Digest as _, Sha256};
use x509_parser::oid_registry::OID_PKCS1_RSAENCRYPTION;
use x509_parser::prelude::FromDer as _;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

use super::CredentialError;
use crate::der;
use crate::tpm2::{ObjectAttributes, PublicKeyParams, SymmetricDefinition, TpmPublic};

/// Modulus size of an RSA-2048 key in bytes.
const RSA_2048_MODULUS_LEN: usize = 256;
/// The exponent a TPM public area reports as 0.
const DEFAULT_RSA_EXPONENT: u32 = 65537;
/// Largest SubjectPublicKeyInfo accepted (an RSA-2048 one is 294 bytes).
const MAX_SPKI_LEN: usize = 1024;

/// An RSA-2048 endorsement key public key: the modulus (without leading zeros, 256 bytes) and
/// the public exponent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EkPublicKey {
    modulus: Vec<u8>,
    exponent: u32,
}

impl EkPublicKey {
    /// The EK from a DER SubjectPublicKeyInfo (e.g. from its EK certificate).
    ///
    /// # Errors
    /// [`CredentialError::UnsupportedEk`] for a key that is not RSA-2048,
    /// [`CredentialError::MalformedEk`] for DER that does not parse.
    pub fn from_spki_der(spki_der: &[u8]) -> Result<Self, CredentialError> {
        let malformed = |reason: String| CredentialError::MalformedEk { reason };
        if spki_der.len() > MAX_SPKI_LEN {
            return Err(malformed(format!(
                "the SubjectPublicKeyInfo is {} bytes, more than {MAX_SPKI_LEN}",
                spki_der.len()
            )));
        }
        let (rest, spki) = SubjectPublicKeyInfo::from_der(spki_der)
            .map_err(|e| malformed(format!("not a DER SubjectPublicKeyInfo: {e}")))?;
        if !rest.is_empty() {
            return Err(malformed(format!(
                "{} bytes follow the SubjectPublicKeyInfo",
                rest.len()
            )));
        }
        if spki.algorithm.algorithm != OID_PKCS1_RSAENCRYPTION {
            return Err(CredentialError::UnsupportedEk {
                reason: format!(
                    "the key algorithm is {}, not rsaEncryption",
                    spki.algorithm.algorithm
                ),
            });
        }
        match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => Self::from_parts(rsa.modulus, rsa.exponent),
            _ => Err(malformed("the RSAPublicKey does not parse".to_string())),
        }
    }

    /// The EK from its TPM public area (TPMT_PUBLIC). It must follow the default EK template:
    /// RSA-2048, a restricted decryption key, symmetric AES-128-CFB (name algorithm SHA-256 is
    /// checked by [`TpmPublic::parse`]); MakeCredential derives its keys from these.
    ///
    /// # Errors
    /// [`CredentialError::UnsupportedEk`] naming the part that differs from the template.
    pub fn from_tpm_public(public: &TpmPublic) -> Result<Self, CredentialError> {
        let unsupported = |reason: &str| CredentialError::UnsupportedEk {
            reason: reason.to_string(),
        };
        let PublicKeyParams::Rsa(rsa) = public.key() else {
            return Err(unsupported("the EK is an ECC key"));
        };
        if rsa.key_bits != 2048 {
            return Err(CredentialError::UnsupportedEk {
                reason: format!("the EK is RSA-{}", rsa.key_bits),
            });
        }
        if rsa.symmetric != SymmetricDefinition::AES_128_CFB {
            return Err(unsupported(
                "the EK's symmetric algorithm is not AES-128-CFB",
            ));
        }
        let storage =
            ObjectAttributes(ObjectAttributes::RESTRICTED.0 | ObjectAttributes::DECRYPT.0);
        if !public.attributes().contains(storage) {
            return Err(unsupported("the EK is not a restricted decryption key"));
        }
        let exponent = match rsa.exponent {
            0 => DEFAULT_RSA_EXPONENT,
            e => e,
        };
        Self::from_parts(&rsa.modulus, &exponent.to_be_bytes())
    }

    /// Checks a big-endian modulus and exponent.
    fn from_parts(modulus: &[u8], exponent: &[u8]) -> Result<Self, CredentialError> {
        let modulus = der::strip_leading_zeros(modulus);
        if modulus.len() != RSA_2048_MODULUS_LEN || modulus[0] & 0x80 == 0 {
            let bits = match modulus.first() {
                Some(first) => modulus.len() * 8 - first.leading_zeros() as usize,
                None => 0,
            };
            return Err(CredentialError::UnsupportedEk {
                reason: format!("the EK is a {bits}-bit RSA key"),
            });
        }
        let exponent = der::strip_leading_zeros(exponent);
        if exponent.len() > 4 {
            return Err(CredentialError::UnsupportedEk {
                reason: "the EK's public exponent is larger than 32 bits".to_string(),
            });
        }
        let exponent = exponent.iter().fold(0u32, |e, &b| e << 8 | u32::from(b));
        if exponent < 3 || exponent % 2 == 0 {
            return Err(CredentialError::MalformedEk {
                reason: format!("the public exponent {exponent} is not an odd number above 1"),
            });
        }
        Ok(Self {
            modulus: modulus.to_vec(),
            exponent,
        })
    }

    /// The modulus, big-endian, 256 bytes.
    pub fn modulus(&self) -> &[u8] {
        &self.modulus
    }

    /// The public exponent.
    pub fn exponent(&self) -> u32 {
        self.exponent
    }

    /// DER SubjectPublicKeyInfo: `rsaEncryption` with NULL parameters and
    /// `RSAPublicKey { n, e }`, minimally encoded (as `tpm2_createek -f der` writes it).
    pub fn spki_der(&self) -> Vec<u8> {
        der::spki_rsa(&self.modulus, self.exponent)
    }

    /// Lower-case hex SHA-256 of [`Self::spki_der`]: the TPM identity enrollment uses, equal to
    /// `cairn_tpm::ek_public_sha256` on the device.
    pub fn spki_sha256_hex(&self) -> String {
        hex::encode(Sha256::digest(self.spki_der()))
    }

    /// The key for the `rsa` crate.
    pub(super) fn rsa_public_key(&self) -> Result<rsa::RsaPublicKey, CredentialError> {
        rsa::RsaPublicKey::new(
            rsa::BigUint::from_bytes_be(&self.modulus),
            rsa::BigUint::from(self.exponent),
        )
        .map_err(|e| CredentialError::MalformedEk {
            reason: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn modulus() -> Vec<u8> {
        let mut m = vec![0xc5u8; 256];
        m[255] = 0x01;
        m
    }

    #[test]
    fn the_spki_round_trips_through_der() {
        let ek = EkPublicKey::from_parts(&modulus(), &[0x01, 0x00, 0x01]).unwrap();
        let again = EkPublicKey::from_spki_der(&ek.spki_der()).unwrap();
        assert_eq!(again, ek);
        assert_eq!(again.exponent(), 65537);
    }

    #[test]
    fn a_modulus_with_a_leading_zero_is_the_same_key() {
        let mut padded = vec![0x00];
        padded.extend_from_slice(&modulus());
        let ek = EkPublicKey::from_parts(&padded, &[0x01, 0x00, 0x01]).unwrap();
        assert_eq!(ek.modulus(), &modulus()[..]);
    }

    #[test]
    fn other_rsa_sizes_are_refused_with_their_size() {
        let small = vec![0xc5u8; 128];
        let err = EkPublicKey::from_parts(&small, &[3]).unwrap_err();
        assert!(err.to_string().contains("1024-bit"), "{err}");
        assert!(err.to_string().contains("only RSA-2048 EKs are supported"));
        let mut short = modulus();
        short[0] = 0x7f;
        assert!(matches!(
            EkPublicKey::from_parts(&short, &[3]),
            Err(CredentialError::UnsupportedEk { .. })
        ));
    }

    #[test]
    fn even_or_tiny_exponents_are_refused() {
        for e in [&[][..], &[1], &[2], &[0x01, 0x00, 0x00]] {
            assert!(matches!(
                EkPublicKey::from_parts(&modulus(), e),
                Err(CredentialError::MalformedEk { .. })
            ));
        }
    }

    #[test]
    fn an_ec_spki_is_refused_as_unsupported() {
        let ec = der::spki_ec_p256(&[1; 32], &[2; 32]);
        assert!(matches!(
            EkPublicKey::from_spki_der(&ec),
            Err(CredentialError::UnsupportedEk { .. })
        ));
    }

    #[test]
    fn trailing_bytes_after_the_spki_are_refused() {
        let ek = EkPublicKey::from_parts(&modulus(), &[0x01, 0x00, 0x01]).unwrap();
        let mut der = ek.spki_der();
        der.push(0);
        assert!(matches!(
            EkPublicKey::from_spki_der(&der),
            Err(CredentialError::MalformedEk { .. })
        ));
    }
}
