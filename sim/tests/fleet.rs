//! ~200 simulated devices against a real in-process central: all enroll through the Enrollment
//! RPC, hold mutual-TLS Sync streams, get their heartbeats acknowledged, and receive a config
//! change pushed to each of them, and come back after central restarts.

use std::time::Duration;

use cairn_sim::rest::Operator;
use cairn_sim::{identity, Fleet, FleetOptions};
use cairn_testsupport::central::TestCentral;

const DEVICES: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_devices_enroll_beat_and_get_a_config_change() {
    let central = TestCentral::start().await;
    let grpc = central.c().grpc_addr;
    let operator = Operator::new(central.c().rest_addr, &central.ca_pem, &central.admin).unwrap();
    let token = operator.auto_token("sim-test").await.unwrap();

    let identities = identity::enroll_many(grpc, &central.ca_pem, &token, "t", 0..DEVICES, 32)
        .await
        .unwrap();
    assert_eq!(identities.len(), DEVICES);
    let mut ids: Vec<&str> = identities.iter().map(|i| i.device_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), DEVICES, "every device got its own id");

    // The cache gives back what was written.
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("identities");
    identity::append_cache(&cache, &identities).unwrap();
    assert_eq!(identity::load_cache(&cache).unwrap().len(), DEVICES);

    let options = FleetOptions {
        heartbeat_interval: Duration::from_millis(300),
        connect_concurrency: 32,
    };
    let fleet = Fleet::start(grpc, &central.ca_pem, identities, &options);
    fleet.wait_connected(Duration::from_secs(60)).await.unwrap();
    assert_eq!(central.c().shared.sessions.online_count(), DEVICES);
    fleet.wait_acked(2, Duration::from_secs(60)).await.unwrap();
    let latency = fleet.measure_heartbeats(Duration::from_secs(1)).await;
    assert!(
        latency.count > DEVICES / 2,
        "round trips were recorded: {latency:?}"
    );

    // The benchmark's config fan-out: a marker set on every device, then the last arrival.
    let started_us = cairn_sim::fleet::monotonic_us();
    cairn_sim::fleet::set_marker_all(&operator, fleet.ids().iter().map(String::as_str), 7, 16)
        .await
        .unwrap();
    let last_us = fleet.wait_marker(7, Duration::from_secs(60)).await.unwrap();
    let all_received_s = last_us.saturating_sub(started_us) as f64 / 1e6;
    assert!(
        all_received_s > 0.0 && all_received_s < 60.0,
        "all devices had the change after {all_received_s} s"
    );
    assert_eq!(fleet.reconnects(), 0, "no stream broke");

    // The benchmark's restart: central stops (every stream ends with a spread retry-after)
    // and starts again on the same ports; every device comes back on its own.
    let mut central = central;
    let before = fleet.sessions();
    central.restart().await;
    fleet
        .wait_reopened(&before, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(central.c().shared.sessions.online_count(), DEVICES);
    assert!(fleet.reconnects() >= DEVICES as u64);
    fleet.stop().await;
}
