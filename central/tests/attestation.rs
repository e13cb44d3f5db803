//! Remote attestation over REST against a real central: attestation records written through
//! the registry (the stream side that writes them is tested with the agent) show in device
//! lists, details and `GET .../attestation`; an admin accepts a failed boot's measurements or
//! resets the pinned references, each audited; lower roles are refused; Prometheus counts
//! devices per state.

use cairn_api::{
    AttestationState, AuditLog, DeviceAttestation, DeviceDetail, DeviceList, PinnedPcr,
};
use cairn_central::store::{attestation, db::params, devices, now_unix, DeviceStatus};
use cairn_testsupport::central::{error_message, TestCentral};

/// The registry's devices of this test: (id, key storage, status).
const DEVICES: &[(&str, &str, DeviceStatus)] = &[
    ("dev_verified", "tpm", DeviceStatus::Active),
    ("dev_stale", "tpm", DeviceStatus::Active),
    ("dev_failed", "tpm", DeviceStatus::Active),
    ("dev_new", "tpm", DeviceStatus::Active),
    ("dev_soft", "software", DeviceStatus::Active),
    ("dev_gone", "tpm", DeviceStatus::Revoked),
];

const REFERENCE: &str = "0 80000008 aa\n0 0000000d bb\n7 80000001 cc\n";
const MEASURED: &str = "0 80000008 aa\n7 80000001 dd\n";

/// Write the devices and their records straight into the registry.
async fn seed(central: &TestCentral) {
    let interval = central.config.attestation_interval_secs as i64;
    let (token_id, _) = central.token("auto", None, None);
    central
        .c()
        .shared
        .store
        .run(move |conn| {
            let now = now_unix();
            for (id, key_storage, status) in DEVICES {
                let facts = devices::DeviceFacts {
                    serial: format!("SN-{id}"),
                    key_storage: (*key_storage).into(),
                    os_version: "2.0".into(),
                    ..Default::default()
                };
                devices::insert(
                    conn,
                    id,
                    status.clone(),
                    &format!("key-{id}"),
                    &facts,
                    &token_id,
                )?;
            }
            attestation::record_verified(conn, "dev_verified", now, REFERENCE, "2.0 11\n", "2.0")?;
            attestation::record_verified(
                conn,
                "dev_stale",
                now - 3 * interval,
                REFERENCE,
                "",
                "2.0",
            )?;
            attestation::record_verified(
                conn,
                "dev_failed",
                now - 10,
                REFERENCE,
                "2.0 11\n",
                "2.0",
            )?;
            attestation::record_failed(
                conn,
                "dev_failed",
                now,
                "PCR 7: Secure Boot is off",
                Some(MEASURED),
                Some("2.0 22"),
            )?;
            attestation::record_failed(
                conn,
                "dev_gone",
                now,
                "PCR 0: firmware changed",
                None,
                None,
            )?;
            conn.execute(
                "INSERT INTO bundles (sha256, version, compatible, size, uploaded_at, uploaded_by,
                    uki_pcr11) VALUES ('b1', '2.0', 'x86_64', 1, 0, 'test', '33 44')",
                params![],
            )?;
            Ok(())
        })
        .await
        .unwrap();
}

