//! Hardware facts the agent reports at enrollment and in every heartbeat; central matches claims
//! (serial, TPM EK hash) against them.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::config::{AgentConfig, KeyStorage};
use crate::os_release::os_release_value;
use crate::tpm_key::{ek_public_sha256, TpmKeyError};

/// DMI product serial (readable by root).
pub const DMI_SERIAL_PATH: &str = "/sys/class/dmi/id/product_serial";
/// systemd machine id, the serial of last resort.
pub const MACHINE_ID_PATH: &str = "/etc/machine-id";

/// Placeholder serials firmware vendors ship; they identify nothing.
const PLACEHOLDER_SERIALS: &[&str] = &[
    "to be filled by o.e.m.",
    "default string",
    "system serial number",
    "not specified",
    "not applicable",
    "none",
    "0",
    "0123456789",
    "123456789",
];

/// Facts could not be gathered.
#[derive(Debug, thiserror::Error)]
pub enum FactsError {
    /// No usable serial anywhere.
    #[error("no device serial: set `serial` in the agent config, or make {DMI_SERIAL_PATH} or {MACHINE_ID_PATH} readable")]
    NoSerial,
    /// The TPM endorsement key could not be read.
    #[error("cannot read the TPM endorsement key for the facts: {0}")]
    Tpm(#[source] TpmKeyError),
}

/// What the agent tells central about the device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardwareFacts {
    /// Configured serial, else DMI product serial, else machine id.
    pub serial: String,
    /// Lower-case hex SHA-256 of the TPM EK public key; empty without a TPM key.
    pub tpm_ek_sha256: String,
    /// Configured hostname, else the kernel's.
    pub hostname: String,
    /// This agent's version.
    pub agent_version: String,
    /// `PRETTY_NAME` from `/etc/os-release`.
    pub os_version: String,
    /// `tpm` or `software`.
    pub key_storage: String,
}

impl HardwareFacts {
    /// Gathers the facts for a device key kept in `storage` (blocking: reads files and, for a TPM
    /// key, the EK; use `spawn_blocking`).
    pub fn gather(config: &AgentConfig, storage: &KeyStorage) -> Result<Self, FactsError> {
        let _span = tracing::debug_span!("facts.gather").entered();
        let serial = match &config.serial {
            Some(s) => s.trim().to_string(),
            None => detect_serial(Path::new(DMI_SERIAL_PATH), Path::new(MACHINE_ID_PATH))
                .ok_or(FactsError::NoSerial)?,
        };
        let (tpm_ek_sha256, key_storage) = match storage {
            KeyStorage::Tpm { tcti } => (ek_public_sha256(tcti).map_err(FactsError::Tpm)?, "tpm"),
            KeyStorage::Software => (String::new(), "software"),
        };
        let hostname = match &config.hostname {
            Some(h) => h.trim().to_string(),
            None => kernel_hostname(),
        };
        let facts = HardwareFacts {
            serial,
            tpm_ek_sha256,
            hostname,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            os_version: os_pretty_name(Path::new("/etc/os-release")),
            key_storage: key_storage.to_string(),
        };
        debug!(?facts, "gathered hardware facts");
        Ok(facts)
    }

    /// The protobuf form.
    pub fn to_proto(&self) -> cairn_proto::v1::HardwareFacts {
        cairn_proto::v1::HardwareFacts {
            serial: self.serial.clone(),
            tpm_ek_sha256: self.tpm_ek_sha256.clone(),
            hostname: self.hostname.clone(),
            agent_version: self.agent_version.clone(),
            os_version: self.os_version.clone(),
            key_storage: self.key_storage.clone(),
        }
    }
}

/// The DMI serial when it is real, else the machine id.
pub fn detect_serial(dmi: &Path, machine_id: &Path) -> Option<String> {
    let read = |p: &Path| {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    if let Some(serial) = read(dmi) {
        if !PLACEHOLDER_SERIALS.contains(&serial.to_ascii_lowercase().as_str()) {
            return Some(serial);
        }
        warn!(
            serial,
            "DMI product serial is a firmware placeholder; using the machine id"
        );
    }
    read(machine_id)
}

fn kernel_hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_string())
        .find(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// `PRETTY_NAME` of an os-release file, `"unknown"` when absent.
pub fn os_pretty_name(path: &Path) -> String {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| parse_pretty_name(&text))
        .unwrap_or_else(|| "unknown".to_string())
}

fn parse_pretty_name(text: &str) -> Option<String> {
    os_release_value(text, "PRETTY_NAME")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::DeviceKey;

    #[test]
    fn pretty_name_forms() {
        assert_eq!(
            parse_pretty_name("NAME=x\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n")
                .as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        assert_eq!(
            parse_pretty_name("PRETTY_NAME=Cairn").as_deref(),
            Some("Cairn")
        );
        assert_eq!(parse_pretty_name("NAME=x"), None);
    }

    #[test]
    fn serial_falls_back_past_placeholders() {
        let dir = tempfile::tempdir().unwrap();
        let dmi = dir.path().join("dmi");
        let mid = dir.path().join("machine-id");
        std::fs::write(&mid, "abc123\n").unwrap();
        assert_eq!(detect_serial(&dmi, &mid).as_deref(), Some("abc123"));
        std::fs::write(&dmi, "To Be Filled By O.E.M.\n").unwrap();
        assert_eq!(detect_serial(&dmi, &mid).as_deref(), Some("abc123"));
        std::fs::write(&dmi, " SN-77 \n").unwrap();
        assert_eq!(detect_serial(&dmi, &mid).as_deref(), Some("SN-77"));
        assert_eq!(
            detect_serial(&dir.path().join("x"), &dir.path().join("y")),
            None
        );
    }

    #[test]
    fn software_key_facts() {
        let dir = tempfile::tempdir().unwrap();
        let key = DeviceKey::software(&dir.path().join("k.p8")).unwrap();
        let mut config = AgentConfig::new("https://127.0.0.1:1", Path::new("/ca"), "t", dir.path());
        config.serial = Some("SN-1".into());
        config.hostname = Some("edge-1".into());
        let facts = HardwareFacts::gather(&config, &key.key_storage()).unwrap();
        assert_eq!(facts.serial, "SN-1");
        assert_eq!(facts.hostname, "edge-1");
        assert_eq!(facts.key_storage, "software");
        assert_eq!(facts.tpm_ek_sha256, "");
        assert_eq!(facts.to_proto().agent_version, env!("CARGO_PKG_VERSION"));
    }
}
