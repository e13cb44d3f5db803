//! A real software TPM 2.0 (`swtpm socket`) for host integration tests.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::ports::{free_port, port_is_free, reserve};
use crate::VendorCa;

/// How long to wait for a started swtpm to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for swtpm to exit after a shutdown request before killing it.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How many port pairs to try when another process takes the one we picked.
const START_ATTEMPTS: usize = 5;
/// swtpm control channel command `CMD_SHUTDOWN` (swtpm's `tpm_ioctl.h`).
const CTRL_CMD_SHUTDOWN: u32 = 3;

/// Why one attempt to start swtpm failed ([`Swtpm`] retries on other ports).
#[derive(Debug, thiserror::Error)]
enum StartError {
    /// swtpm could not be run.
    #[error("cannot run `swtpm` (is the swtpm package installed?): {0}")]
    Spawn(#[source] std::io::Error),
    /// swtpm exited before it listened.
    #[error("swtpm on port {port} exited early with {status}\n{diagnostics}")]
    ExitedEarly {
        /// Its server port.
        port: u16,
        /// How it ended.
        status: ExitStatus,
        /// Its stderr and log.
        diagnostics: String,
    },
    /// swtpm did not listen in time (it was killed).
    #[error(
        "swtpm on port {port} did not accept connections within {START_TIMEOUT:?}\n{diagnostics}"
    )]
    NotListening {
        /// Its server port.
        port: u16,
        /// Its stderr and log.
        diagnostics: String,
    },
}

/// Where a [`Swtpm`] keeps its TPM state: a temp dir it owns, or a dir the test owns.
enum StateDir {
    Owned(tempfile::TempDir),
    Borrowed(PathBuf),
}

impl StateDir {
    fn path(&self) -> &Path {
        match self {
            StateDir::Owned(dir) => dir.path(),
            StateDir::Borrowed(path) => path,
        }
    }
}

/// A running `swtpm socket --tpm2` on free loopback TCP ports (server on `port`, control channel
/// on `port + 1`), already started up (`TPM2_Startup(CLEAR)`). Shut down and reaped on drop.
///
/// The TPM state (seeds, NV) lives in a directory: [`Swtpm::start`] uses a fresh temp dir (a new
/// TPM, like a new machine); [`Swtpm::start_in`] or [`Swtpm::restart`] reuse a state dir (the same
/// TPM after a reboot). [`Swtpm::start_with_ek_cert`] manufactures the new TPM first, like a TPM
/// maker: its EK certificates, signed by a [`VendorCa`], are in NV.
///
/// swtpm serves one TPM connection at a time: a second client (another TPM context) waits until
/// the first closes its connection.
pub struct Swtpm {
    child: Option<Child>,
    port: u16,
    state: StateDir,
}

impl Swtpm {
    /// Start a new TPM with fresh state in a temp dir that is removed on drop.
    ///
    /// # Panics
    /// When swtpm is not installed, the temp dir cannot be made, or swtpm does not come up; the
    /// message says why (with swtpm's log). Call [`crate::require_tool`]`("swtpm")` first to skip.
    pub fn start() -> Swtpm {
        let dir = tempfile::Builder::new()
            .prefix("cairn-swtpm-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temp dir for swtpm state: {e}"));
        Self::launch(StateDir::Owned(dir))
    }

    /// Start a new TPM that has EK certificates in NV, signed by `ca`, like a real TPM from its
    /// maker: `swtpm_setup --create-ek-cert` (RSA-2048 EK certificate at NV index 0x01c00002, an
    /// ECC P-384 one at 0x01c00016; only the SHA-256 PCR bank active) in a fresh temp dir that is
    /// removed on drop, then `swtpm socket` on it. Takes about a second more than
    /// [`Swtpm::start`].
    ///
    /// # Panics
    /// Like [`Swtpm::start`], and when `swtpm_setup` fails (the message carries its output). Call
    /// [`crate::require_tool`] for `swtpm_setup` and `swtpm_localca` first to skip.
    pub fn start_with_ek_cert(ca: &VendorCa) -> Swtpm {
        let dir = tempfile::Builder::new()
            .prefix("cairn-swtpm-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temp dir for swtpm state: {e}"));
        if let Err(e) = ca.manufacture(dir.path()) {
            panic!(
                "cannot manufacture a TPM with EK certificates from the vendor CA in {}: {e}",
                ca.dir().display()
            );
        }
        Self::launch(StateDir::Owned(dir))
    }

    /// Start a TPM whose state lives in `dir` (created if missing, kept on drop). Starting again
    /// with the same dir after the previous instance was dropped is the same TPM after a reboot.
    ///
    /// # Panics
    /// Like [`Swtpm::start`], and when `dir` cannot be created.
    pub fn start_in(dir: impl AsRef<Path>) -> Swtpm {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir)
            .unwrap_or_else(|e| panic!("cannot create swtpm state dir {}: {e}", dir.display()));
        Self::launch(StateDir::Borrowed(dir.to_path_buf()))
    }

    /// Shut this TPM down and start it again with the same state (a reboot: persistent seeds and
    /// NV are kept, transient objects and sessions are gone). The ports may change: read
    /// [`Swtpm::tcti`] again.
    ///
    /// # Panics
    /// Like [`Swtpm::start`].
    pub fn restart(mut self) -> Swtpm {
        self.stop();
        let state = std::mem::replace(&mut self.state, StateDir::Borrowed(PathBuf::new()));
        Self::launch(state)
    }

    /// TCTI string for this TPM, e.g. `swtpm:host=127.0.0.1,port=2321`.
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// TCP port of the TPM command server (the control channel is `port() + 1`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Directory holding this TPM's state.
    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }

    fn launch(state: StateDir) -> Swtpm {
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let Some(port) = free_port_pair() else {
                failures.push("no free pair of adjacent loopback ports".to_string());
                continue;
            };
            match spawn_and_wait(state.path(), port) {
                Ok(child) => {
                    return Swtpm {
                        child: Some(child),
                        port,
                        state,
                    }
                }
                Err(why) => failures.push(why.to_string()),
            }
        }
        panic!(
            "swtpm did not start (state dir {}) after {START_ATTEMPTS} attempts:\n{}",
            state.path().display(),
            failures.join("\n---\n")
        );
    }

    /// Ask swtpm to shut down (so it saves its state cleanly), then reap it; kill it when it does
    /// not exit in time.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = request_shutdown(self.port + 1);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port `p` with `p` and `p + 1` both free on 127.0.0.1.
