//! The confinement probe: a static program run inside a test container that tries what an
//! escaping app would try and prints one line per attempt, `NAME refused ERRNO` or `NAME allowed`.
//! Built by `cairn_testsupport::images::probe_image` with plain `rustc` (no crates), so it runs
//! in a busybox image. Usage: `probe [PID]`; PID is a process of another app to ptrace.
//! x86_64 only: the syscall numbers are that architecture's.

use std::io::Read;

extern "C" {
    fn syscall(number: i64, ...) -> i64;
    fn __errno_location() -> *mut i32;
}

// x86_64 syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl).
const SYS_PTRACE: i64 = 101;
const SYS_MOUNT: i64 = 165;
const SYS_INIT_MODULE: i64 = 175;
const SYS_ADD_KEY: i64 = 248;
const SYS_KEYCTL: i64 = 250;
const SYS_UNSHARE: i64 = 272;
const SYS_FINIT_MODULE: i64 = 313;
const SYS_BPF: i64 = 321;

const CLONE_NEWUSER: i64 = 0x1000_0000;
const PTRACE_ATTACH: i64 = 16;
const KEY_SPEC_PROCESS_KEYRING: i64 = -2;
const KEYCTL_GET_KEYRING_ID: i64 = 0;
const BPF_MAP_CREATE: i64 = 0;

fn report(name: &str, result: i64) {
    if result < 0 {
        // SAFETY: errno of this thread, read right after the failed call.
        let errno = unsafe { *__errno_location() };
        println!("{name} refused {errno}");
    } else {
        println!("{name} allowed");
    }
}

fn main() {
    let other: i64 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(1);
    let target = b"/tmp\0";
    let tmpfs = b"tmpfs\0";
    let user = b"user\0";
    let desc = b"cairn-probe\0";
    let payload = b"x";
    // bpf_attr for BPF_MAP_CREATE: array map, 4-byte key and value, one entry.
    let attr: [u32; 4] = [2, 4, 4, 1];
    let empty = b"\0";
    // SAFETY: each call gets valid pointers to live buffers or plain numbers; failures are the
    // expected outcome and only their errno is read.
    unsafe {
        report("unshare-user", syscall(SYS_UNSHARE, CLONE_NEWUSER));
        report(
            "mount",
            syscall(SYS_MOUNT, tmpfs.as_ptr(), target.as_ptr(), tmpfs.as_ptr(), 0i64, 0i64),
        );
        report(
            "add-key",
            syscall(SYS_ADD_KEY, user.as_ptr(), desc.as_ptr(), payload.as_ptr(), 1i64, KEY_SPEC_PROCESS_KEYRING),
        );
        report(
            "keyctl",
            syscall(SYS_KEYCTL, KEYCTL_GET_KEYRING_ID, KEY_SPEC_PROCESS_KEYRING, 1i64),
        );
        report(
            "bpf",
            syscall(SYS_BPF, BPF_MAP_CREATE, attr.as_ptr(), std::mem::size_of_val(&attr) as i64),
        );
        report("ptrace-other-app", syscall(SYS_PTRACE, PTRACE_ATTACH, other, 0i64, 0i64));
        report("init-module", syscall(SYS_INIT_MODULE, payload.as_ptr(), 1i64, empty.as_ptr()));
        report("finit-module", syscall(SYS_FINIT_MODULE, 0i64, empty.as_ptr(), 0i64));
    }
    let mut kcore = Vec::new();
    let read = std::fs::File::open("/proc/kcore").and_then(|f| f.take(16).read_to_end(&mut kcore));
    println!("kcore-bytes {}", read.map(|_| kcore.len()).unwrap_or(0));
    match std::fs::write("/sys/kernel/uevent_helper", "/bin/sh") {
        Ok(()) => println!("write-sys allowed"),
        Err(e) => println!("write-sys refused {}", e.raw_os_error().unwrap_or(0)),
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    for line in status.lines().filter(|l| l.starts_with("CapEff:") || l.starts_with("Uid:")) {
        println!("{}", line.split_whitespace().collect::<Vec<_>>().join(" "));
    }
    let map = std::fs::read_to_string("/proc/self/uid_map").unwrap_or_default();
    println!("uid_map {}", map.split_whitespace().collect::<Vec<_>>().join(" "));
    println!("probe-done");
}