fn states(list: &DeviceList) -> Vec<(String, AttestationState)> {
    list.devices
        .iter()
        .map(|d| (d.device.id.clone(), d.attestation.state.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_and_details_show_each_devices_attestation_state() {
    let central = TestCentral::start().await;
    seed(&central).await;
    let mut listed = states(&central.get::<DeviceList>("/api/v1/devices"));
    listed.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        listed,
        vec![
            ("dev_failed".into(), AttestationState::Failed),
            ("dev_gone".into(), AttestationState::Failed),
            ("dev_new".into(), AttestationState::Pending),
            ("dev_soft".into(), AttestationState::Unsupported),
            ("dev_stale".into(), AttestationState::Stale),
            ("dev_verified".into(), AttestationState::Verified),
        ]
    );
    let failed: DeviceDetail = central.get("/api/v1/devices/dev_failed");
    assert_eq!(failed.device.attestation.state, AttestationState::Failed);
    assert_eq!(
        failed.device.attestation.detail.as_deref(),
        Some("PCR 7: Secure Boot is off")
    );
    assert!(failed.device.attestation.verified_at.is_some());
    let verified: DeviceDetail = central.get("/api/v1/devices/dev_verified");
    assert_eq!(
        verified.device.attestation.state,
        AttestationState::Verified
    );
    assert_eq!(verified.device.attestation.detail, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_attestation_view_lists_pinned_pcrs_uki_values_and_what_waits() {
    let central = TestCentral::start().await;
    seed(&central).await;
    let view: DeviceAttestation = central.get("/api/v1/devices/dev_failed/attestation");
    assert_eq!(view.device_id, "dev_failed");
    assert_eq!(view.summary.state, AttestationState::Failed);
    assert!(view.acceptable && view.checked_at.is_some());
    assert_eq!(
        view.interval_seconds,
        central.config.attestation_interval_secs
    );
    assert_eq!(view.require_secure_boot, central.config.require_secure_boot);
    assert_eq!(
        view.pinned,
        vec![
            PinnedPcr { pcr: 0, events: 2 },
            PinnedPcr { pcr: 7, events: 1 }
        ]
    );
    let uki: Vec<_> = view
        .uki
        .iter()
        .map(|u| (u.os_version.as_str(), u.pcr11.as_str(), u.source.as_str()))
        .collect();
    assert_eq!(
        uki,
        [
            ("2.0", "33", "bundle"),
            ("2.0", "44", "bundle"),
            ("2.0", "11", "learned")
        ]
    );

    let soft: DeviceAttestation = central.get("/api/v1/devices/dev_soft/attestation");
    assert_eq!(soft.summary.state, AttestationState::Unsupported);
    assert!(!soft.acceptable && soft.pinned.is_empty() && soft.checked_at.is_none());

    let (status, body) = central.call(
        &central.admin,
        "GET",
        "/api/v1/devices/dev_nope/attestation",
        None,
    );
    assert_eq!(status, 404, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_accepts_a_failed_boot_once_and_resets_the_references() {
    let central = TestCentral::start().await;
    seed(&central).await;
    let (status, body) = central.call(
        &central.admin,
        "POST",
        "/api/v1/devices/dev_verified/attestation/accept",
        None,
    );
    assert_eq!(status, 409, "{body}");
    assert!(error_message(&body).contains("nothing to accept"), "{body}");

    let accepted: DeviceAttestation = central.admin_read(
        "POST",
        "/api/v1/devices/dev_failed/attestation/accept",
        None,
    );
    assert!(!accepted.acceptable);
    assert_eq!(
        accepted.pinned,
        vec![
            PinnedPcr { pcr: 0, events: 1 },
            PinnedPcr { pcr: 7, events: 1 }
        ]
    );
    assert!(accepted
        .uki
        .iter()
        .any(|u| u.pcr11 == "22" && u.source == "learned"));
    let record = central
        .c()
        .shared
        .store
        .read(|conn| attestation::get(conn, "dev_failed"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.reference.as_deref(), Some(MEASURED));
    assert_eq!(record.uki, "2.0 11\n2.0 22\n");
    assert_eq!(record.pending_reference, None);
    let (status, _) = central.call(
        &central.admin,
        "POST",
        "/api/v1/devices/dev_failed/attestation/accept",
        None,
    );
    assert_eq!(status, 409, "a second accept has nothing left to accept");

    let reset: DeviceAttestation = central.admin_read(
        "POST",
        "/api/v1/devices/dev_verified/attestation/reset",
        None,
    );
    assert!(reset.pinned.is_empty());
    assert!(reset.uki.iter().all(|u| u.source == "bundle"), "{reset:?}");

    // The accept names what it let in: the UKI line and the reference's digest.
    let accepted = format!(
        "failure=PCR 7: Secure Boot is off; accepted uki=2.0 22; accepted reference sha256={}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(MEASURED.as_bytes()))
    );
    let audit: AuditLog = central.get("/api/v1/audit");
    let actions: Vec<_> = audit
        .events
        .iter()
        .filter(|e| e.action.starts_with("device.attestation"))
        .map(|e| (e.action.as_str(), e.target.as_str(), e.detail.as_str()))
        .collect();
    assert_eq!(
        actions,
        [
            ("device.attestation_reset", "dev_verified", "state=verified"),
            ("device.attestation_accept", "dev_failed", accepted.as_str()),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admins_accept_or_reset_and_unknown_devices_are_not_found() {
    let central = TestCentral::start().await;
    seed(&central).await;
    let viewer = central.api_token("watcher", "viewer");
    let operator = central.api_token("ops", "operator");
    for action in ["accept", "reset"] {
        let path = format!("/api/v1/devices/dev_failed/attestation/{action}");
        for token in [&viewer, &operator] {
            let (status, body) = central.call(token, "POST", &path, None);
            assert_eq!(status, 403, "{action}: {body}");
        }
        let (status, body) = central.call(
            &central.admin,
            "POST",
            &format!("/api/v1/devices/dev_nope/attestation/{action}"),
            None,
        );
        assert_eq!(status, 404, "{action}: {body}");
    }
    let (status, body) = central.call(
        &viewer,
        "GET",
        "/api/v1/devices/dev_failed/attestation",
        None,
    );
    assert_eq!(status, 200, "{body}");
    let record = central
        .c()
        .shared
        .store
        .read(|conn| attestation::get(conn, "dev_failed"))
        .await
        .unwrap()
        .unwrap();
    assert!(
        record.pending_reference.is_some(),
        "refused calls change nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_devices_per_attestation_state() {
    let central = TestCentral::start().await;
    seed(&central).await;
    let text = tokio::task::block_in_place(|| {
        central
            .rest()
            .get(&central.rest_url("/metrics"))
            .set("Authorization", &format!("Bearer {}", central.admin))
            .call()
            .unwrap()
            .into_string()
            .unwrap()
    });
    for (state, count) in [("verified", 1), ("stale", 1), ("failed", 1), ("pending", 1)] {
        let line = format!("cairn_devices_attestation{{state=\"{state}\"}} {count}\n");
        assert!(text.contains(&line), "no {line:?} in\n{text}");
    }
    assert!(
        !text.contains("dev_"),
        "metrics name no device: a revoked device is not counted"
    );
}
