//! Remote attestation at central: each device with a proven TPM answers a fresh nonce with a
//! TPM2_Quote of its boot PCRs and its firmware event log, on every stream open and every
//! `attestation_interval_secs`; central checks the quote with the AK it proved at enrollment,
//! appraises the boot (`cairn_attest::appraise`), records the verdict, and quarantines a device
//! whose boot does not match: its stream gets no desired state until a quote verifies again.
//!
//! This module turns store records into the API's view ([`summary`]); the stream side lives in
//! [`crate::grpc`].

use cairn_api::{AttestationState, AttestationSummary, KeyStorage, Timestamp};

use crate::store::attestation::{AttestationRecord, FAILED, VERIFIED};

/// A verified device turns `stale` after this many intervals without a verified quote.
pub const STALE_AFTER_INTERVALS: i64 = 2;

/// The state shown for a device: from its record, whether it has a proven TPM, and how long
/// ago it last verified.
pub fn summary(
    record: Option<&AttestationRecord>,
    key_storage: &KeyStorage,
    now: i64,
    interval_secs: u64,
) -> AttestationSummary {
    let verified_at = record
        .and_then(|r| r.verified_at)
        .map(Timestamp::from_unix_seconds);
    let state = match record {
        None if *key_storage == KeyStorage::Tpm => AttestationState::Pending,
        None => AttestationState::Unsupported,
        Some(r) if r.state == FAILED => AttestationState::Failed,
        Some(r) if r.state == VERIFIED => {
            let fresh_until = r
                .verified_at
                .unwrap_or(r.checked_at)
                .saturating_add(STALE_AFTER_INTERVALS.saturating_mul(interval_secs as i64));
            if now > fresh_until {
                AttestationState::Stale
            } else {
                AttestationState::Verified
            }
        }
        Some(r) => AttestationState::from(r.state.as_str()),
    };
    AttestationSummary {
        detail: record
            .filter(|r| r.state == FAILED && !r.detail.is_empty())
            .map(|r| r.detail.clone()),
        state,
        verified_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(state: &str, verified_at: Option<i64>) -> AttestationRecord {
        AttestationRecord {
            device_id: "dev_1".into(),
            state: state.into(),
            detail: if state == FAILED {
                "PCR 7: Secure Boot is off".into()
            } else {
                String::new()
            },
            checked_at: 1_000,
            verified_at,
            ..Default::default()
        }
    }

    #[test]
    fn states_follow_the_record_and_the_clock() {
        let tpm = KeyStorage::Tpm;
        assert_eq!(summary(None, &tpm, 0, 60).state, AttestationState::Pending);
        assert_eq!(
            summary(None, &KeyStorage::Software, 0, 60).state,
            AttestationState::Unsupported
        );
        let verified = record(VERIFIED, Some(1_000));
        assert_eq!(
            summary(Some(&verified), &tpm, 1_120, 60).state,
            AttestationState::Verified
        );
        assert_eq!(
            summary(Some(&verified), &tpm, 1_121, 60).state,
            AttestationState::Stale
        );
        let failed = summary(Some(&record(FAILED, Some(900))), &tpm, 1_000, 60);
        assert_eq!(failed.state, AttestationState::Failed);
        assert_eq!(failed.detail.as_deref(), Some("PCR 7: Secure Boot is off"));
    }
}
