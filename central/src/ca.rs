//! The fleet's certificate authority: signs central's server certificate and device certificates.
//!
//! The CA key lives in `data_dir/ca.key` (0600); agents and cairnctl trust `data_dir/ca.crt`,
//! which the image recipe carries.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::CertificateSigningRequestDer;
use time::{Duration, OffsetDateTime};

/// Why a certificate operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// Reading or writing CA files failed.
    #[error("CA file {path}: {source}; check data_dir permissions")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O failure.
        source: std::io::Error,
    },
    /// The stored CA does not parse.
    #[error("the CA in {path} is unreadable ({message}); restore it from backup — a new CA would orphan every enrolled device")]
    BadCa {
        /// The file.
        path: PathBuf,
        /// Parser message.
        message: String,
    },
    /// The CSR sent by a device is not acceptable.
    #[error("certificate signing request refused: {0}")]
    BadCsr(String),
    /// A configured server name is not a valid DNS name or IP.
    #[error(
        "server name {0:?} is not a valid DNS name or IP address; fix server_names in the config"
    )]
    BadServerName(String),
    /// rcgen failed to build or sign.
    #[error("could not sign certificate: {0}")]
    Sign(#[from] rcgen::Error),
}

/// A certificate issued to a device.
#[derive(Debug, Clone)]
pub struct IssuedCertificate {
    /// The certificate, DER.
    pub der: Vec<u8>,
    /// Its serial number, lower-case hex.
    pub serial_hex: String,
    /// Its expiry, Unix seconds.
    pub not_after: i64,
}

/// A public key taken from a verified CSR.
#[derive(Debug, Clone)]
pub struct VerifiedCsr {
    params: CertificateSigningRequestParams,
    /// DER SubjectPublicKeyInfo of the requesting key.
    pub spki_der: Vec<u8>,
}

/// The fleet CA, loaded once at start.
pub struct FleetCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    cert_der: Vec<u8>,
    /// HKDF key from the CA private key, for the few symmetric keys every replica must share
    /// (they all hold the CA key): see [`FleetCa::derive_key`].
    derived: ring::hkdf::Prk,
}

impl FleetCa {
    /// Load the CA from `dir`, or create it on first start.
    #[tracing::instrument(name = "ca.load_or_create", skip_all, fields(dir = %dir.display()))]
    pub fn load_or_create(dir: &Path) -> Result<Self, CaError> {
        let key_path = dir.join("ca.key");
        let cert_path = dir.join("ca.crt");
        if key_path.exists() {
            let read = |path: &Path| {
                std::fs::read_to_string(path).map_err(|source| CaError::Io {
                    path: path.to_owned(),
                    source,
                })
            };
            let key_pem = read(&key_path)?;
            let cert_pem = read(&cert_path)?;
            let bad = |path: &Path, e: &dyn std::fmt::Display| CaError::BadCa {
                path: path.to_owned(),
                message: e.to_string(),
            };
            let key = KeyPair::from_pem(&key_pem).map_err(|e| bad(&key_path, &e))?;
            let cert_der = pem::parse(&cert_pem)
                .map_err(|e| bad(&cert_path, &e))?
                .into_contents();
            let derived = derive_root(&key);
            let issuer = Issuer::from_ca_cert_der(&cert_der.clone().into(), key)
                .map_err(|e| bad(&cert_path, &e))?;
            return Ok(Self {
                issuer,
                cert_pem,
                cert_der,
                derived,
            });
        }
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, "Cairn fleet CA");
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = OffsetDateTime::now_utc() - Duration::hours(1);
        params.not_after = OffsetDateTime::now_utc() + Duration::days(3650);
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        cairn_io::write_atomic(&key_path, key.serialize_pem().as_bytes(), 0o600).map_err(|e| {
            CaError::Io {
                path: key_path.clone(),
                source: e.source,
            }
        })?;
        cairn_io::write_atomic(&cert_path, cert.pem().as_bytes(), 0o644).map_err(|e| {
            CaError::Io {
                path: cert_path.clone(),
                source: e.source,
            }
        })?;
        tracing::info!(cert = %cert_path.display(), "created fleet CA");
        Ok(Self {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            derived: derive_root(&key),
            issuer: Issuer::new(params, key),
        })
    }

    /// A 32-byte key for `purpose`, the same on every replica that holds this CA key and
    /// different for each purpose (HKDF-SHA256 expand). It changes when the CA key does.
    pub fn derive_key(&self, purpose: &'static [u8]) -> [u8; 32] {
        let mut out = [0u8; 32];
        let info = [purpose];
        self.derived
            .expand(&info, ring::hkdf::HKDF_SHA256)
            .and_then(|okm| okm.fill(&mut out))
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        out
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// A fresh server key and certificate for central's TLS listeners: (cert PEM, key PEM).
    pub fn issue_server_certificate(&self, names: &[String]) -> Result<(String, String), CaError> {
        let now = OffsetDateTime::now_utc();
        self.issue_server_certificate_valid(
            names,
            now - Duration::hours(1),
            now + Duration::days(365),
        )
    }

    /// [`FleetCa::issue_server_certificate`] valid from `not_before` to `not_after` (tests give
    /// a stand-in central a certificate that expired long ago).
    pub fn issue_server_certificate_valid(
        &self,
        names: &[String],
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<(String, String), CaError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "cairn-central");
        params.distinguished_name = dn;
        for name in names {
            let san = match name.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(
                    name.clone()
                        .try_into()
                        .map_err(|_| CaError::BadServerName(name.clone()))?,
                ),
            };
            params.subject_alt_names.push(san);
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = not_before;
        params.not_after = not_after;
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Sign a device certificate for `device_id` over the key in a verified CSR. Nothing but the
    /// key is taken from the CSR: names and usages are central's.
    pub fn issue_device_certificate(
        &self,
        device_id: &str,
        csr: &VerifiedCsr,
        lifetime_seconds: u64,
    ) -> Result<IssuedCertificate, CaError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, device_id);
        params.distinguished_name = dn;
        let uri = format!("{}{device_id}", cairn_proto::DEVICE_URI_PREFIX);
        params.subject_alt_names =
            vec![SanType::URI(uri.try_into().map_err(|_| {
                CaError::BadCsr("device id is not URI-safe".into())
            })?)];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let now = OffsetDateTime::now_utc();
        // Back-dating absorbs clock skew between central and devices; at most a tenth of the
        // lifetime, so agents' "renew with a third left" still holds for short lifetimes.
        let backdate = (lifetime_seconds / 10).min(300) as i64;
        params.not_before = now - Duration::seconds(backdate);
        let not_after = now + Duration::seconds(lifetime_seconds.min(i64::MAX as u64) as i64);
        params.not_after = not_after;
        let serial = random_serial();
        let serial_hex = hex::encode(serial.as_ref());
        params.serial_number = Some(serial);
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&csr.params.public_key, &self.issuer)?;
        Ok(IssuedCertificate {
            der: cert.der().to_vec(),
            serial_hex,
            not_after: not_after.unix_timestamp(),
        })
    }
}

