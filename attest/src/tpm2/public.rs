//! TPMT_PUBLIC: the public area of a TPM object (Part 2 §12.2.4), its TPM name, and its P-256
//! point as DER SubjectPublicKeyInfo.

use sha2::{Digest as _, Sha256};

use super::reader::Reader;
use super::*;
use crate::der;

/// Largest TPMT_PUBLIC accepted (an RSA-4096 key with a SHA-512 policy is about 600 bytes).
pub const MAX_PUBLIC_LEN: usize = 1024;
/// Largest RSA modulus (TPM2B_PUBLIC_KEY_RSA, 4096 bits).
const MAX_RSA_MODULUS_LEN: usize = 512;
/// Largest ECC coordinate (TPM2B_ECC_PARAMETER, P-521).
const MAX_ECC_COORDINATE_LEN: usize = 66;

const STRUCTURE: &str = "TPMT_PUBLIC";

/// TPMA_OBJECT: the attribute bits of a TPM object (Part 2 §8.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ObjectAttributes(pub u32);

impl ObjectAttributes {
    /// fixedTPM: the object cannot be duplicated out of this TPM.
    pub const FIXED_TPM: Self = Self(1 << 1);
    /// stClear: the object is flushed at TPM Restart.
    pub const ST_CLEAR: Self = Self(1 << 2);
    /// fixedParent: the object cannot be moved to another parent.
    pub const FIXED_PARENT: Self = Self(1 << 4);
    /// sensitiveDataOrigin: the TPM generated the private part itself.
    pub const SENSITIVE_DATA_ORIGIN: Self = Self(1 << 5);
    /// userWithAuth: the user role may be authorised with the auth value.
    pub const USER_WITH_AUTH: Self = Self(1 << 6);
    /// adminWithPolicy: the admin role needs a policy session.
    pub const ADMIN_WITH_POLICY: Self = Self(1 << 7);
    /// noDA: the object is not subject to dictionary-attack protection.
    pub const NO_DA: Self = Self(1 << 10);
    /// restricted: the key only signs TPM-generated structures (or only decrypts TPM formats).
    pub const RESTRICTED: Self = Self(1 << 16);
    /// decrypt: the key decrypts.
    pub const DECRYPT: Self = Self(1 << 17);
    /// sign: the key signs (with `decrypt` on a symmetric key: encrypts).
    pub const SIGN: Self = Self(1 << 18);

    /// Whether every bit of `other` is set.
    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

/// TPMT_SYM_DEF_OBJECT: the symmetric algorithm of a storage key (NULL for signing keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SymmetricDefinition {
    /// TPM_ALG_NULL.
    Null,
    /// A block cipher (AES, SM4, Camellia) with its key size and mode.
    Cipher {
        /// The TPM_ALG_ID of the cipher.
        algorithm: u16,
        /// Key size in bits.
        key_bits: u16,
        /// The TPM_ALG_ID of the mode (e.g. [`TPM_ALG_CFB`]).
        mode: u16,
    },
}

impl SymmetricDefinition {
    /// AES-128 in CFB mode, the symmetric algorithm of the default EK template.
    pub const AES_128_CFB: Self = Self::Cipher {
        algorithm: TPM_ALG_AES,
        key_bits: 128,
        mode: TPM_ALG_CFB,
    };
}

/// A TPMT_RSA_SCHEME, TPMT_ECC_SCHEME or TPMT_KDF_SCHEME: an algorithm and, for most, a hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scheme {
    /// The scheme's TPM_ALG_ID ([`TPM_ALG_NULL`] when none).
    pub algorithm: u16,
    /// The scheme's hash algorithm (none for NULL and RSAES).
    pub hash: Option<u16>,
    /// The ECDAA commit count (ECDAA only).
    pub count: Option<u16>,
}

impl Scheme {
    /// No scheme (TPM_ALG_NULL).
    pub const NULL: Self = Self {
        algorithm: TPM_ALG_NULL,
        hash: None,
        count: None,
    };
    /// ECDSA with SHA-256, the scheme of Cairn's attestation key.
    pub const ECDSA_SHA256: Self = Self {
        algorithm: TPM_ALG_ECDSA,
        hash: Some(TPM_ALG_SHA256),
        count: None,
    };
}

