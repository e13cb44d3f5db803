//! What the agent needs to know about its device certificate: validity (for renewal), the device
//! id in its SAN URI, and whether it belongs to the device key.

use ::time::format_description::well_known::Rfc3339;
use ::time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

/// A device certificate that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    /// The DER does not parse as X.509.
    #[error("device certificate does not parse as X.509: {0}")]
    Parse(String),
    /// The certificate carries another public key than the device key.
    #[error(
        "device certificate is for another key than this device's key; the device enrolls again"
    )]
    WrongKey,
    /// Central's answer names another device than the certificate does.
    #[error("certificate is for device {issued_for:?} but central said {expected:?}")]
    WrongDevice {
        /// The device id in the certificate's SAN.
        issued_for: String,
        /// The device id central's answer gave.
        expected: String,
    },
}

/// Checks a certificate from central: parses, carries the device key, names `device_id` (when
/// the SAN is present). Returns its parsed form.
pub fn check_issued_certificate(
    cert_der: &[u8],
    spki_der: &[u8],
    device_id: &str,
) -> Result<CertificateInfo, CertificateError> {
    let info = CertificateInfo::parse(cert_der)?;
    info.check_key(spki_der)?;
    if let Some(id) = &info.device_id {
        if !device_id.is_empty() && id != device_id {
            return Err(CertificateError::WrongDevice {
                issued_for: id.clone(),
                expected: device_id.to_string(),
            });
        }
    }
    Ok(info)
}

/// The parts of the device certificate the agent acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// Device id from the `urn:cairn:device:<id>` SAN URI, when present.
    pub device_id: Option<String>,
    /// The certified public key (DER SubjectPublicKeyInfo).
    pub spki_der: Vec<u8>,
}

impl CertificateInfo {
    /// Parses a DER certificate.
    pub fn parse(der: &[u8]) -> Result<Self, CertificateError> {
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|e| CertificateError::Parse(e.to_string()))?;
        let validity = cert.validity();
        let mut device_id = None;
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                if let GeneralName::URI(uri) = name {
                    if let Some(id) = uri.strip_prefix(cairn_proto::DEVICE_URI_PREFIX) {
                        device_id = Some(id.to_string());
                    }
                }
            }
        }
        Ok(CertificateInfo {
            not_before: validity.not_before.to_datetime(),
            not_after: validity.not_after.to_datetime(),
            device_id,
            spki_der: cert.public_key().raw.to_vec(),
        })
    }

    /// Fails with [`CertificateError::WrongKey`] unless the certificate is for `spki_der`.
    pub fn check_key(&self, spki_der: &[u8]) -> Result<(), CertificateError> {
        if self.spki_der == spki_der {
            Ok(())
        } else {
            Err(CertificateError::WrongKey)
        }
    }

    /// notAfter as RFC 3339 (for `status.json`).
    pub fn not_after_rfc3339(&self) -> String {
        self.not_after.format(&Rfc3339).unwrap_or_default()
    }

    /// Whether the certificate has expired at `now`.
    pub fn expired_at(&self, now: OffsetDateTime) -> bool {
        now >= self.not_after
    }

    /// Whether to renew at `now`: less than `fraction` of the lifetime remains.
    pub fn renewal_due(&self, now: OffsetDateTime, fraction: f64) -> bool {
        renewal_due(self.not_before, self.not_after, now, fraction)
    }

    /// When renewal becomes due (`not_after - fraction * lifetime`).
    pub fn renewal_time(&self, fraction: f64) -> OffsetDateTime {
        let lifetime = self.not_after - self.not_before;
        self.not_after - lifetime * fraction
    }
}

/// True when the remaining lifetime at `now` is below `fraction` of the whole lifetime
/// (`not_after - not_before`); always true for a certificate with no lifetime or past expiry.
pub fn renewal_due(
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    now: OffsetDateTime,
    fraction: f64,
) -> bool {
    let lifetime = (not_after - not_before).as_seconds_f64();
    let remaining = (not_after - now).as_seconds_f64();
    if lifetime <= 0.0 || remaining <= 0.0 {
        return true;
    }
    remaining < lifetime * fraction
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::time::Duration;
    use rcgen::PublicKeyData;

    #[test]
    fn renewal_timing() {
        let nb = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let na = nb + Duration::days(90);
        // Fresh and two thirds through: not due; past the 67 % mark: due.
        assert!(!renewal_due(nb, na, nb, 0.33));
        assert!(!renewal_due(nb, na, nb + Duration::days(60), 0.33));
        assert!(renewal_due(nb, na, nb + Duration::days(61), 0.33));
        assert!(renewal_due(nb, na, na, 0.33));
        assert!(renewal_due(nb, na, na + Duration::days(1), 0.33));
        // Before notBefore (clock behind): not due.
        assert!(!renewal_due(nb, na, nb - Duration::days(1), 0.33));
        // Degenerate certificate: always due.
        assert!(renewal_due(na, nb, nb, 0.33));
    }

    #[test]
    fn parses_validity_san_and_key() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![rcgen::SanType::URI(
            format!("{}dev-42", cairn_proto::DEVICE_URI_PREFIX)
                .try_into()
                .unwrap(),
        )];
        let nb = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        params.not_before = nb;
        params.not_after = nb + Duration::hours(10);
        let cert = params.self_signed(&key).unwrap();
        let info = CertificateInfo::parse(cert.der()).unwrap();
        assert_eq!(info.device_id.as_deref(), Some("dev-42"));
        assert_eq!(info.not_before, nb);
        assert_eq!(info.renewal_time(0.5), nb + Duration::hours(5));
        info.check_key(&key.subject_public_key_info()).unwrap();
        assert!(matches!(
            info.check_key(b"other"),
            Err(CertificateError::WrongKey)
        ));
        assert_eq!(info.not_after_rfc3339(), "2023-11-15T08:13:20Z");
        assert!(CertificateInfo::parse(b"junk").is_err());
    }

    #[test]
    fn issued_certificate_must_carry_our_key_and_id() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![rcgen::SanType::URI(
            format!("{}d-1", cairn_proto::DEVICE_URI_PREFIX)
                .try_into()
                .unwrap(),
        )];
        let cert = params.self_signed(&key).unwrap();
        let spki = key.subject_public_key_info();
        assert!(check_issued_certificate(cert.der(), &spki, "d-1").is_ok());
        assert!(check_issued_certificate(cert.der(), &spki, "d-2")
            .unwrap_err()
            .to_string()
            .contains("d-2"));
        let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        assert!(
            check_issued_certificate(cert.der(), &other.subject_public_key_info(), "d-1").is_err()
        );
        assert!(check_issued_certificate(b"junk", &spki, "d-1").is_err());
    }
}
