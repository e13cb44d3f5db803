//! Host integration tests of the device signing key against a real swtpm.

use std::path::Path;

use cairn_testsupport::{require_tool, Swtpm};
use cairn_tpm::{TpmDeviceKey, TpmError};
use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1};

/// Length of a P-256 SubjectPublicKeyInfo; the last 65 bytes are the uncompressed point.
const P256_SPKI_LEN: usize = 91;

fn verify(spki: &[u8], message: &[u8], signature: &[u8]) -> bool {
    assert_eq!(spki.len(), P256_SPKI_LEN);
    let point = &spki[spki.len() - 65..];
    assert_eq!(point[0], 0x04, "uncompressed point");
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, point)
        .verify(message, signature)
        .is_ok()
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn creates_a_key_whose_signatures_verify_with_ring() {
    if !require_tool("swtpm") {
        return;
    }
    let tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let blob = dir.path().join("device.tpmkey");

    let key = TpmDeviceKey::open_or_create(&tpm.tcti(), &blob).unwrap();
    let bytes = std::fs::read(&blob).unwrap();
    assert!(bytes.starts_with(b"CAIRNTPMKEY1"));
    assert_eq!(mode(&blob), 0o600);

    let spki = key.public_key_spki_der();
    assert_eq!(
        hex::encode(&spki[..26]),
        "3059301306072a8648ce3d020106082a8648ce3d030107034200"
    );
    for message in [&b""[..], b"hello cairn", &[0xffu8; 4096]] {
        let signature = key.sign_sha256(message).unwrap();
        assert_eq!(signature[0], 0x30, "DER SEQUENCE");
        assert!(verify(&spki, message, &signature), "signature must verify");
        assert!(!verify(&spki, b"another message", &signature));
    }
    // ECDSA is randomized: two signatures of the same message differ, both verify.
    let a = key.sign_sha256(b"same").unwrap();
    let b = key.sign_sha256(b"same").unwrap();
    assert_ne!(a, b);
    assert!(verify(&spki, b"same", &a) && verify(&spki, b"same", &b));
}

#[test]
fn signs_from_many_threads() {
    if !require_tool("swtpm") {
        return;
    }
    let tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let key = TpmDeviceKey::open_or_create(&tpm.tcti(), &dir.path().join("k")).unwrap();
    let spki = key.public_key_spki_der();
    std::thread::scope(|scope| {
        for i in 0..4u8 {
            let (key, spki) = (&key, &spki);
            scope.spawn(move || {
                for j in 0..5u8 {
                    let message = [i, j];
                    let signature = key.sign_sha256(&message).unwrap();
                    assert!(verify(spki, &message, &signature));
                }
            });
        }
    });
}

#[test]
fn reopens_the_same_key_after_a_reboot() {
    if !require_tool("swtpm") {
        return;
    }
    let tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let blob = dir.path().join("device.tpmkey");

    let key = TpmDeviceKey::open_or_create(&tpm.tcti(), &blob).unwrap();
    let spki = key.public_key_spki_der();
    let blob_bytes = std::fs::read(&blob).unwrap();
    drop(key);

    let tpm = tpm.restart();
    let key = TpmDeviceKey::open_or_create(&tpm.tcti(), &blob).unwrap();
    assert_eq!(key.public_key_spki_der(), spki, "same key after reboot");
    assert_eq!(
        std::fs::read(&blob).unwrap(),
        blob_bytes,
        "blob not rewritten"
    );
    let signature = key.sign_sha256(b"after reboot").unwrap();
    assert!(verify(&spki, b"after reboot", &signature));
    drop(key);

    // A second state dir owned by the test: the same TPM started again with start_in.
    let state = tempfile::tempdir().unwrap();
    let tpm = Swtpm::start_in(state.path());
    let blob2 = dir.path().join("second.tpmkey");
    let spki2 = TpmDeviceKey::open_or_create(&tpm.tcti(), &blob2)
        .unwrap()
        .public_key_spki_der();
    drop(tpm);
    let tpm = Swtpm::start_in(state.path());
    let key = TpmDeviceKey::open_or_create(&tpm.tcti(), &blob2).unwrap();
    assert_eq!(key.public_key_spki_der(), spki2);
    assert_ne!(spki2, spki, "a new key was created for the second TPM");
}

