//! API tokens over their life against a real central: an expired and a revoked token are
//! refused with a reason, the last use is noted, the last admin token cannot be revoked, and
//! the bootstrap admin token is rotated away (its file deleted, not made again on restart).

use std::time::{Duration, Instant};

use cairn_api::{ApiToken, ApiTokenList, ApiTokenReply, CreatedApiToken, ErrorBody};
use cairn_testsupport::central::{read, TestCentral};
use serde_json::{json, Value};

fn create(central: &TestCentral, token: &str, body: Value) -> (u16, Value) {
    central.call(token, "POST", "/api/v1/api-tokens", Some(body))
}

fn revoke(central: &TestCentral, token: &str, id: &str) -> (u16, Value) {
    central.call(
        token,
        "POST",
        &format!("/api/v1/api-tokens/{id}/revoke"),
        None,
    )
}

fn message(body: &Value) -> String {
    read::<ErrorBody>("an error", "", body.clone())
        .error
        .message
}

/// Token `id` as an admin (`admin`) lists it.
fn listed(central: &TestCentral, admin: &str, id: &str) -> ApiToken {
    let (status, body) = central.call(admin, "GET", "/api/v1/api-tokens", None);
    assert_eq!(status, 200, "{body}");
    read::<ApiTokenList>("GET", "/api/v1/api-tokens", body)
        .api_tokens
        .into_iter()
        .find(|t| t.id == id)
        .unwrap_or_else(|| panic!("{id} is not listed"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_expire_are_revoked_note_their_last_use_and_the_bootstrap_one_rotates() {
    let mut central = TestCentral::start().await;
    let bootstrap = central.admin.clone();
    let token_file = cairn_central::admin_token_path(&central.config);

    // Lifetimes are bounded.
    for bad in [0u64, 11 * 365 * 24 * 3600] {
        let (status, body) = create(
            &central,
            &bootstrap,
            json!({ "name": "x", "role": "viewer", "expires_in_seconds": bad }),
        );
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(message(&body).contains("expires_in_seconds"), "{body}");
    }

    // An expired token is refused, and says so.
    let (status, body) = create(
        &central,
        &bootstrap,
        json!({ "name": "brief", "role": "viewer", "expires_in_seconds": 1 }),
    );
    assert_eq!(status, 201, "{body}");
    let brief: CreatedApiToken = read("POST", "api-tokens", body);
    assert!(brief.api_token.expires_at.is_some());
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, body) = central.call(&brief.secret, "GET", "/api/v1/devices", None);
    assert_eq!(status, 401, "{body}");
    assert!(message(&body).contains("expired"), "{body}");

    // A used token shows when; a revoked one is refused from the next request on.
    let (_, body) = create(
        &central,
        &bootstrap,
        json!({ "name": "robot", "role": "operator" }),
    );
    let robot: CreatedApiToken = read("POST", "api-tokens", body);
    assert_eq!(robot.api_token.expires_at, None);
    assert_eq!(robot.api_token.last_used_at, None);
    let (status, _) = central.call(&robot.secret, "GET", "/api/v1/devices", None);
    assert_eq!(status, 200);
    let noted = Instant::now();
    while listed(&central, &bootstrap, &robot.api_token.id)
        .last_used_at
        .is_none()
    {
        assert!(
            noted.elapsed() < Duration::from_secs(5),
            "the last use is not noted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Only an admin revokes; an unknown id is a 404.
    let (status, _) = revoke(&central, &robot.secret, &robot.api_token.id);
    assert_eq!(status, 403);
    let (status, _) = revoke(&central, &bootstrap, "api_nosuchtoken");
    assert_eq!(status, 404);
    let (status, body) = revoke(&central, &bootstrap, &robot.api_token.id);
    assert_eq!(status, 200, "{body}");
    let revoked: ApiTokenReply = read("POST", "revoke", body);
    assert!(revoked.api_token.revoked);
    let (status, body) = central.call(&robot.secret, "GET", "/api/v1/devices", None);
    assert_eq!(status, 401, "{body}");
    assert!(message(&body).contains("revoked"), "{body}");

    // The bootstrap token is the only admin: revoking it would leave none.
    let (_, body) = central.call(&bootstrap, "GET", "/api/v1/api-tokens", None);
    let bootstrap_id = read::<ApiTokenList>("GET", "api-tokens", body)
        .api_tokens
        .into_iter()
        .find(|t| t.name == cairn_central::BOOTSTRAP_TOKEN_NAME)
        .expect("the bootstrap token is listed")
        .id;
    let (status, body) = revoke(&central, &bootstrap, &bootstrap_id);
    assert_eq!(status, 409, "{body}");
    assert!(message(&body).contains("last live admin token"), "{body}");

    // Rotated: a named admin token takes over and revokes the bootstrap one, whose file goes.
    let (_, body) = create(
        &central,
        &bootstrap,
        json!({ "name": "alice", "role": "admin" }),
    );
    let alice: CreatedApiToken = read("POST", "api-tokens", body);
    assert!(token_file.exists());
    let (status, body) = revoke(&central, &alice.secret, &bootstrap_id);
    assert_eq!(status, 200, "{body}");
    assert!(!token_file.exists(), "admin.token outlived its token");
    let (status, _) = central.call(&bootstrap, "GET", "/api/v1/devices", None);
    assert_eq!(status, 401);

    // A restart makes no new bootstrap token while a live admin token exists.
    central.restart().await;
    assert!(!token_file.exists(), "a restart wrote a new admin.token");
    let (status, body) = central.call(&alice.secret, "GET", "/api/v1/api-tokens", None);
    assert_eq!(status, 200, "{body}");
    let live_admins = read::<ApiTokenList>("GET", "api-tokens", body)
        .api_tokens
        .into_iter()
        .filter(|t| t.role == cairn_api::Role::Admin && !t.revoked)
        .count();
    assert_eq!(live_admins, 1);
}
