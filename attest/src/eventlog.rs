//! The firmware's TPM event log (TCG PC Client crypto-agile format, as Linux exposes it in
//! `/sys/kernel/security/tpm0/binary_bios_measurements`): parse it, replay it to the SHA-256 PCR
//! values it claims, and list the events that went into a PCR, so "PCR 7 changed" can be
//! explained ("db variable", "shim", ...). Pure: the device reads the file (`cairn-tpm`), central
//! parses what the device sends, so every length is bounded and no input panics.
//!
//! Format (TCG PC Client Platform Firmware Profile, all integers little-endian): a first
//! SHA-1-format `TCG_PCR_EVENT` (PCR 0, `EV_NO_ACTION`, 20 zero bytes) whose data is the
//! `Spec ID Event03` header listing the digest algorithms and sizes; then `TCG_PCR_EVENT2`
//! records: `u32 pcr, u32 type, u32 digest count, count x (u16 alg, digest), u32 size, data`.

use std::collections::BTreeMap;

use sha2::{Digest as _, Sha256};

/// Bytes of a SHA-256 digest and of a SHA-256 PCR.
pub const PCR_VALUE_LEN: usize = 32;
/// `EV_NO_ACTION`: informational, not extended.
pub const EV_NO_ACTION: u32 = 0x3;
/// `EV_EFI_VARIABLE_DRIVER_CONFIG`: a UEFI variable of the Secure Boot policy (PCR 7).
pub const EV_EFI_VARIABLE_DRIVER_CONFIG: u32 = 0x8000_0001;
/// PCRs of a TPM 2.0 PC Client.
const PCR_COUNT: u8 = 24;
/// `TPM_ALG_SHA256`.
const TPM_ALG_SHA256: u16 = 0x000B;
const SPEC_ID_SIGNATURE: &[u8; 16] = b"Spec ID Event03\0";
const STARTUP_LOCALITY_SIGNATURE: &[u8; 16] = b"StartupLocality\0";
/// Larger logs or events are not plausible firmware logs.
const MAX_LOG_LEN: usize = 16 * 1024 * 1024;
const MAX_EVENT_LEN: usize = 1024 * 1024;

/// Why an event log could not be parsed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EventLogError {
    /// The log is not a crypto-agile TCG event log.
    #[error("the TPM event log is malformed at byte {offset}: {reason}; the firmware may only provide a SHA-1 (TPM 1.2 format) log, which Cairn does not read")]
    Malformed {
        /// Byte offset of the problem.
        offset: usize,
        /// What is wrong.
        reason: String,
    },
}

/// One measurement of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEvent {
    /// The PCR extended.
    pub pcr: u8,
    /// The TCG event type (`EV_*`).
    pub event_type: u32,
    /// The SHA-256 digest extended, `None` when the event carries no SHA-256 digest.
    pub sha256: Option<[u8; PCR_VALUE_LEN]>,
    /// The event data (what was measured, or a description of it).
    pub data: Vec<u8>,
}

impl LogEvent {
    /// The TCG name of the event type, e.g. `EV_EFI_VARIABLE_DRIVER_CONFIG`.
    pub fn type_name(&self) -> &'static str {
        event_type_name(self.event_type)
    }

    /// A one-line description: type, SHA-256 digest and the printable part of the data (ASCII or
    /// UTF-16LE text such as UEFI variable names and device paths).
    pub fn describe(&self) -> String {
        let digest = self
            .sha256
            .map(hex::encode)
            .unwrap_or_else(|| "-".to_string());
        format!(
            "PCR {} {} sha256={} {}",
            self.pcr,
            self.type_name(),
            digest,
            printable(&self.data)
        )
    }
}

/// A parsed event log.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EventLog {
    /// The measurements in log order (the Spec ID header is not included).
    pub events: Vec<LogEvent>,
    /// The locality the TPM was started from (`StartupLocality` event), 0 when absent.
    pub startup_locality: u8,
}

