//! Sealing a small secret to this TPM alone, with no PCR policy: [`TpmBoundSecret`].
//!
//! What it is for: a key that must keep opening on this device whatever it boots (an OS update,
//! Secure Boot turned off), yet be useless anywhere else, e.g. the key of the agent's copy of its
//! apps' secrets. A secret that must stay locked when the boot chain changes belongs in
//! [`crate::seal_secret`] instead.
//!
//! # Recipe
//!
//! - Seal: a KeyedHash sealed data object is created under the owner storage primary (the parent
//!   of the device key and the PCR-sealed secrets), fixedTPM + fixedParent, with the secret as its
//!   sensitive data. The create command travels in a session salted with the primary, with
//!   parameter encryption, so the secret never crosses the TPM bus in clear.
//! - Unseal: load under the primary (another TPM, or this TPM after a clear, refuses:
//!   [`BoundUnsealError::WrongTpm`]), then `Unseal` in a salted session whose response is
//!   encrypted.
//!
//! # Why `userWithAuth` with an empty auth value, and no policy
//!
//! The binding wanted is to this TPM and nothing else, and the TPM gives that through the parent:
//! the private area is encrypted and integrity-protected under the owner primary, which only this
//! TPM's owner seed derives. Any policy would add a condition to that binding: PolicyPCR is what
//! must not hold here, and a password would have to be stored beside the blob, protecting
//! nothing. So the object is usable with its (empty) auth value, `authPolicy` is empty and
//! `adminWithPolicy` is set, so that no policy can ever satisfy an admin role (the auth value
//! cannot be changed). `noDA`: an empty auth value has nothing to guess.
//!
//! Who holds the blob and can talk to this TPM can unseal it: the blob protects against copies
//! taken off the device (a disk image, a backup, a stolen disk), not against code running on it.
//!
//! # Blob format
//!
//! ```text
//! "CAIRNTPMBND1"                 12 bytes magic, the trailing "1" is the format version
//! u16 len, len bytes             TPM2B_PUBLIC  (marshalled TPMT_PUBLIC of the sealed object)
//! u16 len, len bytes             TPM2B_PRIVATE (the TPM-encrypted sensitive area)
//! ```
//!
//! All integers big-endian; nothing may follow. Parsing checks the public area is the object
//! described above, so a PCR-sealed or key blob is refused before the TPM sees it.

use std::path::Path;

use tss_esapi::attributes::ObjectAttributes;
use tss_esapi::constants::SessionType;
use tss_esapi::handles::{KeyHandle, ObjectHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{
    Digest, KeyedHashScheme, Private, Public, PublicBuilder, PublicKeyedHashParameters,
    SensitiveData,
};
use tss_esapi::traits::Marshall;
use tss_esapi::Context;
use zeroize::Zeroizing;

use crate::blob::{push_tpm2b, read_blob_file, take_object_tail, write_durably, BlobError};
use crate::owner_key::{create_owner_primary, flush, flush_session};
use crate::seal::{check_secret, is_format_one, salted_session, tpm_response_kind};
use crate::tcti::TpmAccess;
use crate::TpmError;

/// Magic and version at the start of every TPM-bound blob.
const MAGIC: &[u8; 12] = b"CAIRNTPMBND1";
/// Where [`TpmBoundSecret::from_bytes`] errors say the bytes came from.
const IN_MEMORY: &str = "<in-memory TPM-bound blob>";

/// Why a TPM-bound secret could not be unsealed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BoundUnsealError {
    /// The TPM cannot load the blob: it belongs to another TPM.
    #[error(
        "wrong TPM: this TPM cannot load the TPM-bound blob ({source}); it was sealed by another \
         TPM (the disk was moved to another device), this TPM was cleared since, or the blob was \
         damaged; this TPM can never unseal it: seal a new secret and recreate what the old one \
         protected"
    )]
    WrongTpm {
        /// The TPM's refusal.
        #[source]
        source: tss_esapi::Error,
    },

    /// Any other TPM failure (TPM unreachable, primary key, sessions).
    #[error(transparent)]
    Tpm(#[from] TpmError),
}

/// A secret sealed to this TPM only (no PCR policy), as stored on disk. See the module docs.
///
/// Holds no secret in clear: the sensitive area is encrypted under this TPM's owner primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmBoundSecret {
    public: Public,
    private: Private,
}

