//! Shared by the data unlock host tests: a swtpm, a sparse LUKS device file and an opener that
//! checks keys with `cryptsetup open --test-passphrase` (no device-mapper on the host).

#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};

use cairn_disk::{disk_key_opens, DataUnlock, DiskKey, LuksError, OpenLuks};
use cairn_testsupport::{require_tool, Swtpm};

const DEVICE_SIZE: u64 = 20 * 1024 * 1024;

/// Checks the key opens keyslot 0 (no device-mapper on the host) and "opens" to the device path.
pub struct TestPassphraseOpen;

impl OpenLuks for TestPassphraseOpen {
    fn open(&self, device: &Path, key: &DiskKey, _name: &str) -> Result<PathBuf, LuksError> {
        if disk_key_opens(device, key)? {
            Ok(device.to_path_buf())
        } else {
            Err(LuksError::KeyRejected {
                device: device.to_path_buf(),
                key: "disk key",
                slot: Some(0),
            })
        }
    }
}

/// A data device file and the unlock configuration around it (sealed key in the same dir).
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub config: DataUnlock,
}

/// A fresh 20 MiB device file and a `DataUnlock` for PCRs 7,11 on `tpm`; `None` (test skipped
/// loudly) without cryptsetup, swtpm or blkid.
pub fn fixture(tpm: &Swtpm) -> Option<Fixture> {
    if !require_tool("cryptsetup") || !require_tool("swtpm") || !require_tool("blkid") {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let device = dir.path().join("data.img");
    std::fs::File::create(&device)
        .unwrap()
        .set_len(DEVICE_SIZE)
        .unwrap();
    let config = DataUnlock {
        tcti: tpm.tcti(),
        device,
        sealed_key: dir.path().join("esp-data.sealed"),
        pcrs: "7,11".parse().unwrap(),
        mapper_name: "cairn-data".to_string(),
    };
    Some(Fixture { dir, config })
}

/// swtpm (re)starts one at a time: parallel tests picking port pairs at the same moment can take
/// each other's control port.
pub static STARTING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A new swtpm (one start at a time).
pub fn start_tpm() -> Swtpm {
    let _one_at_a_time = STARTING.lock().unwrap_or_else(|e| e.into_inner());
    Swtpm::start()
}

/// A reboot: the same TPM state, PCRs reset.
pub fn restart_tpm(tpm: Swtpm) -> Swtpm {
    let _one_at_a_time = STARTING.lock().unwrap_or_else(|e| e.into_inner());
    tpm.restart()
}

/// A new swtpm, or `None` (test skipped loudly) without swtpm.
pub fn tpm() -> Option<Swtpm> {
    require_tool("swtpm").then(start_tpm)
}

/// The permission bits of `path`.
pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
