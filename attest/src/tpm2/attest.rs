//! TPMS_ATTEST: the structure a TPM signs in TPM2_Certify and TPM2_Quote (Part 2 §10.12.12).

use std::collections::BTreeSet;

use super::reader::Reader;
use super::*;

/// Largest TPMS_ATTEST accepted (a quote over every bank of 24 PCRs is well below this).
pub const MAX_ATTEST_LEN: usize = 1024;
/// Largest PCR bitmap in a TPMS_PCR_SELECTION: 4 bytes, PCRs 0 to 31.
pub const MAX_PCR_SELECT_BYTES: usize = 4;
/// Most PCR banks in a TPML_PCR_SELECTION (HASH_COUNT of the reference implementation).
const MAX_PCR_BANKS: u32 = 16;

const STRUCTURE: &str = "TPMS_ATTEST";

/// TPMS_CLOCK_INFO: the TPM's clock when it signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockInfo {
    /// Milliseconds the TPM has been powered since it was manufactured (or cleared).
    pub clock: u64,
    /// TPM Resets (reboots) since manufacture or clear.
    pub reset_count: u32,
    /// TPM Restarts and Resumes since the last TPM Reset.
    pub restart_count: u32,
    /// Whether `clock` has never gone backwards.
    pub safe: bool,
}

/// One TPMS_PCR_SELECTION: a hash bank and the PCR indices selected in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrSelection {
    /// The bank's TPM_ALG_ID (e.g. [`TPM_ALG_SHA256`]).
    pub hash: u16,
    /// The selected PCR indices, ascending.
    pub pcrs: BTreeSet<u8>,
}

/// The type-specific part of a TPMS_ATTEST (TPMU_ATTEST).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attested {
    /// TPMS_CERTIFY_INFO: the certified object.
    Certify {
        /// The certified object's name.
        name: Vec<u8>,
        /// The certified object's qualified name.
        qualified_name: Vec<u8>,
    },
    /// TPMS_QUOTE_INFO: the quoted PCRs.
    Quote {
        /// The PCRs the quote covers.
        pcr_select: Vec<PcrSelection>,
        /// Hash (with the signing scheme's hash) of the selected PCR values.
        pcr_digest: Vec<u8>,
    },
}

/// A parsed TPMS_ATTEST of type certify or quote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attest {
    /// The signing key's qualified name.
    pub qualified_signer: Vec<u8>,
    /// The caller's qualifying data (the verifier's nonce).
    pub extra_data: Vec<u8>,
    /// The TPM's clock.
    pub clock_info: ClockInfo,
    /// The TPM vendor's firmware version.
    pub firmware_version: u64,
    /// What was attested.
    pub attested: Attested,
}

impl Attest {
    /// Parses a marshalled TPMS_ATTEST (the `attestationData` the TPM signed, without a TPM2B
    /// size prefix).
    ///
    /// # Errors
    /// [`WireError::NotTpmGenerated`] when the magic is not TPM_GENERATED_VALUE,
    /// [`WireError::Unsupported`] for attestation types other than certify and quote, and the
    /// other [`WireError`]s for truncated, oversized or trailing bytes.
    pub fn parse(tpms_attest: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(STRUCTURE, tpms_attest, MAX_ATTEST_LEN)?;
        let magic = r.u32("magic")?;
        if magic != TPM_GENERATED_VALUE {
            return Err(WireError::NotTpmGenerated { found: magic });
        }
        let attest_type = r.u16("type")?;
        if attest_type != TPM_ST_ATTEST_CERTIFY && attest_type != TPM_ST_ATTEST_QUOTE {
            return Err(r.unsupported(
                "type",
                attest_type,
                "TPM_ST_ATTEST_CERTIFY (0x8017) and TPM_ST_ATTEST_QUOTE (0x8018)",
            ));
        }
        let qualified_signer = r.sized("qualifiedSigner", MAX_NAME_LEN)?.to_vec();
        // TPM2B_DATA holds at most a TPMT_HA: a 2-byte algorithm and a SHA-512 digest.
        let extra_data = r.sized("extraData", MAX_NAME_LEN)?.to_vec();
        let clock_info = clock_info(&mut r)?;
        let firmware_version = r.u64("firmwareVersion")?;
        let attested = if attest_type == TPM_ST_ATTEST_CERTIFY {
            Attested::Certify {
                name: r.sized("attested.certify.name", MAX_NAME_LEN)?.to_vec(),
                qualified_name: r
                    .sized("attested.certify.qualifiedName", MAX_NAME_LEN)?
                    .to_vec(),
            }
        } else {
            Attested::Quote {
                pcr_select: pcr_selections(&mut r)?,
                pcr_digest: r
                    .sized("attested.quote.pcrDigest", MAX_DIGEST_LEN)?
                    .to_vec(),
            }
        };
        r.finish()?;
        Ok(Self {
            qualified_signer,
            extra_data,
            clock_info,
            firmware_version,
            attested,
        })
    }
}

