//! `cairn-vm IMAGE [SECONDS]`: boot a Cairn disk image the way the e2e tests do (OVMF Secure
//! Boot, swtpm, user networking) and stream its serial console to stdout until it prints
//! CAIRN-READY (exit 0), QEMU exits, or SECONDS (default 300) pass (exit 1). For looking at a
//! boot by hand; the VM state lives in target/cairn-e2e/vms/manual-*.

use std::io::Write;
use std::time::{Duration, Instant};

fn main() {
    std::process::exit(run());
}

/// Boot and follow; the VM (QEMU and swtpm) is dropped, so killed, before the exit code returns.
fn run() -> i32 {
    let mut args = std::env::args().skip(1);
    let Some(image) = args.next() else {
        eprintln!("usage: cairn-vm IMAGE [SECONDS]");
        return 2;
    };
    let seconds: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(300);
    if let Some(reason) = cairn_e2e::vm::missing_prerequisites() {
        eprintln!("cannot boot: {reason}");
        return 2;
    }
    let base = cairn_e2e::image::target_dir().join("cairn-e2e/vms");
    std::fs::create_dir_all(&base).expect("create target/cairn-e2e/vms");
    let dir = tempfile::Builder::new()
        .prefix("manual-")
        .tempdir_in(&base)
        .expect("temp dir");
    let options = cairn_e2e::VmOptions::new(std::path::Path::new(&image), dir.path());
    let mut vm = match cairn_e2e::Vm::boot(&options) {
        Ok(vm) => vm,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    let started = Instant::now();
    let mut shown = 0;
    loop {
        let text = vm.serial_text();
        if text.len() > shown {
            print!("{}", &text[shown..]);
            let _ = std::io::stdout().flush();
            shown = text.len();
        }
        if text.contains(cairn_e2e::READY) {
            eprintln!(
                "\n== {} after {:.1}s",
                cairn_e2e::READY,
                started.elapsed().as_secs_f64()
            );
            return 0;
        }
        if vm.exited() || started.elapsed() > Duration::from_secs(seconds) {
            eprintln!(
                "\n== no {} (QEMU exited: {}) after {:.1}s",
                cairn_e2e::READY,
                vm.exited(),
                started.elapsed().as_secs_f64()
            );
            return 1;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
