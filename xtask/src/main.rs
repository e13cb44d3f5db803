//! Developer tasks: `cargo xtask test | demo | bench | bench-fleet`. Plain Rust instead of shell scripts so
//! every step reports what failed.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

mod demo;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root();
    match args.first().map(String::as_str) {
        Some("test") => test(&root, args.iter().any(|a| a == "--host-only")),
        Some("demo") => demo::run(&root),
        Some("bench") => bench(&root),
        Some("bench-fleet") => bench_fleet(&root, &args[1..]),
        _ => {
            eprintln!("usage: cargo xtask <test|demo|bench|bench-fleet>\n  test   build, then run every test tier (unit, host integration, image, QEMU);\n         --host-only skips the image and QEMU tiers\n  demo   start a local central and devices and watch them enroll\n  bench  run the benchmarks and print their figures\n  bench-fleet [--sizes 10000,50000,100000] [cairn-sim bench options]\n         one central process, N simulated devices per size: memory, heartbeat p99, fan-out time");
            bail!("unknown or missing task")
        }
    }
}

/// The workspace root (parent of xtask/).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_owned()
}

/// Run a command in the workspace, echoing it; fail with its name if it fails.
pub(crate) fn run(root: &Path, program: &str, args: &[&str]) -> Result<()> {
    eprintln!("xtask: {program} {}", args.join(" "));
    let status = Command::new(program)
        .args(args)
        .current_dir(root)
        .status()
        .with_context(|| format!("could not start {program}"))?;
    if !status.success() {
        bail!("`{program} {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

fn test(root: &Path, host_only: bool) -> Result<()> {
    // System tests start the real binaries, so build them first.
    run(root, "cargo", &["build", "--workspace", "--bins"])?;
    run(root, "cargo", &["test", "--workspace", "--no-fail-fast"])?;
    if host_only {
        eprintln!("xtask: --host-only: image and QEMU tiers skipped");
        return Ok(());
    }
    // Image tier: two clean builds must be bit-identical (minutes, so ignored by default).
    run(root, "cargo", &["test", "-p", "cairn-image", "--test", "reproducible", "--", "--ignored"])?;
    // QEMU tier: boots under TCG, one at a time.
    run(root, "cargo", &["test", "-p", "cairn-e2e", "--", "--ignored", "--test-threads=1"])?;
    Ok(())
}

/// The fleet scale benchmark: release builds of central and the simulator, then
/// `cairn-sim bench` (table on stdout, JSON in target/cairn-sim/results.json).
fn bench_fleet(root: &Path, extra: &[String]) -> Result<()> {
    run(root, "cargo", &["build", "--release", "-p", "cairn-central", "-p", "cairn-sim"])?;
    let release = root.join("target/release");
    let central = release.join("cairn-central");
    let json = root.join("target/cairn-sim/results.json");
    let work = root.join("target/cairn-sim");
    let mut args = vec![
        "bench".to_owned(),
        "--central-bin".to_owned(),
        central.display().to_string(),
        "--work-dir".to_owned(),
        work.display().to_string(),
        "--json".to_owned(),
        json.display().to_string(),
    ];
    args.extend(extra.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run(root, &release.join("cairn-sim").display().to_string(), &args)
}

fn bench(root: &Path) -> Result<()> {
    run(root, "cargo", &["bench", "--workspace"])?;
    // Image and boot figures come from the QEMU tests' `BENCH key=value` lines.
    eprintln!("xtask: image build and QEMU boot figures (minutes)");
    let out = Command::new("cargo")
        .args(["test", "-p", "cairn-e2e", "--", "--ignored", "--test-threads=1", "--nocapture"])
        // The enroll figure comes from the first boot of the data-protection test.
        .args(["boots_with_secure_boot", "stolen_disk_and_changed_boot_chain", "update_a_to_b"])
        .current_dir(root)
        .output()
        .context("running the QEMU tests")?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!("QEMU benchmark run failed:\n{text}");
    }
    let figure = |key: &str| -> Option<f64> {
        text.lines().filter_map(|l| l.split_once(&format!("BENCH {key}="))).find_map(|(_, v)| v.trim().parse().ok())
    };
    for line in text.lines().filter(|l| l.starts_with("built ") || l.trim_start().starts_with("image ")) {
        println!("{}", line.trim());
    }
    if let (Some(ready), Some(enrolled)) = (figure("qemu_start_to_ready_s"), figure("qemu_start_to_agent_enrolled_s")) {
        println!("QEMU start -> boot complete (baseline): {ready:.1} s");
        println!("QEMU start -> agent enrolled with central: {enrolled:.1} s  ratio to baseline={:.2}", enrolled / ready);
    }
    if let (Some(fraction), Some(ratio)) = (figure("update_fetched_fraction"), figure("update_time_over_plain_boot")) {
        println!("OS update A->B (one package added): bytes fetched / full bundle = {fraction:.3}");
        println!("OS update (no cuts): rollout created -> downloaded + installed, rebooting, over a plain boot to enrolled = {ratio:.2}");
    }
    Ok(())
}
