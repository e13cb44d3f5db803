//! `cargo xtask lint`: the checks every commit must pass, run first by `cargo xtask test` so CI
//! fails on them before it spends minutes on tests.
//!
//! - rustfmt with its defaults (`cargo fmt --check`);
//! - clippy on every target with `-D warnings`, under the workspace lints of `Cargo.toml`
//!   (`missing_docs` among them);
//! - tidy: every Rust file opens with a `//!` doc saying what it is for;
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
