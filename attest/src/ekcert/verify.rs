//! Path building and checking from the EK certificate to a trust anchor.

use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer as _;
use x509_parser::x509::X509Name;

use super::signature::verify_signed_by;
use super::{EkCertError, TrustAnchors, MAX_CERTIFICATE_LEN, MAX_INTERMEDIATES};
use crate::credential::{CredentialError, EkPublicKey};

/// A verified EK certificate: its key and what identifies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedEk {
    /// The RSA-2048 endorsement key.
    pub public: EkPublicKey,
    /// [`EkPublicKey::spki_sha256_hex`]: the TPM identity enrollment uses.
    pub spki_sha256_hex: String,
    /// The EK certificate's issuer (its distinguished name).
    pub issuer: String,
    /// The EK certificate's serial number, lower-case hex.
    pub subject_serial_hex: String,
}

/// Verifies an EK certificate (DER) against `anchors`, with the intermediate certificates the
/// device sent in `chain` (any order, at most [`MAX_INTERMEDIATES`]), at Unix time `now_unix`.
///
/// The path is built by matching each certificate's issuer to a subject (exact DER of the
/// distinguished name), first among the anchors, then among `chain`; every signature (RSA
/// PKCS#1 v1.5 SHA-256/384/512, ECDSA P-256/P-384 SHA-256/384) and every validity period in the
/// path is checked, anchors included; intermediates from `chain` must be CAs (basicConstraints,
/// keyCertSign when key usage is present, path length). The EK must be RSA-2048.
///
/// # Errors
/// [`EkCertError::UntrustedIssuer`] naming the issuer when no anchor is reached,
/// [`EkCertError::BadSignature`], [`EkCertError::Expired`], [`EkCertError::NotYetValid`],
/// [`EkCertError::UnsupportedEkKey`], [`EkCertError::Malformed`], and the size limits.
pub fn verify_ek_certificate(
    ek_cert_der: &[u8],
    chain: &[Vec<u8>],
    anchors: &TrustAnchors,
    now_unix: i64,
) -> Result<VerifiedEk, EkCertError> {
    if chain.len() > MAX_INTERMEDIATES {
        return Err(EkCertError::TooMany {
            what: "intermediate certificates",
            count: chain.len(),
            max: MAX_INTERMEDIATES,
        });
    }
    let ek_cert = parse_certificate("the EK certificate", ek_cert_der)?;
    let public = EkPublicKey::from_spki_der(ek_cert.public_key().raw).map_err(|e| match e {
        CredentialError::UnsupportedEk { reason } => EkCertError::UnsupportedEkKey { reason },
        other => EkCertError::Malformed {
            what: "the EK certificate's public key".to_string(),
            reason: other.to_string(),
        },
    })?;
    let intermediates = chain
        .iter()
        .enumerate()
        .map(|(i, der)| parse_certificate(&format!("intermediate certificate {}", i + 1), der))
        .collect::<Result<Vec<_>, _>>()?;

    check_validity(&ek_cert, now_unix)?;
    check_ek_profile(&ek_cert)?;
    let mut used = vec![false; intermediates.len()];
    let mut current = &ek_cert;
    // Each round either returns or uses one more intermediate, so the loop ends.
    let mut depth = 0;
    loop {
        let mut anchor_error = None;
        for anchor in anchors.issuers_of(current.issuer().as_raw()) {
            let anchor = parse_certificate("a trust anchor", &anchor.der)?;
            match verify_signed_by(current, &anchor)
                .and_then(|()| check_validity(&anchor, now_unix))
            {
                Ok(()) => {
                    return Ok(VerifiedEk {
                        spki_sha256_hex: public.spki_sha256_hex(),
                        public,
                        issuer: display_name(ek_cert.issuer()),
                        subject_serial_hex: hex::encode(ek_cert.raw_serial()),
                    })
                }
                Err(e) => anchor_error = Some(e),
            }
        }
        let next = intermediates
            .iter()
            .enumerate()
            .find(|(i, c)| !used[*i] && c.subject().as_raw() == current.issuer().as_raw());
        let Some((index, issuer)) = next else {
            return Err(
                anchor_error.unwrap_or_else(|| EkCertError::UntrustedIssuer {
                    subject: display_name(current.subject()),
                    issuer: display_name(current.issuer()),
                }),
            );
        };
        verify_signed_by(current, issuer)?;
        check_issuing_ca(issuer, depth)?;
        check_validity(issuer, now_unix)?;
        used[index] = true;
        current = issuer;
        depth += 1;
    }
}