/// The RSA parameters (TPMS_RSA_PARMS) and modulus of an RSA object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RsaPublic {
    /// Symmetric algorithm (AES-128-CFB for the EK).
    pub symmetric: SymmetricDefinition,
    /// Signing or encryption scheme.
    pub scheme: Scheme,
    /// Modulus size in bits.
    pub key_bits: u16,
    /// Public exponent; 0 means the default 65537.
    pub exponent: u32,
    /// The modulus, big-endian, as the TPM gave it.
    pub modulus: Vec<u8>,
}

/// The ECC parameters (TPMS_ECC_PARMS) and point of an ECC object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EccPublic {
    /// Symmetric algorithm (NULL for signing keys).
    pub symmetric: SymmetricDefinition,
    /// Signing or key-exchange scheme.
    pub scheme: Scheme,
    /// TPM_ECC_CURVE (e.g. [`TPM_ECC_NIST_P256`]).
    pub curve: u16,
    /// Key derivation scheme.
    pub kdf: Scheme,
    /// X coordinate, big-endian, as the TPM gave it (leading zeros may be dropped).
    pub x: Vec<u8>,
    /// Y coordinate, big-endian, as the TPM gave it.
    pub y: Vec<u8>,
}

/// The type-specific part of a public area: parameters and unique field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKeyParams {
    /// TPM_ALG_RSA.
    Rsa(RsaPublic),
    /// TPM_ALG_ECC.
    Ecc(EccPublic),
}

/// A parsed TPMT_PUBLIC with its raw bytes and TPM name. Only RSA and ECC objects with a SHA-256
/// name algorithm are accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmPublic {
    raw: Vec<u8>,
    name: Vec<u8>,
    attributes: ObjectAttributes,
    auth_policy: Vec<u8>,
    key: PublicKeyParams,
}

impl TpmPublic {
    /// Parses a marshalled TPMT_PUBLIC, without the TPM2B size prefix (what tss-esapi's
    /// `Public::marshall()` returns).
    ///
    /// # Errors
    /// A [`WireError`] naming the field when the bytes are truncated, too long, carry trailing
    /// bytes, or select an algorithm Cairn does not handle (only RSA and ECC objects with name
    /// algorithm SHA-256).
    pub fn parse(tpmt_public: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(STRUCTURE, tpmt_public, MAX_PUBLIC_LEN)?;
        let object_type = r.u16("type")?;
        if object_type != TPM_ALG_RSA && object_type != TPM_ALG_ECC {
            return Err(r.unsupported("type", object_type, "RSA (0x0001) and ECC (0x0023) keys"));
        }
        let name_alg = r.u16("nameAlg")?;
        if name_alg != TPM_ALG_SHA256 {
            return Err(r.unsupported(
                "nameAlg",
                name_alg,
                "SHA-256 (0x000b): create the key with name algorithm sha256",
            ));
        }
        let attributes = ObjectAttributes(r.u32("objectAttributes")?);
        let auth_policy = r.sized("authPolicy", MAX_DIGEST_LEN)?.to_vec();
        let key = if object_type == TPM_ALG_RSA {
            PublicKeyParams::Rsa(rsa_public(&mut r)?)
        } else {
            PublicKeyParams::Ecc(ecc_public(&mut r)?)
        };
        r.finish()?;
        let mut name = TPM_ALG_SHA256.to_be_bytes().to_vec();
        name.extend_from_slice(&Sha256::digest(tpmt_public));
        Ok(Self {
            raw: tpmt_public.to_vec(),
            name,
            attributes,
            auth_policy,
            key,
        })
    }

    /// The marshalled TPMT_PUBLIC this was parsed from.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// The TPM name: nameAlg (big-endian) followed by the SHA-256 digest of the TPMT_PUBLIC.
    pub fn name(&self) -> &[u8] {
        &self.name
    }

