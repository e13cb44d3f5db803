//! Finding the external tools a host integration test needs, or skipping loudly.

use std::path::{Path, PathBuf};

/// True when the executable `name` is found on `PATH`.
///
/// When it is absent:
/// - under `CI=true` this panics, because CI must run every test (`.ci/run` must install the tool);
/// - elsewhere it prints a loud `SKIP` line to stderr and returns `false`, and the caller returns
///   early from the test.
///
/// # Panics
/// When the tool is missing and the environment variable `CI` is `true`.
pub fn require_tool(name: &str) -> bool {
    if find_on_path(name).is_some() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true")) {
        panic!("`{name}` is required in CI but was not found on PATH; .ci/run must install it");
    }
    eprintln!(
        "\n======== SKIP: `{name}` not found on PATH; this test needs it and did NOT run. \
         Install it (e.g. apt-get install {name}) to run it; under CI=true this is a failure. ========\n"
    );
    false
}

/// Full path of the executable `name` on `PATH`, if any.
pub(crate) fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_sh_and_not_a_made_up_tool() {
        assert!(find_on_path("sh").is_some(), "sh should be on PATH");
        assert!(find_on_path("cairn-no-such-tool-xyz").is_none());
    }
}
