//! Devices with a wrong clock: agents whose clock is years behind or ahead enroll with a real
//! central and end up in step with it; the time bootstrap refuses answers that are stale, signed
//! by another key or from a server outside the fleet CA, and only that one call ignores
//! certificate validity periods.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cairn_agent::channel::CentralDialer;
use cairn_agent::clock::Clock;
use cairn_agent::time_sync::{fetch_central_time, TimeError};
use cairn_agent::{Agent, AgentConfig, Phase};
use cairn_api::{DeviceDetail, EventList};
use cairn_central::time::TimeSigner;
use cairn_proto::v1::enrollment_server::{Enrollment, EnrollmentServer};
use cairn_proto::v1::{EnrollRequest, EnrollResponse, TimeRequest, TimeResponse};
use cairn_testsupport::central::TestCentral;
use support::{agent_config, device_id, eventually, wait_phase, RunningAgent, WAIT};
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

fn host_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Runs an agent with `clock` against `central` until it is connected, then checks that its
/// clock is in step, that central sees no offset and recorded the correction.
async fn enrolls_with_a_clock(
    central: &TestCentral,
    clock: Clock,
    check_at_start: bool,
    word: &str,
) {
    let (_, token) = central.token("auto", None, None);
    let dir = tempfile::tempdir().unwrap();
    let mut config = agent_config(central, &token, dir.path(), &format!("SN-CLOCK-{word}"));
    config.time.check_at_start = check_at_start;
    assert!(
        (clock.now_unix_ms() - host_unix_ms()).abs() > YEAR.as_millis() as i64,
        "the test clock starts years off"
    );
    let agent = Arc::new(Agent::with_clock(config, clock).await.unwrap());
    let running = RunningAgent::from_agent(agent.clone());
    wait_phase(&agent, Phase::Connected).await;
    let off = agent.clock().now_unix_ms() - host_unix_ms();
    assert!(
        off.abs() < 5_000,
        "agent clock {off} ms off after the correction"
    );
    assert!(agent.clock().is_verified());
    let id = device_id(&agent);
    eventually(WAIT, "central sees the device's clock in step", || {
        let detail: DeviceDetail = central.get(&format!("/api/v1/devices/{id}"));
        detail
            .device
            .host
            .and_then(|h| h.clock_offset_ms)
            .is_some_and(|offset| offset.abs() < 5_000)
    })
    .await;
    let corrections = || -> EventList {
        central.get(&format!("/api/v1/events?device={id}&kind=clock.corrected"))
    };
    eventually(WAIT, "central records the correction", || {
        !corrections().events.is_empty()
    })
    .await;
    let events = corrections().events;
    assert_eq!(events.len(), 1, "one correction: {events:?}");
    let message = &events[0].message;
    assert!(
        message.contains(word) && message.contains("days"),
        "the event says how far off the clock was: {message}"
    );
    // The last known good time is saved where the next boot restores it from.
    running.stop().await;
    let floor = std::fs::read_to_string(dir.path().join("agent/clock-floor")).unwrap();
    let floor: i64 = floor.trim().parse().unwrap();
    assert!(
        (floor - host_unix_ms()).abs() < 10_000,
        "saved floor {floor}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clocks_years_behind_or_ahead_are_corrected_from_central() {
    let central = TestCentral::start().await;
    // Behind: corrected at start, before the first certificate check.
    enrolls_with_a_clock(
        &central,
        Clock::virtual_offset(3 * YEAR, true),
        true,
        "behind",
    )
    .await;
    // Ahead, without the check at start: every certificate looks expired, the failed
    // enrollment triggers the check, and the agent does not throw its identity away meanwhile.
    enrolls_with_a_clock(
        &central,
        Clock::virtual_offset(9 * YEAR, false),
        false,
        "ahead",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_without_central_starts_from_the_saved_time_and_keeps_validity_checks() {
    let mut central = TestCentral::start().await;
    let (_, token) = central.token("auto", None, None);
    let dir = tempfile::tempdir().unwrap();
    let config = agent_config(&central, &token, dir.path(), "SN-CLOCK-FLOOR");
    let running = RunningAgent::start(config.clone()).await;
    wait_phase(&running.agent, Phase::Connected).await;
    running.stop().await;
    assert!(dir.path().join("agent/clock-floor").exists());

    // Central is down and the next "boot" starts two years in the past: the saved time wins.
    central.stop().await;
    let agent = Arc::new(
        Agent::with_clock(config, Clock::virtual_offset(2 * YEAR, true))
            .await
            .unwrap(),
    );
    let running = RunningAgent::from_agent(agent.clone());
    eventually(WAIT, "the clock is restored from the saved time", || {
        (agent.clock().now_unix_ms() - host_unix_ms()).abs() < 60_000
    })
    .await;
    assert!(!agent.clock().is_verified(), "central was not reached");
    running.stop().await;
}

/// How the fake central answers `Time`.
#[derive(Clone, Copy, Debug)]
enum Answer {
    Honest,
    OtherKey,
    StaleNonce,
}

/// A server holding a certificate of its own fleet CA, answering `Time` as told.
struct FakeCentral {
    answer: Answer,
    signer: TimeSigner,
    other: TimeSigner,
}

#[tonic::async_trait]
impl Enrollment for FakeCentral {
    async fn enroll(&self, _: Request<EnrollRequest>) -> Result<Response<EnrollResponse>, Status> {
        Err(Status::unimplemented("fake central"))
    }

    async fn time(&self, request: Request<TimeRequest>) -> Result<Response<TimeResponse>, Status> {
        let now = host_unix_ms();
        let answer = match self.answer {
            Answer::Honest => self.signer.answer(request.get_ref(), now),
            Answer::OtherKey => self.other.answer(request.get_ref(), now),
            Answer::StaleNonce => self.signer.answer(&TimeRequest { nonce: vec![1; 32] }, now),
        };
        answer
            .map(Response::new)
            .map_err(|e| Status::invalid_argument(e.to_string()))
    }
}

/// A fleet CA and a server certificate for 127.0.0.1 valid over `[from, until]` (Unix s).
struct FakeFleet {
    ca_pem: String,
    server_cert_pem: String,
    server_key: rcgen::KeyPair,
}

fn fake_fleet(name: &str, from: i64, until: i64) -> FakeFleet {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, format!("{name} fleet CA"));
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.not_before = time::OffsetDateTime::from_unix_timestamp(from - 3600).unwrap();
    ca.not_after = time::OffsetDateTime::from_unix_timestamp(until + 3600 * 24 * 365 * 20).unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let server_key = rcgen::KeyPair::generate().unwrap();
    let mut server = rcgen::CertificateParams::new(vec!["127.0.0.1".into()]).unwrap();
    server.not_before = time::OffsetDateTime::from_unix_timestamp(from).unwrap();
    server.not_after = time::OffsetDateTime::from_unix_timestamp(until).unwrap();
    let server_cert = server.signed_by(&server_key, &issuer).unwrap();
    FakeFleet {
        ca_pem: ca_cert.pem(),
        server_cert_pem: server_cert.pem(),
        server_key,
    }
}

async fn serve_fake(fleet: &FakeFleet, answer: Answer) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let key_pem = fleet.server_key.serialize_pem();
    let fake = FakeCentral {
        answer,
        signer: TimeSigner::from_key_pem(&key_pem).unwrap(),
        other: TimeSigner::from_key_pem(&rcgen::KeyPair::generate().unwrap().serialize_pem())
            .unwrap(),
    };
    let router = Server::builder()
        .tls_config(
            ServerTlsConfig::new().identity(Identity::from_pem(&fleet.server_cert_pem, &key_pem)),
        )
        .unwrap()
        .add_service(EnrollmentServer::new(fake));
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tokio::spawn(router.serve_with_incoming(incoming));
    addr
}

fn dialer_for(addr: SocketAddr, ca_pem: &str, dir: &std::path::Path) -> CentralDialer {
    let ca = dir.join(format!("ca-{}.pem", addr.port()));
    std::fs::write(&ca, ca_pem).unwrap();
    let config = AgentConfig::new(
        &format!("https://{addr}"),
        &ca,
        "unused",
        &dir.join("agent"),
    );
    CentralDialer::from_config(&config, Clock::virtual_offset(Duration::ZERO, false)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_time_bootstrap_refuses_stale_foreign_and_outside_answers() {
    let dir = tempfile::tempdir().unwrap();
    let now = host_unix_ms() / 1000;
    let valid = fake_fleet("valid", now - 3600, now + 3600 * 24 * 30);

    // The honest fake is believed (so the refusals below are about what they change).
    let honest = serve_fake(&valid, Answer::Honest).await;
    let time = fetch_central_time(&dialer_for(honest, &valid.ca_pem, dir.path()))
        .await
        .unwrap();
    assert!((time.unix_ms - host_unix_ms()).abs() < 5_000);

    let other_key = serve_fake(&valid, Answer::OtherKey).await;
    let err = fetch_central_time(&dialer_for(other_key, &valid.ca_pem, dir.path()))
        .await
        .unwrap_err();
    assert!(matches!(err, TimeError::BadSignature(_)), "{err}");
    assert!(
        err.to_string().contains("not signed by the certificate"),
        "{err}"
    );

    let stale = serve_fake(&valid, Answer::StaleNonce).await;
    let err = fetch_central_time(&dialer_for(stale, &valid.ca_pem, dir.path()))
        .await
        .unwrap_err();
    assert!(matches!(err, TimeError::StaleNonce), "{err}");

    // A server whose certificate is not from the fleet CA the agent pins.
    let stranger = fake_fleet("stranger", now - 3600, now + 3600 * 24 * 30);
    let outside = serve_fake(&stranger, Answer::Honest).await;
    let err = fetch_central_time(&dialer_for(outside, &valid.ca_pem, dir.path()))
        .await
        .unwrap_err();
    assert!(matches!(err, TimeError::Connect(_)), "{err}");
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");

    // A fleet server whose certificate expired long ago: the time call alone still works, every
    // other connection checks validity and is refused.
    let expired = fake_fleet("expired", now - 5 * 365 * 86_400, now - 4 * 365 * 86_400);
    let old = serve_fake(&expired, Answer::Honest).await;
    let dialer = dialer_for(old, &expired.ca_pem, dir.path());
    fetch_central_time(&dialer).await.unwrap();
    let err = dialer.enrollment_channel().await.unwrap_err().to_string();
    assert!(err.to_lowercase().contains("expired"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn central_answers_the_time_call_signed_and_refuses_bad_nonces() {
    let central = TestCentral::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = agent_config(&central, "unused", dir.path(), "SN-TIME");
    let dialer =
        CentralDialer::from_config(&config, Clock::virtual_offset(Duration::ZERO, false)).unwrap();
    let time = fetch_central_time(&dialer).await.unwrap();
    assert!((time.unix_ms - host_unix_ms()).abs() < 5_000);
    let mut client = central.enrollment().await;
    for bad in [Vec::new(), vec![0u8; 65]] {
        let err = client.time(TimeRequest { nonce: bad }).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("nonce"), "{}", err.message());
    }
}
