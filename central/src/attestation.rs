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

use cairn_attest::appraise::{self, Appraisal, Measured, Policy, Reference};
use cairn_attest::eventlog::EventLog;
use cairn_attest::tpm2::TpmPublic;
use cairn_proto::v1::AttestationReport;

use cairn_proto::v1::{central_message, AttestationRequest, CentralMessage};

use crate::sessions::AttestationGate;
use crate::store::attestation::{self as store_attestation, AttestationRecord, FAILED, VERIFIED};
use crate::store::events::Severity;
use crate::store::{audit, now_unix};
use crate::Shared;

/// Longest failure text kept and shown.
const MAX_DETAIL_CHARS: usize = 400;

/// What central concluded from one attestation report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The boot matched; keep these (possibly newly learned) reference texts.
    Verified {
        /// Encoded firmware reference to keep.
        reference: String,
        /// Learned UKI lines ("version hex") to keep.
        uki: String,
    },
    /// The boot did not match (or the report was not acceptable): quarantine.
    Failed {
        /// "PCR 7: Secure Boot is off (...)", or what was wrong with the report.
        detail: String,
        /// The firmware reference the boot measured, for an admin to accept.
        pending_reference: Option<String>,
        /// The "version hex" UKI line the boot measured, for an admin to accept.
        pending_uki: Option<String>,
    },
}

impl Verdict {
    fn failed(detail: impl Into<String>) -> Verdict {
        let detail: String = detail.into();
        Verdict::Failed {
            detail: detail.chars().take(MAX_DETAIL_CHARS).collect(),
            pending_reference: None,
            pending_uki: None,
        }
    }
}

/// What central holds to judge one report.
#[derive(Debug, Clone, Copy)]
pub struct Expectations<'a> {
    /// The AK's TPMT_PUBLIC proved at enrollment.
    pub ak_public: &'a [u8],
    /// The nonce central sent.
    pub nonce: &'a [u8],
    /// The device's record (reference, learned UKI values), if it attested before.
    pub record: Option<&'a AttestationRecord>,
    /// Hex stub PCR 11 values of the uploaded bundles of the version the device reports.
    pub bundle_uki: &'a [String],
    /// Whether Secure Boot must be on.
    pub require_secure_boot: bool,
}

