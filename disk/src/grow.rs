//! Growing the data partition (GPT partition 4, the last one) to the end of the disk on first
//! boot, before it is LUKS-formatted: the disk image is smaller than the device's disk.
//!
//! The device image carries no sfdisk or growpart, so the GPT is rewritten here: the primary
//! table (512-byte sectors, header at LBA 1) is read and its CRC32s verified (a bad table is
//! never written), the backup table (entries + header) moves to the real end of the disk, the
//! last usable LBA follows it, and the partition's last LBA becomes the new last usable LBA
//! aligned down to 1 MiB. The backup is written and synced before the primary, so a crash
//! leaves either the old or the new table valid. The protective MBR's size is corrected too.
//!
//! [`grow_data_partition`] then tells the running kernel with `partx -u` (util-linux), which
//! works while root on partition 2 is mounted. Everything blocks: from async code use
//! `spawn_blocking`.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::tool::{ToolCommand, ToolError};

/// GPT sector size (the only one Cairn images use).
const SECTOR: u64 = 512;
/// Partitions end on 1 MiB boundaries.
const ALIGN_SECTORS: u64 = 2048;
/// `EFI PART`.
const SIGNATURE: &[u8; 8] = b"EFI PART";
/// The largest partition entry array accepted (the usual one is 16 KiB).
const MAX_ENTRIES_BYTES: u64 = 1024 * 1024;
/// How long `partx -u` may take.
const PARTX_TIMEOUT: Duration = Duration::from_secs(60);

/// What [`grow_last_partition`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrowOutcome {
    /// The partition already ends at the (1 MiB aligned) end of the disk and the backup GPT is
    /// at the last sector: nothing was written.
    AlreadyFull,
    /// The partition table was rewritten. `new_sectors` equals `old_sectors` when the disk grew
    /// by less than 1 MiB and only the backup GPT moved to the end.
    Grown {
        /// Partition size before, in 512-byte sectors.
        old_sectors: u64,
        /// Partition size after, in 512-byte sectors.
        new_sectors: u64,
    },
}

