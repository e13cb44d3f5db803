//! OS update bundles over REST against a real central and the real `rauc info`: bundles built
//! and signed by cairn-image's own code are verified, stored content-addressed (idempotently),
//! listed, served with byte ranges and removed; bundles signed by another key, for other
//! hardware or not bundles at all are refused with rauc's reason and leave nothing behind.

use std::path::PathBuf;

use cairn_api::{AuditLog, BundleList, BundleReply, BundleUploaded, Removed};
use cairn_image::keys;
use cairn_testsupport::central::{config_in, error_message, read, TestCentral};
use serde_json::Value;
use sha2::Digest;

// Each test binary uses part of the shared fixture.
#[allow(dead_code)]
#[path = "fixtures/signed_bundles.rs"]
mod signed_bundles;
use signed_bundles::COMPATIBLE;

/// Keys and signed bundles made once per test.
struct Fixture {
    dir: tempfile::TempDir,
    cert: PathBuf,
    good: Vec<u8>,
    other_key: Vec<u8>,
    wrong_compatible: Vec<u8>,
}

impl Fixture {
    /// `None` (after a loud SKIP) when a tool the bundle needs is missing.
    fn build() -> Option<Fixture> {
        if !signed_bundles::tools_present() {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let fleet = keys::generate(&dir.path().join("fleet"), "test fleet update key").unwrap();
        let other = keys::generate(&dir.path().join("other"), "someone else").unwrap();
        let root = dir.path().join("root.img");
        std::fs::write(
            &root,
            (0..40_000u32)
                .flat_map(|i| i.to_le_bytes())
                .collect::<Vec<u8>>(),
        )
        .unwrap();
        let bundle = |compatible, keys| {
            signed_bundles::signed_bundle(dir.path(), &root, compatible, "1.0", keys)
        };
        let good = bundle(COMPATIBLE, &fleet);
        let other_key = bundle(COMPATIBLE, &other);
        let wrong_compatible = bundle("cairn-rpi-arm64", &fleet);
        Some(Fixture {
            cert: fleet.cert,
            good,
            other_key,
            wrong_compatible,
            dir,
        })
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

fn upload(central: &TestCentral, token: &str, bytes: &[u8]) -> (u16, Value) {
    tokio::task::block_in_place(|| {
        let result = central
            .rest()
            .post(&central.rest_url("/api/v1/bundles"))
            .set("Authorization", &format!("Bearer {token}"))
            .set("Content-Type", "application/octet-stream")
            .send_bytes(bytes);
        let response = match result {
            Ok(r) | Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("upload failed: {e}"),
        };
        (
            response.status(),
            response.into_json().unwrap_or(Value::Null),
        )
    })
}

/// A download answer: status, Content-Range, ETag, Accept-Ranges, body.
struct Download {
    status: u16,
    content_range: Option<String>,
    etag: Option<String>,
    accept_ranges: Option<String>,
    body: Vec<u8>,
}

fn download(central: &TestCentral, token: &str, sha256: &str, range: Option<&str>) -> Download {
    tokio::task::block_in_place(|| {
        let mut request = central
            .rest()
            .get(&central.rest_url(&format!("/api/v1/bundles/{sha256}/content")))
            .set("Authorization", &format!("Bearer {token}"));
        if let Some(range) = range {
            request = request.set("Range", range);
        }
        let response = match request.call() {
            Ok(r) | Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("download failed: {e}"),
        };
        let header = |name| response.header(name).map(str::to_owned);
        let (status, content_range, etag, accept_ranges) = (
            response.status(),
            header("content-range"),
            header("etag"),
            header("accept-ranges"),
        );
        let mut body = Vec::new();
        std::io::Read::read_to_end(&mut response.into_reader(), &mut body).unwrap();
        Download {
            status,
            content_range,
            etag,
            accept_ranges,
            body,
        }
    })
}

fn stored_files(central: &TestCentral) -> Vec<String> {
    let dir = central.config.data_dir.join("bundles");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".raucb") || n.starts_with("upload-"))
        .collect();
    names.sort();
    names
}

fn bundle_file(central: &TestCentral, sha256: &str) -> PathBuf {
    central
        .config
        .data_dir
        .join("bundles")
        .join(format!("sha256-{sha256}.raucb"))
}

async fn central_for(fixture: &Fixture) -> TestCentral {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_in(dir.path());
    config.update_keyring = Some(fixture.cert.clone());
    config.update_compatible = Some(COMPATIBLE.into());
    TestCentral::start_with(dir, config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_verify_list_download_ranges_and_delete() {
    let Some(fixture) = Fixture::build() else {
        return;
    };
    let central = central_for(&fixture).await;
    let operator = central.api_token("ops", "operator");
    let viewer = central.api_token("eyes", "viewer");
    let sha = sha256_hex(&fixture.good);

    // Upload: verified, stored under its SHA-256, byte for byte.
    let (status, body) = upload(&central, &operator, &fixture.good);
    assert_eq!(status, 201, "{body}");
    let uploaded: BundleUploaded = read("POST", "/api/v1/bundles", body);
    let bundle = &uploaded.bundle;
    assert_eq!(bundle.sha256, sha);
    assert_eq!(
        (bundle.version.as_str(), bundle.compatible.as_str()),
        ("1.0", COMPATIBLE)
    );
    assert_eq!(bundle.size, fixture.good.len() as u64);
    assert_eq!(bundle.uploaded_by, "api:ops");
    assert!(uploaded.created);
    assert_eq!(
        std::fs::read(bundle_file(&central, &sha)).unwrap(),
        fixture.good
    );

    // The same bytes again: nothing new.
    let (status, body) = upload(&central, &operator, &fixture.good);
    assert_eq!(status, 200, "{body}");
    assert!(!read::<BundleUploaded>("POST", "/api/v1/bundles", body).created);
    assert_eq!(stored_files(&central), vec![format!("sha256-{sha}.raucb")]);

    // Refusals carry rauc's reason and leave no file behind.
    let (status, body) = upload(&central, &operator, &fixture.other_key);
    let message = error_message(&body);
    assert_eq!(status, 400, "{body}");
    assert!(
        message.contains("signature verification failed"),
        "{message}"
    );
    assert!(message.contains("update_keyring"), "{message}");
    let (status, body) = upload(&central, &operator, &fixture.wrong_compatible);
    let message = error_message(&body);
    assert_eq!(status, 400, "{body}");
    assert!(
        message.contains("\"cairn-rpi-arm64\"") && message.contains(COMPATIBLE),
        "{message}"
    );
    let (status, body) = upload(&central, &operator, &vec![0x5a; 10_000]);
    assert_eq!(status, 400, "{body}");
    assert!(error_message(&body).contains("rauc says"), "{body}");
    assert_eq!(stored_files(&central), vec![format!("sha256-{sha}.raucb")]);

    // Roles. Central answers 403 before reading the body, so a large body may see its
    // connection closed mid-send: send a small one (the role check does not look at it).
    let (status, body) = upload(&central, &viewer, &fixture.good[..1000]);
    assert_eq!(status, 403, "{body}");
    let (status, body) = central.call(&viewer, "GET", "/api/v1/bundles", None);
    assert_eq!(status, 200, "{body}");
    let list = read::<BundleList>("GET", "/api/v1/bundles", body).bundles;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].sha256, sha);
    let (status, body) = central.call(&viewer, "GET", &format!("/api/v1/bundles/{sha}"), None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        read::<BundleReply>("GET", "bundle", body).bundle.version,
        "1.0"
    );
    let (status, _) = central.call(
        &viewer,
        "GET",
        &format!("/api/v1/bundles/{}", "0".repeat(64)),
        None,
    );
    assert_eq!(status, 404);
    let (status, _) = central.call(
        &viewer,
        "GET",
        "/api/v1/bundles/..%2F..%2Fregistry.sqlite3",
        None,
    );
    assert_eq!(status, 400);

    // Download, whole and in ranges: operators only (a bundle is a whole OS image).
    assert_eq!(download(&central, &viewer, &sha, None).status, 403);
    let size = fixture.good.len();
    let whole = download(&central, &operator, &sha, None);
    assert_eq!(whole.status, 200);
    assert!(
        whole.body == fixture.good,
        "the whole download differs from the uploaded bundle"
    );
    assert_eq!(whole.etag.as_deref(), Some(format!("\"{sha}\"").as_str()));
    assert_eq!(whole.accept_ranges.as_deref(), Some("bytes"));
    for (range, start, end) in [
        ("bytes=100-4195".to_owned(), 100, 4195),
        (format!("bytes={}-", size - 777), size - 777, size - 1),
        ("bytes=-300".to_owned(), size - 300, size - 1),
        (format!("bytes=5000-{}", size + 10_000), 5000, size - 1),
    ] {
        let part = download(&central, &operator, &sha, Some(&range));
        assert_eq!(part.status, 206, "{range}");
        assert!(
            part.body == fixture.good[start..=end],
            "{range}: bytes differ from the file"
        );
        assert_eq!(
            part.content_range,
            Some(format!("bytes {start}-{end}/{size}")),
            "{range}"
        );
    }
    for bad in [
        format!("bytes={size}-"),
        "bytes=10-5".to_owned(),
        "bytes=0-1,4-5".to_owned(),
    ] {
        let refused = download(&central, &operator, &sha, Some(&bad));
        assert_eq!(refused.status, 416, "{bad}");
        assert_eq!(
            refused.content_range,
            Some(format!("bytes */{size}")),
            "{bad}"
        );
    }

    // Every upload is in the audit log, refused ones too.
    let audit: AuditLog = central.get("/api/v1/audit");
    let actions: Vec<&str> = audit.events.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions.iter().filter(|a| **a == "bundle.upload").count(),
        2,
        "{actions:?}"
    );
    assert_eq!(
        actions.iter().filter(|a| **a == "bundle.reject").count(),
        3,
        "{actions:?}"
    );

