//! Remote attestation at central: each device with a proven TPM answers a fresh nonce with a
//! TPM2_Quote of its boot PCRs and its firmware event log, on every stream open and every
//! `attestation_interval_secs`; central checks the quote with the AK it proved at enrollment,
//! appraises the boot (`cairn_attest::appraise`), records the verdict, and quarantines a device
//! whose boot does not match: its stream gets no desired state until a quote verifies again.
//!
//! This module turns store records into the API's views ([`summary`], [`device_view`]); the
//! stream side lives in [`crate::grpc`].

use std::collections::BTreeMap;

use cairn_api::{
    AttestationState, AttestationSummary, DeviceAttestation, KeyStorage, PinnedPcr, Timestamp,
    UkiValue,
};

use crate::store::attestation::{AttestationRecord, FAILED, VERIFIED};

/// A verified device turns `stale` after this many intervals without a verified quote.
pub const STALE_AFTER_INTERVALS: i64 = 2;

/// `source` of a UKI value predicted from an uploaded bundle.
pub const UKI_FROM_BUNDLE: &str = "bundle";
/// `source` of a UKI value learned on first use or accepted by an admin.
pub const UKI_LEARNED: &str = "learned";

/// The oldest verification (Unix seconds) that still counts as fresh at `now`: a verified
/// device whose last verified quote is older is `stale`.
pub fn fresh_since(now: i64, interval_secs: u64) -> i64 {
    let interval = i64::try_from(interval_secs).unwrap_or(i64::MAX);
    now.saturating_sub(STALE_AFTER_INTERVALS.saturating_mul(interval))
}

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
            if r.verified_at.unwrap_or(r.checked_at) < fresh_since(now, interval_secs) {
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

/// What a device's boot is compared with, for [`device_view`]: the device's facts and the
/// bundles' predicted UKI values.
#[derive(Debug, Clone)]
pub struct ViewInputs {
    /// The device.
    pub device_id: String,
    /// How it keeps its key (`tpm` devices can attest).
    pub key_storage: KeyStorage,
    /// (OS version, PCR 11 hex) predicted from uploaded bundles of the versions it runs or
    /// is to run.
    pub bundle_uki: Vec<(String, String)>,
}

/// `GET /api/v1/devices/{id}/attestation`'s answer, from the device's record and central's
/// settings.
pub fn device_view(
    inputs: &ViewInputs,
    record: Option<&AttestationRecord>,
    now: i64,
    config: &crate::CentralConfig,
) -> DeviceAttestation {
    let summary = summary(
        record,
        &inputs.key_storage,
        now,
        config.attestation_interval_secs,
    );
    let mut uki: Vec<UkiValue> = inputs
        .bundle_uki
        .iter()
        .map(|(version, pcr11)| UkiValue {
            os_version: version.clone(),
            pcr11: pcr11.clone(),
            source: UKI_FROM_BUNDLE.to_owned(),
        })
        .collect();
    for (version, pcr11) in record.map_or_else(Vec::new, |r| learned_uki(&r.uki)) {
        if !uki
            .iter()
            .any(|u| u.os_version == version && u.pcr11 == pcr11)
        {
            uki.push(UkiValue {
                os_version: version,
                pcr11,
                source: UKI_LEARNED.to_owned(),
            });
        }
    }
    DeviceAttestation {
        device_id: inputs.device_id.clone(),
        acceptable: summary.state == AttestationState::Failed
            && record.is_some_and(|r| r.pending_reference.is_some() || r.pending_uki.is_some()),
        summary,
        checked_at: record.map(|r| Timestamp::from_unix_seconds(r.checked_at)),
        interval_seconds: config.attestation_interval_secs,
        require_secure_boot: config.require_secure_boot,
        pinned: record
            .and_then(|r| r.reference.as_deref())
            .map(pinned_pcrs)
            .unwrap_or_default(),
        uki,
    }
}

/// How many events make each PCR of an encoded firmware reference (lines of
/// "pcr event_type_hex sha256_hex"). Read leniently, for display only: a line that does not
/// start with a PCR number is skipped.
pub fn pinned_pcrs(reference: &str) -> Vec<PinnedPcr> {
    let mut events = BTreeMap::<u8, u32>::new();
    for line in reference.lines() {
        if let Some(pcr) = line
            .split_whitespace()
            .next()
            .and_then(|p| p.parse::<u8>().ok())
        {
            *events.entry(pcr).or_default() += 1;
        }
    }
    events
        .into_iter()
        .map(|(pcr, events)| PinnedPcr { pcr, events })
        .collect()
}

/// The learned UKI values of a record, (OS version, PCR 11 hex) per "version hex" line.
pub fn learned_uki(lines: &str) -> Vec<(String, String)> {
    lines
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            match (words.next(), words.next()) {
                (Some(version), Some(pcr11)) => Some((version.to_owned(), pcr11.to_owned())),
                _ => None,
            }
        })
        .collect()
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

    #[test]
    fn pinned_pcrs_count_events_per_pcr_and_skip_junk() {
        let reference = "0 80000008 aa\n0 0000000d bb\n7 80000001 cc\n\nnot a line\n";
        assert_eq!(
            pinned_pcrs(reference),
            vec![
                PinnedPcr { pcr: 0, events: 2 },
                PinnedPcr { pcr: 7, events: 1 }
            ]
        );
    }

    #[test]
    fn view_lists_bundle_values_then_learned_ones_and_says_what_is_acceptable() {
        let inputs = ViewInputs {
            device_id: "dev_1".into(),
            key_storage: KeyStorage::Tpm,
            bundle_uki: vec![("2.0".into(), "ab".into())],
        };
        let mut failed = record(FAILED, Some(900));
        failed.uki = "2.0 ab\n1.0 cd\n".into();
        failed.pending_uki = Some("2.0 ef".into());
        let config = crate::CentralConfig::with_data_dir("/nonexistent");
        let view = device_view(&inputs, Some(&failed), 1_000, &config);
        assert!(view.acceptable);
        assert_eq!(view.checked_at, Some(Timestamp::from_unix_seconds(1_000)));
        let uki: Vec<_> = view
            .uki
            .iter()
            .map(|u| (u.os_version.as_str(), u.pcr11.as_str(), u.source.as_str()))
            .collect();
        assert_eq!(uki, [("2.0", "ab", "bundle"), ("1.0", "cd", "learned")]);
        let software = ViewInputs {
            key_storage: KeyStorage::Software,
            ..inputs
        };
        let view = device_view(&software, None, 1_000, &config);
        assert_eq!(view.summary.state, AttestationState::Unsupported);
        assert!(!view.acceptable && view.pinned.is_empty() && view.checked_at.is_none());
    }
}
