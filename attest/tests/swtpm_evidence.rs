//! Evidence produced by a real TPM (swtpm 0.7 with tpm2-tools 5.4; see `data/README.md`): the
//! parsers and checks accept what a TPM actually marshals, and the EK identity hash equals the
//! hash of the DER public key OpenSSL extracts from the EK certificate.

use std::collections::BTreeMap;

use cairn_attest::credential::EkPublicKey;
use cairn_attest::keys::{
    check_attestation_key, check_device_key, verify_certify, verify_quote, KeyError,
};
use cairn_attest::tpm2::{
    Attest, Attested, ObjectAttributes, PublicKeyParams, Scheme, SymmetricDefinition, TpmPublic,
    TPM_ALG_SHA256, TPM_ECC_NIST_P256,
};

const AK_PUBLIC: &[u8] = include_bytes!("data/swtpm_ak.tpmt_public");
const DEVICE_KEY_PUBLIC: &[u8] = include_bytes!("data/swtpm_device_key.tpmt_public");
const EK_PUBLIC: &[u8] = include_bytes!("data/swtpm_ek.tpmt_public");
const EK_CERT: &[u8] = include_bytes!("data/swtpm_ek_cert.der");
const CERTIFY: &[u8] = include_bytes!("data/swtpm_certify.attest");
const CERTIFY_SIGNATURE: &[u8] = include_bytes!("data/swtpm_certify.sig");
const QUOTE: &[u8] = include_bytes!("data/swtpm_quote.attest");
const QUOTE_SIGNATURE: &[u8] = include_bytes!("data/swtpm_quote.sig");

/// The AK's name as `tpm2_createak -n` wrote it.
const AK_NAME: &str = "000b62dd365d69af6a1d893c8e7442acdfa50823e4bced13dd87a4bd1338ea283ca9";
/// `tpm2_certify` without qualifying data uses these four bytes.
const CERTIFY_EXTRA_DATA: [u8; 4] = [0x00, 0xff, 0x55, 0xaa];
/// The nonce given to `tpm2_quote -q`.
const QUOTE_NONCE: &[u8] = b"nonce-12345678901234567890123456";
/// `sha256sum` of `openssl x509 -pubkey` of the EK certificate, as DER.
const EK_SPKI_SHA256: &str = "667d5c1a4bbbb1b23b68312160c8b5e32d24e3e7985ae28d35c4872bbf16ca7c";

fn ak() -> TpmPublic {
    TpmPublic::parse(AK_PUBLIC).unwrap()
}

fn quoted_pcrs() -> BTreeMap<u8, [u8; 32]> {
    let mut pcr16 = [0u8; 32];
    hex::decode_to_slice(
        "debb3e7acfff6dd18d501042273629f0b79cb206bb8c24f59f62ddb80849403b",
        &mut pcr16,
    )
    .unwrap();
    BTreeMap::from([(0, [0; 32]), (1, [0; 32]), (7, [0; 32]), (16, pcr16)])
}

#[test]
fn the_ak_of_tpm2_createak_parses_and_passes_the_ak_policy() {
    let ak = ak();
    assert_eq!(hex::encode(ak.name()), AK_NAME);
    assert_eq!(ak.attributes(), ObjectAttributes(0x0005_0072));
    let PublicKeyParams::Ecc(ecc) = ak.key() else {
        panic!("the AK is not ECC")
    };
    assert_eq!(ecc.curve, TPM_ECC_NIST_P256);
    assert_eq!(ecc.scheme, Scheme::ECDSA_SHA256);
    assert_eq!(
        hex::encode(&ecc.x),
        "acaa3d2450d6b692bacfe136ea0273a8d4c4ed112ea0b0e09933fe67987bf3ea"
    );
    check_attestation_key(&ak).unwrap();
}

#[test]
fn the_device_key_passes_the_device_key_policy_with_its_own_spki() {
    let device = TpmPublic::parse(DEVICE_KEY_PUBLIC).unwrap();
    let spki = device.p256_spki_der().unwrap();
    check_device_key(&device, &spki).unwrap();
    // It is not restricted, so it cannot serve as an AK.
    assert!(matches!(
        check_attestation_key(&device),
        Err(KeyError::MissingAttribute {
            attribute: "restricted",
            ..
        })
    ));
}

