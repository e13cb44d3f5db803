//! The software TPM: an EK with its certificate, an attestation key, and the TPM commands
//! enrollment and attestation use (Certify, Quote, ActivateCredential).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_ASN1_SIGNING};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use super::EmulatorError;
use crate::credential::{activate_credential, ActivateError};
use crate::der::{self, P256_COORDINATE_LEN};
use crate::tpm2::marshal::ecc_public_area;
use crate::tpm2::{
    Attest, Attested, ClockInfo, ObjectAttributes, PcrSelection, TpmPublic, MAX_NAME_LEN,
    SHA256_LEN, TPM_ALG_ECDSA, TPM_ALG_SHA256,
};

/// The firmware version every software TPM reports in its attestations.
pub const EMULATOR_FIRMWARE_VERSION: u64 = 0x0000_0001_0000_0000;
/// A TPM has PCRs 0 to 23.
const PCR_COUNT: u8 = 24;

/// fixedTPM | fixedParent | sensitiveDataOrigin | userWithAuth | sign: a TPM-resident signing key
/// whose private part never left the TPM.
const RESIDENT_SIGNING_KEY: u32 = ObjectAttributes::FIXED_TPM.0
    | ObjectAttributes::FIXED_PARENT.0
    | ObjectAttributes::SENSITIVE_DATA_ORIGIN.0
    | ObjectAttributes::USER_WITH_AUTH.0
    | ObjectAttributes::SIGN.0;
/// The attestation key: a resident signing key that is also restricted (signs only structures
/// the TPM made).
const AK_ATTRIBUTES: u32 = RESIDENT_SIGNING_KEY | ObjectAttributes::RESTRICTED.0;

/// TPMT_ECC_SCHEME ECDSA with SHA-256.
fn ecdsa_sha256_scheme() -> [u8; 4] {
    let [a0, a1] = TPM_ALG_ECDSA.to_be_bytes();
    let [h0, h1] = TPM_ALG_SHA256.to_be_bytes();
    [a0, a1, h0, h1]
}

/// A TPMS_ATTEST and the AK's signature over it, as TPM2_Certify and TPM2_Quote return them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedAttestation {
    /// The marshalled TPMS_ATTEST (what the TPM signed).
    pub attest: Vec<u8>,
    /// ECDSA P-256 SHA-256 signature by the AK over `attest`, ASN.1 DER.
    pub signature_der: Vec<u8>,
}

/// What a TPM-backed device sends at enrollment, field for field `cairn_proto::v1::TpmEvidence`
/// (cairn-attest does not depend on the protocol crate, so callers copy the fields over).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    /// The EK certificate, DER.
    pub ek_certificate_der: Vec<u8>,
    /// Intermediate certificates of the EK certificate: none, the vendor CA issues directly.
    pub ek_chain_der: Vec<Vec<u8>>,
    /// TPMT_PUBLIC of the attestation key.
    pub ak_public: Vec<u8>,
    /// TPMT_PUBLIC of the device key.
    pub device_key_public: Vec<u8>,
    /// TPMS_ATTEST of the AK's certification of the device key.
    pub certify_info: Vec<u8>,
    /// The AK's signature over `certify_info`, DER.
    pub certify_signature: Vec<u8>,
}

/// A TPM in software, made by [`super::EmulatorVendor::tpm`]: an RSA-2048 EK with the vendor's
/// certificate and an ECC P-256 attestation key, both in process memory.
pub struct SoftwareTpm {
    ek: rsa::RsaPrivateKey,
    ek_certificate_der: Vec<u8>,
    ak: EcdsaKeyPair,
    ak_public: Vec<u8>,
    ak_name: Vec<u8>,
    powered_on: Instant,
    rng: SystemRandom,
}

impl std::fmt::Debug for SoftwareTpm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoftwareTpm")
            .field("ak_name", &hex::encode(&self.ak_name))
            .finish_non_exhaustive()
    }
}

