//! Hostile input: every parser and check is fed truncated, oversized, garbage and mutated input
//! from a small deterministic fuzz loop. None may panic, and none may accept a changed piece of
//! signed evidence.

use std::collections::BTreeMap;

use cairn_attest::credential::EkPublicKey;
use cairn_attest::ekcert::{verify_ek_certificate, EkCertError, TrustAnchors};
use cairn_attest::keys::{verify_certify, verify_quote, KeyError};
use cairn_attest::tpm2::{Attest, TpmPublic, WireError, MAX_ATTEST_LEN, MAX_PUBLIC_LEN};

const AK_PUBLIC: &[u8] = include_bytes!("data/swtpm_ak.tpmt_public");
const DEVICE_KEY_PUBLIC: &[u8] = include_bytes!("data/swtpm_device_key.tpmt_public");
const EK_PUBLIC: &[u8] = include_bytes!("data/swtpm_ek.tpmt_public");
const EK_CERT: &[u8] = include_bytes!("data/swtpm_ek_cert.der");
const CERTIFY: &[u8] = include_bytes!("data/swtpm_certify.attest");
const CERTIFY_SIGNATURE: &[u8] = include_bytes!("data/swtpm_certify.sig");
const QUOTE: &[u8] = include_bytes!("data/swtpm_quote.attest");
const QUOTE_SIGNATURE: &[u8] = include_bytes!("data/swtpm_quote.sig");
const SWTPM_ISSUER: &[u8] = include_bytes!("data/swtpm_localca_issuer.pem");
const SWTPM_ROOT: &[u8] = include_bytes!("data/swtpm_localca_root.pem");
const QUOTE_NONCE: &[u8] = b"nonce-12345678901234567890123456";
const CERTIFY_EXTRA_DATA: [u8; 4] = [0x00, 0xff, 0x55, 0xaa];
const SWTPM_NOW: i64 = 1_798_761_600;

/// xorshift64*: a fixed sequence, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, max_len: usize) -> Vec<u8> {
        let len = self.below(max_len + 1);
        (0..len).map(|_| self.next() as u8).collect()
    }

    /// `sample` with a few bytes flipped, cut, or inserted.
    fn mutate(&mut self, sample: &[u8]) -> Vec<u8> {
        let mut out = sample.to_vec();
        for _ in 0..1 + self.below(4) {
            match self.below(4) {
                0 | 1 if !out.is_empty() => {
                    let at = self.below(out.len());
                    out[at] ^= 1 << self.below(8);
                }
                2 if !out.is_empty() => {
                    let at = self.below(out.len());
                    out.truncate(at);
                }
                _ => {
                    let at = self.below(out.len() + 1);
                    out.insert(at, self.next() as u8);
                }
            }
        }
        out
    }
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
fn every_truncation_of_real_tpm_structures_is_refused() {
    for sample in [AK_PUBLIC, DEVICE_KEY_PUBLIC, EK_PUBLIC] {
        for len in 0..sample.len() {
            assert!(TpmPublic::parse(&sample[..len]).is_err(), "prefix {len}");
        }
    }
    for sample in [CERTIFY, QUOTE] {
        for len in 0..sample.len() {
            assert!(Attest::parse(&sample[..len]).is_err(), "prefix {len}");
        }
    }
}

#[test]
fn oversized_structures_are_refused_before_parsing() {
    assert!(matches!(
        TpmPublic::parse(&vec![0; MAX_PUBLIC_LEN + 1]),
        Err(WireError::TooLarge { .. })
    ));
    assert!(matches!(
        Attest::parse(&vec![0; MAX_ATTEST_LEN + 1]),
        Err(WireError::TooLarge { .. })
    ));
    // A TPM2B claiming 0xffff bytes inside a small structure.
    let mut public = AK_PUBLIC.to_vec();
    public[8..10].copy_from_slice(&[0xff, 0xff]);
    assert!(matches!(
        TpmPublic::parse(&public),
        Err(WireError::FieldTooLarge {
            field: "authPolicy",
            ..
        })
    ));
}

