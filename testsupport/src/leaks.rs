//! Where a secret value must not be: the files under a directory (a data dir, a state dir, a
//! log directory), searched byte for byte.

use std::path::{Path, PathBuf};

/// Every regular file under `dir` (recursively, symlinks not followed) whose bytes contain
/// `needle`. Unreadable files count as containing it, so a test cannot pass by not looking.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                pending.push(path);
            } else if kind.is_file() {
                match std::fs::read(&path) {
                    Ok(bytes) if !bytes.windows(needle.len()).any(|w| w == needle) => {}
                    _ => found.push(path),
                }
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_value_in_a_nested_file_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/b/db"), b"xx-hunter2-xx").unwrap();
        std::fs::write(dir.path().join("a/other"), b"nothing").unwrap();
        assert_eq!(
            files_containing(dir.path(), b"hunter2"),
            vec![dir.path().join("a/b/db")]
        );
        assert!(files_containing(dir.path(), b"absent").is_empty());
    }
}
