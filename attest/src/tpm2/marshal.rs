//! Marshalling, the inverse of the parsers: an ECC P-256 TPMT_PUBLIC and a TPMS_ATTEST, bytes
//! as a TPM produces them (big-endian, Part 2). For the software TPM of the `emulator` feature
//! and for tests; central itself only parses.

use super::*;

/// A marshalled ECC NIST P-256 TPMT_PUBLIC with name algorithm SHA-256, the given attributes and
/// signing scheme (e.g. `[0x00, 0x18, 0x00, 0x0b]` for ECDSA-SHA256), an empty authPolicy, no
/// symmetric algorithm, no KDF, and the point `x`, `y` as given.
pub(crate) fn ecc_public_area(attributes: u32, scheme: &[u8], x: &[u8], y: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(22 + scheme.len() + x.len() + y.len());
    v.extend_from_slice(&TPM_ALG_ECC.to_be_bytes());
    v.extend_from_slice(&TPM_ALG_SHA256.to_be_bytes());
    v.extend_from_slice(&attributes.to_be_bytes());
    put_sized(&mut v, &[]); // authPolicy
    v.extend_from_slice(&TPM_ALG_NULL.to_be_bytes()); // symmetric
    v.extend_from_slice(scheme);
    v.extend_from_slice(&TPM_ECC_NIST_P256.to_be_bytes());
    v.extend_from_slice(&TPM_ALG_NULL.to_be_bytes()); // kdf
    put_sized(&mut v, x);
    put_sized(&mut v, y);
    v
}

impl Attest {
    /// The marshalled TPMS_ATTEST, which [`Attest::parse`] reads back as `self`: type certify or
    /// quote after the variant of `attested`. Sized fields must fit their TPM2B limits and PCR
    /// indices must be below 32 (what the parser accepts); each PCR bitmap takes at least the
    /// three bytes TPMs use.
    pub(crate) fn marshal(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(160);
        v.extend_from_slice(&TPM_GENERATED_VALUE.to_be_bytes());
        let attest_type = match self.attested {
            Attested::Certify { .. } => TPM_ST_ATTEST_CERTIFY,
            Attested::Quote { .. } => TPM_ST_ATTEST_QUOTE,
        };
        v.extend_from_slice(&attest_type.to_be_bytes());
        put_sized(&mut v, &self.qualified_signer);
        put_sized(&mut v, &self.extra_data);
        v.extend_from_slice(&self.clock_info.clock.to_be_bytes());
        v.extend_from_slice(&self.clock_info.reset_count.to_be_bytes());
        v.extend_from_slice(&self.clock_info.restart_count.to_be_bytes());
        v.push(u8::from(self.clock_info.safe));
        v.extend_from_slice(&self.firmware_version.to_be_bytes());
        match &self.attested {
            Attested::Certify {
                name,
                qualified_name,
            } => {
                put_sized(&mut v, name);
                put_sized(&mut v, qualified_name);
            }
            Attested::Quote {
                pcr_select,
                pcr_digest,
            } => {
                v.extend_from_slice(&(pcr_select.len() as u32).to_be_bytes());
                for bank in pcr_select {
                    v.extend_from_slice(&bank.hash.to_be_bytes());
                    let highest = bank.pcrs.last().copied().unwrap_or(0);
                    let size = (usize::from(highest) / 8 + 1).max(3);
                    let mut bitmap = vec![0u8; size];
                    for &pcr in &bank.pcrs {
                        bitmap[usize::from(pcr) / 8] |= 1 << (pcr % 8);
                    }
                    v.push(size as u8);
                    v.extend_from_slice(&bitmap);
                }
                put_sized(&mut v, pcr_digest);
            }
        }
        v
    }
}

/// A TPM2B: a 16-bit big-endian size, then the bytes.
fn put_sized(v: &mut Vec<u8>, bytes: &[u8]) {
    debug_assert!(bytes.len() <= usize::from(u16::MAX));
    v.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    v.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn attest(attested: Attested) -> Attest {
        Attest {
            qualified_signer: vec![0x00, 0x0b, 0xab, 0xcd],
            extra_data: b"nonce".to_vec(),
            clock_info: ClockInfo {
                clock: 1234,
                reset_count: 5,
                restart_count: 6,
                safe: true,
            },
            firmware_version: 0x2019_1023_0016_3636,
            attested,
        }
    }

    #[test]
    fn a_marshalled_quote_parses_back_to_itself() {
        let quote = attest(Attested::Quote {
            pcr_select: vec![PcrSelection {
                hash: TPM_ALG_SHA256,
                pcrs: BTreeSet::from([0, 2, 4, 7, 11]),
            }],
            pcr_digest: vec![0xcd; 32],
        });
        let bytes = quote.marshal();
        assert_eq!(Attest::parse(&bytes).unwrap(), quote);
        // count, hash, sizeofSelect 3, bitmap {0,2,4,7} {11} {}, then the digest.
        let selection = &bytes[bytes.len() - 34 - 10..bytes.len() - 34];
        assert_eq!(
            selection,
            [0, 0, 0, 1, 0x00, 0x0b, 3, 0b1001_0101, 0b0000_1000, 0]
        );
    }

    #[test]
    fn a_high_pcr_widens_the_bitmap_to_four_bytes() {
        let quote = attest(Attested::Quote {
            pcr_select: vec![PcrSelection {
                hash: TPM_ALG_SHA256,
                pcrs: BTreeSet::from([31]),
            }],
            pcr_digest: vec![0; 32],
        });
        assert_eq!(Attest::parse(&quote.marshal()).unwrap(), quote);
    }

    #[test]
    fn a_marshalled_certification_parses_back_to_itself() {
        let certify = attest(Attested::Certify {
            name: vec![0x00, 0x0b, 1, 2, 3],
            qualified_name: vec![0x00, 0x0b, 4, 5, 6],
        });
        assert_eq!(Attest::parse(&certify.marshal()).unwrap(), certify);
    }

    #[test]
    fn a_public_area_parses_with_its_attributes_and_point() {
        let area = ecc_public_area(0x0005_0072, &[0x00, 0x18, 0x00, 0x0b], &[1; 32], &[2; 32]);
        let public = TpmPublic::parse(&area).unwrap();
        assert_eq!(public.attributes(), ObjectAttributes(0x0005_0072));
        let PublicKeyParams::Ecc(ecc) = public.key() else {
            panic!("not ECC")
        };
        assert_eq!(
            (ecc.x.as_slice(), ecc.y.as_slice()),
            (&[1; 32][..], &[2; 32][..])
        );
        assert_eq!(ecc.scheme, Scheme::ECDSA_SHA256);
    }
}
