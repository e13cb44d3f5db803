//! Proof of a device's TPM at enrollment: the EK certificate chains to a trusted TPM vendor CA,
//! the attestation key (AK) is a restricted TPM signing key, the AK certified the CSR's key as
//! TPM-resident, and the TPM holding that EK decrypts a credential made for the AK's name
//! (TPM2_MakeCredential here, TPM2_ActivateCredential on the device).
//!
//! Stateless between the two Enroll calls: the challenge's secret travels to the device inside
//! the TPM credential, and back to central inside a ticket only central can open (AES-256-GCM
//! under a key every replica derives from the fleet CA key), so the answer may reach any
//! replica and an unanswered challenge costs central nothing.

use std::path::{Path, PathBuf};

use cairn_attest::credential::{make_credential, EkPublicKey};
use cairn_attest::ekcert::{verify_ek_certificate, TrustAnchors};
use cairn_attest::keys::{check_attestation_key, check_device_key, verify_certify};
use cairn_attest::tpm2::TpmPublic;
use cairn_proto::v1::{TpmActivation, TpmChallenge, TpmEvidence};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest as _, Sha256};

/// How long a challenge may be answered.
pub const CHALLENGE_LIFETIME_SECONDS: i64 = 300;
/// Length of the secret in the credential.
const SECRET_LEN: usize = 32;
/// Context bound into every ticket.
const TICKET_AAD: &[u8] = b"cairn enroll ticket v1";
/// expires (8) || secret || binding (32).
const TICKET_PLAIN_LEN: usize = 8 + SECRET_LEN + 32;

