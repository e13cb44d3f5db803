//! Appraisal of a device's boot: given PCR values from a verified quote
//! ([`crate::keys::verify_quote`]) and the firmware event log the device sent with it, decide
//! whether the boot is acceptable, and say which PCR and which event made it unacceptable.
//!
//! The quote is trusted, the log is not: the log only counts where it replays to the quoted
//! values, and only the digests in it are proven (event types and data are the device's word,
//! used to explain a failure; the one exception, the `SecureBoot` variable, is checked against its
//! own digest). Checks, in order, the first failure wins:
//!
//! 1. the log replays to the quoted PCRs 0, 2, 4 and 7, and no event on a quoted PCR lacks a
//!    SHA-256 digest;
//! 2. quoted PCR 11 is the log's PCR 11 (systemd-stub's UKI measurements) followed by boot phases
//!    systemd-pcrphase measures in userspace (a prefix of [`cairn_pe::BOOT_PHASES`], or of
//!    `sysinit`, `ready` on an initrd without phases);
//! 3. Secure Boot is on (when the policy requires it);
//! 4. the firmware PCRs ([`PINNED_PCRS`]) have the events of the device's reference, learned on
//!    first use;
//! 5. the UKI's PCR 11 is one built for the OS version the device runs (when known).

use std::collections::BTreeMap;
use std::fmt;
use std::fmt::Write as _;

use cairn_pe::{pcr11_after_phases, BOOT_PHASES, UKI_PCR};
use sha2::{Digest as _, Sha256};

use crate::eventlog::{EventLog, LogEvent, EV_EFI_VARIABLE_DRIVER_CONFIG, PCR_VALUE_LEN};

/// The SHA-256 PCRs a device quotes for attestation.
pub const QUOTED_PCRS: [u8; 5] = [0, 2, 4, 7, UKI_PCR];

/// PCRs whose events are pinned per device on first use (firmware and Secure Boot policy). PCR 4
/// is not pinned: firmware measures the UKI binary into it, so it changes with every OS update;
/// the UKI is proven by PCR 11 (its sections, predicted from the bundle) and PCR 7 (the authority
/// that verified its signature).
pub const PINNED_PCRS: [u8; 3] = [0, 2, 7];

/// Most events a [`Reference`] keeps per PCR; more on a pinned PCR fails the appraisal.
pub const MAX_REFERENCE_EVENTS: usize = 256;

/// Longest line [`Reference::encode`] writes: `pcr type digest\n`.
const REFERENCE_LINE_LEN: usize = 2 + 9 + 2 * PCR_VALUE_LEN + 1;

/// Longest text [`Reference::decode`] reads.
pub const MAX_REFERENCE_TEXT: usize = PINNED_PCRS.len() * MAX_REFERENCE_EVENTS * REFERENCE_LINE_LEN;

/// Longest event description a [`Failure`] carries.
const MAX_EVENT_DESCRIPTION: usize = 160;

/// Boot phases of an initrd without systemd: `systemd-pcrphase` measures only these, in userspace.
const PHASES_WITHOUT_INITRD: [&str; 2] = ["sysinit", "ready"];

/// `EFI_GLOBAL_VARIABLE` (8BE4DF61-93CA-11D2-AA0D-00E098032B8C) as it appears in a log.
const EFI_GLOBAL_VARIABLE: [u8; 16] = [
    0x61, 0xdf, 0xe4, 0x8b, 0xca, 0x93, 0xd2, 0x11, 0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03, 0x2b, 0x8c,
];

/// What to do when a device's firmware no longer matches its reference.
const ACCEPT_ADVICE: &str =
    "an admin can accept the new values after a firmware or Secure Boot key update";

/// Input an appraisal cannot start from: a protocol error of the device or a bug of the caller.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppraiseError {
    /// The quote lacks a PCR of [`QUOTED_PCRS`].
    #[error(
        "the quote has no value for PCR {pcr}; a device must quote SHA-256 PCRs 0, 2, 4, 7 and \
         11: ask it for a new quote, or update its agent"
    )]
    MissingPcr {
        /// The missing PCR.
        pcr: u8,
    },

    /// A stored reference is not what [`Reference::encode`] writes.
    #[error(
        "the stored firmware reference is unreadable at line {line}: {reason}; restore it from a \
         backup, or clear it so that the device's next attestation records its firmware again"
    )]
    BadReference {
        /// 1-based line of the problem (0 for the text as a whole).
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

/// One measurement of a pinned PCR: what the reference keeps of a log event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeasuredEvent {
    /// The TCG event type (`EV_*`).
    pub event_type: u32,
    /// The SHA-256 digest extended into the PCR.
    pub sha256: [u8; PCR_VALUE_LEN],
}

