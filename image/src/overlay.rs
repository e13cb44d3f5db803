//! The files Cairn adds to the Debian root filesystem: the static OS layer (initramfs verity
//! hook, systemd units for the read-only root, networking, the first-boot data format, the boot
//! report) and the fleet layer given at build time (agent binary and config, central CA,
//! enrollment token, RAUC keyring and system.conf).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::recipe::Recipe;

/// Where the agent config lives on the device.
pub const AGENT_CONFIG_PATH: &str = "/etc/cairn/agent.toml";
/// Where the agent keeps its state (on the data partition through /var/lib/cairn -> /data/cairn).
pub const AGENT_STATE_DIR: &str = "/var/lib/cairn/agent";
/// The line the boot report prints on the console once the system is up.
pub const READY_MARKER: &str = "CAIRN-READY";

/// A file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    /// An input given at build time could not be read.
    #[error("cannot read {what} {path}: {source}")]
    ReadInput {
        /// What the input is (agent binary, CA certificate, ...).
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// An input is not what it should be.
    #[error("{what} {path} is not usable: {problem}")]
    BadInput {
        /// What the input is.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// Why.
        problem: String,
    },
    /// A file could not be written into the root filesystem.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The path written.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// One file to place in the root filesystem (or, for provisioning files, on the ESP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsFile {
    /// Path inside the root, without the leading `/`.
    pub path: String,
    /// Permission bits.
    pub mode: u32,
    /// Content.
    pub contents: Vec<u8>,
}

impl OsFile {
    fn text(path: &str, mode: u32, contents: &str) -> OsFile {
        OsFile {
            path: path.to_string(),
            mode,
            contents: contents.as_bytes().to_vec(),
        }
    }
}

/// The initramfs-tools configuration that must be in place before the kernel package installs
/// (so the first initramfs is already small): `MODULES=list`.
pub const INITRAMFS_CONF: &str = include_str!("../assets/initramfs.conf");

