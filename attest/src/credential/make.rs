//! TPM2_MakeCredential in software for an RSA-2048 EK of the default template (nameAlg SHA-256,
//! AES-128-CFB): the layout TPM2_ActivateCredential expects (Part 1 §24.4 and §24.5, Part 3
//! §12.6).

use aes::Aes128;
use cfb_mode::cipher::{AsyncStreamCipher as _, KeyIvInit as _};
use ring::hmac;
use ring::rand::SecureRandom;
use zeroize::Zeroizing;

use super::kdf::kdfa_sha256;
use super::{CredentialError, EkPublicKey};
use crate::ring_rng::RingRng;
use crate::tpm2::{MAX_NAME_LEN, SHA256_LEN};

/// Longest credential: the digest size of the EK's name algorithm (SHA-256).
pub const MAX_CREDENTIAL_LEN: usize = SHA256_LEN;

/// The RSA-OAEP label of the seed: "IDENTITY" with its terminating zero octet (Part 1 §24.4).
pub(super) const IDENTITY_LABEL: &str = "IDENTITY\0";
/// KDFa label of the symmetric key that encrypts the credential.
pub(super) const STORAGE_LABEL: &str = "STORAGE";
/// KDFa label of the HMAC key that protects the encrypted credential.
pub(super) const INTEGRITY_LABEL: &str = "INTEGRITY";
/// AES-128 key size of the default EK template.
pub(super) const SYM_KEY_LEN: usize = 16;

/// The two outputs of TPM2_MakeCredential, each as the contents of its TPM2B (without the outer
/// size prefix): what tss-esapi's `IdObject::try_from(Vec<u8>)` and
/// `EncryptedSecret::try_from(Vec<u8>)` take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MadeCredential {
    /// `credentialBlob` (TPM2B_ID_OBJECT contents): TPM2B_DIGEST(outer HMAC) ‖ encrypted
    /// identity.
    pub id_object: Vec<u8>,
    /// `secret` (TPM2B_ENCRYPTED_SECRET contents): the seed, RSA-OAEP encrypted to the EK.
    pub encrypted_secret: Vec<u8>,
}

/// Makes a credential for the object named `object_name` (the attestation key's TPM name), that
/// only the TPM holding `ek` can recover with TPM2_ActivateCredential, and only for that object.
///
/// Steps (TPM 2.0 Part 1 §24): a 32-byte random seed, RSA-OAEP(SHA-256, label "IDENTITY\0")
/// encrypted to the EK; symKey = KDFa(SHA-256, seed, "STORAGE", name, "", 128);
/// HMACkey = KDFa(SHA-256, seed, "INTEGRITY", "", "", 256); encIdentity = AES-128-CFB(symKey,
/// IV 0) of TPM2B_DIGEST(credential); outerHMAC = HMAC-SHA256(HMACkey, encIdentity ‖ name).
///
/// # Errors
/// [`CredentialError::BadObjectName`], [`CredentialError::BadCredentialLength`],
/// [`CredentialError::Random`] when `rng` fails, [`CredentialError::Encrypt`] when RSA fails.
pub fn make_credential(
    ek: &EkPublicKey,
    object_name: &[u8],
    credential: &[u8],
    rng: &dyn SecureRandom,
) -> Result<MadeCredential, CredentialError> {
    if object_name.len() < 2 || object_name.len() > MAX_NAME_LEN {
        return Err(CredentialError::BadObjectName {
            len: object_name.len(),
        });
    }
    if credential.is_empty() || credential.len() > MAX_CREDENTIAL_LEN {
        return Err(CredentialError::BadCredentialLength {
            len: credential.len(),
            max: MAX_CREDENTIAL_LEN,
        });
    }
    let mut seed = Zeroizing::new([0u8; SHA256_LEN]);
    rng.fill(seed.as_mut())
        .map_err(|_| CredentialError::Random)?;
    let encrypted_secret = encrypt_seed(ek, seed.as_ref(), rng)?;
    let id_object = protect_credential(seed.as_ref(), object_name, credential);
    Ok(MadeCredential {
        id_object,
        encrypted_secret,
    })
}

/// RSA-OAEP (SHA-256, MGF1-SHA-256, label "IDENTITY\0") of the seed to the EK.
fn encrypt_seed(
    ek: &EkPublicKey,
    seed: &[u8],
    rng: &dyn SecureRandom,
) -> Result<Vec<u8>, CredentialError> {
    let key = ek.rsa_public_key()?;
    let padding = rsa::Oaep::new_with_label::<sha2::Sha256, _>(IDENTITY_LABEL);
    let mut rng = RingRng::new(rng);
    let encrypted = key
        .encrypt(&mut rng, padding, seed)
        .map_err(|e| CredentialError::Encrypt {
            reason: e.to_string(),
        })?;
    if rng.failed() {
        return Err(CredentialError::Random);
    }
    Ok(encrypted)
}

/// TPM2B_DIGEST(outerHMAC) ‖ encIdentity, from the seed (deterministic; split out for tests).
pub(super) fn protect_credential(seed: &[u8], object_name: &[u8], credential: &[u8]) -> Vec<u8> {
    let sym_key = kdfa_sha256::<SYM_KEY_LEN>(seed, STORAGE_LABEL, object_name, &[]);
    let hmac_key = kdfa_sha256::<SHA256_LEN>(seed, INTEGRITY_LABEL, &[], &[]);

    // The credential as a marshalled TPM2B_DIGEST; its length was checked to fit.
    let mut enc_identity = Vec::with_capacity(2 + credential.len());
    enc_identity.extend_from_slice(&(credential.len() as u16).to_be_bytes());
    enc_identity.extend_from_slice(credential);
    cfb_mode::Encryptor::<Aes128>::new(&(*sym_key).into(), &[0u8; 16].into())
        .encrypt(&mut enc_identity);

    let key = hmac::Key::new(hmac::HMAC_SHA256, hmac_key.as_ref());
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(&enc_identity);
    ctx.update(object_name);
    let outer_hmac = ctx.sign();

    let mut id_object = Vec::with_capacity(2 + SHA256_LEN + enc_identity.len());
    id_object.extend_from_slice(&(SHA256_LEN as u16).to_be_bytes());
    id_object.extend_from_slice(outer_hmac.as_ref());
    id_object.extend_from_slice(&enc_identity);
    id_object
}