    /// The name algorithm; always [`TPM_ALG_SHA256`] (others are refused by [`Self::parse`]).
    pub fn name_alg(&self) -> u16 {
        TPM_ALG_SHA256
    }

    /// The object's TPM type: [`TPM_ALG_RSA`] or [`TPM_ALG_ECC`].
    pub fn object_type(&self) -> u16 {
        match self.key {
            PublicKeyParams::Rsa(_) => TPM_ALG_RSA,
            PublicKeyParams::Ecc(_) => TPM_ALG_ECC,
        }
    }

    /// The object attributes.
    pub fn attributes(&self) -> ObjectAttributes {
        self.attributes
    }

    /// The authorization policy digest (empty when none).
    pub fn auth_policy(&self) -> &[u8] {
        &self.auth_policy
    }

    /// The type-specific parameters and public key.
    pub fn key(&self) -> &PublicKeyParams {
        &self.key
    }

    /// The key as DER SubjectPublicKeyInfo (`id-ecPublicKey`, `prime256v1`, uncompressed point),
    /// as in an X.509 certificate or CSR.
    ///
    /// # Errors
    /// [`WireError::Unsupported`] when the key is not ECC on NIST P-256,
    /// [`WireError::FieldTooLarge`] when a coordinate is longer than 32 bytes.
    pub fn p256_spki_der(&self) -> Result<Vec<u8>, WireError> {
        let (x, y) = self.p256_coordinates()?;
        Ok(der::spki_ec_p256(&x, &y))
    }

    /// The uncompressed P-256 point `04 || x || y` (what ring's ECDSA verification takes).
    pub(crate) fn p256_point(&self) -> Result<Vec<u8>, WireError> {
        let (x, y) = self.p256_coordinates()?;
        Ok(der::uncompressed_point(&x, &y))
    }

    /// X and Y left-padded to 32 bytes.
    fn p256_coordinates(&self) -> Result<(Vec<u8>, Vec<u8>), WireError> {
        let ecc = match &self.key {
            PublicKeyParams::Ecc(ecc) if ecc.curve == TPM_ECC_NIST_P256 => ecc,
            PublicKeyParams::Ecc(ecc) => {
                return Err(WireError::Unsupported {
                    structure: STRUCTURE,
                    field: "curveID",
                    value: ecc.curve.into(),
                    accepted: "NIST P-256 (0x0003)",
                })
            }
            PublicKeyParams::Rsa(_) => {
                return Err(WireError::Unsupported {
                    structure: STRUCTURE,
                    field: "type",
                    value: TPM_ALG_RSA.into(),
                    accepted: "ECC (0x0023) keys on NIST P-256",
                })
            }
        };
        let pad = |value: &[u8], field| {
            der::left_pad(value, der::P256_COORDINATE_LEN).ok_or(WireError::FieldTooLarge {
                structure: STRUCTURE,
                field,
                len: value.len(),
                max: der::P256_COORDINATE_LEN,
            })
        };
        Ok((pad(&ecc.x, "unique.x")?, pad(&ecc.y, "unique.y")?))
    }
}

/// TPMS_RSA_PARMS and TPM2B_PUBLIC_KEY_RSA.
fn rsa_public(r: &mut Reader<'_>) -> Result<RsaPublic, WireError> {
    let symmetric = symmetric_definition(r)?;
    let algorithm = r.u16("parameters.scheme")?;
    let scheme = match algorithm {
        TPM_ALG_NULL => Scheme::NULL,
        TPM_ALG_RSAES => Scheme {
            algorithm,
            hash: None,
            count: None,
        },
        TPM_ALG_RSASSA | TPM_ALG_RSAPSS | TPM_ALG_OAEP => Scheme {
            algorithm,
            hash: Some(r.u16("parameters.scheme.hashAlg")?),
            count: None,
        },
        other => {
            return Err(r.unsupported(
                "parameters.scheme",
                other,
                "NULL, RSASSA, RSAPSS, RSAES or OAEP",
            ))
        }
    };
    let key_bits = r.u16("parameters.keyBits")?;
    let exponent = r.u32("parameters.exponent")?;
    let modulus = r.sized("unique.rsa", MAX_RSA_MODULUS_LEN)?.to_vec();
    Ok(RsaPublic {
        symmetric,
        scheme,
        key_bits,
        exponent,
        modulus,
    })
}

