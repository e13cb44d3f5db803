//! Host integration tests of the device side of TPM attestation against a real swtpm: the EK
//! certificate from NV, the attestation key, certify, credential activation and quotes.
//!
//! swtpm serves one TPM connection at a time: a test opens the attestation key before a device
//! key on the same swtpm, and drops the device key before quoting or activating.

use std::path::Path;

use cairn_testsupport::{require_tool, Swtpm, VendorCa};
use cairn_tpm::{
    ek_certificate, ek_public_sha256, extend_pcr, parse_tcti, read_pcrs, AttestationKey,
    PcrSelection, TpmDeviceKey, TpmError,
};
use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1};
use sha2::{Digest as _, Sha256};
use tss_esapi::abstraction::ek;
use tss_esapi::interface_types::algorithm::AsymmetricAlgorithm;
use tss_esapi::structures::{Digest, Name, Public};
use tss_esapi::traits::UnMarshall;
use x509_parser::certificate::X509Certificate;
use x509_parser::pem::Pem;
use x509_parser::prelude::FromDer;

/// Whether the tools for a TPM with EK certificates are here (else the test is skipped loudly).
fn can_manufacture() -> bool {
    require_tool("swtpm") && require_tool("swtpm_setup") && require_tool("swtpm_localca")
}

/// The DER certificates of a PEM bundle.
fn pem_ders(pem: &[u8]) -> Vec<Vec<u8>> {
    Pem::iter_from_buffer(pem)
        .map(|p| p.unwrap().contents)
        .collect()
}

fn parse(der: &[u8]) -> X509Certificate<'_> {
    let (rest, cert) = X509Certificate::from_der(der).unwrap();
    assert!(
        rest.is_empty(),
        "{} bytes after the certificate",
        rest.len()
    );
    cert
}

#[test]
fn the_ek_certificate_holds_the_ek_and_chains_to_its_vendor_only() {
    if !can_manufacture() {
        return;
    }
    let vendor = VendorCa::temporary();
    let tpm = Swtpm::start_with_ek_cert(&vendor);
    let der = ek_certificate(&tpm.tcti())
        .unwrap()
        .expect("an EK certificate");
    let cert = parse(&der);
    assert_eq!(
        hex::encode(Sha256::digest(cert.public_key().raw)),
        ek_public_sha256(&tpm.tcti()).unwrap(),
        "the certificate is for this TPM's RSA 2048 EK"
    );

    let anchors = pem_ders(&vendor.anchors_pem());
    assert_eq!(anchors.len(), 2, "issuer and root");
    let (issuer, root) = (parse(&anchors[0]), parse(&anchors[1]));
    cert.verify_signature(Some(issuer.public_key()))
        .expect("the vendor's issuer signed the EK certificate");
    issuer
        .verify_signature(Some(root.public_key()))
        .expect("the vendor's root signed its issuer");

    let other_vendor = VendorCa::temporary();
    let other = pem_ders(&other_vendor.anchors_pem());
    assert!(
        cert.verify_signature(Some(parse(&other[0]).public_key()))
            .is_err(),
        "another vendor's CA does not vouch for this EK"
    );
}

#[test]
fn a_tpm_without_an_ek_certificate_has_none() {
    if !require_tool("swtpm") {
        return;
    }
    let tpm = Swtpm::start();
    assert_eq!(ek_certificate(&tpm.tcti()).unwrap(), None);
    // Reading an absent index leaves the TPM usable.
    ek_public_sha256(&tpm.tcti()).unwrap();
}

#[test]
fn an_unreachable_tpm_is_an_error_not_an_absent_certificate() {
    let port = cairn_testsupport::free_port();
    let err = ek_certificate(&format!("swtpm:host=127.0.0.1,port={port}")).unwrap_err();
    assert!(matches!(err, TpmError::OpenTcti { .. }), "{err:?}");
}

