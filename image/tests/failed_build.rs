//! A failing step names itself and the tool's stderr, and leaves no output behind.

use std::fs;
use std::path::{Path, PathBuf};

use cairn_image::{build, BuildError, BuildOptions, Recipe};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[test]
fn a_failed_step_is_named_and_leaves_no_output() {
    if !cairn_image::tool::is_installed("mmdebstrap") {
        eprintln!("SKIP: mmdebstrap is not installed (dev/image-packages.txt)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The real recipe, but its mirror is a directory that does not exist: mmdebstrap fails fast.
    let text = fs::read_to_string(workspace().join("recipes/qemu-x86_64.toml")).unwrap();
    let broken = text
        .lines()
        .map(|line| {
            if line.trim_start().starts_with("\"deb ") {
                ""
            } else {
                line
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        .replace(
            "mirrors = [",
            "mirrors = [\"deb file:///nonexistent/cairn-mirror bookworm main\",",
        );
    let recipe_path = dir.path().join("broken.toml");
    fs::write(&recipe_path, broken).unwrap();
    fs::copy(
        workspace().join("recipes/qemu-x86_64.lock"),
        dir.path().join("broken.lock"),
    )
    .unwrap();
    let recipe = Recipe::load(&recipe_path).unwrap();

    let out = dir.path().join("out");
    let options = BuildOptions {
        out_dir: out.clone(),
        agent_bin: "/usr/bin/true".into(),
        central_url: None,
        central_ca: None,
        token_file: None,
        sb_key: cairn_image::uki::SNAKEOIL_KEY.into(),
        sb_cert: cairn_image::uki::SNAKEOIL_CERT.into(),
        sb_key_pass: None,
        update_key: dir.path().join("no-key.pem"),
        update_cert: dir.path().join("no-cert.pem"),
        cache_dir: None,
        keep_partial: false,
        // The live mirror moves on between lock refreshes; test builds report the drift.
        allow_lock_drift: true,
    };
    let mut events = Vec::new();
    let err = build(&recipe, &options, &mut |e| events.push(e.to_string())).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, BuildError::Step { index: 1, .. }), "{text}");
    assert!(
        text.contains("[1/9] root filesystem") && text.contains("mmdebstrap"),
        "{text}"
    );
    assert!(
        text.contains("stderr"),
        "the tool's stderr is missing: {text}"
    );
    assert_eq!(events, ["[1/9] root filesystem (mmdebstrap) ..."]);
    let left: Vec<_> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        left.is_empty(),
        "a failed build left {left:?} in {}",
        out.display()
    );
}
