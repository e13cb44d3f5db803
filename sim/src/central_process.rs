//! cairn-central as its own process (`cairn-central serve`), so its memory and CPU are its own.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Why central could not be run or read.
#[derive(Debug, thiserror::Error)]
pub enum CentralError {
    /// A file could not be written or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O failure.
        source: std::io::Error,
    },
    /// The binary did not start.
    #[error(
        "could not start {bin}: {source}; build it with `cargo build --release -p cairn-central`"
    )]
    Spawn {
        /// The binary.
        bin: PathBuf,
        /// The I/O failure.
        source: std::io::Error,
    },
    /// It started but never became ready.
    #[error("cairn-central did not become ready in {0:?}; see {1}")]
    NotReady(Duration, PathBuf),
}

/// A running `cairn-central serve`.
pub struct CentralProcess {
    child: Child,
    /// The binary, its config file (which names the ports), its log and data directory: what
    /// [`CentralProcess::restart`] starts it again with.
    bin: PathBuf,
    config_path: PathBuf,
    log_path: PathBuf,
    data_dir: PathBuf,
    /// Agent gRPC address.
    pub grpc: SocketAddr,
    /// Operator REST address.
    pub rest: SocketAddr,
    /// Fleet CA, PEM.
    pub ca_pem: String,
    /// Bootstrap admin API token.
    pub admin_token: String,
}

/// Write `text` to `path` with mode 0600 from the first byte on (through a fresh temporary
/// file renamed over it, so an older file's wider mode is not inherited).
fn write_private(path: &Path, text: &str) -> Result<(), std::io::Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("toml.tmp");
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Start `bin serve --config config_path`, its stderr appended to `log_path`.
fn spawn(bin: &Path, config_path: &Path, log_path: &Path) -> Result<Child, CentralError> {
    let log = std::fs::OpenOptions::new()
        .append(true)
        .open(log_path)
        .map_err(|source| CentralError::Io {
            path: log_path.to_owned(),
            source,
        })?;
    let mut command = Command::new(bin);
    command
        .args(["serve", "--config"])
        .arg(config_path)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    cairn_io::die_with_parent(&mut command);
    command.spawn().map_err(|source| CentralError::Spawn {
        bin: bin.to_owned(),
        source,
    })
}

fn free_port() -> Result<SocketAddr, std::io::Error> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

impl CentralProcess {
    /// Start `bin serve` on loopback with its data under `dir/central` and its log in
    /// `dir/central.log`; returns once REST answers. With `database_url` (a PostgreSQL URL)
    /// the registry lives there instead of in `dir/central/registry.sqlite3`; the config file
    /// `dir/central.toml` is then written with mode 0600, as it holds the password.
    pub async fn start(
        bin: &Path,
        dir: &Path,
        database_url: Option<&str>,
    ) -> Result<Self, CentralError> {
        Self::start_named(bin, dir, "central", &dir.join("central"), database_url).await
    }

    /// Start replica `index` of several on one PostgreSQL database (`database_url`) sharing
    /// one data directory `dir/central` (CA key, escrow key, admin token, bundles): config
    /// `dir/central-<index>.toml`, log `dir/central-<index>.log`, its own ports. Start replica
    /// 0 first and the others once it is ready (it writes the CA and admin token they read).
    pub async fn start_replica(
        bin: &Path,
        dir: &Path,
        index: usize,
        database_url: &str,
    ) -> Result<Self, CentralError> {
        Self::start_named(
            bin,
            dir,
            &format!("central-{index}"),
            &dir.join("central"),
            Some(database_url),
        )
        .await
    }

