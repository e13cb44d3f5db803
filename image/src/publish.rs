//! Release files beside the disk image: `.img.zst` (zstd, one thread so the bytes are
//! reproducible, 1 GiB window so root-b deduplicates against root-a), `.bmap` (bmaptool, for fast
//! sparse flashing) and `SHA256SUMS`.
//!
//! Measured on the qemu-x86_64 image (1.1 GiB, two 181 MiB squashfs slots, 2 cores): `-19
//! --long=27` took 380 s for 375 MiB; `-3 --long=30` takes 5 s for 195 MiB (the squashfs is
//! already zstd-compressed, so a higher level buys nothing; the long window finds root-b = root-a).
//! Decompress with `zstd -d --long=30` (or `--memory=1024MB`).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_io::{FileError, PathContext};

use crate::tool::{tool, ToolError};

/// A release file could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// zstd or bmaptool failed.
    #[error(transparent)]
    Tool(#[from] ToolError),
    /// Reading or writing failed.
    #[error(transparent)]
    File(#[from] FileError),
}

/// Compress `image` to `out` (zstd -3, 1 GiB window, single thread: deterministic).
pub fn compress(image: &Path, out: &Path) -> Result<(), PublishError> {
    tool("zstd")
        .timeout(Duration::from_secs(1200))
        .args(["-3", "--long=30", "-T1", "-q", "-f", "--no-progress", "-o"])
        .arg(out)
        .arg(image)
        .run()?;
    Ok(())
}

/// Write the block map of the sparse `image` to `out`.
pub fn bmap(image: &Path, out: &Path) -> Result<(), PublishError> {
    tool("bmaptool")
        .timeout(Duration::from_secs(600))
        .args(["create", "-o"])
        .arg(out)
        .arg(image)
        .run()?;
    Ok(())
}

/// SHA256 of a file, hex (sha256sum: fast even in unoptimized builds of this crate).
pub fn sha256_file(path: &Path) -> Result<String, PublishError> {
    let out = tool("sha256sum").arg("--binary").arg(path).run()?;
    let stdout = out.stdout_text();
    let hex = stdout
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    if hex.len() != 64 {
        return Err(FileError::new(
            "hash",
            path,
            std::io::Error::other(format!("unexpected sha256sum output {stdout:?}")),
        )
        .into());
    }
    Ok(hex)
}

/// Write `SHA256SUMS` in `dir` for `names` (files in `dir`), in the `sha256sum -c` format.
pub fn sha256sums(dir: &Path, names: &[String]) -> Result<PathBuf, PublishError> {
    let mut sorted = names.to_vec();
    sorted.sort();
    let mut text = String::new();
    for name in &sorted {
        text.push_str(&format!("{}  {name}\n", sha256_file(&dir.join(name))?));
    }
    let out = dir.join("SHA256SUMS");
    fs::write(&out, text).at("write", &out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_are_in_sha256sum_format() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("b"), "hello\n").unwrap();
        fs::write(dir.path().join("a"), "").unwrap();
        let sums = sha256sums(dir.path(), &["b".into(), "a".into()]).unwrap();
        let text = fs::read_to_string(sums).unwrap();
        assert_eq!(
            text,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855  a\n\
             5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03  b\n"
        );
    }
}
