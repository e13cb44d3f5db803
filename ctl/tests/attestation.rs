//! `cairnctl device list|show|attestation` against a real central whose attestation records are
//! written straight into its registry (the stream side that writes them is tested with the
//! agent): the ATTEST column, the detail lines, the attestation view, accept and reset, and an
//! operator refused.

use cairn_api::{AttestationState, DeviceAttestation};
use cairn_testsupport::central::{SimDevice, TestCentral};
use support::Ctl;

mod support;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attestation_is_listed_shown_accepted_and_reset_through_cairnctl() {
    let central = TestCentral::start().await;
    let ctl = Ctl::new(&central);
    let (_, token) = central.token("auto", None, None);
    let device = SimDevice::new("SN-ATTEST")
        .enroll(&central, &token)
        .await
        .unwrap();
    let id = device.device_id.clone();
    central.record_attestation(&id, true).await;

    let table = ctl.ok(&["device", "list"]);
    assert!(table.lines().next().unwrap().contains("ATTEST"), "{table}");
    let row = table.lines().find(|l| l.contains(&id)).unwrap();
    assert!(row.contains(" failed "), "{table}");
    let shown = ctl.ok(&["device", "show", &id]);
    assert!(shown.contains("attestation:"), "{shown}");
    assert!(shown.contains("PCR 7: Secure Boot is off"), "{shown}");

    let text = ctl.ok(&["device", "attestation", &id]);
    assert!(
        text.contains("pinned:") && text.contains("PCR 0 (1 events)"),
        "{text}"
    );
    assert!(text.contains("1.0   ab      learned"), "{text}");
    assert!(text.contains("os_version:  1.0\n"), "{text}");
    assert!(
        text.contains("changed firmware PCRs: PCR 7; UKI: OS 1.0 PCR 11 cd"),
        "{text}"
    );
    assert!(
        text.contains(&format!("cairnctl device attestation {id} --accept")),
        "{text}"
    );

    let operator = central.api_token("ops", "operator");
    std::fs::write(&ctl.token_file, format!("{operator}\n")).unwrap();
    let refused = ctl.run(&["device", "attestation", &id, "--accept"]);
    assert!(
        !refused.ok && refused.stderr.contains("admin"),
        "{}",
        refused.stderr
    );
    std::fs::write(&ctl.token_file, format!("{}\n", central.admin)).unwrap();

    let accepted: DeviceAttestation = ctl.read(&["device", "attestation", &id, "--accept"]);
    assert!(!accepted.acceptable);
    assert_eq!(accepted.summary.state, AttestationState::Failed);
    assert_eq!(accepted.pinned.len(), 2);
    assert!(accepted.pending.is_none());
    assert_eq!(accepted.os_version.as_deref(), Some("1.0"));
    let again = ctl.run(&["device", "attestation", &id, "--accept"]);
    assert!(
        !again.ok && again.stderr.contains("nothing to accept"),
        "{}",
        again.stderr
    );

    let reset = ctl.ok(&["device", "attestation", &id, "--reset"]);
    assert!(reset.contains("uki: none accepted yet"), "{reset}");
    let both = ctl.run(&["device", "attestation", &id, "--accept", "--reset"]);
    assert!(!both.ok, "--accept and --reset conflict");
}
