//! The root filesystem image of a slot: a squashfs (zstd, every timestamp fixed) with its
//! dm-verity hash tree appended in the same file (`veritysetup format --hash-offset`). The root
//! hash goes onto the slot's kernel command line, inside the signed UKI.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_io::{FileError, PathContext};

use crate::tool::{tool, ToolError};

/// dm-verity data and hash block size.
pub const BLOCK: u64 = 4096;

/// The root image could not be made.
#[derive(Debug, thiserror::Error)]
pub enum VerityError {
    /// mksquashfs or veritysetup failed.
    #[error(transparent)]
    Tool(#[from] ToolError),
    /// A file could not be inspected.
    #[error(transparent)]
    File(#[from] FileError),
    /// The squashfs is not a whole number of blocks.
    #[error(
        "squashfs {path} is {size} bytes, not a multiple of {BLOCK}: mksquashfs padding is off"
    )]
    Unaligned {
        /// The image.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// veritysetup printed no root hash.
    #[error("veritysetup format printed no root hash:\n{output}")]
    NoRootHash {
        /// What it printed.
        output: String,
    },
}

/// A verity-protected root image.
#[derive(Debug, Clone)]
pub struct RootImage {
    /// The image file (filesystem, then verity superblock and hash tree).
    pub path: PathBuf,
    /// Bytes of filesystem = offset of the hash area.
    pub hash_offset: u64,
    /// Total size of the file.
    pub size: u64,
    /// dm-verity root hash (hex).
    pub root_hash: String,
}

/// Make a squashfs of `root` at `out` with every timestamp set to `epoch`.
pub fn make_squashfs(
    root: &Path,
    out: &Path,
    epoch: i64,
    zstd_level: u32,
    exclude: &[String],
) -> Result<(), VerityError> {
    let _ = fs::remove_file(out);
    let epoch = epoch.to_string();
    let mut tool = tool("mksquashfs")
        .timeout(Duration::from_secs(900))
        .arg(root)
        .arg(out)
        .args(["-noappend", "-no-progress", "-quiet", "-comp", "zstd"])
        .args(["-Xcompression-level", &zstd_level.to_string()])
        .args(["-all-time", &epoch, "-mkfs-time", &epoch])
        // mksquashfs refuses SOURCE_DATE_EPOCH together with the explicit times.
        .env_remove("SOURCE_DATE_EPOCH");
    if !exclude.is_empty() {
        tool = tool.arg("-wildcards").arg("-e").args(exclude);
    }
    tool.run()?;
    Ok(())
}

/// Append a dm-verity hash tree (with superblock, sha256, 4 KiB blocks, fixed salt and UUID) to
/// the filesystem image at `image` and return the result.
pub fn append_hash_tree(
    image: &Path,
    salt_hex: &str,
    uuid: &str,
) -> Result<RootImage, VerityError> {
    let size = file_size(image)?;
    if size % BLOCK != 0 {
        return Err(VerityError::Unaligned {
            path: image.to_path_buf(),
            size,
        });
    }
    let out = tool("veritysetup")
        .arg("format")
        .arg(format!("--data-blocks={}", size / BLOCK))
        .arg(format!("--hash-offset={size}"))
        .arg(format!("--salt={salt_hex}"))
        .arg(format!("--uuid={uuid}"))
        .args([
            "--hash=sha256",
            "--data-block-size=4096",
            "--hash-block-size=4096",
        ])
        .arg(image)
        .arg(image)
        .run()?;
    let stdout = out.stdout_text();
    let root_hash = parse_root_hash(&stdout).ok_or_else(|| VerityError::NoRootHash {
        output: stdout.clone(),
    })?;
    Ok(RootImage {
        path: image.to_path_buf(),
        hash_offset: size,
        size: file_size(image)?,
        root_hash,
    })
}

/// The `Root hash:` line of `veritysetup format` output.
pub fn parse_root_hash(output: &str) -> Option<String> {
    output.lines().find_map(|line| {
        let hash = line.strip_prefix("Root hash:")?.trim();
        (hash.len() >= 64 && hash.chars().all(|c| c.is_ascii_hexdigit()))
            .then(|| hash.to_ascii_lowercase())
    })
}

/// Check an image against a root hash in user space (`veritysetup verify`, no device-mapper).
pub fn verify(image: &RootImage) -> Result<(), VerityError> {
    tool("veritysetup")
        .arg("verify")
        .arg(format!("--hash-offset={}", image.hash_offset))
        .arg(&image.path)
        .arg(&image.path)
        .arg(&image.root_hash)
        .run()?;
    Ok(())
}

fn file_size(path: &Path) -> Result<u64, VerityError> {
    Ok(fs::metadata(path).at("read the size of", path)?.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_root_hash_line() {
        let out = "VERITY header information for x\nUUID:            \nHash type:       1\n\
                   Root hash:      4392712ba01368efdf14b05c76f9e4df0d53664630b5d48632ed17a137f39076\n";
        assert_eq!(
            parse_root_hash(out).as_deref(),
            Some("4392712ba01368efdf14b05c76f9e4df0d53664630b5d48632ed17a137f39076")
        );
        assert_eq!(parse_root_hash("Root hash: xyz"), None);
    }

    #[test]
    fn hash_tree_verifies_and_detects_a_flipped_byte() {
        if !crate::tool::is_installed("veritysetup") || !crate::tool::is_installed("mksquashfs") {
            eprintln!("SKIP: veritysetup/mksquashfs not installed (dev/image-packages.txt)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(root.join("etc/hello"), "hello".repeat(5000)).unwrap();
        let img = dir.path().join("root.img");
        make_squashfs(&root, &img, 1_735_689_600, 3, &[]).unwrap();
        let salt = "00".repeat(32);
        let image = append_hash_tree(&img, &salt, "2f3c9a41-6d1e-4b8f-9c2a-1e5d7b3a9f01").unwrap();
        assert!(image.size > image.hash_offset);
        verify(&image).unwrap();
        let mut bytes = fs::read(&img).unwrap();
        bytes[100] ^= 0xff;
        fs::write(&img, bytes).unwrap();
        assert!(verify(&image).is_err());
    }
}
