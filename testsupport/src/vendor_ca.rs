//! A local TPM vendor CA (`swtpm_localca`) that signs the EK certificates of test TPMs, as a TPM
//! maker signs the EK certificate it writes into a real TPM's NV.
//!
//! Layout of a CA directory:
//!
//! ```text
//! localca.conf, localca.options, swtpm_setup.conf   generated configuration
//! ca/swtpm-localca-rootca-cert.pem                  the root certificate (self-signed)
//! ca/issuercert.pem                                 the intermediate that signs EK certificates
//! ca/signkey.pem, ca/certserial, ...                swtpm_localca's own state
//! ```

use std::path::{Path, PathBuf};

use cairn_io::Tool;
use rustix::fs::{flock, FlockOperation};

use crate::tools::find_on_path;

/// The root certificate `swtpm_localca` creates in its state directory on first use.
const ROOT_CERT: &str = "swtpm-localca-rootca-cert.pem";
/// The intermediate ("issuer") certificate that signs EK certificates.
const ISSUER_CERT: &str = "issuercert.pem";
/// Serializes CA creation between threads and processes using the same directory.
const LOCK_FILE: &str = ".cairn-vendor-ca.lock";
/// How long `swtpm_setup` may take to manufacture a TPM (it takes about a second).
const SETUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
/// A syntactically valid RSA-2048 modulus: the throwaway EK certificate that makes
/// `swtpm_localca` create its root and issuer now, before any TPM is made.
const THROWAWAY_EK_MODULUS: &str = concat!(
    "c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5",
    "c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5",
    "c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5",
    "c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5",
    "c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5",
    "c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5",
    "c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5",
    "c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c501",
);

/// Why a vendor CA could not be set up.
#[derive(Debug, thiserror::Error)]
enum VendorCaError {
    /// A directory or file of the CA could not be made.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A configuration file could not be written.
    #[error("cannot write the vendor CA configuration: {0}")]
    Write(#[source] cairn_io::FileError),
    /// `swtpm_localca` is not installed.
    #[error("`swtpm_localca` is not on PATH; install the swtpm-tools package")]
    NoLocalCa,
    /// `swtpm_localca` failed.
    #[error("swtpm_localca could not create the CA in {dir}: {source}")]
    LocalCa {
        /// The CA directory.
        dir: PathBuf,
        /// The failure, with swtpm_localca's output.
        #[source]
        source: Box<cairn_io::ToolError>,
    },
    /// `swtpm_localca` ran but left no root or issuer certificate.
    #[error("swtpm_localca ran but {path} does not exist; its output:\n{output}")]
    Missing {
        /// The missing certificate.
        path: PathBuf,
        /// What swtpm_localca printed.
        output: String,
    },
}

/// A TPM vendor's CA for tests: a root and an intermediate ("issuer") made by `swtpm_localca`,
/// which signs the EK certificate of each TPM started with [`crate::Swtpm::start_with_ek_cert`].
///
/// Each directory is its own CA (fresh keys), so a second `VendorCa` in another directory is an
/// "untrusted vendor" whose certificates the first CA's anchors do not verify. The CA is created
/// under a file lock: threads or processes opening the same directory at once get one CA.
pub struct VendorCa {
    dir: PathBuf,
    _owned: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for VendorCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VendorCa").field("dir", &self.dir).finish()
    }
}

impl VendorCa {
    /// The CA kept in `dir`: created now (about half a second) when `dir` holds none, reused
    /// otherwise. The directory is kept on drop.
    ///
    /// # Panics
    /// When `swtpm_localca` is missing or fails, or the directory cannot be written; the message
    /// carries swtpm_localca's output. Call [`crate::require_tool`]`("swtpm_localca")` first to
    /// skip.
    pub fn new(dir: impl AsRef<Path>) -> VendorCa {
        let dir = dir.as_ref().to_path_buf();
        if let Err(e) = set_up(&dir) {
            panic!(
                "cannot set up the test TPM vendor CA in {}: {e}",
                dir.display()
            );
        }
        VendorCa { dir, _owned: None }
    }

