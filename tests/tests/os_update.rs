//! QEMU tier, issue 6: whole-OS updates in A/B slots through a rollout from central.
//!
//! One guest disk (real TPM via swtpm, Secure Boot, LUKS2 data sealed to PCRs 7+11) goes through:
//! 1. version A (0.1.0) boots from slot a, enrolls, runs a two-service app whose volume holds a
//!    marker;
//! 2. a rollout of version B (0.2.0: one more package) — with three power cuts (QEMU killed):
//!    during the download, during `rauc install`, and during the first boot of slot b right after
//!    the data partition was unlocked there. Every boot after a cut lands in a good slot with the
//!    data intact, and the update goes on from where it was; in the end the device reports 0.2.0
//!    from slot b, the rollout is completed, the entry of slot b is blessed, and the app is
//!    healthy again from its volume. Only a fraction of the bundle crossed the network (delta);
//! 3. a rollout of a bad version C (0.3.0: its agent cannot reach central) installs into slot a,
//!    fails its health gate there, marks itself bad and reboots: systemd-boot goes back to slot
//!    b, whose agent reports the update failed, and the rollout halts by itself.
//!
//! Run with `cargo test -p cairn-e2e --test os_update -- --ignored`.

use std::time::{Duration, Instant};

use cairn_api::{
    AppList, AttestationState, BundleUploaded, Device, DeviceDetail, DeviceList, DeviceStatus,
    RolloutDeviceState, RolloutDeviceView, RolloutDryRun, RolloutReply, RolloutView, ServiceHealth,
    ServiceState,
};
use cairn_e2e::{check_fields, image, vm, Vm, VmOptions, READY};
use cairn_testsupport::central::{config_in, read, TestCentral};
use cairn_testsupport::{images, Registry};
use serde_json::{json, Value};

/// Boot to a marker takes ~40-160 s under TCG here; leave room for a loaded CI machine.
const BOOT_TIMEOUT: Duration = Duration::from_secs(420);
/// Download + install + reboot + health gate under TCG.
const UPDATE_TIMEOUT: Duration = Duration::from_secs(1200);
/// The bad slot's health deadline (seconds): short, the test waits for it to run out.
const BAD_DEADLINE_S: u64 = 90;

struct Fleet {
    runtime: tokio::runtime::Runtime,
    central: TestCentral,
}

