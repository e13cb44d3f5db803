//! EK certificate paths: made with rcgen (roots, intermediates, EK certificates shaped like a
//! TPM vendor's), and the real EK certificate swtpm_setup made with swtpm_localca.

use cairn_attest::credential::EkPublicKey;
use cairn_attest::ekcert::{
    verify_ek_certificate, EkCertError, TrustAnchors, MAX_CERTIFICATE_LEN, MAX_TRUST_ANCHORS,
};
use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SignatureAlgorithm,
    PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384,
};
use rsa::pkcs8::{DecodePrivateKey as _, EncodePublicKey as _};

const TEST_EK_KEY: &str = include_str!("data/test_ek_rsa2048.key.pem");
const SWTPM_EK_CERT: &[u8] = include_bytes!("data/swtpm_ek_cert.der");
const SWTPM_ISSUER: &[u8] = include_bytes!("data/swtpm_localca_issuer.pem");
const SWTPM_ROOT: &[u8] = include_bytes!("data/swtpm_localca_root.pem");

/// 2030-01-01T00:00:00Z.
const NOW: i64 = 1_893_456_000;
/// 2027-01-01T00:00:00Z: after swtpm_localca made its certificates (2026-12-06).
const SWTPM_NOW: i64 = 1_798_761_600;

/// A CA: its certificate (DER) and what signs with it.
struct Ca {
    der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = date_time_ymd(2020, 1, 1);
    params.not_after = date_time_ymd(2040, 1, 1);
    params
}

fn root(name: &str, alg: &'static SignatureAlgorithm) -> Ca {
    let key = KeyPair::generate_for(alg).unwrap();
    let params = ca_params(name);
    let der = params.self_signed(&key).unwrap().der().to_vec();
    Ca {
        der,
        issuer: Issuer::new(params, key),
    }
}

fn intermediate(name: &str, parent: &Ca, params: Option<CertificateParams>) -> Ca {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let params = params.unwrap_or_else(|| ca_params(name));
    let der = params
        .signed_by(&key, &parent.issuer)
        .unwrap()
        .der()
        .to_vec();
    Ca {
        der,
        issuer: Issuer::new(params, key),
    }
}

/// The test RSA-2048 EK public key as DER SubjectPublicKeyInfo.
fn test_ek_spki() -> Vec<u8> {
    rsa::RsaPrivateKey::from_pkcs8_pem(TEST_EK_KEY)
        .unwrap()
        .to_public_key()
        .to_public_key_der()
        .unwrap()
        .into_vec()
}

/// DER TLV with a short or two-byte length.
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    if content.len() < 0x80 {
        out.push(content.len() as u8);
    } else {
        out.extend_from_slice(&[0x82, (content.len() >> 8) as u8, content.len() as u8]);
    }
    out.extend_from_slice(content);
    out
}

/// A critical subject alternative name holding the TPM manufacturer, model and version as a
/// directory name (TCG EK Credential Profile §3.2.9).
fn tpm_manufacturer_san() -> CustomExtension {
    let attribute = |arc: u8, value: &str| {
        let oid = tlv(0x06, &[0x67, 0x81, 0x05, 0x02, arc]);
        let value = tlv(0x0c, value.as_bytes());
        tlv(0x31, &tlv(0x30, &[oid, value].concat()))
    };
    let name = tlv(
        0x30,
        &[
            attribute(1, "id:00001014"),
            attribute(2, "swtpm"),
            attribute(3, "id:20191023"),
        ]
        .concat(),
    );
    let san = tlv(0x30, &tlv(0xa4, &name));
    let mut extension = CustomExtension::from_oid_content(&[2, 5, 29, 17], san);
    extension.set_criticality(true);
    extension
}

/// An EK certificate as TPM vendors make them: empty subject, critical SAN, EKU 2.23.133.8.1,
/// key usage keyEncipherment, notAfter 9999.
fn ek_cert_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::Other(vec![2, 23, 133, 8, 1])];
    params.custom_extensions = vec![tpm_manufacturer_san()];
    params.serial_number = Some(vec![0x01, 0x23, 0x45].into());
    params.use_authority_key_identifier_extension = true;
    params.not_before = date_time_ymd(2021, 6, 1);
    params.not_after = date_time_ymd(9999, 12, 31);
    params
}

fn ek_cert(params: &CertificateParams, spki: &[u8], issuer: &Ca) -> Vec<u8> {
    let public = rcgen::SubjectPublicKeyInfo::from_der(spki).unwrap();
    params
        .signed_by(&public, &issuer.issuer)
        .unwrap()
        .der()
        .to_vec()
}

