//! Minimal DER for TPM keys, shared by the verifier and the device (`cairn-tpm` uses these too,
//! so the EK hash central computes equals `cairn_tpm::ek_public_sha256` on the device):
//! SubjectPublicKeyInfo of an EC P-256 point and of an RSA key (minimal positive INTEGERs), the
//! ECDSA signature value, and the length of a DER SEQUENCE with padding after it.

/// `id-ecPublicKey` (1.2.840.10045.2.1), encoded OBJECT IDENTIFIER.
const OID_EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// `prime256v1` / secp256r1 (1.2.840.10045.3.1.7), encoded OBJECT IDENTIFIER.
const OID_PRIME256V1: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// `rsaEncryption` (1.2.840.113549.1.1.1), encoded OBJECT IDENTIFIER.
const OID_RSA_ENCRYPTION: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
];
/// Encoded NULL (the RSA algorithm parameters).
const NULL: &[u8] = &[0x05, 0x00];

const TAG_INTEGER: u8 = 0x02;
const TAG_BIT_STRING: u8 = 0x03;
const TAG_SEQUENCE: u8 = 0x30;

/// Size in bytes of a P-256 field element.
pub const P256_COORDINATE_LEN: usize = 32;

/// Append a DER length (short form below 128, long form otherwise).
fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
        return;
    }
    let bytes = len.to_be_bytes();
    let first = bytes
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(bytes.len() - 1);
    let significant = &bytes[first..];
    out.push(0x80 | significant.len() as u8);
    out.extend_from_slice(significant);
}

/// One TLV: `tag`, DER length, `content`.
pub(crate) fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    push_len(&mut out, content.len());
    out.extend_from_slice(content);
    out
}

/// SEQUENCE of already-encoded elements.
fn sequence(elements: &[&[u8]]) -> Vec<u8> {
    tlv(TAG_SEQUENCE, &elements.concat())
}

/// `value` without its leading zero bytes (empty for zero).
pub(crate) fn strip_leading_zeros(value: &[u8]) -> &[u8] {
    let first = value.iter().position(|&b| b != 0).unwrap_or(value.len());
    &value[first..]
}

/// INTEGER holding the unsigned big-endian `magnitude`: leading zero bytes removed, one 0x00 added
/// when the top bit is set (so it stays positive), zero encoded as a single 0x00.
fn unsigned_integer(magnitude: &[u8]) -> Vec<u8> {
    let trimmed = strip_leading_zeros(magnitude);
    let mut content = Vec::with_capacity(trimmed.len() + 1);
    if trimmed.first().is_none_or(|&b| b & 0x80 != 0) {
        content.push(0x00);
    }
    content.extend_from_slice(trimmed);
    tlv(TAG_INTEGER, &content)
}

/// BIT STRING with no unused bits.
fn bit_string(bytes: &[u8]) -> Vec<u8> {
    let mut content = Vec::with_capacity(bytes.len() + 1);
    content.push(0x00);
    content.extend_from_slice(bytes);
    tlv(TAG_BIT_STRING, &content)
}

/// Left-pad a big-endian value to `len` bytes (the TPM may drop leading zero bytes). `None` when
/// the value (without leading zeros) is longer than `len`.
pub fn left_pad(value: &[u8], len: usize) -> Option<Vec<u8>> {
    let significant = strip_leading_zeros(value);
    if significant.len() > len {
        return None;
    }
    let mut out = vec![0u8; len - significant.len()];
    out.extend_from_slice(significant);
    Some(out)
}

/// The uncompressed SEC1 point `04 || x || y`; `x` and `y` must be 32 bytes each.
pub(crate) fn uncompressed_point(x: &[u8], y: &[u8]) -> Vec<u8> {
    debug_assert_eq!(x.len(), P256_COORDINATE_LEN);
    debug_assert_eq!(y.len(), P256_COORDINATE_LEN);
    let mut point = Vec::with_capacity(1 + x.len() + y.len());
    point.push(0x04);
    point.extend_from_slice(x);
    point.extend_from_slice(y);
    point
}

/// SubjectPublicKeyInfo for a P-256 public key: `id-ecPublicKey` with `prime256v1`, and the
/// uncompressed point `04 || x || y`. `x` and `y` must be exactly 32 bytes.
pub fn spki_ec_p256(x: &[u8], y: &[u8]) -> Vec<u8> {
    let algorithm = sequence(&[OID_EC_PUBLIC_KEY, OID_PRIME256V1]);
    sequence(&[&algorithm, &bit_string(&uncompressed_point(x, y))])
}

/// SubjectPublicKeyInfo for an RSA public key: `rsaEncryption` with NULL parameters, and
/// `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }`.
pub fn spki_rsa(modulus: &[u8], exponent: u32) -> Vec<u8> {
    let rsa_public_key = sequence(&[
        &unsigned_integer(modulus),
        &unsigned_integer(&exponent.to_be_bytes()),
    ]);
    let algorithm = sequence(&[OID_RSA_ENCRYPTION, NULL]);
    sequence(&[&algorithm, &bit_string(&rsa_public_key)])
}