    // Delete: admin only; file and row go.
    let (status, _) = central.call(&operator, "DELETE", &format!("/api/v1/bundles/{sha}"), None);
    assert_eq!(status, 403);
    let removed: Removed = central.admin_read("DELETE", &format!("/api/v1/bundles/{sha}"), None);
    assert_eq!(removed.removed, sha);
    assert!(!bundle_file(&central, &sha).exists());
    assert!(
        stored_files(&central).is_empty(),
        "{:?}",
        stored_files(&central)
    );
    assert_eq!(download(&central, &operator, &sha, None).status, 404);
    let (status, _) = central.call(
        &central.admin.clone(),
        "DELETE",
        &format!("/api/v1/bundles/{sha}"),
        None,
    );
    assert_eq!(status, 404);
    let audit: AuditLog = central.get("/api/v1/audit?limit=1");
    assert_eq!(audit.events[0].action, "bundle.delete");

    // It can be uploaded again after removal.
    let (status, body) = upload(&central, &operator, &fixture.good);
    assert_eq!(status, 201, "{body}");
    drop(fixture.dir);
}

/// Without an update keyring (or compatible) uploads are refused up front; a body over
/// `max_bundle_bytes` is refused with 413 before anything is verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unconfigured_and_oversized_uploads_are_refused() {
    let central = TestCentral::start().await;
    let (status, body) = upload(&central, &central.admin.clone(), b"anything");
    assert_eq!(status, 409, "{body}");
    let message = error_message(&body);
    assert!(message.contains("update_keyring"), "{message}");
    assert!(stored_files(&central).is_empty());

    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("update.cert.pem");
    std::fs::write(&cert, "not checked until an upload\n").unwrap();
    let mut config = config_in(dir.path());
    config.update_keyring = Some(cert);
    config.update_compatible = Some(COMPATIBLE.into());
    config.max_bundle_bytes = 8192;
    let central = TestCentral::start_with(dir, config).await;
    let (status, body) = upload(&central, &central.admin.clone(), &vec![1u8; 20_000]);
    assert_eq!(status, 413, "{body}");
    assert!(error_message(&body).contains("max_bundle_bytes"), "{body}");
    assert!(
        stored_files(&central).is_empty(),
        "{:?}",
        stored_files(&central)
    );
}