/// Define NV index 0x01c00002 on `tpm` as an owner would, holding `contents`.
fn write_ek_cert_index(tpm: &Swtpm, contents: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("nv.bin");
    std::fs::write(&file, contents).unwrap();
    let run = |args: &[&str]| {
        let output = std::process::Command::new(args[0])
            .env("TSS2_LOG", "all+none")
            .arg("-T")
            .arg(tpm.tcti())
            .args(&args[1..])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let size = contents.len().to_string();
    run(&[
        "tpm2_nvdefine",
        "-C",
        "o",
        "-s",
        &size,
        "-a",
        "ownerread|ownerwrite|authread|authwrite|no_da",
        "0x01c00002",
    ]);
    run(&[
        "tpm2_nvwrite",
        "-C",
        "o",
        "-i",
        file.to_str().unwrap(),
        "0x01c00002",
    ]);
}

#[test]
fn padding_after_the_certificate_in_nv_is_cut_off() {
    if !require_tool("swtpm") || !require_tool("tpm2_nvdefine") {
        return;
    }
    // A 1,028-byte DER SEQUENCE and 200 bytes of 0xff padding: more than swtpm reads from NV in
    // one command (1,024 bytes), so the read takes two chunks.
    let mut sequence = vec![0x30, 0x82, 0x04, 0x00];
    sequence.extend((0..1024u32).map(|i| (i % 251) as u8));
    let mut padded = sequence.clone();
    padded.extend_from_slice(&[0xff; 200]);
    let tpm = Swtpm::start();
    write_ek_cert_index(&tpm, &padded);
    assert_eq!(ek_certificate(&tpm.tcti()).unwrap(), Some(sequence));
}

#[test]
fn an_index_without_a_der_sequence_is_a_clear_error() {
    if !require_tool("swtpm") || !require_tool("tpm2_nvdefine") {
        return;
    }
    let tpm = Swtpm::start();
    write_ek_cert_index(&tpm, &[0xff; 64]);
    let err = ek_certificate(&tpm.tcti()).unwrap_err();
    assert!(matches!(err, TpmError::BadEkCertificate { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("0x01c00002"), "{message}");
    assert!(message.contains("64 bytes"), "{message}");
}

/// `TPM_GENERATED_VALUE`, the magic of every TPMS_ATTEST.
const TPM_GENERATED: [u8; 4] = [0xff, 0x54, 0x43, 0x47];
/// `TPM_ST_ATTEST_CERTIFY`.
const ST_ATTEST_CERTIFY: [u8; 2] = [0x80, 0x17];
/// `TPM_ST_ATTEST_QUOTE`.
const ST_ATTEST_QUOTE: [u8; 2] = [0x80, 0x18];

/// The uncompressed P-256 point of a marshalled TPMT_PUBLIC.
fn ecc_point(public_area: &[u8]) -> Vec<u8> {
    let Public::Ecc { unique, .. } = Public::unmarshall(public_area).unwrap() else {
        panic!("not an ECC public area");
    };
    let pad = |v: &[u8]| [vec![0u8; 32 - v.len()], v.to_vec()].concat();
    [vec![0x04], pad(unique.x().value()), pad(unique.y().value())].concat()
}

/// The TPM name of an object: nameAlg SHA-256 (`00 0b`) || SHA-256(TPMT_PUBLIC).
fn name_of(public_area: &[u8]) -> Vec<u8> {
    [&[0x00, 0x0b][..], &Sha256::digest(public_area)].concat()
}

fn verifies(point: &[u8], message: &[u8], signature_der: &[u8]) -> bool {
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, point)
        .verify(message, signature_der)
        .is_ok()
}

/// A TPMS_ATTEST cut into the fields the tests check.
struct ParsedAttest<'a> {
    kind: [u8; 2],
    qualified_signer: &'a [u8],
    extra_data: &'a [u8],
    /// The type-specific part after clockInfo and firmwareVersion.
    attested: &'a [u8],
}

fn take_tpm2b<'a>(bytes: &mut &'a [u8]) -> &'a [u8] {
    let len = usize::from(u16::from_be_bytes([bytes[0], bytes[1]]));
    let (value, rest) = bytes[2..].split_at(len);
    *bytes = rest;
    value
}