/// A failure to grow the data partition. Unless a variant says otherwise, nothing was written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GrowError {
    /// The disk could not be opened.
    #[error("cannot open {disk} read-write to grow its last partition: {source}; check it exists and run as root")]
    Open {
        /// The disk.
        disk: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// Reading, writing or syncing the disk failed.
    #[error("cannot {what} on {disk}: {source}; check the disk (dmesg) and retry (the backup GPT is always written before the primary, so the table stays valid)")]
    Io {
        /// The disk.
        disk: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// No GPT signature at LBA 1.
    #[error("{disk} has no GPT (no `EFI PART` signature at LBA 1 with 512-byte sectors); it was not written from a Cairn image: reflash the image")]
    NoGpt {
        /// The disk.
        disk: PathBuf,
    },

    /// A header field is out of range.
    #[error("the primary GPT header of {disk} is invalid: {reason}; nothing was written: reflash the image or repair the table (gdisk/sfdisk) on another machine")]
    BadHeader {
        /// The disk.
        disk: PathBuf,
        /// Which field and why.
        reason: String,
    },

    /// A CRC32 in the primary header does not match.
    #[error("the primary GPT {part} of {disk} fails its CRC32 (stored {stored:#010x}, computed {computed:#010x}): the table is corrupt and nothing was written; reflash the image or repair the table from its backup (gdisk/sfdisk) on another machine")]
    Crc {
        /// The disk.
        disk: PathBuf,
        /// `header` or `partition entries`.
        part: &'static str,
        /// The CRC32 in the header.
        stored: u32,
        /// The CRC32 of the bytes.
        computed: u32,
    },

    /// The partition number does not name a used entry.
    #[error("{disk} has no partition {number} (the GPT has {entries} entries, that one is {state}); check the partition number (the data partition is 4)")]
    NoSuchPartition {
        /// The disk.
        disk: PathBuf,
        /// The partition number asked for.
        number: u32,
        /// Entries in the table.
        entries: u32,
        /// `beyond the table` or `unused`.
        state: &'static str,
    },

    /// Another partition ends after the one to grow.
    #[error("partition {number} of {disk} is not the last one: partition {other} ends at LBA {other_last_lba}, after its start; only the last partition can grow (the data partition must be last)")]
    NotLast {
        /// The disk.
        disk: PathBuf,
        /// The partition to grow.
        number: u32,
        /// The partition in the way.
        other: u32,
        /// Its last LBA.
        other_last_lba: u64,
    },

    /// The disk is smaller than the partition table.
    #[error("partition {number} of {disk} ends at LBA {last_lba} but the disk ({disk_sectors} sectors) only leaves room up to LBA {last_usable}: the disk is smaller than the image; use a larger disk")]
    DiskTooSmall {
        /// The disk.
        disk: PathBuf,
        /// The partition.
        number: u32,
        /// Its last LBA.
        last_lba: u64,
        /// The last usable LBA with the backup GPT at the end of the disk.
        last_usable: u64,
        /// The disk size in sectors.
        disk_sectors: u64,
    },

    /// The partition device path does not resolve.
    #[error("cannot resolve the data partition {path}: {source}; check the partition label (`data`) and that udev has created /dev/disk/by-partlabel")]
    Resolve {
        /// The path given.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// The path is not a partition of a disk the kernel knows.
    #[error("{device} is not a partition block device: {reason}; pass the data partition (e.g. /dev/disk/by-partlabel/data)")]
    NotAPartition {
        /// The resolved device.
        device: PathBuf,
        /// What sysfs said.
        reason: String,
    },

    /// The disk does not use 512-byte logical sectors.
    #[error("{disk} has {size}-byte logical sectors; Cairn images use 512-byte sectors, so this disk cannot hold the image: use a 512-byte-sector disk")]
    SectorSize {
        /// The disk.
        disk: PathBuf,
        /// Its logical block size.
        size: u64,
    },

    /// The table was rewritten but the kernel was not told.
    #[error("partition {number} of {disk} was grown on disk but the kernel was not told ({source}); reboot so the kernel rereads the partition table, then the data partition has its full size")]
    Partx {
        /// The disk.
        disk: PathBuf,
        /// The partition.
        number: u32,
        /// The partx failure.
        #[source]
        source: ToolError,
    },
}

/// Grow GPT partition `partition_number` (1-based) of `disk` (a disk image file or a whole-disk
/// block device) to the end of the disk.
///
/// Reads and verifies the primary GPT, requires that no other partition ends after this one's
/// start, moves the backup GPT to the last sectors of the disk, sets the last usable LBA to just
/// before it and extends the partition to that LBA aligned down to 1 MiB (never shrinking it).
/// The backup is written and synced first, then the primary and the protective MBR; a stale
/// backup header left inside the disk is zeroed last. Nothing is written when the table is
/// already at the end ([`GrowOutcome::AlreadyFull`]). The kernel is not told: see
/// [`grow_data_partition`].
///
/// # Errors
/// [`GrowError::Open`], [`GrowError::Io`]; a bad table ([`GrowError::NoGpt`],
/// [`GrowError::BadHeader`], [`GrowError::Crc`]), a bad partition
/// ([`GrowError::NoSuchPartition`], [`GrowError::NotLast`]) or [`GrowError::DiskTooSmall`], all
/// without writing.
pub fn grow_last_partition(disk: &Path, partition_number: u32) -> Result<GrowOutcome, GrowError> {
    let _span = tracing::info_span!(
        "disk.grow",
        disk = %disk.display(),
        partition = partition_number
    )
    .entered();
    let io = |what| {
        move |source| GrowError::Io {
            disk: disk.to_path_buf(),
            what,
            source,
        }
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .map_err(|source| GrowError::Open {
            disk: disk.to_path_buf(),
            source,
        })?;
    let disk_sectors = file.seek(SeekFrom::End(0)).map_err(io("find the size"))? / SECTOR;
    let gpt = Gpt::read(&file, disk, disk_sectors)?;
    let plan = gpt.plan(disk, partition_number, disk_sectors)?;
    if plan.is_noop(&gpt) {
        tracing::info!(
            sectors = plan.old_last - plan.first + 1,
            "partition already fills the disk"
        );
        return Ok(GrowOutcome::AlreadyFull);
    }
    let tables = gpt.rewrite(&plan);

    write_at(&file, &tables.entries, plan.backup_entries_lba)
        .map_err(io("write the backup GPT entries"))?;
    write_at(&file, &tables.backup_header, plan.backup_lba)
        .map_err(io("write the backup GPT header"))?;
    file.sync_all().map_err(io("sync the backup GPT"))?;
    write_at(&file, &tables.entries, gpt.entries_lba)
        .map_err(io("write the primary GPT entries"))?;
    if let Some(mbr) = protective_mbr(&file, disk_sectors).map_err(io("read the protective MBR"))? {
        write_at(&file, &mbr, 0).map_err(io("write the protective MBR"))?;
    }
    write_at(&file, &tables.primary_header, 1).map_err(io("write the primary GPT header"))?;
    file.sync_all().map_err(io("sync the primary GPT"))?;
    // The old backup header now lies in the grown partition (or the gap before the new backup):
    // remove its signature so no tool mistakes it for a table. It was outside every partition,
    // so no data is lost.
    if gpt.alternate_lba != plan.backup_lba
        && gpt.alternate_lba > gpt.last_usable
        && gpt.alternate_lba < disk_sectors
    {
        let mut old = [0u8; SECTOR as usize];
        file.read_exact_at(&mut old, gpt.alternate_lba * SECTOR)
            .map_err(io("read the old backup GPT header"))?;
        if old.starts_with(SIGNATURE) {
            write_at(&file, &[0u8; SECTOR as usize], gpt.alternate_lba)
                .map_err(io("erase the old backup GPT header"))?;
            file.sync_all()
                .map_err(io("sync the old backup GPT header"))?;
        }
    }
    let old_sectors = plan.old_last - plan.first + 1;
    let new_sectors = plan.new_last - plan.first + 1;
    tracing::info!(old_sectors, new_sectors, "partition grown");
    Ok(GrowOutcome::Grown {
        old_sectors,
        new_sectors,
    })
}

/// Grow the data partition `partition` (a partition block device such as
/// `/dev/disk/by-partlabel/data`) to the end of its disk and tell the running kernel.
///
/// Resolves the device, finds its disk and partition number in sysfs
/// (`/sys/class/block/<name>/partition` and the parent directory), runs
/// [`grow_last_partition`] on `/dev/<disk>` and, when the table changed, `partx -u --nr N
/// /dev/<disk>` so the new size is visible while other partitions (root) stay in use.
///
/// # Errors
/// [`GrowError::Resolve`], [`GrowError::NotAPartition`], [`GrowError::SectorSize`], the errors
/// of [`grow_last_partition`], and [`GrowError::Partx`] when the table was rewritten but the
/// kernel was not told (a reboot fixes that).
pub fn grow_data_partition(partition: &Path) -> Result<GrowOutcome, GrowError> {
    let located = locate_partition(Path::new("/sys/class/block"), Path::new("/dev"), partition)?;
    let outcome = grow_last_partition(&located.disk, located.number)?;
    if outcome != GrowOutcome::AlreadyFull {
        partx_update(&located.disk, located.number)
            .run()
            .map_err(|source| GrowError::Partx {
                disk: located.disk.clone(),
                number: located.number,
                source,
            })?;
    }
    Ok(outcome)
}

/// `partx -u --nr N disk`: tell the kernel partition N's new size (BLKPG, works while other
/// partitions of the disk are in use).
fn partx_update(disk: &Path, number: u32) -> ToolCommand {
    ToolCommand::new("partx", "update partition size")
        .arg("-u")
        .arg("--nr")
        .arg(number.to_string())
        .arg(disk)
        .timeout(PARTX_TIMEOUT)
}

/// A partition's disk device and number.
#[derive(Debug, PartialEq, Eq)]
struct LocatedPartition {
    disk: PathBuf,
    number: u32,
}

/// Find `partition`'s disk (`dev/<parent>`) and number through `sys_class_block`.
fn locate_partition(
    sys_class_block: &Path,
    dev: &Path,
    partition: &Path,
) -> Result<LocatedPartition, GrowError> {
    let device = partition
        .canonicalize()
        .map_err(|source| GrowError::Resolve {
            path: partition.to_path_buf(),
            source,
        })?;
    let not_a_partition = |reason: String| GrowError::NotAPartition {
        device: device.clone(),
        reason,
    };
    let name = device
        .file_name()
        .ok_or_else(|| not_a_partition("it has no device name".into()))?
        .to_string_lossy()
        .into_owned();
    let class_entry = sys_class_block.join(&name);
    let number_file = class_entry.join("partition");
    let number = std::fs::read_to_string(&number_file)
        .map_err(|e| not_a_partition(format!("cannot read {}: {e}", number_file.display())))?;
    let number = number
        .trim()
        .parse::<u32>()
        .map_err(|e| not_a_partition(format!("{} holds {number:?}: {e}", number_file.display())))?;
    let sys_device = class_entry
        .canonicalize()
        .map_err(|e| not_a_partition(format!("cannot resolve {}: {e}", class_entry.display())))?;
    let parent = sys_device
        .parent()
        .and_then(|p| p.file_name())
        .ok_or_else(|| not_a_partition(format!("{} has no parent disk", sys_device.display())))?
        .to_string_lossy()
        .into_owned();
    let block_size_file = sys_class_block
        .join(&parent)
        .join("queue/logical_block_size");
    if let Ok(size) = std::fs::read_to_string(&block_size_file) {
        if let Ok(size) = size.trim().parse::<u64>() {
            if size != SECTOR {
                return Err(GrowError::SectorSize {
                    disk: dev.join(&parent),
                    size,
                });
            }
        }
    }
    Ok(LocatedPartition {
        disk: dev.join(parent),
        number,
    })
}

/// The primary GPT as read and verified.
#[derive(Debug)]
struct Gpt {
    /// LBA 1, whole sector.
    header: [u8; SECTOR as usize],
    header_size: usize,
    alternate_lba: u64,
    first_usable: u64,
    last_usable: u64,
    entries_lba: u64,
    entry_count: u32,
    entry_size: usize,
    entries: Vec<u8>,
}

/// What the rewritten table looks like.
#[derive(Debug)]
struct Plan {
    /// Offset of the entry in the array.
    entry_offset: usize,
    first: u64,
    old_last: u64,
    new_last: u64,
    last_usable: u64,
    backup_lba: u64,
    backup_entries_lba: u64,
}

impl Plan {
    fn is_noop(&self, gpt: &Gpt) -> bool {
        self.new_last == self.old_last
            && gpt.alternate_lba == self.backup_lba
            && gpt.last_usable == self.last_usable
    }
}

/// The bytes to write.
struct Tables {
    entries: Vec<u8>,
    primary_header: [u8; SECTOR as usize],
    backup_header: [u8; SECTOR as usize],
}

impl Gpt {
    /// Read the primary header and entries of `file` and verify them.
    fn read(file: &File, disk: &Path, disk_sectors: u64) -> Result<Gpt, GrowError> {
        let io = |what| {
            move |source| GrowError::Io {
                disk: disk.to_path_buf(),
                what,
                source,
            }
        };
        if disk_sectors < 3 {
            return Err(GrowError::NoGpt {
                disk: disk.to_path_buf(),
            });
        }
        let mut header = [0u8; SECTOR as usize];
        file.read_exact_at(&mut header, SECTOR)
            .map_err(io("read the primary GPT header"))?;
        let mut gpt = Gpt::parse_header(header, disk, disk_sectors)?;
        let len = gpt.entry_count as usize * gpt.entry_size;
        let mut entries = vec![0u8; len.div_ceil(SECTOR as usize) * SECTOR as usize];
        file.read_exact_at(&mut entries, gpt.entries_lba * SECTOR)
            .map_err(io("read the primary GPT entries"))?;
        let stored = le32(&gpt.header, 88);
        let computed = crc32(&entries[..len]);
        if stored != computed {
            return Err(GrowError::Crc {
                disk: disk.to_path_buf(),
                part: "partition entries",
                stored,
                computed,
            });
        }
        gpt.entries = entries;
        Ok(gpt)
    }

    /// Check the header's signature, CRC and fields.
    fn parse_header(
        header: [u8; SECTOR as usize],
        disk: &Path,
        disk_sectors: u64,
    ) -> Result<Gpt, GrowError> {
        let bad = |reason: String| GrowError::BadHeader {
            disk: disk.to_path_buf(),
            reason,
        };
        if !header.starts_with(SIGNATURE) {
            return Err(GrowError::NoGpt {
                disk: disk.to_path_buf(),
            });
        }
        let header_size = le32(&header, 12) as usize;
        if !(92..=SECTOR as usize).contains(&header_size) {
            return Err(bad(format!("header size {header_size} is not 92..=512")));
        }
        let stored = le32(&header, 16);
        let mut zeroed = header;
        zeroed[16..20].fill(0);
        let computed = crc32(&zeroed[..header_size]);
        if stored != computed {
            return Err(GrowError::Crc {
                disk: disk.to_path_buf(),
                part: "header",
                stored,
                computed,
            });
        }
        let (my_lba, alternate_lba) = (le64(&header, 24), le64(&header, 32));
        let (first_usable, last_usable) = (le64(&header, 40), le64(&header, 48));
        let entries_lba = le64(&header, 72);
        let (entry_count, entry_size) = (le32(&header, 80), le32(&header, 84) as usize);
        if my_lba != 1 {
            return Err(bad(format!("it says it is at LBA {my_lba}, not 1")));
        }
        if entry_size < 128 || !entry_size.is_power_of_two() {
            return Err(bad(format!(
                "partition entry size {entry_size} is not 128 times a power of two"
            )));
        }
        let entries_bytes = u64::from(entry_count) * entry_size as u64;
        if entry_count == 0 || entries_bytes > MAX_ENTRIES_BYTES {
            return Err(bad(format!(
                "{entry_count} partition entries of {entry_size} bytes (at most {MAX_ENTRIES_BYTES} bytes are accepted)"
            )));
        }
        let entry_sectors = entries_bytes.div_ceil(SECTOR);
        if entries_lba < 2 || entries_lba + entry_sectors > first_usable {
            return Err(bad(format!(
                "the partition entries (LBA {entries_lba}, {entry_sectors} sectors) are not between the header and the first usable LBA {first_usable}"
            )));
        }
        if first_usable > last_usable || entries_lba + entry_sectors > disk_sectors {
            return Err(bad(format!(
                "usable LBAs {first_usable}..={last_usable} do not fit a disk of {disk_sectors} sectors"
            )));
        }
        Ok(Gpt {
            header,
            header_size,
            alternate_lba,
            first_usable,
            last_usable,
            entries_lba,
            entry_count,
            entry_size,
            entries: Vec::new(),
        })
    }

    fn entry_sectors(&self) -> u64 {
        (u64::from(self.entry_count) * self.entry_size as u64).div_ceil(SECTOR)
    }

    /// `(type is non-zero, first LBA, last LBA)` of entry `index` (0-based).
    fn entry(&self, index: usize) -> (bool, u64, u64) {
        let e = &self.entries[index * self.entry_size..][..self.entry_size];
        (e[..16].iter().any(|&b| b != 0), le64(e, 32), le64(e, 40))
    }

    /// Where partition `number` goes on a disk of `disk_sectors`.
    fn plan(&self, disk: &Path, number: u32, disk_sectors: u64) -> Result<Plan, GrowError> {
        let no_such = |state| GrowError::NoSuchPartition {
            disk: disk.to_path_buf(),
            number,
            entries: self.entry_count,
            state,
        };
        if number == 0 || number > self.entry_count {
            return Err(no_such("beyond the table"));
        }
        let index = number as usize - 1;
        let (used, first, old_last) = self.entry(index);
        if !used {
            return Err(no_such("unused"));
        }
        if first > old_last || first < self.first_usable {
            return Err(GrowError::BadHeader {
                disk: disk.to_path_buf(),
                reason: format!(
                    "partition {number} spans LBAs {first}..={old_last}, outside the usable area"
                ),
            });
        }
        for other in (0..self.entry_count as usize).filter(|&i| i != index) {
            let (used, _, other_last) = self.entry(other);
            if used && other_last >= first {
                return Err(GrowError::NotLast {
                    disk: disk.to_path_buf(),
                    number,
                    other: other as u32 + 1,
                    other_last_lba: other_last,
                });
            }
        }
        let backup_lba = disk_sectors - 1;
        let backup_entries_lba = backup_lba.saturating_sub(self.entry_sectors());
        let last_usable = backup_entries_lba.saturating_sub(1);
        if old_last > last_usable || last_usable < self.first_usable {
            return Err(GrowError::DiskTooSmall {
                disk: disk.to_path_buf(),
                number,
                last_lba: old_last,
                last_usable,
                disk_sectors,
            });
        }
        let aligned_end = (last_usable + 1) / ALIGN_SECTORS * ALIGN_SECTORS;
        let new_last = old_last.max(aligned_end.saturating_sub(1));
        Ok(Plan {
            entry_offset: index * self.entry_size,
            first,
            old_last,
            new_last,
            last_usable,
            backup_lba,
            backup_entries_lba,
        })
    }

    /// The entries and both headers after `plan`, CRCs recomputed.
    fn rewrite(&self, plan: &Plan) -> Tables {
        let mut entries = self.entries.clone();
        entries[plan.entry_offset + 40..][..8].copy_from_slice(&plan.new_last.to_le_bytes());
        let len = self.entry_count as usize * self.entry_size;
        let entries_crc = crc32(&entries[..len]);
        let header = |my_lba: u64, alternate_lba: u64, entries_lba: u64| {
            let mut h = self.header;
            h[24..32].copy_from_slice(&my_lba.to_le_bytes());
            h[32..40].copy_from_slice(&alternate_lba.to_le_bytes());
            h[48..56].copy_from_slice(&plan.last_usable.to_le_bytes());
            h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
            h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
            h[16..20].fill(0);
            let crc = crc32(&h[..self.header_size]);
            h[16..20].copy_from_slice(&crc.to_le_bytes());
            h
        };
        Tables {
            primary_header: header(1, plan.backup_lba, self.entries_lba),
            backup_header: header(plan.backup_lba, 1, plan.backup_entries_lba),
            entries,
        }
    }
}

/// The protective MBR (LBA 0) with its size corrected for a disk of `disk_sectors`, or `None`
/// when it needs no change or is not a plain protective MBR (hybrid MBRs are left alone).
fn protective_mbr(file: &File, disk_sectors: u64) -> std::io::Result<Option<[u8; 512]>> {
    let mut mbr = [0u8; 512];
    file.read_exact_at(&mut mbr, 0)?;
    if mbr[510..] != [0x55, 0xAA] {
        return Ok(None);
    }
    let record = |i: usize| 446 + 16 * i;
    let used: Vec<usize> = (0..4).filter(|&i| mbr[record(i) + 4] != 0).collect();
    let [only] = used[..] else { return Ok(None) };
    if mbr[record(only) + 4] != 0xEE || le32(&mbr, record(only) + 8) != 1 {
        return Ok(None);
    }
    let size = u32::try_from(disk_sectors - 1).unwrap_or(u32::MAX);
    if le32(&mbr, record(only) + 12) == size {
        return Ok(None);
    }
    mbr[record(only) + 12..][..4].copy_from_slice(&size.to_le_bytes());
    Ok(Some(mbr))
}

fn write_at(file: &File, bytes: &[u8], lba: u64) -> std::io::Result<()> {
    file.write_all_at(bytes, lba * SECTOR)
}

fn le32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn le64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320), as GPT uses; bitwise, no table.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_known_vectors() {
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"a"), 0xE8B7_BE43);
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(
            crc32(b"The quick brown fox jumps over the lazy dog"),
            0x414F_A339
        );
        assert_eq!(crc32(&[0u8; 32]), 0x190A_55AD);
    }

    #[test]
    fn partx_tells_the_kernel_about_one_partition() {
        let argv = partx_update(Path::new("/dev/vda"), 4).argv();
        assert_eq!(argv, ["partx", "-u", "--nr", "4", "/dev/vda"]);
    }

    /// A fake sysfs: `class/block/<name>` links into `devices/.../<disk>/<name>`.
    fn fake_sysfs(root: &Path, disk: &str, part: &str, number: &str, block_size: &str) {
        let disk_dir = root.join("devices/virtual/block").join(disk);
        std::fs::create_dir_all(disk_dir.join(part)).unwrap();
        std::fs::create_dir_all(disk_dir.join("queue")).unwrap();
        std::fs::write(disk_dir.join(part).join("partition"), number).unwrap();
        std::fs::write(disk_dir.join("queue/logical_block_size"), block_size).unwrap();
        let class = root.join("class/block");
        std::fs::create_dir_all(&class).unwrap();
        std::os::unix::fs::symlink(disk_dir.join(part), class.join(part)).unwrap();
        std::os::unix::fs::symlink(&disk_dir, class.join(disk)).unwrap();
        let dev = root.join("dev");
        std::fs::create_dir_all(dev.join("disk/by-partlabel")).unwrap();
        std::fs::write(dev.join(part), "").unwrap();
        std::os::unix::fs::symlink(format!("../../{part}"), dev.join("disk/by-partlabel/data"))
            .unwrap();
    }

    #[test]
    fn locates_the_disk_and_number_of_a_partition_label() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fake_sysfs(root, "nvme0n1", "nvme0n1p4", "4\n", "512\n");
        let located = locate_partition(
            &root.join("class/block"),
            Path::new("/dev"),
            &root.join("dev/disk/by-partlabel/data"),
        )
        .unwrap();
        assert_eq!(
            located,
            LocatedPartition {
                disk: PathBuf::from("/dev/nvme0n1"),
                number: 4
            }
        );
    }

    #[test]
    fn refuses_a_whole_disk_a_missing_path_and_4k_sectors() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fake_sysfs(root, "vda", "vda4", "4\n", "4096\n");
        let class = root.join("class/block");
        let err = locate_partition(&class, Path::new("/dev"), &root.join("dev/vda4")).unwrap_err();
        assert!(
            matches!(err, GrowError::SectorSize { size: 4096, .. }),
            "{err}"
        );

        std::fs::write(root.join("dev/vda"), "").unwrap();
        let err = locate_partition(&class, Path::new("/dev"), &root.join("dev/vda")).unwrap_err();
        assert!(matches!(err, GrowError::NotAPartition { .. }), "{err}");
        assert!(err.to_string().contains("not a partition"), "{err}");

        let err =
            locate_partition(&class, Path::new("/dev"), &root.join("dev/nothing")).unwrap_err();
        assert!(matches!(err, GrowError::Resolve { .. }), "{err}");
    }
}
