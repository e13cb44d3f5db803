//! TPM2_ActivateCredential in software (Part 3 §12.5): the inverse of
//! [`make_credential`](super::make_credential) with the EK's private key, as the TPM does it
//! inside. The software TPM of the `emulator` feature answers central's challenges with it, and
//! the tests below check the blob layout end to end and against `tpm2_makecredential`.

use aes::Aes128;
use cfb_mode::cipher::{AsyncStreamCipher as _, KeyIvInit as _};
use ring::hmac;
use zeroize::Zeroizing;

use super::kdf::kdfa_sha256;
use super::make::{IDENTITY_LABEL, INTEGRITY_LABEL, STORAGE_LABEL, SYM_KEY_LEN};
use crate::tpm2::SHA256_LEN;

/// ActivateCredential refused a credential. The messages say which step failed and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ActivateError {
    /// The seed does not decrypt with the EK's private key.
    #[error(
        "the credential's encrypted secret does not decrypt with this TPM's endorsement key \
         (RSA-OAEP SHA-256, label IDENTITY): it was made for another EK; ask central for a new \
         challenge"
    )]
    Seed,

    /// The credential blob does not have the layout of a TPM2B_ID_OBJECT.
    #[error(
        "the credential blob is malformed ({what}): pass the TPM2B_ID_OBJECT contents central \
         sent, unchanged"
    )]
    Malformed {
        /// The field that is wrong.
        what: &'static str,
    },

    /// The integrity HMAC does not verify for the object the TPM activates for.
    #[error(
        "the credential's integrity HMAC does not verify for the object {object_name_hex}: the \
         credential was made for another key than this attestation key, or the blob was \
         damaged; central must make it for this AK's name"
    )]
    Integrity {
        /// Hex of the name of the object (the attestation key) it was activated for.
        object_name_hex: String,
    },
}

/// Recovers the credential from `id_object` and `encrypted_secret` (TPM2B contents) for the
/// object named `object_name`, as TPM2_ActivateCredential does: the seed is decrypted with the
/// EK, and the outer HMAC over the encrypted identity and `object_name` must verify, so a
/// credential made for another object's name is refused.
///
/// # Errors
/// [`ActivateError::Seed`] when the seed was not encrypted to `ek`,
/// [`ActivateError::Integrity`] when the credential names another object or was altered,
/// [`ActivateError::Malformed`] when the blob's sizes are wrong.
pub(crate) fn activate_credential(
    ek: &rsa::RsaPrivateKey,
    object_name: &[u8],
    id_object: &[u8],
    encrypted_secret: &[u8],
) -> Result<Zeroizing<Vec<u8>>, ActivateError> {
    let malformed = |what| ActivateError::Malformed { what };
    let padding = rsa::Oaep::new_with_label::<sha2::Sha256, _>(IDENTITY_LABEL);
    let seed = Zeroizing::new(
        ek.decrypt(padding, encrypted_secret)
            .map_err(|_| ActivateError::Seed)?,
    );
    let sym_key = kdfa_sha256::<SYM_KEY_LEN>(&seed, STORAGE_LABEL, object_name, &[]);
    let hmac_key = kdfa_sha256::<SHA256_LEN>(&seed, INTEGRITY_LABEL, &[], &[]);

    let (size, rest) = id_object
        .split_at_checked(2)
        .ok_or(malformed("no integrityHMAC size"))?;
    if usize::from(u16::from_be_bytes([size[0], size[1]])) != SHA256_LEN {
        return Err(malformed("integrityHMAC is not a SHA-256 digest"));
    }
    let (outer_hmac, enc_identity) = rest
        .split_at_checked(SHA256_LEN)
        .ok_or(malformed("integrityHMAC is truncated"))?;
    let key = hmac::Key::new(hmac::HMAC_SHA256, hmac_key.as_ref());
    hmac::verify(&key, &[enc_identity, object_name].concat(), outer_hmac).map_err(|_| {
        ActivateError::Integrity {
            object_name_hex: hex::encode(object_name),
        }
    })?;

    let mut identity = Zeroizing::new(enc_identity.to_vec());
    cfb_mode::Decryptor::<Aes128>::new(&(*sym_key).into(), &[0u8; 16].into())
        .decrypt(&mut identity);
    let (size, credential) = identity
        .split_at_checked(2)
        .ok_or(malformed("no credential size"))?;
    if usize::from(u16::from_be_bytes([size[0], size[1]])) != credential.len() {
        return Err(malformed(
            "the credential's size is not its TPM2B_DIGEST size",
        ));
    }
    Ok(Zeroizing::new(credential.to_vec()))
}

#[cfg(test)]
mod tests {
    use ring::rand::SystemRandom;
    use rsa::pkcs8::DecodePrivateKey as _;
    use rsa::traits::PublicKeyParts as _;

    use super::*;
    use crate::credential::{make_credential, CredentialError, EkPublicKey};

    const TEST_EK_KEY: &str = include_str!("../../tests/data/test_ek_rsa2048.key.pem");
    /// `tpm2_makecredential -T none -u <test EK public PEM> -G rsa -s <secret> -n <name>` output.
    const TPM2_TOOLS_BLOB: &[u8] =
        include_bytes!("../../tests/data/tpm2_tools_makecredential.cred");
    const TPM2_TOOLS_NAME: &str =
        "000b62dd365d69af6a1d893c8e7442acdfa50823e4bced13dd87a4bd1338ea283ca9";
    const TPM2_TOOLS_SECRET: &[u8] = b"credential-secret-0123456789abcd";

