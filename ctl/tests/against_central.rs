//! The cairnctl binary against a real central on loopback: every command, tables and --json,
//! role refusals and TLS trust errors.

use cairn_api::{
    ClaimList, CreatedApiToken, CreatedEnrollmentToken, DeviceDetail, DeviceStatus,
    EnrollmentTokenList,
};
use cairn_proto::v1::EnrollStatus;
use cairn_testsupport::central::{SimDevice, TestCentral};
use support::Ctl;

mod support;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_workflow_through_cairnctl() {
    let central = TestCentral::start().await;
    let ctl = Ctl::new(&central);

    let created: CreatedEnrollmentToken = ctl.read(&[
        "token",
        "create",
        "--name",
        "shop-fleet",
        "--policy",
        "manual",
        "--max-uses",
        "2",
        "--expires-in",
        "7d",
        "--allow-software-keys",
    ]);
    assert!(!created.token.require_tpm);
    let secret = created.secret;
    let token_id = created.token.id;
    let table = ctl.ok(&["token", "list"]);
    assert!(
        table.contains("shop-fleet")
            && table.contains("manual")
            && table.contains("tpm+software")
            && table.contains(&token_id),
        "{table}"
    );
    assert!(
        !table.contains(&secret),
        "token list must never show a secret"
    );

    let device = SimDevice::new("SN-CTL-1");
    let pending = device.enroll(&central, &secret).await.unwrap();
    assert_eq!(pending.status(), EnrollStatus::Pending);
    let table = ctl.ok(&["device", "list"]);
    assert!(
        table.contains(&pending.device_id)
            && table.contains("pending")
            && table.contains("SN-CTL-1"),
        "{table}"
    );

    ctl.ok(&["device", "approve", &pending.device_id]);
    let shown: DeviceDetail = ctl.read(&["device", "show", &pending.device_id]);
    assert_eq!(shown.device.device.status, DeviceStatus::Active);
    let approved = device.enroll(&central, &secret).await.unwrap();
    assert_eq!(approved.status(), EnrollStatus::Approved);
    let details = ctl.ok(&["device", "show", &pending.device_id]);
    assert!(details.contains("active"), "{details}");

    ctl.ok(&["claim", "add", "--serial", "SN-CLAIMED"]);
    let claims: ClaimList = ctl.read(&["claim", "list"]);
    assert_eq!(claims.claims[0].value, "SN-CLAIMED");
    let dup = ctl.run(&["claim", "add", "--serial", "SN-CLAIMED"]);
    assert!(
        !dup.ok && dup.stderr.contains("already claimed"),
        "{}",
        dup.stderr
    );

    ctl.ok(&["device", "revoke", &pending.device_id]);
    let shown: DeviceDetail = ctl.read(&["device", "show", &pending.device_id]);
    assert_eq!(shown.device.device.status, DeviceStatus::Revoked);
    ctl.ok(&["token", "revoke", &token_id]);
    let tokens: EnrollmentTokenList = ctl.read(&["token", "list"]);
    assert!(tokens.tokens[0].revoked);

    let audit = ctl.ok(&["audit", "--limit", "20"]);
    for action in [
        "token.create",
        "device.approve",
        "claim.add",
        "device.revoke",
        "token.revoke",
    ] {
        assert!(audit.contains(action), "audit lacks {action}: {audit}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_and_trust_failures_are_reported_clearly() {
    let central = TestCentral::start().await;
    let admin = Ctl::new(&central);
    let viewer_secret = admin
        .read::<CreatedApiToken>(&[
            "api-token",
            "create",
            "--name",
            "auditor",
            "--role",
            "viewer",
        ])
        .secret;
    let listed = admin.ok(&["api-token", "list"]);
    assert!(
        listed.contains("auditor") && listed.contains("viewer"),
        "{listed}"
    );

    let viewer = Ctl {
        token_file: central.dir.path().join("viewer"),
        ..Ctl::new(&central)
    };
    std::fs::write(&viewer.token_file, &viewer_secret).unwrap();
    viewer.ok(&["device", "list"]);
    let refused = viewer.run(&["token", "create", "--name", "x", "--policy", "auto"]);
    assert!(!refused.ok);
    assert!(
        refused.stderr.contains("operator role") && refused.stderr.contains("403"),
        "{}",
        refused.stderr
    );

    // Revoked: the viewer's next call is refused, and says why.
    let viewer_id = admin
        .read::<cairn_api::ApiTokenList>(&["api-token", "list"])
        .api_tokens
        .into_iter()
        .find(|t| t.name == "auditor")
        .unwrap()
        .id;
    let revoked = admin.ok(&["api-token", "revoke", &viewer_id]);
    assert!(revoked.contains("revoked API token"), "{revoked}");
    let refused = viewer.run(&["device", "list"]);
    assert!(
        !refused.ok && refused.stderr.contains("revoked"),
        "{}",
        refused.stderr
    );

    // A CA that did not sign central's certificate: refused, with a hint about --ca.
    let other_ca = rcgen::CertificateParams::new(vec!["x".into()])
        .unwrap()
        .self_signed(&rcgen::KeyPair::generate().unwrap())
        .unwrap()
        .pem();
    let wrong = Ctl {
        ca: central.dir.path().join("other-ca.pem"),
        ..Ctl::new(&central)
    };
    std::fs::write(&wrong.ca, other_ca).unwrap();
    let failed = wrong.run(&["device", "list"]);
    assert!(!failed.ok);
    assert!(failed.stderr.contains("--ca"), "{}", failed.stderr);

    let bad_input = admin.run(&[
        "token",
        "create",
        "--name",
        "x",
        "--policy",
        "auto",
        "--expires-in",
        "7x",
    ]);
    assert!(
        !bad_input.ok && bad_input.stderr.contains("--expires-in"),
        "{}",
        bad_input.stderr
    );
}
