//! `cargo xtask lint`: the checks every commit must pass, run first by `cargo xtask test` so CI
//! fails on them before it spends minutes on tests.
//!
//! - rustfmt with its defaults (`cargo fmt --check`);
//! - clippy on every target with `-D warnings`, under the workspace lints of `Cargo.toml`
//!   (`missing_docs` among them);
//! - tidy: every Rust file opens with a `//!` doc saying what it is for;
//! - crate dependencies: what ARCHITECTURE.md says a crate must not depend on ([`FORBIDDEN`]);
//! - commit titles after [`TITLE_RULE_SINCE`] are at most [`MAX_TITLE`] characters.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::run;

/// The commit after which titles follow the 72-character rule (older ones are history).
const TITLE_RULE_SINCE: &str = "c418229";

/// Longest commit title `git log --oneline` shows whole.
const MAX_TITLE: usize = 72;

/// Runs every check; fails on the first one that finds something, naming it and the fix.
pub fn lint(root: &Path) -> Result<()> {
    run(root, "cargo", &["fmt", "--all", "--", "--check"])
        .context("formatting differs from rustfmt's: run `cargo fmt --all`")?;
    run(
        root,
        "cargo",
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--locked",
            "--",
            "-D",
            "warnings",
        ],
    )
    .context("clippy found problems (warnings count as errors): fix them or, where a lint is wrong for one item, allow it there with a comment saying why")?;
    tidy(root)?;
    crate_dependencies(root)?;
    commit_titles(root)?;
    eprintln!("xtask: lint passed");
    Ok(())
}

/// Every tracked `.rs` file starts with a `//!` module doc.
fn tidy(root: &Path) -> Result<()> {
    let files = git(root, &["ls-files", "*.rs"])?;
    let mut undocumented = Vec::new();
    for file in files.lines() {
        let text = std::fs::read_to_string(root.join(file))
            .with_context(|| format!("cannot read {file}"))?;
        if !text.trim_start().starts_with("//!") {
            undocumented.push(file.to_owned());
        }
    }
    if !undocumented.is_empty() {
        bail!(
            "these files do not open with a `//!` doc saying what they are for:\n  {}",
            undocumented.join("\n  ")
        );
    }
    Ok(())
}

/// Dependencies a crate must not have (normal and build dependencies; tests may use anything),
/// each with the reason ARCHITECTURE.md gives.
const FORBIDDEN: &[(&str, &[&str], &str)] = &[
    (
        "cairn-io",
        &["cairn-*", "tokio"],
        "shared plumbing knows no Cairn crate and nothing async",
    ),
    (
        "cairn-api",
        &["cairn-*", "tokio", "axum", "ureq", "reqwest"],
        "the REST types are the wire only",
    ),
    (
        "cairn-compose",
        &["cairn-*", "tokio", "containerd-client", "reqwest", "tonic"],
        "the Compose parser does no I/O",
    ),
    (
        "cairn-proto",
        &["cairn-*"],
        "the gRPC types are the wire only",
    ),
    (
        "cairn-pe",
        &["cairn-*"],
        "PE/COFF and PCR 11 are pure functions over bytes",
    ),
    (
        "cairn-attest",
        &["cairn-*", "tokio", "tss-esapi", "tonic"],
        "the attestation verifier is pure: no I/O, no TPM library, no Cairn crate but cairn-pe",
    ),
    (
        "cairn-tpm",
        &["cairn-disk", "cairn-agent", "cairn-central", "cairn-proto"],
        "the TPM crate seals bytes and knows nothing of LUKS, the agent or central",
    ),
    (
        "cairn-disk",
        &["cairn-agent", "cairn-central", "cairn-proto"],
        "the data partition knows nothing of central or the agent",
    ),
    (
        "cairn-delta",
        &["cairn-proto", "cairn-central", "cairn-agent"],
        "chunk indexes know nothing of gRPC or central",
    ),
    (
        "cairn-runtime",
        &["cairn-proto", "cairn-central", "cairn-agent", "cairn-api"],
        "apps on containerd know nothing of central or the wire (the agent translates)",
    ),
    (
        "cairn-agent",
        &["cairn-central", "cairn-api", "cairnctl"],
        "the agent talks to central only through cairn-proto",
    ),
    (
        "cairn-central",
        &[
            "cairn-agent",
            "cairn-runtime",
            "cairnctl",
            "cairn-disk",
            "cairn-tpm",
        ],
        "central never runs the device's code",
    ),
    (
        "cairnctl",
        &["cairn-central", "cairn-runtime", "cairn-agent"],
        "cairnctl reaches central only over REST with cairn-api's types",
    ),
];

