//! The on-disk sealed-secret blob: a TPM sealed object plus the PCR values it was sealed to.
//!
//! Format (all integers big-endian):
//!
//! ```text
//! "CAIRNSEALED1"                 12 bytes magic, the trailing "1" is the format version
//! u16                            PCR bank: TPM_ALG_SHA256 (0x000B)
//! u8 n                           number of PCRs, 1..=24
//! n x (u8 index, 32 bytes)       expected value per PCR, indices strictly ascending, < 24
//! u16 len, len bytes             TPM2B_PUBLIC  (marshalled TPMT_PUBLIC of the sealed object)
//! u16 len, len bytes             TPM2B_PRIVATE (the TPM-encrypted sensitive area)
//! ```
//!
//! Nothing may follow. Parsing is strict: besides the framing, the public area must be a sealed
//! data object (KeyedHash, fixedTPM, fixedParent, no user auth) whose policy is exactly
//! PolicyPCR over the recorded values. So the recorded values cannot be edited without the TPM
//! refusing the blob (the public area is bound to the private part), and the "which PCR changed"
//! report of an unseal failure is trustworthy.
//!
//! The blob holds no secret in clear: only the TPM that sealed it can load it, and it unseals only
//! while the PCRs hold the recorded values.

use std::path::Path;

use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::structures::{Private, Public};
use tss_esapi::traits::Marshall;

use crate::blob::{push_tpm2b, read_blob_file, take_object_tail, write_durably, BlobError};
use crate::pcr::{
    policy_pcr_digest, PcrSelection, PcrValues, PCR_COUNT, PCR_VALUE_LEN, TPM_ALG_SHA256,
};
use crate::TpmError;

/// Magic and version at the start of every sealed blob.
const MAGIC: &[u8; 12] = b"CAIRNSEALED1";
/// Where [`SealedSecret::from_bytes`] errors say the bytes came from.
const IN_MEMORY: &str = "<in-memory sealed blob>";

/// Why bytes are not a valid sealed blob, or an object not the sealed data Cairn makes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum SealedBlobError {
    /// The framing (header, areas) is wrong.
    #[error(transparent)]
    Framing(#[from] BlobError),
    /// The PCR bank is cut off.
    #[error("truncated before the PCR bank")]
    TruncatedBank,
    /// The PCR bank is not SHA-256.
    #[error("PCR bank 0x{0:04x} is not SHA-256 (0x000b)")]
    NotSha256(u16),
    /// The PCR count is cut off.
    #[error("truncated before the PCR count")]
    TruncatedCount,
    /// The PCR count is 0 or above 24.
    #[error("PCR count {0} is not in 1..=24")]
    BadCount(u8),
    /// A PCR value is cut off.
    #[error("truncated in PCR value {n} of {count}")]
    TruncatedValue {
        /// The 1-based value number.
        n: u8,
        /// The announced count.
        count: u8,
    },
    /// A PCR index above 23.
    #[error("PCR index {0} does not exist (0..=23)")]
    NoSuchPcr(u8),
    /// PCR indices not strictly ascending.
    #[error("PCR index {0} is out of order or repeated")]
    OutOfOrder(u8),
    /// More PCRs than a count byte holds (never for a sealed or parsed blob).
    #[error("{0} PCRs")]
    TooManyPcrs(usize),
    /// The object is not a KeyedHash object.
    #[error("the sealed object is not a KeyedHash sealed data object")]
    NotKeyedHash,
    /// The object's name algorithm is not SHA-256.
    #[error("the sealed object's name algorithm is {0:?}, not SHA-256")]
    NameAlgorithm(HashingAlgorithm),
    /// The object may leave its TPM or parent.
    #[error("the sealed object is not fixedTPM + fixedParent")]
    NotFixed,
    /// The object can be used with its auth value instead of the policy.
    #[error("the sealed object can be used without its PCR policy (userWithAuth)")]
    UserWithAuth,
    /// The object is a key.
    #[error("the sealed object is a key, not sealed data")]
    NotSealedData,
    /// The recorded PCR values give no policy digest.
    #[error("{0}")]
    Policy(Box<TpmError>),
    /// The object's policy is not PolicyPCR over the recorded values.
    #[error("the sealed object's policy is not PolicyPCR over the recorded PCR values")]
    PolicyMismatch,
}

/// A secret sealed by the TPM to PCR values, as stored on disk.
///
/// Holds no secret in clear. Only the TPM that sealed it can load it (the private part is
/// encrypted under that TPM's owner primary key), and the TPM unseals it only while the selected
/// SHA-256 PCRs hold [`SealedSecret::expected_pcrs`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedSecret {
    pub(crate) expected: PcrValues,
    pub(crate) public: Public,
    pub(crate) private: Private,
}

impl SealedSecret {
    /// The PCRs the secret is sealed to.
    pub fn pcrs(&self) -> PcrSelection {
        PcrSelection::new(self.expected.keys().copied())
            .expect("a parsed or sealed blob has 1..=24 valid PCR indices")
    }

