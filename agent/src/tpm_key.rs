//! The only place the agent touches the TPM (crate `cairn-tpm`, feature `tpm`): the device key
//! and the endorsement key hash. Without the feature the same API exists and reports that TPM
//! support was not built, so the rest of the agent never needs a `cfg`.
//!
//! Every call here blocks on the TPM: run it from `spawn_blocking` (or `block_in_place` inside a
//! TLS handshake, see [`crate::tls_key`]).

use std::path::Path;

use cairn_proto::v1::{TpmChallenge, TpmEvidence};

/// The attestation key's wrapped blob, beside the device key's.
pub const AK_FILE: &str = "attestation-key.tpm";

/// A quote of the boot PCRs and the event log that explains them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attestation {
    /// Marshalled TPMS_ATTEST.
    pub quote: Vec<u8>,
    /// DER ECDSA signature by the attestation key.
    pub signature: Vec<u8>,
    /// The quoted SHA-256 PCR values.
    pub pcrs: Vec<(u8, [u8; 32])>,
    /// The firmware event log (empty when there is none).
    pub event_log: Vec<u8>,
}

/// A TPM operation failed, or TPM support was not built.
#[derive(Debug, thiserror::Error)]
pub enum TpmKeyError {
    /// The TPM refused or failed the operation.
    #[error("TPM {operation} failed: {reason}")]
    Tpm {
        /// What was being done ("opening the device key").
        operation: &'static str,
        /// The TPM stack's error.
        reason: String,
    },
    /// A blob this TPM can never open: another TPM sealed it, this TPM was cleared since, or the
    /// blob is damaged. What it sealed is lost.
    #[error("this TPM can never open the blob: {reason}")]
    ForeignBlob {
        /// The TPM's or the parser's refusal.
        reason: String,
    },
    /// The TPM was asked for but this build has no TPM support.
    #[error("key_storage selects the TPM ({tcti}) but cairn-agent was built without the `tpm` feature; rebuild with it or set key_storage = \"software\"")]
    NotBuilt {
        /// The TCTI that was asked for.
        tcti: String,
    },
}

#[cfg(feature = "tpm")]
mod imp {
    use super::*;
    use tracing::info_span;

    /// A TPM-resident P-256 key (its wrapped blob lives in `state_dir/device-key.tpm`), and
    /// the attestation key beside it (`attestation-key.tpm`, made on first use).
    pub struct TpmKey {
        key: cairn_tpm::TpmDeviceKey,
        spki: Vec<u8>,
        tcti: String,
        ak_blob: std::path::PathBuf,
    }