/// What a device's firmware measured into [`PINNED_PCRS`], as central keeps it as the device's
/// reference. Only [`PINNED_PCRS`] and at most [`MAX_REFERENCE_EVENTS`] events per PCR.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reference {
    /// Events per pinned PCR, in log order; PCRs without events are absent.
    firmware: BTreeMap<u8, Vec<MeasuredEvent>>,
}

impl Reference {
    /// The events of `pcr`, in log order (empty for a PCR without events or not pinned).
    pub fn events(&self, pcr: u8) -> &[MeasuredEvent] {
        self.firmware.get(&pcr).map_or(&[], Vec::as_slice)
    }

    /// The reference as text for a TEXT column: one line `pcr type digest` per event, the PCR in
    /// decimal, the type as 8 and the SHA-256 digest as 64 lowercase hex digits, PCRs ascending.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        for (pcr, events) in &self.firmware {
            for event in events {
                // Writing to a String cannot fail.
                let _ = writeln!(
                    text,
                    "{pcr} {:08x} {}",
                    event.event_type,
                    hex::encode(event.sha256)
                );
            }
        }
        text
    }

    /// Read what [`Reference::encode`] wrote, and nothing else.
    ///
    /// # Errors
    /// [`AppraiseError::BadReference`] naming the line: text longer than
    /// [`MAX_REFERENCE_TEXT`], a line not of the encoded form or not ending in a newline, a PCR
    /// outside [`PINNED_PCRS`] or out of order, more than [`MAX_REFERENCE_EVENTS`] on a PCR.
    pub fn decode(text: &str) -> Result<Reference, AppraiseError> {
        let bad = |line: usize, reason: String| AppraiseError::BadReference { line, reason };
        if text.len() > MAX_REFERENCE_TEXT {
            return Err(bad(
                0,
                format!(
                    "{} bytes, more than the {MAX_REFERENCE_TEXT} a reference takes",
                    text.len()
                ),
            ));
        }
        let Some(body) = text.strip_suffix('\n').or(text.is_empty().then_some("")) else {
            return Err(bad(
                text.lines().count(),
                "the last line does not end with a newline".to_string(),
            ));
        };
        let mut firmware: BTreeMap<u8, Vec<MeasuredEvent>> = BTreeMap::new();
        let lines = body.split('\n').filter(|_| !text.is_empty());
        for (index, line) in lines.enumerate() {
            let number = index + 1;
            let (pcr, event) = decode_line(line).map_err(|reason| bad(number, reason))?;
            if firmware.keys().next_back().is_some_and(|&last| last > pcr) {
                return Err(bad(number, format!("PCR {pcr} after a higher PCR")));
            }
            let events = firmware.entry(pcr).or_default();
            if events.len() == MAX_REFERENCE_EVENTS {
                return Err(bad(
                    number,
                    format!("more than {MAX_REFERENCE_EVENTS} events on PCR {pcr}"),
                ));
            }
            events.push(event);
        }
        Ok(Reference { firmware })
    }
}

/// One line `pcr type digest` of an encoded reference.
fn decode_line(line: &str) -> Result<(u8, MeasuredEvent), String> {
    let fields: Vec<&str> = line.split(' ').collect();
    let [pcr, event_type, digest] = fields.as_slice() else {
        return Err(format!(
            "{} space-separated fields where \"pcr type sha256\" has 3",
            fields.len()
        ));
    };
    let pcr = PINNED_PCRS
        .into_iter()
        .find(|p| p.to_string() == *pcr)
        .ok_or_else(|| format!("PCR {pcr:.8?} is not one of the pinned PCRs {PINNED_PCRS:?}"))?;
    let lower_hex = |field: &str, len: usize| {
        field.len() == len
            && field
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    if !lower_hex(event_type, 8) {
        return Err(format!(
            "event type {event_type:.16?} is not 8 lowercase hex digits"
        ));
    }
    if !lower_hex(digest, 2 * PCR_VALUE_LEN) {
        return Err(format!(
            "digest {digest:.80?} is not 64 lowercase hex digits"
        ));
    }
    let event_type = u32::from_str_radix(event_type, 16).map_err(|e| e.to_string())?;
    let mut sha256 = [0u8; PCR_VALUE_LEN];
    hex::decode_to_slice(digest, &mut sha256).map_err(|e| e.to_string())?;
    Ok((pcr, MeasuredEvent { event_type, sha256 }))
}

/// What central accepts for a device's boot.
#[derive(Debug, Clone, Copy)]
pub struct Policy<'a> {
    /// Refuse a boot whose log does not show the `SecureBoot` variable set to 1.
    pub require_secure_boot: bool,
    /// PCR 11 values systemd-stub leaves (the UKI's sections, before boot phases) for the UKIs
    /// built for the OS version the device runs; empty when none is known (the caller learns the
    /// measured one from [`Measured::uki_pcr11`]).
    pub uki_pcr11: &'a [[u8; PCR_VALUE_LEN]],
    /// The device's pinned firmware reference; `None` on first use (the boot is appraised without
    /// it, and [`Measured::firmware`] is the reference for the caller to store).
    pub reference: Option<&'a Reference>,
}