    /// The PCR values (SHA-256 bank) the TPM requires to unseal.
    pub fn expected_pcrs(&self) -> &PcrValues {
        &self.expected
    }

    /// Serialize to the versioned blob format (see the module docs).
    ///
    /// # Errors
    /// [`TpmError::UnexpectedTpmOutput`] when the public area does not marshal (never for a
    /// sealed or parsed blob).
    pub fn to_bytes(&self) -> Result<Vec<u8>, TpmError> {
        let unexpected = |reason: SealedBlobError| TpmError::UnexpectedTpmOutput {
            what: "the sealed object",
            reason: reason.to_string(),
        };
        let public = self
            .public
            .marshall()
            .map_err(|e| unexpected(BlobError::Marshal(e).into()))?;
        let count = u8::try_from(self.expected.len())
            .map_err(|_| unexpected(SealedBlobError::TooManyPcrs(self.expected.len())))?;
        let mut out = Vec::with_capacity(256 + public.len() + self.private.value().len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&TPM_ALG_SHA256.to_be_bytes());
        out.push(count);
        for (index, value) in &self.expected {
            out.push(*index);
            out.extend_from_slice(value);
        }
        push_tpm2b(&mut out, &public).map_err(|e| unexpected(e.into()))?;
        push_tpm2b(&mut out, self.private.value()).map_err(|e| unexpected(e.into()))?;
        Ok(out)
    }

    /// Parse the blob format strictly (see the module docs).
    ///
    /// # Errors
    /// [`TpmError::BadSealedBlob`] saying what is wrong.
    pub fn from_bytes(bytes: &[u8]) -> Result<SealedSecret, TpmError> {
        decode(bytes).map_err(|reason| TpmError::BadSealedBlob {
            origin: IN_MEMORY.to_string(),
            reason: reason.to_string(),
        })
    }

    /// Read and parse the blob at `path`; `Ok(None)` when the file does not exist.
    ///
    /// # Errors
    /// [`TpmError::ReadSealedBlob`] when the file cannot be read, [`TpmError::BadSealedBlob`]
    /// when it is not a valid sealed blob.
    pub fn read(path: &Path) -> Result<Option<SealedSecret>, TpmError> {
        read_blob_file(
            path,
            decode,
            |source| TpmError::ReadSealedBlob {
                path: path.to_path_buf(),
                source,
            },
            |reason| TpmError::BadSealedBlob {
                origin: path.display().to_string(),
                reason,
            },
        )
    }

