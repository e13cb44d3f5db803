//! Malformed CSRs, oversized messages, garbage bytes and bad REST requests: each gets a clear
//! error and central keeps serving everyone else.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use cairn_proto::v1::EnrollStatus;
use cairn_testsupport::central::{SimDevice, TestCentral};
use serde_json::json;
use tonic::Code;

/// Throw bytes at a port; returns what came back before the server closed or went quiet.
fn throw_garbage(port: u16, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = stream.write_all(bytes);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    answer
}

async fn still_serves(central: &TestCentral, token: &str, serial: &str) {
    let response = SimDevice::new(serial)
        .enroll(central, token)
        .await
        .expect("enrollment still works");
    assert_eq!(response.status(), EnrollStatus::Approved);
    let (status, body) = central.call(&central.admin, "GET", "/healthz", None);
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_csrs_and_facts_are_refused_with_invalid_argument() {
    let central = TestCentral::start().await;
    let (_, token) = central.token("auto", None, None);
    let device = SimDevice::new("SER-CSR");
    let mut client = central.enrollment().await;

    let mut request = device.request(&token);
    request.csr_der = b"definitely not DER".to_vec();
    let status = client.enroll(request).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("PKCS#10"), "{status:?}");

    let mut request = device.request(&token);
    let last = request.csr_der.len() - 3;
    request.csr_der[last] ^= 0xff; // break the signature: no proof of key possession
    let status = client.enroll(request).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    let mut request = device.request(&token);
    request.facts.as_mut().unwrap().serial = "bad\u{7}serial".into();
    let status = client.enroll(request).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("serial"), "{status:?}");

    let mut request = device.request(&token);
    request.facts = None;
    assert_eq!(
        client.enroll(request).await.unwrap_err().code(),
        Code::InvalidArgument
    );

    assert_eq!(
        central.admin_call("GET", "/api/v1/devices", None)["devices"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    still_serves(&central, &token, "SER-AFTER-CSR").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_tpm_evidence_is_refused_and_central_keeps_serving() {
    use cairn_proto::v1::{TpmActivation, TpmEvidence};
    // Central trusts a "vendor" (its own CA certificate will do as an anchor here).
    let dir = tempfile::tempdir().unwrap();
    let anchor = dir.path().join("vendor.pem");
    let mut config = cairn_testsupport::central::config_in(dir.path());
    let probe = TestCentral::start().await;
    std::fs::write(&anchor, &probe.ca_pem).unwrap();
    config.tpm_vendor_cas = vec![anchor];
    let central = TestCentral::start_with(dir, config).await;
    let (_, tpm_only) = central.tpm_token("auto", None);
    let (_, open) = central.token("auto", None, None);
    let with = |serial: &str, token: &str, evidence: TpmEvidence| {
        let mut request = SimDevice::new(serial).request(token);
        request.facts.as_mut().unwrap().key_storage = "tpm".into();
        request.tpm = Some(evidence);
        request
    };
    let send = |request| async {
        central
            .enrollment()
            .await
            .enroll(request)
            .await
            .map(|r| r.into_inner())
    };
    let garbage = |n: usize| (0..n).map(|i| (i * 7 + 3) as u8).collect::<Vec<u8>>();
    let cases: Vec<(&str, TpmEvidence, Code, &str)> = vec![
        (
            "oversized",
            TpmEvidence {
                ek_certificate_der: garbage(40 * 1024),
                ..Default::default()
            },
            Code::InvalidArgument,
            "at most",
        ),
        (
            "too many chain certificates",
            TpmEvidence {
                ek_certificate_der: garbage(100),
                ek_chain_der: vec![garbage(10); 9],
                ..Default::default()
            },
            Code::InvalidArgument,
            "chain certificates",
        ),
        (
            "garbage EK certificate",
            TpmEvidence {
                ek_certificate_der: garbage(1500),
                ak_public: garbage(90),
                ..Default::default()
            },
            Code::PermissionDenied,
            "endorsement key certificate refused",
        ),
        (
            "no EK certificate",
            TpmEvidence {
                ak_public: garbage(90),
                ..Default::default()
            },
            Code::PermissionDenied,
            "no endorsement key certificate",
        ),
    ];
    for (what, evidence, code, words) in cases {
        let status = send(with("SER-HOSTILE", &tpm_only, evidence))
            .await
            .expect_err(what);
        assert_eq!(status.code(), code, "{what}: {status:?}");
        assert!(status.message().contains(words), "{what}: {status:?}");
    }
    // An activation for a challenge central never made.
    let mut forged = with("SER-TICKET", &tpm_only, TpmEvidence::default());
    forged.activation = Some(TpmActivation {
        ticket: garbage(100),
        secret: garbage(32),
    });
    assert_eq!(
        send(forged).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    // A token that allows software keys admits an unprovable TPM as such.
    let answer = send(with("SER-UNPROVEN", &open, TpmEvidence::default()))
        .await
        .unwrap();
    assert_eq!(answer.status(), EnrollStatus::Approved);
    still_serves(&central, &open, "SER-AFTER").await;
    let devices: cairn_api::DeviceList = central.get("/api/v1/devices");
    assert_eq!(devices.devices.len(), 2, "no refused attempt left a device");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_are_refused_before_they_are_processed() {
    let central = TestCentral::start().await;
    let (_, token) = central.token("auto", None, None);
    let mut request = SimDevice::new("SER-BIG").request(&token);
    request.token = "x".repeat(cairn_proto::MAX_MESSAGE_BYTES + 1024);
    let status = central
        .enrollment()
        .await
        .enroll(request)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("too large"), "{status:?}");
    still_serves(&central, &token, "SER-AFTER-BIG").await;

    // Central answers 413 after 64 KiB without reading the rest, so the upload may also end with
    // the connection reset under the client: both are a refusal. Central must then still serve.
    let huge = json!({ "name": "x".repeat(100 * 1024), "policy": "auto" });
    match central.try_call(
        &central.admin,
        "POST",
        "/api/v1/enrollment-tokens",
        Some(huge),
    ) {
        Ok((status, body)) => assert!(status == 400 || status == 413, "{status} {body}"),
        Err(e) => assert!(
            ["Broken pipe", "reset", "Connection"]
                .iter()
                .any(|w| e.to_string().contains(w)),
            "unexpected transport error: {e}"
        ),
    }
    let tokens = central.admin_call("GET", "/api/v1/enrollment-tokens", None);
    assert!(tokens["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["name"].as_str().unwrap().len() < 1024));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_both_ports_does_not_stop_central() {
    let central = TestCentral::start().await;
    let (_, token) = central.token("auto", None, None);
    let grpc = central.c().grpc_addr.port();
    let rest = central.c().rest_addr.port();
    let noise: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    tokio::task::spawn_blocking(move || {
        for port in [grpc, rest] {
            throw_garbage(port, &noise);
            throw_garbage(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
            throw_garbage(port, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00");
            // A client that connects and never speaks is dropped by the handshake timeout,
            // without blocking anyone else meanwhile.
            let _idle = TcpStream::connect(("127.0.0.1", port)).unwrap();
        }
    })
    .await
    .unwrap();
    still_serves(&central, &token, "SER-AFTER-GARBAGE").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_refuses_bad_requests_with_clear_json_errors() {
    let central = TestCentral::start().await;
    let (status, body) = central.call("", "GET", "/api/v1/devices", None);
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "unauthorized");
    let (status, _) = central.call("cat_wrong", "GET", "/api/v1/devices", None);
    assert_eq!(status, 401);

    // Roles: a viewer reads but cannot change; an operator cannot mint API tokens.
    let viewer = central.api_token("v", "viewer");
    let operator = central.api_token("o", "operator");
    assert_eq!(central.call(&viewer, "GET", "/api/v1/devices", None).0, 200);
    let (status, body) = central.call(
        &viewer,
        "POST",
        "/api/v1/enrollment-tokens",
        Some(json!({ "name": "n", "policy": "auto" })),
    );
    assert_eq!(status, 403);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("operator role"),
        "{body}"
    );
    assert_eq!(
        central
            .call(
                &operator,
                "POST",
                "/api/v1/enrollment-tokens",
                Some(json!({ "name": "n", "policy": "auto" }))
            )
            .0,
        201
    );
    assert_eq!(
        central
            .call(
                &operator,
                "POST",
                "/api/v1/api-tokens",
                Some(json!({ "name": "x", "role": "admin" }))
            )
            .0,
        403
    );
    assert_eq!(central.call(&operator, "GET", "/api/v1/audit", None).0, 403);

    // Bad JSON and bad values say what is wrong.
    let (status, body) = central.call(
        &central.admin,
        "POST",
        "/api/v1/enrollment-tokens",
        Some(json!({ "name": "n", "policy": "sometimes" })),
    );
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("policy"),
        "{body}"
    );
    let (status, _) = central.call(
        &central.admin,
        "POST",
        "/api/v1/enrollment-tokens",
        Some(json!({ "name": "n", "policy": "auto", "max_uses": 0 })),
    );
    assert_eq!(status, 400);
    let (status, _) = central.call(&central.admin, "GET", "/api/v1/devices/dev_nope", None);
    assert_eq!(status, 404);
    let (status, _) = central.call(
        &central.admin,
        "POST",
        "/api/v1/devices/dev_nope/approve",
        None,
    );
    assert_eq!(status, 404);
    let (status, _) = central.call(&central.admin, "GET", "/api/v1/nothing-here", None);
    assert_eq!(status, 404);

    // The OpenAPI document is served without a token.
    let (status, doc) = central.call("", "GET", "/api/v1/openapi.json", None);
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");

    // Every change above is in the audit log under its actor; secrets are not.
    let audit = central.admin_call("GET", "/api/v1/audit?limit=50", None);
    let text = audit.to_string();
    assert!(
        text.contains("api:o") && text.contains("token.create"),
        "{text}"
    );
    assert!(
        !text.contains(&operator) && !text.contains(&viewer),
        "audit log leaks a secret"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_yaml_alias_bomb_is_refused_fast_with_bounded_memory() {
    let central = TestCentral::start().await;
    let (_, token) = central.token("auto", None, None);
    let device = central.connect_device("SER-BOMB").await;
    let bomb = cairn_testsupport::hostile::yaml_alias_bomb();
    // Warm up the REST path (connection, routes) so the timing below is the parse.
    let (status, _) = central.call(
        &central.admin,
        "GET",
        &format!("/api/v1/devices/{}/apps", device.id),
        None,
    );
    assert_eq!(status, 200);
    let peak_before = cairn_testsupport::hostile::peak_rss_bytes();
    for path in [
        format!("/api/v1/devices/{}/apps/bomb", device.id),
        "/api/v1/deployments".to_owned(),
    ] {
        let (method, body) = if path.ends_with("deployments") {
            (
                "POST",
                json!({ "name": "bomb", "compose_yaml": bomb, "placement": {} }),
            )
        } else {
            ("PUT", json!({ "compose_yaml": bomb }))
        };
        let (took, answers) = cairn_testsupport::hostile::fastest_of_three(|| {
            central.call(&central.admin, method, &path, Some(body.clone()))
        });
        for (status, answer) in answers {
            assert_eq!(status, 400, "{answer}");
            assert!(
                answer["error"]["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("nodes"),
                "{answer}"
            );
        }
        eprintln!("{method} {path}: refused in {took:?}");
        assert!(took < Duration::from_millis(100), "{path} took {took:?}");
    }
    let grown = cairn_testsupport::hostile::peak_rss_bytes().saturating_sub(peak_before);
    assert!(grown < 64 << 20, "peak memory grew by {grown} bytes");
    still_serves(&central, &token, "SER-AFTER-BOMB").await;
}
