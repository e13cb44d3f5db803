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
    AttestationState, AttestationSummary, DeviceAttestation, KeyStorage, PendingValues, PinnedPcr,
    Timestamp, UkiValue,
};

use cairn_attest::appraise::{self, Appraisal, Measured, Policy, Reference};
use cairn_attest::eventlog::EventLog;
use cairn_attest::tpm2::TpmPublic;
use cairn_proto::v1::AttestationReport;

use cairn_proto::v1::{central_message, AttestationRequest, CentralMessage};

use crate::sessions::AttestationGate;
use crate::store::attestation::{self as store_attestation, AttestationRecord, FAILED, VERIFIED};
use crate::store::events::Severity;
use crate::store::{audit, devices, now_unix, rollouts};
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
    /// The OS versions the device may run ([`expected_versions`]); empty: any (its first
    /// quote, or after a reset).
    pub expected_versions: &'a [String],
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
    // A quote over no nonce proves nothing about when it was made.
    if expect.nonce.is_empty() {
        return Verdict::failed("the quote answers no request of central's (a replay)");
    }
    let version = report.os_version.as_str();
    if !valid_os_version(version) {
        let shown: String = version.chars().take(64).collect();
        return Verdict::failed(format!(
            "the reported OS version {shown:?} is not a version (1 to {MAX_OS_VERSION_CHARS} of A-Z a-z 0-9 . _ + ~ -)"
        ));
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
    let learned_uki = expect.record.map(|r| r.uki.as_str()).unwrap_or("");
    let learned_here = learned_uki_lines(learned_uki)
        .into_iter()
        .filter(|(v, _)| v == version)
        .map(|(_, hex)| hex);
    let mut known: Vec<[u8; 32]> = expect
        .bundle_uki
        .iter()
        .cloned()
        .chain(learned_here)
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
            // A real boot (the firmware measures Secure Boot) always measures the UKI.
            if expect.require_secure_boot && measured.uki_pcr11 == [0; 32] {
                return Verdict::failed(
                    "PCR 11: no UKI was measured: the device did not boot through systemd-stub",
                );
            }
            // A UKI of another uploaded bundle verifies too; unless a rollout sent the device
            // there (or back), running it is a downgrade or a reflash, not the OS it should run.
            if !expect.expected_versions.is_empty()
                && !expect.expected_versions.iter().any(|v| v == version)
            {
                return Verdict::Failed {
                    detail: format!(
                        "PCR 11: the device runs OS version {version:?}, but central expects {} (its last verified version, or its rollout's target or starting version); roll that version out to it, or accept the new values",
                        expect.expected_versions.iter().map(|v| format!("{v:?}")).collect::<Vec<_>>().join(" or ")
                    )
                    .chars()
                    .take(MAX_DETAIL_CHARS)
                    .collect(),
                    pending_reference: Some(measured.firmware.encode()),
                    pending_uki: Some(line),
                };
            }
            // No bundle and nothing learned for this version: a UKI value is learned only with
            // the firmware reference, at first use or after a reset; any later version must
            // come from an uploaded bundle (or an admin's accept).
            if known.is_empty() && reference.is_some() {
                return Verdict::Failed {
                    detail: format!(
                        "PCR 11: OS version {version:?} is not one central knows: no uploaded bundle has it and the device first attested with another; upload its bundle, or accept the new values"
                    ),
                    pending_reference: Some(measured.firmware.encode()),
                    pending_uki: Some(line),
                };
            }
            // Learned here only at first use or after a reset, when nothing else is kept.
            let uki = if known.is_empty() {
                format!("{line}\n")
            } else {
                learned_uki.to_owned()
            };
            Verdict::Verified {
                reference: reference.unwrap_or(measured.firmware).encode(),
                uki,
            }
        }
    }
}

/// The OS versions a device may report: the one of its last verified quote, and the target and
/// starting version of its latest rollout. Empty (any) when it has no verified version yet.
pub fn expected_versions(
    record: Option<&AttestationRecord>,
    desired: Option<&str>,
    rollout_from: Option<&str>,
) -> Vec<String> {
    let Some(last) = record.and_then(|r| r.os_version.as_deref()) else {
        return Vec::new();
    };
    let mut versions = vec![last.to_owned()];
    for version in [desired, rollout_from].into_iter().flatten() {
        if !version.is_empty() && !versions.iter().any(|v| v == version) {
            versions.push(version.to_owned());
        }
    }
    versions
}

/// Longest OS version a report may name (bundle versions are manifest `version` strings).
pub const MAX_OS_VERSION_CHARS: usize = 64;