#[test]
fn random_bytes_never_panic_a_parser() {
    let mut rng = Rng(0x5eed_0001);
    for _ in 0..20_000 {
        let bytes = rng.bytes(1100);
        let _ = TpmPublic::parse(&bytes);
        let _ = Attest::parse(&bytes);
        let _ = EkPublicKey::from_spki_der(&bytes);
        let _ = TrustAnchors::from_der_list([&bytes]);
    }
    for _ in 0..500 {
        let bytes = rng.bytes(4000);
        let _ = TrustAnchors::from_pem(&bytes);
        let mut pem = b"-----BEGIN CERTIFICATE-----\n".to_vec();
        pem.extend(
            rng.bytes(200)
                .iter()
                .map(|b| b"ABCDEFGHIJ+/=\n"[usize::from(*b) % 14]),
        );
        let _ = TrustAnchors::from_pem(&pem);
    }
}

#[test]
fn mutated_tpm_structures_never_panic() {
    let mut rng = Rng(0x5eed_0002);
    for _ in 0..20_000 {
        for sample in [AK_PUBLIC, DEVICE_KEY_PUBLIC, EK_PUBLIC] {
            if let Ok(public) = TpmPublic::parse(&rng.mutate(sample)) {
                let _ = public.p256_spki_der();
                let _ = EkPublicKey::from_tpm_public(&public);
            }
        }
        for sample in [CERTIFY, QUOTE] {
            let _ = Attest::parse(&rng.mutate(sample));
        }
    }
}

#[test]
fn mutated_evidence_is_never_accepted() {
    let ak = TpmPublic::parse(AK_PUBLIC).unwrap();
    let device = TpmPublic::parse(DEVICE_KEY_PUBLIC).unwrap();
    let pcrs = quoted_pcrs();
    let mut rng = Rng(0x5eed_0003);
    for _ in 0..3_000 {
        let quote = rng.mutate(QUOTE);
        let signature = rng.mutate(QUOTE_SIGNATURE);
        if quote != QUOTE || signature != QUOTE_SIGNATURE {
            let result = verify_quote(&ak, &quote, QUOTE_SIGNATURE, QUOTE_NONCE, &pcrs);
            assert!(quote == QUOTE || result.is_err());
            let result = verify_quote(&ak, QUOTE, &signature, QUOTE_NONCE, &pcrs);
            assert!(signature == QUOTE_SIGNATURE || result.is_err());
        }
        let certify = rng.mutate(CERTIFY);
        if certify != CERTIFY {
            assert!(matches!(
                verify_certify(
                    &ak,
                    &certify,
                    CERTIFY_SIGNATURE,
                    &device,
                    &CERTIFY_EXTRA_DATA
                ),
                Err(KeyError::BadSignature { .. } | KeyError::SignatureTooLarge { .. })
            ));
        }
        let garbage = rng.bytes(200);
        assert!(verify_quote(&ak, &garbage, &garbage, QUOTE_NONCE, &pcrs).is_err());
    }
}

#[test]
fn mutated_ek_certificates_never_panic_nor_change_the_key() {
    let anchors = TrustAnchors::from_pem(&[SWTPM_ROOT, SWTPM_ISSUER].concat()).unwrap();
    let genuine = verify_ek_certificate(EK_CERT, &[], &anchors, SWTPM_NOW).unwrap();
    let mut rng = Rng(0x5eed_0004);
    let mut refused = 0;
    for _ in 0..2_000 {
        let cert = rng.mutate(EK_CERT);
        match verify_ek_certificate(&cert, &[], &anchors, SWTPM_NOW) {
            // Only changes outside the signed part can pass; the key stays the genuine one.
            Ok(verified) => assert_eq!(verified.spki_sha256_hex, genuine.spki_sha256_hex),
            Err(_) => refused += 1,
        }
        let chain = vec![rng.mutate(EK_CERT), rng.bytes(300)];
        let _ = verify_ek_certificate(&cert, &chain, &anchors, SWTPM_NOW);
    }
    assert!(refused > 1_900, "only {refused} of 2000 mutations refused");
}

#[test]
fn garbage_certificates_are_malformed() {
    let anchors = TrustAnchors::from_pem(SWTPM_ROOT).unwrap();
    for garbage in [&b""[..], b"\x30", b"\x30\x82\xff\xff", b"not a certificate"] {
        assert!(matches!(
            verify_ek_certificate(garbage, &[], &anchors, SWTPM_NOW),
            Err(EkCertError::Malformed { .. })
        ));
    }
}