#[test]
fn a_new_tpm_cannot_load_a_stolen_blob() {
    if !require_tool("swtpm") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let blob = dir.path().join("device.tpmkey");
    {
        let original = Swtpm::start();
        TpmDeviceKey::open_or_create(&original.tcti(), &blob).unwrap();
    }
    let stolen_bytes = std::fs::read(&blob).unwrap();

    let other_machine = Swtpm::start();
    let err = TpmDeviceKey::open_or_create(&other_machine.tcti(), &blob).unwrap_err();
    assert!(matches!(err, TpmError::LoadBlob { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("refused to load"), "{message}");
    assert!(message.contains("device.tpmkey"), "{message}");
    assert!(message.contains("different TPM"), "{message}");
    assert_eq!(
        std::fs::read(&blob).unwrap(),
        stolen_bytes,
        "the blob must never be replaced by a new key"
    );
}

#[test]
fn garbage_truncated_and_tampered_blobs_are_rejected() {
    if !require_tool("swtpm") {
        return;
    }
    let tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.tpmkey");
    drop(TpmDeviceKey::open_or_create(&tpm.tcti(), &good).unwrap());
    let good_bytes = std::fs::read(&good).unwrap();

    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("garbage", b"this is not a TPM key at all".to_vec()),
        ("truncated", good_bytes[..good_bytes.len() / 2].to_vec()),
        ("header only", good_bytes[..12].to_vec()),
        ("trailing", [good_bytes.as_slice(), b"x"].concat()),
    ];
    for (name, bytes) in cases {
        let path = dir
            .path()
            .join(format!("{}.tpmkey", name.replace(' ', "-")));
        std::fs::write(&path, &bytes).unwrap();
        let err = TpmDeviceKey::open_or_create(&tpm.tcti(), &path).unwrap_err();
        assert!(matches!(err, TpmError::BadBlob { .. }), "{name}: {err:?}");
        assert!(
            err.to_string().contains("not a valid Cairn key blob"),
            "{name}: {err}"
        );
        assert_eq!(
            std::fs::read(&path).unwrap(),
            bytes,
            "{name}: file must stay as it was"
        );
    }

    // Structurally valid but the encrypted private area is tampered with: the TPM's integrity
    // check refuses it.
    let mut tampered = good_bytes.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    let path = dir.path().join("tampered.tpmkey");
    std::fs::write(&path, &tampered).unwrap();
    let err = TpmDeviceKey::open_or_create(&tpm.tcti(), &path).unwrap_err();
    assert!(matches!(err, TpmError::LoadBlob { .. }), "{err:?}");

    // The TPM is still usable (no leaked object slots after all those failures).
    let key = TpmDeviceKey::open_or_create(&tpm.tcti(), &good).unwrap();
    let signature = key.sign_sha256(b"still fine").unwrap();
    assert!(verify(
        &key.public_key_spki_der(),
        b"still fine",
        &signature
    ));
}

#[test]
fn the_public_area_is_the_tpmt_public_of_the_same_key_and_stays_put() {
    use tss_esapi::structures::Public;
    use tss_esapi::traits::UnMarshall;
    if !require_tool("swtpm") {
        return;
    }
    let tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let blob = dir.path().join("device.tpmkey");
    let key = TpmDeviceKey::open_or_create(&tpm.tcti(), &blob).unwrap();
    let area = key.public_area();
    // A TPMT_PUBLIC starts with its type (TPM_ALG_ECC) and name algorithm (SHA-256): no size.
    assert_eq!(area[..4], [0x00, 0x23, 0x00, 0x0b]);
    let Public::Ecc {
        object_attributes,
        unique,
        ..
    } = Public::unmarshall(&area).unwrap()
    else {
        panic!("not an ECC public area");
    };
    assert!(object_attributes.sign_encrypt() && !object_attributes.restricted());
    let point = key.public_key_spki_der()[P256_SPKI_LEN - 65..].to_vec();
    assert_eq!(point[1..33], *unique.x().value(), "same x as the SPKI");
    assert_eq!(point[33..], *unique.y().value(), "same y as the SPKI");
    drop(key);
    let again = TpmDeviceKey::open_or_create(&tpm.tcti(), &blob).unwrap();
    assert_eq!(again.public_area(), area);
}

#[test]
fn unreachable_tpm_gives_a_clear_error() {
    let port = cairn_testsupport::free_port();
    let tcti = format!("swtpm:host=127.0.0.1,port={port}");
    let dir = tempfile::tempdir().unwrap();
    let blob = dir.path().join("device.tpmkey");
    let err = TpmDeviceKey::open_or_create(&tcti, &blob).unwrap_err();
    assert!(matches!(err, TpmError::OpenTcti { .. }), "{err:?}");
    assert!(err.to_string().contains("/dev/tpmrm0"), "{err}");
    assert!(!blob.exists());

    let err = TpmDeviceKey::open_or_create("tpm0", &blob).unwrap_err();
    assert!(matches!(err, TpmError::BadTcti { .. }), "{err:?}");
}