/// TPMS_ECC_PARMS and TPMS_ECC_POINT.
fn ecc_public(r: &mut Reader<'_>) -> Result<EccPublic, WireError> {
    let symmetric = symmetric_definition(r)?;
    let algorithm = r.u16("parameters.scheme")?;
    let scheme = match algorithm {
        TPM_ALG_NULL => Scheme::NULL,
        TPM_ALG_ECDSA | TPM_ALG_ECDH | TPM_ALG_SM2 | TPM_ALG_ECSCHNORR | TPM_ALG_ECMQV => Scheme {
            algorithm,
            hash: Some(r.u16("parameters.scheme.hashAlg")?),
            count: None,
        },
        TPM_ALG_ECDAA => Scheme {
            algorithm,
            hash: Some(r.u16("parameters.scheme.hashAlg")?),
            count: Some(r.u16("parameters.scheme.count")?),
        },
        other => {
            return Err(r.unsupported(
                "parameters.scheme",
                other,
                "NULL, ECDSA, ECDH, ECDAA, SM2, ECSCHNORR or ECMQV",
            ))
        }
    };
    let curve = r.u16("parameters.curveID")?;
    let algorithm = r.u16("parameters.kdf")?;
    let kdf = match algorithm {
        TPM_ALG_NULL => Scheme::NULL,
        TPM_ALG_MGF1 | TPM_ALG_KDF1_SP800_56A | TPM_ALG_KDF2 | TPM_ALG_KDF1_SP800_108 => Scheme {
            algorithm,
            hash: Some(r.u16("parameters.kdf.hashAlg")?),
            count: None,
        },
        other => {
            return Err(r.unsupported(
                "parameters.kdf",
                other,
                "NULL, MGF1, KDF1_SP800_56A, KDF2 or KDF1_SP800_108",
            ))
        }
    };
    let x = r.sized("unique.x", MAX_ECC_COORDINATE_LEN)?.to_vec();
    let y = r.sized("unique.y", MAX_ECC_COORDINATE_LEN)?.to_vec();
    Ok(EccPublic {
        symmetric,
        scheme,
        curve,
        kdf,
        x,
        y,
    })
}