fn free_port_pair() -> Option<u16> {
    (0..20)
        .map(|_| free_port())
        .find(|&p| p < u16::MAX && port_is_free(p + 1) && reserve(&[p + 1]))
}

/// Spawn swtpm on `port`/`port + 1` and wait until its server port accepts. On failure the child
/// is reaped and the error carries its log.
fn spawn_and_wait(dir: &Path, port: u16) -> Result<Child, StartError> {
    let log = dir.join("swtpm.log");
    let mut child = Command::new("swtpm")
        .arg("socket")
        .arg("--tpm2")
        .arg("--server")
        .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
        .arg("--ctrl")
        .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
        .arg("--tpmstate")
        .arg(format!("dir={}", dir.display()))
        .arg("--flags")
        .arg("not-need-init,startup-clear")
        .arg("--log")
        .arg(format!("file={},level=1", log.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(StartError::Spawn)?;

    let deadline = Instant::now() + START_TIMEOUT;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(StartError::ExitedEarly {
                port,
                status,
                diagnostics: diagnostics(&mut child, &log),
            });
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(child);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(StartError::NotListening {
                port,
                diagnostics: diagnostics(&mut child, &log),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// swtpm's stderr and log file, for a failure message.
fn diagnostics(child: &mut Child, log: &Path) -> String {
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    let log_text = std::fs::read_to_string(log).unwrap_or_default();
    format!(
        "swtpm stderr:\n{stderr}\nswtpm log ({}):\n{log_text}",
        log.display()
    )
}

/// Send `CMD_SHUTDOWN` on the control channel and read the 4-byte result.
fn request_shutdown(ctrl_port: u16) -> std::io::Result<()> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, ctrl_port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(&CTRL_CMD_SHUTDOWN.to_be_bytes())?;
    let mut result = [0u8; 4];
    stream.read_exact(&mut result)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_restarts_and_stops() {
        if !crate::require_tool("swtpm") {
            return;
        }
        let tpm = Swtpm::start();
        let dir = tpm.state_dir().to_path_buf();
        assert!(tpm.tcti().starts_with("swtpm:host=127.0.0.1,port="));
        let tpm = tpm.restart();
        assert_eq!(tpm.state_dir(), dir);
        assert!(
            dir.join("tpm2-00.permall").exists(),
            "swtpm should have written its permanent state into {}",
            dir.display()
        );
        let port = tpm.port();
        drop(tpm);
        assert!(!dir.exists(), "owned state dir should be removed on drop");
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        assert!(TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err());
    }

    #[test]
    fn start_with_ek_cert_writes_the_rsa_ek_certificate_into_nv() {
        if !crate::require_tool("swtpm_setup")
            || !crate::require_tool("swtpm_localca")
            || !crate::require_tool("tpm2_nvreadpublic")
        {
            return;
        }
        let started = Instant::now();
        let ca = VendorCa::temporary();
        let made_ca = started.elapsed();
        let tpm = Swtpm::start_with_ek_cert(&ca);
        eprintln!(
            "vendor CA made in {made_ca:?}, TPM manufactured and started in {:?}",
            started.elapsed() - made_ca
        );
        let output = Command::new("tpm2_nvreadpublic")
            .env("TSS2_LOG", "all+none")
            .arg("-T")
            .arg(tpm.tcti())
            .output()
            .unwrap();
        let listing = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{listing}");
        assert!(listing.contains("0x1c00002"), "{listing}");
        // The state survives a restart like any other.
        let tpm = tpm.restart();
        assert!(tpm.state_dir().join("tpm2-00.permall").exists());
    }

    #[test]
    fn a_failing_swtpm_setup_panics_with_its_output() {
        if !crate::require_tool("swtpm_setup") || !crate::require_tool("swtpm_localca") {
            return;
        }
        let ca = VendorCa::temporary();
        std::fs::write(
            ca.swtpm_setup_conf(),
            "create_certs_tool = /nonexistent/swtpm_localca\nactive_pcr_banks = sha256\n",
        )
        .unwrap();
        let Err(panic) = std::panic::catch_unwind(|| Swtpm::start_with_ek_cert(&ca)) else {
            panic!("a TPM started although swtpm_setup cannot find its certificate tool");
        };
        let message = panic.downcast::<String>().unwrap();
        assert!(message.contains("swtpm_setup"), "{message}");
        assert!(
            message.contains("Could not find /nonexistent/swtpm_localca"),
            "swtpm_setup's own output: {message}"
        );
    }

    #[test]
    fn start_in_keeps_the_dir() {
        if !crate::require_tool("swtpm") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        drop(Swtpm::start_in(&state));
        assert!(state.join("tpm2-00.permall").exists());
    }
}
