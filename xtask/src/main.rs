//! Developer tasks: `cargo xtask lint | test | demo | bench | bench-fleet`. Plain Rust instead of shell scripts so
//! every step reports what failed.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

mod demo;
mod lint;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root();
    match args.first().map(String::as_str) {
        Some("lint") => lint::lint(&root),
        Some("test") => test(&root, args.iter().any(|a| a == "--host-only")),
        Some("demo") => demo::run(&root),
        Some("bench") => bench(&root),
        Some("bench-fleet") => bench_fleet(&root, &args[1..]),
        _ => {
            eprintln!("usage: cargo xtask <lint|test|demo|bench|bench-fleet>\n  lint   rustfmt check, clippy -D warnings, module docs, commit titles\n  test   lint, build, then run every test tier (unit, host integration, image, QEMU);\n         --host-only skips the image and QEMU tiers\n  demo   start a local central and devices and watch them enroll\n  bench  run the benchmarks and print their figures\n  bench-fleet [--sizes 10000,50000,100000] [--database-url postgres://...] [cairn-sim bench options]\n         one central process, N simulated devices per size: memory, heartbeat p99, fan-out time;\n         --database-url: central on PostgreSQL, a fresh database per size");
            bail!("unknown or missing task")
        }
    }
}

/// The workspace root (parent of xtask/).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}

/// Run a command in the workspace, echoing it; fail with its name if it fails.
pub(crate) fn run(root: &Path, program: &str, args: &[&str]) -> Result<()> {
    run_with(root, program, args, |_| {})
}

