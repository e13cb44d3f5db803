//! Certificate signing requests signed by the device key (rcgen adapter), for Enroll and Renew.

use rcgen::{CertificateParams, DistinguishedName, DnType, PublicKeyData, SigningKey};

use crate::key::{DeviceKey, KeyError};

/// A failed CSR build.
#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    /// rcgen refused the parameters or the signature.
    #[error("cannot build the certificate signing request for serial {serial:?}: {reason}")]
    Build {
        /// The subject serial.
        serial: String,
        /// rcgen's reason (includes the device key's error when signing failed).
        reason: String,
    },
    /// The device key could not be used.
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// The device key seen through rcgen's [`SigningKey`] trait (ECDSA P-256 SHA-256).
pub struct CsrSigner<'a> {
    key: &'a DeviceKey,
    /// rcgen's error type carries no detail; the key's own error is kept here.
    sign_error: std::sync::Mutex<Option<KeyError>>,
}

impl<'a> CsrSigner<'a> {
    /// Adapts `key`.
    pub fn new(key: &'a DeviceKey) -> Self {
        CsrSigner {
            key,
            sign_error: std::sync::Mutex::new(None),
        }
    }

    /// The device key's error from the last failed signature, if any.
    pub fn take_sign_error(&self) -> Option<KeyError> {
        self.sign_error.lock().map(|mut e| e.take()).unwrap_or(None)
    }
}

impl PublicKeyData for CsrSigner<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.key.public_key_point()
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

impl SigningKey for CsrSigner<'_> {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.key.sign(msg).map_err(|e| {
            if let Ok(mut slot) = self.sign_error.lock() {
                *slot = Some(e);
            }
            rcgen::Error::RemoteKeyError
        })
    }
}

/// Builds a DER PKCS#10 CSR with subject `CN=<serial>`, signed by the device key. May block on
/// the TPM: run it in `spawn_blocking`.
pub fn build_csr(key: &DeviceKey, serial: &str) -> Result<Vec<u8>, CsrError> {
    let _span = tracing::debug_span!("csr.build", serial, storage = key.storage()).entered();
    let build_err = |e: rcgen::Error| CsrError::Build {
        serial: serial.to_string(),
        reason: e.to_string(),
    };
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(build_err)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, serial);
    params.distinguished_name = dn;
    let signer = CsrSigner::new(key);
    let csr = match params.serialize_request(&signer) {
        Ok(csr) => csr,
        Err(e) => {
            return Err(signer
                .take_sign_error()
                .map(CsrError::Key)
                .unwrap_or_else(|| build_err(e)))
        }
    };
    Ok(csr.der().to_vec())
}

/// [`build_csr`] on the blocking pool (the TPM signs slowly).
pub async fn build_csr_async(key: &DeviceKey, serial: &str) -> Result<Vec<u8>, CsrError> {
    let key = key.clone();
    let serial = serial.to_string();
    crate::blocking::blocking(move || build_csr(&key, &serial)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::certification_request::X509CertificationRequest;
    use x509_parser::prelude::FromDer;

    #[test]
    fn software_csr_parses_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let key = DeviceKey::software(&dir.path().join("k.p8")).unwrap();
        let der = build_csr(&key, "SN-0001").unwrap();
        let (rest, csr) = X509CertificationRequest::from_der(&der).unwrap();
        assert!(rest.is_empty());
        csr.verify_signature().unwrap();
        let info = &csr.certification_request_info;
        let cn: Vec<_> = info
            .subject
            .iter_common_name()
            .map(|cn| cn.as_str().unwrap().to_string())
            .collect();
        assert_eq!(cn, ["SN-0001"]);
        assert_eq!(info.subject_pki.raw, key.public_key_spki_der());
        assert_eq!(
            csr.signature_algorithm.algorithm.to_id_string(),
            "1.2.840.10045.4.3.2",
            "ecdsa-with-SHA256"
        );
    }

    #[test]
    fn same_key_gives_same_public_key_in_every_csr() {
        let dir = tempfile::tempdir().unwrap();
        let key = DeviceKey::software(&dir.path().join("k.p8")).unwrap();
        let a = build_csr(&key, "S").unwrap();
        let b = build_csr(&key, "S").unwrap();
        let pk = |der: &[u8]| {
            let (_, csr) = X509CertificationRequest::from_der(der).unwrap();
            csr.certification_request_info.subject_pki.raw.to_vec()
        };
        assert_eq!(pk(&a), pk(&b));
    }
}
