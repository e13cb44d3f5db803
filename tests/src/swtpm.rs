//! A software TPM for a QEMU guest: `swtpm socket --tpm2` with its control channel on a Unix
//! socket (`--ctrl type=unixio`), which QEMU's `tpm-emulator` backend connects to. (The host
//! integration tests' swtpm in cairn-testsupport listens on TCP for TSS clients instead.)

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// swtpm could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SwtpmError {
    /// The program could not be spawned.
    #[error("cannot start swtpm (install the swtpm package): {0}")]
    Spawn(std::io::Error),
    /// The state directory could not be made.
    #[error("cannot create the swtpm state dir {path}: {source}")]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The control socket never appeared.
    #[error("swtpm did not create {socket} within {timeout:?}; its log:\n{log}")]
    NoSocket {
        /// The socket path.
        socket: PathBuf,
        /// How long we waited.
        timeout: Duration,
        /// swtpm's log file.
        log: String,
    },
    /// swtpm_setup failed to manufacture the TPM.
    #[error("cannot manufacture the TPM in {path} with EK certificates: {message}")]
    Manufacture {
        /// The state directory.
        path: PathBuf,
        /// swtpm_setup's failure.
        message: String,
    },
}

/// The file swtpm keeps a TPM 2.0's permanent state in.
const TPM_STATE_FILE: &str = "tpm2-00.permall";

/// A running swtpm serving one QEMU guest; killed and reaped on drop. Its state dir persists
/// (the same TPM across guest reboots when the same dir is used again).
pub struct QemuSwtpm {
    child: Child,
    socket: PathBuf,
}

impl QemuSwtpm {
    /// Start swtpm with state in `state_dir` and the control socket `state_dir/swtpm.sock`.
    /// With `vendor_ca`, a state directory without a TPM is first manufactured with EK
    /// certificates from that CA (see [`cairn_testsupport::VendorCa`]).
    pub fn start(state_dir: &Path, vendor_ca: Option<&Path>) -> Result<QemuSwtpm, SwtpmError> {
        std::fs::create_dir_all(state_dir).map_err(|source| SwtpmError::StateDir {
            path: state_dir.to_path_buf(),
            source,
        })?;
        if let Some(ca) = vendor_ca {
            if !state_dir.join(TPM_STATE_FILE).exists() {
                cairn_testsupport::VendorCa::new(ca)
                    .manufacture(state_dir)
                    .map_err(|e| SwtpmError::Manufacture {
                        path: state_dir.to_path_buf(),
                        message: e.to_string(),
                    })?;
            }
        }
        let socket = state_dir.join("swtpm.sock");
        let log = state_dir.join("swtpm.log");
        let _ = std::fs::remove_file(&socket);
        let mut command = Command::new("swtpm");
        command
            .args(["socket", "--tpm2"])
            .arg("--tpmstate")
            .arg(format!("dir={}", state_dir.display()))
            .arg("--ctrl")
            .arg(format!("type=unixio,path={}", socket.display()))
            .arg("--log")
            .arg(format!("file={},level=5", log.display()))
            .arg("--terminate")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cairn_io::die_with_parent(&mut command);
        let child = command.spawn().map_err(SwtpmError::Spawn)?;
        let mut tpm = QemuSwtpm {
            child,
            socket: socket.clone(),
        };
        let timeout = Duration::from_secs(10);
        let started = Instant::now();
        while !socket.exists() {
            if started.elapsed() > timeout || tpm.child.try_wait().ok().flatten().is_some() {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(SwtpmError::NoSocket {
                    socket,
                    timeout,
                    log,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(tpm)
    }

    /// Kill swtpm and wait for it, so another can start on the same state.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The control socket for QEMU's `-chardev socket,path=...`.
    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

impl Drop for QemuSwtpm {
    fn drop(&mut self) {
        self.stop();
    }
}
