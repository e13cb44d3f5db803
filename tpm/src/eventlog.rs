//! Reading the firmware's TPM event log from securityfs. The parser and replay are pure and live
//! in `cairn_attest::eventlog` (central parses the same log from the device); this file does only
//! the file I/O and re-exports the parsed types.

use std::path::Path;

pub use cairn_attest::eventlog::{EventLog, EventLogError, LogEvent};

/// Where Linux exposes the firmware event log.
pub const FIRMWARE_EVENT_LOG: &str = "/sys/kernel/security/tpm0/binary_bios_measurements";

/// Why the event log file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadEventLogError {
    /// The log file could not be read.
    #[error("cannot read the TPM event log {path}: {source}; is securityfs mounted (mount -t securityfs securityfs /sys/kernel/security) and does the firmware provide a TPM2 event log?")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The file is not a crypto-agile event log.
    #[error("{path}: {source}")]
    Malformed {
        /// The file.
        path: String,
        /// What is wrong, and where.
        #[source]
        source: EventLogError,
    },
}

/// Read and parse the event log at `path` (normally [`FIRMWARE_EVENT_LOG`]).
///
/// # Errors
/// [`ReadEventLogError::Read`] when the file cannot be read, [`ReadEventLogError::Malformed`]
/// when it is not a crypto-agile log.
pub fn read_event_log(path: &Path) -> Result<EventLog, ReadEventLogError> {
    let _span = tracing::debug_span!("tpm.eventlog.read", path = %path.display()).entered();
    let bytes = std::fs::read(path).map_err(|source| ReadEventLogError::Read {
        path: path.display().to_string(),
        source,
    })?;
    EventLog::parse(&bytes).map_err(|source| ReadEventLogError::Malformed {
        path: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_names_the_path_and_securityfs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("binary_bios_measurements");
        let err = read_event_log(&path).unwrap_err();
        assert!(matches!(err, ReadEventLogError::Read { .. }), "{err}");
        let message = err.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("securityfs"), "{message}");
    }

    #[test]
    fn a_file_that_is_not_a_log_is_malformed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, b"not an event log").unwrap();
        let err = read_event_log(&path).unwrap_err();
        assert!(
            matches!(
                err,
                ReadEventLogError::Malformed {
                    source: EventLogError::Malformed { .. },
                    ..
                }
            ),
            "{err}"
        );
    }
}
