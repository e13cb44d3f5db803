//! What Cairn requires of the attestation key and the device key, read from their public areas.

use super::KeyError;
use crate::tpm2::{
    EccPublic, ObjectAttributes, PublicKeyParams, Scheme, SymmetricDefinition, TpmPublic,
    TPM_ECC_NIST_P256,
};

const AK: &str = "attestation key";
const DEVICE_KEY: &str = "device key";

/// The attributes that make a key non-exportable and TPM-generated.
const RESIDENT: &[(ObjectAttributes, &str)] = &[
    (ObjectAttributes::FIXED_TPM, "fixedTPM"),
    (ObjectAttributes::FIXED_PARENT, "fixedParent"),
    (
        ObjectAttributes::SENSITIVE_DATA_ORIGIN,
        "sensitiveDataOrigin",
    ),
];

/// Checks that `ak` can serve as an attestation key: ECC NIST P-256, restricted signing key
/// (signs only TPM-generated structures), resident in its TPM (fixedTPM, fixedParent,
/// sensitiveDataOrigin), not a decryption key, scheme ECDSA-SHA256, no symmetric algorithm.
/// (The name algorithm is SHA-256: [`TpmPublic::parse`] refuses others.)
///
/// # Errors
/// [`KeyError::NotP256`], [`KeyError::MissingAttribute`], [`KeyError::ForbiddenAttribute`] or
/// [`KeyError::WrongScheme`] naming what is wrong.
pub fn check_attestation_key(ak: &TpmPublic) -> Result<(), KeyError> {
    let ecc = check_p256_signing_key(AK, ak)?;
    require(AK, ak, ObjectAttributes::RESTRICTED, "restricted")?;
    if ecc.scheme != Scheme::ECDSA_SHA256 {
        return Err(KeyError::WrongScheme {
            role: AK,
            found: describe_scheme(&ecc.scheme),
        });
    }
    Ok(())
}

/// Checks that `key` is a TPM-resident ECC P-256 signing key (fixedTPM, fixedParent,
/// sensitiveDataOrigin, sign, not decrypt) and that it is the key of the certificate request:
/// its SubjectPublicKeyInfo equals `csr_spki_der` byte for byte.
///
/// # Errors
/// [`KeyError::NotP256`], [`KeyError::MissingAttribute`], [`KeyError::ForbiddenAttribute`],
/// or [`KeyError::DeviceKeyMismatch`] when the CSR carries another key.
pub fn check_device_key(key: &TpmPublic, csr_spki_der: &[u8]) -> Result<(), KeyError> {
    check_p256_signing_key(DEVICE_KEY, key)?;
    let spki = key.p256_spki_der().map_err(|source| KeyError::Malformed {
        what: "device key public area",
        source,
    })?;
    if spki != csr_spki_der {
        return Err(KeyError::DeviceKeyMismatch);
    }
    Ok(())
}

/// ECC P-256, sign, resident attributes, no decrypt, no symmetric algorithm; the ECC parameters.
fn check_p256_signing_key<'k>(
    role: &'static str,
    key: &'k TpmPublic,
) -> Result<&'k EccPublic, KeyError> {
    let ecc = match key.key() {
        PublicKeyParams::Ecc(ecc) if ecc.curve == TPM_ECC_NIST_P256 => ecc,
        PublicKeyParams::Ecc(ecc) => {
            return Err(KeyError::NotP256 {
                role,
                found: format!("ECC curve {:#06x}", ecc.curve),
            })
        }
        PublicKeyParams::Rsa(rsa) => {
            return Err(KeyError::NotP256 {
                role,
                found: format!("RSA-{}", rsa.key_bits),
            })
        }
    };
    for &(attribute, name) in RESIDENT {
        require(role, key, attribute, name)?;
    }
    require(role, key, ObjectAttributes::SIGN, "sign")?;
    if key.attributes().contains(ObjectAttributes::DECRYPT) {
        return Err(KeyError::ForbiddenAttribute {
            role,
            attribute: "decrypt",
        });
    }
    if ecc.symmetric != SymmetricDefinition::Null {
        return Err(KeyError::WrongScheme {
            role,
            found: "a signing key with a symmetric algorithm (a storage key)".to_string(),
        });
    }
    Ok(ecc)
}