/// Judge an attestation report: the quote by the proven AK for this nonce, the event log
/// replayed against it, and the boot appraised against the device's references and the
/// bundles' UKIs. Pure: the caller stores the verdict.
pub fn judge(report: &AttestationReport, expect: Expectations<'_>) -> Verdict {
    if !report.error.is_empty() {
        let error: String = report.error.chars().take(200).collect();
        return Verdict::failed(format!("the device could not quote its boot PCRs: {error}"));
    }
    let ak = match TpmPublic::parse(expect.ak_public) {
        Ok(ak) => ak,
        Err(e) => {
            return Verdict::failed(format!(
                "the stored attestation key is unreadable ({e}); revoke and re-enroll the device"
            ))
        }
    };
    if report.pcrs.len() > 24 {
        return Verdict::failed(format!(
            "the report lists {} PCRs; a TPM has 24",
            report.pcrs.len()
        ));
    }
    let mut pcrs = BTreeMap::new();
    for (index, value) in &report.pcrs {
        let (Ok(index), Ok(value)) = (u8::try_from(*index), <[u8; 32]>::try_from(value.as_slice()))
        else {
            return Verdict::failed(format!("the report's PCR {index} is not a SHA-256 value"));
        };
        pcrs.insert(index, value);
    }
    if let Err(e) =
        cairn_attest::keys::verify_quote(&ak, &report.quote, &report.signature, expect.nonce, &pcrs)
    {
        return Verdict::failed(format!("the quote is refused: {e}"));
    }
    if report.event_log.len() > cairn_proto::MAX_EVENT_LOG_BYTES {
        return Verdict::failed(format!(
            "the event log is {} bytes; at most {} are accepted",
            report.event_log.len(),
            cairn_proto::MAX_EVENT_LOG_BYTES
        ));
    }
    let log = if report.event_log.is_empty() {
        EventLog::default()
    } else {
        match EventLog::parse(&report.event_log) {
            Ok(log) => log,
            Err(e) => return Verdict::failed(format!("the event log is refused: {e}")),
        }
    };
    let reference = match expect.record.and_then(|r| r.reference.as_deref()) {
        Some(text) => match Reference::decode(text) {
            Ok(reference) => Some(reference),
            Err(e) => {
                return Verdict::failed(format!(
                    "central's stored reference for this device is unreadable ({e})"
                ))
            }
        },
        None => None,
    };
    let version = report.os_version.as_str();
    let learned_uki = expect.record.map(|r| r.uki.as_str()).unwrap_or("");
    let mut known: Vec<[u8; 32]> = expect
        .bundle_uki
        .iter()
        .map(String::as_str)
        .chain(learned_uki.lines().filter_map(|line| {
            let (v, hex) = line.split_once(' ')?;
            (v == version).then_some(hex)
        }))
        .filter_map(|hex| hex::decode(hex).ok()?.try_into().ok())
        .collect();
    known.dedup();
    let policy = Policy {
        require_secure_boot: expect.require_secure_boot,
        uki_pcr11: &known,
        reference: reference.as_ref(),
    };
    let appraisal = match appraise::appraise(&pcrs, &log, &policy) {
        Ok(appraisal) => appraisal,
        Err(e) => return Verdict::failed(format!("the quote does not cover the boot PCRs: {e}")),
    };
    let uki_line = |measured: &Measured| format!("{version} {}", hex::encode(measured.uki_pcr11));
    match appraisal {
        Appraisal::Failed(failure) => {
            let measured = failure.measured.as_ref();
            Verdict::Failed {
                detail: failure.to_string().chars().take(MAX_DETAIL_CHARS).collect(),
                pending_reference: measured.map(|m| m.firmware.encode()),
                pending_uki: measured.map(uki_line),
            }
        }
        Appraisal::Verified(measured) => {
            let line = uki_line(&measured);
            // No bundle and nothing learned for this version: only the first OS a device
            // attests with is learned; any later version must come from an uploaded bundle.
            if known.is_empty() && !learned_uki.trim().is_empty() {
                return Verdict::Failed {
                    detail: format!(
                        "PCR 11: OS version {version:?} is not one central knows: no uploaded bundle has it and the device first attested with another; upload its bundle, or accept the new values"
                    ),
                    pending_reference: Some(measured.firmware.encode()),
                    pending_uki: Some(line),
                };
            }
            let mut uki = learned_uki.to_owned();
            if known.is_empty() {
                uki = format!("{line}\n");
            }
            Verdict::Verified {
                reference: reference.unwrap_or(measured.firmware).encode(),
                uki,
            }
        }
    }
}

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

/// Most nonces of one stream waiting for an answer (an admin's request may overlap the
/// interval's).
const MAX_OUTSTANDING: usize = 2;

/// One stream's side of attestation: when to ask for a quote, the nonces asked, and what to do
/// with an answer.
#[derive(Debug)]
pub struct StreamAttestation {
    ak_public: Vec<u8>,
    interval: std::time::Duration,
    next_at: tokio::time::Instant,
    outstanding: Vec<Vec<u8>>,
    require_secure_boot: bool,
}

impl StreamAttestation {
    /// For a device whose proven AK is `ak_public`; the first request is due at once.
    pub fn new(ak_public: Vec<u8>, config: &crate::config::CentralConfig) -> Self {
        StreamAttestation {
            ak_public,
            interval: std::time::Duration::from_secs(config.attestation_interval_secs),
            next_at: tokio::time::Instant::now(),
            outstanding: Vec::new(),
            require_secure_boot: config.require_secure_boot,
        }
    }

    /// Resolves when a request is due: at stream open, every interval, or when an admin asked
    /// for one (the gate's `quote_now`).
    pub async fn due(&mut self, gate: &AttestationGate) {
        tokio::select! {
            _ = tokio::time::sleep_until(self.next_at) => {}
            _ = gate.quote_now.notified() => {}
        }
    }