/// TPMS_CLOCK_INFO; `safe` is a TPMI_YES_NO and must be 0 or 1.
fn clock_info(r: &mut Reader<'_>) -> Result<ClockInfo, WireError> {
    let clock = r.u64("clockInfo.clock")?;
    let reset_count = r.u32("clockInfo.resetCount")?;
    let restart_count = r.u32("clockInfo.restartCount")?;
    let safe = match r.u8("clockInfo.safe")? {
        0 => false,
        1 => true,
        other => return Err(r.unsupported("clockInfo.safe", other, "0 (NO) or 1 (YES)")),
    };
    Ok(ClockInfo {
        clock,
        reset_count,
        restart_count,
        safe,
    })
}

/// TPML_PCR_SELECTION: a count, then that many TPMS_PCR_SELECTION.
fn pcr_selections(r: &mut Reader<'_>) -> Result<Vec<PcrSelection>, WireError> {
    let count = r.u32("attested.quote.pcrSelect.count")?;
    if count > MAX_PCR_BANKS {
        return Err(WireError::FieldTooLarge {
            structure: r.structure(),
            field: "attested.quote.pcrSelect.count",
            len: count as usize,
            max: MAX_PCR_BANKS as usize,
        });
    }
    let mut selections = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let hash = r.u16("attested.quote.pcrSelect.hash")?;
        let size = usize::from(r.u8("attested.quote.pcrSelect.sizeofSelect")?);
        if size > MAX_PCR_SELECT_BYTES {
            return Err(WireError::FieldTooLarge {
                structure: r.structure(),
                field: "attested.quote.pcrSelect.sizeofSelect",
                len: size,
                max: MAX_PCR_SELECT_BYTES,
            });
        }
        let bitmap = r.take(size, "attested.quote.pcrSelect.pcrSelect")?;
        let pcrs = (0..size * 8)
            .filter(|&i| bitmap[i / 8] & (1 << (i % 8)) != 0)
            .map(|i| i as u8)
            .collect();
        selections.push(PcrSelection { hash, pcrs });
    }
    Ok(selections)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The common head of a TPMS_ATTEST: magic, type, signer, extra data, clock, firmware.
    pub(crate) fn attest_head(attest_type: u16, extra_data: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&TPM_GENERATED_VALUE.to_be_bytes());
        v.extend_from_slice(&attest_type.to_be_bytes());
        v.extend_from_slice(&[0x00, 0x22, 0x00, 0x0b]);
        v.extend_from_slice(&[0xab; 32]);
        v.extend_from_slice(&(extra_data.len() as u16).to_be_bytes());
        v.extend_from_slice(extra_data);
        v.extend_from_slice(&1234u64.to_be_bytes());
        v.extend_from_slice(&5u32.to_be_bytes());
        v.extend_from_slice(&6u32.to_be_bytes());
        v.push(1);
        v.extend_from_slice(&0x2019_1023_0016_3636u64.to_be_bytes());
        v
    }

    /// A quote over the given SHA-256 selection bitmap with the given digest.
    pub(crate) fn quote(extra_data: &[u8], bitmap: &[u8], digest: &[u8]) -> Vec<u8> {
        let mut v = attest_head(TPM_ST_ATTEST_QUOTE, extra_data);
        v.extend_from_slice(&1u32.to_be_bytes());
        v.extend_from_slice(&TPM_ALG_SHA256.to_be_bytes());
        v.push(bitmap.len() as u8);
        v.extend_from_slice(bitmap);
        v.extend_from_slice(&(digest.len() as u16).to_be_bytes());
        v.extend_from_slice(digest);
        v
    }

    #[test]
    fn a_quote_parses_with_its_clock_and_selection() {
        let bytes = quote(b"nonce", &[0x83, 0x00, 0x01], &[0xcd; 32]);
        let attest = Attest::parse(&bytes).unwrap();
        assert_eq!(attest.extra_data, b"nonce");
        assert_eq!(
            attest.clock_info,
            ClockInfo {
                clock: 1234,
                reset_count: 5,
                restart_count: 6,
                safe: true
            }
        );
        assert_eq!(attest.firmware_version, 0x2019_1023_0016_3636);
        let Attested::Quote {
            pcr_select,
            pcr_digest,
        } = attest.attested
        else {
            panic!("not a quote")
        };
        assert_eq!(
            pcr_select,
            [PcrSelection {
                hash: TPM_ALG_SHA256,
                pcrs: BTreeSet::from([0, 1, 7, 16])
            }]
        );
        assert_eq!(pcr_digest, [0xcd; 32]);
    }

    #[test]
    fn a_certify_parses_with_the_certified_names() {
        let mut bytes = attest_head(TPM_ST_ATTEST_CERTIFY, b"");
        bytes.extend_from_slice(&[0x00, 0x02, 0xaa, 0xbb, 0x00, 0x01, 0xcc]);
        let attest = Attest::parse(&bytes).unwrap();
        assert_eq!(
            attest.attested,
            Attested::Certify {
                name: vec![0xaa, 0xbb],
                qualified_name: vec![0xcc]
            }
        );
    }

    #[test]
    fn a_structure_without_the_tpm_magic_is_refused() {
        let mut bytes = quote(b"", &[1, 0, 0], &[0; 32]);
        bytes[0] = 0x00;
        assert!(matches!(
            Attest::parse(&bytes),
            Err(WireError::NotTpmGenerated { found: 0x0054_4347 })
        ));
    }

    #[test]
    fn other_attestation_types_are_refused() {
        // TPM_ST_ATTEST_TIME.
        let bytes = attest_head(0x8019, b"");
        assert!(matches!(
            Attest::parse(&bytes),
            Err(WireError::Unsupported { field: "type", .. })
        ));
    }

    #[test]
    fn a_safe_flag_other_than_yes_or_no_is_refused() {
        let mut bytes = quote(b"", &[1, 0, 0], &[0; 32]);
        // magic 4, type 2, signer 2 + 34, extraData 2, clock 8, resetCount 4, restartCount 4.
        bytes[60] = 2;
        assert!(matches!(
            Attest::parse(&bytes),
            Err(WireError::Unsupported {
                field: "clockInfo.safe",
                ..
            })
        ));
    }

    #[test]
    fn oversized_selections_are_refused() {
        let bytes = quote(b"", &[1, 0, 0, 0, 0], &[0; 32]);
        assert!(matches!(
            Attest::parse(&bytes),
            Err(WireError::FieldTooLarge {
                field: "attested.quote.pcrSelect.sizeofSelect",
                ..
            })
        ));
        let mut bytes = attest_head(TPM_ST_ATTEST_QUOTE, b"");
        bytes.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            Attest::parse(&bytes),
            Err(WireError::FieldTooLarge {
                field: "attested.quote.pcrSelect.count",
                ..
            })
        ));
    }

    #[test]
    fn every_truncation_and_a_trailing_byte_are_refused() {
        let bytes = quote(b"nonce", &[0x83, 0x00, 0x01], &[0xcd; 32]);
        for len in 0..bytes.len() {
            assert!(Attest::parse(&bytes[..len]).is_err(), "prefix of {len}");
        }
        let mut longer = bytes;
        longer.push(0);
        assert!(matches!(
            Attest::parse(&longer),
            Err(WireError::TrailingBytes { count: 1, .. })
        ));
    }
}