/// TPMT_SYM_DEF_OBJECT: NULL, or a block cipher with key bits and mode.
fn symmetric_definition(r: &mut Reader<'_>) -> Result<SymmetricDefinition, WireError> {
    match r.u16("parameters.symmetric")? {
        TPM_ALG_NULL => Ok(SymmetricDefinition::Null),
        algorithm @ (TPM_ALG_AES | TPM_ALG_SM4 | TPM_ALG_CAMELLIA) => {
            Ok(SymmetricDefinition::Cipher {
                algorithm,
                key_bits: r.u16("parameters.symmetric.keyBits")?,
                mode: r.u16("parameters.symmetric.mode")?,
            })
        }
        other => Err(r.unsupported("parameters.symmetric", other, "NULL, AES, SM4 or CAMELLIA")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tpm2::marshal::ecc_public_area;

    const ECDSA_SHA256: [u8; 4] = [0x00, 0x18, 0x00, 0x0b];

    #[test]
    fn an_ecc_signing_key_parses_field_by_field() {
        let bytes = ecc_public_area(0x0005_0072, &ECDSA_SHA256, &[0x11; 32], &[0x22; 32]);
        let public = TpmPublic::parse(&bytes).unwrap();
        assert_eq!(public.object_type(), TPM_ALG_ECC);
        assert_eq!(public.attributes(), ObjectAttributes(0x0005_0072));
        assert!(public.attributes().contains(ObjectAttributes::RESTRICTED));
        assert!(!public.attributes().contains(ObjectAttributes::DECRYPT));
        let PublicKeyParams::Ecc(ecc) = public.key() else {
            panic!("not ECC")
        };
        assert_eq!(ecc.scheme, Scheme::ECDSA_SHA256);
        assert_eq!(ecc.symmetric, SymmetricDefinition::Null);
        assert_eq!(ecc.kdf, Scheme::NULL);
        assert_eq!(public.raw(), &bytes[..]);
    }

    #[test]
    fn the_name_is_the_sha256_of_the_public_area_after_its_algorithm() {
        let bytes = ecc_public_area(0x0004_0072, &ECDSA_SHA256, &[1; 32], &[2; 32]);
        let public = TpmPublic::parse(&bytes).unwrap();
        assert_eq!(&public.name()[..2], &[0x00, 0x0b]);
        assert_eq!(&public.name()[2..], Sha256::digest(&bytes).as_slice());
    }

    #[test]
    fn short_coordinates_are_left_padded_in_the_spki() {
        let mut x = vec![0x7f; 31];
        x.insert(0, 0x00);
        let bytes = ecc_public_area(0, &ECDSA_SHA256, &x[1..], &[0x22; 32]);
        let spki = TpmPublic::parse(&bytes).unwrap().p256_spki_der().unwrap();
        assert_eq!(&spki[27..59], &x[..]);
    }

    #[test]
    fn a_33_byte_coordinate_with_a_leading_zero_is_accepted() {
        let mut x = vec![0x00];
        x.extend_from_slice(&[0x99; 32]);
        let bytes = ecc_public_area(0, &ECDSA_SHA256, &x, &[0x22; 32]);
        let spki = TpmPublic::parse(&bytes).unwrap().p256_spki_der().unwrap();
        assert_eq!(&spki[27..59], &[0x99; 32]);
    }

    #[test]
    fn a_coordinate_longer_than_p256_has_no_spki() {
        let bytes = ecc_public_area(0, &ECDSA_SHA256, &[0x11; 33], &[0x22; 32]);
        let public = TpmPublic::parse(&bytes).unwrap();
        assert!(matches!(
            public.p256_spki_der(),
            Err(WireError::FieldTooLarge {
                field: "unique.x",
                ..
            })
        ));
    }

    #[test]
    fn another_curve_has_no_p256_spki() {
        let mut bytes = ecc_public_area(0, &ECDSA_SHA256, &[1; 48], &[2; 48]);
        // curveID sits after type, nameAlg, attributes, authPolicy, symmetric and scheme.
        bytes[16..18].copy_from_slice(&0x0004u16.to_be_bytes());
        let public = TpmPublic::parse(&bytes).unwrap();
        assert!(matches!(
            public.p256_spki_der(),
            Err(WireError::Unsupported {
                field: "curveID",
                value: 4,
                ..
            })
        ));
    }

    #[test]
    fn a_name_algorithm_other_than_sha256_is_refused() {
        let mut bytes = ecc_public_area(0, &ECDSA_SHA256, &[1; 32], &[2; 32]);
        bytes[2..4].copy_from_slice(&TPM_ALG_SHA384.to_be_bytes());
        assert!(matches!(
            TpmPublic::parse(&bytes),
            Err(WireError::Unsupported {
                field: "nameAlg",
                ..
            })
        ));
    }

    #[test]
    fn a_keyedhash_object_is_refused() {
        let mut bytes = ecc_public_area(0, &ECDSA_SHA256, &[1; 32], &[2; 32]);
        bytes[0..2].copy_from_slice(&TPM_ALG_KEYEDHASH.to_be_bytes());
        assert!(matches!(
            TpmPublic::parse(&bytes),
            Err(WireError::Unsupported { field: "type", .. })
        ));
    }

    #[test]
    fn every_truncation_and_a_trailing_byte_are_refused() {
        let bytes = ecc_public_area(0, &ECDSA_SHA256, &[1; 32], &[2; 32]);
        for len in 0..bytes.len() {
            assert!(
                matches!(
                    TpmPublic::parse(&bytes[..len]),
                    Err(WireError::Truncated { .. })
                ),
                "prefix of {len} bytes"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            TpmPublic::parse(&longer),
            Err(WireError::TrailingBytes {
                structure: STRUCTURE,
                count: 1
            })
        );
    }
}
