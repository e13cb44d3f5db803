//! The emulator's TPM "vendor": a CA made in memory that certifies the EK of each software TPM.

use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, CertifiedIssuer, CustomExtension,
    DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
    SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use ring::rand::{SecureRandom as _, SystemRandom};
use rsa::traits::PublicKeyParts as _;
use sha2::{Digest as _, Sha256};

use super::tpm::SoftwareTpm;
use super::EmulatorError;
use crate::credential::EkPublicKey;
use crate::der::{self, tlv};

/// The public exponent of the TCG default RSA EK template.
const EK_EXPONENT: u32 = 65537;
/// tcg-kp-EKCertificate (2.23.133.8.1): the extended key usage of EK certificates.
const TCG_KP_EK_CERTIFICATE: [u64; 5] = [2, 23, 133, 8, 1];
/// The TPM manufacturer in the EK certificates: "EMUL" as a TCG vendor id.
const MANUFACTURER: &str = "id:454D554C";
/// The TPM model in the EK certificates.
const MODEL: &str = "cairn-attest emulator";
/// The TPM firmware version in the EK certificates.
const VERSION: &str = "id:00000001";

/// A TPM "vendor" for emulated devices: a P-256 CA made in memory that certifies the EK of every
/// [`SoftwareTpm`] from [`EmulatorVendor::tpm`]. Central trusts those TPMs only if this CA's
/// certificate ([`EmulatorVendor::ca_cert_pem`]) is listed in its `tpm_vendor_cas`; never list
/// it in production.
pub struct EmulatorVendor {
    ca: CertifiedIssuer<'static, KeyPair>,
    rng: SystemRandom,
}

impl std::fmt::Debug for EmulatorVendor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmulatorVendor")
            .field(
                "ca_cert_sha256",
                &hex::encode(Sha256::digest(self.ca_cert_der())),
            )
            .finish_non_exhaustive()
    }
}

impl Default for EmulatorVendor {
    fn default() -> Self {
        Self::new()
    }
}

impl EmulatorVendor {
    /// A new vendor with a fresh CA key and a self-signed CA certificate, its common name made
    /// unique by a hash of the key, so two vendors never pass for one another.
    ///
    /// # Panics
    /// When the system random number generator fails (no key can be made).
    pub fn new() -> Self {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .expect("the system random number generator makes a P-256 key");
        let fingerprint = hex::encode(&Sha256::digest(key.public_key_raw())[..4]);
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(
            DnType::OrganizationName,
            "Cairn TPM emulator (not a TPM vendor)",
        );
        params.distinguished_name.push(
            DnType::CommonName,
            format!("Cairn TPM emulator EK CA {fingerprint}"),
        );
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = date_time_ymd(2020, 1, 1);
        params.not_after = date_time_ymd(9999, 12, 31);
        let ca = CertifiedIssuer::self_signed(params, key)
            .expect("rcgen self-signs a CA certificate for a P-256 key it made");
        Self {
            ca,
            rng: SystemRandom::new(),
        }
    }

    /// The CA certificate, PEM: what to list in central's `tpm_vendor_cas` for a simulator or
    /// benchmark fleet.
    pub fn ca_cert_pem(&self) -> String {
        self.ca.pem()
    }

    /// The CA certificate, DER.
    pub fn ca_cert_der(&self) -> &[u8] {
        self.ca.der()
    }

    /// A new software TPM with a fresh RSA-2048 EK certified by this vendor and a fresh AK.
    ///
    /// RSA-2048 key generation is the whole cost: about a quarter of a second per TPM on one
    /// core in a release build (200 TPMs took 25 to 30 s on two cores), several seconds in a
    /// debug build. Make TPMs before anything timed, on several threads if many are needed (an
    /// `EmulatorVendor` is `Sync`), or pass keys made once to [`EmulatorVendor::tpm_with_ek`].
    ///
    /// # Panics
    /// When the system random number generator fails.
    pub fn tpm(&self) -> SoftwareTpm {
        let ek = generate_ek(&self.rng);
        self.tpm_with_ek(ek)
            .expect("a freshly generated RSA-2048 key with exponent 65537 is a valid EK")
    }

