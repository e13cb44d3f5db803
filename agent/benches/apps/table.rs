//! The samples of each scenario and size, and the printed report.

use std::time::Duration;

use crate::agent_path::Deployed;
use crate::process_rss::{mib, Rss};
use crate::{reps, secs, HEARTBEAT_MS, RECONCILE_MS};

/// One measurement of the agent path and the bare runtime.
#[derive(Clone, Copy)]
pub struct Sample {
    /// The agent path.
    pub deployed: Deployed,
    /// The bare runtime creating and starting the same containers.
    pub baseline: Duration,
    /// The same start without the confinement (seccomp, masked paths, pids limit, OOM order,
    /// default limits): what confinement costs is `baseline / unconfined`.
    pub unconfined: Duration,
}

/// One row of the table: the samples of a scenario and size.
pub struct Row {
    /// `host` (`network_mode: host`) or `cni` (the app's own network).
    pub scenario: &'static str,
    /// Services deployed.
    pub n: usize,
    pub samples: Vec<Sample>,
}

impl Row {
    /// Each figure's median on its own.
    fn medians(&self) -> Sample {
        let median = |f: &dyn Fn(&Sample) -> Duration| {
            let mut v: Vec<Duration> = self.samples.iter().map(f).collect();
            v.sort_unstable();
            v[v.len() / 2]
        };
        Sample {
            deployed: Deployed {
                end_to_end: median(&|s| s.deployed.end_to_end),
                agent: median(&|s| s.deployed.agent),
                delivery: median(&|s| s.deployed.delivery),
            },
            baseline: median(&|s| s.baseline),
            unconfined: median(&|s| s.unconfined),
        }
    }
}

/// What the run measured.
pub struct Report {
    /// A cold `pull_image` of the busybox image.
    pub bare_pull: Duration,
    /// The agent's first deploy, which pulls the image.
    pub first_deploy: Deployed,
    pub rows: Vec<Row>,
    /// Rows that could not run, and why.
    pub skipped: Vec<String>,
    pub rss: Rss,
    /// The whole run.
    pub took: Duration,
}

/// Print the report to stdout.
pub fn print(report: &Report) {
    let Report {
        bare_pull,
        first_deploy: pin,
        rows,
        skipped,
        rss,
        took,
    } = report;
    println!();
    println!("apps bench: heartbeat {HEARTBEAT_MS} ms, reconcile interval {RECONCILE_MS} ms, {} cores, load {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split(' ').take(3).collect::<Vec<_>>().join(" "));
    println!("pull (busybox, local registry): bare pull_image {}   agent first deploy incl. pull (seen at the next reconcile pass): end-to-end {}, agent {}",
        secs(*bare_pull), secs(pin.end_to_end), secs(pin.agent));
    println!();
    println!(
        "median of {} runs per row (baseline and agent path alternating first)",
        reps()
    );
    println!(
        "{:<9} {:>3} {:>10} {:>10} {:>10} {:>10} {:>9} {:>10} {:>10} {:>11}",
        "scenario",
        "N",
        "end-to-end",
        "agent",
        "delivery",
        "baseline",
        "e2e/base",
        "agent/base",
        "unconfined",
        "base/unconf"
    );
    for r in rows {
        let m = r.medians();
        let ratio = |d: Duration| d.as_secs_f64() / m.baseline.as_secs_f64();
        println!(
            "{:<9} {:>3} {:>10} {:>10} {:>10} {:>10} {:>9.2} {:>10.2} {:>10} {:>11.2}",
            r.scenario,
            r.n,
            secs(m.deployed.end_to_end),
            secs(m.deployed.agent),
            secs(m.deployed.delivery),
            secs(m.baseline),
            ratio(m.deployed.end_to_end),
            ratio(m.deployed.agent),
            secs(m.unconfined),
            m.baseline.as_secs_f64() / m.unconfined.as_secs_f64()
        );
    }
    for r in rows {
        let list = |f: &dyn Fn(&Sample) -> Duration| {
            r.samples
                .iter()
                .map(|s| format!("{:.3}", f(s).as_secs_f64()))
                .collect::<Vec<_>>()
                .join(" ")
        };
        println!(
            "  samples {} N={}: end-to-end [{}] agent [{}] baseline [{}] unconfined [{}]",
            r.scenario,
            r.n,
            list(&|s| s.deployed.end_to_end),
            list(&|s| s.deployed.agent),
            list(&|s| s.baseline),
            list(&|s| s.unconfined)
        );
    }
    for s in skipped {
        println!("skipped  {s}");
    }
    println!();
    println!(
        "agent RSS ({} build, {}; heartbeat {} ms, reconcile interval {} ms):",
        rss.profile,
        rss.binary.display(),
        rss.heartbeat_ms,
        rss.reconcile_ms
    );
    println!(
        "  VmRSS idle {:.1} MiB, 20 containers {:.1} MiB, ratio 20/idle {:.2}; VmHWM (peak) {:.1} MiB",
        mib(rss.idle_kib),
        mib(rss.busy_kib),
        rss.busy_kib as f64 / rss.idle_kib as f64,
        mib(rss.peak_kib)
    );
    println!("bench took {}", secs(*took));
    println!("end-to-end: PUT sent -> central's GET reports all running; agent: sink got the stored desired state -> reconcile pass reports all running; delivery: PUT sent -> sink got it; baseline: create(+CNI attach)+start of the same N containers via cairn-runtime; unconfined: the baseline without seccomp, masked paths, pids limit, OOM order, default limits and the user namespace (RuntimeConfig::unconfined_for_benchmark)");
}
