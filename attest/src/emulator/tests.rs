//! The emulator's evidence against every check central makes, and its TPM commands against
//! their inverses.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_ASN1_SIGNING};
use rsa::pkcs8::DecodePrivateKey as _;
use x509_parser::prelude::{FromDer as _, X509Certificate};

use super::*;
use crate::credential::{make_credential, ActivateError, EkPublicKey};
use crate::ekcert::{verify_ek_certificate, EkCertError, TrustAnchors};
use crate::keys::{
    check_attestation_key, check_device_key, verify_certify, verify_quote, KeyError,
};
use crate::tpm2::TpmPublic;

/// 2030-01-01T00:00:00Z.
const NOW: i64 = 1_893_456_000;
const TEST_EK_KEY: &str = include_str!("../../tests/data/test_ek_rsa2048.key.pem");

/// One vendor and one TPM with a freshly generated EK, shared: RSA key generation takes seconds
/// in a debug build.
fn vendor_and_tpm() -> &'static (EmulatorVendor, SoftwareTpm) {
    static SHARED: OnceLock<(EmulatorVendor, SoftwareTpm)> = OnceLock::new();
    SHARED.get_or_init(|| {
        let vendor = EmulatorVendor::new();
        let tpm = vendor.tpm();
        (vendor, tpm)
    })
}

/// A second TPM of the same vendor, with the fixed test EK (no key generation).
fn other_tpm(vendor: &EmulatorVendor) -> SoftwareTpm {
    let ek = rsa::RsaPrivateKey::from_pkcs8_pem(TEST_EK_KEY).unwrap();
    vendor.tpm_with_ek(ek).unwrap()
}

fn anchors(vendor: &EmulatorVendor) -> TrustAnchors {
    TrustAnchors::from_pem(vendor.ca_cert_pem().as_bytes()).unwrap()
}

/// A device key's DER SubjectPublicKeyInfo (the private half is not needed here).
fn device_key_spki() -> Vec<u8> {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
    let key =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let point = key.public_key().as_ref();
    crate::der::spki_ec_p256(&point[1..33], &point[33..])
}

fn ek_of(tpm: &SoftwareTpm, vendor: &EmulatorVendor) -> EkPublicKey {
    verify_ek_certificate(tpm.ek_certificate_der(), &[], &anchors(vendor), NOW)
        .unwrap()
        .public
}

#[test]
fn evidence_from_the_emulator_passes_every_check_central_makes() {
    let (vendor, tpm) = vendor_and_tpm();
    let spki = device_key_spki();
    let qualifying_data = [0x5a; 32];
    let evidence = tpm.evidence(&spki, &qualifying_data).unwrap();

    assert!(evidence.ek_chain_der.is_empty());
    let verified =
        verify_ek_certificate(&evidence.ek_certificate_der, &[], &anchors(vendor), NOW).unwrap();
    assert_eq!(verified.spki_sha256_hex.len(), 64);
    let ak = TpmPublic::parse(&evidence.ak_public).unwrap();
    check_attestation_key(&ak).unwrap();
    assert_eq!(ak.name(), tpm.ak_name());
    let device_key = TpmPublic::parse(&evidence.device_key_public).unwrap();
    check_device_key(&device_key, &spki).unwrap();
    verify_certify(
        &ak,
        &evidence.certify_info,
        &evidence.certify_signature,
        &device_key,
        &qualifying_data,
    )
    .unwrap();
    // The certification is for this qualifying data only.
    assert_eq!(
        verify_certify(
            &ak,
            &evidence.certify_info,
            &evidence.certify_signature,
            &device_key,
            &[0x5b; 32],
        ),
        Err(KeyError::ExtraDataMismatch)
    );
}

#[test]
fn the_ek_certificate_has_the_shape_of_a_tcg_ek_certificate() {
    let (_, tpm) = vendor_and_tpm();
    let (_, cert) = X509Certificate::from_der(tpm.ek_certificate_der()).unwrap();
    assert!(cert.subject().as_raw().len() <= 2, "empty subject");
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert_eq!(eku.other.len(), 1);
    assert_eq!(eku.other[0].to_id_string(), "2.23.133.8.1");
    let usage = cert.key_usage().unwrap().unwrap().value;
    assert!(usage.key_encipherment() && !usage.key_cert_sign());
    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert!(san.critical);
    assert!(!cert.basic_constraints().unwrap().unwrap().value.ca);
}

#[test]
fn another_vendors_ca_does_not_vouch_for_the_emulators_tpms() {
    let (_, tpm) = vendor_and_tpm();
    let stranger = EmulatorVendor::new();
    assert!(matches!(
        verify_ek_certificate(tpm.ek_certificate_der(), &[], &anchors(&stranger), NOW),
        Err(EkCertError::UntrustedIssuer { .. })
    ));
}