    /// A new software TPM whose EK is `ek`, certified by this vendor, with a fresh AK.
    ///
    /// # Errors
    /// [`EmulatorError::UnsupportedEk`] when `ek` is not RSA-2048 with exponent 65537,
    /// [`EmulatorError::Certificate`] when the certificate cannot be made.
    ///
    /// # Panics
    /// When the system random number generator fails.
    pub fn tpm_with_ek(&self, ek: rsa::RsaPrivateKey) -> Result<SoftwareTpm, EmulatorError> {
        let unsupported = |reason: String| EmulatorError::UnsupportedEk { reason };
        if ek.e() != &rsa::BigUint::from(EK_EXPONENT) {
            return Err(unsupported(format!("its exponent is {}", ek.e())));
        }
        let spki = der::spki_rsa(&ek.n().to_bytes_be(), EK_EXPONENT);
        EkPublicKey::from_spki_der(&spki).map_err(|e| unsupported(e.to_string()))?;
        let certificate = self.ek_certificate(&spki)?;
        Ok(SoftwareTpm::new(ek, certificate, &self.rng))
    }

    /// An EK certificate for `ek_spki_der` shaped like a TPM vendor's (TCG EK Credential
    /// Profile): empty subject, critical subject alternative name with the TPM manufacturer,
    /// model and version, EKU tcg-kp-EKCertificate, key usage keyEncipherment, not a CA, random
    /// serial, notAfter 9999-12-31.
    fn ek_certificate(&self, ek_spki_der: &[u8]) -> Result<Vec<u8>, EmulatorError> {
        let failed = |e: rcgen::Error| EmulatorError::Certificate {
            reason: e.to_string(),
        };
        let public = rcgen::SubjectPublicKeyInfo::from_der(ek_spki_der).map_err(failed)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::Other(
            TCG_KP_EK_CERTIFICATE.to_vec(),
        )];
        params.custom_extensions = vec![tpm_manufacturer_san()];
        params.serial_number = Some(self.serial_number());
        params.use_authority_key_identifier_extension = true;
        params.not_before = date_time_ymd(2020, 1, 1);
        params.not_after = date_time_ymd(9999, 12, 31);
        let certificate = params.signed_by(&public, &self.ca).map_err(failed)?;
        Ok(certificate.der().to_vec())
    }

    /// 16 random bytes, the top bit cleared so the INTEGER is positive without padding.
    ///
    /// # Panics
    /// When the system random number generator fails.
    fn serial_number(&self) -> SerialNumber {
        let mut serial = [0u8; 16];
        self.rng
            .fill(&mut serial)
            .expect("the system random number generator works");
        serial[0] = (serial[0] & 0x7f) | 0x01;
        SerialNumber::from_slice(&serial)
    }
}

/// A fresh RSA-2048 key with exponent 65537.
///
/// # Panics
/// When the system random number generator fails.
fn generate_ek(rng: &SystemRandom) -> rsa::RsaPrivateKey {
    let mut rng = crate::ring_rng::RingRng::new(rng);
    let key = rsa::RsaPrivateKey::new(&mut rng, 2048).expect("RSA-2048 key generation succeeds");
    assert!(
        !rng.failed(),
        "the system random number generator failed during EK generation"
    );
    key
}

/// A critical subject alternative name holding the TPM manufacturer, model and version as a
/// directory name (TCG EK Credential Profile §3.2.9).
fn tpm_manufacturer_san() -> CustomExtension {
    const OID: u8 = 0x06;
    const UTF8_STRING: u8 = 0x0c;
    const SEQUENCE: u8 = 0x30;
    const SET: u8 = 0x31;
    const DIRECTORY_NAME: u8 = 0xa4;
    // tcg-at-tpmManufacturer, tpmModel, tpmVersion: 2.23.133.2.{1,2,3}.
    let attribute = |arc: u8, value: &str| {
        let oid = tlv(OID, &[0x67, 0x81, 0x05, 0x02, arc]);
        let value = tlv(UTF8_STRING, value.as_bytes());
        tlv(SET, &tlv(SEQUENCE, &[oid, value].concat()))
    };
    let name = tlv(
        SEQUENCE,
        &[
            attribute(1, MANUFACTURER),
            attribute(2, MODEL),
            attribute(3, VERSION),
        ]
        .concat(),
    );
    let san = tlv(SEQUENCE, &tlv(DIRECTORY_NAME, &name));
    let mut extension = CustomExtension::from_oid_content(&[2, 5, 29, 17], san);
    extension.set_criticality(true);
    extension
}
