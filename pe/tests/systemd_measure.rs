//! The PCR 11 prediction against systemd's own calculator: a UKI built like `cairn-image` builds
//! one (objcopy adds the sections to the host's systemd-stub 252), predicted from its bytes, must
//! equal what `systemd-measure calculate` computes from the section files.

use std::path::{Path, PathBuf};
use std::process::Command;

use cairn_pe::{append_addresses, layout, pcr11_after_phases, predict_uki_pcr11, BOOT_PHASES};
use cairn_testsupport::require_tool;

const STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";
const SYSTEMD_MEASURE: &str = "/usr/lib/systemd/systemd-measure";

/// Like `require_tool`, for a file outside `PATH`: skip loudly, or panic under `CI=true`.
fn require_file(path: &str, package: &str) -> bool {
    if Path::new(path).exists() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true")) {
        panic!("{path} is required in CI but missing; .ci/run must install {package}");
    }
    eprintln!(
        "\n======== SKIP: {path} not found; this test needs it and did NOT run. Install it \
         (apt-get install {package}) to run it; under CI=true this is a failure. ========\n"
    );
    false
}

/// Build a UKI at `out` from the stub and `sections` (name, file), added in the given order at
/// the addresses `cairn-image` uses.
fn build_uki(sections: &[(&str, PathBuf)], out: &Path) {
    let stub = std::fs::read(STUB).unwrap();
    let sizes = sections
        .iter()
        .map(|(_, file)| std::fs::metadata(file).unwrap().len());
    let addresses = append_addresses(&layout(&stub).unwrap(), sizes);
    let mut objcopy = Command::new("objcopy");
    for ((name, file), address) in sections.iter().zip(addresses) {
        objcopy
            .arg("--add-section")
            .arg(format!("{name}={}", file.display()))
            .arg("--change-section-vma")
            .arg(format!("{name}={address:#x}"));
    }
    let status = objcopy.arg(STUB).arg(out).status().unwrap();
    assert!(status.success(), "objcopy failed");
}

/// `systemd-measure calculate` over the section files, with `phase` (`None`: its default list of
/// phases); the PCR 11 values it prints, in order.
fn systemd_measure(sections: &[(&str, PathBuf)], phase: Option<&str>) -> Vec<[u8; 32]> {
    let mut cmd = Command::new(SYSTEMD_MEASURE);
    cmd.arg("calculate").arg("--bank=sha256");
    for (name, file) in sections {
        if *name != ".pcrsig" {
            cmd.arg(format!("--{}={}", &name[1..], file.display()));
        }
    }
    if let Some(phase) = phase {
        cmd.arg(format!("--phase={phase}"));
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "systemd-measure failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .map(|line| {
            let value = line
                .strip_prefix("11:sha256=")
                .unwrap_or_else(|| panic!("unexpected systemd-measure line {line:?}"));
            hex::decode(value).unwrap().try_into().unwrap()
        })
        .collect()
}

#[test]
fn prediction_equals_systemd_measure_for_a_uki_built_like_cairn_image() {
    if !require_tool("objcopy")
        || !require_file(STUB, "systemd-boot-efi")
        || !require_file(SYSTEMD_MEASURE, "systemd")
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: Vec<u8>| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };
    // Sizes that are not multiples of the file alignment: objcopy pads the raw data, which must
    // not be measured.
    let kernel: Vec<u8> = (0..100_003u32).map(|i| (i * 7 % 251) as u8).collect();
    let sections = vec![
        (
            ".osrel",
            write("osrel", b"ID=cairn\nVERSION_ID=2\n".to_vec()),
        ),
        (".cmdline", write("cmdline", b"cairn.slot=b ro".to_vec())),
        (".initrd", write("initrd", vec![0xa5; 50_001])),
        (".linux", write("linux", kernel)),
        (
            ".splash",
            write("splash", b"BM not really a bitmap".to_vec()),
        ),
        (".dtb", write("dtb", vec![0xd0, 0x0d, 0xfe, 0xed, 1, 2, 3])),
        (
            ".pcrpkey",
            write("pcrpkey", b"-----BEGIN PUBLIC KEY-----\n".to_vec()),
        ),
        // Not measured by the stub (and systemd-measure has no option for it).
        (".pcrsig", write("pcrsig", b"{\"sha256\":[]}".to_vec())),
    ];
    let uki = dir.path().join("uki.efi");
    build_uki(&sections, &uki);
    let uki = std::fs::read(uki).unwrap();

    let predicted = predict_uki_pcr11(&uki).unwrap();
    // An empty phase makes systemd-measure 252 print the plain value after the sections.
    assert_eq!(
        systemd_measure(&sections, Some("")),
        vec![predicted],
        "prediction {} differs from systemd-measure",
        hex::encode(predicted)
    );
    // Its default phases: enter-initrd, +leave-initrd, +sysinit, +ready.
    let expected: Vec<[u8; 32]> = (1..=BOOT_PHASES.len())
        .map(|n| pcr11_after_phases(&predicted, &BOOT_PHASES[..n]))
        .collect();
    assert_eq!(systemd_measure(&sections, None), expected);

    // Only the image's four sections, as `cairn-image` builds a slot's UKI.
    let four = &sections[..4];
    let uki = dir.path().join("four.efi");
    build_uki(four, &uki);
    let predicted = predict_uki_pcr11(&std::fs::read(uki).unwrap()).unwrap();
    assert_eq!(systemd_measure(four, Some("")), vec![predicted]);
}
