//! Enrollment decisions: token policy, claims, pending approval, renewal.

use std::sync::Arc;

use crate::store::db::{Connection, OptionalExtension};
use cairn_proto::v1::HardwareFacts;

use crate::ca::{verify_csr, CaError, FleetCa, IssuedCertificate, VerifiedCsr};
use crate::store::devices::{self, DeviceFacts};
use crate::store::{
    audit, new_id, now_unix, sha256_hex, tokens, DeviceStatus, EnrollmentPolicy, StoreError,
};

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
            EnrollError::Ca(CaError::BadCsr(_)) | EnrollError::BadFacts(_) => {
                Status::invalid_argument(self.to_string())
            }
            EnrollError::Ca(_) | EnrollError::Store(_) => {
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
    })
}

/// Decide an enrollment, atomically: token use, claim use, device record and audit commit together.
pub fn enroll(
    conn: &mut Connection,
    ca: &Arc<FleetCa>,
    cert_lifetime_seconds: u64,
    token_secret: &str,
    csr: &VerifiedCsr,
    facts: &DeviceFacts,
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
    let token =
        tokens::enrollment_token_by_secret(&tx, token_secret)?.ok_or(EnrollError::UnknownToken)?;
    if token.revoked {
        return Err(EnrollError::TokenRevoked(token.id));
    }
    if token.expires_at.unix_seconds() <= now_unix() {
        return Err(EnrollError::TokenExpired {
            at: token.expires_at.to_string(),
            id: token.id,
        });
    }
    if let Some(max) = token.max_uses.filter(|max| token.uses >= *max) {
        return Err(EnrollError::TokenUsedUp { id: token.id, max });
    }
    let device_id = new_id("dev");
    let claim = match token.policy {
        EnrollmentPolicy::Claim => {
            let claim = tokens::matching_claim(&tx, &facts.serial, &facts.tpm_ek_sha256)?
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
            "token={} policy={} status={} serial={:?} key_storage={}",
            token.id,
            token.policy.as_str(),
            status.as_str(),
            facts.serial,
            facts.key_storage
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