fn parse_attest(attest: &[u8]) -> ParsedAttest<'_> {
    assert_eq!(attest[..4], TPM_GENERATED, "TPM_GENERATED_VALUE magic");
    let kind = [attest[4], attest[5]];
    let mut rest = &attest[6..];
    let qualified_signer = take_tpm2b(&mut rest);
    let extra_data = take_tpm2b(&mut rest);
    // clockInfo (clock u64, resetCount u32, restartCount u32, safe u8), firmwareVersion u64.
    let attested = &rest[17 + 8..];
    ParsedAttest {
        kind,
        qualified_signer,
        extra_data,
        attested,
    }
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// A TPM context for the test's own TPM commands (drop it before cairn-tpm opens its own).
fn tss_context(tpm: &Swtpm) -> tss_esapi::Context {
    std::env::set_var("TSS2_LOG", "all+none");
    tss_esapi::Context::new(parse_tcti(&tpm.tcti()).unwrap()).unwrap()
}

/// TPM2_MakeCredential by `tpm` itself, to its own RSA 2048 EK, for the object named `name`:
/// what a verifier computes in software. Returns the TPM2B contents (id object, secret).
fn make_credential(tpm: &Swtpm, secret: &[u8], name: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut context = tss_context(tpm);
    let ek = ek::create_ek_object(&mut context, AsymmetricAlgorithm::Rsa, None).unwrap();
    let (id_object, encrypted) = context
        .execute_without_session(|ctx| {
            ctx.make_credential(
                ek,
                Digest::try_from(secret.to_vec()).unwrap(),
                Name::try_from(name.to_vec()).unwrap(),
            )
        })
        .unwrap();
    context.flush_context(ek.into()).unwrap();
    (id_object.value().to_vec(), encrypted.value().to_vec())
}

#[test]
fn the_attestation_key_is_made_once_and_reopens_with_the_same_public_area() {
    if !require_tool("swtpm") {
        return;
    }
    let tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let blob = dir.path().join("attestation.tpmkey");

    let public_area = AttestationKey::open_or_create(&tpm.tcti(), &blob)
        .unwrap()
        .public_area();
    let bytes = std::fs::read(&blob).unwrap();
    assert!(bytes.starts_with(b"CAIRNTPMKEY1"));
    assert_eq!(mode(&blob), 0o600);
    let Public::Ecc {
        object_attributes, ..
    } = Public::unmarshall(&public_area).unwrap()
    else {
        panic!("not an ECC key");
    };
    assert!(object_attributes.restricted() && object_attributes.sign_encrypt());
    assert!(!object_attributes.decrypt());
    assert!(object_attributes.fixed_tpm() && object_attributes.fixed_parent());
    assert_eq!(ecc_point(&public_area).len(), 65);

    let again = AttestationKey::open_or_create(&tpm.tcti(), &blob).unwrap();
    assert_eq!(again.public_area(), public_area);
    let tpm = tpm.restart();
    let after_reboot = AttestationKey::open_or_create(&tpm.tcti(), &blob).unwrap();
    assert_eq!(
        after_reboot.public_area(),
        public_area,
        "same AK after reboot"
    );
    assert_eq!(std::fs::read(&blob).unwrap(), bytes, "blob not rewritten");

    let other = dir.path().join("second.tpmkey");
    let second = AttestationKey::open_or_create(&tpm.tcti(), &other).unwrap();
    assert_ne!(second.public_area(), public_area, "a new blob is a new key");
}

#[test]
fn an_attestation_key_blob_from_another_tpm_is_refused_and_kept() {
    if !require_tool("swtpm") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let blob = dir.path().join("attestation.tpmkey");
    {
        let original = Swtpm::start();
        AttestationKey::open_or_create(&original.tcti(), &blob).unwrap();
    }
    let bytes = std::fs::read(&blob).unwrap();
    let other_machine = Swtpm::start();
    let err = AttestationKey::open_or_create(&other_machine.tcti(), &blob).unwrap_err();
    assert!(matches!(err, TpmError::LoadBlob { .. }), "{err:?}");
    assert!(err.to_string().contains("attestation.tpmkey"), "{err}");
    assert_eq!(std::fs::read(&blob).unwrap(), bytes, "never replaced");

    // A device key blob is not an attestation key: refused before the TPM is asked.
    let device_blob = dir.path().join("device.tpmkey");
    drop(TpmDeviceKey::open_or_create(&other_machine.tcti(), &device_blob).unwrap());
    let err = AttestationKey::open_or_create(&other_machine.tcti(), &device_blob).unwrap_err();
    assert!(matches!(err, TpmError::BadBlob { .. }), "{err:?}");
    assert!(err.to_string().contains("restricted"), "{err}");
}

