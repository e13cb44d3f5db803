//! The signed RAUC update bundle (`format=verity`) of the image's root, assembled here instead of
//! by `rauc bundle` because rauc draws a random verity salt and stamps the CMS signing time,
//! which would make every bundle different. The layout is RAUC's own:
//! `squashfs(content) ‖ dm-verity hash tree (no superblock) ‖ CMS signature ‖ u64be(signature
//! length)`, where the CMS signs the manifest extended with `verity-hash`, `verity-salt` and
//! `verity-size`. The salt is derived from the content, the signing clock is frozen, and the
//! update key is RSA (deterministic signatures), so the same inputs give the same bytes.
//! `rauc info` checks the result against the update certificate before the build goes on.
//!
//! Besides the root image the bundle carries both slots' signed UKIs (`uki-a.efi`, `uki-b.efi`:
//! same root hash, different `cairn.slot=`/`rauc.slot=`) and a slot hook (`hook`, manifest
//! `[hooks] filename=hook`, `[image.rootfs] hooks=post-install`): after RAUC writes the root slot
//! it runs `hook slot-post-install` with `RAUC_SLOT_BOOTNAME` and `RAUC_BUNDLE_MOUNT_POINT` set,
//! and the hook installs `uki-<slot>.efi` as that slot's UKI on the ESP.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_io::{FileError, PathContext};

use crate::keys::UpdateKeys;
use crate::tool::{tool, FrozenClock, NoFaketime, ToolError};
use crate::verity::{self, VerityError, BLOCK};

