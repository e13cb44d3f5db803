//! KDFa (TPM 2.0 Part 1 §11.4.10.2): SP800-108 counter-mode KDF with HMAC, here with SHA-256.

use ring::hmac;
use zeroize::Zeroizing;

/// `N` bytes of KDFa(SHA-256, `key`, `label`, `context_u`, `context_v`, 8 × `N` bits):
/// the concatenation of HMAC(key, counter ‖ label ‖ 0x00 ‖ contextU ‖ contextV ‖ bits) for
/// counter = 1, 2, ... (32-bit big-endian), truncated. `label` is given without its terminating
/// zero octet, which is added here.
pub(crate) fn kdfa_sha256<const N: usize>(
    key: &[u8],
    label: &str,
    context_u: &[u8],
    context_v: &[u8],
) -> Zeroizing<[u8; N]> {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    // N is a key size (16 or 32 bytes here), far below u32::MAX / 8.
    let bits = (N * 8) as u32;
    let mut stream = Zeroizing::new(Vec::with_capacity(N + 32));
    let mut counter: u32 = 1;
    while stream.len() < N {
        let mut ctx = hmac::Context::with_key(&key);
        ctx.update(&counter.to_be_bytes());
        ctx.update(label.as_bytes());
        ctx.update(&[0x00]);
        ctx.update(context_u);
        ctx.update(context_v);
        ctx.update(&bits.to_be_bytes());
        stream.extend_from_slice(ctx.sign().as_ref());
        counter += 1;
    }
    let mut out = Zeroizing::new([0u8; N]);
    out.copy_from_slice(&stream[..N]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    /// The KDFa self-test vector of the TPM reference implementation (libtpms
    /// `KdfTestData.h`, SHA-256 case): a 160-bit output, label "KDFSELFTESTLABEL".
    #[test]
    fn kdfa_matches_the_tpm_reference_self_test_vector() {
        let out = kdfa_sha256::<20>(
            &unhex("271fa08bbdc5060ec3dfa928ff9b73123a12da0c"),
            "KDFSELFTESTLABEL",
            &unhex("ce244f395dca7391"),
            &unhex("da504031ddf12e83"),
        );
        assert_eq!(
            hex::encode(*out),
            "bb0259e1c8ba607e6a2cd704b69a902e9ade84c4"
        );
    }

    /// The two derivations of MakeCredential, checked against OpenSSL's KBKDF (counter mode, HMAC,
    /// SHA-256), which reproduces the reference vector above:
    /// `openssl kdf -keylen 16 -kdfopt mac:HMAC -kdfopt digest:SHA256 -kdfopt hexkey:<seed>
    /// -kdfopt salt:STORAGE -kdfopt hexinfo:<name> KBKDF`.
    #[test]
    fn storage_and_integrity_keys_match_openssl_kbkdf() {
        let seed: Vec<u8> = (1..=32).collect();
        let name = unhex("000b62dd365d69af6a1d893c8e7442acdfa50823e4bced13dd87a4bd1338ea283ca9");
        let storage = kdfa_sha256::<16>(&seed, "STORAGE", &name, &[]);
        assert_eq!(hex::encode(*storage), "bce117ffdb7c7a093001593407e4489a");
        let integrity = kdfa_sha256::<32>(&seed, "INTEGRITY", &[], &[]);
        assert_eq!(
            hex::encode(*integrity),
            "094f9376bf7def7a00894381e0887d107ee8c0f04e09748c5dc96b7be9232c5a"
        );
    }
}
