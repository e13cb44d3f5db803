//! `cargo xtask demo`: a local central plus three devices on this machine (one keeps its key in
//! a real swtpm), enrolling under `auto` and `manual` policies, shown through cairnctl.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::run as run_command;

/// Child processes killed when the demo ends, however it ends.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !ready() {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

struct Ctl {
    bin: PathBuf,
    url: String,
    ca: PathBuf,
    token: PathBuf,
}

impl Ctl {
    fn run(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.bin)
            .args(args)
            .env("CAIRN_CENTRAL", &self.url)
            .env("CAIRN_CA", &self.ca)
            .env("CAIRN_TOKEN_FILE", &self.token)
            .output()
            .context("running cairnctl")?;
        if !out.status.success() {
            bail!(
                "cairnctl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A new enrollment token's secret; `software` also admits devices without a proven TPM.
    fn secret(&self, policy: &str, software: bool) -> Result<String> {
        let name = format!("demo-{policy}{}", if software { "-software" } else { "" });
        let mut args = vec![
            "--json", "token", "create", "--name", &name, "--policy", policy,
        ];
        if software {
            args.push("--allow-software-keys");
        }
        let out = self.run(&args)?;
        let start = out
            .find("\"secret\"")
            .context("no secret in cairnctl output")?;
        let value = out[start..].split('"').nth(3).context("malformed secret")?;
        Ok(value.to_owned())
    }
}

fn status_phase(state_dir: &Path) -> String {
    std::fs::read_to_string(state_dir.join("status.json"))
        .ok()
        .and_then(|s| {
            s.split("\"phase\":")
                .nth(1)
                .map(|r| r.split('"').nth(1).unwrap_or("").to_owned())
        })
        .unwrap_or_default()
}

/// Run the demo.
pub fn run(root: &Path) -> Result<()> {
    run_command(root, "cargo", &["build", "--workspace", "--bins"])?;
    let bin = root.join("target/debug");
    let work = root.join("target/demo");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let mut children = Children(Vec::new());

    let (grpc, rest) = (free_port()?, free_port()?);
    let data = work.join("central");
    let config = work.join("central.toml");
    // The demo's "TPM vendor": its CA certifies the EKs of the demo's swtpm TPMs (a real fleet
    // lists its TPM makers' CAs instead), and central trusts it.
    println!("==> a local TPM vendor CA (swtpm_localca) for the demo's TPMs' EK certificates");
    let vendor = cairn_testsupport::VendorCa::new(work.join("tpm-vendor"));
    std::fs::write(
        &config,
        // 10.0.2.100 is how the QEMU device reaches this central (forwarded to 127.0.0.1:{grpc}).
        format!(
            "data_dir = {data:?}\ngrpc_listen = \"127.0.0.1:{grpc}\"\nrest_listen = \"127.0.0.1:{rest}\"\n\
             server_names = [\"localhost\", \"127.0.0.1\", \"10.0.2.100\"]\npending_retry_seconds = 2\n\
             tpm_vendor_cas = {:?}\n",
            vendor.anchor_pem_paths()
        ),
    )?;
    println!(
        "==> starting cairn-central (gRPC :{grpc}, REST :{rest}), log in {}",
        work.join("central.log").display()
    );
    children.0.push(
        Command::new(bin.join("cairn-central"))
            .args(["serve", "--config"])
            .arg(&config)
            .stderr(std::fs::File::create(work.join("central.log"))?)
            .spawn()
            .context("starting cairn-central")?,
    );
    wait_for("central's admin token", Duration::from_secs(20), || {
        data.join("admin.token").exists()
    })?;
    wait_for("central's REST port", Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", rest)).is_ok()
    })?;
    let ctl = Ctl {
        bin: bin.join("cairnctl"),
        url: format!("https://127.0.0.1:{rest}"),
        ca: data.join("ca.crt"),
        token: data.join("admin.token"),
    };

    println!(
        "==> cairnctl token create (auto for proven TPMs; auto and manual also for software keys)"
    );
    let tpm_only = ctl.secret("auto", false)?;
    let auto = ctl.secret("auto", true)?;
    let manual = ctl.secret("manual", true)?;
    print!("{}", ctl.run(&["token", "list"])?);

    let tpm_port = free_port()?;
    let tpm_state = work.join("swtpm");
    std::fs::create_dir_all(&tpm_state)?;
    vendor
        .manufacture(&tpm_state)
        .map_err(|e| anyhow::anyhow!("manufacturing the demo TPM: {e}"))?;
    let swtpm = Command::new("swtpm")
        .args(["socket", "--tpm2", "--flags", "not-need-init,startup-clear"])
        .arg("--server")
        .arg(format!("type=tcp,port={tpm_port},bindaddr=127.0.0.1"))
        .arg("--ctrl")
        .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", tpm_port + 1))
        .arg("--tpmstate")
        .arg(format!("dir={}", tpm_state.display()))
        .stdout(Stdio::null())
        .spawn();
    let tpm_tcti = match swtpm {
        Ok(child) => {
            children.0.push(child);
            wait_for("swtpm", Duration::from_secs(10), || {
                std::net::TcpStream::connect(("127.0.0.1", tpm_port)).is_ok()
            })?;
            Some(format!("swtpm:host=127.0.0.1,port={tpm_port}"))
        }
        Err(e) => {
            println!("    (swtpm not available: {e}; the TPM device uses a software key)");
            None
        }
    };

    let devices = [
        (
            "shop-1",
            auto.as_str(),
            "key_storage = \"software\"".to_owned(),
        ),
        (
            "shop-2-tpm",
            tpm_only.as_str(),
            tpm_tcti.map_or("key_storage = \"software\"".into(), |t| {
                format!("key_storage = \"tpm\"\ntpm_tcti = {t:?}")
            }),
        ),
        (
            "factory-1",
            manual.as_str(),
            "key_storage = \"software\"".to_owned(),
        ),
    ];
    let mut state_dirs = Vec::new();
    for (name, token, extra) in &devices {
        let state = work.join(name);
        let config = work.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "central_endpoint = \"https://127.0.0.1:{grpc}\"\nca_cert = {:?}\nenrollment_token = {token:?}\nstate_dir = {state:?}\nserial = \"SN-{name}\"\nheartbeat_interval_ms = 2000\n{extra}\n",
                data.join("ca.crt")
            ),
        )?;
        println!("==> starting cairn-agent {name}");
        children.0.push(
            Command::new(bin.join("cairn-agent"))
                .args(["run", "--config"])
                .arg(&config)
                .stderr(std::fs::File::create(work.join(format!("{name}.log")))?)
                .spawn()
                .context("starting cairn-agent")?,
        );
        state_dirs.push((name.to_string(), state));
    }
    wait_for(
        "the auto devices to connect and the manual one to wait",
        Duration::from_secs(60),
        || {
            status_phase(&state_dirs[0].1) == "connected"
                && status_phase(&state_dirs[1].1) == "connected"
                && status_phase(&state_dirs[2].1) == "pending"
        },
    )?;
    println!("==> cairnctl device list");
    print!("{}", ctl.run(&["device", "list"])?);
    let pending_id = std::fs::read_to_string(state_dirs[2].1.join("status.json"))?
        .split("\"device_id\":")
        .nth(1)
        .and_then(|r| r.split('"').nth(1).map(str::to_owned))
        .context("pending device id")?;
    println!("==> cairnctl device approve {pending_id}");
    ctl.run(&["device", "approve", &pending_id])?;
    wait_for(
        "the approved device to connect",
        Duration::from_secs(30),
        || status_phase(&state_dirs[2].1) == "connected",
    )?;
    std::thread::sleep(Duration::from_secs(1));
    println!("==> cairnctl device list");
    print!("{}", ctl.run(&["device", "list"])?);
    boot_device_image(&ctl, &work, &data, grpc, &vendor)?;
    println!("==> cairnctl audit");
    print!("{}", ctl.run(&["audit", "--limit", "10"])?);
    println!(
        "==> demo done: every device enrolled and connected (logs in {})",
        work.display()
    );
    Ok(())
}