#[test]
fn certify_signs_the_device_keys_name_and_the_nonce() {
    if !require_tool("swtpm") {
        return;
    }
    let tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    // The AK first: while the device key is open it holds swtpm's only connection.
    let ak = AttestationKey::open_or_create(&tpm.tcti(), &dir.path().join("ak")).unwrap();
    let device = TpmDeviceKey::open_or_create(&tpm.tcti(), &dir.path().join("device")).unwrap();
    let ak_point = ecc_point(&ak.public_area());
    assert_eq!(
        ecc_point(&device.public_area()),
        device.public_key_spki_der()[26..],
        "the device key's public area holds its SPKI point"
    );

    // Several rounds: a leaked AK or primary would exhaust swtpm's three object slots.
    for round in 0..4u8 {
        let nonce = [round; 32];
        let certification = ak.certify(&device, &nonce).unwrap();
        let attest = parse_attest(&certification.attest);
        assert_eq!(attest.kind, ST_ATTEST_CERTIFY);
        assert_eq!(attest.qualified_signer.len(), 34, "SHA-256 qualified name");
        assert_eq!(attest.extra_data, nonce);
        let mut certified = attest.attested;
        assert_eq!(
            take_tpm2b(&mut certified),
            name_of(&device.public_area()),
            "TPMS_CERTIFY_INFO names the device key"
        );
        assert!(
            verifies(
                &ak_point,
                &certification.attest,
                &certification.signature_der
            ),
            "the AK's signature over the attest verifies"
        );
        let mut tampered = certification.attest.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(!verifies(
            &ak_point,
            &tampered,
            &certification.signature_der
        ));
    }
    // The device key still works, and an empty nonce is allowed.
    device.sign_sha256(b"still signing").unwrap();
    ak.certify(&device, &[]).unwrap();

    let err = ak.certify(&device, &[0; 65]).unwrap_err();
    assert!(
        matches!(err, TpmError::QualifyingData { len: 65 }),
        "{err:?}"
    );
}

#[test]
fn certify_of_a_device_key_on_another_tpm_fails_to_load_the_ak() {
    if !require_tool("swtpm") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ours = Swtpm::start();
    let ak = AttestationKey::open_or_create(&ours.tcti(), &dir.path().join("ak")).unwrap();
    let theirs = Swtpm::start();
    let device = TpmDeviceKey::open_or_create(&theirs.tcti(), &dir.path().join("device")).unwrap();
    let err = ak.certify(&device, b"nonce").unwrap_err();
    assert!(matches!(err, TpmError::LoadBlob { .. }), "{err:?}");
    device.sign_sha256(b"the device key is untouched").unwrap();
}

#[test]
fn activate_credential_returns_the_secret_made_for_this_ek_and_ak() {
    if !require_tool("swtpm") {
        return;
    }
    let tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let ak = AttestationKey::open_or_create(&tpm.tcti(), &dir.path().join("ak")).unwrap();
    let name = name_of(&ak.public_area());
    // Several rounds: each call leaves the TPM's object and session slots free for the next.
    for round in 0..4u8 {
        let secret = [round ^ 0x5a; 32];
        let (id_object, encrypted) = make_credential(&tpm, &secret, &name);
        let activated = ak
            .activate_credential(&tpm.tcti(), &id_object, &encrypted)
            .unwrap();
        assert_eq!(activated.as_slice(), secret);
    }
}

