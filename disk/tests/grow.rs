//! Host integration tests of growing the last GPT partition, on sparse image files partitioned
//! by the host's sfdisk like the Cairn image (esp, root-a, root-b, data last, 1 MiB aligned, 1 MiB
//! left for the backup GPT) and checked with `sfdisk --json` and `sfdisk --verify`.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use cairn_disk::{grow_last_partition, GrowError, GrowOutcome};
use cairn_testsupport::require_tool;

const MIB: u64 = 1024 * 1024;
const SECTOR: u64 = 512;
/// (label, size in MiB), starting at 1 MiB, like the image layout.
const PARTITIONS: [(&str, u64); 4] = [("esp", 2), ("root-a", 4), ("root-b", 4), ("data", 4)];
/// The image: 1 MiB before the partitions, 1 MiB after them for the backup GPT.
const IMAGE_SIZE: u64 = 16 * MIB;
const TYPE_ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
const TYPE_LINUX: &str = "0FC63DAF-8483-4772-8E3D-693D7DE47984";

/// `(start, size)` of each partition in sectors.
fn layout() -> Vec<(u64, u64)> {
    let mut start = MIB / SECTOR;
    PARTITIONS
        .iter()
        .map(|&(_, mib)| {
            let p = (start, mib * MIB / SECTOR);
            start += p.1;
            p
        })
        .collect()
}

/// A marker unique to partition `index`, written at its first and last sector.
fn marker(index: usize) -> Vec<u8> {
    let mut m = format!("cairn grow test marker of partition {}", index + 1).into_bytes();
    m.resize(SECTOR as usize, 0xA5);
    m
}

/// A sparse image with the Cairn layout and markers in every partition.
fn image(dir: &Path) -> PathBuf {
    let path = dir.join("disk.img");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(IMAGE_SIZE)
        .unwrap();
    let mut script = "label: gpt\nunit: sectors\nfirst-lba: 2048\nsector-size: 512\n\n".to_string();
    for ((name, _), (start, size)) in PARTITIONS.iter().zip(layout()) {
        let kind = if *name == "esp" { TYPE_ESP } else { TYPE_LINUX };
        script.push_str(&format!(
            "start={start}, size={size}, type={kind}, name=\"{name}\"\n"
        ));
    }
    let mut child = Command::new("sfdisk")
        .args(["--no-reread", "--no-tell-kernel", "--wipe=never", "--quiet"])
        .arg(&path)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "sfdisk failed");
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    for (i, (start, size)) in layout().into_iter().enumerate() {
        file.write_all_at(&marker(i), start * SECTOR).unwrap();
        file.write_all_at(&marker(i), (start + size - 1) * SECTOR)
            .unwrap();
    }
    path
}

fn extend(path: &Path, by: u64) {
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let len = file.metadata().unwrap().len();
    file.set_len(len + by).unwrap();
}

fn sector(path: &Path, lba: u64) -> Vec<u8> {
    let mut buf = vec![0u8; SECTOR as usize];
    std::fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut buf, lba * SECTOR)
        .unwrap();
    buf
}

fn sfdisk_json(path: &Path) -> serde_json::Value {
    let out = Command::new("sfdisk")
        .arg("--json")
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["partitiontable"].clone()
}

/// `sfdisk --verify` passes without warnings (e.g. no PMBR size mismatch, no misplaced backup).
fn assert_verifies(path: &Path) {
    let out = Command::new("sfdisk")
        .arg("--verify")
        .arg(path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "sfdisk --verify failed: {text}");
    assert!(text.contains("No errors detected"), "{text}");
    let lower = text.to_lowercase();
    for bad in [
        "warning",
        "mismatch",
        "corrupt",
        "not at the end",
        "invalid",
    ] {
        assert!(!lower.contains(bad), "sfdisk --verify says {bad:?}: {text}");
    }
}

fn assert_markers_intact(path: &Path) {
    for (i, (start, size)) in layout().into_iter().enumerate() {
        assert_eq!(
            sector(path, start),
            marker(i),
            "first sector of partition {}",
            i + 1
        );
        if i < 3 {
            assert_eq!(
                sector(path, start + size - 1),
                marker(i),
                "last sector of partition {}",
                i + 1
            );
        }
    }
}

