//! The EFI system partition: signed systemd-boot as the removable-media loader
//! (`EFI/BOOT/BOOTX64.EFI`), one signed UKI per slot under `EFI/cairn/`, `loader/loader.conf` and
//! one boot entry per slot with boot counting (`loader/entries/cairn-a+3-0.conf`: systemd-boot's
//! Automatic Boot Assessment). Made with `mkfs.vfat --invariant` and mtools under a frozen clock,
//! so every byte is reproducible.
//!
//! The entries are in the form the agent's RAUC bootloader backend keeps them in
//! (agent/src/boot/slots.rs): `default cairn-*` in loader.conf, and per entry `sort-key cairn`
//! and `version <generation>`. systemd-boot 252 sorts entries with no tries left last, then by
//! sort-key, then by version descending, and boots the first entry matching the default glob: the
//! slot with the higher generation boots, and once its counter runs out the other one does, with
//! no help from the running system.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use cairn_io::{FileError, PathContext};

use crate::tool::{tool, FrozenClock, NoFaketime, ToolError};

/// The ESP could not be made.
#[derive(Debug, thiserror::Error)]
pub enum EspError {
    /// mkfs.vfat or mtools failed.
    #[error(transparent)]
    Tool(#[from] ToolError),
    /// Staging the files failed.
    #[error(transparent)]
    File(#[from] FileError),
    /// A tool that must run with a frozen clock cannot.
    #[error(transparent)]
    NoFaketime(#[from] NoFaketime),
    /// The files do not fit.
    #[error("the ESP content needs {needed} MiB but partitions.esp_mib is {size}: raise it in the recipe")]
    TooSmall {
        /// MiB needed (rounded up).
        needed: u64,
        /// The configured size.
        size: u64,
    },
}

/// What goes onto the ESP.
#[derive(Debug, Clone)]
pub struct EspContents {
    /// Signed systemd-boot.
    pub bootloader: PathBuf,
    /// Signed UKIs: (slot letter, file).
    pub ukis: Vec<(char, PathBuf)>,
    /// Boot tries per slot before systemd-boot falls back.
    pub tries: u32,
    /// Menu timeout in seconds.
    pub timeout_s: u32,
    /// The slot booted by default.
    pub default_slot: char,
    /// Provisioning files (paths relative to the ESP, e.g. the enrollment token): on the disk
    /// image only, never in an update bundle.
    pub provisioning: Vec<crate::overlay::OsFile>,
}

/// The ESP path of a slot's UKI.
pub fn uki_path(slot: char) -> String {
    format!("/EFI/cairn/cairn-{slot}.efi")
}

/// loader.conf text. `default` is a glob over both slots, never one slot: systemd-boot boots
/// the first match in its sort order, where entries with no tries left come last.
pub fn loader_conf(contents: &EspContents) -> String {
    format!(
        "# Cairn: systemd-boot configuration, written by cairn-image.\n\
         # Both slots match; the entries' versions (activation generations) pick one.\n\
         default cairn-*\n\
         timeout {timeout}\n\
         editor no\n\
         auto-entries no\n\
         auto-firmware no\n\
         console-mode keep\n",
        timeout = contents.timeout_s,
    )
}

/// File name and text of a slot's boot entry, with a fresh boot counter. The default slot gets
/// generation 2, the other 1 (the agent's set-primary writes the other's + 1).
pub fn boot_entry(contents: &EspContents, slot: char) -> (String, String) {
    let name = format!("cairn-{slot}+{}-0.conf", contents.tries);
    let generation = if slot == contents.default_slot { 2 } else { 1 };
    let text = format!(
        "title Cairn (slot {upper})\nsort-key cairn\nversion {generation}\nefi {uki}\n",
        upper = slot.to_ascii_uppercase(),
        uki = uki_path(slot),
    );
    (name, text)
}

/// Stage the ESP tree under `stage` and write the FAT image `out` of `size_mib` MiB.
pub fn make_esp(
    contents: &EspContents,
    out: &Path,
    stage: &Path,
    size_mib: u64,
    volume_id: &str,
    epoch: i64,
) -> Result<(), EspError> {
    let _ = fs::remove_dir_all(stage);
    let copy = |from: &Path, to: &str| -> Result<u64, EspError> {
        let dest = stage.join(to.trim_start_matches('/'));
        fs::create_dir_all(dest.parent().expect("has parent")).at("create", &dest)?;
        Ok(fs::copy(from, &dest).at("copy", from)?)
    };
    let write = |to: &str, text: &str| -> Result<u64, EspError> {
        let dest = stage.join(to);
        fs::create_dir_all(dest.parent().expect("has parent")).at("create", &dest)?;
        fs::write(&dest, text).at("write", &dest)?;
        Ok(text.len() as u64)
    };
    let mut bytes = copy(&contents.bootloader, "EFI/BOOT/BOOTX64.EFI")?;
    bytes += copy(&contents.bootloader, "EFI/systemd/systemd-bootx64.efi")?;
    for (slot, uki) in &contents.ukis {
        bytes += copy(uki, &uki_path(*slot))?;
        let (name, text) = boot_entry(contents, *slot);
        bytes += write(&format!("loader/entries/{name}"), &text)?;
    }
    bytes += write("loader/loader.conf", &loader_conf(contents))?;
    for file in &contents.provisioning {
        let dest = stage.join(&file.path);
        fs::create_dir_all(dest.parent().expect("has parent")).at("create", &dest)?;
        fs::write(&dest, &file.contents).at("write", &dest)?;
        bytes += file.contents.len() as u64;
    }
    // FAT32 overhead (FATs, reserved sectors) stays well under 2 MiB at these sizes.
    let needed = bytes.div_ceil(1 << 20) + 2;
    if needed > size_mib {
        return Err(EspError::TooSmall {
            needed,
            size: size_mib,
        });
    }
    set_times(stage, epoch)?;

    let _ = fs::remove_file(out);
    let file = fs::File::create(out).at("create", out)?;
    file.set_len(size_mib << 20).at("set the size of", out)?;
    drop(file);
    tool("mkfs.vfat")
        .args([
            "--invariant",
            "-F",
            "32",
            "-S",
            "512",
            "-n",
            "CAIRN-ESP",
            "-i",
            volume_id,
        ])
        .arg(out)
        .run()?;
    let mut sources: Vec<PathBuf> = fs::read_dir(stage)
        .at("list", stage)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .at("list", stage)?;
    sources.sort();
    tool("mcopy")
        .frozen_clock(epoch)?
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["-s", "-m", "-Q", "-i"])
        .arg(out)
        .args(&sources)
        .arg("::/")
        .run()?;
    Ok(())
}

/// Set the modification time of everything under `dir` (and `dir`) to `epoch`.
fn set_times(dir: &Path, epoch: i64) -> Result<(), EspError> {
    let time = SystemTime::UNIX_EPOCH + Duration::from_secs(epoch.max(0) as u64);
    for entry in fs::read_dir(dir).at("list", dir)? {
        let path = entry.at("list", dir)?.path();
        if path.is_dir() {
            set_times(&path, epoch)?;
        } else {
            let f = fs::File::options()
                .write(true)
                .open(&path)
                .at("open", &path)?;
            f.set_modified(time).at("set mtime", &path)?;
        }
    }
    let f = fs::File::open(dir).at("open", dir)?;
    f.set_modified(time).at("set mtime", dir)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contents(dir: &Path) -> EspContents {
        let boot = dir.join("boot.efi");
        let uki = dir.join("uki.efi");
        fs::write(&boot, vec![1u8; 4096]).unwrap();
        fs::write(&uki, vec![2u8; 300_000]).unwrap();
        EspContents {
            bootloader: boot,
            ukis: vec![('a', uki.clone()), ('b', uki)],
            tries: 3,
            timeout_s: 0,
            default_slot: 'a',
            provisioning: vec![crate::overlay::OsFile {
                path: crate::overlay::ESP_TOKEN_PATH.into(),
                mode: 0o600,
                contents: b"cet_test".to_vec(),
            }],
        }
    }

    #[test]
    fn entries_count_boots_and_default_to_slot_a() {
        let dir = tempfile::tempdir().unwrap();
        let c = contents(dir.path());
        let (name, text) = boot_entry(&c, 'a');
        assert_eq!(name, "cairn-a+3-0.conf");
        // The exact form the agent's backend writes (agent/src/boot/slots.rs entry_text).
        assert_eq!(
            text,
            "title Cairn (slot A)\nsort-key cairn\nversion 2\nefi /EFI/cairn/cairn-a.efi\n"
        );
        let (name, text) = boot_entry(&c, 'b');
        assert_eq!(name, "cairn-b+3-0.conf");
        assert!(text.contains("version 1\n"), "{text}");
        let conf = loader_conf(&c);
        assert!(
            conf.contains("\ndefault cairn-*\n") && conf.contains("editor no"),
            "{conf}"
        );
    }

    #[test]
    fn esp_image_is_reproducible_and_holds_the_files() {
        if !["mkfs.vfat", "mcopy", "mdir"]
            .iter()
            .all(|t| crate::tool::is_installed(t))
        {
            eprintln!("SKIP: dosfstools/mtools not installed (dev/image-packages.txt)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let c = contents(dir.path());
        let mut images = Vec::new();
        for name in ["one", "two"] {
            let out = dir.path().join(format!("{name}.img"));
            make_esp(
                &c,
                &out,
                &dir.path().join(name),
                40,
                "CA1B0001",
                1_735_689_600,
            )
            .unwrap();
            images.push(fs::read(&out).unwrap());
            std::thread::sleep(Duration::from_millis(1100));
        }
        assert!(
            images[0] == images[1],
            "two ESP images from the same files differ"
        );
        let out = dir.path().join("one.img");
        let listing = tool("mdir")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(&out)
            .args(["-/", "-b", "::/"])
            .run()
            .unwrap()
            .stdout_text();
        assert!(
            listing.contains("BOOTX64.EFI")
                && listing.contains("cairn-a+3-0.conf")
                && listing.contains("enrollment-token"),
            "{listing}"
        );
        let err = make_esp(&c, &out, &dir.path().join("x"), 1, "CA1B0001", 0).unwrap_err();
        assert!(matches!(err, EspError::TooSmall { .. }));
    }
}
