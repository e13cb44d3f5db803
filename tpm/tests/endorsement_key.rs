//! Host integration tests of the endorsement key hash against a real swtpm.

use cairn_testsupport::{require_tool, Swtpm};
use cairn_tpm::ek_public_sha256;
use sha2::{Digest, Sha256};

fn assert_lower_hex_sha256(hash: &str) {
    assert_eq!(hash.len(), 64, "{hash}");
    assert!(
        hash.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')),
        "{hash}"
    );
}

#[test]
fn ek_hash_is_stable_per_tpm_and_differs_between_tpms() {
    if !require_tool("swtpm") {
        return;
    }
    let first = Swtpm::start();
    let a1 = ek_public_sha256(&first.tcti()).unwrap();
    assert_lower_hex_sha256(&a1);
    let a2 = ek_public_sha256(&first.tcti()).unwrap();
    assert_eq!(a1, a2, "same TPM, same EK");

    let first = first.restart();
    assert_eq!(
        ek_public_sha256(&first.tcti()).unwrap(),
        a1,
        "stable across reboot"
    );

    let second = Swtpm::start();
    let b = ek_public_sha256(&second.tcti()).unwrap();
    assert_lower_hex_sha256(&b);
    assert_ne!(a1, b, "different TPMs have different EKs");
}

/// Our hand-written SPKI matches what tpm2-tools (OpenSSL) writes for the same EK.
#[test]
fn ek_hash_matches_tpm2_createek_der_output() {
    if !require_tool("swtpm") || !require_tool("tpm2_createek") {
        return;
    }
    let tpm = Swtpm::start();
    let ours = ek_public_sha256(&tpm.tcti()).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let der = dir.path().join("ek.der");
    let output = std::process::Command::new("tpm2_createek")
        .env("TSS2_LOG", "all+none")
        .arg("-T")
        .arg(tpm.tcti())
        .args(["-G", "rsa", "-f", "der", "-u"])
        .arg(&der)
        .arg("-c")
        .arg(dir.path().join("ek.ctx"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "tpm2_createek failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let theirs = hex::encode(Sha256::digest(std::fs::read(&der).unwrap()));
    assert_eq!(ours, theirs);
}
