//! Errors of the TPM operations: what failed, with context, and what to do next.

use std::path::PathBuf;

use cairn_io::FileError;

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

    /// A key could not be created under the primary key.
    #[error("cannot create the {key} in the TPM: {source}; check the TPM supports ECC NIST P-256 (tpm2_getcap ecc-curves)")]
    CreateKey {
        /// Which key, e.g. `device signing key`.
        key: &'static str,
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
        /// The file operation that failed.
        #[source]
        source: FileError,
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

    /// The EK certificate NV index could not be listed or read.
    #[error("cannot read the EK certificate from TPM NV index {index:#010x}: {source}; check the TPM is reachable and the index is readable (tpm2_nvreadpublic; tpm2_nvread -C {index:#x} {index:#x})")]
    EkCertificate {
        /// The NV index.
        index: u32,
        /// The TSS error.
        #[source]
        source: tss_esapi::Error,
    },

    /// The EK certificate NV index holds no DER certificate.
    #[error("TPM NV index {index:#010x} does not hold a DER EK certificate: {reason}; the TPM maker's provisioning is damaged or nonstandard: enroll the device without an EK certificate or ask the maker for the certificate")]
    BadEkCertificate {
        /// The NV index.
        index: u32,
        /// What is wrong with its contents.
        reason: String,
    },

    /// A nonce or qualifying data for an attestation is longer than the TPM accepts.
    #[error("cannot attest with {len} bytes of qualifying data (nonce): the TPM takes at most 64 bytes; send a 32-byte nonce or its SHA-256")]
    QualifyingData {
        /// Length given.
        len: usize,
    },

    /// TPM2_Certify of the device key by the attestation key failed.
    #[error("the TPM failed to certify the device key with the attestation key: {source}; check both keys were opened on this TPM and it has a free object slot, then retry")]
    Certify {
        /// The TSS error.
        #[source]
        source: tss_esapi::Error,
    },

    /// TPM2_Quote by the attestation key failed.
    #[error("the TPM failed to quote PCRs {pcrs} with the attestation key: {source}; check the TPM has the SHA-256 PCR bank allocated (tpm2_getcap pcrs) and a free object slot, then retry")]
    Quote {
        /// The selection, e.g. `7,11`.
        pcrs: String,
        /// The TSS error.
        #[source]
        source: tss_esapi::Error,
    },

    /// The quoted PCRs changed between every quote and reading their values.
    #[error("PCRs {pcrs} changed between the quote and reading them, {attempts} times in a row; something keeps extending them (IMA measuring files, boot still in progress): quote again later or quote other PCRs")]
    PcrsChanging {
        /// The selection, e.g. `7,11`.
        pcrs: String,
        /// How many quotes were made.
        attempts: u32,
    },

    /// A credential challenge part is larger than its TPM2B structure.
    #[error("the {what} of the credential challenge is {len} bytes, more than the TPM structure holds; the challenge is damaged or not a TPM credential: ask the verifier for a new one")]
    BadCredential {
        /// `credential blob (TPM2B_ID_OBJECT)` or `encrypted secret (TPM2B_ENCRYPTED_SECRET)`.
        what: &'static str,
        /// Its length.
        len: usize,
    },

    /// The TPM refused to activate the credential: it is not for this TPM's EK and this AK.
    #[error("the TPM refused to activate the credential ({source}): it was not made for this TPM's endorsement key and this attestation key (the AK name or the EK differ, or the challenge was altered); the verifier must make the credential with this device's EK public key and AK name")]
    ActivateCredential {
        /// The TPM's refusal.
        #[source]
        source: tss_esapi::Error,
    },

    /// TPM2_ActivateCredential could not run (session, policy or TPM failure, not a refusal).
    #[error("the TPM failed to run ActivateCredential: {source}; Cairn expects an empty endorsement hierarchy authorization (for the EK's PolicySecret) and free object and session slots; check the TPM is reachable, then retry")]
    ActivateCredentialFailed {
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

    /// A PCR selection is empty or names a PCR that does not exist.
    #[error("invalid PCR selection: {reason}; give SHA-256 PCR numbers 0..=23, e.g. \"7,11\"")]
    BadPcrSelection {
        /// What is wrong with it.
        reason: String,
    },

    /// The PCR values could not be read.
    #[error("cannot read the SHA-256 values of PCRs {pcrs}: {reason}; check the TPM has the SHA-256 PCR bank allocated (tpm2_getcap pcrs)")]
    ReadPcrs {
        /// The selection, e.g. `7,11`.
        pcrs: String,
        /// What failed.
        reason: String,
    },

    /// A PCR could not be extended.
    #[error("cannot extend PCR {index}: {source}; PCRs 0..=15 may only be extended from locality 0, check the index")]
    ExtendPcr {
        /// The PCR index.
        index: u8,
        /// The TSS error.
        #[source]
        source: tss_esapi::Error,
    },

    /// The secret to seal is empty or longer than the TPM can seal.
    #[error("cannot seal a secret of {len} bytes: the TPM seals 1..=128 bytes; seal a 32-byte key and derive longer material from it")]
    BadSecret {
        /// Length of the secret given.
        len: usize,
    },

    /// The TPM refused to create the sealed object.
    #[error("the TPM failed to seal the secret: {source}; check the TPM has free object and session slots and supports KeyedHash objects with SHA-256 policies")]
    Seal {
        /// The TSS error.
        #[source]
        source: tss_esapi::Error,
    },

    /// Unsealing failed for a reason other than the policy or a foreign blob.
    #[error("the TPM failed to unseal: {source}; check the TPM is reachable and has free object and session slots, then retry")]
    Unseal {
        /// The TSS error.
        #[source]
        source: tss_esapi::Error,
    },

    /// Bytes or a file are not a valid Cairn sealed-secret blob.
    #[error(
        "{origin} is not a valid Cairn sealed-secret blob: {reason}; the file is damaged or was \
         edited; the sealed secret cannot be recovered from it: use the recovery key, which seals \
         the secret again"
    )]
    BadSealedBlob {
        /// The file, or `<in-memory sealed blob>`.
        origin: String,
        /// What is wrong with it.
        reason: String,
    },

    /// Bytes or a file are not a valid Cairn TPM-bound blob ([`crate::TpmBoundSecret`]).
    #[error(
        "{origin} is not a valid Cairn TPM-bound blob: {reason}; the file is damaged or was \
         edited; what it sealed cannot be recovered from it: seal a new secret and recreate what \
         the old one protected"
    )]
    BadBoundBlob {
        /// The file, or `<in-memory TPM-bound blob>`.
        origin: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The sealed blob file exists but could not be read.
    #[error("cannot read the sealed-secret blob {path}: {source}; check the partition holding it is mounted and readable")]
    ReadSealedBlob {
        /// The blob file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The TPM refused TPM2_Clear by its own rules.
    #[error(
        "TPM2_Clear refused ({source}): the lockout hierarchy has an authorization value, the TPM \
         is in dictionary-attack lockout, or clearing is disabled (TPM2_ClearControl); the \
         owner-hierarchy key blobs stay loadable by this TPM: clear it from the firmware setup \
         (platform hierarchy) or with its lockout password (tpm2_clear -c l -p <password>)"
    )]
    ClearRefused {
        /// The TPM's refusal.
        #[source]
        source: tss_esapi::Error,
    },

    /// TPM2_Clear could not run (not a refusal).
    #[error("the TPM failed to run TPM2_Clear: {source}; the owner-hierarchy key blobs may still be loadable: check the TPM is reachable, then retry")]
    Clear {
        /// The TSS error.
        #[source]
        source: tss_esapi::Error,
    },

    /// The sealed blob could not be written.
    #[error("cannot write the sealed-secret blob {path}: {source}; check the directory exists, is writable and has free space")]
    WriteSealedBlob {
        /// The blob file (the temp file beside it is removed on failure).
        path: PathBuf,
        /// The file operation that failed.
        #[source]
        source: FileError,
    },
}