impl Fleet {
    /// `GET path` as admin, read as a cairn-api type.
    fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        self.runtime.block_on(async { self.central.get(path) })
    }

    /// `POST path` as admin, read as a cairn-api type.
    fn post<T: serde::de::DeserializeOwned>(&self, path: &str, body: Value) -> T {
        self.runtime
            .block_on(async { self.central.admin_read("POST", path, Some(body)) })
    }

    fn device(&self) -> Option<Device> {
        let devices = self.get::<DeviceList>("/api/v1/devices").devices;
        assert!(devices.len() <= 1, "a second device enrolled: {devices:?}");
        devices.into_iter().next().map(|d| d.device)
    }

    fn wait_online(&self, guest: &mut Vm, what: &str) -> Device {
        let started = Instant::now();
        loop {
            if let Some(d) = self
                .device()
                .filter(|d| d.status == DeviceStatus::Active && d.online)
            {
                return d;
            }
            if guest.exited() || started.elapsed() > BOOT_TIMEOUT {
                panic!("{what}: the guest never connected\n{}", guest.serial_tail());
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }

    fn wait_app_healthy(&self, id: &str, guest: &mut Vm, what: &str) {
        let started = Instant::now();
        loop {
            let apps: AppList = self.get(&format!("/api/v1/devices/{id}/apps"));
            let services = apps
                .apps
                .first()
                .and_then(|a| a.status.as_ref())
                .map(|s| s.services.clone())
                .unwrap_or_default();
            let service = |name: &str| services.iter().find(|s| s.name == name);
            if service("web").is_some_and(|s| s.state == ServiceState::Running)
                && service("client").is_some_and(|s| s.health == ServiceHealth::Healthy)
            {
                return;
            }
            if guest.exited() || started.elapsed() > BOOT_TIMEOUT {
                panic!(
                    "{what}: the app never became healthy: {apps:?}\n{}",
                    guest.serial_tail()
                );
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }

    fn rollout(&self, id: &str) -> RolloutView {
        self.get::<RolloutReply>(&format!("/api/v1/rollouts/{id}"))
            .rollout
    }

    /// The rollout's view of the one device.
    fn rollout_device(&self, id: &str) -> RolloutDeviceView {
        only_device(&self.rollout(id)).clone()
    }

    /// Wait until the rollout's state is one of `states`; returns the rollout.
    fn wait_rollout(&self, id: &str, states: &[&str], guest: &mut Vm, what: &str) -> RolloutView {
        let started = Instant::now();
        let mut last = None;
        loop {
            let rollout = self.rollout(id);
            let device = only_device(&rollout).clone();
            if last.as_ref() != Some(&device) {
                eprintln!(
                    "{what}: +{:.0}s rollout {} device {device:?}",
                    started.elapsed().as_secs_f64(),
                    rollout.rollout.state
                );
                last = Some(device);
            }
            if states.iter().any(|s| rollout.rollout.state.as_str() == *s) {
                return rollout;
            }
            // exited() starts QEMU again after a guest reboot: true here is a crash or power-off.
            let exited = guest.exited();
            if exited || started.elapsed() > UPDATE_TIMEOUT {
                panic!(
                    "{what}: rollout never reached {states:?} (QEMU exited: {exited}): {rollout:?}\n{}",
                    guest.serial_tail()
                );
            }
            std::thread::sleep(Duration::from_secs(3));
        }
    }
}

/// The one device of a shown rollout.
fn only_device(rollout: &RolloutView) -> &RolloutDeviceView {
    rollout
        .devices
        .as_ref()
        .and_then(|d| d.first())
        .unwrap_or_else(|| panic!("rollout without its device: {rollout:?}"))
}

fn boot(options: &VmOptions) -> Vm {
    Vm::boot(options).unwrap_or_else(|e| panic!("{e}"))
}

/// Wait for a console marker or panic with the console's tail.
/// A unit that failed (the boot report lists them) ends the wait at once instead of at `timeout`.
fn wait_console(guest: &mut Vm, marker: &str, timeout: Duration, what: &str) -> String {
    match guest.wait_for_any(&[marker, "CAIRN-FAILED-UNIT"], timeout) {
        Some(line) if line.contains(marker) => line,
        Some(line) => panic!(
            "{what}: a unit failed before {marker:?}: {line}\n{}",
            guest.serial_tail()
        ),
        None => panic!(
            "{what}: no {marker:?} within {timeout:?}\n{}",
            guest.serial_tail()
        ),
    }
}

/// The boot report (CAIRN-CHECK fields, CAIRN-BOOT line) of the `nth` boot printed after byte
/// `since` of the console.
fn boot_facts(
    guest: &mut Vm,
    since: usize,
    nth: usize,
) -> (std::collections::BTreeMap<String, String>, String) {
    let check = guest
        .wait_for_since(since, "CAIRN-CHECK", nth, BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    let entries = guest
        .wait_for_since(since, "CAIRN-BOOT", nth, BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    guest
        .wait_for_since(since, READY, nth, BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    (check_fields(&check), entries)
}

#[test]
#[ignore = "QEMU tier (builds three images and boots one disk many times under TCG): run with --ignored"]
fn update_a_to_b_survives_power_cuts_and_a_bad_update_rolls_back_and_halts() {
    if let Some(reason) = vm::missing_prerequisites() {
        panic!("cannot run the QEMU tier: {reason}");
    }
    let work = cairn_e2e::WorkDir::fresh("os-update");

    let recipe = cairn_image::Recipe::load(&image::recipe_path()).unwrap();
    let keys = image::update_keys().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let central_dir = tempfile::tempdir_in(&work).unwrap();
    let mut config = config_in(central_dir.path());
    // OVMF measures Secure Boot: central requires it, as it does by default.
    config.require_secure_boot = true;
    config.server_names.push("10.0.2.100".into());
    config.update_keyring = Some(keys.cert.clone());
    config.update_compatible = Some(recipe.update.compatible.clone());
    // The guest's swtpm is manufactured with EK certificates from this "TPM vendor", which
    // central trusts: the device proves its TPM at enrollment.
    let vendor = cairn_testsupport::VendorCa::new(work.join("tpm-vendor"));
    config.tpm_vendor_cas = vendor.anchor_pem_paths();
    let central = runtime.block_on(TestCentral::start_with(central_dir, config));
    let (_, secret) = runtime.block_on(async { central.tpm_token("auto", Some(1)) });
    let fleet = Fleet { runtime, central };
    let files = image::FleetFiles::for_test_central(&work, &fleet.central.ca_pem, &secret);
    let a = image::build_image_with(&work.join("image-a"), &files, |_| {})
        .unwrap_or_else(|e| panic!("{e}"));
    let b = image::build_image_with(&work.join("image-b"), &files, |r| {
        r.target.version = "0.2.0".into();
        r.debian.packages.push("less".into());
    })
    .unwrap_or_else(|e| panic!("{e}"));
    // C's agent dials a port where nothing listens: it never passes the health gate.
    let bad_files = image::FleetFiles {
        central_url: Some("https://10.0.2.100:9".into()),
        ..files.clone()
    };
    let c = image::build_image_with(&work.join("image-c"), &bad_files, |r| {
        r.target.version = "0.3.0".into();
        r.debian.packages.push("less".into());
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let upload = |bundle: &std::path::Path| {
        let (status, body) = fleet.central.upload_bundle(bundle);
        assert!(
            status == 201 || status == 200,
            "upload {}: {status} {body}",
            bundle.display()
        );
        read::<BundleUploaded>("POST", "/api/v1/bundles", body)
            .bundle
            .sha256
    };
    let b_sha = fleet.runtime.block_on(async { upload(&b.bundle) });
    let c_sha = fleet.runtime.block_on(async { upload(&c.bundle) });

    let registry = Registry::start();
    fleet.runtime.block_on(images::push(
        &registry.url(),
        "cairn/box",
        "1",
        &images::busybox_image(&[]),
        None,
    ));
    let vm_dir = work.join("vm");
    let mut options = VmOptions::new(&a.image, &vm_dir);
    options.central_port = Some(fleet.central.c().grpc_addr.port());
    options.vendor_ca = Some(vendor.dir().to_path_buf());
    options.registry_port = Some(registry.port());
    options.disk_size_mib = Some(1800);
    // A reboot the guest asks for (the update's) starts QEMU again on the same disk, TPM and
    // firmware variables (see VmOptions::no_reboot); a power cut is killing QEMU.
    options.no_reboot = false;
    let mut again = options.clone();
    again.keep_disk = true;

    // 1. Version A in slot a, with an app whose volume holds a marker.
    let boot_started = Instant::now();
    let mut guest = boot(&options);
    let device = fleet.wait_online(&mut guest, "A");
    let plain_boot_s = boot_started.elapsed().as_secs_f64();
    let id = device.id.clone();
    let marker = format!("cairn-update-marker-{}", std::process::id());
    let (status, body) = fleet.runtime.block_on(async {
        fleet.central.call(
            &fleet.central.admin,
            "PUT",
            &format!("/api/v1/devices/{id}/apps/demo"),
            Some(json!({ "compose_yaml": cairn_e2e::demo_app(&marker) })),
        )
    });
    assert!(status == 200 || status == 201, "deploy: {status} {body}");
    fleet.wait_app_healthy(&id, &mut guest, "A");
    let (check, _) = boot_facts(&mut guest, 0, 1);
    assert_eq!(check.get("slot").map(String::as_str), Some("a"));

    // A downgrade-free dry run lists the device, then the real rollout.
    let plan = fleet
        .post::<RolloutDryRun>(
            "/api/v1/rollouts",
            json!({ "bundle_sha256": b_sha, "selector": { "all": true }, "dry_run": true }),
        )
        .plan;
    assert!(
        plan.waves
            .iter()
            .flat_map(|w| &w.devices)
            .any(|d| d.device_id == id),
        "dry run does not list the device: {plan:?}"
    );
    let update_started = Instant::now();
    let rollout_b = fleet
        .post::<RolloutReply>(
            "/api/v1/rollouts",
            json!({ "bundle_sha256": b_sha, "selector": { "all": true }, "waves": { "canary": 1, "percent": [100] },
                    "failure_threshold_percent": 0, "health_deadline_seconds": 600 }),
        )
        .rollout
        .rollout
        .id;

    // 2a. Power cut during the download; the next boot (still A) resumes it.
    wait_console(
        &mut guest,
        "CAIRN-UPDATE progress",
        UPDATE_TIMEOUT,
        "download",
    );
    drop(guest);
    let mut guest = boot(&again);
    // 2b. Power cut while rauc writes slot b (not yet active): A boots again and re-installs.
    wait_console(
        &mut guest,
        "CAIRN-UPDATE stage=installing",
        UPDATE_TIMEOUT,
        "install",
    );
    std::thread::sleep(Duration::from_secs(2));
    drop(guest);
    let mut guest = boot(&again);
    let (check, _) = boot_facts(&mut guest, 0, 1);
    assert_eq!(
        check.get("slot").map(String::as_str),
        Some("a"),
        "a cut during install must boot the old slot"
    );
    // 2c. Power cut on the first boot of slot b, right after its data partition was unlocked
    // (the disk key copy sealed to b was promoted): slot b is tried again and unlocks again.
    wait_console(
        &mut guest,
        "CAIRN-UPDATE stage=rebooting",
        UPDATE_TIMEOUT,
        "reboot into b",
    );
    let before = guest.serial_mark();
    guest
        .wait_for_since(before, "CAIRN-DATA state=", 1, BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("slot b never unlocked: {e}"));
    drop(guest);
    let b_boot_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut guest = boot(&again);
    let done = fleet.wait_rollout(&rollout_b, &["completed"], &mut guest, "A->B");
    let update_s = update_started.elapsed().as_secs_f64();
    let dev = only_device(&done);
    assert_eq!(dev.device.state, RolloutDeviceState::Succeeded, "{done:?}");
    let device = fleet.wait_online(&mut guest, "B");
    assert_eq!(device.id, id, "B came up as another device: data lost");
    let (check, _) = boot_facts(&mut guest, 0, 1);
    assert_eq!(
        check.get("slot").map(String::as_str),
        Some("b"),
        "{check:?}"
    );
    assert!(
        guest.serial_text().contains("CAIRN-DATA state=unlocked"),
        "data not unlocked by TPM on b"
    );
    fleet.wait_app_healthy(&id, &mut guest, "B");
    // Issue 15: B's UKI is the one its bundle carries (central predicted its PCR 11 at upload),
    // so the updated device still attests `verified`.
    let started = Instant::now();
    loop {
        let shown: DeviceDetail = fleet.get(&format!("/api/v1/devices/{id}"));
        let summary = shown.device.attestation;
        if summary.state == AttestationState::Verified
            && summary
                .verified_at
                .is_some_and(|at| at.unix_seconds() >= b_boot_at)
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "B does not attest verified: {summary:?}\n{}",
            guest.serial_tail()
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    let progress = fleet.rollout_device(&rollout_b).progress;
    let fetched = progress.as_ref().map_or(0, |p| p.bytes_fetched);
    let total = progress.as_ref().map_or(b.bundle_bytes, |p| p.bytes_total);
    eprintln!(
        "BENCH update_fetched_bytes={fetched} of bundle_bytes={}",
        b.bundle_bytes
    );
    eprintln!(
        "BENCH update_fetched_fraction={:.3}",
        fetched as f64 / b.bundle_bytes as f64
    );
    eprintln!(
        "BENCH update_with_3_power_cuts_over_plain_boot={:.2}",
        update_s / plain_boot_s
    );
    assert_eq!(total, b.bundle_bytes);
    assert!(
        fetched > 0 && fetched < b.bundle_bytes / 2,
        "the delta fetched {fetched} of {} bytes",
        b.bundle_bytes
    );

    // 3. The bad update: installs into slot a, fails its health gate there, comes back to b.
    let before_c = guest.serial_mark();
    let rollout_c = fleet
        .post::<RolloutReply>(
            "/api/v1/rollouts",
            json!({ "bundle_sha256": c_sha, "selector": { "all": true }, "waves": { "canary": 1, "percent": [100] },
                    "failure_threshold_percent": 0, "health_deadline_seconds": BAD_DEADLINE_S }),
        )
        .rollout
        .rollout
        .id;
    // Without power cuts, as the device's console shows it: download (incl. scanning the running
    // slot for chunks it already has) + install, until it reboots into the new slot.
    let stage = |guest: &mut Vm, name: &str| {
        let marker = format!("CAIRN-UPDATE stage={name} version=0.3.0");
        guest
            .wait_for_since(before_c, &marker, 1, UPDATE_TIMEOUT)
            .unwrap_or_else(|e| panic!("C: {e}"));
        Instant::now()
    };
    let c_started = stage(&mut guest, "downloading");
    let c_installed = stage(&mut guest, "rebooting");
    eprintln!(
        "BENCH update_time_over_plain_boot={:.2}",
        (c_installed - c_started).as_secs_f64() / plain_boot_s
    );
    let halted = fleet.wait_rollout(&rollout_c, &["halted"], &mut guest, "bad update");
    let dev = only_device(&halted);
    assert_eq!(dev.device.state, RolloutDeviceState::Failed, "{halted:?}");
    assert!(dev.device.error.contains("health"), "{halted:?}");
    let device = fleet.wait_online(&mut guest, "back on B");
    assert_eq!(device.id, id);
    // Two boots since: C in slot a (failed), then b again.
    let (check, entries) = boot_facts(&mut guest, before_c, 1);
    assert_eq!(
        check.get("slot").map(String::as_str),
        Some("a"),
        "C did not boot in slot a: {check:?}"
    );
    // C's boot report lists the entries as B's health gate left them: b committed (blessed).
    assert!(
        entries.contains("cairn-b.conf"),
        "slot b was not committed (blessed): {entries}"
    );
    let (check, entries) = boot_facts(&mut guest, before_c, 2);
    assert_eq!(
        check.get("slot").map(String::as_str),
        Some("b"),
        "did not roll back to slot b: {check:?}"
    );
    assert!(
        entries.contains("cairn-b.conf"),
        "slot b lost its blessing: {entries}"
    );
    fleet.wait_app_healthy(&id, &mut guest, "back on B");
    assert_eq!(
        fleet.rollout_device(&rollout_b).device.state,
        RolloutDeviceState::Succeeded
    );
    // B's reboot into C stopped the healthy app first (cairn-apps-stop.service), and no reboot
    // since had systemd-shutdown wait 90 s for a container's PID 1 (httpd ignores SIGTERM).
    let since_c = guest
        .serial_text()
        .get(before_c..)
        .unwrap_or("")
        .to_string();
    assert!(
        since_c.contains("cairn-apps: stopped 2 app task(s)")
            && !since_c.contains("systemd-shutdown[1]: Waiting for process"),
        "a reboot did not stop the app's two services first:\n{since_c}"
    );
    drop(guest);
    let Fleet {
        runtime,
        mut central,
    } = fleet;
    runtime.block_on(central.stop());
}
