//! cairn-e2e: the QEMU end-to-end tier of Cairn's tests.
//!
//! [`image`] finds or builds the disk image under test, [`vm`] boots it under
//! `qemu-system-x86_64 -accel tcg` with OVMF Secure Boot and a [`swtpm`] TPM, user-mode
//! networking (host = 10.0.2.2) and the serial console in a file, and waits for markers the guest
//! prints (`CAIRN-READY`, `CAIRN-CHECK ...` from the image's cairn-boot-report unit).

pub mod image;
pub mod swtpm;
pub mod vm;

pub use vm::{Vm, VmError, VmOptions};

/// The two-service app the QEMU tests and the demo deploy from central: `web` serves a page;
/// `client` keeps `marker` in its volume on /data and is healthy when the marker is there and it
/// fetched the page from `web` by name over the app's network (then it syncs). Images come from
/// [`vm::GUEST_REGISTRY`] as `cairn/box:1` (a busybox image).
pub fn demo_app(marker: &str) -> String {
    demo_app_with_secret(marker, None)
}

/// [`demo_app`] whose `client` also needs secret `demo_token` (`/run/secrets/demo_token`), and
/// is healthy only while that file's SHA-256 is `secret_sha256` (the value itself stays out of
/// the Compose file, which central and the device store in the clear).
pub fn demo_app_with_secret(marker: &str, secret_sha256: Option<&str>) -> String {
    let image = format!("{}/cairn/box:1", vm::GUEST_REGISTRY);
    let (uses, check, declared) = match secret_sha256 {
        Some(sha) => (
            "\n    secrets: [demo_token]".to_owned(),
            format!(" && sha256sum /run/secrets/demo_token | grep -q {sha}"),
            "secrets:\n  demo_token: {}\n",
        ),
        None => (String::new(), String::new(), ""),
    };
    format!(
        r#"services:
  web:
    image: {image}
    command: ["sh", "-c", "mkdir -p /www && echo hello-from-web > /www/index.html && exec httpd -f -p 8080 -h /www"]
    restart: always
  client:
    image: {image}
    command: ["sh", "-c", "echo client up {marker}; [ -f /state/marker ] || echo {marker} > /state/marker; trap 'exit 0' TERM; while true; do sleep 1; done"]
    volumes: ["state:/state"]{uses}
    restart: always
    healthcheck:
      test: ["CMD", "sh", "-c", "grep -q {marker} /state/marker && wget -O - http://web:8080/ | grep -q hello-from-web{check} && sync"]
      interval: 2s
      retries: 1
volumes:
  state: {{}}
{declared}"#
    )
}

/// A test's working directory `target/cairn-e2e/vms/NAME`: created empty, removed when the test
/// passes and kept when it fails (serial log, QEMU's stderr and the disks to inspect). Images and
/// disks take gigabytes, and CI runs every QEMU test on one disk, so a passed test leaves nothing.
/// Declare it first in a test, so it is dropped last, after the VM and central it holds.
pub struct WorkDir(std::path::PathBuf);

impl WorkDir {
    /// Empty `target/cairn-e2e/vms/NAME` (anything a previous run kept there is removed).
    pub fn fresh(name: &str) -> WorkDir {
        let dir = image::target_dir().join("cairn-e2e/vms").join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        WorkDir(dir)
    }
}

impl std::ops::Deref for WorkDir {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl AsRef<std::path::Path> for WorkDir {
    fn as_ref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "kept {} for inspection (serial.log, qemu.stderr, disks)",
                self.0.display()
            );
        } else if let Err(e) = std::fs::remove_dir_all(&self.0) {
            eprintln!("could not remove {}: {e}", self.0.display());
        }
    }
}

/// Marker printed on the console by the image once booted (see cairn-image's boot-report).
pub const READY: &str = cairn_image::overlay::READY_MARKER;

/// Parse `key=value` fields of a `CAIRN-CHECK ...` line.
pub fn check_fields(line: &str) -> std::collections::BTreeMap<String, String> {
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_check_lines() {
        let f = super::check_fields(
            "[  1.0] x CAIRN-CHECK secureboot=1 root=/dev/mapper/root root_ro=1",
        );
        assert_eq!(f["secureboot"], "1");
        assert_eq!(f["root"], "/dev/mapper/root");
    }
}