/// Parses one DER certificate of at most [`MAX_CERTIFICATE_LEN`] bytes with nothing after it.
pub(super) fn parse_certificate<'a>(
    what: &str,
    der: &'a [u8],
) -> Result<X509Certificate<'a>, EkCertError> {
    if der.len() > MAX_CERTIFICATE_LEN {
        return Err(EkCertError::TooLarge {
            what: what.to_string(),
            len: der.len(),
            max: MAX_CERTIFICATE_LEN,
        });
    }
    let malformed = |reason: String| EkCertError::Malformed {
        what: what.to_string(),
        reason,
    };
    let (rest, cert) = X509Certificate::from_der(der)
        .map_err(|e| malformed(format!("not a DER X.509 certificate: {e}")))?;
    if !rest.is_empty() {
        return Err(malformed(format!(
            "{} bytes follow the certificate; send exactly the DER certificate (trim NV padding)",
            rest.len()
        )));
    }
    Ok(cert)
}

/// notBefore <= now <= notAfter.
fn check_validity(cert: &X509Certificate<'_>, now: i64) -> Result<(), EkCertError> {
    let validity = cert.validity();
    if now < validity.not_before.timestamp() {
        return Err(EkCertError::NotYetValid {
            subject: display_name(cert.subject()),
            not_before: validity.not_before.to_string(),
            now,
        });
    }
    if now > validity.not_after.timestamp() {
        return Err(EkCertError::Expired {
            subject: display_name(cert.subject()),
            not_after: validity.not_after.to_string(),
            now,
        });
    }
    Ok(())
}

/// An intermediate with `depth` intermediates below it must be a CA allowed to sign certificates
/// at that depth.
fn check_issuing_ca(cert: &X509Certificate<'_>, depth: usize) -> Result<(), EkCertError> {
    let not_a_ca = |reason: String| EkCertError::NotACa {
        subject: display_name(cert.subject()),
        reason,
    };
    let constraints = cert
        .basic_constraints()
        .map_err(|e| not_a_ca(format!("its basic constraints do not parse: {e}")))?;
    let Some(constraints) = constraints.filter(|c| c.value.ca) else {
        return Err(not_a_ca("basic constraints do not say cA".to_string()));
    };
    if let Some(max) = constraints.value.path_len_constraint {
        if depth > max as usize {
            return Err(not_a_ca(format!(
                "its path length constraint {max} allows fewer intermediates below it than {depth}"
            )));
        }
    }
    let usage = cert
        .key_usage()
        .map_err(|e| not_a_ca(format!("its key usage does not parse: {e}")))?;
    if usage.is_some_and(|u| !u.value.key_cert_sign()) {
        return Err(not_a_ca("its key usage lacks keyCertSign".to_string()));
    }
    Ok(())
}

/// The TCG EK Credential Profile's marks of an EK certificate, so that a vendor CA's other
/// certificates (a CA, a TLS or code-signing key, whose private key exists outside any TPM)
/// cannot pass for one: not a CA; key usage, when present, allows keyEncipherment (the EK
/// decrypts, it never signs); extended key usage, when present, names tcg-kp-EKCertificate
/// (2.23.133.8.1).
fn check_ek_profile(cert: &X509Certificate<'_>) -> Result<(), EkCertError> {
    let refuse = |reason: String| EkCertError::NotAnEkCertificate {
        subject: display_name(cert.subject()),
        reason,
    };
    let constraints = cert
        .basic_constraints()
        .map_err(|e| refuse(format!("its basic constraints do not parse: {e}")))?;
    if constraints.is_some_and(|c| c.value.ca) {
        return Err(refuse("it is a CA certificate".to_string()));
    }
    let usage = cert
        .key_usage()
        .map_err(|e| refuse(format!("its key usage does not parse: {e}")))?;
    if usage.is_some_and(|u| !u.value.key_encipherment()) {
        return Err(refuse("its key usage lacks keyEncipherment".to_string()));
    }
    let extended = cert
        .extended_key_usage()
        .map_err(|e| refuse(format!("its extended key usage does not parse: {e}")))?;
    if let Some(extended) = extended {
        let ek = x509_parser::der_parser::oid!(2.23.133 .8 .1);
        if extended.value.any || !extended.value.other.contains(&ek) {
            return Err(refuse(
                "its extended key usage does not name tcg-kp-EKCertificate (2.23.133.8.1)"
                    .to_string(),
            ));
        }
    }
    Ok(())
}

/// A distinguished name for messages; "(empty)" for the empty names EK certificates may have.
pub(super) fn display_name(name: &X509Name<'_>) -> String {
    let text = name.to_string();
    if text.is_empty() {
        "(empty)".to_string()
    } else {
        text
    }
}