    /// A new request with a fresh nonce; the next one is due an interval from now.
    pub fn request(&mut self) -> CentralMessage {
        let mut nonce = vec![0u8; cairn_proto::ATTESTATION_NONCE_BYTES];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
            .expect("the system random source failed");
        if self.outstanding.len() >= MAX_OUTSTANDING {
            self.outstanding.remove(0);
        }
        self.outstanding.push(nonce.clone());
        self.next_at = tokio::time::Instant::now() + self.interval;
        CentralMessage {
            kind: Some(central_message::Kind::Attest(AttestationRequest {
                nonce,
                pcrs: appraise::QUOTED_PCRS
                    .iter()
                    .map(|p| u32::from(*p))
                    .collect(),
            })),
        }
    }

    /// Judge a report, store the verdict, write an event (and an audit row on failure) when
    /// the state changes, and open or close the stream's gate. Returns false when the stream
    /// should end (central could not store the verdict).
    pub async fn on_report(
        &mut self,
        shared: &Shared,
        device_id: &str,
        gate: &AttestationGate,
        report: AttestationReport,
    ) -> bool {
        // A report answers one of our nonces, else it is judged against the newest: a replay.
        let nonce = match self.outstanding.iter().position(|n| *n == report.nonce) {
            Some(at) => self.outstanding.remove(at),
            None => self.outstanding.last().cloned().unwrap_or_default(),
        };
        let version: String = report.os_version.chars().take(64).collect();
        let read = {
            let id = device_id.to_owned();
            shared
                .store
                .read(move |conn| {
                    Ok((
                        store_attestation::get(conn, &id)?,
                        store_attestation::bundle_uki_pcr11(conn, &version)?,
                    ))
                })
                .await
        };
        let (record, bundle_uki) = match read {
            Ok(read) => read,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the attestation record; ending the stream so the device retries");
                return false;
            }
        };
        let verdict = judge(
            &report,
            Expectations {
                ak_public: &self.ak_public,
                nonce: &nonce,
                record: record.as_ref(),
                bundle_uki: &bundle_uki,
                require_secure_boot: self.require_secure_boot,
            },
        );
        let was = record.map(|r| r.state);
        let now = now_unix();
        let stored = {
            let id = device_id.to_owned();
            let verdict = verdict.clone();
            let was = was.clone();
            shared
                .store
                .run(move |conn| {
                    let tx = conn.transaction()?;
                    match &verdict {
                        Verdict::Verified { reference, uki } => {
                            store_attestation::record_verified(&tx, &id, now, reference, uki)?
                        }
                        Verdict::Failed {
                            detail,
                            pending_reference,
                            pending_uki,
                        } => {
                            store_attestation::record_failed(
                                &tx,
                                &id,
                                now,
                                detail,
                                pending_reference.as_deref(),
                                pending_uki.as_deref(),
                            )?;
                            if was.as_deref() != Some(FAILED) {
                                audit::record(
                                    &tx,
                                    "central",
                                    "device.attestation_failed",
                                    &id,
                                    detail,
                                )?;
                            }
                        }
                    }
                    tx.commit()?;
                    Ok(())
                })
                .await
        };
        if let Err(e) = stored {
            tracing::warn!(error = %e, "could not store the attestation verdict; ending the stream so the device retries");
            return false;
        }
        match verdict {
            Verdict::Verified { .. } => {
                if was.as_deref() != Some(VERIFIED) {
                    tracing::info!("boot attested: verified");
                    crate::events::record(
                        shared,
                        Some(device_id),
                        "device.attestation",
                        Severity::Info,
                        "boot verified by a TPM quote",
                    );
                }
                if !gate.set(true) {
                    // Held back until now: the stored desired state goes out.
                    shared.push_stored(device_id).await;
                }
            }
            Verdict::Failed { detail, .. } => {
                gate.set(false);
                if was.as_deref() != Some(FAILED) {
                    tracing::warn!(%detail, "boot attestation failed: the device is quarantined");
                    crate::events::record(
                        shared,
                        Some(device_id),
                        "device.attestation",
                        Severity::Error,
                        format!("attestation failed, quarantined: {detail}"),
                    );
                }
            }
        }
        true
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
