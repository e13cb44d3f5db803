//! Appraisals of synthetic boots: crypto-agile event logs built here, quotes computed by
//! replaying them (plus boot phases for PCR 11).

use super::*;
use crate::eventlog::tests::{event2, spec_id_header, utf16, TPM_ALG_SHA1};

const EV_SEPARATOR: u32 = 0x4;
const EV_S_CRTM_VERSION: u32 = 0x8;
const EV_IPL: u32 = 0xd;
const EV_EFI_BOOT_SERVICES_APPLICATION: u32 = 0x8000_0003;
const EV_EFI_ACTION: u32 = 0x8000_0007;
const EV_EFI_PLATFORM_FIRMWARE_BLOB: u32 = 0x8000_0008;
const EV_EFI_VARIABLE_AUTHORITY: u32 = 0x8000_00e0;
const TPM_ALG_SHA256: u16 = 0x000b;

/// What differs between the boots of a test.
#[derive(Clone)]
struct Boot {
    firmware: &'static [u8],
    secure_boot: u8,
    uki: &'static [u8],
    cmdline: &'static [u8],
}

const BOOT: Boot = Boot {
    firmware: b"firmware 1.0",
    secure_boot: 1,
    uki: b"cairn-1.2.efi",
    cmdline: b"root=PARTLABEL=root-a ro",
};

/// A `UEFI_VARIABLE_DATA` of the global variable `name`.
fn variable(name: &str, value: &[u8]) -> Vec<u8> {
    let mut data = EFI_GLOBAL_VARIABLE.to_vec();
    data.extend_from_slice(&(name.encode_utf16().count() as u64).to_le_bytes());
    data.extend_from_slice(&(value.len() as u64).to_le_bytes());
    data.extend(utf16(name));
    data.extend_from_slice(value);
    data
}

/// A whole log: startup locality 3; firmware on PCR 0, PCR 2's separator, the Secure Boot policy
/// on PCR 7, the boot application on PCR 4 and systemd-stub's UKI sections on PCR 11.
fn log_bytes(boot: &Boot) -> Vec<u8> {
    let mut log = spec_id_header(&[(TPM_ALG_SHA1, 20), (TPM_ALG_SHA256, 32)]);
    log.extend(event2(0, 0x3, b"StartupLocality\0\x03", b""));
    log.extend(event2(0, EV_S_CRTM_VERSION, &utf16("1.0"), b"crtm 1.0"));
    log.extend(event2(
        0,
        EV_EFI_PLATFORM_FIRMWARE_BLOB,
        &[0; 16],
        boot.firmware,
    ));
    log.extend(event2(0, EV_SEPARATOR, &[0; 4], &[0; 4]));
    log.extend(event2(2, EV_SEPARATOR, &[0; 4], &[0; 4]));
    let secure_boot = variable("SecureBoot", &[boot.secure_boot]);
    log.extend(event2(
        7,
        EV_EFI_VARIABLE_DRIVER_CONFIG,
        &secure_boot,
        &secure_boot,
    ));
    let pk = variable("PK", b"fleet PK");
    log.extend(event2(7, EV_EFI_VARIABLE_DRIVER_CONFIG, &pk, &pk));
    log.extend(event2(7, EV_SEPARATOR, &[0; 4], &[0; 4]));
    log.extend(event2(
        7,
        EV_EFI_VARIABLE_AUTHORITY,
        &variable("db", b"fleet cert"),
        b"fleet cert",
    ));
    log.extend(event2(
        4,
        EV_EFI_ACTION,
        b"Calling EFI Application from Boot Option",
        b"Calling EFI Application from Boot Option",
    ));
    log.extend(event2(4, EV_SEPARATOR, &[0; 4], &[0; 4]));
    log.extend(event2(
        4,
        EV_EFI_BOOT_SERVICES_APPLICATION,
        &[0; 8],
        boot.uki,
    ));
    for (name, contents) in [(".linux", &b"kernel"[..]), (".cmdline", boot.cmdline)] {
        let mut name_nul = name.as_bytes().to_vec();
        name_nul.push(0);
        log.extend(event2(11, EV_IPL, &utf16(name), &name_nul));
        log.extend(event2(11, EV_IPL, &utf16(name), contents));
    }
    log
}