/// Why a device's TPM proof was refused. Sent to the device as is.
#[derive(Debug, thiserror::Error)]
pub enum TpmProofError {
    /// Too big or too many parts.
    #[error("TPM evidence refused: {0}")]
    TooLarge(String),
    /// No EK certificate in the evidence.
    #[error("the TPM has no endorsement key certificate (NV index 0x01c00002); central cannot tell it from a software TPM. Use a token created with --allow-software-keys for such devices, or provision the EK certificate")]
    NoEkCertificate,
    /// Central has no vendor CA configured.
    #[error("central trusts no TPM vendor CA yet; an administrator must list the TPM vendors' CA certificates in `tpm_vendor_cas` of central's config")]
    NoAnchors,
    /// The EK certificate failed its checks.
    #[error("endorsement key certificate refused: {0}")]
    EkCertificate(String),
    /// AK, device key or certification failed.
    #[error("TPM evidence refused: {0}")]
    Evidence(String),
    /// The reported EK hash is not the certified EK.
    #[error("the reported tpm_ek_sha256 {reported} is not the EK of the certificate the device sent ({verified}); the device's facts are refused")]
    EkMismatch {
        /// What the agent reported.
        reported: String,
        /// What the certificate holds.
        verified: String,
    },
    /// A reported EK hash without evidence.
    #[error("the device reports a TPM EK ({0}) but sends no TPM evidence; central records only an EK it verified. Update the agent, or send no tpm_ek_sha256")]
    UnprovenEk(String),
    /// The ticket cannot be opened, has expired, or is for another request.
    #[error("the TPM challenge answer is stale or for another request ({0}); enroll again to get a fresh challenge")]
    BadTicket(&'static str),
    /// ActivateCredential returned the wrong secret.
    #[error("the TPM did not return the challenge's secret: the EK that decrypted it is not the certified one, or the AK is not in that TPM")]
    WrongSecret,
    /// Randomness or crypto failure inside central.
    #[error("central could not make a TPM challenge: {0}")]
    Internal(String),
}

/// What central concluded from verified evidence.
#[derive(Debug, Clone)]
pub struct ProvenTpm {
    /// Lower-case hex SHA-256 of the EK's SubjectPublicKeyInfo (what claims match).
    pub ek_sha256: String,
    /// The EK certificate's issuer, for the audit record.
    pub ek_issuer: String,
    /// The AK's TPMT_PUBLIC (kept to check its quotes).
    pub ak_public: Vec<u8>,
    ek: EkPublicKey,
    ak_name: Vec<u8>,
}

/// The TPM vendor CAs central trusts (config `tpm_vendor_cas`).
#[derive(Debug, Default)]
pub struct VendorAnchors {
    anchors: Option<TrustAnchors>,
}

/// A `tpm_vendor_cas` file could not be used.
#[derive(Debug, thiserror::Error)]
#[error("cannot use TPM vendor CA file {path}: {message}; list PEM files of TPM vendor CA certificates in `tpm_vendor_cas`")]
pub struct AnchorError {
    path: PathBuf,
    message: String,
}

impl VendorAnchors {
    /// Read every PEM file in `files` (each may hold several certificates).
    pub fn load(files: &[PathBuf]) -> Result<Self, AnchorError> {
        if files.is_empty() {
            return Ok(Self::default());
        }
        let mut pem = Vec::new();
        for path in files {
            let bytes = read_bounded(path)?;
            pem.extend_from_slice(&bytes);
            pem.push(b'\n');
        }
        let anchors = TrustAnchors::from_pem(&pem).map_err(|e| AnchorError {
            path: files[0].clone(),
            message: e.to_string(),
        })?;
        Ok(Self {
            anchors: Some(anchors),
        })
    }
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, AnchorError> {
    const MAX: u64 = 1024 * 1024;
    let err = |message: String| AnchorError {
        path: path.to_owned(),
        message,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if meta.len() > MAX {
        return Err(err(format!("larger than {MAX} bytes")));
    }
    std::fs::read(path).map_err(|e| err(e.to_string()))
}

/// Check everything in `evidence` that needs no TPM round trip: sizes, the EK certificate
/// chain, the AK's attributes, the device key's attributes and that it is the CSR's key, and
/// the AK's signature over the certification.
pub fn check_evidence(
    evidence: &TpmEvidence,
    csr_spki_der: &[u8],
    anchors: &VendorAnchors,
    now_unix: i64,
) -> Result<ProvenTpm, TpmProofError> {
    let total = evidence.ek_certificate_der.len()
        + evidence.ek_chain_der.iter().map(Vec::len).sum::<usize>()
        + evidence.ak_public.len()
        + evidence.device_key_public.len()
        + evidence.certify_info.len()
        + evidence.certify_signature.len();
    if total > cairn_proto::MAX_TPM_EVIDENCE_BYTES {
        return Err(TpmProofError::TooLarge(format!(
            "{total} bytes, at most {} allowed",
            cairn_proto::MAX_TPM_EVIDENCE_BYTES
        )));
    }
    if evidence.ek_chain_der.len() > cairn_proto::MAX_EK_CHAIN {
        return Err(TpmProofError::TooLarge(format!(
            "{} chain certificates, at most {} allowed",
            evidence.ek_chain_der.len(),
            cairn_proto::MAX_EK_CHAIN
        )));
    }
    if evidence.ek_certificate_der.is_empty() {
        return Err(TpmProofError::NoEkCertificate);
    }
    let anchors = anchors.anchors.as_ref().ok_or(TpmProofError::NoAnchors)?;
    let ek = verify_ek_certificate(
        &evidence.ek_certificate_der,
        &evidence.ek_chain_der,
        anchors,
        now_unix,
    )
    .map_err(|e| TpmProofError::EkCertificate(e.to_string()))?;
    let evidence_err =
        |what: &str, e: &dyn std::fmt::Display| TpmProofError::Evidence(format!("{what}: {e}"));
    let ak = TpmPublic::parse(&evidence.ak_public)
        .map_err(|e| evidence_err("attestation key public area", &e))?;
    check_attestation_key(&ak).map_err(|e| evidence_err("attestation key", &e))?;
    let device_key = TpmPublic::parse(&evidence.device_key_public)
        .map_err(|e| evidence_err("device key public area", &e))?;
    check_device_key(&device_key, csr_spki_der).map_err(|e| evidence_err("device key", &e))?;
    verify_certify(
        &ak,
        &evidence.certify_info,
        &evidence.certify_signature,
        &device_key,
        &cairn_proto::certify_qualifying_data(csr_spki_der),
    )
    .map_err(|e| evidence_err("certification of the device key by the attestation key", &e))?;
    Ok(ProvenTpm {
        ek_sha256: ek.spki_sha256_hex.clone(),
        ek_issuer: ek.issuer.clone(),
        ak_public: evidence.ak_public.clone(),
        ak_name: ak.name().to_vec(),
        ek: ek.public,
    })
}

/// Makes and redeems credential challenges.
pub struct Challenger {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for Challenger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Challenger(..)")
    }
}

impl Challenger {
    /// A challenger whose tickets every replica with the same 32-byte `key` can open.
    pub fn new(key: [u8; 32]) -> Self {
        let key = UnboundKey::new(&AES_256_GCM, &key).expect("AES-256 takes a 32-byte key");
        Self {
            key: LessSafeKey::new(key),
            rng: SystemRandom::new(),
        }
    }