fn anchors(cas: &[&Ca]) -> TrustAnchors {
    TrustAnchors::from_der_list(cas.iter().map(|ca| ca.der.clone())).unwrap()
}

#[test]
fn an_ek_certificate_signed_by_a_trusted_root_is_accepted() {
    let root = root("Cairn Test EK Root", &PKCS_ECDSA_P256_SHA256);
    let spki = test_ek_spki();
    let cert = ek_cert(&ek_cert_params(), &spki, &root);
    let verified = verify_ek_certificate(&cert, &[], &anchors(&[&root]), NOW).unwrap();
    let expected = EkPublicKey::from_spki_der(&spki).unwrap();
    assert_eq!(verified.spki_sha256_hex, expected.spki_sha256_hex());
    assert_eq!(verified.public, expected);
    assert_eq!(verified.issuer, "CN=Cairn Test EK Root");
    assert_eq!(verified.subject_serial_hex, "012345");
}

#[test]
fn a_vendor_ca_certificate_of_another_kind_is_not_an_ek_certificate() {
    let root = root("Vendor Root", &PKCS_ECDSA_P256_SHA256);
    let spki = test_ek_spki();
    let refused = |params: CertificateParams, why: &str| {
        let cert = ek_cert(&params, &spki, &root);
        match verify_ek_certificate(&cert, &[], &anchors(&[&root]), NOW) {
            Err(EkCertError::NotAnEkCertificate { reason, .. }) => {
                assert!(reason.contains(why), "{reason}")
            }
            other => panic!("expected NotAnEkCertificate ({why}), got {other:?}"),
        }
    };
    // A CA, a TLS server key and a signing key the same vendor CA certified.
    let mut ca = ek_cert_params();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    refused(ca, "CA certificate");
    let mut tls = ek_cert_params();
    tls.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    refused(tls, "tcg-kp-EKCertificate");
    let mut signing = ek_cert_params();
    signing.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    refused(signing, "keyEncipherment");
    // Without key usage and extended key usage (some vendors omit them) it is still an EK.
    let mut bare = ek_cert_params();
    bare.key_usages.clear();
    bare.extended_key_usages.clear();
    let cert = ek_cert(&bare, &spki, &root);
    verify_ek_certificate(&cert, &[], &anchors(&[&root]), NOW).unwrap();
}

#[test]
fn an_ek_certificate_of_an_untrusted_ca_is_refused_naming_the_issuer() {
    let vendor = root("Unknown TPM Vendor CA", &PKCS_ECDSA_P256_SHA256);
    let trusted = root("Cairn Test EK Root", &PKCS_ECDSA_P256_SHA256);
    let cert = ek_cert(&ek_cert_params(), &test_ek_spki(), &vendor);
    let err = verify_ek_certificate(&cert, &[], &anchors(&[&trusted]), NOW).unwrap_err();
    assert_eq!(
        err,
        EkCertError::UntrustedIssuer {
            subject: "(empty)".to_string(),
            issuer: "CN=Unknown TPM Vendor CA".to_string()
        }
    );
    assert!(err.to_string().contains("add its CA certificate"));
}

#[test]
fn a_ca_with_the_trusted_name_but_another_key_is_a_bad_signature() {
    let impostor = root("Cairn Test EK Root", &PKCS_ECDSA_P256_SHA256);
    let trusted = root("Cairn Test EK Root", &PKCS_ECDSA_P256_SHA256);
    let cert = ek_cert(&ek_cert_params(), &test_ek_spki(), &impostor);
    assert!(matches!(
        verify_ek_certificate(&cert, &[], &anchors(&[&trusted]), NOW),
        Err(EkCertError::BadSignature { .. })
    ));
    // With both, the right one is found.
    verify_ek_certificate(&cert, &[], &anchors(&[&trusted, &impostor]), NOW).unwrap();
}

#[test]
fn a_tampered_signature_or_body_is_refused() {
    let root = root("Cairn Test EK Root", &PKCS_ECDSA_P256_SHA256);
    let cert = ek_cert(&ek_cert_params(), &test_ek_spki(), &root);
    let anchors = anchors(&[&root]);

    let mut bad_signature = cert.clone();
    let last = bad_signature.len() - 1;
    bad_signature[last] ^= 0x01;
    assert!(matches!(
        verify_ek_certificate(&bad_signature, &[], &anchors, NOW),
        Err(EkCertError::BadSignature { .. } | EkCertError::Malformed { .. })
    ));

    // A byte of the modulus: the device swapped in its own key.
    let spki = test_ek_spki();
    let at = cert.windows(16).position(|w| w == &spki[100..116]).unwrap();
    let mut other_key = cert.clone();
    other_key[at] ^= 0x01;
    assert!(matches!(
        verify_ek_certificate(&other_key, &[], &anchors, NOW),
        Err(EkCertError::BadSignature { .. })
    ));
}