    impl std::fmt::Debug for TpmKey {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("TpmKey")
                .field("tcti", &self.tcti)
                .finish_non_exhaustive()
        }
    }

    impl TpmKey {
        /// Loads the key blob at `blob_path` into the TPM, or creates the key and its blob.
        pub fn open_or_create(tcti: &str, blob_path: &Path) -> Result<Self, TpmKeyError> {
            let _span =
                info_span!("tpm.device_key.open", tcti, blob = %blob_path.display()).entered();
            let key = cairn_tpm::TpmDeviceKey::open_or_create(tcti, blob_path).map_err(|e| {
                TpmKeyError::Tpm {
                    operation: "opening the device key",
                    reason: e.to_string(),
                }
            })?;
            let spki = key.public_key_spki_der();
            Ok(TpmKey {
                key,
                spki,
                tcti: tcti.to_string(),
                ak_blob: blob_path.with_file_name(AK_FILE),
            })
        }

        /// What proves this key to central: the EK certificate (empty when the TPM has none),
        /// the attestation key (created on first use) and its TPM2_Certify of this key over
        /// `cairn_proto::certify_qualifying_data(spki)`.
        pub fn evidence(&self) -> Result<TpmEvidence, TpmKeyError> {
            let _span = info_span!("tpm.evidence", tcti = %self.tcti).entered();
            let failed = |operation: &'static str| {
                move |e: cairn_tpm::TpmError| TpmKeyError::Tpm {
                    operation,
                    reason: e.to_string(),
                }
            };
            let ek_certificate = cairn_tpm::ek_certificate(&self.key)
                .map_err(failed("reading the endorsement key certificate"))?;
            if ek_certificate.is_none() {
                tracing::warn!("the TPM has no endorsement key certificate (NV 0x01c00002); central cannot prove this TPM and only tokens allowing software keys admit the device");
            }
            // Through the device key's TPM connection: swtpm serves one at a time.
            let ak = cairn_tpm::AttestationKey::open_or_create(&self.key, &self.ak_blob)
                .map_err(failed("opening the attestation key"))?;
            let certification = ak
                .certify(&self.key, &cairn_proto::certify_qualifying_data(&self.spki))
                .map_err(failed("certifying the device key with the attestation key"))?;
            Ok(TpmEvidence {
                ek_certificate_der: ek_certificate.unwrap_or_default(),
                ek_chain_der: Vec::new(),
                ak_public: ak.public_area(),
                device_key_public: self.key.public_area(),
                certify_info: certification.attest,
                certify_signature: certification.signature_der,
            })
        }

        /// Answer central's credential challenge: TPM2_ActivateCredential with the EK and the
        /// attestation key. Fails unless the credential was made for this TPM's EK and AK.
        pub fn activate_credential(
            &self,
            challenge: &TpmChallenge,
        ) -> Result<zeroize::Zeroizing<Vec<u8>>, TpmKeyError> {
            let _span = info_span!("tpm.activate_credential", tcti = %self.tcti).entered();
            let failed = |e: cairn_tpm::TpmError| TpmKeyError::Tpm {
                operation: "answering central's TPM challenge",
                reason: e.to_string(),
            };
            let ak = cairn_tpm::AttestationKey::open_or_create(&self.key, &self.ak_blob)
                .map_err(failed)?;
            ak.activate_credential(
                &self.key,
                &challenge.credential_blob,
                &challenge.encrypted_secret,
            )
            .map_err(failed)
        }

        /// Answer central's attestation request: a TPM2_Quote by the attestation key of the
        /// SHA-256 `pcrs` with `nonce`, and the firmware event log (empty when securityfs has
        /// none: a TPM without firmware measurements, e.g. swtpm on a host; central then
        /// expects every quoted PCR at its reset value).
        pub fn quote(&self, nonce: &[u8], pcrs: &[u8]) -> Result<Attestation, TpmKeyError> {
            let event_log = Path::new(cairn_tpm::FIRMWARE_EVENT_LOG);
            let _span = info_span!("tpm.quote", tcti = %self.tcti).entered();
            let failed = |operation: &'static str| {
                move |e: cairn_tpm::TpmError| TpmKeyError::Tpm {
                    operation,
                    reason: e.to_string(),
                }
            };
            let ak = cairn_tpm::AttestationKey::open_or_create(&self.key, &self.ak_blob)
                .map_err(failed("opening the attestation key"))?;
            let quote = ak
                .quote(&self.key, nonce, pcrs)
                .map_err(failed("quoting the boot PCRs"))?;
            let log = match std::fs::read(event_log) {
                Ok(bytes) if bytes.len() > cairn_proto::MAX_EVENT_LOG_BYTES => {
                    return Err(TpmKeyError::Tpm {
                        operation: "reading the firmware event log",
                        reason: format!(
                            "{} is {} bytes, more than the {} central accepts",
                            event_log.display(),
                            bytes.len(),
                            cairn_proto::MAX_EVENT_LOG_BYTES
                        ),
                    })
                }
                Ok(bytes) => bytes,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(e) => {
                    return Err(TpmKeyError::Tpm {
                        operation: "reading the firmware event log",
                        reason: format!("{}: {e}", event_log.display()),
                    })
                }
            };
            Ok(Attestation {
                quote: quote.attest,
                signature: quote.signature_der,
                pcrs: quote.pcr_values.into_iter().collect(),
                event_log: log,
            })
        }

        /// TPM2_Clear of the owner hierarchy (crypto-erase): every blob under it (this key,
        /// the attestation key, sealed disk keys, and any copy of them) can never be loaded
        /// again. The key is unusable afterwards.
        pub fn clear_owner_hierarchy(&self) -> Result<(), TpmKeyError> {
            let _span = info_span!("tpm.clear", tcti = %self.tcti).entered();
            cairn_tpm::clear_owner_hierarchy(&self.key).map_err(|e| TpmKeyError::Tpm {
                operation: "clearing the owner hierarchy",
                reason: e.to_string(),
            })
        }

        /// Seal `secret` (1..=128 bytes) to this TPM alone, through this key's connection: no
        /// PCR policy, so it opens whatever the device boots, and only on this TPM (see
        /// [`cairn_tpm::TpmBoundSecret`]). Returns the blob, which holds nothing in clear.
        pub fn seal_to_tpm(&self, secret: &[u8]) -> Result<Vec<u8>, TpmKeyError> {
            let _span = info_span!("tpm.seal_bound", tcti = %self.tcti).entered();
            cairn_tpm::TpmBoundSecret::seal(&self.key, secret)
                .and_then(|bound| bound.to_bytes())
                .map_err(|e| TpmKeyError::Tpm {
                    operation: "sealing a secret to the TPM",
                    reason: e.to_string(),
                })
        }

        /// Unseal a blob [`TpmKey::seal_to_tpm`] made. [`TpmKeyError::ForeignBlob`] when this
        /// TPM can never open it (another TPM's, from before a TPM clear, or damaged).
        pub fn unseal_from_tpm(
            &self,
            blob: &[u8],
        ) -> Result<zeroize::Zeroizing<Vec<u8>>, TpmKeyError> {
            let _span = info_span!("tpm.unseal_bound", tcti = %self.tcti).entered();
            let bound = cairn_tpm::TpmBoundSecret::from_bytes(blob).map_err(|e| {
                TpmKeyError::ForeignBlob {
                    reason: e.to_string(),
                }
            })?;
            bound.unseal(&self.key).map_err(|e| match e {
                cairn_tpm::BoundUnsealError::WrongTpm { .. } => TpmKeyError::ForeignBlob {
                    reason: e.to_string(),
                },
                other => TpmKeyError::Tpm {
                    operation: "unsealing a secret with the TPM",
                    reason: other.to_string(),
                },
            })
        }

        /// The public key, DER SubjectPublicKeyInfo.
        pub fn public_key_spki_der(&self) -> &[u8] {
            &self.spki
        }

        /// The TCTI the key was opened through.
        pub fn tcti(&self) -> &str {
            &self.tcti
        }

        /// ECDSA P-256 signature (DER) over SHA-256(`message`), made inside the TPM.
        pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, TpmKeyError> {
            let _span = info_span!("tpm.device_key.sign", len = message.len()).entered();
            self.key.sign_sha256(message).map_err(|e| TpmKeyError::Tpm {
                operation: "signing with the device key",
                reason: e.to_string(),
            })
        }
    }

    /// Lower-case hex SHA-256 of the endorsement key's public key.
    pub fn ek_public_sha256(tcti: &str) -> Result<String, TpmKeyError> {
        let _span = info_span!("tpm.ek_public_sha256", tcti).entered();
        cairn_tpm::ek_public_sha256(tcti).map_err(|e| TpmKeyError::Tpm {
            operation: "reading the endorsement key",
            reason: e.to_string(),
        })
    }
}

