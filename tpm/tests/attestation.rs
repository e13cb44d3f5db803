//! Host integration tests of the device side of TPM attestation against a real swtpm: the EK
//! certificate from NV.

use cairn_testsupport::{require_tool, Swtpm, VendorCa};
use cairn_tpm::{ek_certificate, ek_public_sha256};
use sha2::{Digest as _, Sha256};
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
    assert!(
        matches!(err, cairn_tpm::TpmError::OpenTcti { .. }),
        "{err:?}"
    );
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
    assert!(
        matches!(err, cairn_tpm::TpmError::BadEkCertificate { .. }),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains("0x01c00002"), "{message}");
    assert!(message.contains("64 bytes"), "{message}");
}
