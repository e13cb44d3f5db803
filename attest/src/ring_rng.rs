//! ring's system random number generator as the `rand_core` generator the `rsa` crate takes.

use ring::rand::SecureRandom;
use rsa::rand_core::{CryptoRng, RngCore};

/// `rng` for the `rsa` crate. `RngCore` cannot report failure, so a failure is remembered in
/// [`RingRng::failed`] and the caller discards what was made with it.
pub(crate) struct RingRng<'a> {
    rng: &'a dyn SecureRandom,
    failed: bool,
}

impl<'a> RingRng<'a> {
    /// Wraps `rng`; nothing has failed yet.
    pub(crate) fn new(rng: &'a dyn SecureRandom) -> Self {
        Self { rng, failed: false }
    }

    /// Whether any draw failed (its bytes were then not random).
    pub(crate) fn failed(&self) -> bool {
        self.failed
    }
}

impl RngCore for RingRng<'_> {
    fn next_u32(&mut self) -> u32 {
        let mut bytes = [0u8; 4];
        self.fill_bytes(&mut bytes);
        u32::from_le_bytes(bytes)
    }

    fn next_u64(&mut self) -> u64 {
        let mut bytes = [0u8; 8];
        self.fill_bytes(&mut bytes);
        u64::from_le_bytes(bytes)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        if self.rng.fill(dest).is_err() {
            self.failed = true;
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rsa::rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for RingRng<'_> {}
