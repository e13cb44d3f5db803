//! TCTI strings (how to reach the TPM) and opening a TPM context.

use std::str::FromStr;
use std::sync::Once;

use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::Context;

use crate::{TpmDeviceKey, TpmError};

/// Parse a TCTI string into a [`TctiNameConf`].
///
/// Accepted forms: `device:/dev/tpmrm0` (or `device` for the default device),
/// `swtpm:host=127.0.0.1,port=2321`, `mssim:host=...,port=...` and `tabrmd:...`.
///
/// # Errors
/// [`TpmError::BadTcti`] naming the string and the expected forms.
pub fn parse_tcti(tcti: &str) -> Result<TctiNameConf, TpmError> {
    let trimmed = tcti.trim();
    if trimmed.is_empty() {
        return Err(bad_tcti(tcti, "empty string"));
    }
    let kind = trimmed.split(':').next().unwrap_or_default();
    if !matches!(kind, "device" | "swtpm" | "mssim" | "tabrmd") {
        return Err(bad_tcti(
            tcti,
            &format!("unknown TCTI kind {kind:?} (known: device, swtpm, mssim, tabrmd)"),
        ));
    }
    TctiNameConf::from_str(trimmed).map_err(|e| bad_tcti(tcti, &format!("bad {kind} options: {e}")))
}

fn bad_tcti(tcti: &str, reason: &str) -> TpmError {
    TpmError::BadTcti {
        tcti: tcti.to_string(),
        reason: reason.to_string(),
    }
}

/// Open a TPM context for `tcti`, after silencing the TSS C library's own logging.
pub(crate) fn open_context(tcti: &str) -> Result<Context, TpmError> {
    silence_tss_c_logging();
    let conf = parse_tcti(tcti)?;
    let _span = tracing::info_span!("tpm.open", tcti).entered();
    Context::new(conf).map_err(|source| TpmError::OpenTcti {
        tcti: tcti.to_string(),
        source,
    })
}

/// Set `TSS2_LOG=all+none` once unless the operator set it: the C library otherwise prints its own
/// warnings and errors to stderr, outside our tracing. Set before the first TSS call reads it.
fn silence_tss_c_logging() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("TSS2_LOG").is_none() {
            std::env::set_var("TSS2_LOG", "all+none");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use tss_esapi::tcti_ldr::DeviceConfig;

    #[test]
    fn parses_known_forms() {
        assert_eq!(
            parse_tcti("device:/dev/tpmrm0").unwrap(),
            TctiNameConf::Device(DeviceConfig::from_str("/dev/tpmrm0").unwrap())
        );
        assert!(matches!(
            parse_tcti("swtpm:host=127.0.0.1,port=2321").unwrap(),
            TctiNameConf::Swtpm(_)
        ));
        assert!(matches!(
            parse_tcti("mssim:host=127.0.0.1,port=2321").unwrap(),
            TctiNameConf::Mssim(_)
        ));
    }

    #[test]
    fn rejects_garbage_with_a_clear_error() {
        for bad in [
            "",
            "tpm0",
            "nonsense:foo",
            "swtpm:port=notaport",
            "swtpm:host=a b,port=1",
        ] {
            let err = parse_tcti(bad).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, TpmError::BadTcti { .. }), "{bad}: {msg}");
            assert!(msg.contains("device:/dev/tpmrm0"), "{bad}: {msg}");
        }
    }
}

/// Where a TPM call runs: on a new connection through a TCTI string, or on the connection an
/// open [`TpmDeviceKey`] already holds.
///
/// swtpm (reached over TCP, with no resource manager) serves one connection at a time, so a
/// process that keeps a device key open on it must run every other TPM call through that key's
/// connection; `/dev/tpmrm0` has no such limit and either works.
#[derive(Debug, Clone, Copy)]
pub enum TpmAccess<'a> {
    /// Open a connection for the call, close it after.
    Tcti(&'a str),
    /// Use this open device key's connection (it is locked for the call).
    DeviceKey(&'a TpmDeviceKey),
}

impl<'a> From<&'a str> for TpmAccess<'a> {
    fn from(tcti: &'a str) -> Self {
        TpmAccess::Tcti(tcti)
    }
}

impl<'a> From<&'a String> for TpmAccess<'a> {
    fn from(tcti: &'a String) -> Self {
        TpmAccess::Tcti(tcti)
    }
}

impl<'a> From<&'a TpmDeviceKey> for TpmAccess<'a> {
    fn from(key: &'a TpmDeviceKey) -> Self {
        TpmAccess::DeviceKey(key)
    }
}

impl TpmAccess<'_> {
    /// Run `f` with a TPM context: a fresh one, or the device key's.
    pub(crate) fn run<R, E: From<TpmError>>(
        self,
        f: impl FnOnce(&mut Context) -> Result<R, E>,
    ) -> Result<R, E> {
        match self {
            TpmAccess::Tcti(tcti) => f(&mut open_context(tcti)?),
            TpmAccess::DeviceKey(key) => key.with_loaded_key(|context, _| f(context)),
        }
    }
}
