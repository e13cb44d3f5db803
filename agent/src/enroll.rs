//! Zero-touch enrollment: send a CSR signed by the device key, the fleet token and the hardware
//! facts to central's Enrollment service until central approves and returns a certificate.

use std::sync::Arc;
use std::time::Duration;

use cairn_proto::v1::{EnrollRequest, EnrollResponse, EnrollStatus, TpmActivation, TpmEvidence};
use tonic::Code;
use tracing::{error, info, info_span, warn, Instrument};

use crate::backoff::Backoff;
use crate::certificate::{check_issued_certificate, CertificateError};
use crate::channel::{enrollment_client, CentralDialer, ChannelError, REQUEST_TIMEOUT};
use crate::csr::{build_csr_async, CsrError};
use crate::facts::HardwareFacts;
use crate::identity::IdentityStore;
use crate::key::DeviceKey;
use crate::liveness::Liveness;
use crate::shutdown::Shutdown;
use crate::state::{StateError, StoredIdentity};
use crate::status::{Phase, StatusReporter};
use crate::time_sync::TimeKeeper;
use crate::tpm_key::TpmKeyError;

/// Longest wait central may ask for between two Enroll calls while pending.
pub const MAX_PENDING_RETRY: Duration = Duration::from_secs(3600);

/// What one Enroll call produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnrollOutcome {
    /// Certificate issued (already checked against the device key, not yet stored).
    Approved(StoredIdentity),
    /// An operator has to approve; call again after `retry_after`.
    Pending {
        /// Device id central assigned (may be empty).
        device_id: String,
        /// How long central asks to wait (at least 1 s).
        retry_after: Duration,
    },
}