    /// A credential only the TPM with `proven`'s EK can open, and only for its AK, plus the
    /// ticket that lets any replica check the answer until `now_unix` +
    /// [`CHALLENGE_LIFETIME_SECONDS`].
    pub fn challenge(
        &self,
        proven: &ProvenTpm,
        csr_spki_der: &[u8],
        now_unix: i64,
    ) -> Result<TpmChallenge, TpmProofError> {
        let internal = |what: &str| TpmProofError::Internal(what.to_string());
        let mut secret = zeroize::Zeroizing::new([0u8; SECRET_LEN]);
        self.rng
            .fill(&mut secret[..])
            .map_err(|_| internal("no randomness"))?;
        let made = make_credential(&proven.ek, &proven.ak_name, &secret[..], &self.rng)
            .map_err(|e| TpmProofError::Internal(e.to_string()))?;
        let mut plain = Vec::with_capacity(TICKET_PLAIN_LEN);
        plain.extend_from_slice(&(now_unix + CHALLENGE_LIFETIME_SECONDS).to_be_bytes());
        plain.extend_from_slice(&secret[..]);
        plain.extend_from_slice(&binding(proven, csr_spki_der));
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| internal("no randomness"))?;
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(TICKET_AAD),
                &mut plain,
            )
            .map_err(|_| internal("sealing the ticket failed"))?;
        let mut ticket = nonce.to_vec();
        ticket.extend_from_slice(&plain);
        Ok(TpmChallenge {
            credential_blob: made.id_object,
            encrypted_secret: made.encrypted_secret,
            ticket,
        })
    }

    /// Check an answer: the ticket is central's, unexpired, for this EK, AK and CSR key, and
    /// the secret is the one in it.
    pub fn redeem(
        &self,
        proven: &ProvenTpm,
        csr_spki_der: &[u8],
        activation: &TpmActivation,
        now_unix: i64,
    ) -> Result<(), TpmProofError> {
        const MAX_TICKET: usize = NONCE_LEN + TICKET_PLAIN_LEN + 16;
        if activation.ticket.len() != MAX_TICKET {
            return Err(TpmProofError::BadTicket("malformed ticket"));
        }
        let (nonce, body) = activation.ticket.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce)
            .map_err(|_| TpmProofError::BadTicket("malformed ticket"))?;
        let mut body = zeroize::Zeroizing::new(body.to_vec());
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(TICKET_AAD), &mut body)
            .map_err(|_| TpmProofError::BadTicket("not made by this fleet's central"))?;
        let (expires, rest) = plain.split_at(8);
        let (secret, bound) = rest.split_at(SECRET_LEN);
        let expires = i64::from_be_bytes(expires.try_into().expect("8 bytes"));
        if now_unix > expires {
            return Err(TpmProofError::BadTicket("expired"));
        }
        if !constant_time_eq(bound, &binding(proven, csr_spki_der)) {
            return Err(TpmProofError::BadTicket("made for another TPM or key"));
        }
        if !constant_time_eq(secret, &activation.secret) {
            return Err(TpmProofError::WrongSecret);
        }
        Ok(())
    }
}

/// What a ticket is for: this EK, this AK and this CSR key.
fn binding(proven: &ProvenTpm, csr_spki_der: &[u8]) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(proven.ek_sha256.as_bytes());
    hash.update((proven.ak_name.len() as u32).to_be_bytes());
    hash.update(&proven.ak_name);
    hash.update(csr_spki_der);
    hash.finalize().into()
}

/// Equal contents, compared without an early exit on the first difference.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
