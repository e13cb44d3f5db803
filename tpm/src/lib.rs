//! TPM 2.0 operations for Cairn devices (tss-esapi): the device signing key and the endorsement
//! key identity. Later: sealing the data-disk key to a PCR policy.
//!
//! - [`TpmDeviceKey`]: a non-exportable ECC P-256 signing key under the owner hierarchy, kept on
//!   disk as a TPM-wrapped blob (useless without this TPM), used for the device's TLS identity.
//! - [`ek_public_sha256`]: the hash enrollment uses to recognise the device's TPM.
//! - [`parse_tcti`]: the TCTI strings Cairn accepts (`device:/dev/tpmrm0`, `swtpm:...`, `mssim:...`).
//!
//! All calls block on the TPM: from async code run them in `spawn_blocking`. Every TPM call runs in
//! a `tracing` span named `tpm.*`; no key material is ever logged.

#![warn(missing_docs)]

mod blob;
mod der;
mod ek;
mod error;
mod key;
mod tcti;

pub use ek::ek_public_sha256;
pub use error::TpmError;
pub use key::TpmDeviceKey;
pub use tcti::parse_tcti;
