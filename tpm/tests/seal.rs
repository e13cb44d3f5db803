//! Host integration tests of sealing to PCRs against a real swtpm.

use std::sync::{Arc, Mutex};

use cairn_testsupport::{require_tool, Swtpm};
use cairn_tpm::{
    extend_pcr, extended_value, read_pcrs, seal_secret, seal_secret_to, unseal_secret,
    PcrSelection, PcrValues, SealedSecret, TpmError, UnsealError,
};
use sha2::{Digest as _, Sha256};

const SECRET: &[u8; 32] = b"0123456789abcdef0123456789abcdef";

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

fn pcrs_7_11() -> PcrSelection {
    "7,11".parse().unwrap()
}

#[test]
fn seals_and_unseals_a_secret_round_trip() {
    if !require_tool("swtpm") {
        return;
    }
    let tpm = start_tpm();
    let sealed = seal_secret(&tpm.tcti(), SECRET, &pcrs_7_11()).unwrap();
    assert_eq!(sealed.pcrs(), pcrs_7_11());
    assert_eq!(
        sealed.expected_pcrs(),
        &read_pcrs(&tpm.tcti(), &pcrs_7_11()).unwrap()
    );
    // Through the blob format, as the disk flow stores it.
    let bytes = sealed.to_bytes().unwrap();
    assert!(bytes.starts_with(b"CAIRNSEALED1"));
    assert!(
        !bytes.windows(SECRET.len()).any(|w| w == SECRET),
        "the secret must not be in the blob in clear"
    );
    let parsed = SealedSecret::from_bytes(&bytes).unwrap();
    let secret = unseal_secret(&tpm.tcti(), &parsed).unwrap();
    assert_eq!(secret.as_slice(), SECRET);
    // Unsealing twice works (nothing consumed), and the maximum size seals.
    assert_eq!(
        unseal_secret(&tpm.tcti(), &parsed).unwrap().as_slice(),
        SECRET
    );
    let big = [0x5a; 128];
    let sealed = seal_secret(&tpm.tcti(), &big, &"7".parse().unwrap()).unwrap();
    assert_eq!(unseal_secret(&tpm.tcti(), &sealed).unwrap().as_slice(), big);
    assert!(matches!(
        seal_secret(&tpm.tcti(), &[0; 129], &pcrs_7_11()),
        Err(TpmError::BadSecret { len: 129 })
    ));
}

#[test]
fn changed_pcr_7_refuses_and_names_pcr_7_with_both_values() {
    if !require_tool("swtpm") {
        return;
    }
    let tpm = start_tpm();
    let tcti = tpm.tcti();
    let sealed = seal_secret(&tcti, SECRET, &pcrs_7_11()).unwrap();
    let before = sealed.expected_pcrs()[&7];

    extend_pcr(&tcti, 7, b"an unsigned bootloader").unwrap();

    let err = unseal_secret(&tcti, &sealed).unwrap_err();
    let UnsealError::PcrMismatch { changed } = &err else {
        panic!("expected PcrMismatch, got {err:?}");
    };
    assert_eq!(changed.len(), 1, "only PCR 7 changed: {changed:?}");
    let change = &changed[0];
    assert_eq!(change.index, 7);
    assert_eq!(change.expected_hex, hex::encode(before));
    let after = extended_value(&before, &Sha256::digest(b"an unsigned bootloader"));
    assert_eq!(change.actual_hex, hex::encode(after));
    assert_eq!(
        change.actual_hex,
        hex::encode(read_pcrs(&tcti, &pcrs_7_11()).unwrap()[&7])
    );
    let message = err.to_string();
    assert!(message.contains("PCR 7 sealed to"), "{message}");
    assert!(message.contains("recovery key"), "{message}");
}

#[test]
fn unrelated_pcr_change_still_unseals() {
    if !require_tool("swtpm") {
        return;
    }
    let tpm = start_tpm();
    let tcti = tpm.tcti();
    let sealed = seal_secret(&tcti, SECRET, &pcrs_7_11()).unwrap();
    extend_pcr(&tcti, 16, b"debug event").unwrap();
    extend_pcr(&tcti, 8, b"grub command line").unwrap();
    assert_eq!(unseal_secret(&tcti, &sealed).unwrap().as_slice(), SECRET);
}

