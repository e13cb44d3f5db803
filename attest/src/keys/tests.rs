//! Certify and quote verification with an AK made in software (ring P-256), so each check can be
//! made to fail on its own.

use std::collections::BTreeMap;

use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_ASN1_SIGNING};
use sha2::{Digest as _, Sha256};

use super::*;
use crate::tpm2::attest::tests::{attest_head, quote};
use crate::tpm2::marshal::ecc_public_area;
use crate::tpm2::{TpmPublic, TPM_ST_ATTEST_CERTIFY};

/// fixedTPM | fixedParent | sensitiveDataOrigin | userWithAuth | restricted | sign.
const AK_ATTRIBUTES: u32 = 0x0005_0072;
/// fixedTPM | fixedParent | sensitiveDataOrigin | userWithAuth | noDA | sign.
const DEVICE_ATTRIBUTES: u32 = 0x0004_0472;
const ECDSA_SHA256: [u8; 4] = [0x00, 0x18, 0x00, 0x0b];

struct SoftwareAk {
    key: EcdsaKeyPair,
    public: TpmPublic,
}

impl SoftwareAk {
    fn new(attributes: u32) -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let point = key.public_key().as_ref();
        let area = ecc_public_area(attributes, &ECDSA_SHA256, &point[1..33], &point[33..]);
        let public = TpmPublic::parse(&area).unwrap();
        Self { key, public }
    }

    fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.key
            .sign(&SystemRandom::new(), message)
            .unwrap()
            .as_ref()
            .to_vec()
    }
}

fn pcr_values() -> BTreeMap<u8, [u8; 32]> {
    BTreeMap::from([(0, [0x00; 32]), (7, [0x07; 32]), (11, [0x0b; 32])])
}

fn digest_of(values: &BTreeMap<u8, [u8; 32]>) -> Vec<u8> {
    let mut h = Sha256::new();
    for v in values.values() {
        h.update(v);
    }
    h.finalize().to_vec()
}

/// PCRs 0, 7 and 11 as a TPMS_PCR_SELECTION bitmap.
const BITMAP_0_7_11: [u8; 3] = [0x81, 0x08, 0x00];

#[test]
fn a_quote_signed_by_the_ak_over_the_reported_values_verifies() {
    let ak = SoftwareAk::new(AK_ATTRIBUTES);
    let values = pcr_values();
    let attest = quote(b"nonce-1", &BITMAP_0_7_11, &digest_of(&values));
    let info = verify_quote(&ak.public, &attest, &ak.sign(&attest), b"nonce-1", &values).unwrap();
    assert_eq!(info.clock_info.clock, 1234);
    assert_eq!(info.clock_info.reset_count, 5);
    assert_eq!(info.clock_info.restart_count, 6);
    assert_eq!(info.firmware_version, 0x2019_1023_0016_3636);
}

#[test]
fn a_quote_for_another_nonce_is_a_replay() {
    let ak = SoftwareAk::new(AK_ATTRIBUTES);
    let values = pcr_values();
    let attest = quote(b"old-nonce", &BITMAP_0_7_11, &digest_of(&values));
    assert_eq!(
        verify_quote(
            &ak.public,
            &attest,
            &ak.sign(&attest),
            b"new-nonce",
            &values
        ),
        Err(KeyError::NonceMismatch)
    );
}

#[test]
fn a_quote_over_other_values_is_a_digest_mismatch() {
    let ak = SoftwareAk::new(AK_ATTRIBUTES);
    let values = pcr_values();
    let attest = quote(b"n", &BITMAP_0_7_11, &digest_of(&values));
    let mut reported = values.clone();
    reported.insert(7, [0xee; 32]);
    assert_eq!(
        verify_quote(&ak.public, &attest, &ak.sign(&attest), b"n", &reported),
        Err(KeyError::PcrDigestMismatch)
    );
}

#[test]
fn a_quote_over_other_pcrs_is_a_selection_mismatch() {
    let ak = SoftwareAk::new(AK_ATTRIBUTES);
    let values = pcr_values();
    let attest = quote(b"n", &BITMAP_0_7_11, &digest_of(&values));
    let mut reported = values.clone();
    reported.insert(4, [0x04; 32]);
    let err = verify_quote(&ak.public, &attest, &ak.sign(&attest), b"n", &reported).unwrap_err();
    assert_eq!(
        err,
        KeyError::PcrSelectionMismatch {
            expected: "{0,4,7,11}".to_string(),
            found: "sha256:{0,7,11}".to_string()
        }
    );
}

#[test]
fn a_quote_over_no_pcr_is_refused() {
    let ak = SoftwareAk::new(AK_ATTRIBUTES);
    let none = BTreeMap::new();
    let attest = quote(b"n", &[0, 0, 0], &digest_of(&none));
    let err = verify_quote(&ak.public, &attest, &ak.sign(&attest), b"n", &none).unwrap_err();
    assert!(
        matches!(err, KeyError::PcrSelectionMismatch { .. }),
        "{err:?}"
    );
}

