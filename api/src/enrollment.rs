//! Enrollment tokens (`/api/v1/enrollment-tokens`) and claims (`/api/v1/claims`): what lets a
//! device in.

use serde::{Deserialize, Serialize};

use crate::wire_enum::api_enum;
use crate::Timestamp;

api_enum! {
    /// How central treats a device that enrolls with an enrollment token.
    EnrollmentPolicy {
        /// Approve the device at once.
        Auto => "auto",
        /// Approve only devices pre-registered by serial or TPM EK hash (see claims).
        Claim => "claim",
        /// Keep the device pending until an operator approves it.
        Manual => "manual",
    }
}

api_enum! {
    /// What a claim matches a device by.
    ClaimKind {
        /// The device's DMI serial.
        Serial => "serial",
        /// SHA-256 of the device's TPM endorsement key.
        TpmEk => "tpm_ek",
    }
}

/// An enrollment token: what a fleet image carries so its devices can enroll (the secret itself
/// is never stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnrollmentToken {
    /// `tok_…`
    pub id: String,
    /// Operator's label.
    pub name: String,
    /// How enrolling devices are approved.
    pub policy: EnrollmentPolicy,
    /// Creation time.
    pub created_at: Timestamp,
    /// After this the token is refused.
    pub expires_at: Timestamp,
    /// Admissions allowed; `null` = unlimited.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub max_uses: Option<u32>,
    /// Admissions so far.
    pub uses: u32,
    /// Revoked by an operator.
    pub revoked: bool,
    /// Only devices whose key central proved to live in a genuine TPM (EK certificate from a
    /// trusted vendor, attestation key, ActivateCredential) may enroll with this token. `false`
    /// also admits software keys (and TPMs without an EK certificate), as for host agents.
    #[serde(default)]
    pub require_tpm: bool,
}

/// Body of `POST /api/v1/enrollment-tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateEnrollmentToken {
    /// Name of the new token: 1 to 64 printable characters.
    pub name: String,
    /// How enrolling devices are approved.
    pub policy: EnrollmentPolicy,
    /// Lifetime in seconds (1 s to 10 years); central's configured default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_seconds: Option<u64>,
    /// Admissions allowed (at least 1); `null` or absent = unlimited.
    #[serde(default)]
    pub max_uses: Option<u32>,
    /// Admit only devices with a proven TPM-resident key; absent = `true`. Set `false` for
    /// devices with software keys (host agents, tests, TPMs without an EK certificate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_tpm: Option<bool>,
}

/// Answer to `POST /api/v1/enrollment-tokens` (201).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreatedEnrollmentToken {
    /// The new token.
    pub token: EnrollmentToken,
    /// Its secret, `cet_…`: shown only this once.
    pub secret: String,
}

/// Answer to `GET /api/v1/enrollment-tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnrollmentTokenList {
    /// Every enrollment token.
    pub tokens: Vec<EnrollmentToken>,
}

/// Answer to `POST /api/v1/enrollment-tokens/{id}/revoke`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnrollmentTokenReply {
    /// The token after the change.
    pub token: EnrollmentToken,
}

/// A pre-registration that lets one device in under a `claim` token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Claim {
    /// `clm_…`
    pub id: String,
    /// What it matches by.
    pub kind: ClaimKind,
    /// The serial or the EK hash.
    pub value: String,
    /// Creation time.
    pub created_at: Timestamp,
    /// The device that used it, once used.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub device_id: Option<String>,
}

/// Body of `POST /api/v1/claims`: exactly one of the two keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateClaim {
    /// The device's serial: 1 to 128 printable characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// SHA-256 of the device's TPM endorsement key: 64 hex characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm_ek_sha256: Option<String>,
}

impl CreateClaim {
    /// A claim by serial.
    pub fn serial(serial: impl Into<String>) -> Self {
        Self {
            serial: Some(serial.into()),
            tpm_ek_sha256: None,
        }
    }

    /// A claim by TPM EK hash.
    pub fn tpm_ek(sha256_hex: impl Into<String>) -> Self {
        Self {
            serial: None,
            tpm_ek_sha256: Some(sha256_hex.into()),
        }
    }
}

/// Answer to `POST /api/v1/claims` (201).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClaimReply {
    /// The new claim.
    pub claim: Claim,
}

/// Answer to `GET /api/v1/claims`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClaimList {
    /// Every claim.
    pub claims: Vec<Claim>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_enrollment_token_sends_null_max_uses_and_omits_expiry() {
        let body = CreateEnrollmentToken {
            name: "lab".into(),
            policy: EnrollmentPolicy::Claim,
            expires_in_seconds: None,
            max_uses: None,
            require_tpm: None,
        };
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            serde_json::json!({"name":"lab","policy":"claim","max_uses":null})
        );
    }

    #[test]
    fn create_claim_sends_one_key() {
        assert_eq!(
            serde_json::to_value(CreateClaim::serial("S1")).unwrap(),
            serde_json::json!({"serial":"S1"})
        );
        assert_eq!(
            serde_json::to_value(CreateClaim::tpm_ek("ab")).unwrap(),
            serde_json::json!({"tpm_ek_sha256":"ab"})
        );
    }

    #[test]
    fn an_unknown_policy_is_kept_as_sent() {
        let token: EnrollmentToken = serde_json::from_value(serde_json::json!({
            "id": "tok_1", "name": "t", "policy": "ask-the-oracle",
            "created_at": "2025-01-01T00:00:00Z", "expires_at": "2025-02-01T00:00:00Z",
            "max_uses": null, "uses": 0, "revoked": false, "colour": "blue"
        }))
        .unwrap();
        assert_eq!(
            token.policy,
            EnrollmentPolicy::Other("ask-the-oracle".into())
        );
        assert!(!token.policy.is_known());
        assert_eq!(EnrollmentPolicy::known_list(), "auto, claim or manual");
    }
}