impl SoftwareTpm {
    /// A TPM with `ek` and its certificate, and a fresh AK.
    ///
    /// # Panics
    /// When the system random number generator fails.
    pub(super) fn new(
        ek: rsa::RsaPrivateKey,
        ek_certificate_der: Vec<u8>,
        rng: &SystemRandom,
    ) -> Self {
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, rng)
            .expect("the system random number generator makes a P-256 key");
        let ak = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), rng)
            .expect("ring reads the PKCS#8 key it made");
        let (x, y) = coordinates(ak.public_key().as_ref());
        let ak_public = ecc_public_area(AK_ATTRIBUTES, &ecdsa_sha256_scheme(), x, y);
        let ak_name = TpmPublic::parse(&ak_public)
            .expect("the emulator's AK public area parses")
            .name()
            .to_vec();
        Self {
            ek,
            ek_certificate_der,
            ak,
            ak_public,
            ak_name,
            powered_on: Instant::now(),
            rng: rng.clone(),
        }
    }

    /// The EK certificate, DER, as a TPM stores it in NV index 0x01c00002.
    pub fn ek_certificate_der(&self) -> &[u8] {
        &self.ek_certificate_der
    }

    /// The AK's marshalled TPMT_PUBLIC: ECC NIST P-256, name algorithm SHA-256,
    /// fixedTPM | fixedParent | sensitiveDataOrigin | userWithAuth | restricted | sign, scheme
    /// ECDSA-SHA256, no KDF, no symmetric algorithm.
    pub fn ak_public(&self) -> Vec<u8> {
        self.ak_public.clone()
    }

    /// The AK's TPM name: 0x000b (SHA-256) and the SHA-256 of [`SoftwareTpm::ak_public`].
    pub fn ak_name(&self) -> &[u8] {
        &self.ak_name
    }

    /// The marshalled TPMT_PUBLIC of a non-restricted P-256 signing key (fixedTPM | fixedParent
    /// | sensitiveDataOrigin | userWithAuth | sign, ECDSA-SHA256) whose point is the one in
    /// `spki_der`: the public area a TPM would report for a device key it created. The caller
    /// keeps the private key (the emulator signs nothing with it).
    ///
    /// # Errors
    /// [`EmulatorError::NotP256DeviceKey`] when `spki_der` is not exactly the DER
    /// SubjectPublicKeyInfo of an uncompressed P-256 point.
    pub fn device_key_public(&self, spki_der: &[u8]) -> Result<Vec<u8>, EmulatorError> {
        let point_len = 2 * P256_COORDINATE_LEN;
        let point = spki_der
            .len()
            .checked_sub(point_len)
            .map(|start| &spki_der[start..])
            .ok_or(EmulatorError::NotP256DeviceKey)?;
        let (x, y) = point.split_at(P256_COORDINATE_LEN);
        if der::spki_ec_p256(x, y) != spki_der {
            return Err(EmulatorError::NotP256DeviceKey);
        }
        Ok(ecc_public_area(
            RESIDENT_SIGNING_KEY,
            &ecdsa_sha256_scheme(),
            x,
            y,
        ))
    }

    /// TPM2_Certify of the object whose public area is `object_public` (a device key from
    /// [`SoftwareTpm::device_key_public`]) by the AK, with `qualifying_data` (at enrollment:
    /// `cairn_proto::certify_qualifying_data` of the CSR's key).
    ///
    /// The TPMS_ATTEST names the AK as signer and carries the object's name as both its name and
    /// qualified name (Cairn's checks read neither qualified name).
    ///
    /// # Errors
    /// [`EmulatorError::Malformed`] when `object_public` is not a public area the TPM takes,
    /// [`EmulatorError::DataTooLong`], [`EmulatorError::Random`].
    pub fn certify(
        &self,
        object_public: &[u8],
        qualifying_data: &[u8],
    ) -> Result<SignedAttestation, EmulatorError> {
        check_data_len("qualifying data", qualifying_data)?;
        let object = TpmPublic::parse(object_public).map_err(EmulatorError::Malformed)?;
        self.sign(
            Attested::Certify {
                name: object.name().to_vec(),
                qualified_name: object.name().to_vec(),
            },
            qualifying_data,
        )
    }

    /// What a device sends at enrollment: the EK certificate, the AK, the public area of the
    /// device key `device_key_spki_der`, and the AK's certification of it with
    /// `qualifying_data` (pass `cairn_proto::certify_qualifying_data(csr_spki_der)`).
    ///
    /// # Errors
    /// Those of [`SoftwareTpm::device_key_public`] and [`SoftwareTpm::certify`].
    pub fn evidence(
        &self,
        device_key_spki_der: &[u8],
        qualifying_data: &[u8],
    ) -> Result<Evidence, EmulatorError> {
        let device_key_public = self.device_key_public(device_key_spki_der)?;
        let certified = self.certify(&device_key_public, qualifying_data)?;
        Ok(Evidence {
            ek_certificate_der: self.ek_certificate_der.clone(),
            ek_chain_der: Vec::new(),
            ak_public: self.ak_public.clone(),
            device_key_public,
            certify_info: certified.attest,
            certify_signature: certified.signature_der,
        })
    }

    /// TPM2_ActivateCredential with the AK as the activated object: the secret central put in
    /// the credential (TPM2B_ID_OBJECT and TPM2B_ENCRYPTED_SECRET contents), recovered with the
    /// EK's private key. The integrity check covers the AK's name, so a credential made for any
    /// other object is refused, as a TPM refuses it.
    ///
    /// # Errors
    /// [`ActivateError::Integrity`] for a credential made for another name (or altered),
    /// [`ActivateError::Seed`] for one made to another EK, [`ActivateError::Malformed`].
    pub fn activate_credential(
        &self,
        id_object: &[u8],
        encrypted_secret: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, ActivateError> {
        activate_credential(&self.ek, &self.ak_name, id_object, encrypted_secret)
    }

    /// TPM2_Quote by the AK of the SHA-256 PCRs in `pcr_values` (the caller's idea of this
    /// TPM's PCRs) for `nonce`: one SHA-256 selection of those indices (three-byte bitmap) and
    /// pcrDigest = SHA-256 of the values concatenated in ascending index order.
    ///
    /// # Errors
    /// [`EmulatorError::NoSuchPcr`] for an index above 23, [`EmulatorError::DataTooLong`] for a
    /// nonce longer than 66 bytes, [`EmulatorError::Random`].
    pub fn quote(
        &self,
        nonce: &[u8],
        pcr_values: &BTreeMap<u8, [u8; SHA256_LEN]>,
    ) -> Result<SignedAttestation, EmulatorError> {
        check_data_len("nonce", nonce)?;
        if let Some(&index) = pcr_values.keys().find(|&&index| index >= PCR_COUNT) {
            return Err(EmulatorError::NoSuchPcr { index });
        }
        let mut digest = Sha256::new();
        for value in pcr_values.values() {
            digest.update(value);
        }
        self.sign(
            Attested::Quote {
                pcr_select: vec![PcrSelection {
                    hash: TPM_ALG_SHA256,
                    pcrs: pcr_values.keys().copied().collect::<BTreeSet<u8>>(),
                }],
                pcr_digest: digest.finalize().to_vec(),
            },
            nonce,
        )
    }

    /// A TPMS_ATTEST of `attested` with `extra_data`, this TPM's clock and the AK as signer,
    /// signed by the AK.
    fn sign(
        &self,
        attested: Attested,
        extra_data: &[u8],
    ) -> Result<SignedAttestation, EmulatorError> {
        let attest = Attest {
            qualified_signer: self.ak_name.clone(),
            extra_data: extra_data.to_vec(),
            clock_info: ClockInfo {
                clock: u64::try_from(self.powered_on.elapsed().as_millis()).unwrap_or(u64::MAX),
                reset_count: 0,
                restart_count: 0,
                safe: true,
            },
            firmware_version: EMULATOR_FIRMWARE_VERSION,
            attested,
        }
        .marshal();
        let signature = self
            .ak
            .sign(&self.rng, &attest)
            .map_err(|_| EmulatorError::Random)?;
        Ok(SignedAttestation {
            attest,
            signature_der: signature.as_ref().to_vec(),
        })
    }
}

/// X and Y of an uncompressed point `04 || x || y` as ring gives it.
fn coordinates(point: &[u8]) -> (&[u8], &[u8]) {
    point[1..].split_at(P256_COORDINATE_LEN)
}

/// TPM2B_DATA holds at most a TPMT_HA (a 2-byte algorithm and a SHA-512 digest).
fn check_data_len(what: &'static str, data: &[u8]) -> Result<(), EmulatorError> {
    if data.len() > MAX_NAME_LEN {
        return Err(EmulatorError::DataTooLong {
            what,
            len: data.len(),
            max: MAX_NAME_LEN,
        });
    }
    Ok(())
}