/// The static OS layer: the same for every fleet built from this recipe (part of the cached
/// root filesystem).
pub fn static_os_files(recipe: &Recipe) -> Vec<OsFile> {
    let mut modules =
        String::from("# Cairn: kernel modules in the initramfs (recipe [initramfs].modules).\n");
    for module in &recipe.initramfs.modules {
        modules.push_str(module);
        modules.push('\n');
    }
    let os_release = format!(
        "PRETTY_NAME=\"Cairn {version} ({target})\"\nNAME=\"Cairn\"\nID=cairn\nID_LIKE=debian\n\
         VERSION_ID=\"{version}\"\nVERSION=\"{version} ({suite})\"\nVARIANT_ID={target}\n\
         HOME_URL=\"https://example.invalid/cairn\"\n",
        version = recipe.target.version,
        target = recipe.target.name,
        suite = recipe.debian.suite,
    );
    vec![
        OsFile::text(
            "etc/initramfs-tools/conf.d/cairn.conf",
            0o644,
            INITRAMFS_CONF,
        ),
        OsFile {
            path: "etc/initramfs-tools/modules".into(),
            mode: 0o644,
            contents: modules.into_bytes(),
        },
        OsFile::text(
            "etc/initramfs-tools/hooks/cairn-verity",
            0o755,
            include_str!("../assets/initramfs-hook"),
        ),
        OsFile::text(
            "etc/initramfs-tools/scripts/local-top/cairn-verity",
            0o755,
            include_str!("../assets/initramfs-local-top"),
        ),
        OsFile::text(
            "etc/containerd/config.toml",
            0o644,
            include_str!("../assets/containerd.toml"),
        ),
        OsFile::text(
            "etc/systemd/system/cairn-agent.service",
            0o644,
            include_str!("../assets/cairn-agent.service"),
        ),
        OsFile::text(
            "etc/systemd/system/cairn-apps-stop.service",
            0o644,
            include_str!("../assets/cairn-apps-stop.service"),
        ),
        OsFile::text(
            "etc/systemd/system/cairn-unlock.service",
            0o644,
            include_str!("../assets/cairn-unlock.service"),
        ),
        OsFile::text(
            "etc/systemd/system/cairn-firewall.service",
            0o644,
            include_str!("../assets/cairn-firewall.service"),
        ),
        OsFile::text(
            "etc/systemd/system/cairn-clock.service",
            0o644,
            include_str!("../assets/cairn-clock.service"),
        ),
        OsFile::text(
            "etc/systemd/system/data.mount",
            0o644,
            include_str!("../assets/data.mount"),
        ),
        OsFile::text(
            "etc/systemd/system/var.mount",
            0o644,
            include_str!("../assets/var.mount"),
        ),
        OsFile::text(
            "etc/systemd/system/tmp.mount",
            0o644,
            include_str!("../assets/tmp.mount"),
        ),
        OsFile::text(
            "etc/systemd/system/efi.mount",
            0o644,
            include_str!("../assets/efi.mount"),
        ),
        OsFile::text(
            "etc/systemd/system/cairn-boot-report.service",
            0o644,
            include_str!("../assets/cairn-boot-report.service"),
        ),
        OsFile::text(
            "etc/systemd/network/20-wired.network",
            0o644,
            include_str!("../assets/20-wired.network"),
        ),
        OsFile::text(
            "etc/tmpfiles.d/cairn.conf",
            0o644,
            include_str!("../assets/tmpfiles.conf"),
        ),
        OsFile::text(
            "usr/lib/cairn/boot-report",
            0o755,
            include_str!("../assets/boot-report"),
        ),
        OsFile::text(
            "usr/lib/cairn/image-setup.sh",
            0o755,
            include_str!("../assets/image-setup.sh"),
        ),
        OsFile::text(
            "usr/lib/cairn/rauc-bootloader",
            0o755,
            include_str!("../assets/rauc-bootloader"),
        ),
        OsFile::text(
            "usr/lib/cairn/trial-boot-check",
            0o755,
            include_str!("../assets/trial-boot-check"),
        ),
        OsFile::text(
            "etc/systemd/system/cairn-trial-boot.service",
            0o644,
            include_str!("../assets/cairn-trial-boot.service"),
        ),
        OsFile {
            path: "etc/systemd/system/cairn-trial-boot.timer".into(),
            mode: 0o644,
            contents: trial_boot_timer(recipe.boot.trial_deadline_s).into_bytes(),
        },
        OsFile {
            path: "usr/lib/os-release".into(),
            mode: 0o644,
            contents: os_release.into_bytes(),
        },
    ]
}

/// The trial-boot deadline: only on a counted boot (systemd-boot set LoaderBootCountPath),
/// `trial_deadline_s` after boot, cairn-trial-boot.service reboots unless the entry was blessed.
fn trial_boot_timer(deadline_s: u32) -> String {
    format!(
        "[Unit]\n\
         Description=Cairn: deadline of a trial boot (recipe [boot] trial_deadline_s)\n\
         Documentation=https://systemd.io/AUTOMATIC_BOOT_ASSESSMENT/\n\
         ConditionPathExists=/sys/firmware/efi/efivars/LoaderBootCountPath-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f\n\n\
         [Timer]\n\
         OnBootSec={deadline_s}s\n\
         AccuracySec=1s\n\n\
         [Install]\n\
         WantedBy=timers.target\n"
    )
}

/// The os-release text of the image (also the UKI's `.osrel`).
pub fn os_release(files: &[OsFile]) -> Vec<u8> {
    files
        .iter()
        .find(|f| f.path == "usr/lib/os-release")
        .map(|f| f.contents.clone())
        .unwrap_or_default()
}

/// Inputs for the fleet layer, given at build time.
#[derive(Debug, Clone)]
pub struct FleetInputs {
    /// The cairn-agent binary (built for the image's Debian release).
    pub agent_bin: PathBuf,
    /// Central's CA certificate (PEM), if the image should be able to enroll.
    pub central_ca: Option<PathBuf>,
    /// A file holding the fleet enrollment token.
    pub token_file: Option<PathBuf>,
    /// The fleet update certificate (PEM), installed as the RAUC keyring.
    pub update_cert: PathBuf,
}

/// Where the enrollment token lives on the ESP (mounted at `/efi`, root-only).
pub const ESP_TOKEN_PATH: &str = "cairn/enrollment-token";

