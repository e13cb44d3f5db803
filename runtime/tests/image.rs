//! Image pull and import against a real containerd and docker-registry: GC labels, no leases
//! left, update-in-place of image records, digest checks, basic auth, resumed downloads.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_runtime::image::{
    self, image_info, import_oci_archive, no_progress, pull_image, Credentials, ImageError,
    Progress, PullOptions,
};
use cairn_testsupport::Registry;
use common::proxy::Proxy;

const TIMEOUT: Duration = Duration::from_secs(60);

fn recorder() -> (Arc<Mutex<Vec<Progress>>>, impl Fn(Progress) + Send + Sync) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    (events, move |p| sink.lock().unwrap().push(p))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_labels_updates_in_place_and_imports() {
    let Some(env) = common::env().await else {
        return;
    };
    tokio::time::timeout(TIMEOUT, async {
        let v1 = common::busybox_image(&[("etc/version", "v1\n")]);
        common::push(&env.registry.url(), "cairn/web", "v1", &v1, None).await;
        let reference = format!("{}/cairn/web:v1", env.registry.host());

        let (events, sink) = recorder();
        let info = pull_image(&env.ctr, &reference, &PullOptions::default(), &sink)
            .await
            .unwrap();
        assert_eq!(info.name, reference);
        assert_eq!(info.digest, v1.manifest_digest());
        assert_eq!(info.config.cmd.as_deref(), Some(&["sh".to_string()][..]));
        let done: Vec<_> = events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| matches!(e, Progress::BlobDone { .. }))
            .cloned()
            .collect();
        assert_eq!(
            done.len(),
            2,
            "both layers downloaded: {:?}",
            events.lock().unwrap()
        );
        assert!(events
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, Progress::Done { .. })));

        // GC labels (FINDINGS): manifest -> config + layers, config -> snapshot, layers -> diff ids.
        let manifest = env
            .ctr
            .content_info(&v1.manifest_digest())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            manifest.labels["containerd.io/gc.ref.content.config"],
            common::digest(&v1.config)
        );
        assert_eq!(
            manifest.labels["containerd.io/gc.ref.content.l.1"],
            common::digest(&v1.layers[1].0)
        );
        let config = env
            .ctr
            .content_info(&common::digest(&v1.config))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            config.labels["containerd.io/gc.ref.snapshot.overlayfs"],
            info.chain_id
        );
        let layer0 = env
            .ctr
            .content_info(&common::digest(&v1.layers[0].0))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(layer0.labels["containerd.io/uncompressed"], v1.layers[0].2);
        assert!(env
            .ctr
            .stat_snapshot(&info.chain_id)
            .await
            .unwrap()
            .is_some());
        assert!(
            env.ctr.list_leases().await.unwrap().is_empty(),
            "the pull lease must be gone"
        );
        assert_eq!(image_info(&env.ctr, &reference).await.unwrap(), info);

        // Pulling again fetches nothing.
        let (events, sink) = recorder();
        pull_image(&env.ctr, &reference, &PullOptions::default(), &sink)
            .await
            .unwrap();
        assert!(
            !events
                .lock()
                .unwrap()
                .iter()
                .any(|e| matches!(e, Progress::BlobProgress { .. })),
            "{:?}",
            events.lock().unwrap()
        );

        // A new image under the same tag updates the record in place (same creation time).
        let created = env
            .ctr
            .get_image(&reference)
            .await
            .unwrap()
            .unwrap()
            .created_at;
        let v2 = common::busybox_image(&[("etc/version", "v2\n")]);
        common::push(&env.registry.url(), "cairn/web", "v1", &v2, None).await;
        let (events, sink) = recorder();
        let info2 = pull_image(&env.ctr, &reference, &PullOptions::default(), &sink)
            .await
            .unwrap();
        assert_eq!(info2.digest, v2.manifest_digest());
        let record = env.ctr.get_image(&reference).await.unwrap().unwrap();
        assert_eq!(
            record.created_at, created,
            "the image record must be updated, not re-created"
        );
        assert_eq!(record.target.unwrap().digest, v2.manifest_digest());
        let present = events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| matches!(e, Progress::BlobPresent { .. }))
            .count();
        assert_eq!(present, 1, "the shared base layer is not fetched again");

        // Import the same v1 image from an OCI archive under another name.
        let dir = tempfile::tempdir().unwrap();
        let archive = common::write_oci_archive(&dir.path().join("web.tar"), &v1, "v1");
        let imported = import_oci_archive(&env.ctr, &archive, "airgap/web:v1", &no_progress)
            .await
            .unwrap();
        assert_eq!(imported.name, "docker.io/airgap/web:v1");
        assert_eq!(imported.digest, v1.manifest_digest());
        assert_eq!(imported.chain_id, info.chain_id);

        // Removing every record lets containerd collect content and snapshots.
        for name in [reference.as_str(), "docker.io/airgap/web:v1"] {
            image::remove_image(&env.ctr, name).await.unwrap();
        }
        assert!(env.ctr.list_images(&[]).await.unwrap().is_empty());
        assert!(
            env.ctr.list_snapshots().await.unwrap().is_empty(),
            "snapshots left: {:?}",
            env.ctr.list_snapshots().await.unwrap()
        );
        assert!(env
            .ctr
            .content_info(&v1.manifest_digest())
            .await
            .unwrap()
            .is_none());
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_references_digests_and_archives_are_refused() {
    let Some(env) = common::env().await else {
        return;
    };
    tokio::time::timeout(TIMEOUT, async {
        let img = common::busybox_image(&[]);
        common::push(&env.registry.url(), "cairn/base", "1", &img, None).await;
        let host = env.registry.host();
        let opts = PullOptions::default();
        let err = pull_image(&env.ctr, "Bad Ref", &opts, &no_progress)
            .await
            .unwrap_err();
        assert!(matches!(err, ImageError::Reference { .. }), "{err}");
        let err = pull_image(
            &env.ctr,
            &format!("{host}/cairn/missing:1"),
            &opts,
            &no_progress,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err, ImageError::Registry { status: 404, .. }),
            "{err}"
        );
        let wrong = format!("sha256:{}", "0".repeat(64));
        let err = pull_image(
            &env.ctr,
            &format!("{host}/cairn/base@{wrong}"),
            &opts,
            &no_progress,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(
                err,
                ImageError::Registry { status: 404, .. } | ImageError::DigestMismatch { .. }
            ),
            "{err}"
        );
        // Pinned by the right digest works.
        pull_image(
            &env.ctr,
            &format!("{host}/cairn/base@{}", img.manifest_digest()),
            &opts,
            &no_progress,
        )
        .await
        .unwrap();

        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.tar");
        std::fs::write(&junk, vec![0u8; 1024]).unwrap();
        let err = import_oci_archive(&env.ctr, &junk, "x:1", &no_progress)
            .await
            .unwrap_err();
        assert!(matches!(err, ImageError::Archive { .. }), "{err}");
        // A blob whose bytes do not match its digest is refused and not stored.
        let img = common::busybox_image(&[("etc/x", "x\n")]);
        let layer = &img.layers[1];
        let mut bad = layer.0.clone();
        let n = bad.len();
        bad[n - 1] ^= 1;
        let archive = common::write_oci_archive_with(
            &dir.path().join("c.tar"),
            &img,
            "1",
            &[(common::digest(&layer.0), bad)],
        );
        let err = import_oci_archive(&env.ctr, &archive, "corrupt:1", &no_progress)
            .await
            .unwrap_err();
        assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
        assert!(env
            .ctr
            .content_info(&common::digest(&layer.0))
            .await
            .unwrap()
            .is_none());
        assert!(env
            .ctr
            .get_image("docker.io/library/corrupt:1")
            .await
            .unwrap()
            .is_none());
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_and_resumed_download() {
    let Some(env) = common::env().await else {
        return;
    };
    tokio::time::timeout(TIMEOUT, async {
        // Resume (first, while the base layer is not in containerd yet): a proxy drops the
        // connection in the middle of the big base layer.
        let img = common::busybox_image(&[("etc/resume", "yes\n")]);
        common::push(&env.registry.url(), "cairn/resume", "1", &img, None).await;
        let proxy = Proxy::start(env.registry.host()).await;
        let base = common::digest(&img.layers[0].0);
        proxy.state.lock().unwrap().cut = Some((format!("/blobs/{base}"), 300 * 1024));
        let reference = format!("{}/cairn/resume:1", proxy.host());
        let first = pull_image(&env.ctr, &reference, &PullOptions::default(), &no_progress).await;
        assert!(first.is_err(), "the cut download must fail");
        let (events, sink) = recorder();
        let info = pull_image(&env.ctr, &reference, &PullOptions::default(), &sink)
            .await
            .unwrap();
        assert_eq!(info.digest, img.manifest_digest());
        let resumed = events.lock().unwrap().iter().find_map(|e| match e {
            Progress::BlobProgress {
                digest,
                resumed_from,
                ..
            } if *digest == base => Some(*resumed_from),
            _ => None,
        });
        assert!(
            resumed.is_some_and(|r| r > 0),
            "the base layer should resume, events: {:?}",
            events.lock().unwrap()
        );
        let ranged = proxy
            .state
            .lock()
            .unwrap()
            .requests
            .iter()
            .any(|r| r.contains(&format!("/blobs/{base}")) && r.contains("range: bytes="));
        assert!(ranged, "a Range request must have been sent");
        let secured = Registry::start_with_basic_auth("cairn", "s3cret");
        let img = common::busybox_image(&[("etc/auth", "yes\n")]);
        common::push(
            &secured.url(),
            "cairn/private",
            "1",
            &img,
            Some(("cairn", "s3cret")),
        )
        .await;
        let reference = format!("{}/cairn/private:1", secured.host());
        let err = pull_image(&env.ctr, &reference, &PullOptions::default(), &no_progress)
            .await
            .unwrap_err();
        assert!(matches!(err, ImageError::Auth { .. }), "{err}");
        let bad = PullOptions {
            credentials: Some(Credentials::Basic {
                username: "cairn".into(),
                password: "wrong".into(),
            }),
            ..Default::default()
        };
        assert!(matches!(
            pull_image(&env.ctr, &reference, &bad, &no_progress)
                .await
                .unwrap_err(),
            ImageError::Auth { .. }
        ));
        let good = PullOptions {
            credentials: Some(Credentials::Basic {
                username: "cairn".into(),
                password: "s3cret".into(),
            }),
            ..Default::default()
        };
        pull_image(&env.ctr, &reference, &good, &no_progress)
            .await
            .unwrap();

        assert!(env.ctr.list_leases().await.unwrap().is_empty());
    })
    .await
    .expect("test timed out");
}
