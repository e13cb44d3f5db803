//! Unified kernel images, one per slot: systemd's EFI stub with `.osrel`, `.cmdline`, `.initrd`
//! and `.linux` sections added by objcopy (bookworm's systemd 252 has no ukify), made
//! reproducible (PE timestamp and checksum), then signed for Secure Boot with sbsign under a
//! frozen clock (the PKCS#7 signing time would differ otherwise).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use cairn_io::{FileError, PathContext};

use crate::pe::{self, PeError};
use crate::tool::{tool, FrozenClock, NoFaketime, ToolError};

/// OVMF's snakeoil Secure Boot key (Debian package `ovmf`; enrolled in PK, KEK and db of
/// OVMF_VARS_4M.snakeoil.fd). For tests only: its private key is public.
pub const SNAKEOIL_KEY: &str = "/usr/share/ovmf/PkKek-1-snakeoil.key";
/// The snakeoil certificate.
pub const SNAKEOIL_CERT: &str = "/usr/share/ovmf/PkKek-1-snakeoil.pem";
/// The snakeoil key's passphrase (documented in the ovmf package's README.Debian).
pub const SNAKEOIL_PASS: &str = "snakeoil";
/// The EFI stub inside the root filesystem (package systemd-boot-efi).
pub const STUB_IN_ROOT: &str = "usr/lib/systemd/boot/efi/linuxx64.efi.stub";
/// systemd-boot inside the root filesystem (package systemd-boot-efi).
pub const SYSTEMD_BOOT_IN_ROOT: &str = "usr/lib/systemd/boot/efi/systemd-bootx64.efi";

