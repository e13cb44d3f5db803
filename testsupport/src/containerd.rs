//! A real containerd (with runc) for host integration tests: its own config, root, state, socket
//! and runc root under a temp dir, so it never touches a system containerd.

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cairn_io::Tool;
use rustix::process::{kill_process, Pid, Signal};

/// How long to wait for a started containerd to serve its socket.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long containerd gets to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one `ctr` clean-up command may take.
const CTR_TIMEOUT: Duration = Duration::from_secs(15);

/// A running `containerd` (Debian's 1.6, runc shim v2, overlayfs) whose config, root, state,
/// gRPC socket and runc root live in a temp dir. Must run as root.
///
/// On drop every task left in any namespace is killed and deleted, containerd is stopped,
/// leftover shims are killed, mounts under the temp dir are detached and the dir is removed.
pub struct Containerd {
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Containerd {
    /// True when a containerd can be started here: `containerd`, `containerd-shim-runc-v2`,
    /// `runc` and `ctr` are on `PATH` and this process is root. Otherwise a loud `SKIP` (and
    /// `false`), or a panic under `CI=true`, like [`crate::require_tool`].
    ///
    /// # Panics
    /// Under `CI=true` when something is missing.
    pub fn can_run() -> bool {
        let tools = ["containerd", "containerd-shim-runc-v2", "runc", "ctr"];
        if !tools.iter().all(|t| crate::require_tool(t)) {
            return false;
        }
        let root = std::fs::read_to_string("/proc/self/status")
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .is_some_and(|l| l.split_whitespace().nth(2) == Some("0"));
        if root {
            return true;
        }
        if std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true")) {
            panic!("containerd tests must run as root in CI");
        }
        eprintln!("\n======== SKIP: containerd needs root; this test did NOT run. Run the tests as root. ========\n");
        false
    }

    /// Start a fresh containerd.
    ///
    /// # Panics
    /// When not root, when containerd is not installed, or when it does not serve its socket in
    /// time; the message carries containerd's log. Call [`Containerd::can_run`] first to skip
    /// where it cannot run.
    pub fn start() -> Containerd {
        let dir = tempfile::Builder::new()
            .prefix("cairn-containerd-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temp dir for containerd: {e}"));
        let mut containerd = Containerd { child: None, dir };
        containerd.write_config();
        containerd.launch();
        containerd
    }

    /// The gRPC unix socket to connect clients to.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    /// containerd's persistent root (content store, snapshots, metadata).
    pub fn root_dir(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// A runc state root private to this instance; pass it as the runc `root` runtime option so
    /// container ids never clash with another containerd on the host.
    pub fn runc_root(&self) -> PathBuf {
        self.dir.path().join("runc")
    }

    /// A scratch directory inside this instance's temp dir, removed on drop (for a data dir).
    pub fn scratch_dir(&self, name: &str) -> PathBuf {
        let path = self.dir.path().join("scratch").join(name);
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        path
    }

    /// containerd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// Stop containerd (SIGKILL, like a crash; shims and containers keep running) and start it
    /// again on the same root, state and socket. Clients reconnect on their next call.
    ///
    /// # Panics
    /// Like [`Containerd::start`].
    pub fn restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(self.socket());
        self.launch();
    }

    fn write_config(&self) {
        let d = self.dir.path().display();
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.internal.v1.restart",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "{d}/containerd.sock"

[ttrpc]
  address = "{d}/containerd.sock.ttrpc"

[debug]
  level = "info"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
"#
        );
        let path = self.dir.path().join("config.toml");
        std::fs::write(&path, config)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }

    fn launch(&mut self) {
        let log_path = self.dir.path().join("containerd.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", log_path.display()));
        let log_err = log
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot clone the log handle: {e}"));
        let mut child = Command::new("containerd")
            .arg("--config")
            .arg(self.dir.path().join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run `containerd` (is the containerd package installed?): {e}")
            });
        let socket = self.socket();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "containerd exited early with {status} (it must run as root)\ncontainerd log ({}):\n{}",
                    log_path.display(),
                    self.log()
                );
            }
            if UnixStream::connect(&socket).is_ok() {
                self.child = Some(child);
                return;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "containerd did not serve {} within {START_TIMEOUT:?}\ncontainerd log:\n{}",
                    socket.display(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kill and delete every task in every namespace (through containerd, so runc and the
    /// shims clean up cgroups and mounts).
    fn remove_all_tasks(&self) {
        let socket = self.socket();
        let ctr = |args: &[&str]| {
            let out = Tool::new("ctr")
                .arg("--address")
                .arg(&socket)
                .args(args)
                .timeout(CTR_TIMEOUT)
                .run();
            out.ok().map(|out| out.stdout_text())
        };
        let Some(namespaces) = ctr(&["namespaces", "ls", "-q"]) else {
            return;
        };
        for ns in namespaces.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let Some(tasks) = ctr(&["-n", ns, "tasks", "ls", "-q"]) else {
                continue;
            };
            for task in tasks.lines().map(str::trim).filter(|l| !l.is_empty()) {
                let _ = ctr(&["-n", ns, "tasks", "kill", "-a", "-s", "SIGKILL", task]);
                let _ = ctr(&["-n", ns, "tasks", "delete", "-f", task]);
            }
        }
    }

    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        signal(child.id(), Signal::TERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Kill shim processes still serving this instance (started with `-address <our socket>`).
    fn kill_leftover_shims(&self) {
        let needle = self.socket().display().to_string();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return;
        };
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains("containerd-shim") && cmdline.contains(&needle) {
                signal(pid, Signal::KILL);
            }
        }
    }

    /// Lazily unmount everything mounted below the temp dir, deepest first.
    fn unmount_all(&self) {
        let prefix = self.dir.path().display().to_string();
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<&str> = mountinfo
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|p| p.starts_with(&prefix))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for point in points {
            let _ = rustix::mount::unmount(point, rustix::mount::UnmountFlags::DETACH);
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.remove_all_tasks();
        }
        self.stop();
        self.kill_leftover_shims();
        self.unmount_all();
    }
}

/// Send `signal` to process `pid`, if it still exists.
fn signal(pid: u32, signal: Signal) {
    if let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
        let _ = kill_process(pid, signal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_restarts_and_cleans_up() {
        if !Containerd::can_run() {
            return;
        }
        let mut containerd = Containerd::start();
        let socket = containerd.socket();
        let version = Command::new("ctr")
            .arg("--address")
            .arg(&socket)
            .arg("version")
            .output()
            .unwrap();
        assert!(version.status.success(), "{}", containerd.log());
        containerd.restart();
        assert!(UnixStream::connect(&socket).is_ok());
        let root = containerd.root_dir();
        drop(containerd);
        assert!(!root.exists(), "the temp dir should be removed on drop");
    }
}