#[test]
fn a_credential_made_for_the_ak_activates_to_its_secret() {
    let (vendor, tpm) = vendor_and_tpm();
    let made = make_credential(
        &ek_of(tpm, vendor),
        tpm.ak_name(),
        b"the secret of this challenge 32b",
        &SystemRandom::new(),
    )
    .unwrap();
    let secret = tpm
        .activate_credential(&made.id_object, &made.encrypted_secret)
        .unwrap();
    assert_eq!(secret.as_slice(), b"the secret of this challenge 32b");
}

#[test]
fn a_credential_for_another_ak_name_is_refused() {
    let (vendor, tpm) = vendor_and_tpm();
    let other = other_tpm(vendor);
    let made = make_credential(
        &ek_of(tpm, vendor),
        other.ak_name(),
        &[7; 32],
        &SystemRandom::new(),
    )
    .unwrap();
    assert_eq!(
        tpm.activate_credential(&made.id_object, &made.encrypted_secret),
        Err(ActivateError::Integrity {
            object_name_hex: hex::encode(tpm.ak_name())
        })
    );
}

#[test]
fn a_credential_to_another_tpms_ek_is_refused() {
    let (vendor, tpm) = vendor_and_tpm();
    let other = other_tpm(vendor);
    let made = make_credential(
        &ek_of(&other, vendor),
        tpm.ak_name(),
        &[7; 32],
        &SystemRandom::new(),
    )
    .unwrap();
    assert_eq!(
        tpm.activate_credential(&made.id_object, &made.encrypted_secret),
        Err(ActivateError::Seed)
    );
}

fn boot_pcrs() -> BTreeMap<u8, [u8; 32]> {
    [0u8, 2, 4, 7, 11]
        .into_iter()
        .map(|index| (index, [index; 32]))
        .collect()
}

#[test]
fn a_quote_verifies_for_its_nonce_and_values_only() {
    let (_, tpm) = vendor_and_tpm();
    let ak = TpmPublic::parse(&tpm.ak_public()).unwrap();
    let pcrs = boot_pcrs();
    let quote = tpm.quote(b"nonce-1", &pcrs).unwrap();
    let info = verify_quote(&ak, &quote.attest, &quote.signature_der, b"nonce-1", &pcrs).unwrap();
    assert_eq!(info.firmware_version, EMULATOR_FIRMWARE_VERSION);
    assert!(info.clock_info.safe);
    assert_eq!(
        verify_quote(&ak, &quote.attest, &quote.signature_der, b"nonce-2", &pcrs),
        Err(KeyError::NonceMismatch)
    );
    let mut changed = pcrs.clone();
    changed.insert(7, [0xee; 32]);
    assert_eq!(
        verify_quote(
            &ak,
            &quote.attest,
            &quote.signature_der,
            b"nonce-1",
            &changed
        ),
        Err(KeyError::PcrDigestMismatch)
    );
}

#[test]
fn a_quote_of_another_tpm_does_not_verify_with_this_ak() {
    let (vendor, tpm) = vendor_and_tpm();
    let other = other_tpm(vendor);
    let pcrs = boot_pcrs();
    let quote = other.quote(b"n", &pcrs).unwrap();
    let ak = TpmPublic::parse(&tpm.ak_public()).unwrap();
    assert_eq!(
        verify_quote(&ak, &quote.attest, &quote.signature_der, b"n", &pcrs),
        Err(KeyError::BadSignature { what: "quote" })
    );
}

#[test]
fn a_pcr_the_tpm_does_not_have_and_an_oversized_nonce_are_refused() {
    let (_, tpm) = vendor_and_tpm();
    let pcrs = BTreeMap::from([(24, [0; 32])]);
    assert_eq!(
        tpm.quote(b"n", &pcrs),
        Err(EmulatorError::NoSuchPcr { index: 24 })
    );
    assert!(matches!(
        tpm.quote(&[0; 67], &boot_pcrs()),
        Err(EmulatorError::DataTooLong { len: 67, .. })
    ));
}

#[test]
fn a_device_key_that_is_not_p256_is_refused() {
    let (_, tpm) = vendor_and_tpm();
    let mut spki = device_key_spki();
    assert!(tpm.device_key_public(&spki).is_ok());
    // The curve OID's last byte: prime256v1 becomes another curve.
    spki[25] ^= 1;
    assert_eq!(
        tpm.device_key_public(&spki),
        Err(EmulatorError::NotP256DeviceKey)
    );
    assert_eq!(
        tpm.device_key_public(&[0x30]),
        Err(EmulatorError::NotP256DeviceKey)
    );
}
