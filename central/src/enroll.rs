//! Enrollment decisions: token policy, claims, pending approval, renewal.

use std::sync::Arc;

use crate::store::db::{Connection, OptionalExtension};
use cairn_proto::v1::HardwareFacts;

use crate::ca::{verify_csr, CaError, FleetCa, IssuedCertificate, VerifiedCsr};
use crate::store::devices::{self, DeviceFacts, ProvenTpmFacts};
use crate::store::{
    audit, new_id, now_unix, sha256_hex, tokens, DeviceStatus, EnrollmentPolicy, EnrollmentToken,
    StoreError,
};
use crate::tpm_proof::{ProvenTpm, TpmProofError};

/// Why an enrollment or renewal was refused. Each message is sent to the device as is, so it
/// says what to do and never echoes a secret.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// No token with this secret.
    #[error("enrollment token not recognised; check the token in the image recipe or create one with `cairnctl token create`")]
    UnknownToken,
    /// Revoked by an operator.
    #[error("enrollment token {0} was revoked; build the image with a current token")]
    TokenRevoked(String),
    /// Past its expiry.
    #[error(
        "enrollment token {id} expired at {at}; create a new one with `cairnctl token create`"
    )]
    TokenExpired {
        /// Token id.
        id: String,
        /// Expiry, RFC 3339.
        at: String,
    },
    /// All uses taken.
    #[error("enrollment token {id} is used up ({max} of {max} enrollments); create a new one or raise --max-uses")]
    TokenUsedUp {
        /// Token id.
        id: String,
        /// Its use limit.
        max: u32,
    },
    /// `claim` policy and no claim matches.
    #[error("device with serial {serial:?} (TPM EK {ek}) is not claimed; add it with `cairnctl claim add --serial {serial}`")]
    NotClaimed {
        /// Reported serial.
        serial: String,
        /// Reported EK hash or "none".
        ek: String,
    },
    /// The matching claim was used by another device.
    #[error("the claim for {value:?} was already used by device {device_id}; revoke that device or add a new claim")]
    ClaimUsed {
        /// Claimed serial or EK.
        value: String,
        /// Device that used it.
        device_id: String,
    },
    /// The device is revoked.
    #[error("device {0} is revoked; an operator must enroll it anew with a new key")]
    DeviceRevoked(String),
    /// The device is not approved yet (renewal before approval).
    #[error("device {0} is not active")]
    DeviceNotActive(String),
    /// The device presented no usable identity.
    #[error("{0}")]
    Unauthenticated(String),
    /// Facts out of range.
    #[error("hardware facts refused: {0}")]
    BadFacts(String),
    /// Renewal with a key other than the enrolled one.
    #[error("renewal must use the enrolled device key; this CSR carries another key")]
    KeyMismatch,
    /// The token admits only proven TPMs and this device's was not proven.
    #[error("enrollment token {token} admits only devices whose key central proves to be in a genuine TPM, and {why}; for devices without one create a token with `cairnctl token create --allow-software-keys`")]
    TpmRequired {
        /// Token id.
        token: String,
        /// What was missing.
        why: String,
    },
    /// The TPM evidence was refused.
    #[error(transparent)]
    Tpm(#[from] TpmProofError),
    /// The proven TPM is that of a revoked device.
    #[error("this TPM belongs to revoked device {0}; a revoked device cannot come back with a new key. An admin who trusts the box again must enroll it with a new TPM identity (clear its TPM)")]
    TpmOfRevokedDevice(String),
    /// Too many attempts from one address.
    #[error("too many enrollment attempts from {source_addr}; retry in {retry_after_seconds} s")]
    RateLimited {
        /// The caller's address.
        source_addr: std::net::IpAddr,
        /// When a new attempt will be taken.
        retry_after_seconds: u64,
    },
    /// The CSR or signing failed.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// The registry failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl EnrollError {
    /// The gRPC status a device receives.
    pub fn to_status(&self) -> tonic::Status {
        use tonic::Status;
        match self {
            EnrollError::UnknownToken | EnrollError::Unauthenticated(_) => {
                Status::unauthenticated(self.to_string())
            }
            EnrollError::Ca(CaError::BadCsr(_))
            | EnrollError::BadFacts(_)
            | EnrollError::Tpm(
                TpmProofError::TooLarge(_)
                | TpmProofError::Evidence(_)
                | TpmProofError::EkMismatch { .. }
                | TpmProofError::UnprovenEk(_),
            ) => Status::invalid_argument(self.to_string()),
            EnrollError::RateLimited {
                retry_after_seconds,
                ..
            } => cairn_proto::with_retry_after(
                Status::resource_exhausted(self.to_string()),
                std::time::Duration::from_secs(*retry_after_seconds),
            ),
            EnrollError::Ca(_)
            | EnrollError::Store(_)
            | EnrollError::Tpm(TpmProofError::Internal(_)) => {
                tracing::error!(error = %self, "enrollment failed inside central");
                Status::internal("central could not process the request; it is logged, retry later")
            }
            _ => Status::permission_denied(self.to_string()),
        }
    }
}