/// The HKDF pseudo-random key behind [`FleetCa::derive_key`].
fn derive_root(key: &KeyPair) -> ring::hkdf::Prk {
    let der = zeroize::Zeroizing::new(key.serialize_der());
    ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"cairn central derived keys v1").extract(&der)
}

/// Parse a DER CSR, check its signature (proof the device holds the key) and that the key is
/// ECDSA P-256, the only kind agents make.
pub fn verify_csr(der: &[u8]) -> Result<VerifiedCsr, CaError> {
    use x509_parser::prelude::FromDer;
    if der.is_empty() {
        return Err(CaError::BadCsr(
            "the CSR is empty; send a DER PKCS#10 request".into(),
        ));
    }
    let (rest, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(der)
        .map_err(|e| CaError::BadCsr(format!("not a DER PKCS#10 request ({e})")))?;
    if !rest.is_empty() {
        return Err(CaError::BadCsr(format!(
            "{} trailing bytes after the request",
            rest.len()
        )));
    }
    csr.verify_signature().map_err(|e| {
        CaError::BadCsr(format!(
            "signature does not verify ({e:?}); the CSR must be signed by the device key"
        ))
    })?;
    let spki = &csr.certification_request_info.subject_pki;
    let is_p256 = spki.algorithm.algorithm == x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
        && spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .is_some_and(|oid| oid == x509_parser::oid_registry::OID_EC_P256);
    if !is_p256 {
        return Err(CaError::BadCsr(
            "the key is not ECDSA P-256; agents must use P-256 device keys".into(),
        ));
    }
    let spki_der = spki.raw.to_vec();
    let params =
        CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(der))
            .map_err(|e| CaError::BadCsr(e.to_string()))?;
    Ok(VerifiedCsr { params, spki_der })
}

/// A positive random 16-byte serial (126 random bits).
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive and without a leading zero byte, so DER keeps all 16 bytes and the hex we store
    // is exactly the serial in the certificate.
    bytes[0] = (bytes[0] & 0x3f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csr_der(key: &KeyPair) -> Vec<u8> {
        CertificateParams::new(vec!["serial-1".into()])
            .unwrap()
            .serialize_request(key)
            .unwrap()
            .der()
            .to_vec()
    }

    #[test]
    fn issues_device_certificate_with_device_uri() {
        let dir = tempfile::tempdir().unwrap();
        let ca = FleetCa::load_or_create(dir.path()).unwrap();
        let key = KeyPair::generate().unwrap();
        let csr = verify_csr(&csr_der(&key)).unwrap();
        let issued = ca.issue_device_certificate("dev_abc", &csr, 3600).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&issued.der).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        let text = format!("{:?}", san.value.general_names);
        assert!(text.contains("urn:cairn:device:dev_abc"), "{text}");
        assert_eq!(hex::encode(cert.raw_serial()), issued.serial_hex);
    }

    #[test]
    fn reloads_the_same_ca() {
        let dir = tempfile::tempdir().unwrap();
        let first = FleetCa::load_or_create(dir.path()).unwrap();
        let second = FleetCa::load_or_create(dir.path()).unwrap();
        assert_eq!(first.cert_der(), second.cert_der());
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join("ca.key"))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn refuses_garbage_and_tampered_csrs() {
        assert!(matches!(verify_csr(b""), Err(CaError::BadCsr(_))));
        assert!(matches!(
            verify_csr(b"\x30\x03garbage"),
            Err(CaError::BadCsr(_))
        ));
        let key = KeyPair::generate().unwrap();
        let mut der = csr_der(&key);
        let mid = der.len() / 2;
        der[mid] ^= 0x01;
        assert!(matches!(verify_csr(&der), Err(CaError::BadCsr(_))));
    }

    #[test]
    fn refuses_non_p256_keys() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let err = verify_csr(&csr_der(&key)).unwrap_err();
        assert!(err.to_string().contains("P-256"), "{err}");
    }
}