    async fn start_named(
        bin: &Path,
        dir: &Path,
        name: &str,
        data_dir: &Path,
        database_url: Option<&str>,
    ) -> Result<Self, CentralError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| CentralError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let grpc = free_port().map_err(io(dir))?;
        let rest = free_port().map_err(io(dir))?;
        let data_dir = data_dir.to_owned();
        let config_path = dir.join(format!("{name}.toml"));
        // Every simulated device enrolls and connects from this host: no per-source enrollment
        // limit or connection cap. They have software keys, so they get secrets only when
        // central releases them unattested.
        let mut config = format!(
            "data_dir = {:?}\ngrpc_listen = \"{grpc}\"\nrest_listen = \"{rest}\"\n\
             enroll_attempts_per_source_per_minute = 0\n\
             grpc_connections_per_source = 0\n\
             release_secrets_to_unattested = true\n",
            data_dir.display().to_string()
        );
        if let Some(url) = database_url {
            // A TOML basic string: Rust's escaping of `"` and `\` is TOML's (the URL was checked
            // for control characters).
            config += &format!("database_url = {url:?}\n");
        }
        write_private(&config_path, &config).map_err(io(&config_path))?;
        let log_path = dir.join(format!("{name}.log"));
        std::fs::File::create(&log_path).map_err(io(&log_path))?;
        let mut process = Self {
            child: spawn(bin, &config_path, &log_path)?,
            bin: bin.to_owned(),
            config_path,
            log_path,
            data_dir,
            grpc,
            rest,
            ca_pem: String::new(),
            admin_token: String::new(),
        };
        process.wait_ready().await?;
        Ok(process)
    }

    /// Begin stopping it: SIGTERM as a service manager would (it ends every stream with a
    /// retry-after), or SIGKILL as a power cut would. [`CentralProcess::start_again`] waits
    /// for the exit; stopping every replica first and then starting them stops them at once.
    pub fn begin_stop(&mut self, crash: bool) {
        let signal = if crash {
            rustix::process::Signal::KILL
        } else {
            rustix::process::Signal::TERM
        };
        if let Some(pid) = i32::try_from(self.child.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process(pid, signal);
        }
    }

    /// Wait for it to exit (SIGKILL after 30 s), start it again on the same ports and data,
    /// and return once REST answers.
    pub async fn start_again(&mut self) -> Result<(), CentralError> {
        let started = Instant::now();
        while self.child.try_wait().ok().flatten().is_none() {
            if started.elapsed() > Duration::from_secs(30) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.child = spawn(&self.bin, &self.config_path, &self.log_path)?;
        self.wait_ready().await
    }

    /// Wait until REST answers with the CA and admin token of its data directory.
    async fn wait_ready(&mut self) -> Result<(), CentralError> {
        let (rest, data_dir) = (self.rest, self.data_dir.clone());
        let process = self;
        let started = Instant::now();
        let limit = Duration::from_secs(60);
        loop {
            if started.elapsed() > limit || process.child.try_wait().ok().flatten().is_some() {
                return Err(CentralError::NotReady(limit, process.log_path.clone()));
            }
            let ca = std::fs::read_to_string(data_dir.join("ca.crt"));
            let admin = std::fs::read_to_string(data_dir.join("admin.token"));
            if let (Ok(ca), Ok(admin)) = (ca, admin) {
                process.ca_pem = ca;
                process.admin_token = admin.trim().to_owned();
                if let Ok(operator) =
                    crate::rest::Operator::new(rest, &process.ca_pem, &process.admin_token)
                {
                    if operator.healthy().await {
                        return Ok(());
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident and peak resident memory, bytes (`VmRSS`, `VmHWM` of /proc/<pid>/status).
    pub fn memory(&self) -> (u64, u64) {
        memory_of(&format!("/proc/{}/status", self.pid()))
    }

    /// CPU time used so far (user + system), seconds.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds_of(&format!("/proc/{}/stat", self.pid()))
    }

    /// SIGTERM, then SIGKILL after 10 s.
    pub fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        if let Some(pid) = i32::try_from(self.child.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for CentralProcess {
    /// A central not stopped (an error or an interrupted run) is stopped here, so none is left
    /// running.
    fn drop(&mut self) {
        self.terminate();
    }
}

/// `VmRSS` and `VmHWM` of a /proc/<pid>/status file, bytes (0 when unreadable).
pub fn memory_of(status_path: &str) -> (u64, u64) {
    let text = std::fs::read_to_string(status_path).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// User + system CPU seconds of a /proc/<pid>/stat file (0 when unreadable).
pub fn cpu_seconds_of(stat_path: &str) -> f64 {
    let text = std::fs::read_to_string(stat_path).unwrap_or_default();
    let Some((_, rest)) = text.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command name: state is field 3, utime 14, stime 15 (1-based in proc(5)).
    let ticks = |i: usize| {
        fields
            .get(i - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let hz = rustix::param::clock_ticks_per_second().max(1) as f64;
    (ticks(14) + ticks(15)) as f64 / hz
}