fn log_of(boot: &Boot) -> EventLog {
    EventLog::parse(&log_bytes(boot)).unwrap()
}

/// The PCRs the TPM would quote after `boot` and `phases`.
fn quote(boot: &Boot, phases: &[&str]) -> BTreeMap<u8, [u8; 32]> {
    let log = log_of(boot);
    let mut quoted: BTreeMap<u8, [u8; 32]> = QUOTED_PCRS
        .iter()
        .map(|&pcr| (pcr, log.replay_pcr(pcr)))
        .collect();
    quoted.insert(11, pcr11_after_phases(&log.replay_pcr(11), phases));
    quoted
}

const FIRST_USE: Policy<'static> = Policy {
    require_secure_boot: true,
    uki_pcr11: &[],
    reference: None,
};

fn verified(appraisal: Appraisal) -> Measured {
    match appraisal {
        Appraisal::Verified(measured) => measured,
        Appraisal::Failed(failure) => panic!("expected verified, got: {failure}"),
    }
}

fn failed(appraisal: Appraisal) -> Failure {
    match appraisal {
        Appraisal::Failed(failure) => failure,
        Appraisal::Verified(_) => panic!("expected a failure, the boot was verified"),
    }
}

/// The reference a first attestation of `boot` records.
fn reference_of(boot: &Boot) -> Reference {
    let appraisal = appraise(&quote(boot, &["sysinit"]), &log_of(boot), &FIRST_USE).unwrap();
    verified(appraisal).firmware
}

#[test]
fn a_first_attestation_is_verified_and_returns_what_to_pin() {
    let log = log_of(&BOOT);
    let measured =
        verified(appraise(&quote(&BOOT, &["sysinit", "ready"]), &log, &FIRST_USE).unwrap());
    assert!(measured.secure_boot);
    assert_eq!(measured.uki_pcr11, log.replay_pcr(11));
    assert_eq!(measured.firmware.events(0).len(), 3);
    assert_eq!(measured.firmware.events(2).len(), 1);
    assert_eq!(measured.firmware.events(7).len(), 4);
    assert!(
        measured.firmware.events(4).is_empty(),
        "PCR 4 is not pinned"
    );
    assert_eq!(
        measured.firmware.events(0)[1],
        MeasuredEvent {
            event_type: EV_EFI_PLATFORM_FIRMWARE_BLOB,
            sha256: Sha256::digest(b"firmware 1.0").into(),
        }
    );
}

#[test]
fn the_same_boot_is_verified_against_its_reference_and_uki() {
    let reference = reference_of(&BOOT);
    let log = log_of(&BOOT);
    let uki = [[7; 32], log.replay_pcr(11)];
    let policy = Policy {
        require_secure_boot: true,
        uki_pcr11: &uki,
        reference: Some(&reference),
    };
    let measured = verified(appraise(&quote(&BOOT, &["sysinit"]), &log, &policy).unwrap());
    assert_eq!(measured.firmware, reference);
}

#[test]
fn secure_boot_off_fails_on_pcr_7_naming_the_variable() {
    let boot = Boot {
        secure_boot: 0,
        ..BOOT
    };
    let failure = failed(appraise(&quote(&boot, &[]), &log_of(&boot), &FIRST_USE).unwrap());
    assert_eq!(failure.pcr, 7);
    assert_eq!(failure.reason, "Secure Boot is off");
    let event = failure.event.clone().unwrap();
    assert!(
        event.starts_with("EV_EFI_VARIABLE_DRIVER_CONFIG"),
        "{event}"
    );
    assert!(event.contains("SecureBoot"), "{event}");
    assert!(!failure.measured.as_ref().unwrap().secure_boot);
    assert_eq!(
        failure.to_string(),
        format!("PCR 7: Secure Boot is off ({event})")
    );

    // Not required: verified, and the measurement says it is off.
    let policy = Policy {
        require_secure_boot: false,
        ..FIRST_USE
    };
    let measured = verified(appraise(&quote(&boot, &[]), &log_of(&boot), &policy).unwrap());
    assert!(!measured.secure_boot);
}