/// Why bytes are not a valid TPM-bound blob, or an object not the one Cairn makes.
#[derive(Debug, thiserror::Error)]
enum BoundBlobError {
    #[error(transparent)]
    Framing(#[from] BlobError),
    #[error("the object is not a KeyedHash sealed data object")]
    NotKeyedHash,
    #[error("the object's name algorithm is {0:?}, not SHA-256")]
    NameAlgorithm(HashingAlgorithm),
    #[error("the object is not fixedTPM + fixedParent")]
    NotFixed,
    #[error("the object is a key, not sealed data")]
    NotSealedData,
    #[error("the object is not usable with its auth value alone (a PCR-sealed object?)")]
    NotBoundOnly,
}

impl TpmBoundSecret {
    /// Seal `secret` (1..=128 bytes) to this TPM, through a new connection (a TCTI string) or an
    /// open device key's ([`TpmAccess`]). The secret is never logged and travels encrypted.
    ///
    /// # Errors
    /// [`TpmError::BadSecret`] for an empty or too long secret, [`TpmError::BadTcti`] /
    /// [`TpmError::OpenTcti`], [`TpmError::CreatePrimary`], [`TpmError::Seal`],
    /// [`TpmError::UnexpectedTpmOutput`].
    pub fn seal<'a>(
        access: impl Into<TpmAccess<'a>>,
        secret: &[u8],
    ) -> Result<TpmBoundSecret, TpmError> {
        check_secret(secret)?;
        access.into().run(|context| seal_in(context, secret))
    }

    /// Unseal the secret with this TPM. It is returned in a buffer zeroed on drop.
    ///
    /// # Errors
    /// [`BoundUnsealError::WrongTpm`] when another TPM sealed it, this TPM was cleared since, or
    /// the private area was altered; [`BoundUnsealError::Tpm`] for other TPM failures.
    pub fn unseal<'a>(
        &self,
        access: impl Into<TpmAccess<'a>>,
    ) -> Result<Zeroizing<Vec<u8>>, BoundUnsealError> {
        let _span = tracing::info_span!("tpm.unseal_bound").entered();
        let result = access.into().run(|context| {
            let primary = create_owner_primary(context)?;
            let result = unseal_under(context, primary, self);
            flush(context, primary);
            result
        });
        if let Err(e) = &result {
            tracing::warn!(error = %e, "unseal of a TPM-bound secret refused");
        }
        result
    }

    /// Serialize to the versioned blob format (see the module docs).
    ///
    /// # Errors
    /// [`TpmError::UnexpectedTpmOutput`] when the public area does not marshal (never for a
    /// sealed or parsed blob).
    pub fn to_bytes(&self) -> Result<Vec<u8>, TpmError> {
        let unexpected = |reason: BlobError| TpmError::UnexpectedTpmOutput {
            what: "the TPM-bound object",
            reason: reason.to_string(),
        };
        let public = self
            .public
            .marshall()
            .map_err(|e| unexpected(BlobError::Marshal(e)))?;
        let mut out = Vec::with_capacity(MAGIC.len() + 4 + public.len() + 128);
        out.extend_from_slice(MAGIC);
        push_tpm2b(&mut out, &public).map_err(unexpected)?;
        push_tpm2b(&mut out, self.private.value()).map_err(unexpected)?;
        Ok(out)
    }

    /// Parse the blob format strictly (see the module docs).
    ///
    /// # Errors
    /// [`TpmError::BadBoundBlob`] saying what is wrong.
    pub fn from_bytes(bytes: &[u8]) -> Result<TpmBoundSecret, TpmError> {
        decode(bytes).map_err(|reason| TpmError::BadBoundBlob {
            origin: IN_MEMORY.to_string(),
            reason: reason.to_string(),
        })
    }

    /// Read and parse the blob at `path`; `Ok(None)` when the file does not exist.
    ///
    /// # Errors
    /// [`TpmError::ReadSealedBlob`] when the file cannot be read, [`TpmError::BadBoundBlob`]
    /// when it is not a valid TPM-bound blob.
    pub fn read(path: &Path) -> Result<Option<TpmBoundSecret>, TpmError> {
        read_blob_file(
            path,
            decode,
            |source| TpmError::ReadSealedBlob {
                path: path.to_path_buf(),
                source,
            },
            |reason| TpmError::BadBoundBlob {
                origin: path.display().to_string(),
                reason,
            },
        )
    }

    /// Write the blob to `path` atomically (0600 temp file, fsync, rename, fsync dir and file
    /// system, see [`crate::sync_parent`]).
    ///
    /// # Errors
    /// [`TpmError::WriteSealedBlob`] (the temp file is removed again).
    pub fn write_atomic(&self, path: &Path) -> Result<(), TpmError> {
        let bytes = self.to_bytes()?;
        write_durably(path, &bytes).map_err(|source| TpmError::WriteSealedBlob {
            path: path.to_path_buf(),
            source,
        })
    }
}

fn seal_in(context: &mut Context, secret: &[u8]) -> Result<TpmBoundSecret, TpmError> {
    let _span = tracing::info_span!("tpm.seal_bound", len = secret.len()).entered();
    let err = |source| TpmError::Seal { source };
    let template = bound_object_template().map_err(err)?;
    let sensitive = SensitiveData::try_from(secret.to_vec()).map_err(err)?;
    let primary = create_owner_primary(context)?;
    let created = (|| {
        let session = salted_session(context, primary, SessionType::Hmac)?;
        let result = context.execute_with_session(Some(session), |ctx| {
            ctx.create(primary, template, None, Some(sensitive), None, None)
        });
        flush_session(context, session);
        result
    })();
    flush(context, primary);
    let created = created.map_err(err)?;
    check_bound_public(&created.out_public).map_err(|reason| TpmError::UnexpectedTpmOutput {
        what: "the new TPM-bound object",
        reason: reason.to_string(),
    })?;
    tracing::info!("secret sealed to this TPM");
    Ok(TpmBoundSecret {
        public: created.out_public,
        private: created.out_private,
    })
}

