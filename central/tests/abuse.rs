//! Central against devices that misbehave on purpose: a device that stops reading its Sync
//! stream is dropped after `STALLED_STREAM` instead of holding the tasks that push to it, and
//! every other device (and every REST call) is served meanwhile; a source flooding enrollment
//! with wrong tokens does not hold up a good enrollment from another.

use std::time::{Duration, Instant};

use cairn_api::{AppList, EventList};
use cairn_central::sessions::STALLED_STREAM;
use cairn_proto::v1::central_message;
use cairn_testsupport::central::{ConnectedDevice, SimDevice, TestCentral};
use serde_json::json;
use tonic::Code;

/// A Compose file of about `pad` bytes; `n` makes each one different.
fn padded_app(n: usize, pad: usize) -> String {
    format!(
        "services:\n  web:\n    image: registry.example:5000/web:{n}\n    restart: always\n# {}\n",
        "x".repeat(pad)
    )
}

/// The next desired state's revision on `device`'s stream (acks skipped), within 5 s.
async fn next_revision(device: &mut ConnectedDevice) -> u64 {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let message = device.stream.message().await.unwrap().unwrap();
            if let Some(central_message::Kind::Desired(d)) = message.kind {
                break d.revision;
            }
        }
    })
    .await
    .expect("a desired state is pushed within 5 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_stops_reading_its_stream_is_dropped_and_others_are_served() {
    let central = TestCentral::start().await;
    let operator = central.api_token("ops", "operator");
    let mut stuck = central.connect_device("SER-STUCK-1").await;
    let mut good = central.connect_device("SER-GOOD-1").await;
    assert_eq!(next_revision(&mut stuck).await, 1);
    assert_eq!(next_revision(&mut good).await, 1);
    let put = |device: &str, app: &str, yaml: String| {
        let started = Instant::now();
        let (status, body) = central.call(
            &operator,
            "PUT",
            &format!("/api/v1/devices/{device}/apps/{app}"),
            Some(json!({ "compose_yaml": yaml })),
        );
        assert!(status == 200 || status == 201, "{status} {body}");
        started.elapsed()
    };

    // From here `stuck` reads nothing. Three ~60 KiB apps make each of its desired states
    // ~180 KiB: some rounds fill its HTTP/2 window and the stream's queue behind it.
    let mut slowest = Duration::ZERO;
    for round in 0..48 {
        let took = put(
            &stuck.id,
            &format!("app{}", round % 3),
            padded_app(round, 60_000),
        );
        slowest = slowest.max(took);
        if round % 8 == 7 {
            // Another device's change reaches it at once, whatever `stuck` does.
            let took = put(&good.id, "web", padded_app(round, 100));
            slowest = slowest.max(took);
            let revision = next_revision(&mut good).await;
            assert!(revision >= 2, "{revision}");
        }
    }
    assert!(
        slowest < Duration::from_secs(5),
        "a change to a device that does not read its stream held the API for {slowest:?}"
    );

    // The stream is ended once its task has waited STALLED_STREAM for room.
    let path = format!("/api/v1/devices/{}/apps", stuck.id);
    let deadline = Instant::now() + STALLED_STREAM + Duration::from_secs(20);
    loop {
        let apps: AppList = central.get(&path);
        if !apps.online {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a device that reads nothing is still online {:?} after the pushes",
            STALLED_STREAM + Duration::from_secs(20)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let events: EventList = central.get(&format!(
        "/api/v1/events?device={}&kind=device.disconnected",
        stuck.id
    ));
    assert!(
        events
            .events
            .iter()
            .any(|e| e.message.contains("did not read its stream")),
        "{events:?}"
    );

    // The other device is still connected and served.
    let apps: AppList = central.get(&format!("/api/v1/devices/{}/apps", good.id));
    assert!(apps.online);
    put(&good.id, "web", padded_app(1000, 100));
    assert!(next_revision(&mut good).await >= 3);

    // What `stuck` finds when it reads again: what was already in flight, then the end.
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        let mut messages = 0;
        loop {
            match stuck.stream.message().await {
                Ok(Some(_)) => messages += 1,
                Ok(None) | Err(_) => break messages,
            }
        }
    })
    .await
    .expect("the ended stream ends for the device too");
    assert!(
        ended > 0,
        "nothing was in flight: the window was never full"
    );
}

/// How long one good enrollment from 127.0.0.1 takes.
async fn timed_enrollment(central: &TestCentral, token: &str, serial: &str) -> Duration {
    let started = Instant::now();
    SimDevice::new(serial)
        .enroll(central, token)
        .await
        .unwrap_or_else(|e| panic!("a good enrollment was refused: {e}"));
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_flood_from_one_address_does_not_hold_up_another() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = cairn_testsupport::central::config_in(dir.path());
    config.enroll_attempts_per_source_per_minute = 600; // the default (tests run unlimited)
    let central = TestCentral::start_with(dir, config).await;
    let (_, token) = central.token("auto", None, None);
    let mut quiet = Vec::new();
    for i in 0..3 {
        quiet.push(timed_enrollment(&central, &token, &format!("SER-QUIET-{i}")).await);
    }
    quiet.sort();
    let baseline = quiet[1];

    // 1000 attempts with a wrong token from 127.0.0.2, 8 connections at a time.
    let flooder: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let request = SimDevice::new("SER-FLOOD").request("cet_wrong-guess");
    let flood_started = Instant::now();
    let mut flood = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let mut client = central.enrollment_from(flooder).await;
        let request = request.clone();
        flood.spawn(async move {
            let mut codes = Vec::new();
            for _ in 0..125 {
                match client.enroll(request.clone()).await {
                    Ok(_) => panic!("a wrong token enrolled"),
                    Err(status) => codes.push(status.code()),
                }
            }
            codes
        });
    }
    let mut during = Vec::new();
    for i in 0..3 {
        during.push(timed_enrollment(&central, &token, &format!("SER-DURING-{i}")).await);
    }
    let mut codes = Vec::new();
    while let Some(done) = flood.join_next().await {
        codes.extend(done.unwrap());
    }
    let throttled = codes
        .iter()
        .filter(|c| **c == Code::ResourceExhausted)
        .count();
    let unrecognised = codes
        .iter()
        .filter(|c| **c == Code::Unauthenticated)
        .count();
    assert_eq!(
        (codes.len(), throttled + unrecognised),
        (1000, 1000),
        "every flood attempt is refused as unknown or throttled"
    );
    // A burst of 600, then 10 a second.
    let refilled = (flood_started.elapsed().as_secs_f64() * 10.0).ceil() as usize;
    assert!(
        unrecognised <= 600 + refilled,
        "the source's 600 a minute let {unrecognised} through"
    );
    // The bound: a good enrollment during the flood takes at most 5x the quiet median, plus 1 s
    // of slack for a 2-core machine that also runs the flood's client.
    let slowest = *during.iter().max().unwrap();
    eprintln!("enrollment quiet median {baseline:?}, during the flood at most {slowest:?}");
    assert!(
        slowest <= baseline * 5 + Duration::from_secs(1),
        "a good enrollment took {slowest:?} during the flood against {baseline:?} quiet"
    );
}