#[test]
fn the_certify_of_the_device_key_by_the_ak_verifies() {
    let device = TpmPublic::parse(DEVICE_KEY_PUBLIC).unwrap();
    verify_certify(
        &ak(),
        CERTIFY,
        CERTIFY_SIGNATURE,
        &device,
        &CERTIFY_EXTRA_DATA,
    )
    .unwrap();
    let attest = Attest::parse(CERTIFY).unwrap();
    assert_eq!(hex::encode(&attest.qualified_signer[..2]), "000b");
}

#[test]
fn the_certify_does_not_vouch_for_the_ak_itself() {
    assert!(matches!(
        verify_certify(
            &ak(),
            CERTIFY,
            CERTIFY_SIGNATURE,
            &ak(),
            &CERTIFY_EXTRA_DATA
        ),
        Err(KeyError::CertifiedNameMismatch { .. })
    ));
}

#[test]
fn the_quote_verifies_against_the_pcr_values_tpm2_pcrread_showed() {
    let info = verify_quote(&ak(), QUOTE, QUOTE_SIGNATURE, QUOTE_NONCE, &quoted_pcrs()).unwrap();
    assert_eq!(info.clock_info.reset_count, 2);
    assert_eq!(info.clock_info.restart_count, 0);
    assert!(info.clock_info.safe);
    assert_eq!(info.firmware_version, 0x2019_1023_0016_3636);
    let Attested::Quote { pcr_select, .. } = Attest::parse(QUOTE).unwrap().attested else {
        panic!("not a quote")
    };
    assert_eq!(pcr_select[0].hash, TPM_ALG_SHA256);
}

#[test]
fn the_quote_refuses_another_nonce_and_other_pcr_values() {
    assert_eq!(
        verify_quote(
            &ak(),
            QUOTE,
            QUOTE_SIGNATURE,
            b"nonce-00000000000000000000000000",
            &quoted_pcrs()
        ),
        Err(KeyError::NonceMismatch)
    );
    let mut values = quoted_pcrs();
    values.insert(16, [0; 32]);
    assert_eq!(
        verify_quote(&ak(), QUOTE, QUOTE_SIGNATURE, QUOTE_NONCE, &values),
        Err(KeyError::PcrDigestMismatch)
    );
}

#[test]
fn the_ek_public_area_has_the_default_template_and_the_certificate_key() {
    let public = TpmPublic::parse(EK_PUBLIC).unwrap();
    let PublicKeyParams::Rsa(rsa) = public.key() else {
        panic!("the EK is not RSA")
    };
    assert_eq!(rsa.symmetric, SymmetricDefinition::AES_128_CFB);
    assert_eq!(rsa.exponent, 0);
    let ek = EkPublicKey::from_tpm_public(&public).unwrap();
    assert_eq!(ek.exponent(), 65537);
    assert_eq!(ek.spki_sha256_hex(), EK_SPKI_SHA256);

    let cert = x509_spki(EK_CERT);
    let from_cert = EkPublicKey::from_spki_der(&cert).unwrap();
    assert_eq!(from_cert, ek);
    // Re-encoding gives back the certificate's SubjectPublicKeyInfo byte for byte.
    assert_eq!(ek.spki_der(), cert);
}

/// The SubjectPublicKeyInfo of a DER certificate, cut out by hand: SEQUENCE { tbsCertificate
/// SEQUENCE { [0] version, serial, signature, issuer, validity, subject, spki, ... } }.
fn x509_spki(cert: &[u8]) -> Vec<u8> {
    fn tlv(bytes: &[u8]) -> (usize, usize) {
        // (header length, content length)
        let first = bytes[1];
        if first < 0x80 {
            return (2, usize::from(first));
        }
        let n = usize::from(first & 0x7f);
        let len = bytes[2..2 + n]
            .iter()
            .fold(0usize, |l, &b| l << 8 | usize::from(b));
        (2 + n, len)
    }
    let (h, _) = tlv(cert);
    let tbs = &cert[h..];
    let (h, _) = tlv(tbs);
    let mut rest = &tbs[h..];
    // Skip version, serial, signature, issuer, validity, subject.
    for _ in 0..6 {
        let (h, l) = tlv(rest);
        rest = &rest[h + l..];
    }
    let (h, l) = tlv(rest);
    rest[..h + l].to_vec()
}