impl EventLog {
    /// Parse a crypto-agile event log.
    ///
    /// # Errors
    /// [`EventLogError::Malformed`] naming the offset and the problem.
    pub fn parse(bytes: &[u8]) -> Result<EventLog, EventLogError> {
        if bytes.len() > MAX_LOG_LEN {
            return Err(malformed(
                0,
                format!("{} bytes is far too large", bytes.len()),
            ));
        }
        let mut reader = Reader { bytes, offset: 0 };
        let sizes = read_spec_id_header(&mut reader)?;
        let mut log = EventLog::default();
        while !reader.is_empty() {
            let start = reader.offset;
            let pcr = reader.u32()?;
            let event_type = reader.u32()?;
            let count = reader.u32()?;
            if count as usize > sizes.len() {
                return Err(malformed(start, format!("{count} digests in one event")));
            }
            let mut sha256 = None;
            for _ in 0..count {
                let alg = reader.u16()?;
                let size = sizes
                    .iter()
                    .find(|(a, _)| *a == alg)
                    .map(|(_, s)| usize::from(*s))
                    .ok_or_else(|| {
                        malformed(
                            reader.offset,
                            format!("digest algorithm 0x{alg:04x} not in the header"),
                        )
                    })?;
                let digest = reader.take(size)?;
                if alg == TPM_ALG_SHA256 {
                    // Two SHA-256 digests would let the log show one and the replay use another.
                    if sha256.is_some() {
                        return Err(malformed(
                            start,
                            "two SHA-256 digests in one event".to_string(),
                        ));
                    }
                    sha256 = Some(digest.try_into().map_err(|_| {
                        malformed(reader.offset, "SHA-256 digest is not 32 bytes".to_string())
                    })?);
                }
            }
            let data = reader.sized_data()?.to_vec();
            if pcr >= u32::from(PCR_COUNT) {
                return Err(malformed(start, format!("PCR index {pcr}")));
            }
            if event_type == EV_NO_ACTION {
                if let Some(rest) = data.strip_prefix(STARTUP_LOCALITY_SIGNATURE.as_slice()) {
                    log.startup_locality = rest.first().copied().unwrap_or(0);
                }
            }
            log.events.push(LogEvent {
                pcr: pcr as u8,
                event_type,
                sha256,
                data,
            });
        }
        Ok(log)
    }

    /// The SHA-256 PCR values the log claims: every PCR with an extending event, replayed from
    /// zero (PCR 0 from the startup locality). Compare with the PCRs read or quoted from the TPM:
    /// a difference means the log is incomplete or was tampered with. Events without a SHA-256
    /// digest are skipped.
    pub fn replay_sha256(&self) -> BTreeMap<u8, [u8; PCR_VALUE_LEN]> {
        let mut values = BTreeMap::new();
        for event in self.extending_events() {
            if let Some(digest) = event.sha256 {
                let value = values
                    .entry(event.pcr)
                    .or_insert_with(|| self.initial_value(event.pcr));
                *value = extend(value, &digest);
            }
        }
        values
    }

    /// The SHA-256 value the log claims for `pcr`: its initial value (zero, or the startup
    /// locality for PCR 0) extended with the digest of each of its events. Events without a
    /// SHA-256 digest are skipped.
    pub fn replay_pcr(&self, pcr: u8) -> [u8; PCR_VALUE_LEN] {
        self.events_for(pcr)
            .into_iter()
            .filter_map(|event| event.sha256)
            .fold(self.initial_value(pcr), |value, digest| {
                extend(&value, &digest)
            })
    }

    /// A PCR's value at TPM startup: zero, except PCR 0 which holds the startup locality.
    fn initial_value(&self, pcr: u8) -> [u8; PCR_VALUE_LEN] {
        let mut initial = [0u8; PCR_VALUE_LEN];
        if pcr == 0 {
            initial[PCR_VALUE_LEN - 1] = self.startup_locality;
        }
        initial
    }

    /// The events extended into `pcr`, in order: what made its value.
    pub fn events_for(&self, pcr: u8) -> Vec<&LogEvent> {
        self.extending_events()
            .filter(|event| event.pcr == pcr)
            .collect()
    }

    fn extending_events(&self) -> impl Iterator<Item = &LogEvent> {
        self.events
            .iter()
            .filter(|event| event.event_type != EV_NO_ACTION)
    }
}

