//! EK certificate checking: the TPM manufacturer's certificate of the endorsement key, chained to
//! trust anchors the operator configured, proves the EK belongs to a genuine TPM.
//!
//! - [`TrustAnchors`]: the operator's roots and intermediates (PEM or DER), each one trusted.
//! - [`verify_ek_certificate`]: builds the path from the EK certificate through the intermediates
//!   the device sent to an anchor, checks every signature and validity period, and returns the
//!   RSA-2048 EK with its identity hash.
//!
//! TPM EK certificates are unusual X.509: the subject may be empty, the subject alternative name
//! is critical and holds the TPM manufacturer as a directory name, the extended key usage is
//! 2.23.133.8.1, notAfter is often 9999. None of that is refused here.

mod anchors;
mod signature;
mod verify;

pub use anchors::TrustAnchors;
pub use verify::{verify_ek_certificate, VerifiedEk};

/// Most trust anchors accepted.
pub const MAX_TRUST_ANCHORS: usize = 64;
/// Largest certificate accepted (DER).
pub const MAX_CERTIFICATE_LEN: usize = 16 * 1024;
/// Most intermediate certificates the device may send with its EK certificate.
pub const MAX_INTERMEDIATES: usize = 4;

/// The EK certificate (or a trust anchor) was refused. The messages name the certificate and say
/// what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EkCertError {
    /// A certificate or PEM bundle is larger than accepted.
    #[error("{what} is {len} bytes, more than the {max} accepted: it is not a single certificate")]
    TooLarge {
        /// Which input.
        what: String,
        /// Its length.
        len: usize,
        /// The largest accepted.
        max: usize,
    },

    /// More certificates than accepted.
    #[error("{count} {what} given, more than the {max} accepted")]
    TooMany {
        /// `trust anchors` or `intermediate certificates`.
        what: &'static str,
        /// How many were given.
        count: usize,
        /// The most accepted.
        max: usize,
    },

    /// No trust anchor was configured.
    #[error(
        "no trust anchors: configure the TPM manufacturers' EK root (and intermediate) CA \
         certificates, PEM, to verify EK certificates"
    )]
    NoTrustAnchors,

    /// A certificate or PEM block does not parse.
    #[error("{what} is malformed: {reason}")]
    Malformed {
        /// Which certificate (e.g. `the EK certificate`, `trust anchor 2`).
        what: String,
        /// What is wrong.
        reason: String,
    },

    /// The EK certificate's key is not RSA-2048.
    #[error(
        "the EK certificate's key is not supported: {reason}; only RSA-2048 EKs are supported: \
         the device must send the certificate of its RSA EK (NV index 0x01c00002)"
    )]
    UnsupportedEkKey {
        /// What the key is.
        reason: String,
    },

    /// No trust anchor and no supplied intermediate issued a certificate of the path.
    #[error(
        "the certificate \"{subject}\" was issued by \"{issuer}\", which is neither a trust \
         anchor nor among the intermediates the device sent: if this TPM vendor is trusted, add \
         its CA certificate \"{issuer}\" to the EK trust anchors"
    )]
    UntrustedIssuer {
        /// The subject of the certificate whose issuer is unknown.
        subject: String,
        /// Its issuer's distinguished name.
        issuer: String,
    },

    /// A signature in the path does not verify.
    #[error(
        "the signature of the certificate \"{subject}\" does not verify with the key of \
         \"{issuer}\": the certificate is forged or damaged; refuse this TPM"
    )]
    BadSignature {
        /// The signed certificate's subject.
        subject: String,
        /// The issuer whose key was used.
        issuer: String,
    },

    /// A signature algorithm or issuer key type Cairn does not verify.
    #[error(
        "the certificate \"{subject}\" is signed with {reason}; Cairn verifies RSA PKCS#1 v1.5 \
         with SHA-256/384/512 and ECDSA P-256/P-384 with SHA-256/384"
    )]
    UnsupportedSignature {
        /// The signed certificate's subject.
        subject: String,
        /// What is unsupported.
        reason: String,
    },

    /// A certificate of the path is not valid yet.
    #[error(
        "the certificate \"{subject}\" is not valid before {not_before} (now is unix time \
         {now}): check central's clock"
    )]
    NotYetValid {
        /// Its subject.
        subject: String,
        /// Its notBefore.
        not_before: String,
        /// The time checked against, in Unix seconds.
        now: i64,
    },

    /// A certificate of the path has expired.
    #[error(
        "the certificate \"{subject}\" expired at {not_after} (now is unix time {now}): renew \
         the trust anchor, or the device must send a current certificate"
    )]
    Expired {
        /// Its subject.
        subject: String,
        /// Its notAfter.
        not_after: String,
        /// The time checked against, in Unix seconds.
        now: i64,
    },

    /// The leaf certificate is not an endorsement key certificate.
    #[error(
        "the certificate \"{subject}\" is not an endorsement key certificate: {reason}; a TPM \
         vendor CA certified it for something else"
    )]
    NotAnEkCertificate {
        /// Its subject.
        subject: String,
        /// What contradicts the EK profile.
        reason: String,
    },

    /// An intermediate certificate is not a CA allowed to issue at its place in the path.
    #[error(
        "the intermediate certificate \"{subject}\" may not issue certificates: {reason}; the \
         device sent a certificate that is not a CA"
    )]
    NotACa {
        /// Its subject.
        subject: String,
        /// Why not.
        reason: String,
    },
}