    /// A new CA in a temp dir that is removed on drop.
    ///
    /// # Panics
    /// Like [`VendorCa::new`].
    pub fn temporary() -> VendorCa {
        let owned = tempfile::Builder::new()
            .prefix("cairn-vendor-ca-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temp dir for the vendor CA: {e}"));
        let mut ca = VendorCa::new(owned.path());
        ca._owned = Some(owned);
        ca
    }

    /// The CA's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The `swtpm_setup` configuration that has EK certificates signed by this CA.
    pub fn swtpm_setup_conf(&self) -> PathBuf {
        self.dir.join("swtpm_setup.conf")
    }

    /// The issuer (intermediate) certificate that signs EK certificates, PEM.
    pub fn issuer_cert_pem_path(&self) -> PathBuf {
        self.dir.join("ca").join(ISSUER_CERT)
    }

    /// The self-signed root certificate above the issuer, PEM.
    pub fn root_cert_pem_path(&self) -> PathBuf {
        self.dir.join("ca").join(ROOT_CERT)
    }

    /// The trust anchors a verifier needs for EK certificates of this vendor: the issuer
    /// certificate, then the root.
    pub fn anchor_pem_paths(&self) -> Vec<PathBuf> {
        vec![self.issuer_cert_pem_path(), self.root_cert_pem_path()]
    }

    /// The files of [`VendorCa::anchor_pem_paths`] concatenated: two PEM certificates.
    ///
    /// # Panics
    /// When a certificate cannot be read (the directory was removed meanwhile).
    pub fn anchors_pem(&self) -> Vec<u8> {
        let mut pem = Vec::new();
        for path in self.anchor_pem_paths() {
            let bytes = std::fs::read(&path).unwrap_or_else(|e| {
                panic!("cannot read vendor CA certificate {}: {e}", path.display())
            });
            pem.extend_from_slice(&bytes);
            if !pem.ends_with(b"\n") {
                pem.push(b'\n');
            }
        }
        pem
    }

    /// Manufacture a TPM in the swtpm state directory `dir` with `swtpm_setup`: new seeds, the
    /// EKs, and their certificates from this CA written to NV (RSA 2048 at 0x01c00002), as a
    /// TPM maker does. Overwrites any TPM state in `dir`.
    ///
    /// # Errors
    /// `swtpm_setup` could not run or failed (the error carries its output).
    pub fn manufacture(&self, dir: &Path) -> Result<(), Box<cairn_io::ToolError>> {
        Tool::new("swtpm_setup")
            .purpose("manufacture a test TPM with EK certificates")
            .install_hint("install the swtpm-tools package")
            .args(["--tpm2", "--tpmstate"])
            .arg(dir)
            .args(["--create-ek-cert", "--config"])
            .arg(self.swtpm_setup_conf())
            .arg("--overwrite")
            .timeout(SETUP_TIMEOUT)
            .run()
            .map(drop)
            .map_err(Box::new)
    }
}

/// Write the configuration and, under the lock, create the CA when `dir` has none yet.
fn set_up(dir: &Path) -> Result<(), VendorCaError> {
    let state = dir.join("ca");
    std::fs::create_dir_all(&state).map_err(|source| VendorCaError::Io {
        action: "create the CA directory",
        path: state.clone(),
        source,
    })?;
    let lock_path = dir.join(LOCK_FILE);
    let lock = std::fs::File::create(&lock_path).map_err(|source| VendorCaError::Io {
        action: "create the lock file",
        path: lock_path.clone(),
        source,
    })?;
    flock(&lock, FlockOperation::LockExclusive).map_err(|e| VendorCaError::Io {
        action: "lock",
        path: lock_path,
        source: e.into(),
    })?;
    // The lock is released when `lock` is dropped at the end of this function.
    let localca = find_on_path("swtpm_localca").ok_or(VendorCaError::NoLocalCa)?;
    write_config(dir, &localca)?;
    let root = state.join(ROOT_CERT);
    let issuer = state.join(ISSUER_CERT);
    if root.exists() && issuer.exists() {
        return Ok(());
    }
    let output = create_ca(dir, &localca)?;
    for path in [root, issuer] {
        if !path.exists() {
            return Err(VendorCaError::Missing { path, output });
        }
    }
    Ok(())
}