/// The provisioning files of the ESP: the enrollment token. They live on the ESP, which the
/// disk image carries but no update bundle does, so an update never spreads a fleet's token
/// (the root filesystem, which bundles carry whole, holds none). Paths are relative to the ESP.
pub fn provisioning_files(token_file: Option<&Path>) -> Result<Vec<OsFile>, OverlayError> {
    let Some(token) = token_file else {
        return Ok(Vec::new());
    };
    let value = String::from_utf8_lossy(&read_input("enrollment token file", token)?)
        .trim()
        .to_string();
    if value.is_empty() || value.contains(char::is_whitespace) {
        return Err(OverlayError::BadInput {
            what: "enrollment token file",
            path: token.to_path_buf(),
            problem: "must hold one token with no whitespace".into(),
        });
    }
    Ok(vec![OsFile {
        path: ESP_TOKEN_PATH.into(),
        mode: 0o600,
        contents: value.into_bytes(),
    }])
}

/// The fleet layer: agent, its config, trust roots and secrets. Missing CA or token are allowed
/// (the image then boots but cannot enroll) and reported by the caller.
pub fn fleet_files(recipe: &Recipe, inputs: &FleetInputs) -> Result<Vec<OsFile>, OverlayError> {
    let agent = read_input("agent binary", &inputs.agent_bin)?;
    if !agent.starts_with(b"\x7fELF") {
        return Err(OverlayError::BadInput {
            what: "agent binary",
            path: inputs.agent_bin.clone(),
            problem: "not an ELF executable".into(),
        });
    }
    let mut files = vec![OsFile {
        path: "usr/bin/cairn-agent".into(),
        mode: 0o755,
        contents: agent,
    }];
    let mut config = format!(
        "# cairn-agent configuration, written by cairn-image from recipe {target}.\n\
         # Format: agent/agent.example.toml in the Cairn repository.\n\
         central_endpoint = \"{url}\"\n\
         ca_cert = \"/etc/cairn/central-ca.pem\"\n\
         state_dir = \"{AGENT_STATE_DIR}\"\n\
         key_storage = \"{storage}\"\n",
        target = recipe.target.name,
        url = recipe.fleet.central_url,
        storage = recipe.fleet.key_storage,
    );
    if let Some(ca) = &inputs.central_ca {
        let pem = read_input("central CA certificate", ca)?;
        if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
            return Err(OverlayError::BadInput {
                what: "central CA certificate",
                path: ca.clone(),
                problem: "no PEM certificate in it".into(),
            });
        }
        files.push(OsFile {
            path: "etc/cairn/central-ca.pem".into(),
            mode: 0o644,
            contents: pem,
        });
    }
    if inputs.token_file.is_some() {
        // Provisioning data: on the ESP (see provisioning_files), not in the root filesystem
        // that every update bundle carries to every device.
        config.push_str(&format!(
            "enrollment_token_file = \"/efi/{ESP_TOKEN_PATH}\"\n"
        ));
    }
    // Last: a TOML table ends the top-level keys.
    config.push_str(&format!(
        "\n# The data partition: LUKS2, its key sealed in the TPM to these PCRs.\n\
         [disk]\nenabled = true\npcrs = \"{pcrs}\"\n\n\
         # Apps from central run on containerd; volumes live on the data partition.\n\
         [apps]\nenabled = true\nfirewall = true\nplain_http_registries = [{registries}]\n\n\
         # The boot is good once the agent reaches central: drop systemd-boot's try counter.\n\
         # tries: what a slot activated by an update gets (RAUC backend set-primary).\n\
         [boot]\nbless = true\nesp = \"/efi\"\ntries = {tries}\n\n\
         # OS updates from central's rollouts: A/B with RAUC, committed by the health gate.\n\
         [update]\nenabled = true\n\n\
         # The clock: stepped to central's signed time when it is off (no RTC, flat battery).\n\
         [time]\nset_system_clock = true\n\
         ntp_dropin = \"/run/systemd/timesyncd.conf.d/50-cairn-central.conf\"\n",
        tries = recipe.boot.tries,
        pcrs = recipe.fleet.data_pcrs,
        registries = recipe
            .fleet
            .plain_http_registries
            .iter()
            .map(|r| format!("\"{r}\""))
            .collect::<Vec<_>>()
            .join(", "),
    ));
    if !recipe.fleet.ntp_servers.is_empty() {
        files.push(OsFile::text(
            "etc/systemd/timesyncd.conf.d/cairn.conf",
            0o644,
            &format!(
                "# Cairn: the recipe's fleet.ntp_servers (DHCP's come on top through networkd).\n\
                 [Time]\nNTP={}\n",
                recipe.fleet.ntp_servers.join(" ")
            ),
        ));
    }
    files.push(OsFile {
        path: AGENT_CONFIG_PATH[1..].into(),
        mode: 0o644,
        contents: config.into_bytes(),
    });
    files.push(OsFile {
        path: "etc/rauc/keyring.pem".into(),
        mode: 0o644,
        contents: read_input("update certificate", &inputs.update_cert)?,
    });
    files.push(OsFile::text(
        "etc/rauc/system.conf",
        0o644,
        &rauc_system_conf(recipe),
    ));
    Ok(files)
}

