//! Enrollment policies, token limits, revocation, renewal and restart against a real central
//! on loopback, with raw protocol clients holding software keys.

use std::time::Duration;

use cairn_api::{
    ApiTokenList, AuditLog, ClaimList, DeviceDetail, DeviceList, DeviceReply, DeviceStatus,
    EnrollmentTokenList,
};
use cairn_proto::v1::{
    agent_message, central_message, AgentMessage, EnrollStatus, Heartbeat, PingRequest,
    RenewRequest,
};
use cairn_testsupport::central::{error_message, SimDevice, TestCentral};
use serde_json::json;
use tonic::Code;

fn assert_refused(result: Result<impl std::fmt::Debug, tonic::Status>, code: Code, words: &str) {
    let status = result.expect_err("expected a refusal");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().contains(words),
        "message {:?} should mention {words:?}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_policy_approves_and_issues_a_device_certificate() {
    let central = TestCentral::start().await;
    let (_, token) = central.token("auto", None, None);
    let device = SimDevice::new("SER-AUTO-1");
    let response = device.enroll(&central, &token).await.unwrap();
    assert_eq!(response.status(), EnrollStatus::Approved);
    assert!(response.device_id.starts_with("dev_"));
    let mut agent = central.agent(&device, &response.certificate_der).await;
    let pong = agent
        .ping(PingRequest { nonce: 7 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (pong.nonce, pong.device_id.as_str()),
        (7, response.device_id.as_str())
    );
    let shown: DeviceDetail = central.get(&format!("/api/v1/devices/{}", response.device_id));
    assert_eq!(shown.device.device.status, DeviceStatus::Active);
    assert_eq!(shown.device.device.serial, "SER-AUTO-1");
    // Asking again with the same key is idempotent: same device, fresh certificate.
    let again = device.enroll(&central, &token).await.unwrap();
    assert_eq!(again.device_id, response.device_id);
    let listed: DeviceList = central.get("/api/v1/devices");
    assert_eq!(listed.devices.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_policy_waits_until_an_operator_approves() {
    let central = TestCentral::start().await;
    let (_, token) = central.token("manual", None, None);
    let device = SimDevice::new("SER-MANUAL");
    let first = device.enroll(&central, &token).await.unwrap();
    assert_eq!(first.status(), EnrollStatus::Pending);
    assert!(first.certificate_der.is_empty());
    assert_eq!(first.retry_after_seconds, 1);
    let polled = device.enroll(&central, &token).await.unwrap();
    assert_eq!(
        (polled.status(), &polled.device_id),
        (EnrollStatus::Pending, &first.device_id)
    );
    // A pending device cannot use the agent API: it has no certificate at all.
    let approved: DeviceReply = central.admin_read(
        "POST",
        &format!("/api/v1/devices/{}/approve", first.device_id),
        None,
    );
    assert_eq!(approved.device.status, DeviceStatus::Active);
    let done = device.enroll(&central, &token).await.unwrap();
    assert_eq!(done.status(), EnrollStatus::Approved);
    assert_eq!(done.device_id, first.device_id);
    assert!(!done.certificate_der.is_empty());
    // Polling did not consume extra token uses.
    let tokens: EnrollmentTokenList = central.get("/api/v1/enrollment-tokens");
    assert_eq!(tokens.tokens[0].uses, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_policy_admits_only_claimed_devices_once() {
    let central = TestCentral::start().await;
    let (_, token) = central.token("claim", None, None);
    let stranger = SimDevice::new("SER-UNKNOWN");
    assert_refused(
        stranger.enroll(&central, &token).await,
        Code::PermissionDenied,
        "not claimed",
    );
    central.admin_call(
        "POST",
        "/api/v1/claims",
        Some(json!({ "serial": "SER-KNOWN" })),
    );
    let known = SimDevice::new("SER-KNOWN");
    let response = known.enroll(&central, &token).await.unwrap();
    assert_eq!(response.status(), EnrollStatus::Approved);
    let claims: ClaimList = central.get("/api/v1/claims");
    assert_eq!(
        claims.claims[0].device_id.as_deref(),
        Some(response.device_id.as_str())
    );
    // A second box presenting the same serial with another key is refused.
    let clone = SimDevice::new("SER-KNOWN");
    assert_refused(
        clone.enroll(&central, &token).await,
        Code::PermissionDenied,
        "already used",
    );
    // Duplicate claims are refused with 409, malformed ones with 400.
    let (status, _) = central.call(
        &central.admin,
        "POST",
        "/api/v1/claims",
        Some(json!({ "serial": "SER-KNOWN" })),
    );
    assert_eq!(status, 409);
    let (status, body) = central.call(
        &central.admin,
        "POST",
        "/api/v1/claims",
        Some(json!({ "tpm_ek_sha256": "xyz" })),
    );
    assert_eq!(status, 400);
    assert!(error_message(&body).contains("64 hex"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_revoked_used_up_and_unknown_tokens_are_refused_clearly() {
    let central = TestCentral::start().await;
    let (_, once) = central.token("auto", Some(1), None);
    SimDevice::new("SER-A")
        .enroll(&central, &once)
        .await
        .unwrap();
    assert_refused(
        SimDevice::new("SER-B").enroll(&central, &once).await,
        Code::PermissionDenied,
        "used up",
    );

    let (revoked_id, revoked) = central.token("auto", None, None);
    central.admin_call(
        "POST",
        &format!("/api/v1/enrollment-tokens/{revoked_id}/revoke"),
        None,
    );
    assert_refused(
        SimDevice::new("SER-C").enroll(&central, &revoked).await,
        Code::PermissionDenied,
        "revoked",
    );

    let (_, short) = central.token("auto", None, Some(1));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_refused(
        SimDevice::new("SER-D").enroll(&central, &short).await,
        Code::PermissionDenied,
        "expired",
    );

    assert_refused(
        SimDevice::new("SER-E")
            .enroll(&central, "cet_not-a-real-token")
            .await,
        Code::Unauthenticated,
        "not recognised",
    );
    let devices: DeviceList = central.get("/api/v1/devices");
    assert_eq!(devices.devices.len(), 1, "only SER-A got in");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_tokens_require_a_tpm_unless_told_and_say_so() {
    let central = TestCentral::start().await;
    // The API's default: a TPM-only token, which refuses a software key before any write.
    let created: cairn_api::CreatedEnrollmentToken = central.admin_read(
        "POST",
        "/api/v1/enrollment-tokens",
        Some(json!({ "name": "fleet", "policy": "auto" })),
    );
    assert!(created.token.require_tpm);
    assert_refused(
        SimDevice::new("SER-SOFT")
            .enroll(&central, &created.secret)
            .await,
        Code::PermissionDenied,
        "--allow-software-keys",
    );
    let (id, open) = central.token("auto", None, None);
    let listed: EnrollmentTokenList = central.get("/api/v1/enrollment-tokens");
    let shown = listed.tokens.iter().find(|t| t.id == id).unwrap();
    assert!(!shown.require_tpm);
    let response = SimDevice::new("SER-SOFT")
        .enroll(&central, &open)
        .await
        .unwrap();
    assert_eq!(response.status(), EnrollStatus::Approved);
    let devices: DeviceList = central.get("/api/v1/devices");
    assert_eq!(
        devices.devices.len(),
        1,
        "the refused attempt wrote nothing"
    );
    assert_eq!(
        devices.devices[0].device.key_storage,
        cairn_api::KeyStorage::Software
    );
    // A device enrolled before TPM proofs (its agent reports an EK hash, sends no evidence)
    // keeps getting its certificate: a known key is answered from its record.
    let old_agent = SimDevice::new("SER-OLD");
    let first = old_agent.enroll(&central, &open).await.unwrap();
    let mut again = old_agent.request(&open);
    again.facts.as_mut().unwrap().tpm_ek_sha256 = "ab".repeat(32);
    let again = central
        .enrollment()
        .await
        .enroll(again)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.device_id, first.device_id);
    assert_eq!(again.status(), EnrollStatus::Approved);
    // A device claiming a TPM key without proving it is recorded as unverified.
    let mut unproven = SimDevice::new("SER-SAYS-TPM").request(&open);
    unproven.facts.as_mut().unwrap().key_storage = "tpm".into();
    let answer = central
        .enrollment()
        .await
        .enroll(unproven)
        .await
        .unwrap()
        .into_inner();
    let detail: DeviceDetail = central.get(&format!("/api/v1/devices/{}", answer.device_id));
    assert_eq!(
        detail.device.device.key_storage,
        cairn_api::KeyStorage::TpmUnverified
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_cannot_flood_enrollment() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = cairn_testsupport::central::config_in(dir.path());
    config.enroll_attempts_per_source_per_minute = 3;
    let central = TestCentral::start_with(dir, config).await;
    for attempt in 0..3 {
        assert_refused(
            SimDevice::new(&format!("SER-{attempt}"))
                .enroll(&central, "cet_guess")
                .await,
            Code::Unauthenticated,
            "not recognised",
        );
    }
    let throttled = SimDevice::new("SER-4").enroll(&central, "cet_guess").await;
    // The refusal says when to come back, in metadata the agent reads (a minute's bucket of 3:
    // at most 20 s).
    let wait = throttled
        .as_ref()
        .err()
        .and_then(cairn_proto::retry_after)
        .expect("a throttled call carries a retry-after");
    assert!(
        wait >= Duration::from_secs(1) && wait <= Duration::from_secs(20),
        "{wait:?}"
    );
    assert_refused(
        throttled,
        Code::ResourceExhausted,
        "too many enrollment attempts from 127.0.0.1",
    );
    // The limit is per call, not per token: a valid token is throttled as well until it refills.
    let (_, token) = central.token("auto", None, None);
    assert_refused(
        SimDevice::new("SER-5").enroll(&central, &token).await,
        Code::ResourceExhausted,
        "retry in",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_device_is_cut_off_at_once() {
    let central = TestCentral::start().await;
    let (_, token) = central.token("auto", None, None);
    let device = SimDevice::new("SER-REVOKE");
    let enrolled = device.enroll(&central, &token).await.unwrap();
    let mut agent = central.agent(&device, &enrolled.certificate_der).await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(AgentMessage {
        kind: Some(agent_message::Kind::Heartbeat(Heartbeat {
            seq: 1,
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let mut stream = agent
        .sync(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert!(
        matches!(first.kind, Some(central_message::Kind::Desired(ref d)) if d.revision == 1),
        "{first:?}"
    );

    // An operator config change reaches the open stream as a new revision.
    central.admin_call(
        "PUT",
        &format!("/api/v1/devices/{}/config", enrolled.device_id),
        Some(json!({ "config": { "site": "north" } })),
    );
    let desired = loop {
        match stream.message().await.unwrap().unwrap().kind {
            Some(central_message::Kind::Desired(d)) => break d,
            _ => continue,
        }
    };
    assert_eq!(
        (
            desired.revision,
            desired.config.get("site").map(String::as_str)
        ),
        (2, Some("north"))
    );
    let shown: DeviceDetail = central.get(&format!("/api/v1/devices/{}", enrolled.device_id));
    assert!(shown.device.device.online);
    // The NTP servers key is checked: what reaches timesyncd's configuration is a server list.
    let (status, answer) = central.call(
        &central.admin,
        "PUT",
        &format!("/api/v1/devices/{}/config", enrolled.device_id),
        Some(json!({ "config": { "cairn.ntp_servers": "ntp.site\nFallbackNTP=evil" } })),
    );
    assert_eq!(status, 400, "{answer}");
    assert!(
        error_message(&answer).contains("cairn.ntp_servers"),
        "{answer}"
    );

    central.admin_call(
        "POST",
        &format!("/api/v1/devices/{}/revoke", enrolled.device_id),
        None,
    );
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                other => break other,
            }
        }
    })
    .await
    .expect("stream ends promptly after revocation");
    let status = ended.expect_err("stream ends with an error");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_refused(
        agent.ping(PingRequest { nonce: 1 }).await,
        Code::PermissionDenied,
        "revoked",
    );
    // Re-enrolling the revoked key is refused too.
    assert_refused(
        device.enroll(&central, &token).await,
        Code::PermissionDenied,
        "revoked",
    );
    let audit: AuditLog = central.get("/api/v1/audit?limit=10");
    let actions: Vec<&str> = audit.events.iter().map(|e| e.action.as_str()).collect();
    assert!(
        actions.contains(&"device.revoke") && actions.contains(&"device.enroll"),
        "{actions:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_issues_a_new_certificate_only_for_the_enrolled_key() {
    let central = TestCentral::start().await;
    let (_, token) = central.token("auto", None, None);
    let device = SimDevice::new("SER-RENEW");
    let enrolled = device.enroll(&central, &token).await.unwrap();
    let mut agent = central.agent(&device, &enrolled.certificate_der).await;
    let renewed = agent
        .renew(RenewRequest {
            csr_der: device.csr(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(renewed.certificate_der, enrolled.certificate_der);
    let mut agent = central.agent(&device, &renewed.certificate_der).await;
    agent.ping(PingRequest { nonce: 2 }).await.unwrap();
    let other_key = SimDevice::new("SER-RENEW");
    assert_refused(
        agent
            .renew(RenewRequest {
                csr_der: other_key.csr(),
            })
            .await,
        Code::PermissionDenied,
        "enrolled device key",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_loses_nothing() {
    let mut central = TestCentral::start().await;
    let (_, token) = central.token("manual", Some(5), None);
    let pending = SimDevice::new("SER-P");
    let pending_id = pending.enroll(&central, &token).await.unwrap().device_id;
    let (_, auto) = central.token("auto", None, None);
    let active = SimDevice::new("SER-Q");
    let enrolled = active.enroll(&central, &auto).await.unwrap();
    central.admin_call("POST", "/api/v1/claims", Some(json!({ "serial": "SER-Z" })));
    let before: DeviceList = central.get("/api/v1/devices");

    central.restart().await;

    let after: DeviceList = central.get("/api/v1/devices");
    assert_eq!(before.devices.len(), after.devices.len());
    for (b, a) in before.devices.iter().zip(&after.devices) {
        let (b, a) = (&b.device, &a.device);
        assert_eq!(
            (&b.id, &b.status, &b.cert_serial),
            (&a.id, &a.status, &a.cert_serial)
        );
    }
    assert_eq!(central.get::<ClaimList>("/api/v1/claims").claims.len(), 1);
    // Same CA after restart: the old certificate still works; the pending device is still pending.
    let mut agent = central.agent(&active, &enrolled.certificate_der).await;
    agent.ping(PingRequest { nonce: 3 }).await.unwrap();
    let polled = pending.enroll(&central, &token).await.unwrap();
    assert_eq!(
        (polled.status(), polled.device_id),
        (EnrollStatus::Pending, pending_id)
    );
    // The bootstrap admin token was not replaced.
    let tokens: ApiTokenList = central.get("/api/v1/api-tokens");
    assert_eq!(tokens.api_tokens.len(), 1);
}
