//! Host integration tests of clearing the owner hierarchy against a real swtpm: what it destroys
//! (device key, sealed secrets) and what it keeps (the EK), and the refusals a provisioned TPM
//! can give.

use std::str::FromStr;
use std::sync::Mutex;

use cairn_testsupport::{require_tool, Swtpm};
use cairn_tpm::{
    clear_owner_hierarchy, ek_public_sha256, seal_secret, unseal_secret, TpmDeviceKey, TpmError,
    UnsealError,
};
use tss_esapi::handles::AuthHandle;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::Auth;
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::Context;

const SECRET: &[u8; 32] = b"0123456789abcdef0123456789abcdef";

/// swtpm starts one at a time: parallel tests picking port pairs at the same moment can take
/// each other's control port.
static STARTING: Mutex<()> = Mutex::new(());

fn start_tpm() -> Swtpm {
    let _one_at_a_time = STARTING.lock().unwrap_or_else(|e| e.into_inner());
    Swtpm::start()
}

/// Run `f` on a raw TPM context, as an administrator's tool would.
fn with_context(tpm: &Swtpm, f: impl FnOnce(&mut Context) -> tss_esapi::Result<()>) {
    let mut context = Context::new(TctiNameConf::from_str(&tpm.tcti()).unwrap()).unwrap();
    context
        .execute_with_session(Some(AuthSession::Password), f)
        .unwrap();
}

#[test]
fn clearing_makes_the_device_key_and_sealed_secrets_unloadable_and_keeps_the_ek() {
    if !require_tool("swtpm") {
        return;
    }
    let tpm = start_tpm();
    let tcti = tpm.tcti();
    let dir = tempfile::tempdir().unwrap();
    let key_blob = dir.path().join("device.tpmkey");
    let ek_before = ek_public_sha256(&tcti).unwrap();
    let sealed = seal_secret(&tcti, SECRET, &"7,11".parse().unwrap()).unwrap();
    let key_blob_bytes = {
        let key = TpmDeviceKey::open_or_create(&tcti, &key_blob).unwrap();
        key.sign_sha256(b"before the clear").unwrap();
        // Through the open key's connection, as the agent holds one (swtpm serves one at a time).
        clear_owner_hierarchy(&key).unwrap();
        assert!(matches!(
            key.sign_sha256(b"after the clear"),
            Err(TpmError::Sign { .. })
        ));
        std::fs::read(&key_blob).unwrap()
    };

    let err = TpmDeviceKey::open_or_create(&tcti, &key_blob).unwrap_err();
    assert!(matches!(err, TpmError::LoadBlob { .. }), "{err:?}");
    assert!(err.to_string().contains("cleared"), "{err}");
    // The refused blob is kept, never replaced by a new key.
    assert_eq!(std::fs::read(&key_blob).unwrap(), key_blob_bytes);
    let err = unseal_secret(&tcti, &sealed).unwrap_err();
    assert!(matches!(err, UnsealError::WrongTpm { .. }), "{err:?}");
    assert_eq!(ek_public_sha256(&tcti).unwrap(), ek_before);

    // Clearing again (a retried wipe) works through a TCTI as well.
    clear_owner_hierarchy(tcti.as_str()).unwrap();
    assert_eq!(ek_public_sha256(&tcti).unwrap(), ek_before);
}

#[test]
fn a_lockout_password_or_disabled_clear_is_refused_and_destroys_nothing() {
    if !require_tool("swtpm") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let key_blob = dir.path().join("device.tpmkey");
    let provisioned = [
        ("lockout password", start_tpm()),
        ("ClearControl", start_tpm()),
    ];
    for (how, tpm) in &provisioned {
        let tcti = tpm.tcti();
        let spki = TpmDeviceKey::open_or_create(&tcti, &key_blob)
            .unwrap()
            .public_key_spki_der();
        with_context(tpm, |ctx| match *how {
            "lockout password" => ctx.hierarchy_change_auth(
                AuthHandle::Lockout,
                Auth::try_from(b"set by the IT department".to_vec())?,
            ),
            _ => ctx.clear_control(AuthHandle::Lockout, true),
        });

        let err = clear_owner_hierarchy(tcti.as_str()).unwrap_err();
        assert!(
            matches!(err, TpmError::ClearRefused { .. }),
            "{how}: {err:?}"
        );
        assert!(err.to_string().contains("TPM2_Clear refused"), "{err}");
        let reopened = TpmDeviceKey::open_or_create(&tcti, &key_blob).unwrap();
        assert_eq!(reopened.public_key_spki_der(), spki, "{how}");
        drop(reopened);
        std::fs::remove_file(&key_blob).unwrap();
    }
}
