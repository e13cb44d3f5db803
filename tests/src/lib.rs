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
    let image = format!("{}/cairn/box:1", vm::GUEST_REGISTRY);
    format!(
        r#"services:
  web:
    image: {image}
    command: ["sh", "-c", "mkdir -p /www && echo hello-from-web > /www/index.html && exec httpd -f -p 8080 -h /www"]
    restart: always
  client:
    image: {image}
    command: ["sh", "-c", "[ -f /state/marker ] || echo {marker} > /state/marker; trap 'exit 0' TERM; while true; do sleep 1; done"]
    volumes: ["state:/state"]
    restart: always
    healthcheck:
      test: ["CMD", "sh", "-c", "grep -q {marker} /state/marker && wget -O - http://web:8080/ | grep -q hello-from-web && sync"]
      interval: 2s
      retries: 1
volumes:
  state: {{}}
"#
    )
}


/// Make a child process get SIGKILL when the process (thread) that started it dies, so a
/// killed test or `cairn-vm` never leaves QEMU or swtpm running.
pub(crate) fn kill_with_parent(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
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