/// What a boot measured, proven by the quote: what an admin accepts after a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Measured {
    /// The events of [`PINNED_PCRS`].
    pub firmware: Reference,
    /// The PCR 11 value systemd-stub left, before boot phases.
    pub uki_pcr11: [u8; PCR_VALUE_LEN],
    /// Whether the log shows Secure Boot on.
    pub secure_boot: bool,
}

/// The verdict on a boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Appraisal {
    /// Every check passed.
    Verified(Measured),
    /// A check failed.
    Failed(Failure),
}

/// Why a boot was not acceptable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The PCR whose check failed.
    pub pcr: u8,
    /// The offending log event (type, digest and printable data), cut to 160 characters; `None`
    /// when no single event is to blame.
    pub event: Option<String>,
    /// What is wrong, and what can be done about it.
    pub reason: String,
    /// What the boot measured, for an admin to accept; `None` when the log itself is
    /// inconsistent with the quote, so nothing in it is proven.
    pub measured: Option<Measured>,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PCR {}: {}", self.pcr, self.reason)?;
        if let Some(event) = &self.event {
            write!(f, " ({event})")?;
        }
        Ok(())
    }
}

/// Appraise a boot from its quoted SHA-256 PCR values (verified by
/// [`crate::keys::verify_quote`]) and its firmware event log.
///
/// # Errors
/// [`AppraiseError::MissingPcr`] when `quoted` lacks one of [`QUOTED_PCRS`]. A boot that is not
/// acceptable is `Ok(Appraisal::Failed)`.
pub fn appraise(
    quoted: &BTreeMap<u8, [u8; PCR_VALUE_LEN]>,
    log: &EventLog,
    policy: &Policy<'_>,
) -> Result<Appraisal, AppraiseError> {
    if let Some(&pcr) = QUOTED_PCRS.iter().find(|pcr| !quoted.contains_key(pcr)) {
        return Err(AppraiseError::MissingPcr { pcr });
    }
    Ok(match appraise_boot(quoted, log, policy) {
        Ok(measured) => Appraisal::Verified(measured),
        Err(failure) => Appraisal::Failed(*failure),
    })
}

/// The checks in order; `quoted` holds every PCR of [`QUOTED_PCRS`].
fn appraise_boot(
    quoted: &BTreeMap<u8, [u8; PCR_VALUE_LEN]>,
    log: &EventLog,
    policy: &Policy<'_>,
) -> Result<Measured, Box<Failure>> {
    check_log_replays(quoted, log)?;
    let uki_pcr11 = log.replay_pcr(UKI_PCR);
    check_boot_phases(quoted, uki_pcr11)?;
    let firmware = firmware_reference(log)?;
    let secure_boot = secure_boot_state(log);
    let measured = Measured {
        firmware,
        uki_pcr11,
        secure_boot: matches!(secure_boot, SecureBoot::On),
    };
    if policy.require_secure_boot {
        check_secure_boot(secure_boot, &measured)?;
    }
    if let Some(reference) = policy.reference {
        check_reference(reference, log, &measured)?;
    }
    if !policy.uki_pcr11.is_empty() && !policy.uki_pcr11.contains(&uki_pcr11) {
        return Err(failure(
            UKI_PCR,
            uki_event(log),
            format!(
                "the booted UKI (PCR 11 {} before boot phases) is not one of the {} built for this \
                 OS version",
                hex::encode(uki_pcr11),
                policy.uki_pcr11.len()
            ),
            Some(&measured),
        ));
    }
    Ok(measured)
}