/// RAUC's system.conf for the A/B root slots.
fn rauc_system_conf(recipe: &Recipe) -> String {
    format!(
        "# RAUC system configuration, written by cairn-image.\n\
         [system]\n\
         compatible={compatible}\n\
         # systemd-boot entries with boot counting on the ESP, kept by cairn-agent.\n\
         bootloader=custom\n\
         # Installing does not switch slots: the agent first seals the data key to the new UKI's\n\
         # PCR 11, then activates it with `rauc status mark-active other`.\n\
         activate-installed=false\n\
         data-directory=/data/rauc\n\
         # The root is read-only: bundles are mounted under /run.\n\
         mountprefix=/run/rauc\n\
         bundle-formats=-plain\n\n\
         [handlers]\n\
         bootloader-custom-backend=/usr/lib/cairn/rauc-bootloader\n\n\
         [keyring]\n\
         path=/etc/rauc/keyring.pem\n\
         check-purpose=codesign\n\n\
         [slot.rootfs.0]\n\
         device=/dev/disk/by-partlabel/root-a\n\
         type=raw\n\
         bootname=a\n\n\
         [slot.rootfs.1]\n\
         device=/dev/disk/by-partlabel/root-b\n\
         type=raw\n\
         bootname=b\n",
        compatible = recipe.update.compatible
    )
}