#[test]
fn grows_the_data_partition_to_the_aligned_end_of_the_disk() {
    if !require_tool("sfdisk") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = image(dir.path());
    assert_verifies(&path);
    let before = sfdisk_json(&path);
    extend(&path, 64 * MIB);

    let outcome = grow_last_partition(&path, 4).unwrap();
    let sectors = (IMAGE_SIZE + 64 * MIB) / SECTOR;
    let (data_start, data_size) = layout()[3];
    // Backup entries take 32 sectors: last usable is sectors - 34; the end is 1 MiB aligned.
    let aligned_end = (sectors - 33) / 2048 * 2048;
    assert_eq!(
        outcome,
        GrowOutcome::Grown {
            old_sectors: data_size,
            new_sectors: aligned_end - data_start
        }
    );
    assert_eq!(aligned_end, (IMAGE_SIZE + 63 * MIB) / SECTOR);

    assert_verifies(&path);
    let after = sfdisk_json(&path);
    assert_eq!(after["lastlba"], sectors - 34, "{after}");
    let parts = after["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 4, "{after}");
    assert_eq!(parts[3]["start"], data_start, "{after}");
    assert_eq!(parts[3]["size"], aligned_end - data_start, "{after}");
    assert_eq!(parts[3]["name"], "data", "{after}");
    for (a, b) in parts[..3]
        .iter()
        .zip(before["partitions"].as_array().unwrap())
    {
        for key in ["start", "size", "type", "uuid", "name"] {
            assert_eq!(a[key], b[key], "{key} of {a} changed");
        }
    }
    assert_eq!(parts[3]["uuid"], before["partitions"][3]["uuid"]);
    assert_eq!(after["id"], before["id"]);
    assert_markers_intact(&path);

    // The backup header is at the last sector and points back at LBA 1; the old one is gone.
    let backup = sector(&path, sectors - 1);
    assert_eq!(&backup[..8], b"EFI PART");
    assert_eq!(
        u64::from_le_bytes(backup[24..32].try_into().unwrap()),
        sectors - 1
    );
    assert_eq!(u64::from_le_bytes(backup[32..40].try_into().unwrap()), 1);
    assert_eq!(sector(&path, IMAGE_SIZE / SECTOR - 1), vec![0u8; 512]);

    // Second call: nothing to do, not a byte written.
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(
        grow_last_partition(&path, 4).unwrap(),
        GrowOutcome::AlreadyFull
    );
    assert!(
        std::fs::read(&path).unwrap() == bytes,
        "AlreadyFull changed the file"
    );
}

#[test]
fn a_fresh_image_already_fills_its_disk() {
    if !require_tool("sfdisk") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = image(dir.path());
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(
        grow_last_partition(&path, 4).unwrap(),
        GrowOutcome::AlreadyFull
    );
    assert!(std::fs::read(&path).unwrap() == bytes);
}

#[test]
fn a_disk_grown_by_less_than_the_backup_gpt_only_moves_the_backup() {
    if !require_tool("sfdisk") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = image(dir.path());
    // 16 sectors more: the backup GPT (33 sectors) still needs the partition's last MiB.
    extend(&path, 16 * SECTOR);
    let size = layout()[3].1;
    assert_eq!(
        grow_last_partition(&path, 4).unwrap(),
        GrowOutcome::Grown {
            old_sectors: size,
            new_sectors: size
        }
    );
    assert_verifies(&path);
    assert_markers_intact(&path);
    assert_eq!(
        grow_last_partition(&path, 4).unwrap(),
        GrowOutcome::AlreadyFull
    );
}

/// `grow_last_partition` fails with an error matching `check` and leaves the file unchanged.
fn assert_fails_unchanged(path: &Path, number: u32, check: impl Fn(&GrowError) -> bool) -> String {
    let bytes = std::fs::read(path).unwrap();
    let err = grow_last_partition(path, number).unwrap_err();
    assert!(check(&err), "unexpected error: {err:?}");
    assert!(
        std::fs::read(path).unwrap() == bytes,
        "a failed grow changed the file"
    );
    err.to_string()
}

#[test]
fn a_corrupt_header_or_entry_array_fails_closed() {
    if !require_tool("sfdisk") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = image(dir.path());
    extend(&path, 4 * MIB);
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();

    // One bit of the disk GUID in the header.
    let mut header = sector(&path, 1);
    header[56] ^= 1;
    file.write_all_at(&header, SECTOR).unwrap();
    let text = assert_fails_unchanged(&path, 4, |e| {
        matches!(e, GrowError::Crc { part: "header", .. })
    });
    assert!(
        text.contains("CRC32") && text.contains("nothing was written"),
        "{text}"
    );
    header[56] ^= 1;
    file.write_all_at(&header, SECTOR).unwrap();

    // One byte of root-a's name in the entry array.
    let mut entries = sector(&path, 2);
    entries[128 + 56] ^= 1;
    file.write_all_at(&entries, 2 * SECTOR).unwrap();
    let text = assert_fails_unchanged(&path, 4, |e| {
        matches!(
            e,
            GrowError::Crc {
                part: "partition entries",
                ..
            }
        )
    });
    assert!(text.contains("corrupt"), "{text}");
    entries[128 + 56] ^= 1;
    file.write_all_at(&entries, 2 * SECTOR).unwrap();

    // No signature at all.
    file.write_all_at(&[0u8; 512], SECTOR).unwrap();
    let text = assert_fails_unchanged(&path, 4, |e| matches!(e, GrowError::NoGpt { .. }));
    assert!(text.contains("no GPT"), "{text}");
}

#[test]
fn only_the_last_used_partition_can_grow() {
    if !require_tool("sfdisk") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = image(dir.path());
    extend(&path, 4 * MIB);
    let text = assert_fails_unchanged(&path, 3, |e| {
        matches!(
            e,
            GrowError::NotLast {
                number: 3,
                other: 4,
                ..
            }
        )
    });
    assert!(text.contains("not the last one"), "{text}");
    assert_fails_unchanged(&path, 5, |e| {
        matches!(
            e,
            GrowError::NoSuchPartition {
                state: "unused",
                ..
            }
        )
    });
    assert_fails_unchanged(&path, 0, |e| {
        matches!(
            e,
            GrowError::NoSuchPartition {
                state: "beyond the table",
                ..
            }
        )
    });
    assert_fails_unchanged(&path, 129, |e| {
        matches!(e, GrowError::NoSuchPartition { .. })
    });
}

#[test]
fn a_disk_smaller_than_the_image_is_refused() {
    if !require_tool("sfdisk") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = image(dir.path());
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(IMAGE_SIZE - 2 * MIB)
        .unwrap();
    let text = assert_fails_unchanged(&path, 4, |e| matches!(e, GrowError::DiskTooSmall { .. }));
    assert!(text.contains("larger disk"), "{text}");
}

#[test]
fn a_missing_disk_is_an_open_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = grow_last_partition(&dir.path().join("nope.img"), 4).unwrap_err();
    assert!(matches!(err, GrowError::Open { .. }), "{err:?}");
}