/// A failed Enroll call.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// Central refused the enrollment (bad/expired/used-up token, serial not claimed, bad CSR,
    /// device revoked). An operator has to act; the agent retries slowly.
    #[error("central refused the enrollment ({code:?}): {message}; fix the token or claim in central, the agent keeps retrying")]
    Refused {
        /// gRPC status code.
        code: Code,
        /// Central's reason.
        message: String,
    },
    /// Central could not be reached or failed; retried with backoff.
    #[error("enrollment call failed: {0}")]
    Unavailable(String),
    /// Central is busy or throttles this address and said when to call again.
    #[error("central asked to enroll again in {retry_after:?}: {message}")]
    Throttled {
        /// Central's reason.
        message: String,
        /// How long to wait at least.
        retry_after: Duration,
    },
    /// Central answered with something the agent cannot use.
    #[error("central sent an unusable enrollment answer: {0}")]
    BadResponse(String),
    /// Central's certificate does not fit this device.
    #[error("central issued an unusable certificate: {0}")]
    BadCertificate(#[from] CertificateError),
    /// The CSR could not be built (device key problem).
    #[error(transparent)]
    Csr(#[from] CsrError),
    /// The new identity could not be stored.
    #[error("cannot store the device identity: {0}")]
    State(#[from] StateError),
    /// The TPM could not produce its evidence or answer central's challenge.
    #[error("cannot prove the TPM to central: {0}")]
    Tpm(#[from] TpmKeyError),
}

impl From<ChannelError> for EnrollError {
    fn from(e: ChannelError) -> Self {
        EnrollError::Unavailable(e.to_string())
    }
}

/// Whether a gRPC status from central means "refused" (operator action needed) rather than an
/// outage.
pub fn is_refusal(code: Code) -> bool {
    matches!(
        code,
        Code::PermissionDenied | Code::Unauthenticated | Code::InvalidArgument
    )
}

/// What enrollment needs, and nothing else of the agent.
pub struct Enroller {
    pub(crate) identity: IdentityStore,
    pub(crate) dialer: CentralDialer,
    pub(crate) facts: HardwareFacts,
    pub(crate) token: String,
    pub(crate) status: Arc<StatusReporter>,
    /// First and largest retry delay.
    pub(crate) backoff: (Duration, Duration),
    pub(crate) liveness: Liveness,
    /// Checks the clock when a call fails (a wrong clock fails every TLS handshake).
    pub(crate) time: Arc<TimeKeeper>,
}

impl std::fmt::Debug for Enroller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enroller")
            .field("endpoint", &self.dialer.endpoint())
            .field("serial", &self.facts.serial)
            .finish_non_exhaustive()
    }
}

impl Enroller {
    /// One Enroll call with a CSR made now (and, for a TPM key, its evidence and the answer to
    /// central's challenge). Nothing is stored; see [`Enroller::enroll`].
    pub async fn enroll_once(&self) -> Result<EnrollOutcome, EnrollError> {
        let csr = build_csr_async(self.identity.key(), &self.facts.serial).await?;
        let evidence = self.tpm_evidence().await?;
        self.enroll_with_csr(csr, evidence.as_ref()).await
    }

    /// The TPM evidence for a TPM-resident key (blocking TPM work off the runtime).
    async fn tpm_evidence(&self) -> Result<Option<TpmEvidence>, EnrollError> {
        let DeviceKey::Tpm(key) = self.identity.key().clone() else {
            return Ok(None);
        };
        let evidence = tokio::task::spawn_blocking(move || key.evidence())
            .await
            .map_err(|e| EnrollError::Unavailable(format!("TPM task failed: {e}")))??;
        Ok(Some(evidence))
    }

    async fn enroll_with_csr(
        &self,
        csr_der: Vec<u8>,
        evidence: Option<&TpmEvidence>,
    ) -> Result<EnrollOutcome, EnrollError> {
        let span = info_span!("central.enroll", endpoint = self.dialer.endpoint(), serial = %self.facts.serial);
        async {
            let channel = self.dialer.enrollment_channel().await?;
            let mut client = enrollment_client(channel);
            let mut request = EnrollRequest {
                token: self.token.clone(),
                csr_der,
                facts: Some(self.facts.to_proto()),
                tpm: evidence.cloned(),
                activation: None,
            };
            let mut response = call(&mut client, request.clone()).await?;
            if response.status == EnrollStatus::Challenge as i32 {
                let (DeviceKey::Tpm(key), Some(challenge)) =
                    (self.identity.key().clone(), response.challenge.take())
                else {
                    return Err(EnrollError::BadResponse(
                        "a TPM challenge without a TPM key or without the challenge".into(),
                    ));
                };
                info!("central checked the TPM evidence; answering its credential challenge");
                let ticket = challenge.ticket.clone();
                let secret =
                    tokio::task::spawn_blocking(move || key.activate_credential(&challenge))
                        .await
                        .map_err(|e| EnrollError::Unavailable(format!("TPM task failed: {e}")))??;
                request.activation = Some(TpmActivation {
                    ticket,
                    secret: secret.to_vec(),
                });
                response = call(&mut client, request).await?;
            }
            match EnrollStatus::try_from(response.status) {
                Ok(EnrollStatus::Approved) => {
                    if response.device_id.is_empty() {
                        return Err(EnrollError::BadResponse(
                            "approved without a device id".into(),
                        ));
                    }
                    check_issued_certificate(
                        &response.certificate_der,
                        self.identity.key().public_key_spki_der(),
                        &response.device_id,
                    )?;
                    Ok(EnrollOutcome::Approved(StoredIdentity {
                        device_id: response.device_id,
                        cert_der: response.certificate_der,
                        ca_der: response.ca_certificate_der,
                    }))
                }
                Ok(EnrollStatus::Pending) => Ok(EnrollOutcome::Pending {
                    device_id: response.device_id,
                    retry_after: Duration::from_secs(u64::from(response.retry_after_seconds))
                        .clamp(Duration::from_secs(1), MAX_PENDING_RETRY),
                }),
                Ok(EnrollStatus::Challenge) => Err(EnrollError::BadResponse(
                    "central challenged the TPM again after it answered".into(),
                )),
                _ => Err(EnrollError::BadResponse(format!(
                    "unknown enrollment status {}",
                    response.status
                ))),
            }
        }
        .instrument(span)
        .await
    }

    /// Enrolls until central approves, then stores the identity. Pending: waits as central asks.
    /// Refused: phase `refused`, retries with backoff (an operator may fix the token or claim).
    /// Unreachable: phase `offline`, retries with backoff. `Ok(None)` on shutdown; `Err` only for
    /// local failures (device key, disk).
    pub async fn enroll(
        &self,
        shutdown: &mut Shutdown,
    ) -> Result<Option<StoredIdentity>, EnrollError> {
        self.status
            .set_phase(Phase::Enrolling, self.status.current().last_error)
            .await;
        let mut backoff = Backoff::new(self.backoff.0, self.backoff.1);
        // One CSR for all attempts: same key, so central sees the same request.
        self.liveness.step();
        let csr = build_csr_async(self.identity.key(), &self.facts.serial).await?;
        let evidence = self.tpm_evidence().await?;
        loop {
            if shutdown.is_triggered() {
                return Ok(None);
            }
            self.liveness.step();
            let Some(result) = shutdown
                .run(self.enroll_with_csr(csr.clone(), evidence.as_ref()))
                .await
            else {
                return Ok(None);
            };
            let delay = match result {
                Ok(EnrollOutcome::Approved(identity)) => {
                    self.identity.save(&identity).await?;
                    info!(device_id = %identity.device_id, "enrollment approved; device certificate stored");
                    return Ok(Some(identity));
                }
                Ok(EnrollOutcome::Pending {
                    device_id,
                    retry_after,
                }) => {
                    backoff.reset();
                    info!(%device_id, ?retry_after, "enrollment pending operator approval");
                    self.status
                        .update(|s| {
                            s.phase = Phase::Pending;
                            s.last_error = None;
                            if !device_id.is_empty() {
                                s.device_id = Some(device_id.clone());
                            }
                        })
                        .await;
                    retry_after
                }
                Err(EnrollError::Refused { code, message }) => {
                    error!(?code, reason = %message, "central REFUSED enrollment; an operator must fix the token or claim the device");
                    self.status.set_phase(Phase::Refused, Some(message)).await;
                    backoff.next_delay()
                }
                Err(e @ EnrollError::Tpm(_)) => {
                    error!(error = %e, "the TPM could not answer central's challenge; retrying");
                    self.status
                        .set_phase(Phase::Refused, Some(e.to_string()))
                        .await;
                    backoff.next_delay()
                }
                Err(EnrollError::Throttled {
                    message,
                    retry_after,
                }) => {
                    warn!(reason = %message, ?retry_after, "central asked to enroll later; waiting");
                    self.status.set_phase(Phase::Offline, Some(message)).await;
                    backoff.next_delay().max(retry_after)
                }
                Err(
                    e @ (EnrollError::Unavailable(_)
                    | EnrollError::BadResponse(_)
                    | EnrollError::BadCertificate(_)),
                ) => {
                    warn!(error = %e, "enrollment attempt failed; retrying");
                    self.status
                        .set_phase(Phase::Offline, Some(e.to_string()))
                        .await;
                    if shutdown
                        .run(self.time.check_after_failure())
                        .await
                        .is_none()
                    {
                        return Ok(None);
                    }
                    backoff.next_delay()
                }
                Err(e) => return Err(e),
            };
            self.liveness.wait(delay);
            if !shutdown.sleep(delay).await {
                return Ok(None);
            }
        }
    }
}

/// One Enroll call with the agent's timeout; refusals and outages told apart.
async fn call(
    client: &mut cairn_proto::v1::enrollment_client::EnrollmentClient<tonic::transport::Channel>,
    request: EnrollRequest,
) -> Result<EnrollResponse, EnrollError> {
    let response = tokio::time::timeout(REQUEST_TIMEOUT, client.enroll(request))
        .await
        .map_err(|_| {
            EnrollError::Unavailable(format!("no answer from central within {REQUEST_TIMEOUT:?}"))
        })?
        .map_err(|status| {
            if is_refusal(status.code()) {
                EnrollError::Refused {
                    code: status.code(),
                    message: status.message().to_string(),
                }
            } else if let Some(retry_after) = cairn_proto::retry_after(&status) {
                EnrollError::Throttled {
                    message: status.message().to_string(),
                    retry_after,
                }
            } else {
                EnrollError::Unavailable(format!("{:?}: {}", status.code(), status.message()))
            }
        })?;
    Ok(response.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_codes() {
        assert!(is_refusal(Code::PermissionDenied));
        assert!(is_refusal(Code::Unauthenticated));
        assert!(is_refusal(Code::InvalidArgument));
        assert!(!is_refusal(Code::Unavailable));
        assert!(!is_refusal(Code::Internal));
        assert!(!is_refusal(Code::DeadlineExceeded));
    }
}