/// The bundle could not be made or does not verify.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// mksquashfs, veritysetup, openssl or rauc failed.
    #[error(transparent)]
    Tool(#[from] ToolError),
    /// The hash tree could not be made.
    #[error(transparent)]
    Verity(#[from] VerityError),
    /// The root image or payload could not be hashed.
    #[error(transparent)]
    Hash(#[from] crate::publish::PublishError),
    /// File handling failed.
    #[error(transparent)]
    File(#[from] FileError),
    /// A tool that must run with a frozen clock cannot.
    #[error(transparent)]
    NoFaketime(#[from] NoFaketime),
}

/// What goes into a bundle.
#[derive(Debug, Clone)]
pub struct BundleSpec<'a> {
    /// RAUC compatible string.
    pub compatible: &'a str,
    /// Version string.
    pub version: &'a str,
    /// Build id (we use SOURCE_DATE_EPOCH).
    pub build: &'a str,
    /// The slot image for the `rootfs` slot class (squashfs + verity, written raw).
    pub root_image: &'a Path,
    /// The signed UKI of each slot (slot letter, file), shipped as `uki-<slot>.efi`.
    pub ukis: &'a [(char, PathBuf)],
    /// SOURCE_DATE_EPOCH: every timestamp in the bundle.
    pub epoch: i64,
}

/// The slot hook RAUC runs after writing a root slot: installs that slot's UKI on the ESP.
pub const SLOT_HOOK: &str = include_str!("../assets/rauc-slot-hook");

/// The manifest RAUC reads (without the verity fields).
pub fn manifest(spec: &BundleSpec<'_>, root_sha256: &str, root_size: u64) -> String {
    format!(
        "[update]\ncompatible={}\nversion={}\nbuild={}\n\n[bundle]\nformat=verity\n\n\
         [hooks]\nfilename=hook\n\n\
         [image.rootfs]\nsha256={root_sha256}\nsize={root_size}\nfilename=root.img\n\
         hooks=post-install\n",
        spec.compatible, spec.version, spec.build
    )
}

/// The manifest that is signed: the plain one with the verity parameters of the payload.
pub fn signed_manifest(
    plain: &str,
    verity_hash: &str,
    verity_salt: &str,
    verity_size: u64,
) -> String {
    plain.replacen(
        "[bundle]\nformat=verity\n",
        &format!(
            "[bundle]\nformat=verity\nverity-hash={verity_hash}\nverity-salt={verity_salt}\nverity-size={verity_size}\n"
        ),
        1,
    )
}

/// Build the bundle at `out` (scratch in `work`) and check it with `rauc info`.
pub fn make_bundle(
    spec: &BundleSpec<'_>,
    keys: &UpdateKeys,
    out: &Path,
    work: &Path,
) -> Result<(), BundleError> {
    let content = work.join("content");
    let _ = fs::remove_dir_all(&content);
    fs::create_dir_all(&content).at("create", &content)?;
    let root = content.join("root.img");
    fs::copy(spec.root_image, &root).at("copy", spec.root_image)?;
    fs::set_permissions(&root, fs::Permissions::from_mode(0o644)).at("chmod", &root)?;
    let root_sha = crate::publish::sha256_file(&root)?;
    let root_size = fs::metadata(&root).at("stat", &root)?.len();
    for (slot, uki) in spec.ukis {
        let dest = content.join(format!("uki-{slot}.efi"));
        fs::copy(uki, &dest).at("copy", uki)?;
        fs::set_permissions(&dest, fs::Permissions::from_mode(0o644)).at("chmod", &dest)?;
    }
    let hook = content.join("hook");
    fs::write(&hook, SLOT_HOOK).at("write", &hook)?;
    fs::set_permissions(&hook, fs::Permissions::from_mode(0o755)).at("chmod", &hook)?;
    let plain = manifest(spec, &root_sha, root_size);
    let manifest_path = content.join("manifest.raucm");
    fs::write(&manifest_path, &plain).at("write", &manifest_path)?;

    let payload = work.join("bundle.payload");
    let _ = fs::remove_file(&payload);
    let epoch = spec.epoch.to_string();
    tool("mksquashfs")
        .timeout(Duration::from_secs(900))
        .arg(&content)
        .arg(&payload)
        // rauc's own flags, plus fixed times; the payload is already compressed (-noD -noF).
        .args([
            "-all-root",
            "-noappend",
            "-no-progress",
            "-no-xattrs",
            "-noD",
            "-noF",
        ])
        .args(["-all-time", &epoch, "-mkfs-time", &epoch])
        .env_remove("SOURCE_DATE_EPOCH")
        .run()?;
    let payload_size = fs::metadata(&payload).at("stat", &payload)?.len();
    let salt = derive_salt(&payload)?;
    let out_verity = tool("veritysetup")
        .args([
            "format",
            "--no-superblock",
            "--hash=sha256",
            "--data-block-size=4096",
            "--hash-block-size=4096",
        ])
        .arg(format!("--data-blocks={}", payload_size / BLOCK))
        .arg(format!("--hash-offset={payload_size}"))
        .arg(format!("--salt={salt}"))
        .arg(&payload)
        .arg(&payload)
        .run()?;
    let verity_out = out_verity.stdout_text();
    let verity_hash =
        verity::parse_root_hash(&verity_out).ok_or_else(|| VerityError::NoRootHash {
            output: verity_out.clone(),
        })?;
    let verity_size = fs::metadata(&payload).at("stat", &payload)?.len() - payload_size;

    let signed = work.join("manifest.signed");
    fs::write(
        &signed,
        signed_manifest(&plain, &verity_hash, &salt, verity_size),
    )
    .at("write", &signed)?;
    let signature = work.join("manifest.cms");
    tool("openssl")
        .frozen_clock(spec.epoch)?
        .args([
            "cms",
            "-sign",
            "-binary",
            "-nodetach",
            "-nosmimecap",
            "-md",
            "sha256",
            "-outform",
            "DER",
        ])
        .arg("-signer")
        .arg(&keys.cert)
        .arg("-inkey")
        .arg(&keys.key)
        .arg("-in")
        .arg(&signed)
        .arg("-out")
        .arg(&signature)
        .run()?;
    let sig = fs::read(&signature).at("read", &signature)?;
    {
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(&payload)
            .at("open", &payload)?;
        file.write_all(&sig).at("append signature to", &payload)?;
        file.write_all(&(sig.len() as u64).to_be_bytes())
            .at("append signature to", &payload)?;
        file.sync_all().at("sync", &payload)?;
    }
    check_with_rauc(&payload, spec.compatible, &keys.cert, work)?;
    fs::rename(&payload, out).at("move", out)?;
    Ok(())
}

/// The verity salt: SHA256 of the payload, so it is fixed for fixed content.
fn derive_salt(payload: &Path) -> Result<String, BundleError> {
    Ok(crate::publish::sha256_file(payload)?)
}

/// `rauc info` with a keyring of `cert` (check-purpose=codesign): the signature must verify.
pub fn check_with_rauc(
    bundle: &Path,
    compatible: &str,
    cert: &Path,
    work: &Path,
) -> Result<String, BundleError> {
    // rauc resolves a relative keyring path against the config file's directory.
    let cert = &fs::canonicalize(cert).at("find", cert)?;
    let conf = work.join("rauc-check.conf");
    fs::write(
        &conf,
        format!(
            "[system]\ncompatible={compatible}\nbootloader=noop\n\n[keyring]\npath={}\ncheck-purpose=codesign\n\n\
             [slot.rootfs.0]\ndevice=/dev/null\ntype=raw\n",
            cert.display()
        ),
    )
    .at("write", &conf)?;
    let out = tool("rauc")
        .arg(format!("--conf={}", conf.display()))
        .arg("info")
        .arg(bundle)
        .run()?;
    Ok(out.stdout_text())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_manifest_adds_verity_fields_under_bundle() {
        let spec = BundleSpec {
            compatible: "c",
            version: "1",
            build: "2",
            root_image: Path::new("/x"),
            ukis: &[],
            epoch: 0,
        };
        let plain = manifest(&spec, "aa", 10);
        let signed = signed_manifest(&plain, "hh", "ss", 4096);
        assert!(signed.contains(
            "[bundle]\nformat=verity\nverity-hash=hh\nverity-salt=ss\nverity-size=4096\n"
        ));
        assert!(signed.contains(
            "[image.rootfs]\nsha256=aa\nsize=10\nfilename=root.img\nhooks=post-install\n"
        ));
        assert!(signed.contains("\n[hooks]\nfilename=hook\n"));
    }

    #[test]
    fn bundle_is_reproducible_and_rauc_verifies_it() {
        let tools = ["rauc", "mksquashfs", "veritysetup", "openssl"];
        if !tools.iter().all(|t| crate::tool::is_installed(t)) {
            eprintln!(
                "SKIP: rauc/squashfs-tools/cryptsetup-bin/openssl missing (dev/image-packages.txt)"
            );
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let keys = crate::keys::generate(&dir.path().join("keys"), "test").unwrap();
        let root = dir.path().join("root.img");
        fs::write(
            &root,
            (0..200_000u32)
                .flat_map(|i| i.to_le_bytes())
                .collect::<Vec<u8>>(),
        )
        .unwrap();
        let mut ukis = Vec::new();
        for slot in ['a', 'b'] {
            let uki = dir.path().join(format!("cairn-{slot}.efi"));
            fs::write(&uki, format!("MZ uki of slot {slot}")).unwrap();
            ukis.push((slot, uki));
        }
        let spec = BundleSpec {
            compatible: "cairn-test",
            version: "1.0",
            build: "1",
            root_image: &root,
            ukis: &ukis,
            epoch: 1_735_689_600,
        };
        let mut bundles = Vec::new();
        for name in ["one", "two"] {
            let out = dir.path().join(format!("{name}.raucb"));
            make_bundle(&spec, &keys, &out, &dir.path().join(name)).unwrap();
            bundles.push(fs::read(&out).unwrap());
        }
        assert!(
            bundles[0] == bundles[1],
            "two bundles from the same inputs differ"
        );
        let info = check_with_rauc(
            &dir.path().join("one.raucb"),
            "cairn-test",
            &keys.cert,
            dir.path(),
        )
        .unwrap();
        assert!(
            info.contains("Bundle Format: \tverity") || info.contains("verity"),
            "{info}"
        );
        // rauc accepts the [hooks] section and shows the rootfs image's slot hook (RAUC 1.8
        // prints no hook file name; its bundle-level `Hooks:` are install hooks, none here).
        assert!(info.contains("Hooks:     post-install"), "{info}");
        // The payload holds the UKIs and an executable hook.
        if crate::tool::is_installed("unsquashfs") {
            let out = tool("unsquashfs")
                .arg("-lls")
                .arg(dir.path().join("one.raucb"))
                .run()
                .unwrap();
            let listing = out.stdout_text();
            for name in ["uki-a.efi", "uki-b.efi", "root.img"] {
                assert!(listing.contains(name), "{name} missing: {listing}");
            }
            assert!(listing.contains("-rwxr-xr-x root/root"), "{listing}");
        }
        // Another key's certificate must not verify it.
        let other = crate::keys::generate(&dir.path().join("other"), "other").unwrap();
        assert!(check_with_rauc(
            &dir.path().join("one.raucb"),
            "cairn-test",
            &other.cert,
            dir.path()
        )
        .is_err());
    }
}