    /// Write the blob to `path` atomically: a 0600 temp file beside it, fsync, rename, fsync dir
    /// and its file system (the ESP is vfat, see [`crate::sync_parent`]).
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

fn decode(bytes: &[u8]) -> Result<SealedSecret, SealedBlobError> {
    let rest = bytes
        .strip_prefix(MAGIC.as_slice())
        .ok_or(BlobError::MissingHeader("CAIRNSEALED1"))?;
    let (alg, rest) = rest
        .split_first_chunk::<2>()
        .ok_or(SealedBlobError::TruncatedBank)?;
    if u16::from_be_bytes(*alg) != TPM_ALG_SHA256 {
        return Err(SealedBlobError::NotSha256(u16::from_be_bytes(*alg)));
    }
    let (&count, mut rest) = rest.split_first().ok_or(SealedBlobError::TruncatedCount)?;
    if count == 0 || count > PCR_COUNT {
        return Err(SealedBlobError::BadCount(count));
    }
    let mut expected = PcrValues::new();
    for n in 0..count {
        let (entry, tail) = rest
            .split_first_chunk::<{ 1 + PCR_VALUE_LEN }>()
            .ok_or(SealedBlobError::TruncatedValue { n: n + 1, count })?;
        let index = entry[0];
        if index >= PCR_COUNT {
            return Err(SealedBlobError::NoSuchPcr(index));
        }
        if expected
            .last_key_value()
            .is_some_and(|(&last, _)| index <= last)
        {
            return Err(SealedBlobError::OutOfOrder(index));
        }
        let mut value = [0u8; PCR_VALUE_LEN];
        value.copy_from_slice(&entry[1..]);
        expected.insert(index, value);
        rest = tail;
    }
    let (public, private) = take_object_tail(rest)?;
    check_sealed_public(&public, &expected)?;
    Ok(SealedSecret {
        expected,
        public,
        private,
    })
}

/// Check `public` is what [`crate::seal_secret`] creates for `expected`: a sealed data object
/// (KeyedHash, SHA-256 names) that is fixedTPM, fixedParent, usable only through its policy, and
/// whose policy is PolicyPCR over exactly these values.
pub(crate) fn check_sealed_public(
    public: &Public,
    expected: &PcrValues,
) -> Result<(), SealedBlobError> {
    let Public::KeyedHash {
        object_attributes,
        name_hashing_algorithm,
        auth_policy,
        ..
    } = public
    else {
        return Err(SealedBlobError::NotKeyedHash);
    };
    if *name_hashing_algorithm != HashingAlgorithm::Sha256 {
        return Err(SealedBlobError::NameAlgorithm(*name_hashing_algorithm));
    }
    let a = object_attributes;
    if !a.fixed_tpm() || !a.fixed_parent() {
        return Err(SealedBlobError::NotFixed);
    }
    if a.user_with_auth() {
        return Err(SealedBlobError::UserWithAuth);
    }
    if a.sign_encrypt() || a.decrypt() || a.restricted() {
        return Err(SealedBlobError::NotSealedData);
    }
    let policy = policy_pcr_digest(expected).map_err(|e| SealedBlobError::Policy(Box::new(e)))?;
    if auth_policy.value() != policy {
        return Err(SealedBlobError::PolicyMismatch);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seal::sealed_object_template;
    use tss_esapi::structures::Digest;

    fn sample() -> SealedSecret {
        let expected = PcrValues::from([(7, [0x11; 32]), (11, [0x22; 32])]);
        let policy = Digest::try_from(policy_pcr_digest(&expected).unwrap().to_vec()).unwrap();
        SealedSecret {
            public: sealed_object_template(policy).unwrap(),
            private: Private::try_from(vec![0xab; 110]).unwrap(),
            expected,
        }
    }

    #[test]
    fn round_trips() {
        let blob = sample();
        let bytes = blob.to_bytes().unwrap();
        assert!(bytes.starts_with(MAGIC));
        let back = SealedSecret::from_bytes(&bytes).unwrap();
        assert_eq!(back, blob);
        assert_eq!(back.pcrs().to_string(), "7,11");
    }

    #[test]
    fn rejects_every_truncation_and_trailing_bytes() {
        let bytes = sample().to_bytes().unwrap();
        for len in 0..bytes.len() {
            let err = SealedSecret::from_bytes(&bytes[..len]).unwrap_err();
            assert!(matches!(err, TpmError::BadSealedBlob { .. }), "{len}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        let err = SealedSecret::from_bytes(&longer).unwrap_err().to_string();
        assert!(err.contains("unexpected bytes"), "{err}");
    }

    #[test]
    fn rejects_edited_fields_with_a_reason() {
        let bytes = sample().to_bytes().unwrap();
        let reason = |edit: &dyn Fn(&mut Vec<u8>)| {
            let mut b = bytes.clone();
            edit(&mut b);
            SealedSecret::from_bytes(&b).unwrap_err().to_string()
        };
        assert!(reason(&|b| b[11] = b'2').contains("CAIRNSEALED1"));
        assert!(reason(&|b| b[13] = 0x04).contains("not SHA-256"));
        assert!(reason(&|b| b[14] = 0).contains("not in 1..=24"));
        assert!(reason(&|b| b[15] = 30).contains("does not exist"));
        assert!(reason(&|b| b[15 + 33] = 7).contains("out of order"));
        // A recorded PCR value edited: no longer the values the policy was built from.
        assert!(reason(&|b| b[16] ^= 1).contains("policy is not PolicyPCR"));
        assert!(SealedSecret::from_bytes(b"not a blob at all")
            .unwrap_err()
            .to_string()
            .contains(IN_MEMORY));
    }

    #[test]
    fn rejects_a_usable_without_policy_object() {
        use tss_esapi::attributes::ObjectAttributes;
        use tss_esapi::interface_types::algorithm::PublicAlgorithm;
        use tss_esapi::structures::{KeyedHashScheme, PublicBuilder, PublicKeyedHashParameters};
        let mut blob = sample();
        blob.public = PublicBuilder::new()
            .with_public_algorithm(PublicAlgorithm::KeyedHash)
            .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
            .with_object_attributes(
                ObjectAttributes::builder()
                    .with_fixed_tpm(true)
                    .with_fixed_parent(true)
                    .with_user_with_auth(true)
                    .build()
                    .unwrap(),
            )
            .with_auth_policy(blob.public.auth_policy().clone())
            .with_keyed_hash_parameters(PublicKeyedHashParameters::new(KeyedHashScheme::Null))
            .with_keyed_hash_unique_identifier(Digest::default())
            .build()
            .unwrap();
        let err = SealedSecret::from_bytes(&blob.to_bytes().unwrap()).unwrap_err();
        assert!(err.to_string().contains("userWithAuth"), "{err}");
    }

    #[test]
    fn reads_writes_atomically_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.sealed");
        assert!(SealedSecret::read(&path).unwrap().is_none());
        sample().write_atomic(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(SealedSecret::read(&path).unwrap().unwrap(), sample());
        std::fs::write(&path, b"CAIRNSEALED1").unwrap();
        let err = SealedSecret::read(&path).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        let err = sample()
            .write_atomic(Path::new("/nonexistent-cairn-dir/x"))
            .unwrap_err();
        assert!(matches!(err, TpmError::WriteSealedBlob { .. }));
    }
}
