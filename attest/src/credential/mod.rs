//! TPM2_MakeCredential done in software (TPM 2.0 Part 1 §24, Part 3 §12.6): central encrypts a
//! secret so that only the TPM holding the EK can recover it, and only for the object (the
//! attestation key) whose name it was made for. The device answers with TPM2_ActivateCredential;
//! knowing the secret proves the AK lives in the TPM of that EK.
//!
//! - [`EkPublicKey`]: the RSA-2048 EK public key, from its certificate or its TPM public area, and
//!   its identity hash (the same as `cairn_tpm::ek_public_sha256` on the device).
//! - [`make_credential`]: the `credentialBlob` and `secret` of TPM2_MakeCredential.
//! - With the `emulator` feature, `ActivateError`: why the software TPM's ActivateCredential (the
//!   inverse, with the EK's private key) refused a credential.

mod ek_public;
mod kdf;
mod make;

#[cfg(any(test, feature = "emulator"))]
mod activate;

#[cfg(feature = "emulator")]
pub(crate) use activate::activate_credential;
#[cfg(feature = "emulator")]
pub use activate::ActivateError;
pub use ek_public::EkPublicKey;
pub use make::{make_credential, MadeCredential, MAX_CREDENTIAL_LEN};

/// MakeCredential could not be done. The messages say what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialError {
    /// The EK is not an RSA-2048 key of the default TCG template.
    #[error(
        "unsupported endorsement key: {reason}; only RSA-2048 EKs are supported (the TCG default \
         template: name algorithm SHA-256, AES-128-CFB); the device's TPM must provide its RSA \
         EK (handle 0x81010001, certificate in NV index 0x01c00002)"
    )]
    UnsupportedEk {
        /// What is wrong with it.
        reason: String,
    },

    /// The EK public key is not valid DER or not a valid RSA key.
    #[error("the endorsement key public key is malformed: {reason}; the device must send its EK unchanged")]
    MalformedEk {
        /// What is wrong with it.
        reason: String,
    },

    /// The object name is not a TPM name.
    #[error(
        "the object name is {len} bytes; a TPM name is a 2-byte algorithm and a digest of at most \
         64 bytes: pass the attestation key's TPM name"
    )]
    BadObjectName {
        /// Its length.
        len: usize,
    },

    /// The credential is empty or longer than a SHA-256 digest.
    #[error("the credential is {len} bytes; it must be 1 to {max} bytes (the EK name algorithm's digest size)")]
    BadCredentialLength {
        /// Its length.
        len: usize,
        /// The largest accepted.
        max: usize,
    },

    /// The random number generator failed.
    #[error(
        "the system random number generator failed; check central's host (getrandom) and retry"
    )]
    Random,

    /// RSA-OAEP encryption of the seed failed.
    #[error("RSA-OAEP encryption of the credential seed to the endorsement key failed: {reason}")]
    Encrypt {
        /// The RSA library's error.
        reason: String,
    },
}
