//! Central's verifier of TPM 2.0 evidence: pure functions over the bytes a device sends, no I/O
//! and no TPM library. The device side (tss-esapi) lives in `cairn-tpm`.
//!
//! How the pieces fit in enrollment: the device sends its EK certificate, the public areas of its
//! attestation key (AK) and device key, a TPM2_Certify of the device key by the AK, and later
//! quotes. Central checks the EK certificate ([`ekcert`]), checks the AK and makes a credential
//! for the AK's name under the EK ([`credential`]); only the TPM holding that EK can activate it,
//! and only for that AK, so a correct answer binds the AK to the genuine TPM. From then on the
//! AK's signatures ([`keys`]) vouch for the device key and for PCR values.
//!
//! - [`tpm2`]: TPM 2.0 wire structures (TPMT_PUBLIC, TPMS_ATTEST) parsed strictly: every length
//!   bounded, unknown selectors and trailing bytes refused; TPM names and P-256 public keys as
//!   DER. Errors: [`tpm2::WireError`].
//! - [`keys`]: the policy Cairn requires of the attestation key and the device key (P-256,
//!   fixedTPM, restricted, ...), and the verification of TPM2_Certify and TPM2_Quote evidence
//!   signed by the AK (signature, nonce, certified name, PCR selection and digest). Errors:
//!   [`keys::KeyError`], one variant per failed check.
//! - [`credential`]: TPM2_MakeCredential in software for an RSA-2048 EK (RSA-OAEP seed, KDFa,
//!   AES-128-CFB, outer HMAC), and the EK public key with its identity hash, equal to
//!   `cairn_tpm::ek_public_sha256`. Errors: [`credential::CredentialError`].
//! - [`ekcert`]: EK certificate path validation to operator-configured trust anchors (x509-parser
//!   to parse, ring to verify), tolerant of the unusual shape of TPM EK certificates. Errors:
//!   [`ekcert::EkCertError`].
//! - [`eventlog`]: the firmware's TPM event log (TCG crypto-agile format) parsed with every length
//!   bounded, replayed to the SHA-256 PCR values it claims, with a one-line description of each
//!   event. Errors: [`eventlog::EventLogError`].
//! - [`appraise`]: whether a quoted boot is acceptable: the event log replays to the quote, PCR 11
//!   is the UKI plus known boot phases, Secure Boot is on, the firmware PCRs match the device's
//!   reference (pinned on first use) and the UKI is one built for its OS version. A refusal names
//!   the PCR and the event. Errors: [`appraise::AppraiseError`].
//!
//! - `emulator` (cargo feature `emulator`, off by default): a software TPM for the fleet
//!   simulator and benchmarks, whose EK certificates come from the emulator's own "vendor" CA.
//!   Central verifies its evidence like any TPM's and trusts it only when that CA is listed in
//!   `tpm_vendor_cas`. Errors: `emulator::EmulatorError`, `credential::ActivateError`.
//!
//! Every input is treated as hostile: sizes are bounded before parsing, and no input makes a
//! function panic.

pub mod der;
mod ring_rng;

pub mod appraise;
pub mod credential;
pub mod ekcert;
#[cfg(feature = "emulator")]
pub mod emulator;
pub mod eventlog;
pub mod keys;
pub mod tpm2;