/// What a device gets back from Enroll.
#[derive(Debug)]
pub enum EnrollOutcome {
    /// Active: here is a certificate.
    Approved {
        /// Device id.
        device_id: String,
        /// The certificate.
        cert: IssuedCertificate,
    },
    /// Waiting for an operator.
    Pending {
        /// Device id.
        device_id: String,
    },
}

/// Check and normalise what the agent reports.
pub fn validate_facts(facts: Option<&HardwareFacts>) -> Result<DeviceFacts, EnrollError> {
    let facts = facts.ok_or_else(|| EnrollError::BadFacts("missing".into()))?;
    let text =
        |name: &str, value: &str, max: usize, required: bool| -> Result<String, EnrollError> {
            if required && value.is_empty() {
                return Err(EnrollError::BadFacts(format!("{name} is empty")));
            }
            if value.len() > max {
                return Err(EnrollError::BadFacts(format!(
                    "{name} is longer than {max} bytes"
                )));
            }
            if value.chars().any(char::is_control) {
                return Err(EnrollError::BadFacts(format!(
                    "{name} contains control characters"
                )));
            }
            Ok(value.to_owned())
        };
    let ek = facts.tpm_ek_sha256.to_ascii_lowercase();
    if !ek.is_empty() && (ek.len() != 64 || !ek.bytes().all(|b| b.is_ascii_hexdigit())) {
        return Err(EnrollError::BadFacts(
            "tpm_ek_sha256 must be 64 hex characters or empty".into(),
        ));
    }
    if !matches!(facts.key_storage.as_str(), "tpm" | "software") {
        return Err(EnrollError::BadFacts(
            "key_storage must be \"tpm\" or \"software\"".into(),
        ));
    }
    Ok(DeviceFacts {
        serial: text("serial", &facts.serial, 128, true)?,
        tpm_ek_sha256: ek,
        hostname: text("hostname", &facts.hostname, 253, false)?,
        key_storage: facts.key_storage.clone(),
        agent_version: text("agent_version", &facts.agent_version, 64, false)?,
        os_version: text("os_version", &facts.os_version, 128, false)?,
        tpm: None,
    })
}

/// What central could establish about a device's TPM from its evidence.
#[derive(Debug)]
pub enum TpmProof {
    /// No evidence: a software key (or an agent that cannot prove its TPM).
    None,
    /// Evidence that holds together but cannot be proven here (no EK certificate, or its
    /// vendor CA is not trusted): acceptable only to tokens that allow software keys.
    Unproven(TpmProofError),
    /// EK certificate, AK and certified key checked; the credential challenge is still to be
    /// answered before it counts.
    Checked(ProvenTpm),
    /// Checked, and the TPM answered the credential challenge ([`crate::tpm_proof::Challenger::redeem`]):
    /// the only proof [`enroll`] admits as a TPM.
    Activated(ProvenTpm),
}

impl TpmProof {
    /// Sort the result of [`crate::tpm_proof::check_evidence`]: evidence that contradicts
    /// itself is refused outright, evidence that merely cannot be proven is kept as such.
    pub fn from_check(result: Result<ProvenTpm, TpmProofError>) -> Result<Self, EnrollError> {
        match result {
            Ok(proven) => Ok(TpmProof::Checked(proven)),
            Err(
                e @ (TpmProofError::NoEkCertificate
                | TpmProofError::NoAnchors
                | TpmProofError::EkCertificate(_)),
            ) => Ok(TpmProof::Unproven(e)),
            Err(e) => Err(e.into()),
        }
    }

    /// Why this device's TPM does not count, for a token that requires one.
    pub fn missing(&self) -> Option<String> {
        match self {
            TpmProof::None => {
                Some("this device sent no TPM evidence (its key is in software)".into())
            }
            TpmProof::Unproven(e) => Some(format!("its TPM could not be proven: {e}")),
            TpmProof::Checked(_) | TpmProof::Activated(_) => None,
        }
    }
}

