//! A software TPM for the fleet simulator and benchmarks (cargo feature `emulator`, off by
//! default): thousands of devices that prove "their TPM" at enrollment without swtpm processes.
//!
//! **Its "vendor" CA is the emulator's own.** [`EmulatorVendor`] is a CA made in memory that
//! certifies the EK of every [`SoftwareTpm`] it makes, as a TPM maker certifies the EK it writes
//! into a real TPM. Central has no test mode: it verifies these devices exactly like real ones
//! (EK certificate path, AK and device key policy, certification, MakeCredential, quotes) and
//! trusts them only because whoever started it (an operator, a benchmark) listed
//! [`EmulatorVendor::ca_cert_pem`] in its `tpm_vendor_cas`. Never list an emulator CA in
//! production: anyone holding the emulator can then enroll as a "TPM-proven" device.
//!
//! What a [`SoftwareTpm`] holds and does, as a TPM with tpm2-tools would:
//! - an RSA-2048 endorsement key with its certificate (TCG EK shape: empty subject, critical
//!   subject alternative name naming the TPM manufacturer, EKU 2.23.133.8.1, keyEncipherment);
//! - an attestation key: a restricted ECC P-256 ECDSA-SHA256 signing key (`tpm2_createak`);
//! - [`SoftwareTpm::device_key_public`]: the public area of a non-restricted P-256 signing key
//!   for a key the caller holds (the TLS key of a simulated device);
//! - [`SoftwareTpm::certify`], [`SoftwareTpm::quote`]: TPMS_ATTEST structures signed by the AK;
//! - [`SoftwareTpm::activate_credential`]: TPM2_ActivateCredential with the EK's private key,
//!   for the AK only.
//!
//! Nothing here is hardened: private keys live in process memory, and the "PCRs" are whatever
//! the caller passes.
//!
//! - `vendor.rs`: the CA and the EK certificates it issues.
//! - `tpm.rs`: the software TPM.

mod tpm;
mod vendor;

#[cfg(test)]
mod tests;

pub use tpm::{Evidence, SignedAttestation, SoftwareTpm, EMULATOR_FIRMWARE_VERSION};
pub use vendor::EmulatorVendor;

use crate::tpm2::WireError;

/// The software TPM refused an operation. The messages say what the caller passed wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EmulatorError {
    /// The EK key given to [`EmulatorVendor::tpm_with_ek`] is not one a TPM's default RSA EK
    /// can be.
    #[error(
        "the emulator's endorsement key must be RSA-2048 with exponent 65537 (the TCG default \
         EK template): {reason}"
    )]
    UnsupportedEk {
        /// What is wrong with it.
        reason: String,
    },

    /// rcgen could not make the EK certificate.
    #[error("the emulator's vendor CA could not certify the EK: {reason}")]
    Certificate {
        /// rcgen's error.
        reason: String,
    },

    /// The device key is not an uncompressed P-256 SubjectPublicKeyInfo.
    #[error(
        "the device key is not an ECC P-256 SubjectPublicKeyInfo (DER, uncompressed point): \
         pass the DER public key of a P-256 key, as a CSR carries it"
    )]
    NotP256DeviceKey,

    /// The object to certify is not a public area the TPM could have loaded.
    #[error("the emulator cannot certify this object: {0}; pass the bytes of device_key_public")]
    Malformed(#[source] WireError),

    /// Qualifying data or a nonce longer than a TPM2B_DATA holds.
    #[error(
        "the {what} is {len} bytes; a TPM takes at most {max} (TPM2B_DATA): pass a digest, \
         not the data itself"
    )]
    DataTooLong {
        /// `qualifying data` or `nonce`.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The most a TPM takes.
        max: usize,
    },

    /// A PCR index the TPM does not have.
    #[error("PCR {index} does not exist; a TPM has PCRs 0 to 23")]
    NoSuchPcr {
        /// The index asked for.
        index: u8,
    },

    /// The system random number generator failed while signing.
    #[error(
        "the system random number generator failed while the AK signed; check getrandom and retry"
    )]
    Random,
}
