//! Remote attestation against real swtpm TPMs and a real central: the agent answers central's
//! nonces with TPM2_Quotes by its attestation key; central verifies them with the AK it proved
//! at enrollment and appraises the boot. A quote over other PCR values, a replayed quote and a
//! boot whose PCRs its event log does not explain are each refused; a device whose boot fails is
//! quarantined (no new desired state) until it boots a chain that verifies again.
//!
//! swtpm on a host has no firmware, so its event log is empty and every PCR starts at zero: that
//! boot verifies (with Secure Boot not required); extending a PCR behind the log's back is the
//! "changed boot chain".
#![cfg(feature = "tpm")]

mod support;

use std::time::Duration;

use cairn_agent::tpm_key::TpmKey;
use cairn_agent::Phase;
use cairn_api::{AttestationState, DeviceDetail};
use cairn_central::attestation::{judge, Expectations, Verdict};
use cairn_proto::v1::AttestationReport;
use cairn_testsupport::central::{read, TestCentral};
use cairn_testsupport::Swtpm;
use serde_json::json;
use support::{eventually, wait_phase, RunningAgent, TpmFleet};

/// The PCRs central asks for.
const PCRS: [u8; 5] = [0, 2, 4, 7, 11];

/// A report as the agent builds it, for `nonce`.
fn report(key: &TpmKey, nonce: &[u8]) -> AttestationReport {
    let quoted = key.quote(nonce, &PCRS).unwrap();
    AttestationReport {
        nonce: nonce.to_vec(),
        quote: quoted.quote,
        signature: quoted.signature,
        pcrs: quoted
            .pcrs
            .into_iter()
            .map(|(i, v)| (u32::from(i), v.to_vec()))
            .collect(),
        event_log: quoted.event_log,
        os_version: "1.0".into(),
        error: String::new(),
    }
}

fn expect<'a>(ak: &'a [u8], nonce: &'a [u8], secure_boot: bool) -> Expectations<'a> {
    Expectations {
        ak_public: ak,
        nonce,
        record: None,
        bundle_uki: &[],
        expected_versions: &[],
        require_secure_boot: secure_boot,
    }
}