/// Replace what the agent said about its TPM with what central established: the EK hash and
/// `key_storage = "tpm"` only from a proven TPM. A reported EK hash that contradicts the proven
/// one, or comes without any evidence, is refused (it could only be a forgery or a broken
/// agent).
pub fn settle_tpm_facts(facts: &mut DeviceFacts, proof: &TpmProof) -> Result<(), EnrollError> {
    let reported = std::mem::take(&mut facts.tpm_ek_sha256);
    match proof {
        TpmProof::Checked(proven) | TpmProof::Activated(proven) => {
            if !reported.is_empty() && reported != proven.ek_sha256 {
                return Err(TpmProofError::EkMismatch {
                    reported,
                    verified: proven.ek_sha256.clone(),
                }
                .into());
            }
            facts.tpm_ek_sha256 = proven.ek_sha256.clone();
            facts.key_storage = "tpm".into();
            facts.tpm = Some(ProvenTpmFacts {
                ak_public: proven.ak_public.clone(),
                ek_issuer: proven.ek_issuer.clone(),
            });
        }
        TpmProof::Unproven(_) => facts.key_storage = "tpm-unverified".into(),
        TpmProof::None => {
            if !reported.is_empty() {
                return Err(TpmProofError::UnprovenEk(reported).into());
            }
            if facts.key_storage == "tpm" {
                facts.key_storage = "tpm-unverified".into();
            }
        }
    }
    Ok(())
}

/// Whether `token` admits a new device now (and with this TPM proof).
fn check_token(token: &EnrollmentToken, tpm_missing: Option<String>) -> Result<(), EnrollError> {
    if token.revoked {
        return Err(EnrollError::TokenRevoked(token.id.clone()));
    }
    if token.expires_at.unix_seconds() <= now_unix() {
        return Err(EnrollError::TokenExpired {
            at: token.expires_at.to_string(),
            id: token.id.clone(),
        });
    }
    if let Some(max) = token.max_uses.filter(|max| token.uses >= *max) {
        return Err(EnrollError::TokenUsedUp {
            id: token.id.clone(),
            max,
        });
    }
    if token.require_tpm {
        if let Some(why) = tpm_missing {
            return Err(EnrollError::TpmRequired {
                token: token.id.clone(),
                why,
            });
        }
    }
    Ok(())
}

/// What admits a new device: its token, and under a `claim` policy the claim it uses.
#[derive(Debug)]
pub struct Admission {
    token: EnrollmentToken,
    claim_id: Option<String>,
}

/// Whether a new device with these (settled) facts may enroll: the token exists and admits it
/// (TPM requirement included), its proven TPM is not that of a revoked device, and under a
/// `claim` policy an unused claim matches its serial or its proven EK. Read-only, so it runs
/// first on a read connection (refusals take no write lock) and again inside [`enroll`]'s
/// transaction.
pub fn check_admission(
    conn: &Connection,
    token_secret: &str,
    facts: &DeviceFacts,
    tpm_missing: Option<String>,
) -> Result<Admission, EnrollError> {
    let token =
        tokens::enrollment_token_by_secret(conn, token_secret)?.ok_or(EnrollError::UnknownToken)?;
    check_token(&token, tpm_missing)?;
    if !facts.tpm_ek_sha256.is_empty() {
        if let Some(revoked) = devices::revoked_with_ek(conn, &facts.tpm_ek_sha256)? {
            return Err(EnrollError::TpmOfRevokedDevice(revoked));
        }
    }
    let claim_id = match token.policy {
        EnrollmentPolicy::Claim => {
            let claim = tokens::matching_claim(conn, &facts.serial, &facts.tpm_ek_sha256)?
                .ok_or_else(|| EnrollError::NotClaimed {
                    serial: facts.serial.clone(),
                    ek: if facts.tpm_ek_sha256.is_empty() {
                        "none".into()
                    } else {
                        facts.tpm_ek_sha256.clone()
                    },
                })?;
            if let Some(used_by) = claim.device_id {
                return Err(EnrollError::ClaimUsed {
                    value: claim.value,
                    device_id: used_by,
                });
            }
            Some(claim.id)
        }
        _ => None,
    };
    Ok(Admission { token, claim_id })
}

/// Whether the key of `csr` is enrolled already (a pending poll, a lost certificate): such a
/// call is answered from the device's record, whatever its token or facts say now.
pub fn is_known_key(conn: &Connection, csr: &VerifiedCsr) -> Result<bool, EnrollError> {
    Ok(devices::by_key(conn, &sha256_hex(&csr.spki_der))?.is_some())
}