#[test]
fn reboot_resets_pcrs_and_unseals_again() {
    if !require_tool("swtpm") {
        return;
    }
    let tpm = start_tpm();
    let sealed = seal_secret(&tpm.tcti(), SECRET, &pcrs_7_11()).unwrap();
    extend_pcr(&tpm.tcti(), 11, b"another UKI").unwrap();
    let err = unseal_secret(&tpm.tcti(), &sealed).unwrap_err();
    assert!(
        matches!(&err, UnsealError::PcrMismatch { changed } if changed.len() == 1 && changed[0].index == 11),
        "{err:?}"
    );

    let tpm = restart_tpm(tpm);
    assert_eq!(
        unseal_secret(&tpm.tcti(), &sealed).unwrap().as_slice(),
        SECRET
    );
}

#[test]
fn another_tpm_cannot_load_the_blob() {
    if !require_tool("swtpm") {
        return;
    }
    let sealed = {
        let tpm = start_tpm();
        seal_secret(&tpm.tcti(), SECRET, &pcrs_7_11()).unwrap()
    };
    // The same disk in another device: same (reset) PCR values, other TPM seeds.
    let thief = start_tpm();
    let err = unseal_secret(&thief.tcti(), &sealed).unwrap_err();
    assert!(matches!(err, UnsealError::WrongTpm { .. }), "{err:?}");
    assert!(err.to_string().contains("another TPM"), "{err}");
}

#[test]
fn tampered_or_truncated_blobs_fail_clearly() {
    if !require_tool("swtpm") {
        return;
    }
    let tpm = start_tpm();
    let bytes = seal_secret(&tpm.tcti(), SECRET, &pcrs_7_11())
        .unwrap()
        .to_bytes()
        .unwrap();

    let truncated = SealedSecret::from_bytes(&bytes[..bytes.len() - 1]).unwrap_err();
    assert!(matches!(truncated, TpmError::BadSealedBlob { .. }));
    assert!(
        truncated.to_string().contains("truncated private area"),
        "{truncated}"
    );

    // Recording a different PCR 7 value (to hide a changed boot chain) breaks the policy check.
    let mut edited = bytes.clone();
    edited[16] ^= 0xff;
    let err = SealedSecret::from_bytes(&edited).unwrap_err().to_string();
    assert!(err.contains("policy is not PolicyPCR"), "{err}");

    // A flipped bit in the TPM-encrypted private area: the TPM refuses to load it.
    let mut edited = bytes.clone();
    let last = edited.len() - 1;
    edited[last] ^= 0x01;
    let sealed = SealedSecret::from_bytes(&edited).unwrap();
    let err = unseal_secret(&tpm.tcti(), &sealed).unwrap_err();
    assert!(matches!(err, UnsealError::WrongTpm { .. }), "{err:?}");
}

#[test]
fn sealing_to_predicted_values_unseals_only_once_they_are_reached() {
    if !require_tool("swtpm") {
        return;
    }
    let tpm = start_tpm();
    let tcti = tpm.tcti();
    // An update predicts PCR 11 after its UKI is measured; PCR 7 stays.
    let now = read_pcrs(&tcti, &pcrs_7_11()).unwrap();
    let uki_digest = Sha256::digest(b"the next slot's UKI");
    let predicted: PcrValues =
        PcrValues::from([(7, now[&7]), (11, extended_value(&now[&11], &uki_digest))]);
    let sealed = seal_secret_to(&tcti, SECRET, &predicted).unwrap();
    let err = unseal_secret(&tcti, &sealed).unwrap_err();
    assert!(matches!(err, UnsealError::PcrMismatch { .. }), "{err:?}");

    extend_pcr(&tcti, 11, b"the next slot's UKI").unwrap();
    assert_eq!(unseal_secret(&tcti, &sealed).unwrap().as_slice(), SECRET);
}

