//! TLS client authentication with the device key (rustls adapter). The key is used through
//! rustls' [`SigningKey`]/[`Signer`] traits, so a TPM key signs the handshake inside the TPM and is
//! never exported.

use std::sync::Arc;

use rustls::client::ResolvesClientCert;
use rustls::sign::{CertifiedKey, Signer, SigningKey};
use rustls::{SignatureAlgorithm, SignatureScheme};
use rustls_pki_types::{CertificateDer, SubjectPublicKeyInfoDer};
use tracing::warn;

use crate::key::DeviceKey;

/// The device key as a rustls [`SigningKey`] (ECDSA_NISTP256_SHA256 only).
#[derive(Debug, Clone)]
pub struct TlsDeviceKey {
    key: DeviceKey,
}

impl TlsDeviceKey {
    /// Adapts `key`.
    pub fn new(key: DeviceKey) -> Self {
        TlsDeviceKey { key }
    }
}

impl SigningKey for TlsDeviceKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        if offered.contains(&SignatureScheme::ECDSA_NISTP256_SHA256) {
            Some(Box::new(TlsDeviceSigner {
                key: self.key.clone(),
            }))
        } else {
            warn!(
                ?offered,
                "central offered no ECDSA P-256 SHA-256 signature scheme for client auth"
            );
            None
        }
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        Some(SubjectPublicKeyInfoDer::from(
            self.key.public_key_spki_der(),
        ))
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::ECDSA
    }
}

/// One handshake signature with the device key.
#[derive(Debug)]
struct TlsDeviceSigner {
    key: DeviceKey,
}

impl Signer for TlsDeviceSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        let sign = || self.key.sign(message);
        let result = match &self.key {
            // The TPM blocks for milliseconds: tell a multi-thread runtime so other tasks move on.
            DeviceKey::Tpm(_) => match tokio::runtime::Handle::try_current() {
                Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                    tokio::task::block_in_place(sign)
                }
                _ => sign(),
            },
            DeviceKey::Software(_) => sign(),
        };
        result.map_err(|e| {
            rustls::Error::General(format!("device key could not sign the TLS handshake: {e}"))
        })
    }

    fn scheme(&self) -> SignatureScheme {
        SignatureScheme::ECDSA_NISTP256_SHA256
    }
}

/// Always presents the device certificate with the device key.
#[derive(Debug)]
pub struct DeviceCertResolver {
    certified: Arc<CertifiedKey>,
}

impl DeviceCertResolver {
    /// Pairs the device certificate (DER) with the device key.
    pub fn new(cert_der: Vec<u8>, key: DeviceKey) -> Self {
        let certified = CertifiedKey::new(
            vec![CertificateDer::from(cert_der)],
            Arc::new(TlsDeviceKey::new(key)),
        );
        DeviceCertResolver {
            certified: Arc::new(certified),
        }
    }

    /// Checks the certificate's public key is the device key's (rustls `keys_match`).
    pub fn check_keys_match(&self) -> Result<(), rustls::Error> {
        self.certified.keys_match()
    }
}

impl ResolvesClientCert for DeviceCertResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        if !sigschemes.contains(&SignatureScheme::ECDSA_NISTP256_SHA256) {
            warn!(
                ?sigschemes,
                "central does not accept ECDSA P-256 client certificates"
            );
            return None;
        }
        Some(self.certified.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