#[test]
fn a_quote_over_two_banks_is_a_selection_mismatch() {
    let ak = SoftwareAk::new(AK_ATTRIBUTES);
    let values = pcr_values();
    let mut attest = attest_head(crate::tpm2::TPM_ST_ATTEST_QUOTE, b"n");
    attest.extend_from_slice(&2u32.to_be_bytes());
    for hash in [0x000bu16, 0x0004] {
        attest.extend_from_slice(&hash.to_be_bytes());
        attest.push(3);
        attest.extend_from_slice(&BITMAP_0_7_11);
    }
    attest.extend_from_slice(&[0x00, 0x20]);
    attest.extend_from_slice(&digest_of(&values));
    assert!(matches!(
        verify_quote(&ak.public, &attest, &ak.sign(&attest), b"n", &values),
        Err(KeyError::PcrSelectionMismatch { .. })
    ));
}

#[test]
fn a_quote_with_a_tampered_byte_or_another_signer_fails_its_signature() {
    let ak = SoftwareAk::new(AK_ATTRIBUTES);
    let values = pcr_values();
    let attest = quote(b"n", &BITMAP_0_7_11, &digest_of(&values));
    let signature = ak.sign(&attest);
    let mut tampered = attest.clone();
    tampered[50] ^= 1;
    assert_eq!(
        verify_quote(&ak.public, &tampered, &signature, b"n", &values),
        Err(KeyError::BadSignature { what: "quote" })
    );
    let other = SoftwareAk::new(AK_ATTRIBUTES);
    assert_eq!(
        verify_quote(&other.public, &attest, &signature, b"n", &values),
        Err(KeyError::BadSignature { what: "quote" })
    );
    assert!(matches!(
        verify_quote(&ak.public, &attest, &[0x30; 129], b"n", &values),
        Err(KeyError::SignatureTooLarge { len: 129, .. })
    ));
}

#[test]
fn a_quote_by_a_non_restricted_key_is_refused_before_its_signature() {
    let key = SoftwareAk::new(DEVICE_ATTRIBUTES);
    let values = pcr_values();
    let attest = quote(b"n", &BITMAP_0_7_11, &digest_of(&values));
    assert_eq!(
        verify_quote(&key.public, &attest, &key.sign(&attest), b"n", &values),
        Err(KeyError::MissingAttribute {
            role: "attestation key",
            attribute: "restricted"
        })
    );
}

fn certify(extra_data: &[u8], name: &[u8]) -> Vec<u8> {
    let mut attest = attest_head(TPM_ST_ATTEST_CERTIFY, extra_data);
    attest.extend_from_slice(&(name.len() as u16).to_be_bytes());
    attest.extend_from_slice(name);
    attest.extend_from_slice(&[0x00, 0x00]);
    attest
}

#[test]
fn a_certify_of_the_device_key_with_the_challenge_verifies() {
    let ak = SoftwareAk::new(AK_ATTRIBUTES);
    let device = SoftwareAk::new(DEVICE_ATTRIBUTES).public;
    let attest = certify(b"challenge", device.name());
    verify_certify(
        &ak.public,
        &attest,
        &ak.sign(&attest),
        &device,
        b"challenge",
    )
    .unwrap();
}

#[test]
fn a_certify_of_another_key_is_refused_with_both_names() {
    let ak = SoftwareAk::new(AK_ATTRIBUTES);
    let device = SoftwareAk::new(DEVICE_ATTRIBUTES).public;
    let other = SoftwareAk::new(DEVICE_ATTRIBUTES).public;
    let attest = certify(b"c", other.name());
    assert_eq!(
        verify_certify(&ak.public, &attest, &ak.sign(&attest), &device, b"c"),
        Err(KeyError::CertifiedNameMismatch {
            expected: hex::encode(device.name()),
            certified: hex::encode(other.name())
        })
    );
}

#[test]
fn a_certify_with_a_stale_challenge_is_refused() {
    let ak = SoftwareAk::new(AK_ATTRIBUTES);
    let device = SoftwareAk::new(DEVICE_ATTRIBUTES).public;
    let attest = certify(b"old", device.name());
    assert_eq!(
        verify_certify(&ak.public, &attest, &ak.sign(&attest), &device, b"new"),
        Err(KeyError::ExtraDataMismatch)
    );
}

#[test]
fn a_quote_is_not_accepted_as_a_certify_nor_the_reverse() {
    let ak = SoftwareAk::new(AK_ATTRIBUTES);
    let device = SoftwareAk::new(DEVICE_ATTRIBUTES).public;
    let values = pcr_values();
    let q = quote(b"n", &BITMAP_0_7_11, &digest_of(&values));
    assert_eq!(
        verify_certify(&ak.public, &q, &ak.sign(&q), &device, b"n"),
        Err(KeyError::WrongAttestType {
            expected: "certification",
            found: "quote"
        })
    );
    let c = certify(b"n", device.name());
    assert_eq!(
        verify_quote(&ak.public, &c, &ak.sign(&c), b"n", &values),
        Err(KeyError::WrongAttestType {
            expected: "quote",
            found: "certification"
        })
    );
}

#[test]
fn signed_garbage_is_malformed_not_accepted() {
    let ak = SoftwareAk::new(AK_ATTRIBUTES);
    let device = SoftwareAk::new(DEVICE_ATTRIBUTES).public;
    let garbage = b"not a TPMS_ATTEST".to_vec();
    assert!(matches!(
        verify_certify(&ak.public, &garbage, &ak.sign(&garbage), &device, b""),
        Err(KeyError::Malformed { .. })
    ));
}