#[test]
fn an_expired_or_not_yet_valid_path_is_refused() {
    let root = root("Cairn Test EK Root", &PKCS_ECDSA_P256_SHA256);
    let mut params = ek_cert_params();
    params.not_before = date_time_ymd(2000, 1, 1);
    params.not_after = date_time_ymd(2010, 1, 1);
    let expired = ek_cert(&params, &test_ek_spki(), &root);
    assert!(matches!(
        verify_ek_certificate(&expired, &[], &anchors(&[&root]), NOW),
        Err(EkCertError::Expired { .. })
    ));

    let cert = ek_cert(&ek_cert_params(), &test_ek_spki(), &root);
    // 2019: before the EK certificate and the root.
    assert!(matches!(
        verify_ek_certificate(&cert, &[], &anchors(&[&root]), 1_546_300_800),
        Err(EkCertError::NotYetValid { .. })
    ));
    // 2041: the EK certificate runs to 9999, but the root has expired.
    let err = verify_ek_certificate(&cert, &[], &anchors(&[&root]), 2_240_611_200).unwrap_err();
    assert!(
        matches!(&err, EkCertError::Expired { subject, .. } if subject == "CN=Cairn Test EK Root"),
        "{err}"
    );
}

#[test]
fn a_chain_through_an_intermediate_is_accepted() {
    let root = root("Cairn Test EK Root", &PKCS_ECDSA_P384_SHA384);
    let intermediate = intermediate("Cairn Test EK Intermediate", &root, None);
    let cert = ek_cert(&ek_cert_params(), &test_ek_spki(), &intermediate);
    let verified = verify_ek_certificate(
        &cert,
        std::slice::from_ref(&intermediate.der),
        &anchors(&[&root]),
        NOW,
    )
    .unwrap();
    assert_eq!(verified.issuer, "CN=Cairn Test EK Intermediate");
    // The intermediate as an anchor suffices too.
    verify_ek_certificate(&cert, &[], &anchors(&[&intermediate]), NOW).unwrap();
    // Without it the path stops at its name.
    assert_eq!(
        verify_ek_certificate(&cert, &[], &anchors(&[&root]), NOW),
        Err(EkCertError::UntrustedIssuer {
            subject: "(empty)".to_string(),
            issuer: "CN=Cairn Test EK Intermediate".to_string()
        })
    );
}

#[test]
fn an_intermediate_that_is_not_a_ca_is_refused() {
    let root = root("Cairn Test EK Root", &PKCS_ECDSA_P256_SHA256);
    let mut params = ca_params("Not A CA");
    params.is_ca = IsCa::ExplicitNoCa;
    let not_ca = intermediate("Not A CA", &root, Some(params));
    let cert = ek_cert(&ek_cert_params(), &test_ek_spki(), &not_ca);
    assert!(matches!(
        verify_ek_certificate(
            &cert,
            std::slice::from_ref(&not_ca.der),
            &anchors(&[&root]),
            NOW
        ),
        Err(EkCertError::NotACa { .. })
    ));
}

#[test]
fn a_path_length_constraint_is_enforced() {
    let root = root("Cairn Test EK Root", &PKCS_ECDSA_P256_SHA256);
    let mut params = ca_params("Upper");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let upper = intermediate("Upper", &root, Some(params));
    let lower = intermediate("Lower", &upper, None);
    let cert = ek_cert(&ek_cert_params(), &test_ek_spki(), &lower);
    let chain = [lower.der.clone(), upper.der.clone()];
    assert!(matches!(
        verify_ek_certificate(&cert, &chain, &anchors(&[&root]), NOW),
        Err(EkCertError::NotACa { .. })
    ));
}

#[test]
fn an_ec_ek_is_refused_as_unsupported() {
    let root = root("Cairn Test EK Root", &PKCS_ECDSA_P256_SHA256);
    let ec_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = ek_cert_params()
        .signed_by(&ec_key, &root.issuer)
        .unwrap()
        .der()
        .to_vec();
    let err = verify_ek_certificate(&cert, &[], &anchors(&[&root]), NOW).unwrap_err();
    assert!(matches!(err, EkCertError::UnsupportedEkKey { .. }));
    assert!(err.to_string().contains("only RSA-2048 EKs are supported"));
}

