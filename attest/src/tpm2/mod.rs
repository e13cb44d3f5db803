//! TPM 2.0 wire structures as the device's TPM marshals them (big-endian, TPM 2.0 Part 2), parsed
//! strictly: every length is checked against the structure's maximum, unknown selectors and
//! trailing bytes are refused. Everything here comes from the network, from a device that may be
//! under attack.
//!
//! - [`TpmPublic`]: a TPMT_PUBLIC (an object's public area) and its TPM name.
//! - [`Attest`]: a TPMS_ATTEST (what a TPM signs in TPM2_Certify and TPM2_Quote).

pub(crate) mod attest;
#[cfg(any(test, feature = "emulator"))]
pub(crate) mod marshal;
pub(crate) mod public;
mod reader;

pub use attest::{Attest, Attested, ClockInfo, PcrSelection, MAX_ATTEST_LEN, MAX_PCR_SELECT_BYTES};
pub use public::{
    EccPublic, ObjectAttributes, PublicKeyParams, RsaPublic, Scheme, SymmetricDefinition,
    TpmPublic, MAX_PUBLIC_LEN,
};

/// TPM_ALG_RSA.
pub const TPM_ALG_RSA: u16 = 0x0001;
/// TPM_ALG_SHA1.
pub const TPM_ALG_SHA1: u16 = 0x0004;
/// TPM_ALG_HMAC.
pub const TPM_ALG_HMAC: u16 = 0x0005;
/// TPM_ALG_AES.
pub const TPM_ALG_AES: u16 = 0x0006;
/// TPM_ALG_MGF1.
pub const TPM_ALG_MGF1: u16 = 0x0007;
/// TPM_ALG_KEYEDHASH.
pub const TPM_ALG_KEYEDHASH: u16 = 0x0008;
/// TPM_ALG_SHA256.
pub const TPM_ALG_SHA256: u16 = 0x000b;
/// TPM_ALG_SHA384.
pub const TPM_ALG_SHA384: u16 = 0x000c;
/// TPM_ALG_SHA512.
pub const TPM_ALG_SHA512: u16 = 0x000d;
/// TPM_ALG_NULL: "no algorithm" in a selector.
pub const TPM_ALG_NULL: u16 = 0x0010;
/// TPM_ALG_SM4.
pub const TPM_ALG_SM4: u16 = 0x0013;
/// TPM_ALG_RSASSA (RSA PKCS#1 v1.5 signatures).
pub const TPM_ALG_RSASSA: u16 = 0x0014;
/// TPM_ALG_RSAES (RSA PKCS#1 v1.5 encryption).
pub const TPM_ALG_RSAES: u16 = 0x0015;
/// TPM_ALG_RSAPSS.
pub const TPM_ALG_RSAPSS: u16 = 0x0016;
/// TPM_ALG_OAEP.
pub const TPM_ALG_OAEP: u16 = 0x0017;
/// TPM_ALG_ECDSA.
pub const TPM_ALG_ECDSA: u16 = 0x0018;
/// TPM_ALG_ECDH.
pub const TPM_ALG_ECDH: u16 = 0x0019;
/// TPM_ALG_ECDAA.
pub const TPM_ALG_ECDAA: u16 = 0x001a;
/// TPM_ALG_SM2.
pub const TPM_ALG_SM2: u16 = 0x001b;
/// TPM_ALG_ECSCHNORR.
pub const TPM_ALG_ECSCHNORR: u16 = 0x001c;
/// TPM_ALG_ECMQV.
pub const TPM_ALG_ECMQV: u16 = 0x001d;
/// TPM_ALG_KDF1_SP800_56A.
pub const TPM_ALG_KDF1_SP800_56A: u16 = 0x0020;
/// TPM_ALG_KDF2.
pub const TPM_ALG_KDF2: u16 = 0x0021;
/// TPM_ALG_KDF1_SP800_108.
pub const TPM_ALG_KDF1_SP800_108: u16 = 0x0022;
/// TPM_ALG_ECC.
pub const TPM_ALG_ECC: u16 = 0x0023;
/// TPM_ALG_SYMCIPHER.
pub const TPM_ALG_SYMCIPHER: u16 = 0x0025;
/// TPM_ALG_CAMELLIA.
pub const TPM_ALG_CAMELLIA: u16 = 0x0026;
/// TPM_ALG_CFB (the block cipher mode of storage keys and the EK).
pub const TPM_ALG_CFB: u16 = 0x0043;
/// TPM_ECC_NIST_P256.
pub const TPM_ECC_NIST_P256: u16 = 0x0003;