#[test]
fn unreachable_tpm_is_a_tpm_error() {
    let sealed_bytes = {
        if !require_tool("swtpm") {
            return;
        }
        let tpm = start_tpm();
        seal_secret(&tpm.tcti(), SECRET, &pcrs_7_11())
            .unwrap()
            .to_bytes()
            .unwrap()
    };
    let sealed = SealedSecret::from_bytes(&sealed_bytes).unwrap();
    let port = cairn_testsupport::free_port();
    let err = unseal_secret(&format!("swtpm:host=127.0.0.1,port={port}"), &sealed).unwrap_err();
    assert!(
        matches!(
            err,
            UnsealError::Tpm(TpmError::OpenTcti { .. })
                | UnsealError::Tpm(TpmError::CreatePrimary { .. })
        ),
        "{err:?}"
    );
}

/// A TCP proxy in front of swtpm's command and control ports that records every byte both ways:
/// what a sniffer on the TPM bus would see.
struct BusRecorder {
    port: u16,
    bytes: Arc<Mutex<Vec<u8>>>,
}

impl BusRecorder {
    fn start(tpm_port: u16) -> BusRecorder {
        use std::net::TcpListener;
        let bytes = Arc::new(Mutex::new(Vec::new()));
        // Port 0: the kernel picks a port nobody holds; the control port must be the next one.
        let (port, listeners) = loop {
            let command = TcpListener::bind(("127.0.0.1", 0)).unwrap();
            let port = command.local_addr().unwrap().port();
            let Some(next) = port.checked_add(1) else {
                continue;
            };
            if let Ok(control) = TcpListener::bind(("127.0.0.1", next)) {
                break (port, [(command, tpm_port), (control, tpm_port + 1)]);
            }
        };
        for (listener, target) in listeners {
            let bytes = bytes.clone();
            std::thread::spawn(move || {
                for client in listener.incoming().flatten() {
                    forward(client, target, &bytes);
                }
            });
        }
        BusRecorder { port, bytes }
    }

    fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    fn saw(&self, needle: &[u8]) -> bool {
        let bytes = self.bytes.lock().unwrap();
        bytes.windows(needle.len()).any(|w| w == needle)
    }
}

#[test]
fn the_secret_never_crosses_the_tpm_bus_in_clear() {
    if !require_tool("swtpm") {
        return;
    }
    let tpm = start_tpm();
    let bus = BusRecorder::start(tpm.port());
    let sealed = seal_secret(&bus.tcti(), SECRET, &pcrs_7_11()).unwrap();
    assert_eq!(
        unseal_secret(&bus.tcti(), &sealed).unwrap().as_slice(),
        SECRET
    );
    // The same for a secret bound to the TPM alone.
    let bound = cairn_tpm::TpmBoundSecret::seal(&bus.tcti(), SECRET).unwrap();
    assert_eq!(bound.unseal(&bus.tcti()).unwrap().as_slice(), SECRET);
    // Control: an unencrypted command's parameter is visible to the recorder.
    extend_pcr(&bus.tcti(), 16, b"visible on the bus").unwrap();
    assert!(bus.saw(&Sha256::digest(b"visible on the bus")));
    assert!(
        !bus.saw(SECRET),
        "the secret crossed the TPM bus in clear (create or unseal without parameter encryption)"
    );
}

/// Copy both directions between `client` and the TPM at `target`, recording every byte before
/// forwarding it (so once the client has an answer, the whole exchange is recorded).
fn forward(client: std::net::TcpStream, target: u16, bytes: &Arc<Mutex<Vec<u8>>>) {
    let server = std::net::TcpStream::connect(("127.0.0.1", target)).unwrap();
    for (mut from, mut to) in [
        (client.try_clone().unwrap(), server.try_clone().unwrap()),
        (server, client),
    ] {
        let bytes = bytes.clone();
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            let mut buf = [0u8; 4096];
            while let Ok(n) = from.read(&mut buf) {
                bytes.lock().unwrap().extend_from_slice(&buf[..n]);
                if n == 0 || to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            let _ = to.shutdown(std::net::Shutdown::Both);
        });
    }
}