#[test]
fn a_secure_boot_variable_whose_data_lies_about_its_digest_is_altered() {
    // The data says 1, the digest (which the quote proves) measured 0.
    let mut bytes = spec_id_header(&[(TPM_ALG_SHA1, 20), (TPM_ALG_SHA256, 32)]);
    bytes.extend(event2(
        7,
        EV_EFI_VARIABLE_DRIVER_CONFIG,
        &variable("SecureBoot", &[1]),
        &variable("SecureBoot", &[0]),
    ));
    let log = EventLog::parse(&bytes).unwrap();
    let quoted = QUOTED_PCRS
        .iter()
        .map(|&p| (p, log.replay_pcr(p)))
        .collect();
    let failure = failed(appraise(&quoted, &log, &FIRST_USE).unwrap());
    assert_eq!(failure.pcr, 7);
    assert!(failure.reason.contains("altered"), "{}", failure.reason);
    assert_eq!(failure.measured, None);
}

#[test]
fn a_missing_secure_boot_variable_counts_as_off() {
    let mut bytes = spec_id_header(&[(TPM_ALG_SHA1, 20), (TPM_ALG_SHA256, 32)]);
    let other_vendor = {
        let mut data = variable("SecureBoot", &[1]);
        data[0] ^= 1;
        data
    };
    bytes.extend(event2(
        7,
        EV_EFI_VARIABLE_DRIVER_CONFIG,
        &other_vendor,
        &other_vendor,
    ));
    let log = EventLog::parse(&bytes).unwrap();
    let quoted = QUOTED_PCRS
        .iter()
        .map(|&p| (p, log.replay_pcr(p)))
        .collect();
    let failure = failed(appraise(&quoted, &log, &FIRST_USE).unwrap());
    // The first PCR 7 measurement is named: it should have been the global SecureBoot.
    assert_eq!(failure.pcr, 7);
    assert!(
        failure
            .event
            .as_deref()
            .is_some_and(|e| e.starts_with("EV_EFI_VARIABLE_DRIVER_CONFIG")),
        "{failure}"
    );
    assert_eq!(failure.reason, "Secure Boot is off");
}

#[test]
fn a_changed_firmware_event_fails_naming_its_index() {
    let reference = reference_of(&BOOT);
    let boot = Boot {
        firmware: b"firmware 1.1",
        ..BOOT
    };
    let policy = Policy {
        reference: Some(&reference),
        ..FIRST_USE
    };
    let failure = failed(appraise(&quote(&boot, &[]), &log_of(&boot), &policy).unwrap());
    assert_eq!(failure.pcr, 0);
    assert!(
        failure.reason.starts_with("event 2 differs"),
        "{}",
        failure.reason
    );
    assert!(
        failure.reason.contains("an admin can accept"),
        "{}",
        failure.reason
    );
    let event = failure.event.unwrap();
    assert!(
        event.starts_with("EV_EFI_PLATFORM_FIRMWARE_BLOB sha256="),
        "{event}"
    );
    assert!(
        event.contains(&hex::encode(Sha256::digest(b"firmware 1.1"))),
        "{event}"
    );
    // What an admin would accept is this boot's firmware.
    assert_eq!(failure.measured.unwrap().firmware, reference_of(&boot));
}

#[test]
fn an_extra_or_missing_firmware_event_fails() {
    let mut bytes = log_bytes(&BOOT);
    bytes.extend(event2(
        2,
        EV_EFI_PLATFORM_FIRMWARE_BLOB,
        b"option rom",
        b"rom",
    ));
    let longer = EventLog::parse(&bytes).unwrap();
    let quoted: BTreeMap<u8, [u8; 32]> = QUOTED_PCRS
        .iter()
        .map(|&p| (p, longer.replay_pcr(p)))
        .collect();

    let reference = reference_of(&BOOT);
    let policy = Policy {
        reference: Some(&reference),
        ..FIRST_USE
    };
    let failure = failed(appraise(&quoted, &longer, &policy).unwrap());
    assert_eq!(failure.pcr, 2);
    assert!(
        failure.reason.starts_with("event 2 is new"),
        "{}",
        failure.reason
    );
    assert!(failure.event.unwrap().contains("option rom"));

    // The other way round: the reference has the event, the boot does not.
    let longer_reference = verified(appraise(&quoted, &longer, &FIRST_USE).unwrap()).firmware;
    let policy = Policy {
        reference: Some(&longer_reference),
        ..FIRST_USE
    };
    let failure = failed(appraise(&quote(&BOOT, &[]), &log_of(&BOOT), &policy).unwrap());
    assert_eq!((failure.pcr, failure.event), (2, None));
    assert!(
        failure
            .reason
            .starts_with("the log has 1 events where the device's reference"),
        "{}",
        failure.reason
    );
}