/// The three configuration files; every path in them is inside `dir`.
fn write_config(dir: &Path, localca: &Path) -> Result<(), VendorCaError> {
    let state = dir.join("ca");
    let localca_conf = format!(
        "statedir = {state}\nsigningkey = {state}/signkey.pem\nissuercert = {state}/{ISSUER_CERT}\ncertserial = {state}/certserial\n",
        state = state.display()
    );
    // Only platform certificates use these; written here so nothing depends on /etc.
    let localca_options =
        "--platform-manufacturer Cairn\n--platform-version 2.1\n--platform-model swtpm\n";
    let setup_conf = format!(
        "create_certs_tool = {tool}\ncreate_certs_tool_config = {conf}\ncreate_certs_tool_options = {options}\nactive_pcr_banks = sha256\n",
        tool = localca.display(),
        conf = dir.join("localca.conf").display(),
        options = dir.join("localca.options").display(),
    );
    for (name, text) in [
        ("localca.conf", localca_conf),
        ("localca.options", localca_options.to_string()),
        ("swtpm_setup.conf", setup_conf),
    ] {
        cairn_io::write_atomic(&dir.join(name), text.as_bytes(), 0o644)
            .map_err(VendorCaError::Write)?;
    }
    Ok(())
}

/// Have `swtpm_localca` sign a throwaway EK: on first use it creates its root and issuer.
/// Returns what it printed.
fn create_ca(dir: &Path, localca: &Path) -> Result<String, VendorCaError> {
    let out = tempfile::tempdir_in(dir).map_err(|source| VendorCaError::Io {
        action: "create a temp dir in",
        path: dir.to_path_buf(),
        source,
    })?;
    let output = Tool::new(localca)
        .purpose("create a test TPM vendor CA")
        .args(["--type", "ek", "--ek", THROWAWAY_EK_MODULUS, "--dir"])
        .arg(out.path())
        .args(["--tpm2", "--configfile"])
        .arg(dir.join("localca.conf"))
        .arg("--optsfile")
        .arg(dir.join("localca.options"))
        .args(["--tpm-spec-family", "2.0", "--tpm-spec-level", "0"])
        .args([
            "--tpm-spec-revision",
            "164",
            "--tpm-manufacturer",
            "id:00001014",
        ])
        .args(["--tpm-model", "swtpm", "--tpm-version", "id:20191023"])
        .timeout(std::time::Duration::from_secs(60))
        .run()
        .map_err(|source| VendorCaError::LocalCa {
            dir: dir.to_path_buf(),
            source: Box::new(source),
        })?;
    Ok(format!("{}{}", output.stdout_text(), output.stderr))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pem_certificates(pem: &[u8]) -> usize {
        String::from_utf8_lossy(pem)
            .matches("-----BEGIN CERTIFICATE-----")
            .count()
    }

    #[test]
    fn creates_a_root_and_an_issuer_and_reuses_them() {
        if !crate::require_tool("swtpm_localca") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let ca = VendorCa::new(dir.path());
        let anchors = ca.anchors_pem();
        assert_eq!(pem_certificates(&anchors), 2, "issuer and root");
        assert_ne!(
            std::fs::read(ca.issuer_cert_pem_path()).unwrap(),
            std::fs::read(ca.root_cert_pem_path()).unwrap()
        );
        let setup_conf = std::fs::read_to_string(ca.swtpm_setup_conf()).unwrap();
        assert!(
            setup_conf.contains("active_pcr_banks = sha256"),
            "{setup_conf}"
        );
        drop(ca);
        assert_eq!(VendorCa::new(dir.path()).anchors_pem(), anchors, "same CA");
    }

    #[test]
    fn each_directory_is_a_different_ca() {
        if !crate::require_tool("swtpm_localca") {
            return;
        }
        let a = VendorCa::temporary();
        let b = VendorCa::temporary();
        assert_ne!(a.anchors_pem(), b.anchors_pem());
        let dir = a.dir().to_path_buf();
        drop(a);
        assert!(!dir.exists(), "a temporary CA is removed on drop");
    }

    #[test]
    fn concurrent_openers_of_one_directory_get_one_ca() {
        if !crate::require_tool("swtpm_localca") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let anchors: Vec<Vec<u8>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|_| scope.spawn(|| VendorCa::new(dir.path()).anchors_pem()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(pem_certificates(&anchors[0]), 2);
        assert!(anchors.iter().all(|a| a == &anchors[0]), "one CA");
    }
}
