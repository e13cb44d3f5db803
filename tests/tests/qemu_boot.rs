//! QEMU tier: boot the real image under OVMF Secure Boot + swtpm and check the boot chain.
//!
//! These tests build the image (or use `CAIRN_E2E_IMAGE`) and boot it under TCG: a few minutes
//! on 2 cores, so they are `#[ignore]`d in the default run. Run them with
//! `cargo test -p cairn-e2e --test qemu_boot -- --ignored --test-threads=1`.

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use cairn_e2e::{check_fields, image, vm, Vm, VmOptions, READY};

/// Boot to CAIRN-READY takes ~40-90 s under TCG here; leave room for a loaded CI machine.
const BOOT_TIMEOUT: Duration = Duration::from_secs(420);

/// One image per test process; boots run one at a time (TCG on 2 cores).
fn image_under_test() -> &'static PathBuf {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE.get_or_init(|| {
        image::image_under_test().unwrap_or_else(|e| panic!("no image to boot: {e}"))
    })
}

fn serialize() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn skip_reason() -> Option<String> {
    vm::missing_prerequisites()
}

#[test]
#[ignore = "QEMU tier (builds and boots an image under TCG, minutes): run with --ignored"]
fn boots_with_secure_boot_onto_a_verified_read_only_root() {
    if let Some(reason) = skip_reason() {
        panic!("cannot run the QEMU tier: {reason}");
    }
    let image = image_under_test();
    let _one_at_a_time = serialize();
    let dir = cairn_e2e::WorkDir::fresh("secure-boot");
    let started = Instant::now();
    let mut guest = Vm::boot(&VmOptions::new(image, &dir)).unwrap();
    let ready = guest.wait_for(READY, BOOT_TIMEOUT);
    let boot_time = started.elapsed();
    if let Err(e) = ready {
        panic!("{e}");
    }
    eprintln!("BENCH qemu_start_to_ready_s={:.1}", boot_time.as_secs_f64());
    let check = guest
        .wait_for("CAIRN-CHECK", Duration::from_secs(5))
        .unwrap();
    let fields = check_fields(&check);
    let tail = guest.serial_tail();
    assert_eq!(
        fields.get("secureboot").map(String::as_str),
        Some("1"),
        "Secure Boot is not on: {check}\n{tail}"
    );
    assert_eq!(fields.get("slot").map(String::as_str), Some("a"), "{check}");
    assert_eq!(
        fields.get("root").map(String::as_str),
        Some("/dev/mapper/root"),
        "{check}"
    );
    assert_eq!(
        fields.get("root_ro").map(String::as_str),
        Some("1"),
        "root is writable: {check}"
    );
    assert_eq!(
        fields.get("verity_target").map(String::as_str),
        Some("verity"),
        "{check}"
    );
    assert_eq!(
        fields.get("verity_status").map(String::as_str),
        Some("verified"),
        "{check}"
    );
}

#[test]
#[ignore = "QEMU tier (builds and boots an image under TCG, minutes): run with --ignored"]
fn a_flipped_byte_in_root_a_fails_closed() {
    if let Some(reason) = skip_reason() {
        panic!("cannot run the QEMU tier: {reason}");
    }
    let image = image_under_test();
    let recipe = cairn_image::Recipe::load(&image::recipe_path()).unwrap();
    let layout = cairn_image::disk::layout(&recipe.partitions);
    let root_a = layout.get("root-a").unwrap().offset;
    let _one_at_a_time = serialize();
    let dir = cairn_e2e::WorkDir::fresh("tampered-root");
    let mut options = VmOptions::new(image, &dir);
    // A byte in the squashfs superblock's first block: read at mount, so verification must fail.
    options.flip_bytes = vec![root_a + 200];
    let mut guest = Vm::boot(&options).unwrap();
    let failure = guest.wait_for_any(
        &[READY, "Kernel panic", "verity", "refusing to boot"],
        BOOT_TIMEOUT,
    );
    // Give the guest a moment to print the whole failure, then make sure it never became ready.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !guest.exited()
        && Instant::now() < deadline
        && !guest.serial_text().contains("Kernel panic")
    {
        std::thread::sleep(Duration::from_millis(500));
    }
    let text = guest.serial_text();
    let tail = guest.serial_tail();
    assert!(
        !text.contains(READY),
        "a tampered root booted to {READY}:\n{tail}"
    );
    let line =
        failure.unwrap_or_else(|| panic!("no verity failure or panic on the console:\n{tail}"));
    assert!(!line.contains(READY), "{line}");
    assert!(
        text.contains("verity")
            && (text.contains("Kernel panic") || text.contains("refusing to boot")),
        "boot did not fail closed with a verity error:\n{tail}"
    );
}

// The agent enrolling from the guest with a real central is the first boot of
// tests/data_protection.rs (it needs the same central-configured image).