/// TPM_GENERATED_VALUE: the magic at the start of every structure a TPM signs.
pub const TPM_GENERATED_VALUE: u32 = 0xff54_4347;
/// TPM_ST_ATTEST_CERTIFY: a TPMS_ATTEST made by TPM2_Certify.
pub const TPM_ST_ATTEST_CERTIFY: u16 = 0x8017;
/// TPM_ST_ATTEST_QUOTE: a TPMS_ATTEST made by TPM2_Quote.
pub const TPM_ST_ATTEST_QUOTE: u16 = 0x8018;

/// Largest TPM name: a 2-byte algorithm and a SHA-512 digest (TPM2B_NAME).
pub const MAX_NAME_LEN: usize = 66;
/// Largest TPM digest (SHA-512), the limit of TPM2B_DIGEST.
pub const MAX_DIGEST_LEN: usize = 64;
/// Size of a SHA-256 digest, and of a SHA-256 PCR value.
pub const SHA256_LEN: usize = 32;

/// A TPM structure from the device could not be parsed. The message names the structure and the
/// field; the structure is refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The structure is longer than any a TPM produces.
    #[error(
        "{structure} is {len} bytes, more than the {max} allowed: it is not a TPM structure of \
         this kind; the device must send its TPM's output unchanged"
    )]
    TooLarge {
        /// The TPM structure (e.g. `TPMT_PUBLIC`).
        structure: &'static str,
        /// Its length as received.
        len: usize,
        /// The largest accepted.
        max: usize,
    },

    /// The structure ends before a field is complete.
    #[error(
        "{structure} is truncated inside {field} ({needed} bytes needed, {available} left): the \
         device sent a cut or damaged structure; have it send its TPM's output unchanged"
    )]
    Truncated {
        /// The TPM structure.
        structure: &'static str,
        /// The field being read.
        field: &'static str,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes that were left.
        available: usize,
    },

    /// A sized field (TPM2B) is longer than the TPM specification allows.
    #[error(
        "{structure}: {field} is {len} bytes, more than the {max} a TPM produces: the structure \
         is damaged or forged; refuse it"
    )]
    FieldTooLarge {
        /// The TPM structure.
        structure: &'static str,
        /// The field.
        field: &'static str,
        /// Its declared length.
        len: usize,
        /// The largest accepted.
        max: usize,
    },

    /// Bytes follow the end of the structure.
    #[error(
        "{structure} has {count} bytes after its end: the device must send exactly one \
         marshalled structure (without a TPM2B size prefix where the field is a TPMT/TPMS)"
    )]
    TrailingBytes {
        /// The TPM structure.
        structure: &'static str,
        /// How many bytes follow.
        count: usize,
    },

    /// A selector or value is one Cairn does not handle (or one the specification does not define).
    #[error("{structure}: {field} is {value:#06x}, but Cairn accepts only {accepted}")]
    Unsupported {
        /// The TPM structure.
        structure: &'static str,
        /// The field.
        field: &'static str,
        /// The value found.
        value: u32,
        /// What is accepted there.
        accepted: &'static str,
    },

    /// The structure was not produced by a TPM (its magic is not TPM_GENERATED_VALUE).
    #[error(
        "TPMS_ATTEST starts with {found:#010x}, not TPM_GENERATED_VALUE 0xff544347: it was not \
         produced by a TPM; refuse this evidence"
    )]
    NotTpmGenerated {
        /// The magic found.
        found: u32,
    },
}