/// Check 1: the log replays to every quoted PCR but 11, and hides no measurement.
fn check_log_replays(
    quoted: &BTreeMap<u8, [u8; PCR_VALUE_LEN]>,
    log: &EventLog,
) -> Result<(), Box<Failure>> {
    for pcr in QUOTED_PCRS {
        let events = log.events_for(pcr);
        if let Some((index, event)) = events.iter().enumerate().find(|(_, e)| e.sha256.is_none()) {
            return Err(failure(
                pcr,
                Some(event),
                format!(
                    "event {} carries no SHA-256 digest, so the log would hide what it measured",
                    index + 1
                ),
                None,
            ));
        }
        if pcr != UKI_PCR && Some(&log.replay_pcr(pcr)) != quoted.get(&pcr) {
            return Err(failure(
                pcr,
                None,
                "the event log does not replay to the quoted value (the log is incomplete or \
                 altered)"
                    .to_string(),
                None,
            ));
        }
    }
    Ok(())
}

/// Check 2: quoted PCR 11 is the log's PCR 11 followed by boot phases.
fn check_boot_phases(
    quoted: &BTreeMap<u8, [u8; PCR_VALUE_LEN]>,
    uki_pcr11: [u8; PCR_VALUE_LEN],
) -> Result<(), Box<Failure>> {
    let with_initrd = (0..=BOOT_PHASES.len()).map(|n| &BOOT_PHASES[..n]);
    let without_initrd = (1..=PHASES_WITHOUT_INITRD.len()).map(|n| &PHASES_WITHOUT_INITRD[..n]);
    let explained = with_initrd
        .chain(without_initrd)
        .any(|phases| Some(&pcr11_after_phases(&uki_pcr11, phases)) == quoted.get(&UKI_PCR));
    if explained {
        return Ok(());
    }
    Err(failure(
        UKI_PCR,
        None,
        "the quoted value is not the event log's PCR 11 followed by known boot phases (the log is \
         incomplete or altered, or userspace measured something unexpected)"
            .to_string(),
        None,
    ))
}

/// The events of the pinned PCRs, refused when a PCR has more than a reference keeps.
fn firmware_reference(log: &EventLog) -> Result<Reference, Box<Failure>> {
    let mut firmware = BTreeMap::new();
    for pcr in PINNED_PCRS {
        let events: Vec<MeasuredEvent> = log
            .events_for(pcr)
            .into_iter()
            .filter_map(|event| {
                event.sha256.map(|sha256| MeasuredEvent {
                    event_type: event.event_type,
                    sha256,
                })
            })
            .collect();
        if events.len() > MAX_REFERENCE_EVENTS {
            return Err(failure(
                pcr,
                None,
                format!(
                    "the log has {} events on this PCR, more than the {MAX_REFERENCE_EVENTS} \
                     Cairn keeps as a reference; this firmware cannot be pinned",
                    events.len()
                ),
                None,
            ));
        }
        if !events.is_empty() {
            firmware.insert(pcr, events);
        }
    }
    Ok(Reference { firmware })
}

/// What the PCR 7 log says of the `SecureBoot` variable.
#[derive(Debug, Clone, Copy)]
enum SecureBoot<'a> {
    /// Measured, every time, as 1.
    On,
    /// Measured with another value (that event), or not measured at all.
    Off(Option<&'a LogEvent>),
    /// An event's data is not what its digest measured: the log lies about it.
    Altered(&'a LogEvent),
}

/// `EV_SEPARATOR`: the end of the pre-boot configuration measurements of a PCR.
const EV_SEPARATOR: u32 = 0x4;

/// Read the `SecureBoot` variable from PCR 7's driver-config events. Their digest is SHA-256 of
/// the whole `UEFI_VARIABLE_DATA` (TCG PC Client PFP), so the quoted digest proves the data.
///
/// The quote proves digests, not event types, so a device could relabel the real `SecureBoot=0`
/// event and extend PCR 7 after boot with a `SecureBoot=1` record of its own. The PFP's order
/// rules that out: `SecureBoot` is PCR 7's *first* measurement, every driver-config event's
/// digest is its data's, and none comes after the separator (a later extend always lands there).
fn secure_boot_state(log: &EventLog) -> SecureBoot<'_> {
    let events = log.events_for(7);
    let mut state = SecureBoot::Off(events.first().copied());
    let mut separated = false;
    for (index, event) in events.iter().copied().enumerate() {
        if event.event_type == EV_SEPARATOR {
            separated = true;
            continue;
        }
        if event.event_type != EV_EFI_VARIABLE_DRIVER_CONFIG {
            continue;
        }
        if separated || event.sha256 != Some(Sha256::digest(&event.data).into()) {
            return SecureBoot::Altered(event);
        }
        let Some(value) = secure_boot_variable(&event.data) else {
            continue;
        };
        if index != 0 {
            return SecureBoot::Altered(event);
        }
        state = if value == [1] {
            SecureBoot::On
        } else {
            SecureBoot::Off(Some(event))
        };
    }
    state
}

