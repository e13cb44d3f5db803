//! `[boot]`: blessing the boot and the ESP with the A/B slots.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// `[boot]` in the agent config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BootConfig {
    /// Mark the booted entry good once the agent is connected to central. Off outside the image.
    pub bless: bool,
    /// Where the ESP is mounted.
    pub esp: PathBuf,
    /// Boot tries a newly activated slot gets before systemd-boot falls back to the other one.
    pub tries: u32,
}

impl Default for BootConfig {
    fn default() -> Self {
        BootConfig {
            bless: false,
            esp: "/efi".into(),
            tries: 3,
        }
    }
}

impl BootConfig {
    /// Only the `[boot]` table of the agent config file (defaults when absent): the RAUC
    /// backend and the UKI hook must work even when the rest of the config would not load.
    pub fn load(path: &Path) -> Result<BootConfig, ConfigError> {
        #[derive(Deserialize)]
        struct Only {
            #[serde(default)]
            boot: Option<toml::Value>,
        }
        let parse = |e: &dyn std::fmt::Display| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim().replace('\n', " "),
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let only: Only = toml::from_str(&text).map_err(|e| parse(&e))?;
        let boot = match only.boot {
            Some(table) => table.try_into().map_err(|e| parse(&e))?,
            None => BootConfig::default(),
        };
        Ok(boot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_config_is_read_from_the_agent_config_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            "central_endpoint = 1\n[boot]\nesp = \"/x\"\ntries = 2\n",
        )
        .unwrap();
        let cfg = BootConfig::load(&path).unwrap();
        assert_eq!(
            (cfg.esp, cfg.tries, cfg.bless),
            (PathBuf::from("/x"), 2, false)
        );
        std::fs::write(&path, "central_endpoint = 1\n").unwrap();
        assert_eq!(BootConfig::load(&path).unwrap(), BootConfig::default());
        std::fs::write(&path, "[boot]\nesq = 1\n").unwrap();
        assert!(BootConfig::load(&path).is_err());
    }
}