/// Whether `version` can be an OS version: 1 to [`MAX_OS_VERSION_CHARS`] characters of
/// `A-Z a-z 0-9 . _ + ~ -` (no space or newline: it is stored in "version hex" lines).
pub fn valid_os_version(version: &str) -> bool {
    (1..=MAX_OS_VERSION_CHARS).contains(&version.len())
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '~' | '-'))
}

/// A verified device turns `stale` after this many intervals without a verified quote.
pub const STALE_AFTER_INTERVALS: i64 = 2;

/// `source` of a UKI value predicted from an uploaded bundle.
pub const UKI_FROM_BUNDLE: &str = "bundle";
/// `source` of a UKI value learned on first use or accepted by an admin.
pub const UKI_LEARNED: &str = "learned";
/// `source` of a UKI value a failed boot measured, not (yet) accepted.
pub const UKI_PENDING: &str = "pending";

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
    outstanding: Vec<(Vec<u8>, tokio::time::Instant)>,
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

    /// A new request with a fresh nonce; the next one is due an interval from now. A request
    /// left unanswered for a whole interval closes the gate: a device that stops answering
    /// gets no new desired state either.
    pub fn request(&mut self, gate: &AttestationGate) -> CentralMessage {
        let now = tokio::time::Instant::now();
        if self
            .outstanding
            .iter()
            .any(|(_, sent)| now.duration_since(*sent) >= self.interval)
            && gate.set(false)
        {
            tracing::warn!("the device left an attestation request unanswered for a whole interval; holding its desired state back");
        }
        let mut nonce = vec![0u8; cairn_proto::ATTESTATION_NONCE_BYTES];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
            .expect("the system random source failed");
        if self.outstanding.len() >= MAX_OUTSTANDING {
            self.outstanding.remove(0);
        }
        self.outstanding.push((nonce.clone(), now));
        self.next_at = now + self.interval;
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
        // Only an answer to an outstanding request is judged; anything else (a replayed or
        // unsolicited report) ends the stream: the agent never sends one.
        let Some(at) = self
            .outstanding
            .iter()
            .position(|(n, _)| *n == report.nonce)
        else {
            tracing::warn!("the device sent an attestation report for no outstanding request (a replay?); ending its stream");
            return false;
        };
        let (nonce, _) = self.outstanding.remove(at);
        let version: String = report
            .os_version
            .chars()
            .take(MAX_OS_VERSION_CHARS + 1)
            .collect();
        let now = now_unix();
        let ak_public = self.ak_public.clone();
        let require_secure_boot = self.require_secure_boot;
        let id = device_id.to_owned();
        // Read, judge and write in one transaction, so an admin's accept or reset in between
        // is not overwritten with what was read before it.
        let stored = shared
            .store
            .run(move |conn| {
                let tx = conn.transaction()?;
                let record = store_attestation::get(&tx, &id)?;
                let bundle_uki = store_attestation::bundle_uki_pcr11(&tx, &version)?;
                let desired = devices::get(&tx, &id)?.and_then(|d| d.desired_os);
                let rollout_from = rollouts::latest_from_version(&tx, &id)?;
                let expected_versions = expected_versions(
                    record.as_ref(),
                    desired.as_ref().map(|d| d.version.as_str()),
                    rollout_from.as_deref(),
                );
                let verdict = judge(
                    &report,
                    Expectations {
                        ak_public: &ak_public,
                        nonce: &nonce,
                        record: record.as_ref(),
                        bundle_uki: &bundle_uki,
                        expected_versions: &expected_versions,
                        require_secure_boot,
                    },
                );
                let was = record.map(|r| r.state);
                match &verdict {
                    Verdict::Verified { reference, uki } => {
                        store_attestation::record_verified(&tx, &id, now, reference, uki, &version)?
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
                Ok((verdict, was))
            })
            .await;
        let (verdict, was) = match stored {
            Ok(stored) => stored,
            Err(e) => {
                tracing::warn!(error = %e, "could not judge or store the attestation verdict; ending the stream so the device retries");
                return false;
            }
        };
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
                if was.as_deref() == Some(FAILED) {
                    // It may host deployments again.
                    shared.placement.wake();
                }
            }
            Verdict::Failed { detail, .. } => {
                gate.set(false);
                if was.as_deref() != Some(FAILED) {
                    // Its deployments move to devices that can receive them.
                    shared.placement.wake();
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
    for (version, pcr11) in record.map_or_else(Vec::new, |r| learned_uki_lines(&r.uki)) {
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
    let acceptable = summary.state == AttestationState::Failed
        && record.is_some_and(|r| r.pending_reference.is_some() || r.pending_uki.is_some());
    let pending = record.filter(|_| acceptable).map(|r| PendingValues {
        changed_pcrs: r
            .pending_reference
            .as_deref()
            .map(|pending| changed_pcrs(r.reference.as_deref(), pending))
            .unwrap_or_default(),
        uki: r
            .pending_uki
            .as_deref()
            .and_then(|line| learned_uki_lines(line).pop())
            .map(|(os_version, pcr11)| UkiValue {
                os_version,
                pcr11,
                source: UKI_PENDING.to_owned(),
            }),
    });
    DeviceAttestation {
        device_id: inputs.device_id.clone(),
        acceptable,
        os_version: record.and_then(|r| r.os_version.clone()),
        pending,
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

/// The PCRs whose lines differ between two encoded firmware references (every PCR of
/// `pending` when nothing is pinned). Read leniently, for display only.
pub fn changed_pcrs(pinned: Option<&str>, pending: &str) -> Vec<u8> {
    let pinned = lines_by_pcr(pinned.unwrap_or(""));
    let pending = lines_by_pcr(pending);
    let mut changed: Vec<u8> = pending
        .keys()
        .chain(pinned.keys())
        .copied()
        .filter(|pcr| pinned.get(pcr) != pending.get(pcr))
        .collect();
    changed.sort_unstable();
    changed.dedup();
    changed
}

/// How many events make each PCR of an encoded firmware reference (lines of
/// "pcr event_type_hex sha256_hex"). Read leniently, for display only.
pub fn pinned_pcrs(reference: &str) -> Vec<PinnedPcr> {
    lines_by_pcr(reference)
        .into_iter()
        .map(|(pcr, lines)| PinnedPcr {
            pcr,
            events: lines.len() as u32,
        })
        .collect()
}

/// The lines of an encoded firmware reference by PCR, in order. A line that does not start
/// with a PCR number is skipped.
fn lines_by_pcr(reference: &str) -> BTreeMap<u8, Vec<&str>> {
    let mut lines = BTreeMap::<u8, Vec<&str>>::new();
    for line in reference.lines() {
        if let Some(pcr) = line
            .split_whitespace()
            .next()
            .and_then(|p| p.parse::<u8>().ok())
        {
            lines.entry(pcr).or_default().push(line);
        }
    }
    lines
}

/// The learned UKI values of a record, (OS version, PCR 11 hex) per "version hex" line.
pub fn learned_uki_lines(lines: &str) -> Vec<(String, String)> {
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

    use cairn_attest::emulator::EmulatorVendor;

    /// A report of an emulated TPM whose quoted PCRs are all zero (no firmware, empty log).
    fn emulated_report(
        tpm: &cairn_attest::emulator::SoftwareTpm,
        nonce: &[u8],
        version: &str,
    ) -> AttestationReport {
        let pcrs: BTreeMap<u8, [u8; 32]> = appraise::QUOTED_PCRS
            .iter()
            .map(|&p| (p, [0; 32]))
            .collect();
        let quote = tpm.quote(nonce, &pcrs).unwrap();
        AttestationReport {
            nonce: nonce.to_vec(),
            quote: quote.attest,
            signature: quote.signature_der,
            pcrs: pcrs
                .iter()
                .map(|(i, v)| (u32::from(*i), v.to_vec()))
                .collect(),
            event_log: Vec::new(),
            os_version: version.into(),
            error: String::new(),
        }
    }

    fn detail(verdict: Verdict) -> String {
        match verdict {
            Verdict::Failed { detail, .. } => detail,
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn replays_bad_versions_and_unknown_later_versions_are_refused() {
        let tpm = EmulatorVendor::new().tpm();
        let ak = tpm.ak_public();
        let nonce = [3u8; 32];
        let expect =
            |nonce: &'static [u8], record: Option<&'static AttestationRecord>| Expectations {
                ak_public: Box::leak(ak.clone().into_boxed_slice()),
                nonce,
                record,
                bundle_uki: &[],
                expected_versions: &[],
                require_secure_boot: false,
            };
        // First use: verified, the firmware reference and this version's UKI value learned.
        let Verdict::Verified { reference, uki } = judge(
            &emulated_report(&tpm, &nonce, "1.0"),
            expect(&[3; 32], None),
        ) else {
            panic!("a fresh quote of an unchanged emulated TPM fails");
        };
        assert!(uki.starts_with("1.0 "), "{uki}");
        // A quote over no nonce, kept from some earlier moment, never verifies.
        let empty = emulated_report(&tpm, &[], "1.0");
        assert!(detail(judge(&empty, expect(&[], None))).contains("replay"));
        // A version that could inject lines or dodge the bundle lookup.
        for bad in ["", "1.0\n2.0 00", &"9".repeat(65), "1.0 beta"] {
            let report = emulated_report(&tpm, &nonce, bad);
            assert!(
                detail(judge(&report, expect(&[3; 32], None))).contains("not a version"),
                "{bad:?}"
            );
        }
        // Once pinned, a version central has no bundle for is not learned.
        let record: &'static AttestationRecord = Box::leak(Box::new(AttestationRecord {
            device_id: "dev_1".into(),
            state: VERIFIED.into(),
            reference: Some(reference),
            uki,
            ..Default::default()
        }));
        assert!(matches!(
            judge(
                &emulated_report(&tpm, &nonce, "1.0"),
                expect(&[3; 32], Some(record))
            ),
            Verdict::Verified { .. }
        ));
        let dodged = detail(judge(
            &emulated_report(&tpm, &nonce, "x"),
            expect(&[3; 32], Some(record)),
        ));
        assert!(
            dodged.starts_with("PCR 11") && dodged.contains("\"x\""),
            "{dodged}"
        );
        // An older uploaded bundle's UKI verifies as such, but once the device verified 1.0 it
        // is a downgrade unless a rollout took the device there (or started from there).
        let zero = [hex::encode([0u8; 32])];
        let mut older = expect(&[3; 32], Some(record));
        older.bundle_uki = &zero;
        let old = emulated_report(&tpm, &nonce, "0.9");
        assert!(matches!(judge(&old, older), Verdict::Verified { .. }));
        let only_current = ["1.0".to_owned()];
        older.expected_versions = &only_current;
        let downgrade = judge(&old, older);
        let Verdict::Failed { pending_uki, .. } = &downgrade else {
            panic!("a downgrade verified: {downgrade:?}");
        };
        assert!(pending_uki
            .as_deref()
            .is_some_and(|l| l.starts_with("0.9 ")));
        let downgrade = detail(downgrade);
        assert!(
            downgrade.starts_with("PCR 11")
                && downgrade.contains("\"0.9\"")
                && downgrade.contains("expects \"1.0\""),
            "{downgrade}"
        );
        let rolled_back = ["1.0".to_owned(), "0.9".to_owned()];
        older.expected_versions = &rolled_back;
        assert!(matches!(judge(&old, older), Verdict::Verified { .. }));
        // A real boot (Secure Boot required) always measures a UKI: all-zero PCR 11 fails.
        let mut strict = expect(&[3; 32], None);
        strict.require_secure_boot = true;
        assert!(detail(judge(&emulated_report(&tpm, &nonce, "1.0"), strict)).starts_with("PCR 7"));
    }

    #[test]
    fn expected_versions_start_at_the_first_verified_one() {
        let mut verified = record(VERIFIED, Some(1));
        assert!(expected_versions(Some(&verified), Some("2.0"), Some("1.0")).is_empty());
        assert!(expected_versions(None, Some("2.0"), None).is_empty());
        verified.os_version = Some("1.0".into());
        assert_eq!(expected_versions(Some(&verified), None, None), ["1.0"]);
        assert_eq!(
            expected_versions(Some(&verified), Some("2.0"), Some("1.0")),
            ["1.0", "2.0"]
        );
        assert_eq!(
            expected_versions(Some(&verified), Some(""), Some("0.9")),
            ["1.0", "0.9"]
        );
    }

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
        failed.reference = Some("0 80000008 aa\n7 80000001 cc\n7 4 00\n".into());
        failed.pending_reference = Some("0 80000008 aa\n7 80000001 dd\n7 4 00\n".into());
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
        // What an accept would pin is shown: the changed PCRs and the measured UKI value.
        let pending = view.pending.expect("pending values are shown");
        assert_eq!(pending.changed_pcrs, [7]);
        let measured = pending.uki.expect("the measured UKI value");
        assert_eq!(
            (
                measured.os_version.as_str(),
                measured.pcr11.as_str(),
                measured.source.as_str()
            ),
            ("2.0", "ef", "pending")
        );
        let software = ViewInputs {
            key_storage: KeyStorage::Software,
            ..inputs
        };
        let view = device_view(&software, None, 1_000, &config);
        assert_eq!(view.summary.state, AttestationState::Unsupported);
        assert!(!view.acceptable && view.pinned.is_empty() && view.checked_at.is_none());
        assert!(view.pending.is_none() && view.os_version.is_none());
    }

    #[test]
    fn changed_pcrs_compare_whole_pcrs() {
        let pinned = "0 8 aa\n2 4 00\n7 1 cc\n7 4 00\n";
        assert_eq!(changed_pcrs(Some(pinned), pinned), Vec::<u8>::new());
        assert_eq!(changed_pcrs(Some(pinned), "0 8 aa\n2 4 00\n7 1 cc\n"), [7]);
        assert_eq!(
            changed_pcrs(Some(pinned), "0 8 ab\n2 4 00\n7 1 cc\n7 4 00\n"),
            [0]
        );
        assert_eq!(changed_pcrs(None, pinned), [0, 2, 7]);
        assert_eq!(changed_pcrs(Some(pinned), "junk\n"), [0, 2, 7]);
    }
}