/// The (algorithm, digest size) table of the `Spec ID Event03` header.
fn read_spec_id_header(reader: &mut Reader<'_>) -> Result<Vec<(u16, u16)>, EventLogError> {
    let pcr = reader.u32()?;
    let event_type = reader.u32()?;
    reader.take(20)?;
    let data = reader.sized_data()?;
    if pcr != 0 || event_type != EV_NO_ACTION || !data.starts_with(SPEC_ID_SIGNATURE) {
        return Err(malformed(
            0,
            "no \"Spec ID Event03\" header (not a crypto-agile log)".to_string(),
        ));
    }
    let mut header = Reader {
        bytes: data,
        offset: 0,
    };
    // signature, platformClass u32, specVersionMinor/Major, specErrata, uintnSize: 24 bytes.
    header.take(24)?;
    let count = header.u32()?;
    if count == 0 || count > 16 {
        return Err(malformed(
            0,
            format!("{count} digest algorithms in the header"),
        ));
    }
    let mut sizes = Vec::new();
    for _ in 0..count {
        sizes.push((header.u16()?, header.u16()?));
    }
    if !sizes.contains(&(TPM_ALG_SHA256, PCR_VALUE_LEN as u16)) {
        return Err(malformed(0, "the log has no SHA-256 bank".to_string()));
    }
    Ok(sizes)
}

struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Reader<'a> {
    fn is_empty(&self) -> bool {
        self.offset >= self.bytes.len()
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], EventLogError> {
        let end = self
            .offset
            .checked_add(len)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| malformed(self.offset, format!("truncated: {len} bytes needed")))?;
        let slice = &self.bytes[self.offset..end];
        self.offset = end;
        Ok(slice)
    }

    fn u16(&mut self) -> Result<u16, EventLogError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, EventLogError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// `u32 size` then that many bytes.
    fn sized_data(&mut self) -> Result<&'a [u8], EventLogError> {
        let size = self.u32()? as usize;
        if size > MAX_EVENT_LEN {
            return Err(malformed(self.offset, format!("event of {size} bytes")));
        }
        self.take(size)
    }
}

/// The TPM's extend: `SHA-256(old || digest)`.
fn extend(old: &[u8; PCR_VALUE_LEN], digest: &[u8]) -> [u8; PCR_VALUE_LEN] {
    let mut hasher = Sha256::new();
    hasher.update(old);
    hasher.update(digest);
    hasher.finalize().into()
}

fn malformed(offset: usize, reason: String) -> EventLogError {
    EventLogError::Malformed { offset, reason }
}

/// Printable text of event data: ASCII runs, or UTF-16LE (UEFI strings), else `<n bytes>`.
fn printable(data: &[u8]) -> String {
    let ascii = |b: &u8| b.is_ascii_graphic() || *b == b' ';
    let trimmed = data.strip_suffix(&[0]).unwrap_or(data);
    if !trimmed.is_empty() && trimmed.iter().all(ascii) {
        return String::from_utf8_lossy(trimmed).into_owned();
    }
    // UTF-16LE text somewhere inside (variable names, device paths): keep printable runs of ≥ 3.
    let units: Vec<u16> = data
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    let mut runs = Vec::new();
    let mut run = String::new();
    for unit in units {
        match char::from_u32(u32::from(unit)).filter(|c| c.is_ascii_graphic() || *c == ' ') {
            Some(c) => run.push(c),
            None => {
                if run.len() >= 3 {
                    runs.push(std::mem::take(&mut run));
                }
                run.clear();
            }
        }
    }
    if run.len() >= 3 {
        runs.push(run);
    }
    if runs.is_empty() {
        format!("<{} bytes>", data.len())
    } else {
        runs.join(" ")
    }
}