/// Decide an enrollment, atomically: token use, claim use, device record and audit commit together.
pub fn enroll(
    conn: &mut Connection,
    ca: &Arc<FleetCa>,
    cert_lifetime_seconds: u64,
    token_secret: &str,
    csr: &VerifiedCsr,
    facts: &DeviceFacts,
    proof: &TpmProof,
) -> Result<EnrollOutcome, EnrollError> {
    let key_sha256 = sha256_hex(&csr.spki_der);
    let tx = conn.transaction().map_err(StoreError::from)?;
    if let Some(device) = devices::by_key(&tx, &key_sha256)? {
        // A known key: the same device asking again (pending poll, or it lost its certificate).
        let outcome = match device.status {
            DeviceStatus::Revoked => return Err(EnrollError::DeviceRevoked(device.id)),
            DeviceStatus::Pending | DeviceStatus::Other(_) => EnrollOutcome::Pending {
                device_id: device.id,
            },
            DeviceStatus::Active => {
                let cert = issue(&tx, ca, &device.id, csr, cert_lifetime_seconds)?;
                devices::update_reported(&tx, &device.id, facts)?;
                EnrollOutcome::Approved {
                    device_id: device.id,
                    cert,
                }
            }
        };
        tx.commit().map_err(StoreError::from)?;
        return Ok(outcome);
    }
    if let TpmProof::Checked(_) = proof {
        // Only an answered challenge proves the TPM; the caller must redeem it first.
        return Err(TpmProofError::BadTicket("the TPM challenge was not answered").into());
    }
    let Admission {
        token,
        claim_id: claim,
    } = check_admission(&tx, token_secret, facts, proof.missing())?;
    let device_id = new_id("dev");
    // A policy this central does not know (never stored by it) admits nobody unattended.
    let status = match token.policy {
        EnrollmentPolicy::Auto | EnrollmentPolicy::Claim => DeviceStatus::Active,
        _ => DeviceStatus::Pending,
    };
    devices::insert(
        &tx,
        &device_id,
        status.clone(),
        &key_sha256,
        facts,
        &token.id,
    )?;
    tokens::use_enrollment_token(&tx, &token.id)?;
    if let Some(claim_id) = &claim {
        tokens::use_claim(&tx, claim_id, &device_id)?;
    }
    audit::record(
        &tx,
        &format!("device:{device_id}"),
        "device.enroll",
        &device_id,
        &format!(
            "token={} policy={} status={} serial={:?} key_storage={}{}",
            token.id,
            token.policy.as_str(),
            status.as_str(),
            facts.serial,
            facts.key_storage,
            match &facts.tpm {
                Some(tpm) => format!(
                    " tpm_ek={} ek_issuer={:?}",
                    facts.tpm_ek_sha256, tpm.ek_issuer
                ),
                None => String::new(),
            }
        ),
    )?;
    let message = format!(
        "enrolled with token {} ({} policy) as {}; serial {:?}, key in {}",
        token.id,
        token.policy.as_str(),
        status.as_str(),
        facts.serial,
        facts.key_storage
    );
    crate::store::events::insert(
        &tx,
        &crate::store::events::NewEvent::now(
            Some(&device_id),
            "device.enrolled",
            crate::store::events::Severity::Info,
            message,
        ),
    )?;
    let outcome = match status {
        DeviceStatus::Active => {
            let cert = issue(&tx, ca, &device_id, csr, cert_lifetime_seconds)?;
            EnrollOutcome::Approved { device_id, cert }
        }
        _ => EnrollOutcome::Pending { device_id },
    };
    tx.commit().map_err(StoreError::from)?;
    Ok(outcome)
}

/// Issue a fresh certificate to an active device for the key it enrolled with.
pub fn renew(
    conn: &mut Connection,
    ca: &Arc<FleetCa>,
    cert_lifetime_seconds: u64,
    device_id: &str,
    csr_der: &[u8],
) -> Result<IssuedCertificate, EnrollError> {
    let csr = verify_csr(csr_der)?;
    let tx = conn.transaction().map_err(StoreError::from)?;
    let key_sha256: Option<(String, DeviceStatus)> = tx
        .query_row(
            "SELECT key_sha256, status FROM devices WHERE id = ?1",
            [device_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(StoreError::from)?;
    let (enrolled_key, status) = key_sha256
        .ok_or_else(|| EnrollError::Unauthenticated(format!("unknown device {device_id}")))?;
    match status {
        DeviceStatus::Active => {}
        DeviceStatus::Revoked => return Err(EnrollError::DeviceRevoked(device_id.into())),
        DeviceStatus::Pending | DeviceStatus::Other(_) => {
            return Err(EnrollError::DeviceNotActive(device_id.into()))
        }
    }
    if enrolled_key != sha256_hex(&csr.spki_der) {
        return Err(EnrollError::KeyMismatch);
    }
    let cert = issue(&tx, ca, device_id, &csr, cert_lifetime_seconds)?;
    tx.commit().map_err(StoreError::from)?;
    Ok(cert)
}

fn issue(
    conn: &Connection,
    ca: &FleetCa,
    device_id: &str,
    csr: &VerifiedCsr,
    lifetime: u64,
) -> Result<IssuedCertificate, EnrollError> {
    let cert = ca.issue_device_certificate(device_id, csr, lifetime)?;
    devices::set_certificate(conn, device_id, &cert.serial_hex, cert.not_after)?;
    Ok(cert)
}