/// [`run`] with the command adjusted first (environment).
fn run_with(
    root: &Path,
    program: &str,
    args: &[&str],
    adjust: impl FnOnce(&mut Command),
) -> Result<()> {
    eprintln!("xtask: {program} {}", args.join(" "));
    let mut command = Command::new(program);
    command.args(args).current_dir(root);
    adjust(&mut command);
    let status = command
        .status()
        .with_context(|| format!("could not start {program}"))?;
    if !status.success() {
        bail!("`{program} {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Where central's tests find PostgreSQL (see testsupport's `DATABASE_URL_ENV`).
const POSTGRES_ENV: &str = "CAIRN_TEST_DATABASE_URL";

/// Start the test PostgreSQL cluster (`dev/test-postgres.sh`) and return its admin URL.
fn test_postgres(root: &Path) -> Result<String> {
    eprintln!("xtask: bash dev/test-postgres.sh");
    let out = Command::new("bash")
        .arg("dev/test-postgres.sh")
        .current_dir(root)
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("could not run dev/test-postgres.sh")?;
    if !out.status.success() {
        bail!("dev/test-postgres.sh failed ({}); run `bash dev/setup.sh` as root to install PostgreSQL", out.status);
    }
    let url = String::from_utf8(out.stdout)
        .context("dev/test-postgres.sh printed non-UTF-8")?
        .trim()
        .to_owned();
    if !url.starts_with("postgres://") {
        bail!("dev/test-postgres.sh printed {url:?}, not a postgres:// URL");
    }
    Ok(url)
}

fn test(root: &Path, host_only: bool) -> Result<()> {
    lint::lint(root)?;
    // System tests start the real binaries, so build them first.
    run(root, "cargo", &["build", "--workspace", "--bins"])?;
    // First run: central on its default store, SQLite (whatever the caller's environment says).
    run_with(
        root,
        "cargo",
        &["test", "--workspace", "--no-fail-fast"],
        |c| {
            c.env_remove(POSTGRES_ENV);
        },
    )?;
    // Second run of the whole central suite on PostgreSQL (a throwaway local cluster).
    let url = test_postgres(root)?;
    run_with(
        root,
        "cargo",
        &["test", "-p", "cairn-central", "--no-fail-fast"],
        |c| {
            c.env(POSTGRES_ENV, &url);
        },
    )?;
    if host_only {
        eprintln!("xtask: --host-only: image and QEMU tiers skipped");
        return Ok(());
    }
    // Image tier: two clean builds must be bit-identical (minutes, so ignored by default).
    enough_disk(&root.join("target"))?;
    run(
        root,
        "cargo",
        &[
            "test",
            "-p",
            "cairn-image",
            "--test",
            "reproducible",
            "--",
            "--ignored",
        ],
    )?;
    // QEMU tier: boots under TCG, one at a time.
    run(
        root,
        "cargo",
        &[
            "test",
            "-p",
            "cairn-e2e",
            "--",
            "--ignored",
            "--test-threads=1",
        ],
    )?;
    Ok(())
}

/// Free space the image and QEMU tiers need under target/ at their peak: os_update holds three
/// image builds, their bundles and a grown VM disk at once (see the README's Tests section).
const IMAGE_TIERS_FREE_GIB: u64 = 10;

/// Fail before minutes of image builds when the disk cannot hold them, instead of a tar or
/// mksquashfs "No space left on device" deep inside a build.
fn enough_disk(target: &Path) -> Result<()> {
    std::fs::create_dir_all(target)
        .with_context(|| format!("cannot create {}", target.display()))?;
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(target)
        .output()
        .context("could not run df to check free disk space")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let free: u64 = text
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .with_context(|| format!("df printed {text:?}, not a byte count"))?;
    let free_gib = free / (1 << 30);
    if free_gib < IMAGE_TIERS_FREE_GIB {
        bail!(
            "only {free_gib} GiB free on the file system of {}; the image and QEMU tiers need {IMAGE_TIERS_FREE_GIB} GiB: free some space (old target/cairn-e2e/vms or cairn-sim runs) and run again",
            target.display()
        );
    }
    eprintln!("xtask: {free_gib} GiB free under {} (the image and QEMU tiers need {IMAGE_TIERS_FREE_GIB})", target.display());
    Ok(())
}

/// Environment variable cairn-sim reads its `--database-url` from (see cairn-sim's
/// `registry::DATABASE_URL_ENV`).
const SIM_DATABASE_ENV: &str = "CAIRN_SIM_DATABASE_URL";

/// The fleet scale benchmark: release builds of central and the simulator, then
/// `cairn-sim bench` (table on stdout, JSON in target/cairn-sim/results.json, or
/// results-postgres.json with `--database-url`). `--central-bin`, `--work-dir` and `--json` given in `extra`
/// replace those defaults. `--database-url URL` (central on PostgreSQL, a fresh database per
/// size) is handed over in the environment so the password is not echoed with the command.
/// Beyond one process's descriptor limit, `--replicas N` (several central processes on the one
/// PostgreSQL database) and `--shards M` (simulator worker processes; by default one per
/// 18000 devices) are passed on to `cairn-sim bench` like its other options.
fn bench_fleet(root: &Path, extra: &[String]) -> Result<()> {
    let mut database_url = None;
    let mut passed = Vec::new();
    let mut rest = extra.iter();
    while let Some(arg) = rest.next() {
        if arg == "--database-url" {
            let url = rest
                .next()
                .context("--database-url needs a value: a postgres:// admin URL")?;
            database_url = Some(url.clone());
        } else if let Some(url) = arg.strip_prefix("--database-url=") {
            database_url = Some(url.to_owned());
        } else {
            passed.push(arg.clone());
        }
    }
    if let Some(url) = &database_url {
        if !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
            bail!("--database-url must be a PostgreSQL admin URL starting with postgres:// (e.g. postgres://user:password@127.0.0.1:5432/postgres)");
        }
    }
    let given = |name: &str| {
        passed
            .iter()
            .any(|a| a == name || a.starts_with(&format!("{name}=")))
    };
    run(
        root,
        "cargo",
        &[
            "build",
            "--release",
            "-p",
            "cairn-central",
            "-p",
            "cairn-sim",
        ],
    )?;
    let release = root.join("target/release");
    let central = release.join("cairn-central");
    let json_name = if database_url.is_some() {
        "results-postgres.json"
    } else {
        "results.json"
    };
    let mut args = vec!["bench".to_owned()];
    if !given("--central-bin") {
        args.extend(["--central-bin".to_owned(), central.display().to_string()]);
    }
    if !given("--work-dir") {
        args.extend([
            "--work-dir".to_owned(),
            root.join("target/cairn-sim").display().to_string(),
        ]);
    }
    if !given("--json") {
        args.extend([
            "--json".to_owned(),
            root.join("target/cairn-sim")
                .join(json_name)
                .display()
                .to_string(),
        ]);
    }
    args.extend(passed);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    if database_url.is_some() {
        eprintln!("xtask: central on PostgreSQL (--database-url, passed to cairn-sim as {SIM_DATABASE_ENV})");
    }
    run_with(
        root,
        &release.join("cairn-sim").display().to_string(),
        &args,
        |c| match &database_url {
            Some(url) => {
                c.env(SIM_DATABASE_ENV, url);
            }
            // Without the option, SQLite, whatever the caller's environment says.
            None => {
                c.env_remove(SIM_DATABASE_ENV);
            }
        },
    )
}

fn bench(root: &Path) -> Result<()> {
    run(root, "cargo", &["bench", "--workspace"])?;
    // Image and boot figures come from the QEMU tests' `BENCH key=value` lines.
    eprintln!("xtask: image build and QEMU boot figures (minutes)");
    let out = Command::new("cargo")
        .args([
            "test",
            "-p",
            "cairn-e2e",
            "--",
            "--ignored",
            "--test-threads=1",
            "--nocapture",
        ])
        // The enroll figure comes from the first boot of the data-protection test.
        .args([
            "boots_with_secure_boot",
            "stolen_disk_and_changed_boot_chain",
            "update_a_to_b",
        ])
        .current_dir(root)
        .output()
        .context("running the QEMU tests")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("QEMU benchmark run failed:\n{text}");
    }
    let figure = |key: &str| -> Option<f64> {
        text.lines()
            .filter_map(|l| l.split_once(&format!("BENCH {key}=")))
            .find_map(|(_, v)| v.trim().parse().ok())
    };
    for line in text
        .lines()
        .filter(|l| l.starts_with("built ") || l.trim_start().starts_with("image "))
    {
        println!("{}", line.trim());
    }
    if let (Some(ready), Some(enrolled)) = (
        figure("qemu_start_to_ready_s"),
        figure("qemu_start_to_agent_enrolled_s"),
    ) {
        println!("QEMU start -> boot complete (baseline): {ready:.1} s");
        println!(
            "QEMU start -> agent enrolled with central: {enrolled:.1} s  ratio to baseline={:.2}",
            enrolled / ready
        );
    }
    if let (Some(fraction), Some(ratio)) = (
        figure("update_fetched_fraction"),
        figure("update_time_over_plain_boot"),
    ) {
        println!("OS update A->B (one package added): bytes fetched / full bundle = {fraction:.3}");
        println!("OS update (no cuts): rollout created -> downloaded + installed, rebooting, over a plain boot to enrolled = {ratio:.2}");
    }
    Ok(())
}