/// TCG names of the event types seen in PC Client logs.
fn event_type_name(event_type: u32) -> &'static str {
    match event_type {
        0x0000_0001 => "EV_POST_CODE",
        0x0000_0003 => "EV_NO_ACTION",
        0x0000_0004 => "EV_SEPARATOR",
        0x0000_0005 => "EV_ACTION",
        0x0000_0006 => "EV_EVENT_TAG",
        0x0000_0007 => "EV_S_CRTM_CONTENTS",
        0x0000_0008 => "EV_S_CRTM_VERSION",
        0x0000_000D => "EV_IPL",
        0x0000_0012 => "EV_TABLE_OF_DEVICES",
        0x0000_0014 => "EV_NONHOST_INFO",
        0x8000_0001 => "EV_EFI_VARIABLE_DRIVER_CONFIG",
        0x8000_0002 => "EV_EFI_VARIABLE_BOOT",
        0x8000_0003 => "EV_EFI_BOOT_SERVICES_APPLICATION",
        0x8000_0004 => "EV_EFI_BOOT_SERVICES_DRIVER",
        0x8000_0005 => "EV_EFI_RUNTIME_SERVICES_DRIVER",
        0x8000_0006 => "EV_EFI_GPT_EVENT",
        0x8000_0007 => "EV_EFI_ACTION",
        0x8000_0008 => "EV_EFI_PLATFORM_FIRMWARE_BLOB",
        0x8000_0009 => "EV_EFI_HANDOFF_TABLES",
        0x8000_000A => "EV_EFI_PLATFORM_FIRMWARE_BLOB2",
        0x8000_000B => "EV_EFI_HANDOFF_TABLES2",
        0x8000_000C => "EV_EFI_VARIABLE_BOOT2",
        0x8000_00E0 => "EV_EFI_VARIABLE_AUTHORITY",
        0x8000_00E1 => "EV_EFI_SPDM_FIRMWARE_BLOB",
        _ => "EV_UNKNOWN",
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const TPM_ALG_SHA1: u16 = 0x0004;
    const TPM_ALG_SHA384: u16 = 0x000C;

    pub(crate) fn sha256_digest(data: &[u8]) -> [u8; PCR_VALUE_LEN] {
        Sha256::digest(data).into()
    }

    pub(crate) fn spec_id_header(algs: &[(u16, u16)]) -> Vec<u8> {
        let mut data = SPEC_ID_SIGNATURE.to_vec();
        data.extend_from_slice(&0u32.to_le_bytes()); // platformClass
        data.extend_from_slice(&[0, 2, 0, 2]); // minor, major, errata, uintnSize
        data.extend_from_slice(&(algs.len() as u32).to_le_bytes());
        for (alg, size) in algs {
            data.extend_from_slice(&alg.to_le_bytes());
            data.extend_from_slice(&size.to_le_bytes());
        }
        data.push(0); // vendorInfoSize
        let mut out = Vec::new();
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&EV_NO_ACTION.to_le_bytes());
        out.extend_from_slice(&[0u8; 20]);
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(&data);
        out
    }

    pub(crate) fn event2(pcr: u32, event_type: u32, data: &[u8], extended: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&pcr.to_le_bytes());
        out.extend_from_slice(&event_type.to_le_bytes());
        out.extend_from_slice(&2u32.to_le_bytes());
        out.extend_from_slice(&TPM_ALG_SHA1.to_le_bytes());
        out.extend_from_slice(&[0xaa; 20]);
        out.extend_from_slice(&TPM_ALG_SHA256.to_le_bytes());
        out.extend_from_slice(&sha256_digest(extended));
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(data);
        out
    }

    pub(crate) fn utf16(text: &str) -> Vec<u8> {
        text.encode_utf16().flat_map(u16::to_le_bytes).collect()
    }

    /// A small log: startup locality 3, PCR 0 firmware, PCR 7 Secure Boot variables and a
    /// separator, PCR 4 the bootloader.
    fn sample_log() -> Vec<u8> {
        let mut log = spec_id_header(&[(TPM_ALG_SHA1, 20), (TPM_ALG_SHA256, 32)]);
        let mut locality = STARTUP_LOCALITY_SIGNATURE.to_vec();
        locality.push(3);
        log.extend(event2(0, EV_NO_ACTION, &locality, b""));
        log.extend(event2(0, 0x8000_0008, b"firmware volume", b"fv"));
        let mut sb = vec![0x61, 0xdf, 0xe4, 0x8b];
        sb.extend(utf16("SecureBoot"));
        log.extend(event2(7, 0x8000_0001, &sb, b"SecureBoot=1"));
        log.extend(event2(7, 0x8000_0001, &utf16("db"), b"db contents"));
        log.extend(event2(7, 0x4, &[0; 4], &[0; 4]));
        log.extend(event2(4, 0x8000_0003, &[1, 2, 3], b"shimx64.efi"));
        log
    }

    #[test]
    fn replays_pcrs_from_the_log() {
        let log = EventLog::parse(&sample_log()).unwrap();
        assert_eq!(log.startup_locality, 3);
        assert_eq!(log.events.len(), 6);
        let values = log.replay_sha256();
        assert_eq!(values.keys().copied().collect::<Vec<_>>(), vec![0, 4, 7]);

        let mut pcr0 = [0u8; 32];
        pcr0[31] = 3;
        assert_eq!(values[&0], extend(&pcr0, &sha256_digest(b"fv")));
        let mut pcr7 = [0u8; 32];
        for measured in [&b"SecureBoot=1"[..], b"db contents", &[0; 4]] {
            pcr7 = extend(&pcr7, &sha256_digest(measured));
        }
        assert_eq!(values[&7], pcr7);
        for pcr in [0, 4, 7] {
            assert_eq!(log.replay_pcr(pcr), values[&pcr], "PCR {pcr}");
        }
        assert_eq!(
            log.replay_pcr(11),
            [0; 32],
            "a PCR without events keeps its initial value"
        );
    }

    #[test]
    fn lists_the_events_of_a_pcr() {
        let log = EventLog::parse(&sample_log()).unwrap();
        let events = log.events_for(7);
        assert_eq!(events.len(), 3);
        assert_eq!(events[0].type_name(), "EV_EFI_VARIABLE_DRIVER_CONFIG");
        assert!(
            events[0].describe().contains("SecureBoot"),
            "{}",
            events[0].describe()
        );
        assert_eq!(events[2].type_name(), "EV_SEPARATOR");
        assert_eq!(
            log.events_for(0)[0].describe(),
            format!(
                "PCR 0 EV_EFI_PLATFORM_FIRMWARE_BLOB sha256={} firmware volume",
                hex::encode(sha256_digest(b"fv"))
            )
        );
        assert!(log.events_for(4)[0].describe().ends_with("<3 bytes>"));
        assert!(log.events_for(11).is_empty());
    }

    #[test]
    fn rejects_malformed_logs_with_an_offset() {
        let log = sample_log();
        for len in [0, 10, 40, log.len() - 1] {
            let err = EventLog::parse(&log[..len]).unwrap_err();
            assert!(
                matches!(err, EventLogError::Malformed { .. }),
                "{len}: {err}"
            );
        }
        // A SHA-1-only (TPM 1.2 format) log.
        let err = EventLog::parse(&spec_id_header(&[(TPM_ALG_SHA1, 20)])).unwrap_err();
        assert!(err.to_string().contains("no SHA-256"), "{err}");
        let mut bad = sample_log();
        bad[0] = 1; // header not on PCR 0
        assert!(EventLog::parse(&bad)
            .unwrap_err()
            .to_string()
            .contains("Spec ID"));
        // An event with an unknown digest algorithm.
        let mut log = spec_id_header(&[(TPM_ALG_SHA384, 48), (TPM_ALG_SHA256, 32)]);
        log.extend(event2(7, 1, b"", b""));
        let err = EventLog::parse(&log).unwrap_err().to_string();
        assert!(err.contains("0x0004"), "{err}");
    }

    #[test]
    fn refuses_an_event_with_two_sha256_digests() {
        let mut log = spec_id_header(&[(TPM_ALG_SHA1, 20), (TPM_ALG_SHA256, 32)]);
        log.extend_from_slice(&7u32.to_le_bytes());
        log.extend_from_slice(&0x8000_0001u32.to_le_bytes());
        log.extend_from_slice(&2u32.to_le_bytes());
        for digest in [[1u8; 32], [2u8; 32]] {
            log.extend_from_slice(&TPM_ALG_SHA256.to_le_bytes());
            log.extend_from_slice(&digest);
        }
        log.extend_from_slice(&0u32.to_le_bytes());
        let err = EventLog::parse(&log).unwrap_err().to_string();
        assert!(err.contains("two SHA-256 digests"), "{err}");
    }
}