/// Build the fleet image for this central, boot it under QEMU (TCG, OVMF Secure Boot, swtpm)
/// and wait until the device has enrolled by itself and is online.
fn boot_device_image(
    ctl: &Ctl,
    work: &Path,
    data: &Path,
    grpc: u16,
    vendor: &cairn_testsupport::VendorCa,
) -> Result<()> {
    if std::env::var_os("CAIRN_DEMO_NO_VM").is_some() {
        println!("==> CAIRN_DEMO_NO_VM set: skipping the QEMU device");
        return Ok(());
    }
    if let Some(reason) = cairn_e2e::vm::missing_prerequisites() {
        bail!("cannot boot the device image: {reason} (run `bash dev/setup.sh`, or set CAIRN_DEMO_NO_VM=1)");
    }
    let token = work.join("fleet-token");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&token)?;
        writeln!(file, "{}", ctl.secret("auto", false)?)?;
    }
    println!("==> cairn-image build recipes/qemu-x86_64.toml (fleet settings: this central's CA and token)");
    let fleet = cairn_e2e::image::FleetFiles {
        central_url: Some(cairn_e2e::vm::GUEST_CENTRAL_URL.to_owned()),
        central_ca: Some(data.join("ca.crt")),
        token_file: Some(token),
    };
    let image = cairn_e2e::image::build_image(&work.join("image"), &fleet)?;
    // The app's images: a busybox image built here, served by a local registry that the guest
    // reaches as 10.0.2.100:5000 (the recipe lists it as a plain-HTTP registry).
    let registry = cairn_testsupport::Registry::start();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(cairn_testsupport::images::push(
            &registry.url(),
            "cairn/box",
            "1",
            &cairn_testsupport::images::busybox_image(&[]),
            None,
        ));
    let mut options = cairn_e2e::VmOptions::new(&image, &work.join("vm"));
    options.central_port = Some(grpc);
    options.vendor_ca = Some(vendor.dir().to_path_buf());
    options.registry_port = Some(registry.port());
    println!(
        "==> booting {} under QEMU (serial log {})",
        image.display(),
        work.join("vm/serial.log").display()
    );
    let started = Instant::now();
    let mut vm = cairn_e2e::Vm::boot(&options)?;
    let mut shown = 0;
    loop {
        let text = vm.serial_text();
        for line in text
            .get(shown..)
            .unwrap_or("")
            .lines()
            .filter(|l| l.contains("CAIRN-"))
        {
            println!(
                "    [{:>5.1}s] {}",
                started.elapsed().as_secs_f64(),
                line.trim()
            );
        }
        shown = text.len();
        let list = ctl.run(&["device", "list"])?;
        if let Some(line) = list.lines().find(|l| {
            l.contains(&options.serial_number) && l.contains(" active ") && l.contains(" yes ")
        }) {
            println!(
                "==> the QEMU device enrolled zero-touch after {:.0}s; cairnctl device list",
                started.elapsed().as_secs_f64()
            );
            print!("{list}");
            let device = line
                .split_whitespace()
                .next()
                .context("device id in cairnctl device list")?
                .to_owned();
            return run_demo_app(ctl, work, &device, &mut vm);
        }
        if vm.exited() || started.elapsed() > Duration::from_secs(900) {
            bail!(
                "the QEMU device did not enroll; last console lines:\n{}",
                vm.serial_tail()
            );
        }
        std::thread::sleep(Duration::from_secs(3));
    }
}

