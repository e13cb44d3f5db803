//! One certificate's signature, checked with its issuer's key (ring).

use ring::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use x509_parser::asn1_rs::Oid;
use x509_parser::certificate::X509Certificate;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_PKCS1_SHA256WITHRSA, OID_PKCS1_SHA384WITHRSA, OID_PKCS1_SHA512WITHRSA,
    OID_SIG_ECDSA_WITH_SHA256, OID_SIG_ECDSA_WITH_SHA384,
};

use super::verify::display_name;
use super::EkCertError;

/// The issuer's key type, as far as ring's verification algorithms need it.
enum IssuerKey {
    Rsa,
    P256,
    P384,
}

/// Checks that `issuer`'s key signed `cert`.
pub(super) fn verify_signed_by(
    cert: &X509Certificate<'_>,
    issuer: &X509Certificate<'_>,
) -> Result<(), EkCertError> {
    let subject = display_name(cert.subject());
    let unsupported = |reason: String| EkCertError::UnsupportedSignature {
        subject: subject.clone(),
        reason,
    };
    if cert.signature_algorithm != cert.tbs_certificate.signature {
        return Err(EkCertError::Malformed {
            what: format!("the certificate \"{subject}\""),
            reason: "its signature algorithm differs from the one inside the signed part"
                .to_string(),
        });
    }
    let spki = issuer.public_key();
    let key = if spki.algorithm.algorithm == OID_PKCS1_RSAENCRYPTION {
        IssuerKey::Rsa
    } else if spki.algorithm.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| Oid::try_from(p).ok());
        match curve {
            Some(c) if c == OID_EC_P256 => IssuerKey::P256,
            Some(c) if c == OID_NIST_EC_P384 => IssuerKey::P384,
            other => {
                return Err(unsupported(format!(
                    "an issuer key on the EC curve {}",
                    other.map_or("(none)".to_string(), |c| c.to_id_string())
                )))
            }
        }
    } else {
        return Err(unsupported(format!(
            "an issuer key of type {}",
            spki.algorithm.algorithm.to_id_string()
        )));
    };
    let oid = &cert.signature_algorithm.algorithm;
    let algorithm: &'static dyn VerificationAlgorithm = match key {
        IssuerKey::Rsa if *oid == OID_PKCS1_SHA256WITHRSA => &signature::RSA_PKCS1_2048_8192_SHA256,
        IssuerKey::Rsa if *oid == OID_PKCS1_SHA384WITHRSA => &signature::RSA_PKCS1_2048_8192_SHA384,
        IssuerKey::Rsa if *oid == OID_PKCS1_SHA512WITHRSA => &signature::RSA_PKCS1_2048_8192_SHA512,
        IssuerKey::P256 if *oid == OID_SIG_ECDSA_WITH_SHA256 => &signature::ECDSA_P256_SHA256_ASN1,
        IssuerKey::P256 if *oid == OID_SIG_ECDSA_WITH_SHA384 => &signature::ECDSA_P256_SHA384_ASN1,
        IssuerKey::P384 if *oid == OID_SIG_ECDSA_WITH_SHA256 => &signature::ECDSA_P384_SHA256_ASN1,
        IssuerKey::P384 if *oid == OID_SIG_ECDSA_WITH_SHA384 => &signature::ECDSA_P384_SHA384_ASN1,
        _ => {
            return Err(unsupported(format!(
                "signature algorithm {} (for an issuer key of type {})",
                oid.to_id_string(),
                spki.algorithm.algorithm.to_id_string()
            )))
        }
    };
    // For RSA ring takes the RSAPublicKey DER, for ECDSA the uncompressed point: both are the
    // contents of the SubjectPublicKeyInfo's BIT STRING.
    UnparsedPublicKey::new(algorithm, spki.subject_public_key.data.as_ref())
        .verify(
            cert.tbs_certificate.as_ref(),
            cert.signature_value.data.as_ref(),
        )
        .map_err(|_| EkCertError::BadSignature {
            subject,
            issuer: display_name(issuer.subject()),
        })
}