fn failed(verdict: Verdict) -> String {
    match verdict {
        Verdict::Failed { detail, .. } => detail,
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[test]
fn replayed_altered_and_unexplained_quotes_are_refused() {
    if !cairn_testsupport::require_tool("swtpm_setup") {
        return;
    }
    let tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let key = TpmKey::open_or_create(&tpm.tcti(), &dir.path().join("device-key.tpm")).unwrap();
    let ak = key.evidence().unwrap().ak_public;
    let nonce = [7u8; 32];

    let fresh = report(&key, &nonce);
    assert!(
        matches!(
            judge(&fresh, expect(&ak, &nonce, false)),
            Verdict::Verified { .. }
        ),
        "a fresh quote of an unchanged TPM"
    );
    // The same quote answered to a later nonce: a replay.
    let detail = failed(judge(&fresh, expect(&ak, &[8u8; 32], false)));
    assert!(detail.contains("nonce"), "{detail}");
    // Other PCR values than the TPM signed.
    let mut altered = fresh.clone();
    altered.pcrs.insert(7, vec![0x55; 32]);
    let detail = failed(judge(&altered, expect(&ak, &nonce, false)));
    assert!(detail.contains("digest"), "{detail}");
    // Signed by another AK (another TPM's).
    let other_tpm = Swtpm::start();
    let other_dir = tempfile::tempdir().unwrap();
    let other = TpmKey::open_or_create(&other_tpm.tcti(), &other_dir.path().join("device-key.tpm"))
        .unwrap();
    let detail = failed(judge(&report(&other, &nonce), expect(&ak, &nonce, false)));
    assert!(detail.contains("signature"), "{detail}");
    // Secure Boot required: a boot without firmware measurements fails on PCR 7.
    let detail = failed(judge(&fresh, expect(&ak, &nonce, true)));
    assert!(
        detail.starts_with("PCR 7") && detail.contains("Secure Boot"),
        "{detail}"
    );
    // A device that cannot quote fails closed.
    let detail = failed(judge(
        &AttestationReport {
            nonce: nonce.to_vec(),
            error: "TPM busy".into(),
            ..Default::default()
        },
        expect(&ak, &nonce, false),
    ));
    assert!(detail.contains("TPM busy"), "{detail}");
    drop(key);
    drop(tpm);
}

fn attestation(central: &TestCentral, id: &str) -> (AttestationState, Option<String>) {
    let (status, body) = central.call(
        &central.admin,
        "GET",
        &format!("/api/v1/devices/{id}"),
        None,
    );
    assert_eq!(status, 200, "{body}");
    let detail = read::<DeviceDetail>("GET", &format!("/api/v1/devices/{id}"), body);
    let summary = detail.device.attestation;
    (summary.state, summary.detail)
}

fn set_config(central: &TestCentral, id: &str, value: &str) {
    let (status, body) = central.call(
        &central.admin,
        "PUT",
        &format!("/api/v1/devices/{id}/config"),
        Some(json!({ "config": { "note": value } })),
    );
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_boot_chain_is_quarantined_until_it_verifies_again() {
    if !cairn_testsupport::require_tool("swtpm_setup") {
        return;
    }
    let TpmFleet {
        tpm,
        central,
        mut config,
        vendor: _vendor,
        dir: _dir,
        ..
    } = TpmFleet::start("SN-ATTEST", |c| c.attestation_interval_secs = 5).await;

    // 1. A clean boot verifies, and desired states flow.
    let running = RunningAgent::start(config.clone()).await;
    wait_phase(&running.agent, Phase::Connected).await;
    let id = support::device_id(&running.agent);
    eventually(Duration::from_secs(30), "verified", || {
        attestation(&central, &id).0 == AttestationState::Verified
    })
    .await;
    set_config(&central, &id, "one");
    let agent = running.agent.clone();
    let revision = || agent.status().borrow().desired_revision;
    eventually(Duration::from_secs(30), "config reaches the device", || {
        revision() >= 2
    })
    .await;
    let held = revision();
    drop(agent);
    running.stop().await;

    // 2. The boot chain changes behind the event log's back (PCR 7 extended in a new power
    // cycle): the reconnected device is failed naming PCR 7, and a new desired state does not
    // reach it.
    let tpm = tpm.restart();
    config.tpm_tcti = Some(tpm.tcti());
    cairn_tpm::extend_pcr(&tpm.tcti(), 7, b"another boot chain").unwrap();
    let running = RunningAgent::start(config.clone()).await;
    wait_phase(&running.agent, Phase::Connected).await;
    eventually(Duration::from_secs(30), "failed", || {
        attestation(&central, &id).0 == AttestationState::Failed
    })
    .await;
    let (_, detail) = attestation(&central, &id);
    let detail = detail.unwrap_or_default();
    assert!(detail.starts_with("PCR 7"), "{detail}");
    set_config(&central, &id, "two");
    // Two attestation intervals and several heartbeats: still the old revision.
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(
        running.agent.status().borrow().desired_revision,
        held,
        "a quarantined device got a new desired state"
    );
    assert_eq!(attestation(&central, &id).0, AttestationState::Failed);
    eventually(Duration::from_secs(30), "a quarantine event", || {
        let (_, events) = central.call(
            &central.admin,
            "GET",
            &format!("/api/v1/events?device={id}"),
            None,
        );
        events.to_string().contains("quarantined")
    })
    .await;
    running.stop().await;

    // 3. The TPM restarts (PCRs back to their reset values): the boot verifies again and the
    // held desired state arrives.
    let tpm = tpm.restart();
    config.tpm_tcti = Some(tpm.tcti());
    let running = RunningAgent::start(config).await;
    wait_phase(&running.agent, Phase::Connected).await;
    eventually(Duration::from_secs(30), "verified again", || {
        attestation(&central, &id).0 == AttestationState::Verified
    })
    .await;
    let agent = running.agent.clone();
    eventually(Duration::from_secs(30), "the held config arrives", || {
        agent.status().borrow().desired_revision > held
    })
    .await;
    running.stop().await;
}