/// The length (header and content) of the DER SEQUENCE that `bytes` start with, so padding after
/// it can be cut off (TPM NV areas are often larger than the certificate they hold). `None` when
/// `bytes` do not start with a definite-length SEQUENCE that fits.
pub fn outer_sequence_len(bytes: &[u8]) -> Option<usize> {
    let (&tag, rest) = bytes.split_first()?;
    let (&first, rest) = rest.split_first()?;
    if tag != TAG_SEQUENCE {
        return None;
    }
    let (content_len, header_len) = match first {
        0..=0x7f => (usize::from(first), 2),
        // Long form: 1..=4 length octets (a certificate is far below 4 GiB); 0x80 is indefinite.
        0x81..=0x84 => {
            let count = usize::from(first & 0x7f);
            let octets = rest.get(..count)?;
            let len = octets
                .iter()
                .fold(0usize, |len, &octet| (len << 8) | usize::from(octet));
            (len, 2 + count)
        }
        _ => return None,
    };
    let total = header_len.checked_add(content_len)?;
    (total <= bytes.len()).then_some(total)
}

/// `Ecdsa-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER }` from big-endian `r` and `s`.
pub fn ecdsa_signature(r: &[u8], s: &[u8]) -> Vec<u8> {
    sequence(&[&unsigned_integer(r), &unsigned_integer(s)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_use_the_short_form_below_128_and_the_long_form_above() {
        let enc = |n| {
            let mut v = Vec::new();
            push_len(&mut v, n);
            v
        };
        assert_eq!(enc(0), [0x00]);
        assert_eq!(enc(127), [0x7f]);
        assert_eq!(enc(128), [0x81, 0x80]);
        assert_eq!(enc(256), [0x82, 0x01, 0x00]);
    }

    #[test]
    fn integers_follow_the_minimal_positive_encoding() {
        assert_eq!(unsigned_integer(&[]), [0x02, 0x01, 0x00]);
        assert_eq!(unsigned_integer(&[0x00, 0x00]), [0x02, 0x01, 0x00]);
        assert_eq!(unsigned_integer(&[0x7f]), [0x02, 0x01, 0x7f]);
        assert_eq!(unsigned_integer(&[0x80]), [0x02, 0x02, 0x00, 0x80]);
        assert_eq!(
            unsigned_integer(&[0x00, 0x00, 0x80]),
            [0x02, 0x02, 0x00, 0x80]
        );
        assert_eq!(
            unsigned_integer(&65537u32.to_be_bytes()),
            [0x02, 0x03, 0x01, 0x00, 0x01]
        );
    }

    #[test]
    fn ec_p256_spki_has_the_standard_prefix() {
        let der = spki_ec_p256(&[0x11; 32], &[0x22; 32]);
        assert_eq!(der.len(), 91);
        assert_eq!(
            hex::encode(&der[..27]),
            "3059301306072a8648ce3d020106082a8648ce3d03010703420004"
        );
    }

    #[test]
    fn rsa_2048_spki_has_the_layout_of_openssl() {
        let mut modulus = vec![0xc5u8; 256];
        modulus[255] = 0x01;
        let der = spki_rsa(&modulus, 65537);
        let prefix = "30820122300d06092a864886f70d01010105000382010f003082010a0282010100";
        assert_eq!(hex::encode(&der[..prefix.len() / 2]), prefix);
        assert_eq!(&der[33..289], &modulus[..]);
        assert_eq!(hex::encode(&der[289..]), "0203010001");
    }

    #[test]
    fn left_pad_restores_a_fixed_width() {
        assert_eq!(left_pad(&[1, 2], 4).unwrap(), [0, 0, 1, 2]);
        assert_eq!(left_pad(&[0, 0, 0, 1, 2], 4).unwrap(), [0, 0, 1, 2]);
        assert!(left_pad(&[1, 2, 3, 4, 5], 4).is_none());
    }

    #[test]
    fn ecdsa_signature_handles_high_bits_and_leading_zeros() {
        let r = [0x80u8; 32];
        let mut s = [0x01u8; 32];
        s[0] = 0x00;
        s[1] = 0x00;
        let der = ecdsa_signature(&r, &s);
        // r: 33 content bytes (leading 00), s: 30 bytes (two zeros stripped).
        assert_eq!(der[0], 0x30);
        assert_eq!(der[1] as usize, der.len() - 2);
        assert_eq!(&der[2..5], &[0x02, 33, 0x00]);
        assert_eq!(&der[5..37], &r);
        assert_eq!(&der[37..39], &[0x02, 30]);
        assert_eq!(&der[39..], &s[2..]);
    }

    #[test]
    fn outer_sequence_len_cuts_padding_and_refuses_the_rest() {
        let short = sequence(&[&unsigned_integer(&[5])]);
        assert_eq!(outer_sequence_len(&short), Some(5));
        let long = spki_rsa(&[0xc5u8; 256], 65537);
        let mut padded = long.clone();
        padded.extend_from_slice(&[0xff; 100]);
        assert_eq!(outer_sequence_len(&padded), Some(long.len()));
        padded[long.len()..].fill(0);
        assert_eq!(outer_sequence_len(&padded), Some(long.len()));
        // Truncated, not a SEQUENCE, indefinite length, empty.
        assert_eq!(outer_sequence_len(&long[..long.len() - 1]), None);
        assert_eq!(outer_sequence_len(&long[..3]), None);
        assert_eq!(outer_sequence_len(&[0x02, 0x01, 0x00]), None);
        assert_eq!(outer_sequence_len(&[0x30, 0x80, 0x00, 0x00]), None);
        assert_eq!(outer_sequence_len(&[0x30]), None);
        assert_eq!(outer_sequence_len(&[]), None);
        assert_eq!(outer_sequence_len(&[0xff; 16]), None);
    }
}