#[test]
fn a_log_altered_after_the_quote_is_inconsistent() {
    let quoted = quote(&BOOT, &[]);
    let altered = Boot {
        uki: b"evil.efi",
        ..BOOT
    };
    let failure = failed(appraise(&quoted, &log_of(&altered), &FIRST_USE).unwrap());
    assert_eq!((failure.pcr, failure.event.as_deref()), (4, None));
    assert_eq!(
        failure.reason,
        "the event log does not replay to the quoted value (the log is incomplete or altered)"
    );
    assert_eq!(failure.measured, None);

    // A log with a PCR 0 event dropped.
    let log = log_of(&BOOT);
    let mut truncated = log.clone();
    truncated
        .events
        .retain(|e| e.event_type != EV_S_CRTM_VERSION);
    let failure = failed(appraise(&quoted, &truncated, &FIRST_USE).unwrap());
    assert_eq!((failure.pcr, failure.measured), (0, None));
}

#[test]
fn an_event_without_a_sha256_digest_is_refused() {
    let mut bytes = spec_id_header(&[(TPM_ALG_SHA1, 20), (TPM_ALG_SHA256, 32)]);
    bytes.extend_from_slice(&7u32.to_le_bytes());
    bytes.extend_from_slice(&EV_EFI_VARIABLE_DRIVER_CONFIG.to_le_bytes());
    bytes.extend_from_slice(&1u32.to_le_bytes());
    bytes.extend_from_slice(&TPM_ALG_SHA1.to_le_bytes());
    bytes.extend_from_slice(&[0; 20]);
    let data = variable("SecureBoot", &[1]);
    bytes.extend_from_slice(&(data.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&data);
    let log = EventLog::parse(&bytes).unwrap();
    let quoted = QUOTED_PCRS
        .iter()
        .map(|&p| (p, log.replay_pcr(p)))
        .collect();
    let failure = failed(appraise(&quoted, &log, &FIRST_USE).unwrap());
    assert_eq!((failure.pcr, failure.measured), (7, None));
    assert!(
        failure.reason.contains("no SHA-256 digest"),
        "{}",
        failure.reason
    );
    assert!(failure.event.unwrap().contains("sha256=-"));
}

#[test]
fn pcr_11_may_carry_the_boot_phases_of_either_initrd() {
    let log = log_of(&BOOT);
    for phases in [
        &[][..],
        &["sysinit"],
        &["sysinit", "ready"],
        &["enter-initrd"],
        &["enter-initrd", "leave-initrd", "sysinit", "ready"],
    ] {
        let appraisal = appraise(&quote(&BOOT, phases), &log, &FIRST_USE).unwrap();
        assert_eq!(
            verified(appraisal).uki_pcr11,
            log.replay_pcr(11),
            "{phases:?}"
        );
    }
    for phases in [
        &["ready"][..],
        &["shutdown"],
        &["sysinit", "ready", "shutdown"],
    ] {
        let failure = failed(appraise(&quote(&BOOT, phases), &log, &FIRST_USE).unwrap());
        assert_eq!((failure.pcr, &failure.measured), (11, &None), "{phases:?}");
        assert!(failure.reason.contains("boot phases"), "{}", failure.reason);
    }
}

#[test]
fn a_uki_not_built_for_the_os_version_fails_on_pcr_11() {
    let other = Boot {
        cmdline: b"root=PARTLABEL=root-a ro init=/bin/sh",
        ..BOOT
    };
    let known = [log_of(&BOOT).replay_pcr(11)];
    let policy = Policy {
        uki_pcr11: &known,
        ..FIRST_USE
    };
    let failure = failed(appraise(&quote(&other, &["sysinit"]), &log_of(&other), &policy).unwrap());
    assert_eq!(failure.pcr, 11);
    assert!(
        failure
            .reason
            .ends_with("is not one of the 1 built for this OS version"),
        "{}",
        failure.reason
    );
    let event = failure.event.unwrap();
    assert!(event.contains(".cmdline"), "{event}");
    assert!(
        event.contains(&hex::encode(Sha256::digest(other.cmdline))),
        "the event is the command line's contents: {event}"
    );
    assert_eq!(
        failure.measured.unwrap().uki_pcr11,
        log_of(&other).replay_pcr(11)
    );
}

#[test]
fn a_new_os_changes_pcr_4_and_still_matches_the_firmware_reference() {
    let reference = reference_of(&BOOT);
    let update = Boot {
        uki: b"cairn-1.3.efi",
        cmdline: b"root=PARTLABEL=root-b ro",
        ..BOOT
    };
    assert_ne!(quote(&update, &[])[&4], quote(&BOOT, &[])[&4]);
    let policy = Policy {
        reference: Some(&reference),
        ..FIRST_USE
    };
    verified(appraise(&quote(&update, &["sysinit"]), &log_of(&update), &policy).unwrap());
}

#[test]
fn a_quote_without_pcr_4_is_a_protocol_error() {
    let mut quoted = quote(&BOOT, &[]);
    quoted.remove(&4);
    let err = appraise(&quoted, &log_of(&BOOT), &FIRST_USE).unwrap_err();
    assert!(matches!(err, AppraiseError::MissingPcr { pcr: 4 }), "{err}");
    assert!(err.to_string().contains("PCR 4"), "{err}");
}

#[test]
fn long_event_descriptions_are_cut() {
    let event = LogEvent {
        pcr: 0,
        event_type: EV_EFI_PLATFORM_FIRMWARE_BLOB,
        sha256: Some([0; 32]),
        data: vec![b'x'; 10_000],
    };
    let failure = failure(0, Some(&event), "r".to_string(), None);
    let text = failure.event.unwrap();
    assert!(text.starts_with("EV_EFI_PLATFORM_FIRMWARE_BLOB"), "{text}");
    assert_eq!(text.chars().count(), MAX_EVENT_DESCRIPTION + 3);
}

#[test]
fn a_reference_round_trips_through_its_text() {
    let reference = reference_of(&BOOT);
    let text = reference.encode();
    assert_eq!(text.lines().count(), 8);
    assert!(text.starts_with("0 00000008 "), "{text}");
    assert!(text.ends_with('\n'));
    assert_eq!(Reference::decode(&text).unwrap(), reference);
    assert_eq!(Reference::decode("").unwrap(), Reference::default());
}

#[test]
fn hostile_reference_text_is_refused_naming_the_line() {
    let digest = "ab".repeat(32);
    let good = format!("0 00000008 {digest}\n");
    let line = |text: &str| match Reference::decode(text) {
        Err(AppraiseError::BadReference { line, reason }) => (line, reason),
        other => panic!("{text:?} decoded: {other:?}"),
    };
    for (text, at, says) in [
        (
            format!("{good}4 00000008 {digest}\n"),
            2,
            "not one of the pinned",
        ),
        (
            format!("{good}11 00000008 {digest}\n"),
            2,
            "not one of the pinned",
        ),
        (
            format!("{good}00 00000008 {digest}\n"),
            2,
            "not one of the pinned",
        ),
        (format!("{good}0 0000008 {digest}\n"), 2, "8 lowercase hex"),
        (
            format!("0 00000008 {}\n", "zz".repeat(32)),
            1,
            "64 lowercase hex",
        ),
        (
            format!("0 00000008 {}\n", "AB".repeat(32)),
            1,
            "64 lowercase hex",
        ),
        (
            format!("0 00000008 {digest} extra\n"),
            1,
            "4 space-separated",
        ),
        (
            format!("7 00000008 {digest}\n{good}"),
            2,
            "after a higher PCR",
        ),
        (format!("{good}\n"), 2, "1 space-separated"),
        ("0 00000008".to_string(), 1, "newline"),
        ("\n".to_string(), 1, "1 space-separated"),
    ] {
        let (line, reason) = line(&text);
        assert_eq!(line, at, "{text:?}: {reason}");
        assert!(reason.contains(says), "{text:?}: {reason}");
    }

    let too_many = good.repeat(MAX_REFERENCE_EVENTS + 1);
    let (at, reason) = line(&too_many);
    assert_eq!(at, MAX_REFERENCE_EVENTS + 1);
    assert!(reason.contains("more than 256 events on PCR 0"), "{reason}");
    assert!(Reference::decode(&good.repeat(MAX_REFERENCE_EVENTS)).is_ok());

    let (at, reason) = line(&"x".repeat(MAX_REFERENCE_TEXT + 1));
    assert_eq!(at, 0);
    assert!(reason.contains("more than"), "{reason}");
    let err = Reference::decode("x\n").unwrap_err().to_string();
    assert!(
        err.contains("line 1") && err.contains("restore it"),
        "{err}"
    );
}

#[test]
fn too_many_events_on_a_pinned_pcr_cannot_be_pinned() {
    let mut bytes = log_bytes(&BOOT);
    for _ in 0..=MAX_REFERENCE_EVENTS {
        bytes.extend(event2(2, EV_EFI_PLATFORM_FIRMWARE_BLOB, b"rom", b"rom"));
    }
    let log = EventLog::parse(&bytes).unwrap();
    let mut quoted: BTreeMap<u8, [u8; 32]> = QUOTED_PCRS
        .iter()
        .map(|&p| (p, log.replay_pcr(p)))
        .collect();
    quoted.insert(11, pcr11_after_phases(&log.replay_pcr(11), &["sysinit"]));
    let failure = failed(appraise(&quoted, &log, &FIRST_USE).unwrap());
    assert_eq!((failure.pcr, failure.measured), (2, None));
    assert!(
        failure.reason.contains("cannot be pinned"),
        "{}",
        failure.reason
    );
}

/// A log of `boot` with Secure Boot off, doctored by `doctor`, quoted as the TPM would (the
/// doctored events really extended PCR 7, as root can do after boot).
fn spoofed(doctor: impl FnOnce(&mut Vec<u8>)) -> Failure {
    let boot = Boot {
        secure_boot: 0,
        ..BOOT
    };
    let mut bytes = log_bytes(&boot);
    doctor(&mut bytes);
    let log = EventLog::parse(&bytes).unwrap();
    let mut quoted = quote(&boot, &[]);
    quoted.insert(7, log.replay_pcr(7));
    failed(appraise(&quoted, &log, &FIRST_USE).unwrap())
}

#[test]
fn a_secure_boot_record_extended_after_boot_is_altered_not_on() {
    // Root extends PCR 7 after boot with SHA-256 of a `SecureBoot=1` record and appends the
    // matching event: it lands after the separator.
    let failure = spoofed(|bytes| {
        let on = variable("SecureBoot", &[1]);
        bytes.extend(event2(7, EV_EFI_VARIABLE_DRIVER_CONFIG, &on, &on));
    });
    assert_eq!(failure.pcr, 7);
    assert!(failure.reason.contains("altered"), "{}", failure.reason);
    assert_eq!(failure.measured, None);
}

#[test]
fn a_relabelled_secure_boot_event_does_not_hide_the_real_one() {
    // The real `SecureBoot=0` event is relabelled (its digest, which the quote proves, kept)
    // and a `SecureBoot=1` record is claimed second: SecureBoot must be PCR 7's first measurement.
    let failure = spoofed(|bytes| {
        let off = variable("SecureBoot", &[0]);
        let relabelled = event2(7, EV_EFI_ACTION, &off, &off);
        let original = event2(7, EV_EFI_VARIABLE_DRIVER_CONFIG, &off, &off);
        let at = bytes
            .windows(original.len())
            .position(|w| w == original.as_slice())
            .expect("the log has the SecureBoot event");
        bytes.splice(at..at + original.len(), relabelled.clone());
        let on = variable("SecureBoot", &[1]);
        let claimed = event2(7, EV_EFI_VARIABLE_DRIVER_CONFIG, &on, &on);
        let after = at + relabelled.len();
        bytes.splice(after..after, claimed);
    });
    assert_eq!(failure.pcr, 7);
    assert!(failure.reason.contains("altered"), "{}", failure.reason);
}
