//! TPM 2.0 operations for Cairn devices (tss-esapi): the device signing key, the endorsement key
//! identity, the device side of attestation, and sealing the data-disk key to a PCR policy.
//!
//! - [`TpmDeviceKey`]: a non-exportable ECC P-256 signing key under the owner hierarchy, kept on
//!   disk as a TPM-wrapped blob (useless without this TPM), used for the device's TLS identity.
//! - [`ek_public_sha256`]: the hash enrollment uses to recognise the device's TPM.
//! - [`ek_certificate`]: the EK certificate the TPM maker wrote into NV, if any.
//! - [`AttestationKey`]: a restricted P-256 signing key beside the device key that proves it to a
//!   verifier: [`AttestationKey::certify`] (the device key is in this TPM),
//!   [`AttestationKey::activate_credential`] (the AK is in the TPM of this EK),
//!   [`AttestationKey::quote`] (signed PCR values with the verifier's nonce).
//! - [`seal_secret`] / [`unseal_secret`]: seal a small secret (the data-disk key) to SHA-256 PCR
//!   values of the boot chain; an unseal refusal names the changed PCRs
//!   ([`UnsealError::PcrMismatch`]) or the foreign TPM ([`UnsealError::WrongTpm`]).
//! - [`TpmBoundSecret`]: seal a small secret to this TPM alone, with no PCR policy (it keeps
//!   opening after OS updates and Secure Boot changes); a blob from another TPM, or from this one
//!   before a clear, fails with [`BoundUnsealError::WrongTpm`].
//! - [`read_pcrs`] / [`extend_pcr`] / [`PcrSelection`]: PCR access.
//! - [`read_event_log`]: the firmware's TPM event log from securityfs, parsed into an
//!   [`EventLog`] (`cairn_attest::eventlog`, re-exported) that replays to PCR values and lists the
//!   events that made a PCR (to explain a [`UnsealError::PcrMismatch`]).
//! - [`clear_owner_hierarchy`]: TPM2_Clear (lockout hierarchy): every owner-hierarchy blob (device
//!   key, attestation key, sealed secrets, and any copy of them) becomes unloadable for good; the
//!   EK stays. The TPM half of a crypto-erase.
//! - [`parse_tcti`]: the TCTI strings Cairn accepts (`device:/dev/tpmrm0`, `swtpm:...`, `mssim:...`).
//!
//! All calls block on the TPM: from async code run them in `spawn_blocking`. Every TPM call runs in
//! a `tracing` span named `tpm.*`; no key material is ever logged.

mod attest;
mod blob;
mod bound;
mod clear;
mod ek;
mod error;
mod eventlog;
mod key;
mod owner_key;
mod pcr;
mod seal;
mod sealed_blob;
mod tcti;

pub use attest::{AttestationKey, Certification, Quote, MAX_QUALIFYING_DATA_LEN};
pub use blob::sync_parent;
pub use bound::{BoundUnsealError, TpmBoundSecret};
pub use clear::clear_owner_hierarchy;
pub use ek::{ek_certificate, ek_public_sha256, EK_CERT_NV_INDEX_RSA2048};
pub use error::TpmError;
pub use eventlog::{
    read_event_log, EventLog, EventLogError, LogEvent, ReadEventLogError, FIRMWARE_EVENT_LOG,
};
pub use key::TpmDeviceKey;
pub use pcr::{
    extend_pcr, extended_value, read_pcrs, PcrSelection, PcrValues, PCR_COUNT, PCR_VALUE_LEN,
};
pub use seal::{
    seal_secret, seal_secret_to, unseal_secret, PcrChange, UnsealError, MAX_SECRET_LEN,
};
pub use sealed_blob::SealedSecret;
pub use tcti::{parse_tcti, TpmAccess};
