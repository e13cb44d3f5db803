//! Fleet benchmark: N simulated agents (the real agent library, real TLS and mTLS, software keys)
//! against one in-process central on loopback. Prints enrollments/s and heartbeats/s, each also as
//! a ratio against a baseline measured in the same run: fresh-connection authenticated Pings/s
//! (a TLS handshake plus one call, the floor under any agent request).
//!
//! `CAIRN_BENCH_AGENTS=100,400 cargo bench -p cairn-agent --bench fleet`

use std::time::{Duration, Instant};

use cairn_agent::{Agent, AgentConfig, EnrollOutcome};
use cairn_testsupport::central::TestCentral;
use futures::future::join_all;

const HEARTBEAT_MS: u64 = 10;

fn sizes() -> Vec<usize> {
    std::env::var("CAIRN_BENCH_AGENTS")
        .unwrap_or_else(|_| "50,200".into())
        .split(',')
        .map(|n| {
            n.trim()
                .parse()
                .expect("CAIRN_BENCH_AGENTS is a comma-separated list of counts")
        })
        .collect()
}

async fn bench_fleet(n: usize) {
    let central = TestCentral::start().await;
    let (_, token) = central.token("auto", None, None);
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &central.ca_pem).unwrap();
    let endpoint = format!("https://127.0.0.1:{}", central.c().grpc_addr.port());
    let mut agents = Vec::with_capacity(n);
    for i in 0..n {
        let mut config = AgentConfig::new(
            &endpoint,
            &ca,
            &token,
            &dir.path().join(format!("agent-{i}")),
        );
        config.serial = Some(format!("BENCH-{i:06}"));
        config.key_storage = cairn_agent::config::KeyStorageSetting::Software;
        // 10 ms (the agent's minimum) offers more heartbeats than one central serves on 2 cores,
        // so the figure is central's capacity, not the offered load.
        config.heartbeat_interval_ms = HEARTBEAT_MS;
        agents.push(std::sync::Arc::new(
            Agent::new(config).await.expect("agent prepares"),
        ));
    }

    let started = Instant::now();
    let identities: Vec<_> = join_all(agents.iter().map(|a| a.enroll_once())).await;
    let enroll_secs = started.elapsed().as_secs_f64();
    let identities: Vec<_> = identities
        .into_iter()
        .map(|r| match r.expect("enrollment succeeds") {
            EnrollOutcome::Approved(identity) => identity,
            other => panic!("auto token should approve, got {other:?}"),
        })
        .collect();

    let started = Instant::now();
    let pings = join_all(agents.iter().zip(&identities).map(|(a, id)| a.ping(id, 1))).await;
    let ping_secs = started.elapsed().as_secs_f64();
    assert!(pings.iter().all(Result::is_ok), "every ping answered");

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let tasks: Vec<_> = agents
        .iter()
        .map(|a| {
            let a = a.clone();
            let stopped = stopped.clone();
            tokio::spawn(async move { a.run(stopped).await })
        })
        .collect();
    // Warm up: every agent connected.
    let deadline = Instant::now() + Duration::from_secs(120);
    while central.c().shared.sessions.online_count() < n {
        assert!(Instant::now() < deadline, "agents did not all connect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = central.c().shared.sessions.heartbeats_received();
    let window = Duration::from_secs(5);
    tokio::time::sleep(window).await;
    let heartbeats = central.c().shared.sessions.heartbeats_received() - before;
    let _ = stop.send(true);
    for task in tasks {
        let _ = task.await;
    }

    let enroll_rate = n as f64 / enroll_secs;
    let ping_rate = n as f64 / ping_secs;
    let heartbeat_rate = heartbeats as f64 / window.as_secs_f64();
    let offered = n as f64 * 1000.0 / HEARTBEAT_MS as f64;
    println!("agents={n:>6}  baseline fresh-mTLS pings/s={ping_rate:>8.1}");
    println!(
        "agents={n:>6}  enrollments/s={enroll_rate:>8.1}  ratio to baseline={:.2}",
        enroll_rate / ping_rate
    );
    println!(
        "agents={n:>6}  heartbeats/s={heartbeat_rate:>8.1}  (offered {offered:.0}/s, {:.0}% served)  ratio to baseline={:.2}",
        100.0 * heartbeat_rate / offered,
        heartbeat_rate / ping_rate
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    for n in sizes() {
        runtime.block_on(bench_fleet(n));
    }
}
