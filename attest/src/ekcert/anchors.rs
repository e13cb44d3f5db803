//! The trust anchors: CA certificates of TPM manufacturers, roots or intermediates, each trusted
//! as given.

use x509_parser::pem::Pem;

use super::{EkCertError, MAX_CERTIFICATE_LEN, MAX_TRUST_ANCHORS};

/// Largest PEM bundle accepted (every anchor at its largest, base64, with headers).
const MAX_PEM_LEN: usize = MAX_TRUST_ANCHORS * MAX_CERTIFICATE_LEN * 3 / 2;

/// One anchor: its DER and the DER of its subject, matched against issuers.
#[derive(Debug, Clone)]
pub(super) struct Anchor {
    pub(super) der: Vec<u8>,
    pub(super) subject: Vec<u8>,
}

/// A set of trusted CA certificates (at least one, at most [`MAX_TRUST_ANCHORS`]). A path that
/// reaches any of them is trusted; their own issuers are not checked.
#[derive(Debug, Clone)]
pub struct TrustAnchors {
    anchors: Vec<Anchor>,
}

impl TrustAnchors {
    /// Anchors from a PEM bundle of `CERTIFICATE` blocks (text outside blocks is ignored).
    ///
    /// # Errors
    /// [`EkCertError::TooLarge`], [`EkCertError::TooMany`], [`EkCertError::NoTrustAnchors`], or
    /// [`EkCertError::Malformed`] naming the block that is not a certificate.
    pub fn from_pem(pem: &[u8]) -> Result<Self, EkCertError> {
        if pem.len() > MAX_PEM_LEN {
            return Err(EkCertError::TooLarge {
                what: "the trust anchor PEM bundle".to_string(),
                len: pem.len(),
                max: MAX_PEM_LEN,
            });
        }
        let mut ders = Vec::new();
        for (index, block) in Pem::iter_from_buffer(pem).enumerate() {
            let what = || format!("PEM block {} of the trust anchors", index + 1);
            let block = block.map_err(|e| EkCertError::Malformed {
                what: what(),
                reason: e.to_string(),
            })?;
            if block.label != "CERTIFICATE" {
                return Err(EkCertError::Malformed {
                    what: what(),
                    reason: format!("it is a {}, not a CERTIFICATE", block.label),
                });
            }
            if ders.len() == MAX_TRUST_ANCHORS {
                return Err(EkCertError::TooMany {
                    what: "trust anchors",
                    count: ders.len() + 1,
                    max: MAX_TRUST_ANCHORS,
                });
            }
            ders.push(block.contents);
        }
        Self::from_der_list(ders)
    }

    /// Anchors from DER certificates.
    ///
    /// # Errors
    /// [`EkCertError::TooLarge`], [`EkCertError::TooMany`], [`EkCertError::NoTrustAnchors`], or
    /// [`EkCertError::Malformed`] naming the certificate that does not parse.
    pub fn from_der_list<I, B>(certificates: I) -> Result<Self, EkCertError>
    where
        I: IntoIterator<Item = B>,
        B: AsRef<[u8]>,
    {
        let mut anchors = Vec::new();
        for (index, der) in certificates.into_iter().enumerate() {
            if anchors.len() == MAX_TRUST_ANCHORS {
                return Err(EkCertError::TooMany {
                    what: "trust anchors",
                    count: anchors.len() + 1,
                    max: MAX_TRUST_ANCHORS,
                });
            }
            let what = format!("trust anchor {}", index + 1);
            let cert = super::verify::parse_certificate(&what, der.as_ref())?;
            anchors.push(Anchor {
                der: der.as_ref().to_vec(),
                subject: cert.subject().as_raw().to_vec(),
            });
        }
        if anchors.is_empty() {
            return Err(EkCertError::NoTrustAnchors);
        }
        Ok(Self { anchors })
    }

    /// How many anchors there are.
    pub fn len(&self) -> usize {
        self.anchors.len()
    }

    /// Always false: a set has at least one anchor.
    pub fn is_empty(&self) -> bool {
        self.anchors.is_empty()
    }

    /// The anchors whose subject is `issuer` (DER of the distinguished name).
    pub(super) fn issuers_of<'s>(&'s self, issuer: &'s [u8]) -> impl Iterator<Item = &'s Anchor> {
        self.anchors.iter().filter(move |a| a.subject == issuer)
    }
}
