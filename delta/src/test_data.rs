//! Deterministic test inputs shared by the unit tests.

/// `len` pseudo-random (incompressible, xorshift64*) bytes from `seed`.
pub(crate) fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// `data` with an insertion at 1/4, a deletion at 1/2 and a change at 3/4 of its length.
pub(crate) fn with_edits(data: &[u8]) -> Vec<u8> {
    let n = data.len();
    let mut out = Vec::with_capacity(n + 4096);
    out.extend_from_slice(&data[..n / 4]);
    out.extend_from_slice(&random_bytes(99, 1000));
    out.extend_from_slice(&data[n / 4..n / 2]);
    out.extend_from_slice(&data[n / 2 + 5000..3 * n / 4]);
    out.extend_from_slice(&random_bytes(98, 4096));
    out.extend_from_slice(&data[3 * n / 4 + 4096..]);
    out
}
