//! Test fleet keys: `cairn-image keys --out DIR` makes the update signing key and certificate
//! (RAUC bundles) with openssl. The certificate is self-signed with the codeSigning extended key
//! usage; devices trust it as their RAUC keyring (`check-purpose=codesign`).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use cairn_io::{FileError, PathContext};

use crate::tool::{tool, ToolError};

/// File name of the update signing key in a keys directory.
pub const UPDATE_KEY: &str = "update.key.pem";
/// File name of the update certificate in a keys directory.
pub const UPDATE_CERT: &str = "update.cert.pem";

/// Keys could not be made.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// openssl failed.
    #[error(transparent)]
    Tool(#[from] ToolError),
    /// The directory could not be prepared.
    #[error(transparent)]
    File(#[from] FileError),
    /// Keys are already there.
    #[error("{path} already exists: refusing to overwrite a key (remove it first)")]
    Exists {
        /// The existing file.
        path: PathBuf,
    },
}

/// Paths of a fleet's update key pair.
#[derive(Debug, Clone)]
pub struct UpdateKeys {
    /// Private key (PEM, mode 0600).
    pub key: PathBuf,
    /// Certificate (PEM).
    pub cert: PathBuf,
}

impl UpdateKeys {
    /// The key pair in `dir` (as written by [`generate`]).
    pub fn in_dir(dir: &Path) -> UpdateKeys {
        UpdateKeys {
            key: dir.join(UPDATE_KEY),
            cert: dir.join(UPDATE_CERT),
        }
    }
}

/// Generate an RSA-3072 update key and a 10-year self-signed codeSigning certificate in `dir`.
///
/// RSA (PKCS#1 v1.5) because its signatures are deterministic: the same bundle signed twice is
/// bit-identical. ECDSA in OpenSSL 3.0 uses a random nonce, which would break reproducible bundles.
pub fn generate(dir: &Path, common_name: &str) -> Result<UpdateKeys, KeysError> {
    fs::create_dir_all(dir).at("create", dir)?;
    let keys = UpdateKeys::in_dir(dir);
    for path in [&keys.key, &keys.cert] {
        if path.exists() {
            return Err(KeysError::Exists { path: path.clone() });
        }
    }
    tool("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:3072",
            "-out",
        ])
        .arg(&keys.key)
        .run()?;
    fs::set_permissions(&keys.key, fs::Permissions::from_mode(0o600)).at("chmod", &keys.key)?;
    tool("openssl")
        .args(["req", "-new", "-x509", "-sha256", "-days", "3650", "-key"])
        .arg(&keys.key)
        .arg("-out")
        .arg(&keys.cert)
        .arg("-subj")
        .arg(format!("/O=Cairn/CN={common_name}"))
        .args([
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-addext",
            "keyUsage=critical,digitalSignature",
            "-addext",
            "extendedKeyUsage=codeSigning",
        ])
        .run()?;
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn makes_a_private_key_and_a_codesigning_cert() {
        let dir = tempfile::tempdir().unwrap();
        let keys = generate(dir.path(), "test fleet update key").unwrap();
        assert_eq!(
            fs::metadata(&keys.key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let text = tool("openssl")
            .args(["x509", "-noout", "-text", "-in"])
            .arg(&keys.cert)
            .run()
            .unwrap();
        let text = text.stdout_text();
        assert!(text.contains("Code Signing"), "{text}");
        assert!(matches!(
            generate(dir.path(), "again"),
            Err(KeysError::Exists { .. })
        ));
    }
}