/// Exceptions to a pattern of [`FORBIDDEN`]: (crate, the one dependency it may have).
const ALLOWED: &[(&str, &str)] = &[
    // The appraisal of a quote predicts PCR 11 after the boot phases with the code the image build
    // and the device use, so all three agree; cairn-pe is itself pure and depends on no Cairn crate.
    ("cairn-attest", "cairn-pe"),
];

/// Whether `krate` depending on `dependency` breaks one of the `forbidden` patterns (a name, or
/// a prefix ending in `*`) without an exception in [`ALLOWED`].
fn breaks_rule(krate: &str, forbidden: &[&str], dependency: &str) -> bool {
    let allowed = ALLOWED.iter().any(|(k, d)| *k == krate && *d == dependency);
    !allowed
        && forbidden.iter().any(|f| match f.strip_suffix('*') {
            Some(prefix) => dependency.starts_with(prefix),
            None => dependency == *f,
        })
}

/// Each crate's normal and build dependencies avoid what [`FORBIDDEN`] lists for it, but for the
/// exceptions of [`ALLOWED`].
fn crate_dependencies(root: &Path) -> Result<()> {
    let out = Command::new("cargo")
        .args(["metadata", "--format-version", "1", "--no-deps", "--locked"])
        .current_dir(root)
        .output()
        .context("could not run cargo metadata")?;
    if !out.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let metadata: serde_json::Value = serde_json::from_slice(&out.stdout)
        .context("cargo metadata printed something else than JSON")?;
    let packages = metadata["packages"]
        .as_array()
        .context("cargo metadata has no packages")?;
    let mut broken = Vec::new();
    for (krate, forbidden, why) in FORBIDDEN {
        let package = packages
            .iter()
            .find(|p| p["name"] == *krate)
            .with_context(|| format!("the dependency rules name {krate}, which is not in the workspace; update FORBIDDEN in xtask/src/lint.rs"))?;
        let dependencies = package["dependencies"].as_array().into_iter().flatten();
        for dependency in dependencies.filter(|d| d["kind"] != "dev") {
            let name = dependency["name"].as_str().unwrap_or_default();
            if breaks_rule(krate, forbidden, name) {
                broken.push(format!("{krate} depends on {name}: {why}"));
            }
        }
    }
    if !broken.is_empty() {
        bail!(
            "crate dependencies break ARCHITECTURE.md's invariants (move the code, or change the rule there and in xtask/src/lint.rs with the reason):\n  {}",
            broken.join("\n  ")
        );
    }
    Ok(())
}

/// Titles of the commits since [`TITLE_RULE_SINCE`] fit in [`MAX_TITLE`] characters. Skipped
/// (with a note) outside a git checkout or when that commit is not in the history (a shallow
/// clone).
fn commit_titles(root: &Path) -> Result<()> {
    let range = format!("{TITLE_RULE_SINCE}..HEAD");
    let Ok(log) = git(root, &["log", "--format=%h %s", &range]) else {
        eprintln!("xtask: commit titles not checked: no git history with {TITLE_RULE_SINCE}");
        return Ok(());
    };
    let long: Vec<&str> = log
        .lines()
        .filter(|line| {
            let title = line.split_once(' ').map_or("", |(_, t)| t);
            title.chars().count() > MAX_TITLE
        })
        .collect();
    if !long.is_empty() {
        bail!(
            "commit titles longer than {MAX_TITLE} characters (put the detail in the body):\n  {}",
            long.join("\n  ")
        );
    }
    Ok(())
}

/// Output of a git command run in `root`.
fn git(root: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(root)
        .output()
        .context("could not run git")?;
    if !out.status.success() {
        bail!(
            "`git {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).context("git printed non-UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verifier_may_use_cairn_pe_and_no_other_cairn_crate() {
        let (_, forbidden, _) = FORBIDDEN
            .iter()
            .find(|(krate, _, _)| *krate == "cairn-attest")
            .unwrap();
        assert!(!breaks_rule("cairn-attest", forbidden, "cairn-pe"));
        assert!(breaks_rule("cairn-attest", forbidden, "cairn-io"));
        assert!(breaks_rule("cairn-attest", forbidden, "tss-esapi"));
        assert!(!breaks_rule("cairn-attest", forbidden, "sha2"));
        // The exception belongs to cairn-attest only.
        assert!(breaks_rule("cairn-proto", &["cairn-*"], "cairn-pe"));
    }
}