/// `attribute` must be set.
fn require(
    role: &'static str,
    key: &TpmPublic,
    attribute: ObjectAttributes,
    name: &'static str,
) -> Result<(), KeyError> {
    if key.attributes().contains(attribute) {
        Ok(())
    } else {
        Err(KeyError::MissingAttribute {
            role,
            attribute: name,
        })
    }
}

/// "scheme 0x0018 with hash 0x000c", for errors.
fn describe_scheme(scheme: &Scheme) -> String {
    match scheme.hash {
        Some(hash) => format!("scheme {:#06x} with hash {hash:#06x}", scheme.algorithm),
        None => format!("scheme {:#06x}", scheme.algorithm),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tpm2::marshal::ecc_public_area;

    /// fixedTPM | fixedParent | sensitiveDataOrigin | userWithAuth | restricted | sign.
    const AK_ATTRIBUTES: u32 = 0x0005_0072;
    /// fixedTPM | fixedParent | sensitiveDataOrigin | userWithAuth | noDA | sign.
    const DEVICE_ATTRIBUTES: u32 = 0x0004_0472;
    const ECDSA_SHA256: [u8; 4] = [0x00, 0x18, 0x00, 0x0b];

    fn key(attributes: u32, scheme: &[u8]) -> TpmPublic {
        TpmPublic::parse(&ecc_public_area(attributes, scheme, &[1; 32], &[2; 32])).unwrap()
    }

    #[test]
    fn an_ak_made_like_tpm2_createak_passes() {
        check_attestation_key(&key(AK_ATTRIBUTES, &ECDSA_SHA256)).unwrap();
    }

    #[test]
    fn an_ak_missing_each_required_attribute_is_refused_by_name() {
        for (bit, name) in [
            (1 << 1, "fixedTPM"),
            (1 << 4, "fixedParent"),
            (1 << 5, "sensitiveDataOrigin"),
            (1 << 16, "restricted"),
            (1 << 18, "sign"),
        ] {
            assert_eq!(
                check_attestation_key(&key(AK_ATTRIBUTES & !bit, &ECDSA_SHA256)),
                Err(KeyError::MissingAttribute {
                    role: AK,
                    attribute: name
                })
            );
        }
    }

    #[test]
    fn an_ak_that_also_decrypts_is_refused() {
        assert_eq!(
            check_attestation_key(&key(AK_ATTRIBUTES | 1 << 17, &ECDSA_SHA256)),
            Err(KeyError::ForbiddenAttribute {
                role: AK,
                attribute: "decrypt"
            })
        );
    }

    #[test]
    fn an_ak_with_another_scheme_is_refused() {
        let sha384 = [0x00, 0x18, 0x00, 0x0c];
        assert!(matches!(
            check_attestation_key(&key(AK_ATTRIBUTES, &sha384)),
            Err(KeyError::WrongScheme { .. })
        ));
        assert!(matches!(
            check_attestation_key(&key(AK_ATTRIBUTES, &[0x00, 0x10])),
            Err(KeyError::WrongScheme { .. })
        ));
    }

    #[test]
    fn a_device_key_matching_its_csr_passes() {
        let device = key(DEVICE_ATTRIBUTES, &ECDSA_SHA256);
        let spki = device.p256_spki_der().unwrap();
        check_device_key(&device, &spki).unwrap();
    }

    #[test]
    fn a_device_key_with_another_csr_key_is_refused() {
        let device = key(DEVICE_ATTRIBUTES, &ECDSA_SHA256);
        let mut spki = device.p256_spki_der().unwrap();
        *spki.last_mut().unwrap() ^= 1;
        assert_eq!(
            check_device_key(&device, &spki),
            Err(KeyError::DeviceKeyMismatch)
        );
    }

    #[test]
    fn an_exportable_device_key_is_refused() {
        let device = key(DEVICE_ATTRIBUTES & !(1 << 1), &ECDSA_SHA256);
        let spki = device.p256_spki_der().unwrap();
        assert_eq!(
            check_device_key(&device, &spki),
            Err(KeyError::MissingAttribute {
                role: DEVICE_KEY,
                attribute: "fixedTPM"
            })
        );
    }
}