/// Detaches the loop device on drop.
struct LoopDevice(String);

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

#[test]
#[ignore = "attaches a loop device (root, losetup, partx): cargo test -p cairn-disk --test grow -- --ignored"]
fn grows_a_loop_device_partition_and_tells_the_kernel() {
    if !require_tool("sfdisk") || !require_tool("losetup") || !require_tool("partx") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = image(dir.path());
    extend(&path, 64 * MIB);
    let out = Command::new("losetup")
        .args(["--find", "--show", "--partscan"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let device = LoopDevice(String::from_utf8(out.stdout).unwrap().trim().to_string());
    let name = device.0.trim_start_matches("/dev/");
    let part = format!("/dev/{name}p4");
    let size_file = format!("/sys/class/block/{name}p4/size");
    for _ in 0..20 {
        if Path::new(&part).exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // Some kernels (VMs without udev) attach without scanning: add the partitions by hand.
    if !Path::new(&part).exists() {
        assert!(Command::new("partx")
            .arg("-a")
            .arg(&device.0)
            .status()
            .unwrap()
            .success());
    }
    let kernel_size = || {
        std::fs::read_to_string(&size_file)
            .unwrap()
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    assert_eq!(kernel_size(), layout()[3].1);

    let outcome = cairn_disk::grow_data_partition(Path::new(&part)).unwrap();
    let GrowOutcome::Grown { new_sectors, .. } = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(kernel_size(), new_sectors);
    assert_eq!(
        cairn_disk::grow_data_partition(Path::new(&part)).unwrap(),
        GrowOutcome::AlreadyFull
    );
    drop(device);
    assert_verifies(&path);
    assert_markers_intact(&path);
}
