//! One QEMU guest booting a Cairn disk image: q35 under TCG (this host's /dev/kvm is unusable),
//! OVMF with Secure Boot enforced (snakeoil keys enrolled), swtpm as TPM 2.0, virtio disk on a
//! qcow2 overlay of the image (the image itself is never written), user-mode networking (the
//! host is 10.0.2.2), and the serial console logged to a file that tests wait on.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cairn_io::{FileError, PathContext, Tool, ToolError};

use crate::swtpm::{QemuSwtpm, SwtpmError};

/// OVMF code with Secure Boot support (needs SMM).
pub const OVMF_CODE_SECBOOT: &str = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd";
/// OVMF variables with the snakeoil PK/KEK/db enrolled and Secure Boot on.
pub const OVMF_VARS_SNAKEOIL: &str = "/usr/share/OVMF/OVMF_VARS_4M.snakeoil.fd";
/// OVMF code without Secure Boot enforcement (a changed boot chain: PCR 7 differs).
pub const OVMF_CODE_PLAIN: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
/// OVMF variables with no keys enrolled (Secure Boot off).
pub const OVMF_VARS_PLAIN: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// The guest address forwarded to a central on the host when [`VmOptions::central_port`] is set
/// (slirp refuses guestfwd on the host alias 10.0.2.2 itself). Build the image with this URL.
pub const GUEST_CENTRAL_URL: &str = "https://10.0.2.100:7443";
/// The guest address forwarded to a registry on the host when [`VmOptions::registry_port`] is
/// set; the recipe lists it in `fleet.plain_http_registries`.
pub const GUEST_REGISTRY: &str = "10.0.2.100:5000";
/// What Linux prints as the last thing before a reboot resets the machine.
const GUEST_REBOOTS: &str = "reboot: Restarting system";
/// How long `qemu-img convert` may take to flatten a guest disk.
const CONVERT_TIMEOUT: Duration = Duration::from_secs(1800);
/// Lines of serial log shown when a wait fails.
const LOG_TAIL_LINES: usize = 100;

