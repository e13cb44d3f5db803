//! A real OCI/Docker registry (Debian's `docker-registry`, distribution 2.8) on a free loopback
//! port for host integration tests, with its own config and storage dir.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use cairn_io::{FileError, PathContext};

use crate::ports::free_port;

/// How long to wait for a started registry to answer `GET /v2/`.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How many ports to try when another process takes the one we picked.
const START_ATTEMPTS: usize = 5;

/// Why one attempt to start the registry failed ([`Registry`] retries on another port).
#[derive(Debug, thiserror::Error)]
enum StartError {
    /// Its log file could not be created.
    #[error(transparent)]
    Log(#[from] FileError),
    /// The log file handle could not be cloned for stderr.
    #[error("cannot clone a file handle: {0}")]
    CloneLog(#[source] std::io::Error),
    /// docker-registry could not be run.
    #[error("cannot run `docker-registry` (is the docker-registry package installed?): {0}")]
    Spawn(#[source] std::io::Error),
    /// It exited before it answered.
    #[error("docker-registry on port {port} exited early with {status}\nlog:\n{log}")]
    ExitedEarly {
        /// Its port.
        port: u16,
        /// How it ended.
        status: ExitStatus,
        /// Its log.
        log: String,
    },
    /// It did not answer in time (it was killed).
    #[error("docker-registry on port {port} did not answer GET /v2/ with {expected} within {START_TIMEOUT:?}\nlog:\n{log}")]
    NotAnswering {
        /// Its port.
        port: u16,
        /// The status it should answer with.
        expected: &'static str,
        /// Its log.
        log: String,
    },
}

/// A running `docker-registry serve` on `127.0.0.1:<free port>`, plain HTTP, storage in a temp
/// dir, deletes enabled. Optionally requires HTTP basic auth (htpasswd), and optionally serves
/// HTTPS with a certificate from its own private CA. Killed on drop.
pub struct Registry {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    /// The private CA's certificate (PEM) when it serves HTTPS.
    ca_pem: Option<String>,
}

/// How a registry is started.
#[derive(Clone, Copy)]
struct Setup<'a> {
    auth: Option<(&'a str, &'a str)>,
    tls: bool,
}

impl Registry {
    /// Start an open registry (no auth).
    ///
    /// # Panics
    /// When docker-registry is not installed or does not come up; the message carries its log.
    /// Call [`crate::require_tool`]`("docker-registry")` first to skip where it cannot run.
    pub fn start() -> Registry {
        Self::launch(Setup {
            auth: None,
            tls: false,
        })
    }

    /// Start a registry that requires HTTP basic auth with `user` and `password`.
    ///
    /// # Panics
    /// Like [`Registry::start`].
    pub fn start_with_basic_auth(user: &str, password: &str) -> Registry {
        Self::launch(Setup {
            auth: Some((user, password)),
            tls: false,
        })
    }

    /// Start a registry that serves HTTPS only, with a certificate for `127.0.0.1` issued by
    /// a private CA made for it ([`Registry::ca_pem`]), and requires basic auth.
    ///
    /// # Panics
    /// Like [`Registry::start`].
    #[cfg(feature = "images")]
    pub fn start_tls_with_basic_auth(user: &str, password: &str) -> Registry {
        Self::launch(Setup {
            auth: Some((user, password)),
            tls: true,
        })
    }

    /// The private CA's certificate (PEM) of an HTTPS registry.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// `host:port` to use in image references, e.g. `127.0.0.1:41234`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The loopback port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Base URL, e.g. `http://127.0.0.1:41234` (`https://` when it serves HTTPS).
    pub fn url(&self) -> String {
        let scheme = if self.ca_pem.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.host())
    }

    /// The registry's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    fn launch(setup: Setup<'_>) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("cairn-registry-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temp dir for the registry: {e}"));
        let ca_pem = setup.tls.then(|| write_tls_files(dir.path()));
        if let Some((user, password)) = setup.auth {
            let hash = bcrypt::hash(password, 4)
                .unwrap_or_else(|e| panic!("cannot bcrypt the registry password: {e}"));
            let path = dir.path().join("htpasswd");
            std::fs::write(&path, format!("{user}:{hash}\n"))
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        }
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            match spawn_and_wait(dir.path(), port, setup) {
                Ok(child) => {
                    return Registry {
                        child: Some(child),
                        port,
                        dir,
                        ca_pem,
                    }
                }
                Err(why) => failures.push(why.to_string()),
            }
        }
        panic!(
            "docker-registry did not start after {START_ATTEMPTS} attempts:\n{}",
            failures.join("\n---\n")
        );
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A private CA and a certificate for `127.0.0.1` it issued, written as `tls.crt` (leaf, then
/// CA) and `tls.key` in `dir`; returns the CA's certificate (PEM).
#[cfg(feature = "images")]
fn write_tls_files(dir: &Path) -> String {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let fail = |e: rcgen::Error| -> ! { panic!("cannot make the registry's test CA: {e}") };
    let ca_key = KeyPair::generate().unwrap_or_else(|e| fail(e));
    let mut ca_params = CertificateParams::new(Vec::new()).unwrap_or_else(|e| fail(e));
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "cairn test registry CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap_or_else(|e| fail(e));
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap_or_else(|e| fail(e));
    let params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap_or_else(|e| fail(e));
    let cert = params.signed_by(&key, &issuer).unwrap_or_else(|e| fail(e));
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    };
    write("tls.crt", format!("{}{}", cert.pem(), ca_cert.pem()));
    write("tls.key", key.serialize_pem());
    ca_cert.pem()
}

#[cfg(not(feature = "images"))]
fn write_tls_files(_dir: &Path) -> String {
    unreachable!("HTTPS registries are started only with the `images` feature")
}

fn write_config(dir: &Path, port: u16, setup: Setup<'_>) -> std::path::PathBuf {
    let d = dir.display();
    let auth = if setup.auth.is_some() {
        format!("auth:\n  htpasswd:\n    realm: cairn-test\n    path: {d}/htpasswd\n")
    } else {
        String::new()
    };
    let tls = if setup.tls {
        format!("  tls:\n    certificate: {d}/tls.crt\n    key: {d}/tls.key\n")
    } else {
        String::new()
    };
    let config = format!(
        "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {d}/data\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{tls}{auth}"
    );
    let path = dir.join("config.yml");
    std::fs::write(&path, config)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    path
}

/// Spawn the registry on `port` and wait until `GET /v2/` answers (200, or 401 with auth; an
/// HTTPS registry answers a plain request with 400).
fn spawn_and_wait(dir: &Path, port: u16, setup: Setup<'_>) -> Result<Child, StartError> {
    let config = write_config(dir, port, setup);
    let log_path = dir.join("registry.log");
    let log = std::fs::File::create(&log_path).at("create", &log_path)?;
    let log_err = log.try_clone().map_err(StartError::CloneLog)?;
    let mut child = Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .map_err(StartError::Spawn)?;
    let deadline = Instant::now() + START_TIMEOUT;
    let expected = match setup {
        Setup { tls: true, .. } => "400",
        Setup { auth: Some(_), .. } => "401",
        Setup { .. } => "200",
    };
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(StartError::ExitedEarly {
                port,
                status,
                log: std::fs::read_to_string(&log_path).unwrap_or_default(),
            });
        }
        if let Some(status) = get_v2_status(port) {
            if status == expected {
                return Ok(child);
            }
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(StartError::NotAnswering {
                port,
                expected,
                log: std::fs::read_to_string(&log_path).unwrap_or_default(),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The status code of `GET /v2/`, if the registry answers at all.
fn get_v2_status(port: u16) -> Option<String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .write_all(b"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    let text = String::from_utf8_lossy(&head);
    text.split(' ').nth(1).map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_v2_and_stops() {
        if !crate::require_tool("docker-registry") {
            return;
        }
        let registry = Registry::start();
        let port = registry.port;
        assert_eq!(
            get_v2_status(port).as_deref(),
            Some("200"),
            "{}",
            registry.log()
        );
        drop(registry);
        assert!(get_v2_status(port).is_none());
    }

    #[test]
    fn basic_auth_is_enforced() {
        if !crate::require_tool("docker-registry") {
            return;
        }
        let registry = Registry::start_with_basic_auth("cairn", "s3cret");
        assert_eq!(get_v2_status(registry.port).as_deref(), Some("401"));
    }
}