    fn test_ek() -> (rsa::RsaPrivateKey, EkPublicKey) {
        let private = rsa::RsaPrivateKey::from_pkcs8_pem(TEST_EK_KEY).unwrap();
        let public = private.to_public_key();
        let spki = crate::der::spki_rsa(&public.n().to_bytes_be(), 65537);
        (private, EkPublicKey::from_spki_der(&spki).unwrap())
    }

    /// tpm2-tools' file: magic 0xBADCC0DE, version 1, TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET.
    fn split_tpm2_tools_blob(blob: &[u8]) -> (&[u8], &[u8]) {
        assert_eq!(&blob[..8], &[0xba, 0xdc, 0xc0, 0xde, 0, 0, 0, 1]);
        let id_len = usize::from(u16::from_be_bytes([blob[8], blob[9]]));
        let id_object = &blob[10..10 + id_len];
        let rest = &blob[10 + id_len..];
        let secret_len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        assert_eq!(rest.len(), 2 + secret_len);
        (id_object, &rest[2..])
    }

    #[test]
    fn the_inverse_recovers_what_tpm2_makecredential_made() {
        let (private, _) = test_ek();
        let (id_object, secret) = split_tpm2_tools_blob(TPM2_TOOLS_BLOB);
        let name = hex::decode(TPM2_TOOLS_NAME).unwrap();
        let credential = activate_credential(&private, &name, id_object, secret).unwrap();
        assert_eq!(credential.as_slice(), TPM2_TOOLS_SECRET);
    }

    #[test]
    fn make_credential_has_the_layout_of_tpm2_makecredential() {
        let (_, ek) = test_ek();
        let name = hex::decode(TPM2_TOOLS_NAME).unwrap();
        let made = make_credential(&ek, &name, TPM2_TOOLS_SECRET, &SystemRandom::new()).unwrap();
        let (id_object, secret) = split_tpm2_tools_blob(TPM2_TOOLS_BLOB);
        assert_eq!(made.id_object.len(), id_object.len());
        assert_eq!(&made.id_object[..2], &id_object[..2]);
        assert_eq!(made.encrypted_secret.len(), secret.len());
    }

    #[test]
    fn a_made_credential_activates_for_its_name_only() {
        let (private, ek) = test_ek();
        let name = hex::decode(TPM2_TOOLS_NAME).unwrap();
        let made = make_credential(&ek, &name, b"0123456789", &SystemRandom::new()).unwrap();
        assert_eq!(
            activate_credential(&private, &name, &made.id_object, &made.encrypted_secret)
                .unwrap()
                .as_slice(),
            b"0123456789"
        );
        let mut other = name.clone();
        other[5] ^= 1;
        assert_eq!(
            activate_credential(&private, &other, &made.id_object, &made.encrypted_secret),
            Err(ActivateError::Integrity {
                object_name_hex: hex::encode(&other)
            })
        );
    }

    #[test]
    fn a_tampered_blob_fails_its_integrity_check() {
        let (private, ek) = test_ek();
        let name = hex::decode(TPM2_TOOLS_NAME).unwrap();
        let made = make_credential(&ek, &name, &[7; 32], &SystemRandom::new()).unwrap();
        let mut id_object = made.id_object.clone();
        *id_object.last_mut().unwrap() ^= 1;
        assert!(matches!(
            activate_credential(&private, &name, &id_object, &made.encrypted_secret),
            Err(ActivateError::Integrity { .. })
        ));
    }

    #[test]
    fn a_secret_encrypted_to_another_ek_does_not_decrypt() {
        let (private, ek) = test_ek();
        let name = hex::decode(TPM2_TOOLS_NAME).unwrap();
        let made = make_credential(&ek, &name, &[7; 32], &SystemRandom::new()).unwrap();
        let mut secret = made.encrypted_secret.clone();
        secret[0] ^= 1;
        assert_eq!(
            activate_credential(&private, &name, &made.id_object, &secret),
            Err(ActivateError::Seed)
        );
    }

    #[test]
    fn the_same_seed_gives_the_same_blob_and_another_seed_another() {
        let name = hex::decode(TPM2_TOOLS_NAME).unwrap();
        let a = crate::credential::make::protect_credential(&[1; 32], &name, b"secret");
        let b = crate::credential::make::protect_credential(&[1; 32], &name, b"secret");
        let c = crate::credential::make::protect_credential(&[2; 32], &name, b"secret");
        assert_eq!(a, b);
        assert_ne!(a, c);
        // TPM2B_DIGEST(32-byte HMAC) then the 2 + 6 encrypted identity bytes.
        assert_eq!(a.len(), 2 + 32 + 8);
        assert_eq!(&a[..2], &[0x00, 0x20]);
    }

    #[test]
    fn credentials_and_names_of_the_wrong_size_are_refused() {
        let (_, ek) = test_ek();
        let rng = SystemRandom::new();
        let name = hex::decode(TPM2_TOOLS_NAME).unwrap();
        assert_eq!(
            make_credential(&ek, &name, &[], &rng),
            Err(CredentialError::BadCredentialLength { len: 0, max: 32 })
        );
        assert_eq!(
            make_credential(&ek, &name, &[0; 33], &rng),
            Err(CredentialError::BadCredentialLength { len: 33, max: 32 })
        );
        assert_eq!(
            make_credential(&ek, &[0; 67], b"x", &rng),
            Err(CredentialError::BadObjectName { len: 67 })
        );
        assert_eq!(
            make_credential(&ek, &[0], b"x", &rng),
            Err(CredentialError::BadObjectName { len: 1 })
        );
    }
}
