//! Central against devices that misbehave on purpose: a device that stops reading its Sync
//! stream is dropped after `STALLED_STREAM` instead of holding the tasks that push to it, and
//! every other device (and every REST call) is served meanwhile; a source flooding enrollment
//! with wrong tokens does not hold up a good enrollment from another; slowloris clients on both
//! listeners are cut off at their deadline, and an address past its connection cap is refused,
//! while others are served.

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
    // Events are written in batches after the stream ends: wait for the record too.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let events: EventList = central.get(&format!(
            "/api/v1/events?device={}&kind=device.disconnected",
            stuck.id
        ));
        if events
            .events
            .iter()
            .any(|e| e.message.contains("did not read its stream"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "{events:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

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

/// A TLS connection to central's `port` from `source`, speaking `alpn`; `None` when central
/// closes it before the handshake ends.
async fn tls_from(
    central: &TestCentral,
    source: &str,
    port: u16,
    alpn: &[u8],
) -> Option<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(central.ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let tcp = socket
        .connect(format!("127.0.0.1:{port}").parse().unwrap())
        .await
        .unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .ok()
}

/// Write `burst` at once, then `bytes` one a second until central closes the connection; how
/// long it took (`None`: still open after 40 s).
async fn trickle<S>(mut stream: S, burst: &[u8], bytes: &[u8]) -> Option<Duration>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let started = Instant::now();
    let mut buf = [0u8; 512];
    if stream.write_all(burst).await.is_err() {
        return Some(started.elapsed());
    }
    if bytes.is_empty() {
        // Says nothing at all: wait for the end.
        return match tokio::time::timeout(Duration::from_secs(40), stream.read(&mut buf)).await {
            Ok(_) => Some(started.elapsed()),
            Err(_) => None,
        };
    }
    for byte in bytes.iter().cycle() {
        if started.elapsed() > Duration::from_secs(40) {
            return None;
        }
        if stream.write_all(&[*byte]).await.is_err() {
            return Some(started.elapsed());
        }
        // Anything central sends (an HTTP/2 SETTINGS frame) is read; an end or error is the cut.
        match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) | Err(_) => {}
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_clients_are_cut_off_and_a_source_past_its_cap_is_refused() {
    use cairn_central::listen::FIRST_BYTES_TIMEOUT;
    let dir = tempfile::tempdir().unwrap();
    let mut config = cairn_testsupport::central::config_in(dir.path());
    config.rest_connections_per_source = 4;
    config.grpc_connections_per_source = 4;
    let central = TestCentral::start_with(dir, config).await;
    let rest = central.c().rest_addr.port();
    let grpc = central.c().grpc_addr.port();
    let mut device = central.connect_device("SER-SERVED-1").await;
    assert_eq!(next_revision(&mut device).await, 1);

    // From 127.0.0.2: a trickled HTTP/1 request head, a trickled HTTP/2 preface on each
    // listener, and a connection that never says hello.
    let slow_head = tls_from(&central, "127.0.0.2", rest, b"http/1.1")
        .await
        .unwrap();
    let slow_h2_rest = tls_from(&central, "127.0.0.2", rest, b"h2").await.unwrap();
    let slow_grpc = tls_from(&central, "127.0.0.2", grpc, b"h2").await.unwrap();
    let silent = {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        socket
            .connect(format!("127.0.0.1:{grpc}").parse().unwrap())
            .await
            .unwrap()
    };
    // The HTTP/1 head starts with more than FIRST_BYTES at once: hyper's header deadline cuts it.
    let head = b"GET /api/v1/devices HTTP/1.1\r\nHost: localhost\r\n";
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let cuts = tokio::spawn(async move {
        tokio::join!(
            trickle(slow_head, head, b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
            trickle(slow_h2_rest, b"", preface),
            trickle(slow_grpc, b"", preface),
            trickle(silent, b"", b""),
        )
    });

    // Meanwhile: 127.0.0.2 holds its cap on each listener (REST: 2 trickles and 2 more;
    // gRPC: a trickle, the silent one and 2 more): one more is refused, 127.0.0.1 is served.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut held = Vec::new();
    for port in [rest, rest, grpc] {
        held.push(
            tls_from(&central, "127.0.0.2", port, b"h2")
                .await
                .expect("under the cap"),
        );
    }
    held.push(
        tls_from(&central, "127.0.0.2", grpc, b"h2")
            .await
            .expect("under the cap"),
    );
    assert!(
        tls_from(&central, "127.0.0.2", rest, b"h2").await.is_none(),
        "a fifth REST connection from one address was accepted"
    );
    assert!(
        tls_from(&central, "127.0.0.2", grpc, b"h2").await.is_none(),
        "a fifth gRPC connection from one address was accepted"
    );
    for _ in 0..3 {
        let apps: AppList = central.get(&format!("/api/v1/devices/{}/apps", device.id));
        assert!(apps.online);
        let acked = cairn_testsupport::central::heartbeat_acked(
            &device.tx,
            &mut device.stream,
            cairn_proto::v1::Heartbeat {
                seq: 1,
                desired_revision: 1,
                ..Default::default()
            },
        )
        .await;
        let _ = acked;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    drop(held);

    let (head, h2_rest, grpc_cut, silent) = cuts.await.unwrap();
    let limit = FIRST_BYTES_TIMEOUT + Duration::from_secs(5);
    for (what, cut) in [
        ("a trickled HTTP/1 request head", head),
        ("a trickled HTTP/2 preface on REST", h2_rest),
        ("a trickled HTTP/2 preface on gRPC", grpc_cut),
        ("a connection that never starts TLS", silent),
    ] {
        let cut = cut.unwrap_or_else(|| panic!("{what} was never cut off"));
        assert!(
            cut >= FIRST_BYTES_TIMEOUT - Duration::from_secs(2) && cut <= limit,
            "{what} was cut after {cut:?}"
        );
    }
    // The cap's places came back: 127.0.0.2 connects again.
    assert!(tls_from(&central, "127.0.0.2", rest, b"h2").await.is_some());
    let (status, _) = central.call(&central.admin, "GET", "/api/v1/devices", None);
    assert_eq!(status, 200);
}