/// Deploy the two-service demo app onto the QEMU device with cairnctl and wait until central
/// reports it running and healthy.
fn run_demo_app(ctl: &Ctl, work: &Path, device: &str, vm: &mut cairn_e2e::Vm) -> Result<()> {
    let compose = work.join("demo.yml");
    std::fs::write(&compose, cairn_e2e::demo_app("hello-from-the-demo"))?;
    println!(
        "==> cairnctl app deploy -f {} --device {device}",
        compose.display()
    );
    print!(
        "{}",
        ctl.run(&[
            "app",
            "deploy",
            "-f",
            &compose.to_string_lossy(),
            "--device",
            device
        ])?
    );
    let started = Instant::now();
    loop {
        let table = ctl.run(&["app", "list", "--device", device])?;
        // Columns: APP GEN SEEN SERVICE STATE HEALTH ...
        let row = |service: &str| -> Vec<String> {
            table
                .lines()
                .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
                .find(|cols| cols.get(3).map(String::as_str) == Some(service))
                .unwrap_or_default()
        };
        let healthy = row("client").get(5).map(String::as_str) == Some("healthy");
        let web_up = row("web").get(4).map(String::as_str) == Some("running");
        if healthy && web_up {
            println!(
                "==> the app runs on the device ({:.0}s after deploy); cairnctl app list",
                started.elapsed().as_secs_f64()
            );
            print!("{table}");
            return Ok(());
        }
        if vm.exited() || started.elapsed() > Duration::from_secs(300) {
            bail!("the demo app did not become healthy; cairnctl app list:\n{table}");
        }
        std::thread::sleep(Duration::from_secs(3));
    }
}