fn unseal_under(
    context: &mut Context,
    primary: KeyHandle,
    bound: &TpmBoundSecret,
) -> Result<Zeroizing<Vec<u8>>, BoundUnsealError> {
    let object = context
        .execute_with_session(Some(AuthSession::Password), |ctx| {
            ctx.load(primary, bound.private.clone(), bound.public.clone())
        })
        .map_err(|source| match tpm_response_kind(&source) {
            // The TPM rejected the blob itself (integrity, binding, size): not its own.
            Some(_) if is_format_one(&source) => BoundUnsealError::WrongTpm { source },
            _ => BoundUnsealError::Tpm(TpmError::Unseal { source }),
        })?;
    let result = (|| {
        let session = salted_session(context, primary, SessionType::Hmac)?;
        let result = context
            .execute_with_session(Some(session), |ctx| ctx.unseal(ObjectHandle::from(object)));
        flush_session(context, session);
        result
    })();
    flush(context, object);
    let data = result.map_err(|source| TpmError::Unseal { source })?;
    Ok(Zeroizing::new(data.value().to_vec()))
}

/// The public template of a sealed data object bound only to this TPM (see the module docs).
fn bound_object_template() -> tss_esapi::Result<Public> {
    let attributes = ObjectAttributes::builder()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_user_with_auth(true)
        .with_admin_with_policy(true)
        .with_no_da(true)
        .build()?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::KeyedHash)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_auth_policy(Digest::default())
        .with_keyed_hash_parameters(PublicKeyedHashParameters::new(KeyedHashScheme::Null))
        .with_keyed_hash_unique_identifier(Digest::default())
        .build()
}

fn decode(bytes: &[u8]) -> Result<TpmBoundSecret, BoundBlobError> {
    let rest = bytes
        .strip_prefix(MAGIC.as_slice())
        .ok_or(BlobError::MissingHeader("CAIRNTPMBND1"))?;
    let (public, private) = take_object_tail(rest)?;
    check_bound_public(&public)?;
    Ok(TpmBoundSecret { public, private })
}

/// Check `public` is what [`TpmBoundSecret::seal`] creates: sealed data (KeyedHash, SHA-256
/// names), fixedTPM + fixedParent, usable with its auth value, with no policy.
fn check_bound_public(public: &Public) -> Result<(), BoundBlobError> {
    let Public::KeyedHash {
        object_attributes: a,
        name_hashing_algorithm,
        auth_policy,
        ..
    } = public
    else {
        return Err(BoundBlobError::NotKeyedHash);
    };
    if *name_hashing_algorithm != HashingAlgorithm::Sha256 {
        return Err(BoundBlobError::NameAlgorithm(*name_hashing_algorithm));
    }
    if !a.fixed_tpm() || !a.fixed_parent() {
        return Err(BoundBlobError::NotFixed);
    }
    if a.sign_encrypt() || a.decrypt() || a.restricted() {
        return Err(BoundBlobError::NotSealedData);
    }
    if !a.user_with_auth() || !auth_policy.value().is_empty() {
        return Err(BoundBlobError::NotBoundOnly);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> TpmBoundSecret {
        TpmBoundSecret {
            public: bound_object_template().unwrap(),
            private: Private::try_from(vec![0xab; 110]).unwrap(),
        }
    }

    #[test]
    fn round_trips_through_the_blob_format() {
        let bytes = sample().to_bytes().unwrap();
        assert!(bytes.starts_with(MAGIC));
        assert_eq!(TpmBoundSecret::from_bytes(&bytes).unwrap(), sample());
        for len in 0..bytes.len() {
            assert!(TpmBoundSecret::from_bytes(&bytes[..len]).is_err(), "{len}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(TpmBoundSecret::from_bytes(&longer).is_err());
    }

    #[test]
    fn template_is_bound_to_the_tpm_only() {
        let public = bound_object_template().unwrap();
        let a = public.object_attributes();
        assert!(a.fixed_tpm() && a.fixed_parent() && a.user_with_auth());
        assert!(public.auth_policy().value().is_empty());
        assert!(check_bound_public(&public).is_ok());
    }

    #[test]
    fn refuses_a_pcr_sealed_object() {
        let policy = Digest::try_from(vec![5; 32]).unwrap();
        let blob = TpmBoundSecret {
            public: crate::seal::sealed_object_template(policy).unwrap(),
            private: Private::try_from(vec![0xab; 110]).unwrap(),
        };
        let err = TpmBoundSecret::from_bytes(&blob.to_bytes().unwrap()).unwrap_err();
        assert!(err.to_string().contains("auth value alone"), "{err}");
        let pcr_blob = b"CAIRNSEALED1 and the rest";
        let err = TpmBoundSecret::from_bytes(pcr_blob).unwrap_err();
        assert!(err.to_string().contains("CAIRNTPMBND1"), "{err}");
    }
}
