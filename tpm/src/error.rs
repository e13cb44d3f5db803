//! Errors of the TPM operations: what failed, with context, and what to do next.

use std::path::PathBuf;

/// A failed TPM operation. Messages name the step that failed and what to check; they never carry
/// key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TpmError {
    /// The TCTI string is not one Cairn understands.
    #[error(
        "invalid TPM TCTI {tcti:?}: {reason}; expected e.g. \"device:/dev/tpmrm0\", \
         \"swtpm:host=127.0.0.1,port=2321\" or \"mssim:host=127.0.0.1,port=2321\""
    )]
    BadTcti {
        /// The TCTI string as given.
        tcti: String,
        /// Why it was rejected.
        reason: String,
    },

    /// The TPM could not be opened through the TCTI.
    #[error(
        "cannot open the TPM through TCTI {tcti:?}: {source}; is the TPM resource manager \
         /dev/tpmrm0 present and accessible (tpm_tis/tpm_crb loaded, user in group tss), or is \
         swtpm listening at that address?"
    )]
    OpenTcti {
        /// The TCTI string used.
        tcti: String,
        /// The TSS error.
        #[source]
        source: tss_esapi::Error,
    },

    /// The primary (parent) key could not be created in a hierarchy.
    #[error(
        "cannot create the {hierarchy} hierarchy primary key in the TPM: {source}; Cairn expects \
         an empty {hierarchy} hierarchy authorization; check the TPM is not in dictionary-attack \
         lockout (tpm2_getcap properties-variable) and has free object slots"
    )]
    CreatePrimary {
        /// `owner` or `endorsement`.
        hierarchy: &'static str,
        /// The TSS error.
        #[source]
        source: tss_esapi::Error,
    },

    /// The device signing key could not be created under the primary key.
    #[error("cannot create the device signing key in the TPM: {source}; check the TPM supports ECC NIST P-256 (tpm2_getcap ecc-curves)")]
    CreateKey {
        /// The TSS error.
        #[source]
        source: tss_esapi::Error,
    },

    /// The key blob file exists but could not be read.
    #[error("cannot read the TPM key blob {path}: {source}; check the data partition is mounted and readable")]
    ReadBlob {
        /// The blob file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The key blob file is not a valid Cairn TPM key blob.
    #[error(
        "TPM key blob {path} is not a valid Cairn key blob: {reason}; the file is damaged or \
         not a Cairn key; restore it from backup, or move it away to create a new key (the \
         device then has to enroll again)"
    )]
    BadBlob {
        /// The blob file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// The TPM refused to load the key blob.
    #[error(
        "the TPM refused to load key blob {path}: {source}; the blob was made by a different TPM, \
         or this TPM was cleared since (its owner seed changed); the key is gone: move the file \
         away to create a new key, then enroll the device again"
    )]
    LoadBlob {
        /// The blob file.
        path: PathBuf,
        /// The TSS error.
        #[source]
        source: tss_esapi::Error,
    },

    /// The key blob could not be written.
    #[error("cannot write the TPM key blob {path}: {source}; check the directory exists, is writable and has free space")]
    WriteBlob {
        /// The blob file (the temp file beside it is removed on failure).
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The TPM refused to sign.
    #[error("the TPM failed to sign with the device key: {source}; if the TPM was reset since the key was opened, open the key again")]
    Sign {
        /// The TSS error.
        #[source]
        source: tss_esapi::Error,
    },

    /// The endorsement key could not be created or read.
    #[error("cannot read the TPM endorsement key (RSA 2048 template): {source}; check the endorsement hierarchy authorization is empty")]
    EndorsementKey {
        /// The TSS error.
        #[source]
        source: tss_esapi::Error,
    },

    /// The TPM returned something of an unexpected shape (algorithm, size).
    #[error("unexpected answer from the TPM for {what}: {reason}; the TPM or its firmware may be unsupported")]
    UnexpectedTpmOutput {
        /// What was asked.
        what: &'static str,
        /// What was wrong.
        reason: String,
    },
}