/// A UKI could not be made or signed.
#[derive(Debug, thiserror::Error)]
pub enum UkiError {
    /// objcopy, openssl or sbsign failed.
    #[error(transparent)]
    Tool(#[from] ToolError),
    /// The stub or the result is not a PE image we understand.
    #[error("{path}: {source}")]
    Pe {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: PeError,
    },
    /// File handling failed.
    #[error(transparent)]
    File(#[from] FileError),
    /// A tool that must run with a frozen clock cannot.
    #[error(transparent)]
    NoFaketime(#[from] NoFaketime),
    /// The signing key is encrypted and no passphrase was given.
    #[error("Secure Boot key {path} is encrypted: give its passphrase with --sb-key-pass / CAIRN_SB_KEY_PASS")]
    NeedsPassphrase {
        /// The key.
        path: PathBuf,
    },
}

/// A Secure Boot signing key ready for sbsign (decrypted into the private work dir if needed).
#[derive(Debug, Clone)]
pub struct SigningKey {
    /// Unencrypted PEM key (mode 0600).
    pub key: PathBuf,
    /// PEM certificate.
    pub cert: PathBuf,
}

/// Prepare `key`/`cert` for signing: an encrypted key is decrypted into `work/sb.key` (0600)
/// with `pass` (the snakeoil key's passphrase is known).
pub fn prepare_signing_key(
    key: &Path,
    cert: &Path,
    pass: Option<&str>,
    work: &Path,
) -> Result<SigningKey, UkiError> {
    let text = fs::read_to_string(key).at("read Secure Boot key", key)?;
    fs::metadata(cert).at("read Secure Boot certificate", cert)?;
    let out = work.join("sb.key");
    fs::create_dir_all(work).at("create", work)?;
    let _ = fs::remove_file(&out);
    fs::write(&out, b"").at("create", &out)?;
    fs::set_permissions(&out, fs::Permissions::from_mode(0o600)).at("chmod", &out)?;
    let pass = if text.contains("ENCRYPTED") {
        match pass {
            Some(p) => p.to_string(),
            None if key == Path::new(SNAKEOIL_KEY) => SNAKEOIL_PASS.to_string(),
            None => {
                return Err(UkiError::NeedsPassphrase {
                    path: key.to_path_buf(),
                })
            }
        }
    } else {
        String::new()
    };
    tool("openssl")
        .arg("pkey")
        .arg("-in")
        .arg(key)
        .arg("-out")
        .arg(&out)
        .args(["-passin", "env:CAIRN_SB_KEY_PASS"])
        .env("CAIRN_SB_KEY_PASS", pass)
        .run()?;
    Ok(SigningKey {
        key: out,
        cert: cert.to_path_buf(),
    })
}

/// The parts of one UKI.
#[derive(Debug, Clone)]
pub struct UkiParts<'a> {
    /// systemd's linuxx64.efi.stub.
    pub stub: &'a Path,
    /// The kernel.
    pub kernel: &'a Path,
    /// The initramfs.
    pub initrd: &'a Path,
    /// os-release text for `.osrel`.
    pub os_release: &'a [u8],
    /// The kernel command line for `.cmdline`.
    pub cmdline: &'a str,
}

/// Build an unsigned, reproducible UKI at `out` (scratch files go to `work`).
pub fn build_unsigned(parts: &UkiParts<'_>, out: &Path, work: &Path) -> Result<(), UkiError> {
    fs::create_dir_all(work).at("create", work)?;
    let stub = fs::read(parts.stub).at("read EFI stub", parts.stub)?;
    let layout = pe::layout(&stub).map_err(|source| UkiError::Pe {
        path: parts.stub.to_path_buf(),
        source,
    })?;
    let osrel = work.join("osrel");
    let cmdline = work.join("cmdline");
    fs::write(&osrel, parts.os_release).at("write", &osrel)?;
    fs::write(&cmdline, parts.cmdline.as_bytes()).at("write", &cmdline)?;
    let sections: [(&str, &Path); 4] = [
        (".osrel", &osrel),
        (".cmdline", &cmdline),
        (".initrd", parts.initrd),
        (".linux", parts.kernel),
    ];
    let sizes = sections
        .iter()
        .map(|(_, file)| Ok(fs::metadata(file).at("read", file)?.len()))
        .collect::<Result<Vec<u64>, UkiError>>()?;
    let mut tool = tool("objcopy");
    for ((name, file), address) in sections.iter().zip(pe::append_addresses(&layout, sizes)) {
        tool = tool
            .arg("--add-section")
            .arg(format!("{name}={}", file.display()))
            .arg("--change-section-vma")
            .arg(format!("{name}={address:#x}"));
    }
    let _ = fs::remove_file(out);
    tool.arg(parts.stub).arg(out).run()?;
    let mut bytes = fs::read(out).at("read", out)?;
    pe::normalize(&mut bytes, 0).map_err(|source| UkiError::Pe {
        path: out.to_path_buf(),
        source,
    })?;
    fs::write(out, bytes).at("write", out)?;
    Ok(())
}

/// Sign an EFI binary for Secure Boot with the clock frozen at `epoch`.
pub fn sign(input: &Path, output: &Path, key: &SigningKey, epoch: i64) -> Result<(), UkiError> {
    let _ = fs::remove_file(output);
    tool("sbsign")
        .frozen_clock(epoch)?
        .arg("--key")
        .arg(&key.key)
        .arg("--cert")
        .arg(&key.cert)
        .arg("--output")
        .arg(output)
        .arg(input)
        .run()?;
    tool("sbverify")
        .arg("--cert")
        .arg(&key.cert)
        .arg(output)
        .run()?;
    Ok(())
}

/// The kernel command line of a slot.
pub fn cmdline(slot: char, root_hash: &str, hash_offset: u64, extra: &str) -> String {
    format!(
        "cairn.slot={slot} cairn.roothash={root_hash} cairn.hashoffset={hash_offset} rauc.slot={slot} \
         root=/dev/mapper/root rootfstype=squashfs ro {extra}"
    )
    .trim()
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_binds_slot_and_root_hash() {
        let line = cmdline('b', "ab12", 4096, "console=ttyS0");
        assert_eq!(
            line,
            "cairn.slot=b cairn.roothash=ab12 cairn.hashoffset=4096 rauc.slot=b root=/dev/mapper/root \
             rootfstype=squashfs ro console=ttyS0"
        );
    }

    #[test]
    fn builds_and_signs_a_reproducible_uki_from_the_host_stub() {
        let stub = Path::new("/").join(STUB_IN_ROOT);
        let tools = ["objcopy", "sbsign", "sbverify", "openssl"];
        if !stub.exists()
            || !Path::new(SNAKEOIL_KEY).exists()
            || !tools.iter().all(|t| crate::tool::is_installed(t))
        {
            eprintln!("SKIP: systemd-boot-efi, ovmf, sbsigntool or binutils missing (dev/image-packages.txt)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("kernel");
        let initrd = dir.path().join("initrd");
        fs::write(&kernel, vec![0x5a; 100_000]).unwrap();
        fs::write(&initrd, vec![0xa5; 50_000]).unwrap();
        let parts = UkiParts {
            stub: &stub,
            kernel: &kernel,
            initrd: &initrd,
            os_release: b"ID=cairn\n",
            cmdline: "cairn.slot=a",
        };
        let key = prepare_signing_key(
            Path::new(SNAKEOIL_KEY),
            Path::new(SNAKEOIL_CERT),
            None,
            dir.path(),
        )
        .unwrap();
        let mut signed = Vec::new();
        for name in ["one", "two"] {
            let unsigned = dir.path().join(format!("{name}.efi"));
            build_unsigned(&parts, &unsigned, &dir.path().join(name)).unwrap();
            let out = dir.path().join(format!("{name}.signed.efi"));
            sign(&unsigned, &out, &key, 1_735_689_600).unwrap();
            signed.push(fs::read(out).unwrap());
            std::thread::sleep(std::time::Duration::from_millis(1100));
        }
        assert!(
            signed[0] == signed[1],
            "two signed UKIs from the same inputs differ"
        );
        let sections = tool("objdump")
            .arg("-h")
            .arg(dir.path().join("one.efi"))
            .run()
            .unwrap()
            .stdout_text();
        for name in [".osrel", ".cmdline", ".initrd", ".linux"] {
            assert!(sections.contains(name), "{name} missing:\n{sections}");
        }
    }
}