#[test]
fn sizes_and_counts_are_bounded() {
    let root = root("Cairn Test EK Root", &PKCS_ECDSA_P256_SHA256);
    let cert = ek_cert(&ek_cert_params(), &test_ek_spki(), &root);
    let anchors = anchors(&[&root]);
    assert!(matches!(
        verify_ek_certificate(&vec![0x30; MAX_CERTIFICATE_LEN + 1], &[], &anchors, NOW),
        Err(EkCertError::TooLarge { .. })
    ));
    assert!(matches!(
        verify_ek_certificate(&cert, &vec![root.der.clone(); 5], &anchors, NOW),
        Err(EkCertError::TooMany { count: 5, .. })
    ));
    let mut padded = cert.clone();
    padded.extend_from_slice(&[0xff; 8]);
    assert!(matches!(
        verify_ek_certificate(&padded, &[], &anchors, NOW),
        Err(EkCertError::Malformed { .. })
    ));
    assert!(matches!(
        TrustAnchors::from_der_list(vec![root.der.clone(); MAX_TRUST_ANCHORS + 1]),
        Err(EkCertError::TooMany { .. })
    ));
    assert!(matches!(
        TrustAnchors::from_der_list(Vec::<Vec<u8>>::new()),
        Err(EkCertError::NoTrustAnchors)
    ));
}

#[test]
fn a_pem_bundle_of_certificates_is_read_and_a_private_key_in_it_refused() {
    let bundle = [SWTPM_ROOT, b"\n", SWTPM_ISSUER].concat();
    assert_eq!(TrustAnchors::from_pem(&bundle).unwrap().len(), 2);
    let key = TEST_EK_KEY.as_bytes();
    let err = TrustAnchors::from_pem(&[SWTPM_ROOT, key].concat()).unwrap_err();
    assert!(err.to_string().contains("PRIVATE KEY"), "{err}");
    assert!(matches!(
        TrustAnchors::from_pem(b"no certificates here"),
        Err(EkCertError::NoTrustAnchors)
    ));
}

#[test]
fn the_real_swtpm_ek_certificate_is_accepted_with_its_local_ca() {
    let both = TrustAnchors::from_pem(&[SWTPM_ROOT, SWTPM_ISSUER].concat()).unwrap();
    let verified = verify_ek_certificate(SWTPM_EK_CERT, &[], &both, SWTPM_NOW).unwrap();
    assert_eq!(verified.issuer, "CN=swtpm-localca");
    assert_eq!(
        verified.spki_sha256_hex,
        "667d5c1a4bbbb1b23b68312160c8b5e32d24e3e7985ae28d35c4872bbf16ca7c"
    );
    assert_eq!(verified.subject_serial_hex, "02");

    // Only the root trusted: the device sends the local CA as an intermediate.
    let root = TrustAnchors::from_pem(SWTPM_ROOT).unwrap();
    let issuer_der = pem_to_der(SWTPM_ISSUER);
    verify_ek_certificate(SWTPM_EK_CERT, &[issuer_der], &root, SWTPM_NOW).unwrap();
}

#[test]
fn the_real_swtpm_ek_certificate_is_refused_without_its_ca_or_before_its_time() {
    let unrelated = root("Cairn Test EK Root", &PKCS_ECDSA_P256_SHA256);
    assert_eq!(
        verify_ek_certificate(SWTPM_EK_CERT, &[], &anchors(&[&unrelated]), SWTPM_NOW),
        Err(EkCertError::UntrustedIssuer {
            subject: "CN=unknown".to_string(),
            issuer: "CN=swtpm-localca".to_string()
        })
    );
    let both = TrustAnchors::from_pem(&[SWTPM_ROOT, SWTPM_ISSUER].concat()).unwrap();
    // 2026-01-01, before swtpm_localca made the certificate.
    assert!(matches!(
        verify_ek_certificate(SWTPM_EK_CERT, &[], &both, 1_767_225_600),
        Err(EkCertError::NotYetValid { .. })
    ));
    // The root's signature over the local CA's certificate is checked too.
    let mut bad_issuer = pem_to_der(SWTPM_ISSUER);
    let last = bad_issuer.len() - 1;
    bad_issuer[last] ^= 0x01;
    let root = TrustAnchors::from_pem(SWTPM_ROOT).unwrap();
    assert!(matches!(
        verify_ek_certificate(SWTPM_EK_CERT, &[bad_issuer], &root, SWTPM_NOW),
        Err(EkCertError::BadSignature { .. })
    ));
}

fn pem_to_der(pem: &[u8]) -> Vec<u8> {
    x509_parser::pem::parse_x509_pem(pem).unwrap().1.contents
}
