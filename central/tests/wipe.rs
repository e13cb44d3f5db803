//! Crypto-erase orders at central, with hostile devices: only an admin orders a wipe; a revoked
//! device hears the order (the `cairn-wipe` trailer on PERMISSION_DENIED) until it reports the
//! wipe once; a report from a device nobody ordered to wipe, a second report, or an oversized
//! one is refused; what a report says is cut and cleaned before it reaches the audit log.

use cairn_api::{AuditLog, DeviceDetail};
use cairn_proto::v1::{AgentMessage, ReportWipeRequest};
use cairn_testsupport::central::{read, TestCentral};
use tonic::Code;

fn wipe_trailer(status: &tonic::Status) -> Option<String> {
    status
        .metadata()
        .get(cairn_proto::WIPE_METADATA_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wipe_orders_and_reports_are_bounded_and_one_shot() {
    let central = TestCentral::start().await;
    let device = central.connect_device("SN-HOSTILE-WIPE").await;
    let id = device.id.clone();
    let mut agent = central.agent(&device.sim, &device.cert).await;
    let report = |destroyed: Vec<String>| ReportWipeRequest {
        destroyed,
        error: String::new(),
    };

    // Nobody ordered a wipe: an active device may not report one.
    let refused = agent
        .report_wipe(report(vec!["everything".into()]))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");

    // Only an admin orders one.
    let viewer = central.api_token("watcher", "viewer");
    let operator = central.api_token("ops", "operator");
    for token in [&viewer, &operator] {
        let (status, _) = central.call(token, "POST", &format!("/api/v1/devices/{id}/wipe"), None);
        assert_eq!(status, 403);
    }
    let (status, body) = central.call(
        &central.admin,
        "POST",
        "/api/v1/devices/dev_nope/wipe",
        None,
    );
    assert_eq!(status, 404, "{body}");
    let (status, body) = central.call(
        &central.admin,
        "POST",
        &format!("/api/v1/devices/{id}/wipe"),
        None,
    );
    assert_eq!(status, 200, "{body}");

    // The device hears the order on any call.
    let (_tx, rx) = tokio::sync::mpsc::channel::<AgentMessage>(1);
    let refused = agent
        .sync(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert_eq!(
        wipe_trailer(&refused).as_deref(),
        Some(cairn_proto::WIPE_ORDERED)
    );

    // Oversized reports are refused and record nothing.
    let too_many = agent
        .report_wipe(report(vec![
            "x".into();
            cairn_proto::MAX_WIPE_REPORT_ITEMS + 1
        ]))
        .await
        .unwrap_err();
    assert_eq!(too_many.code(), Code::InvalidArgument, "{too_many:?}");

    // A real report, with control characters and an overlong item: recorded, cleaned and cut.
    let long = "k".repeat(10_000);
    agent
        .report_wipe(report(vec!["keyslot 0\x1b[31m".into(), long]))
        .await
        .unwrap();
    let shown: DeviceDetail = read(
        "GET",
        "device",
        central
            .call(
                &central.admin,
                "GET",
                &format!("/api/v1/devices/{id}"),
                None,
            )
            .1,
    );
    assert!(shown.device.device.wiped_at.is_some());
    let audit: AuditLog = read(
        "GET",
        "audit",
        central.call(&central.admin, "GET", "/api/v1/audit", None).1,
    );
    let done = audit
        .events
        .iter()
        .find(|e| e.action == "device.wipe_done")
        .expect("the wipe report is audited");
    assert!(!done.detail.contains('\x1b'), "{:?}", done.detail);
    assert!(done.detail.len() < 1_000, "{} bytes", done.detail.len());

    // Once only; and the order is no longer repeated.
    let again = agent
        .report_wipe(report(vec!["again".into()]))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::PermissionDenied);
    let (_tx, rx) = tokio::sync::mpsc::channel::<AgentMessage>(1);
    let refused = agent
        .sync(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert_eq!(wipe_trailer(&refused), None);
}