#[test]
fn a_credential_for_another_name_or_tpm_is_refused() {
    if !require_tool("swtpm") {
        return;
    }
    let tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let ak = AttestationKey::open_or_create(&tpm.tcti(), &dir.path().join("ak")).unwrap();
    let other_ak = AttestationKey::open_or_create(&tpm.tcti(), &dir.path().join("other")).unwrap();
    let secret = [0x42u8; 32];

    let (id_object, encrypted) = make_credential(&tpm, &secret, &name_of(&other_ak.public_area()));
    let err = ak
        .activate_credential(&tpm.tcti(), &id_object, &encrypted)
        .unwrap_err();
    assert!(
        matches!(err, TpmError::ActivateCredential { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("not made for this TPM's endorsement key and this attestation key"),
        "{err}"
    );
    // The right AK gets that very credential.
    let activated = other_ak
        .activate_credential(&tpm.tcti(), &id_object, &encrypted)
        .unwrap();
    assert_eq!(activated.as_slice(), secret);

    // Made for our AK's name, but to another TPM's EK.
    let another_tpm = Swtpm::start();
    let (id_object, encrypted) =
        make_credential(&another_tpm, &secret, &name_of(&ak.public_area()));
    let err = ak
        .activate_credential(&tpm.tcti(), &id_object, &encrypted)
        .unwrap_err();
    assert!(
        matches!(err, TpmError::ActivateCredential { .. }),
        "{err:?}"
    );

    // An altered credential blob fails the TPM's integrity check.
    let (mut id_object, encrypted) = make_credential(&tpm, &secret, &name_of(&ak.public_area()));
    let last = id_object.len() - 1;
    id_object[last] ^= 1;
    let err = ak
        .activate_credential(&tpm.tcti(), &id_object, &encrypted)
        .unwrap_err();
    assert!(
        matches!(err, TpmError::ActivateCredential { .. }),
        "{err:?}"
    );

    // Oversized inputs are refused before the TPM is asked.
    let err = ak
        .activate_credential(&tpm.tcti(), &[0; 4096], &encrypted)
        .unwrap_err();
    assert!(matches!(err, TpmError::BadCredential { .. }), "{err:?}");

    // The refusals left nothing loaded: a good credential still activates.
    let (id_object, encrypted) = make_credential(&tpm, &secret, &name_of(&ak.public_area()));
    assert_eq!(
        ak.activate_credential(&tpm.tcti(), &id_object, &encrypted)
            .unwrap()
            .as_slice(),
        secret
    );
}

#[test]
fn quote_signs_the_pcr_values_and_the_nonce() {
    if !require_tool("swtpm") {
        return;
    }
    let tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let ak = AttestationKey::open_or_create(&tpm.tcti(), &dir.path().join("ak")).unwrap();
    let ak_point = ecc_point(&ak.public_area());
    extend_pcr(&tpm.tcti(), 16, b"a measured event").unwrap();
    let selection: PcrSelection = "0,7,16".parse().unwrap();
    let current = read_pcrs(&tpm.tcti(), &selection).unwrap();
    assert_ne!(current[&16], [0; 32]);

    for round in 0..4u8 {
        let nonce = [round; 20];
        let quote = ak.quote(&tpm.tcti(), &nonce, &[16, 0, 7]).unwrap();
        assert!(verifies(&ak_point, &quote.attest, &quote.signature_der));
        let attest = parse_attest(&quote.attest);
        assert_eq!(attest.kind, ST_ATTEST_QUOTE);
        assert_eq!(attest.extra_data, nonce, "the nonce is the extraData");
        assert_eq!(quote.pcr_values, current);

        // TPML_PCR_SELECTION: one SHA-256 selection of PCRs 0, 7 and 16, then the PCR digest.
        let mut quoted = attest.attested;
        assert_eq!(quoted[..4], 1u32.to_be_bytes());
        assert_eq!(quoted[4..6], [0x00, 0x0b]);
        let size = usize::from(quoted[6]);
        assert_eq!(quoted[7..7 + size][..3], [0x81, 0x00, 0x01]);
        quoted = &quoted[7 + size..];
        let mut expected = Sha256::new();
        for value in current.values() {
            expected.update(value);
        }
        assert_eq!(take_tpm2b(&mut quoted), expected.finalize().as_slice());
        assert!(quoted.is_empty());
    }

    let err = ak.quote(&tpm.tcti(), &[0; 65], &[7]).unwrap_err();
    assert!(matches!(err, TpmError::QualifyingData { .. }), "{err:?}");
    let err = ak.quote(&tpm.tcti(), b"nonce", &[24]).unwrap_err();
    assert!(matches!(err, TpmError::BadPcrSelection { .. }), "{err:?}");
    let err = ak.quote(&tpm.tcti(), b"nonce", &[]).unwrap_err();
    assert!(matches!(err, TpmError::BadPcrSelection { .. }), "{err:?}");
}