/// The data of a `UEFI_VARIABLE_DATA` naming the global variable `SecureBoot`: GUID, u64 name
/// length in UTF-16 units, u64 data length, UTF-16LE name, data. `None` for other variables or
/// a malformed structure.
fn secure_boot_variable(data: &[u8]) -> Option<&[u8]> {
    let guid = data.get(..16)?;
    let name_units =
        usize::try_from(u64::from_le_bytes(data.get(16..24)?.try_into().ok()?)).ok()?;
    let value_len = usize::try_from(u64::from_le_bytes(data.get(24..32)?.try_into().ok()?)).ok()?;
    let name_end = name_units.checked_mul(2)?.checked_add(32)?;
    let name = data.get(32..name_end)?;
    let value = data.get(name_end..name_end.checked_add(value_len)?)?;
    let name: Vec<u16> = name
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    let name = name.strip_suffix(&[0]).unwrap_or(&name);
    let is_secure_boot =
        guid == EFI_GLOBAL_VARIABLE && name.iter().copied().eq("SecureBoot".encode_utf16());
    is_secure_boot.then_some(value)
}

/// Check 3: Secure Boot on.
fn check_secure_boot(state: SecureBoot<'_>, measured: &Measured) -> Result<(), Box<Failure>> {
    match state {
        SecureBoot::On => Ok(()),
        SecureBoot::Off(event) => Err(failure(
            7,
            event,
            "Secure Boot is off".to_string(),
            Some(measured),
        )),
        SecureBoot::Altered(event) => Err(failure(
            7,
            Some(event),
            "a Secure Boot configuration event is not where or what the firmware measures (its \
             data does not match its digest, it follows the separator, or SecureBoot is not \
             PCR 7's first measurement): the log is altered"
                .to_string(),
            None,
        )),
    }
}

/// Check 4: the pinned PCRs have the reference's events.
fn check_reference(
    reference: &Reference,
    log: &EventLog,
    measured: &Measured,
) -> Result<(), Box<Failure>> {
    for pcr in PINNED_PCRS {
        let new = measured.firmware.events(pcr);
        let old = reference.events(pcr);
        let Some(index) = (0..new.len().max(old.len())).find(|&i| new.get(i) != old.get(i)) else {
            continue;
        };
        let number = index + 1;
        let reason = match (new.get(index), old.get(index)) {
            (Some(_), Some(_)) => format!(
                "event {number} differs from the device's reference (learned at first \
                 attestation); {ACCEPT_ADVICE}"
            ),
            (Some(_), None) => format!(
                "event {number} is new: the device's reference (learned at first attestation) \
                 has {} events; {ACCEPT_ADVICE}",
                old.len()
            ),
            _ => format!(
                "the log has {} events where the device's reference (learned at first \
                 attestation) has {}; {ACCEPT_ADVICE}",
                new.len(),
                old.len()
            ),
        };
        let event = log.events_for(pcr).get(index).copied();
        return Err(failure(pcr, event, reason, Some(measured)));
    }
    Ok(())
}

/// The PCR 11 event that best names the UKI: the last one about `.cmdline` (its contents), else
/// the first.
fn uki_event(log: &EventLog) -> Option<&LogEvent> {
    let events = log.events_for(UKI_PCR);
    events
        .iter()
        .rev()
        .find(|event| event.describe().contains(".cmdline"))
        .or(events.first())
        .copied()
}

/// A failure; `event` described without its PCR and cut to [`MAX_EVENT_DESCRIPTION`].
fn failure(
    pcr: u8,
    event: Option<&LogEvent>,
    reason: String,
    measured: Option<&Measured>,
) -> Box<Failure> {
    let event = event.map(|event| {
        let description = event.describe();
        let prefix = format!("PCR {} ", event.pcr);
        let description = description.strip_prefix(&prefix).unwrap_or(&description);
        match description.char_indices().nth(MAX_EVENT_DESCRIPTION) {
            Some((end, _)) => format!("{}...", &description[..end]),
            None => description.to_string(),
        }
    });
    Box::new(Failure {
        pcr,
        event,
        reason,
        measured: measured.cloned(),
    })
}

#[cfg(test)]
mod tests;
