//! Checks on the device's TPM keys and the evidence they sign.
//!
//! - [`check_attestation_key`] / [`check_device_key`]: the key's public area says what the TPM
//!   enforces (fixedTPM, restricted, ...); a key without those properties proves nothing.
//! - [`verify_certify`]: the attestation key vouches that the device key lives in the same TPM.
//! - [`verify_quote`]: the attestation key signed the PCR values the device reported, for
//!   central's nonce.
//!
//! Architecture invariant: pure functions over bytes; the AK's public area itself is trusted only
//! once its name has been bound to the EK by MakeCredential/ActivateCredential
//! ([`crate::credential`]).

mod certify;
mod policy;
mod quote;
mod signature;

pub use certify::verify_certify;
pub use policy::{check_attestation_key, check_device_key};
pub use quote::{verify_quote, QuoteInfo};
pub use signature::MAX_SIGNATURE_LEN;

use crate::tpm2::WireError;

/// A key or a piece of TPM evidence failed a check. Each variant names what failed; the messages
/// say what the device or operator should do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The key is not an ECC NIST P-256 key.
    #[error(
        "the {role} is not an ECC NIST P-256 key ({found}): the device must create it with the \
         Cairn template (ecc256, ECDSA-SHA256)"
    )]
    NotP256 {
        /// Which key (`attestation key`, `device key`).
        role: &'static str,
        /// What it is instead.
        found: String,
    },

    /// A TPM object attribute the role requires is not set.
    #[error(
        "the {role} lacks the TPM object attribute {attribute}: the TPM does not enforce what \
         Cairn relies on; the device must re-create the key with the Cairn template"
    )]
    MissingAttribute {
        /// Which key.
        role: &'static str,
        /// The attribute's name in the TPM specification (e.g. `fixedTPM`).
        attribute: &'static str,
    },

    /// A TPM object attribute the role forbids is set.
    #[error(
        "the {role} has the TPM object attribute {attribute}, which Cairn refuses for it: the \
         device must re-create the key with the Cairn template"
    )]
    ForbiddenAttribute {
        /// Which key.
        role: &'static str,
        /// The attribute's name in the TPM specification (e.g. `decrypt`).
        attribute: &'static str,
    },

    /// The key's signing scheme is not ECDSA with SHA-256.
    #[error(
        "the {role}'s signing scheme is {found}, not ECDSA with SHA-256: the device must \
         re-create the key with the Cairn template"
    )]
    WrongScheme {
        /// Which key.
        role: &'static str,
        /// The scheme found.
        found: String,
    },

    /// The TPM device key is not the key of the certificate request.
    #[error(
        "the TPM device key is not the key in the certificate signing request: the CSR was not \
         made with the certified TPM key; the device must build its CSR from its TPM device key"
    )]
    DeviceKeyMismatch,

    /// A structure from the device could not be parsed.
    #[error("the {what} from the device is malformed: {source}")]
    Malformed {
        /// What was being parsed (e.g. `attestation key public area`).
        what: &'static str,
        /// The parse error.
        #[source]
        source: WireError,
    },

    /// The signature is longer than an ECDSA P-256 signature can be.
    #[error(
        "the {what} signature is {len} bytes, more than the {max} an ECDSA P-256 signature takes: \
         the device must send the DER signature unchanged"
    )]
    SignatureTooLarge {
        /// `certify` or `quote`.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The largest accepted.
        max: usize,
    },

    /// The signature does not verify with the attestation key.
    #[error(
        "the {what} signature does not verify with the attestation key: the evidence was not \
         signed by this TPM's attestation key or was altered; refuse it and have the device \
         attest again"
    )]
    BadSignature {
        /// `certify` or `quote`.
        what: &'static str,
    },

    /// The attestation is of another type than the one expected.
    #[error(
        "the attestation is a {found}, not a {expected}: the device sent the wrong evidence; \
         refuse it"
    )]
    WrongAttestType {
        /// `certify` or `quote`.
        expected: &'static str,
        /// What it is.
        found: &'static str,
    },

    /// TPM2_Certify certified another object than the device key presented.
    #[error(
        "the attestation key certified the TPM object {certified}, not the device key {expected}: \
         the device must certify the key it presents"
    )]
    CertifiedNameMismatch {
        /// Hex of the name of the key presented.
        expected: String,
        /// Hex of the name the TPM certified.
        certified: String,
    },

    /// TPM2_Certify's qualifying data is not central's challenge.
    #[error(
        "the certification's qualifying data is not the challenge central issued: the evidence is \
         stale or replayed; the device must certify again with the current challenge"
    )]
    ExtraDataMismatch,

    /// The quote's nonce is not the one central sent.
    #[error(
        "the quote's nonce is not the nonce central sent: the quote is stale or replayed; the \
         device must quote again with the current nonce"
    )]
    NonceMismatch,

    /// The quote does not cover exactly the PCRs the device reported.
    #[error(
        "the quote selects {found}, but the device reported SHA-256 PCRs {expected}: the device \
         must quote exactly the SHA-256 PCRs it reports, in one bank"
    )]
    PcrSelectionMismatch {
        /// The PCRs the device reported values for.
        expected: String,
        /// The selection the quote carries.
        found: String,
    },

    /// The quote's PCR digest is not the digest of the reported PCR values.
    #[error(
        "the quote's PCR digest does not match the PCR values the device reported: the quote \
         covers other values (the PCRs changed, or the report is false); the device must read \
         the PCRs and quote again"
    )]
    PcrDigestMismatch,
}

#[cfg(test)]
mod tests;
