//! A real boot's evidence (see `data/README.md`): the firmware event log and quoted PCRs of the
//! Cairn image booted under QEMU with OVMF Secure Boot, systemd-boot and the signed UKI, as the
//! agent sent them to central. The log parser, the replay and the appraisal accept what real
//! firmware and systemd-stub write, and the checks still catch a change.

use std::collections::BTreeMap;

use cairn_attest::appraise::{appraise, Appraisal, Measured, Policy, Reference};
use cairn_attest::eventlog::EventLog;
use cairn_pe::{pcr11_after_phases, BOOT_PHASES};

const LOG: &[u8] = include_bytes!("data/ovmf_event_log.bin");
const QUOTED: &str = include_str!("data/ovmf_quoted_pcrs.txt");

fn quoted() -> BTreeMap<u8, [u8; 32]> {
    QUOTED
        .lines()
        .map(|line| {
            let (pcr, value) = line.split_once(' ').unwrap();
            let mut bytes = [0u8; 32];
            hex::decode_to_slice(value, &mut bytes).unwrap();
            (pcr.parse().unwrap(), bytes)
        })
        .collect()
}

fn secure_boot_policy<'a>(
    uki_pcr11: &'a [[u8; 32]],
    reference: Option<&'a Reference>,
) -> Policy<'a> {
    Policy {
        require_secure_boot: true,
        uki_pcr11,
        reference,
    }
}

fn verified(appraisal: Appraisal) -> Measured {
    match appraisal {
        Appraisal::Verified(measured) => measured,
        Appraisal::Failed(failure) => panic!("the real boot failed: {failure}"),
    }
}

#[test]
fn the_real_log_replays_to_the_quoted_firmware_pcrs() {
    let log = EventLog::parse(LOG).unwrap();
    let quoted = quoted();
    for pcr in [0, 2, 4, 7] {
        assert_eq!(log.replay_pcr(pcr), quoted[&pcr], "PCR {pcr}");
    }
    // The firmware measured Secure Boot first on PCR 7, and systemd-stub logged the UKI.
    let first_pcr7 = log.events_for(7)[0].describe();
    assert!(first_pcr7.contains("SecureBoot"), "{first_pcr7}");
    assert!(
        !log.events_for(11).is_empty(),
        "systemd-stub logged nothing"
    );
}

#[test]
fn the_real_boot_verifies_with_secure_boot_and_its_uki_value() {
    let log = EventLog::parse(LOG).unwrap();
    let quoted = quoted();
    let measured = verified(appraise(&quoted, &log, &secure_boot_policy(&[], None)).unwrap());
    assert!(measured.secure_boot);
    assert_ne!(measured.uki_pcr11, [0; 32]);
    // The image enables no systemd-pcrphase units, so the quoted PCR 11 is exactly the value
    // systemd-stub left: what central predicts from the bundle's UKI.
    let phases = (0..=BOOT_PHASES.len())
        .find(|&n| pcr11_after_phases(&measured.uki_pcr11, &BOOT_PHASES[..n]) == quoted[&11])
        .expect("PCR 11 is the stub's value followed by boot phases");
    assert_eq!(phases, 0, "the image measured boot phases");

    // Pinned (as central does at first use, through its text form) and with the UKI value
    // predicted for the version, the same boot verifies again.
    let reference = Reference::decode(&measured.firmware.encode()).unwrap();
    let again = appraise(
        &quoted,
        &log,
        &secure_boot_policy(&[measured.uki_pcr11], Some(&reference)),
    )
    .unwrap();
    assert_eq!(verified(again), measured);
}

#[test]
fn another_uki_or_firmware_fails_the_real_boot_on_its_pcr() {
    let log = EventLog::parse(LOG).unwrap();
    let quoted = quoted();
    let appraisal = appraise(&quoted, &log, &secure_boot_policy(&[[7; 32]], None)).unwrap();
    let Appraisal::Failed(failure) = appraisal else {
        panic!("a UKI not built for the version verified");
    };
    assert_eq!(failure.pcr, 11, "{failure}");

    // A quote whose PCR 0 is not what the log replays to: the log is not this boot's.
    let mut other = quoted.clone();
    other.insert(0, [1; 32]);
    let Appraisal::Failed(failure) =
        appraise(&other, &log, &secure_boot_policy(&[], None)).unwrap()
    else {
        panic!("a log of another firmware verified");
    };
    assert_eq!(failure.pcr, 0, "{failure}");
}