fn read_input(what: &'static str, path: &Path) -> Result<Vec<u8>, OverlayError> {
    fs::read(path).map_err(|source| OverlayError::ReadInput {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// Write `files` under `root` (creating parent directories 0755), replacing what is there.
pub fn write_files(root: &Path, files: &[OsFile]) -> Result<(), OverlayError> {
    for file in files {
        let path = root.join(&file.path);
        let werr = |source| OverlayError::Write {
            path: path.clone(),
            source,
        };
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(werr)?;
        }
        match fs::symlink_metadata(&path) {
            Ok(meta) if !meta.is_dir() => fs::remove_file(&path).map_err(werr)?,
            _ => {}
        }
        let mut out = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(file.mode)
            .open(&path)
            .map_err(werr)?;
        out.write_all(&file.contents).map_err(werr)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(file.mode)).map_err(werr)?;
    }
    Ok(())
}

/// A digest over paths, modes and contents, for cache keys.
pub fn digest(files: &[OsFile]) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for file in files {
        hasher.update(file.path.as_bytes());
        hasher.update([0]);
        hasher.update(file.mode.to_le_bytes());
        hasher.update((file.contents.len() as u64).to_le_bytes());
        hasher.update(&file.contents);
    }
    hex::encode(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe() -> Recipe {
        Recipe::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../recipes/qemu-x86_64.toml"))
            .unwrap()
    }

    #[test]
    fn fleet_layer_has_config_ca_and_private_token() {
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("agent");
        fs::write(&agent, b"\x7fELF....").unwrap();
        let ca = dir.path().join("ca.pem");
        fs::write(
            &ca,
            "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let token = dir.path().join("token");
        fs::write(&token, "tok-123\n").unwrap();
        let inputs = FleetInputs {
            agent_bin: agent,
            central_ca: Some(ca),
            token_file: Some(token),
            update_cert: dir.path().join("ca.pem"),
        };
        let files = fleet_files(&recipe(), &inputs).unwrap();
        let config = files
            .iter()
            .find(|f| f.path == "etc/cairn/agent.toml")
            .unwrap();
        let config = String::from_utf8(config.contents.clone()).unwrap();
        assert!(
            config.contains("central_endpoint = \"https://10.0.2.2:7443\""),
            "{config}"
        );
        assert!(config.contains("enrollment_token_file"), "{config}");
        assert!(
            config.contains("[time]\nset_system_clock = true\n"),
            "the device's agent steps the system clock: {config}"
        );
        assert!(
            !files.iter().any(|f| f.path.contains("timesyncd")),
            "no NTP servers in the recipe, no timesyncd drop-in"
        );
        let mut with_ntp = recipe();
        with_ntp.fleet.ntp_servers = vec!["ntp.site.example".into(), "10.1.2.3".into()];
        let ntp = fleet_files(&with_ntp, &inputs).unwrap();
        let ntp = ntp
            .iter()
            .find(|f| f.path == "etc/systemd/timesyncd.conf.d/cairn.conf")
            .unwrap();
        assert!(String::from_utf8_lossy(&ntp.contents)
            .contains("[Time]\nNTP=ntp.site.example 10.1.2.3\n"));
        // The token is not in the root filesystem (every update bundle carries it), but on
        // the ESP, where the config points.
        assert!(
            !files
                .iter()
                .any(|f| f.contents.windows(7).any(|w| w == b"tok-123")),
            "no root file holds the token"
        );
        assert!(
            config.contains("enrollment_token_file = \"/efi/cairn/enrollment-token\""),
            "{config}"
        );
        let provisioning = provisioning_files(inputs.token_file.as_deref()).unwrap();
        assert_eq!(provisioning.len(), 1);
        assert_eq!(
            (
                provisioning[0].path.as_str(),
                provisioning[0].contents.as_slice()
            ),
            (ESP_TOKEN_PATH, b"tok-123".as_slice())
        );
        let spaced = dir.path().join("spaced");
        fs::write(&spaced, "two tokens\n").unwrap();
        assert!(provisioning_files(Some(&spaced)).is_err());
        assert!(provisioning_files(None).unwrap().is_empty());
    }

    #[test]
    fn rauc_uses_the_agent_backend_and_does_not_activate_on_install() {
        let conf = rauc_system_conf(&recipe());
        for line in [
            "bootloader=custom\n",
            "activate-installed=false\n",
            "[handlers]\nbootloader-custom-backend=/usr/lib/cairn/rauc-bootloader\n",
            "bootname=a\n",
        ] {
            assert!(conf.contains(line), "{line:?} missing:\n{conf}");
        }
        let files = static_os_files(&recipe());
        let timer = files
            .iter()
            .find(|f| f.path == "etc/systemd/system/cairn-trial-boot.timer")
            .unwrap();
        let timer = String::from_utf8_lossy(&timer.contents);
        assert!(timer.contains("OnBootSec=600s\n"), "{timer}");
        assert!(files
            .iter()
            .any(|f| f.path == "usr/lib/cairn/rauc-bootloader" && f.mode == 0o755));
    }

    #[test]
    fn refuses_a_non_elf_agent() {
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("agent");
        fs::write(&agent, b"#!/bin/sh\n").unwrap();
        let inputs = FleetInputs {
            agent_bin: agent,
            central_ca: None,
            token_file: None,
            update_cert: dir.path().join("x"),
        };
        assert!(matches!(
            fleet_files(&recipe(), &inputs),
            Err(OverlayError::BadInput { .. })
        ));
    }

    #[test]
    fn static_layer_lists_the_recipe_modules() {
        let files = static_os_files(&recipe());
        let modules = files
            .iter()
            .find(|f| f.path == "etc/initramfs-tools/modules")
            .unwrap();
        assert!(String::from_utf8_lossy(&modules.contents).contains("dm_verity\n"));
        assert_ne!(digest(&files), digest(&files[1..]));
    }
}
