//! Host integration tests of sealing a secret to this TPM alone (no PCR policy) against swtpm.

use std::sync::Mutex;

use cairn_testsupport::{require_tool, Swtpm};
use cairn_tpm::{extend_pcr, BoundUnsealError, TpmBoundSecret, TpmDeviceKey, TpmError};

const SECRET: &[u8; 32] = b"bound-secret-0123456789abcdef-32";

/// swtpm (re)starts one at a time: parallel tests picking port pairs at the same moment can take
/// each other's control port.
static STARTING: Mutex<()> = Mutex::new(());

fn start_tpm() -> Swtpm {
    let _one_at_a_time = STARTING.lock().unwrap_or_else(|e| e.into_inner());
    Swtpm::start()
}

fn restart_tpm(tpm: Swtpm) -> Swtpm {
    let _one_at_a_time = STARTING.lock().unwrap_or_else(|e| e.into_inner());
    tpm.restart()
}

#[test]
fn a_bound_secret_unseals_after_pcr_changes_and_a_reboot() {
    if !require_tool("swtpm") {
        return;
    }
    let tpm = start_tpm();
    let bytes = TpmBoundSecret::seal(&tpm.tcti(), SECRET)
        .unwrap()
        .to_bytes()
        .unwrap();
    assert!(bytes.starts_with(b"CAIRNTPMBND1"));
    assert!(
        !bytes.windows(SECRET.len()).any(|w| w == SECRET),
        "the secret must not be in the blob in clear"
    );
    let bound = TpmBoundSecret::from_bytes(&bytes).unwrap();
    assert_eq!(bound.unseal(&tpm.tcti()).unwrap().as_slice(), SECRET);

    // Another boot chain (Secure Boot off changes PCR 7, an OS update PCR 11): still opens.
    extend_pcr(&tpm.tcti(), 7, b"Secure Boot turned off").unwrap();
    extend_pcr(&tpm.tcti(), 11, b"the next slot's UKI").unwrap();
    assert_eq!(bound.unseal(&tpm.tcti()).unwrap().as_slice(), SECRET);
    let tpm = restart_tpm(tpm);
    assert_eq!(bound.unseal(&tpm.tcti()).unwrap().as_slice(), SECRET);
}

#[test]
fn a_bound_secret_works_through_an_open_device_keys_connection() {
    if !require_tool("swtpm") {
        return;
    }
    let tpm = start_tpm();
    let dir = tempfile::tempdir().unwrap();
    // The device key holds swtpm's only connection: every call goes through it.
    let key =
        TpmDeviceKey::open_or_create(&tpm.tcti(), &dir.path().join("device-key.tpm")).unwrap();
    let path = dir.path().join("secrets.key.tpm");
    TpmBoundSecret::seal(&key, SECRET)
        .unwrap()
        .write_atomic(&path)
        .unwrap();
    let bound = TpmBoundSecret::read(&path).unwrap().unwrap();
    assert_eq!(bound.unseal(&key).unwrap().as_slice(), SECRET);
    // The device key still signs: the calls flushed what they loaded.
    key.sign_sha256(b"still usable").unwrap();
    assert!(matches!(
        TpmBoundSecret::seal(&key, &[0; 129]),
        Err(TpmError::BadSecret { len: 129 })
    ));
}

#[test]
fn a_blob_from_another_tpm_fails_as_wrong_tpm() {
    if !require_tool("swtpm") {
        return;
    }
    let bound = {
        let tpm = start_tpm();
        TpmBoundSecret::seal(&tpm.tcti(), SECRET).unwrap()
    };
    let other = start_tpm();
    let err = bound.unseal(&other.tcti()).unwrap_err();
    assert!(matches!(err, BoundUnsealError::WrongTpm { .. }), "{err:?}");
    assert!(err.to_string().contains("wrong TPM"), "{err}");
    assert!(err.to_string().contains("another TPM"), "{err}");
}

#[test]
fn a_bound_secret_is_gone_after_a_tpm_clear() {
    if !require_tool("swtpm") {
        return;
    }
    let tpm = start_tpm();
    let bound = TpmBoundSecret::seal(&tpm.tcti(), SECRET).unwrap();
    cairn_tpm::clear_owner_hierarchy(&tpm.tcti()).unwrap();
    let err = bound.unseal(&tpm.tcti()).unwrap_err();
    assert!(matches!(err, BoundUnsealError::WrongTpm { .. }), "{err:?}");
}

#[test]
fn a_damaged_blob_fails_clearly() {
    if !require_tool("swtpm") {
        return;
    }
    let tpm = start_tpm();
    let mut bytes = TpmBoundSecret::seal(&tpm.tcti(), SECRET)
        .unwrap()
        .to_bytes()
        .unwrap();
    let err = TpmBoundSecret::from_bytes(&bytes[..bytes.len() - 1]).unwrap_err();
    assert!(matches!(err, TpmError::BadBoundBlob { .. }), "{err:?}");
    assert!(err.to_string().contains("truncated private area"), "{err}");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    let err = TpmBoundSecret::from_bytes(&bytes)
        .unwrap()
        .unseal(&tpm.tcti())
        .unwrap_err();
    assert!(matches!(err, BoundUnsealError::WrongTpm { .. }), "{err:?}");
}

#[test]
fn an_unreachable_tpm_is_not_a_wrong_tpm() {
    if !require_tool("swtpm") {
        return;
    }
    let bound = {
        let tpm = start_tpm();
        TpmBoundSecret::seal(&tpm.tcti(), SECRET).unwrap()
    };
    let port = cairn_testsupport::free_port();
    let err = bound
        .unseal(format!("swtpm:host=127.0.0.1,port={port}").as_str())
        .unwrap_err();
    assert!(matches!(err, BoundUnsealError::Tpm(_)), "{err:?}");
}