#[cfg(not(feature = "tpm"))]
mod imp {
    use super::*;

    /// Stand-in for the TPM key in builds without the `tpm` feature; cannot be constructed.
    #[derive(Debug)]
    pub enum TpmKey {}

    impl TpmKey {
        /// Always fails: this build has no TPM support.
        pub fn open_or_create(tcti: &str, _blob_path: &Path) -> Result<Self, TpmKeyError> {
            Err(TpmKeyError::NotBuilt {
                tcti: tcti.to_string(),
            })
        }

        /// Unreachable (no value exists).
        pub fn public_key_spki_der(&self) -> &[u8] {
            match *self {}
        }

        /// Unreachable (no value exists).
        pub fn tcti(&self) -> &str {
            match *self {}
        }

        /// Unreachable (no value exists).
        pub fn sign(&self, _message: &[u8]) -> Result<Vec<u8>, TpmKeyError> {
            match *self {}
        }

        /// Unreachable (no value exists).
        pub fn evidence(&self) -> Result<TpmEvidence, TpmKeyError> {
            match *self {}
        }

        /// Unreachable (no value exists).
        pub fn quote(&self, _nonce: &[u8], _pcrs: &[u8]) -> Result<Attestation, TpmKeyError> {
            match *self {}
        }

        /// Unreachable (no value exists).
        pub fn clear_owner_hierarchy(&self) -> Result<(), TpmKeyError> {
            match *self {}
        }

        /// Unreachable (no value exists).
        pub fn seal_to_tpm(&self, _secret: &[u8]) -> Result<Vec<u8>, TpmKeyError> {
            match *self {}
        }

        /// Unreachable (no value exists).
        pub fn unseal_from_tpm(
            &self,
            _blob: &[u8],
        ) -> Result<zeroize::Zeroizing<Vec<u8>>, TpmKeyError> {
            match *self {}
        }

        /// Unreachable (no value exists).
        pub fn activate_credential(
            &self,
            _challenge: &TpmChallenge,
        ) -> Result<zeroize::Zeroizing<Vec<u8>>, TpmKeyError> {
            match *self {}
        }
    }

    /// Always fails: this build has no TPM support.
    pub fn ek_public_sha256(tcti: &str) -> Result<String, TpmKeyError> {
        Err(TpmKeyError::NotBuilt {
            tcti: tcti.to_string(),
        })
    }
}

pub use imp::{ek_public_sha256, TpmKey};
