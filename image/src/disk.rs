//! The GPT disk image: ESP, root-a, root-b, data (PARTLABELs `esp`, `root-a`, `root-b`,
//! `data`), with fixed disk and partition GUIDs from the recipe (sfdisk), partition contents
//! copied in at their offsets. Unwritten space stays a hole in the sparse file (bmaptool skips it).

use std::fs;
use std::path::Path;

use cairn_io::{FileError, PathContext};

use crate::recipe::Partitions;
use crate::tool::{tool, ToolError};

const MIB: u64 = 1 << 20;
const SECTOR: u64 = 512;
/// GPT type: EFI system partition.
pub const TYPE_ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
/// GPT type: Linux filesystem data (not auto-mounted by systemd-gpt-auto-generator).
pub const TYPE_LINUX: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

/// The disk image could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// sfdisk failed.
    #[error(transparent)]
    Tool(#[from] ToolError),
    /// File handling failed.
    #[error(transparent)]
    File(#[from] FileError),
    /// Content larger than its partition.
    #[error("{name} content is {size} bytes but the partition holds {capacity}: raise its size in the recipe [partitions]")]
    TooLarge {
        /// Partition label.
        name: &'static str,
        /// Content size.
        size: u64,
        /// Partition size.
        capacity: u64,
    },
}

/// One partition's place on the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// PARTLABEL.
    pub name: &'static str,
    /// Partition GUID.
    pub uuid: String,
    /// GPT type GUID.
    pub type_guid: &'static str,
    /// First byte.
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
}

/// The disk layout: partitions in order and the total image size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// ESP, root-a, root-b, data.
    pub partitions: Vec<Partition>,
    /// Image size in bytes (1 MiB after the last partition for the backup GPT).
    pub size: u64,
}

impl Layout {
    /// The partition with label `name`.
    pub fn get(&self, name: &str) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.name == name)
    }
}

/// The layout for a recipe's `[partitions]`, 1 MiB aligned.
pub fn layout(p: &Partitions) -> Layout {
    let mut offset = MIB;
    let mut partitions = Vec::new();
    for (name, uuid, type_guid, mib) in [
        ("esp", &p.esp_uuid, TYPE_ESP, p.esp_mib),
        ("root-a", &p.root_a_uuid, TYPE_LINUX, p.root_mib),
        ("root-b", &p.root_b_uuid, TYPE_LINUX, p.root_mib),
        ("data", &p.data_uuid, TYPE_LINUX, p.data_mib),
    ] {
        partitions.push(Partition {
            name,
            uuid: uuid.clone(),
            type_guid,
            offset,
            size: mib * MIB,
        });
        offset += mib * MIB;
    }
    Layout {
        partitions,
        size: offset + MIB,
    }
}

/// The sfdisk script for `layout`.
pub fn sfdisk_script(layout: &Layout, disk_guid: &str) -> String {
    let mut script = format!(
        "label: gpt\nlabel-id: {}\nunit: sectors\nfirst-lba: 2048\nsector-size: 512\n\n",
        disk_guid.to_ascii_uppercase()
    );
    for p in &layout.partitions {
        script.push_str(&format!(
            "start={}, size={}, type={}, uuid={}, name=\"{}\"\n",
            p.offset / SECTOR,
            p.size / SECTOR,
            p.type_guid,
            p.uuid.to_ascii_uppercase(),
            p.name
        ));
    }
    script
}

/// Write the disk image `out`: partition table, then each `(label, content file)` at its offset.
pub fn make_disk(
    out: &Path,
    layout: &Layout,
    disk_guid: &str,
    contents: &[(&'static str, &Path)],
    work: &Path,
) -> Result<(), DiskError> {
    for (name, file) in contents {
        let size = fs::metadata(file).at("read", file)?.len();
        let capacity = layout.get(name).map(|p| p.size).unwrap_or(0);
        if size > capacity {
            return Err(DiskError::TooLarge {
                name,
                size,
                capacity,
            });
        }
    }
    let _ = fs::remove_file(out);
    let disk = fs::File::create(out).at("create", out)?;
    disk.set_len(layout.size).at("set the size of", out)?;
    drop(disk);
    fs::create_dir_all(work).at("create", work)?;
    let script = work.join("sfdisk.script");
    fs::write(&script, sfdisk_script(layout, disk_guid)).at("write", &script)?;
    tool("sfdisk")
        .args([
            "--no-reread",
            "--no-tell-kernel",
            "--wipe=never",
            "--wipe-partitions=never",
            "--quiet",
        ])
        .arg(out)
        .stdin_file(&script)
        .run()?;
    for (name, file) in contents {
        let part = layout.get(name).expect("checked above");
        // dd conv=sparse seeks over all-zero blocks, so they stay holes in the image.
        tool("dd")
            .arg(format!("if={}", file.display()))
            .arg(format!("of={}", out.display()))
            .args(["bs=1M", "conv=notrunc,sparse,fsync", "status=none"])
            .arg(format!("seek={}", part.offset / MIB))
            .run()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipe::Recipe;

    fn partitions() -> Partitions {
        Recipe::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../recipes/qemu-x86_64.toml"))
            .unwrap()
            .partitions
    }

    #[test]
    fn layout_is_aligned_and_ordered() {
        let mut p = partitions();
        p.esp_mib = 2;
        p.root_mib = 3;
        p.data_mib = 1;
        let l = layout(&p);
        let names: Vec<_> = l.partitions.iter().map(|p| p.name).collect();
        assert_eq!(names, ["esp", "root-a", "root-b", "data"]);
        assert_eq!(l.get("root-b").unwrap().offset, 6 * MIB);
        assert_eq!(l.size, 11 * MIB);
        let script = sfdisk_script(&l, &p.disk_guid);
        assert!(
            script.contains("start=2048, size=4096, type=C12A7328"),
            "{script}"
        );
        assert!(script.contains("name=\"root-a\""), "{script}");
    }

    #[test]
    fn writes_a_gpt_with_fixed_ids_and_contents() {
        if !crate::tool::is_installed("sfdisk") {
            eprintln!("SKIP: sfdisk not installed (dev/image-packages.txt)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut p = partitions();
        p.esp_mib = 2;
        p.root_mib = 2;
        p.data_mib = 1;
        let l = layout(&p);
        let root = dir.path().join("root.img");
        fs::write(&root, b"ROOTDATA").unwrap();
        let out = dir.path().join("disk.img");
        make_disk(&out, &l, &p.disk_guid, &[("root-a", &root)], dir.path()).unwrap();
        let dump = tool("sfdisk")
            .arg("--dump")
            .arg(&out)
            .run()
            .unwrap()
            .stdout_text();
        assert!(dump.contains(&p.disk_guid.to_ascii_uppercase()), "{dump}");
        assert!(dump.contains("name=\"data\""), "{dump}");
        let bytes = fs::read(&out).unwrap();
        let at = l.get("root-a").unwrap().offset as usize;
        assert_eq!(&bytes[at..at + 8], b"ROOTDATA");
        let big = dir.path().join("big");
        fs::write(&big, vec![1u8; 3 << 20]).unwrap();
        assert!(matches!(
            make_disk(&out, &l, &p.disk_guid, &[("esp", &big)], dir.path()),
            Err(DiskError::TooLarge { .. })
        ));
    }
}