/// A guest could not be started, or did not do what was waited for.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// A file could not be prepared.
    #[error(transparent)]
    File(#[from] FileError),
    /// A helper program (qemu-img, qemu-io) failed.
    #[error(transparent)]
    Tool(#[from] ToolError),
    /// QEMU could not be started.
    #[error("`{command}` failed: {stderr}")]
    Command {
        /// The command.
        command: String,
        /// Its stderr.
        stderr: String,
    },
    /// swtpm failed.
    #[error(transparent)]
    Swtpm(#[from] SwtpmError),
    /// The wait timed out or QEMU exited first.
    #[error("{what}; last {LOG_TAIL_LINES} lines of the serial console ({log}):\n{tail}")]
    Wait {
        /// What happened.
        what: String,
        /// The serial log path.
        log: PathBuf,
        /// Its last lines.
        tail: String,
    },
}

/// How to boot a guest.
#[derive(Debug, Clone)]
pub struct VmOptions {
    /// The raw disk image (read only: the guest writes to a qcow2 overlay).
    pub image: PathBuf,
    /// Directory for the overlay, firmware variables, TPM state and serial log.
    pub dir: PathBuf,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// Virtual CPUs.
    pub cpus: u32,
    /// SMBIOS system serial number (the agent's device serial).
    pub serial_number: String,
    /// A guest reboot ends the run (a panic or failed boot too). Off, a reboot the guest asks
    /// for starts QEMU again on the same disk, TPM and firmware variables: a cold start, because
    /// QEMU's warm reset under TCG now and then leaves the second vCPU asleep, and OVMF then
    /// waits for it forever (seen in CI and here: one vCPU spinning in the firmware, the other
    /// halted, nothing on the console).
    pub no_reboot: bool,
    /// Forward the guest's connections to 10.0.2.100:7443 ([`GUEST_CENTRAL_URL`]) to this port on
    /// the host's 127.0.0.1, for a central on a random port. Without it the guest reaches the
    /// host's 127.0.0.1:7443 as 10.0.2.2:7443 (the recipe's default URL).
    pub central_port: Option<u16>,
    /// Forward the guest's connections to 10.0.2.100:5000 ([`GUEST_REGISTRY`]) to this port on
    /// the host's 127.0.0.1 (a test registry serving app images).
    pub registry_port: Option<u16>,
    /// Byte offsets in the disk to flip (XOR 0xff) in the overlay before booting.
    pub flip_bytes: Vec<u64>,
    /// Boot the disk the previous boot in `dir` left (`disk.qcow2`) instead of a fresh overlay.
    pub keep_disk: bool,
    /// Virtual disk size in MiB when larger than the image (first boot grows the data partition).
    pub disk_size_mib: Option<u64>,
    /// Secure Boot on (snakeoil keys enrolled); off boots the same disk under firmware that
    /// verifies nothing, which changes PCR 7.
    pub secure_boot: bool,
    /// TPM state directory (default `dir/tpm`); a new directory is a different, blank TPM.
    pub tpm_dir: Option<PathBuf>,
    /// A "TPM vendor" CA directory ([`cairn_testsupport::VendorCa`]): a TPM state directory that
    /// holds no TPM yet is manufactured with EK certificates from it, like a real TPM. `None`:
    /// a blank swtpm without EK certificates.
    pub vendor_ca: Option<PathBuf>,
    /// A raw image attached read-only as a second disk (e.g. a recovery stick).
    pub extra_disk: Option<PathBuf>,
    /// Where the guest's real-time clock starts (QEMU `-rtc base=`, e.g. `2023-01-01`): a box
    /// without an RTC or with a flat battery. `None`: the host's time.
    pub rtc_base: Option<String>,
    /// TCP ports of the host's 127.0.0.1 forwarded to guest ports (host, guest): connections
    /// arrive at the guest from the LAN side, as from another machine on its network.
    pub host_forwards: Vec<(u16, u16)>,
}

impl VmOptions {
    /// Defaults for booting `image` with state in `dir`: 2 GiB, 1 vCPU, no reboot.
    ///
    /// One vCPU: twice in a row a guest with two vCPUs under TCG froze as its first app's
    /// network came up (kernel modules loading, netfilter hooks patching kernel text on every
    /// CPU): no console line, no TPM command, no disk write, no watchdog restart for 7
    /// minutes. With one vCPU no cross-CPU code patching races exist, and this 2-core host
    /// emulates little more than one vCPU's worth at a time anyway. 2 GiB: the tests run a
    /// debug agent (80 MB binary) and containerd beside the apps, and a guest short of memory
    /// under TCG would thrash for minutes rather than fail.
    pub fn new(image: &Path, dir: &Path) -> VmOptions {
        VmOptions {
            image: image.to_path_buf(),
            dir: dir.to_path_buf(),
            memory_mib: 2048,
            cpus: 1,
            serial_number: "cairn-e2e-0001".into(),
            no_reboot: true,
            central_port: None,
            registry_port: None,
            flip_bytes: Vec::new(),
            keep_disk: false,
            disk_size_mib: None,
            secure_boot: true,
            tpm_dir: None,
            vendor_ca: None,
            extra_disk: None,
            rtc_base: None,
            host_forwards: Vec::new(),
        }
    }
}

/// The guest's disk (qcow2 overlay on the image) inside the VM directory.
pub const DISK_FILE: &str = "disk.qcow2";
/// The guest's firmware variables inside the VM directory.
const VARS_FILE: &str = "OVMF_VARS.fd";
/// The guest's serial console log inside the VM directory.
const SERIAL_FILE: &str = "serial.log";

/// OVMF's code and its variables template, with Secure Boot or without.
fn firmware(secure_boot: bool) -> (&'static str, &'static str) {
    if secure_boot {
        (OVMF_CODE_SECBOOT, OVMF_VARS_SNAKEOIL)
    } else {
        (OVMF_CODE_PLAIN, OVMF_VARS_PLAIN)
    }
}

/// Flatten the guest disk left in `dir` to a raw file at `out` (what a thief would image).
pub fn disk_to_raw(dir: &Path, out: &Path) -> Result<(), VmError> {
    Tool::new("qemu-img")
        .args(["convert", "-f", "qcow2", "-O", "raw"])
        .arg(dir.join(DISK_FILE))
        .arg(out)
        .timeout(CONVERT_TIMEOUT)
        .run()?;
    Ok(())
}

/// Every offset at which `needle` occurs in the file at `path` (read in 8 MiB chunks).
pub fn find_bytes(path: &Path, needle: &[u8]) -> Result<Vec<u64>, VmError> {
    use std::io::Read;
    assert!(!needle.is_empty() && needle.len() < 4096);
    let mut file = fs::File::open(path).at("open", path)?;
    let mut found = Vec::new();
    let mut carry: Vec<u8> = Vec::new();
    let mut base = 0u64; // file offset of carry[0]
    let mut chunk = vec![0u8; 8 << 20];
    loop {
        let n = file.read(&mut chunk).at("read", path)?;
        if n == 0 {
            break;
        }
        carry.extend_from_slice(&chunk[..n]);
        found.extend(memchr::memmem::find_iter(&carry, needle).map(|i| base + i as u64));
        let keep = needle.len() - 1;
        let drop = carry.len().saturating_sub(keep);
        carry.drain(..drop);
        base += drop as u64;
    }
    Ok(found)
}

/// A running guest. QEMU and swtpm are killed on drop.
pub struct Vm {
    qemu: Child,
    tpm: QemuSwtpm,
    serial_log: PathBuf,
    started: Instant,
    /// How the guest was booted, to start QEMU again after a guest reboot.
    options: VmOptions,
    /// Length of the serial log when the running QEMU started.
    boot_mark: usize,
}

/// Whether QEMU, OVMF's Secure Boot firmware and swtpm are installed; the reason when not.
pub fn missing_prerequisites() -> Option<String> {
    for (path, package) in [
        ("/usr/bin/qemu-system-x86_64", "qemu-system-x86"),
        ("/usr/bin/qemu-img", "qemu-utils"),
        ("/usr/bin/qemu-io", "qemu-utils"),
        ("/usr/bin/swtpm", "swtpm"),
        ("/usr/bin/socat", "socat"),
        (OVMF_CODE_SECBOOT, "ovmf"),
        (OVMF_VARS_SNAKEOIL, "ovmf"),
    ] {
        if !Path::new(path).exists() {
            return Some(format!(
                "{path} is missing: install {package} (dev/image-packages.txt)"
            ));
        }
    }
    None
}

/// Read one byte of a raw image.
fn read_byte(image: &Path, offset: u64) -> Result<u8, VmError> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = fs::File::open(image).at("open", image)?;
    f.seek(SeekFrom::Start(offset)).at("seek", image)?;
    let mut b = [0u8];
    f.read_exact(&mut b).at("read", image)?;
    Ok(b[0])
}

impl Vm {
    /// Prepare the overlay, firmware variables and TPM, then start QEMU.
    pub fn boot(options: &VmOptions) -> Result<Vm, VmError> {
        let dir = &options.dir;
        fs::create_dir_all(dir).at("create", dir)?;
        let image = fs::canonicalize(&options.image).at("find image", &options.image)?;
        let overlay = dir.join(DISK_FILE);
        if !(options.keep_disk && overlay.exists()) {
            let _ = fs::remove_file(&overlay);
            let mut create = Tool::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
                .arg(&image)
                .arg(&overlay);
            if let Some(mib) = options.disk_size_mib {
                create = create.arg(format!("{mib}M"));
            }
            create.run()?;
        }
        for &offset in &options.flip_bytes {
            let flipped = read_byte(&image, offset)? ^ 0xff;
            Tool::new("qemu-io")
                .args([
                    "-f",
                    "qcow2",
                    "-c",
                    &format!("write -P {flipped:#04x} {offset} 1"),
                ])
                .arg(&overlay)
                .run()?;
        }
        let vars = dir.join(VARS_FILE);
        let (_, vars_template) = firmware(options.secure_boot);
        fs::copy(vars_template, &vars).at("copy firmware variables to", &vars)?;
        let serial_log = dir.join(SERIAL_FILE);
        let _ = fs::remove_file(&serial_log);
        let (qemu, tpm) = Vm::start(options)?;
        Ok(Vm {
            qemu,
            tpm,
            serial_log,
            started: Instant::now(),
            options: options.clone(),
            boot_mark: 0,
        })
    }

    /// Start swtpm and QEMU on the prepared disk and variables, appending to `dir/serial.log`.
    fn start(options: &VmOptions) -> Result<(Child, QemuSwtpm), VmError> {
        let dir = &options.dir;
        let vars = dir.join(VARS_FILE);
        let (code, _) = firmware(options.secure_boot);
        let overlay = dir.join(DISK_FILE);
        let tpm_dir = options.tpm_dir.clone().unwrap_or_else(|| dir.join("tpm"));
        let tpm = QemuSwtpm::start(&tpm_dir, options.vendor_ca.as_deref())?;
        let serial_log = dir.join(SERIAL_FILE);

        let mut netdev = "user,id=net0".to_string();
        if let Some(port) = options.central_port {
            // cmd: spawns one socat per guest connection (a tcp: chardev carries only one).
            netdev.push_str(&format!(
                ",guestfwd=tcp:10.0.2.100:7443-cmd:socat STDIO TCP:127.0.0.1:{port}"
            ));
        }
        if let Some(port) = options.registry_port {
            netdev.push_str(&format!(
                ",guestfwd=tcp:{GUEST_REGISTRY}-cmd:socat STDIO TCP:127.0.0.1:{port}"
            ));
        }
        for (host, guest) in &options.host_forwards {
            netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"));
        }
        let qemu_stderr = dir.join("qemu.stderr");
        let mut qemu = Command::new("qemu-system-x86_64");
        qemu.args(["-accel", "tcg", "-machine", "q35,smm=on", "-cpu", "max"])
            .args([
                "-m",
                &options.memory_mib.to_string(),
                "-smp",
                &options.cpus.to_string(),
            ])
            .args(["-global", "driver=cfi.pflash01,property=secure,value=on"])
            .arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={code}"
            ))
            .arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=1,file={}",
                vars.display()
            ))
            .arg("-drive")
            // writeback, not unsafe: a guest flush must reach the qcow2 file (its cluster
            // tables included), or killing QEMU (a power cut) loses writes the guest synced.
            .arg(format!(
                "if=none,id=disk0,format=qcow2,cache=writeback,file={}",
                overlay.display()
            ))
            .args(["-device", "virtio-blk-pci,drive=disk0"]);
        if let Some(extra) = &options.extra_disk {
            qemu.arg("-drive")
                .arg(format!(
                    "if=none,id=disk1,format=raw,readonly=on,file={}",
                    extra.display()
                ))
                .args(["-device", "virtio-blk-pci,drive=disk1"]);
        }
        qemu.args([
            "-netdev",
            &netdev,
            "-device",
            "virtio-net-pci,netdev=net0,romfile=",
        ])
        .arg("-chardev")
        .arg(format!("socket,id=chrtpm,path={}", tpm.socket().display()))
        .args([
            "-tpmdev",
            "emulator,id=tpm0,chardev=chrtpm",
            "-device",
            "tpm-tis,tpmdev=tpm0",
        ])
        .args([
            "-smbios",
            &format!("type=1,serial={}", options.serial_number),
        ]);
        if let Some(base) = &options.rtc_base {
            qemu.args(["-rtc", &format!("base={base}")]);
        }
        qemu.args(["-display", "none", "-vga", "none", "-monitor", "none"])
            .arg("-chardev")
            // append: after a guest reboot the next QEMU goes on in the same log.
            .arg(format!(
                "file,id=serial0,path={},append=on",
                serial_log.display()
            ))
            .args(["-serial", "chardev:serial0", "-no-reboot"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                fs::File::create(&qemu_stderr).at("create", &qemu_stderr)?,
            ));
        cairn_io::die_with_parent(&mut qemu);
        let child = qemu.spawn().map_err(|e| VmError::Command {
            command: "qemu-system-x86_64".into(),
            stderr: format!("{e} (install qemu-system-x86)"),
        })?;
        Ok((child, tpm))
    }

    /// After QEMU exited: when the guest asked for a reboot (and [`VmOptions::no_reboot`] is
    /// off), start QEMU again; returns whether it did.
    fn reboot(&mut self) -> Result<bool, VmError> {
        let asked = self
            .serial_text()
            .get(self.boot_mark..)
            .is_some_and(|boot| boot.contains(GUEST_REBOOTS));
        if self.options.no_reboot || !asked {
            return Ok(false);
        }
        self.tpm.stop();
        self.boot_mark = self.serial_mark();
        (self.qemu, self.tpm) = Vm::start(&self.options)?;
        Ok(true)
    }

    /// The serial console log file.
    pub fn serial_log(&self) -> &Path {
        &self.serial_log
    }

    /// Everything the guest printed on its serial console so far.
    pub fn serial_text(&self) -> String {
        fs::read(&self.serial_log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Time since QEMU started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Whether QEMU has exited (a guest reboot with no_reboot, a power-off or a crash). Every
    /// wait asks this, so this is also where a reboot without no_reboot starts QEMU again.
    pub fn exited(&mut self) -> bool {
        if !matches!(self.qemu.try_wait(), Ok(Some(_))) {
            return false;
        }
        match self.reboot() {
            Ok(rebooted) => !rebooted,
            Err(e) => {
                eprintln!("cannot start QEMU again after the guest's reboot: {e}");
                true
            }
        }
    }

    /// Wait until a serial console line contains `marker`; returns that line. Fails with the
    /// serial log tail when `timeout` passes or QEMU exits first.
    pub fn wait_for(&mut self, marker: &str, timeout: Duration) -> Result<String, VmError> {
        self.wait_for_since(0, marker, 1, timeout)
    }

    /// How much the guest has printed so far: a position for [`Vm::wait_for_since`] (the log
    /// goes on across guest reboots).
    pub fn serial_mark(&self) -> usize {
        fs::metadata(&self.serial_log)
            .map(|m| m.len() as usize)
            .unwrap_or(0)
    }

    /// Wait until `count` lines printed after byte `since` contain `marker`; returns the last of
    /// them. Fails with the serial log tail when `timeout` passes or QEMU exits first.
    pub fn wait_for_since(
        &mut self,
        since: usize,
        marker: &str,
        count: usize,
        timeout: Duration,
    ) -> Result<String, VmError> {
        let deadline = Instant::now() + timeout;
        let find = |text: &str| {
            let lines: Vec<&str> = text
                .get(since..)
                .unwrap_or("")
                .lines()
                .filter(|l| l.contains(marker))
                .collect();
            (lines.len() >= count).then(|| lines[count - 1].trim_end_matches('\r').to_string())
        };
        loop {
            if let Some(line) = find(&self.serial_text()) {
                return Ok(line);
            }
            if self.exited() {
                if let Some(line) = find(&self.serial_text()) {
                    return Ok(line);
                }
                return Err(
                    self.wait_error(format!("QEMU exited before the guest printed {marker:?}"))
                );
            }
            if Instant::now() > deadline {
                return Err(self.wait_error(format!(
                    "no {marker:?} on the serial console within {timeout:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Wait until any of `markers` appears or QEMU exits; returns the first matching line, or
    /// None when QEMU exited (or the timeout passed) with none of them printed.
    pub fn wait_for_any(&mut self, markers: &[&str], timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.serial_text();
            if let Some(line) = text.lines().find(|l| markers.iter().any(|m| l.contains(m))) {
                return Some(line.trim_end_matches('\r').to_string());
            }
            if self.exited() || Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The last lines of the serial log.
    pub fn serial_tail(&self) -> String {
        let text = self.serial_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }

    fn wait_error(&self, what: String) -> VmError {
        VmError::Wait {
            what,
            log: self.serial_log.clone(),
            tail: self.serial_tail(),
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
    }
}
