//! The data partition's keys: the 256-bit disk key (sealed in the TPM) and the human-typable
//! recovery key (escrowed to central). Both are zeroed on drop and never printed by `Debug`.

use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

/// Length of the disk key in bytes (256 bits).
pub const DISK_KEY_LEN: usize = 32;
/// Number of groups in a recovery key.
const RECOVERY_GROUPS: usize = 8;
/// Digits per recovery key group.
const GROUP_DIGITS: usize = 6;
/// Each group is 11 x a 16-bit value: divisibility by 11 catches a mistyped digit.
const GROUP_CHECK: u32 = 11;

/// Failures making or parsing keys.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The system random number generator failed.
    #[error("the system random number generator failed; the kernel's getrandom() is unavailable, check the kernel and seccomp policy")]
    Random,

    /// A typed recovery key is not well-formed.
    #[error("not a valid recovery key: {reason}; type the 8 groups of 6 digits exactly as escrowed (dashes and spaces are optional)")]
    BadRecoveryKey {
        /// What is wrong (never the key itself).
        reason: String,
    },
}

/// The 256-bit random key of the LUKS2 keyslot 0, sealed in the TPM.
pub struct DiskKey(Zeroizing<[u8; DISK_KEY_LEN]>);

impl DiskKey {
    /// The key bytes, for cryptsetup's stdin or sealing.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_slice()
    }

    /// A disk key from exactly 32 bytes (e.g. just unsealed from the TPM); `None` for any other
    /// length.
    pub fn from_bytes(bytes: &[u8]) -> Option<DiskKey> {
        let mut key = Zeroizing::new([0u8; DISK_KEY_LEN]);
        if bytes.len() != DISK_KEY_LEN {
            return None;
        }
        key.copy_from_slice(bytes);
        Some(DiskKey(key))
    }
}

impl std::fmt::Debug for DiskKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DiskKey(<redacted>)")
    }
}

/// Make a new 256-bit disk key from the system CSPRNG (ring's `SystemRandom`, getrandom()).
///
/// # Errors
/// [`KeyError::Random`] when the CSPRNG fails.
pub fn generate_disk_key() -> Result<DiskKey, KeyError> {
    let mut key = Zeroizing::new([0u8; DISK_KEY_LEN]);
    SystemRandom::new()
        .fill(key.as_mut_slice())
        .map_err(|_| KeyError::Random)?;
    Ok(DiskKey(key))
}

/// A recovery key: 8 groups of 6 digits, `123456-234567-...` (BitLocker style). Each group is
/// 11 x a random 16-bit number, so the key carries 128 bits of entropy and a mistyped group is
/// caught before it is tried against the disk.
///
/// The canonical text (with dashes) is the LUKS passphrase of keyslot 1, so it can also be typed
/// at a `systemd-cryptsetup` or `cryptsetup open` prompt by hand.
pub struct RecoveryKey(Zeroizing<String>);

impl RecoveryKey {
    /// Parse a typed recovery key: 48 digits in 8 groups of 6; spaces and dashes anywhere are
    /// ignored.
    ///
    /// # Errors
    /// [`KeyError::BadRecoveryKey`] naming the first wrong group (never echoing the key).
    pub fn parse(typed: &str) -> Result<RecoveryKey, KeyError> {
        let bad = |reason: String| KeyError::BadRecoveryKey { reason };
        let digits: Zeroizing<Vec<u8>> = Zeroizing::new(
            typed
                .bytes()
                .filter(|b| !matches!(b, b' ' | b'-' | b'\t' | b'\n' | b'\r'))
                .collect(),
        );
        if let Some(pos) = digits.iter().position(|b| !b.is_ascii_digit()) {
            return Err(bad(format!("character {} is not a digit", pos + 1)));
        }
        if digits.len() != RECOVERY_GROUPS * GROUP_DIGITS {
            return Err(bad(format!(
                "{} digits, expected {}",
                digits.len(),
                RECOVERY_GROUPS * GROUP_DIGITS
            )));
        }
        let mut groups = Zeroizing::new([0u16; RECOVERY_GROUPS]);
        for (i, chunk) in digits.chunks(GROUP_DIGITS).enumerate() {
            let value = chunk
                .iter()
                .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'));
            if value % GROUP_CHECK != 0 || value / GROUP_CHECK > u32::from(u16::MAX) {
                return Err(bad(format!("group {} is mistyped", i + 1)));
            }
            groups[i] = (value / GROUP_CHECK) as u16;
        }
        Ok(Self::from_groups(&groups))
    }

    fn from_groups(groups: &[u16; RECOVERY_GROUPS]) -> RecoveryKey {
        let mut text = Zeroizing::new(String::with_capacity(RECOVERY_GROUPS * (GROUP_DIGITS + 1)));
        for (i, group) in groups.iter().enumerate() {
            if i > 0 {
                text.push('-');
            }
            let value = u32::from(*group) * GROUP_CHECK;
            // Digit by digit: format! would leave copies of the key in temporary Strings.
            for power in (0..GROUP_DIGITS as u32).rev() {
                let digit = (value / 10u32.pow(power)) % 10;
                text.push(char::from(b'0' + digit as u8));
            }
        }
        RecoveryKey(text)
    }

    /// The canonical text, `dddddd-dddddd-...`: show it once to escrow it, never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The LUKS passphrase bytes (the canonical text).
    pub(crate) fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl std::fmt::Debug for RecoveryKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecoveryKey(<redacted>)")
    }
}

/// Make a new recovery key (128 bits from the system CSPRNG).
///
/// # Errors
/// [`KeyError::Random`] when the CSPRNG fails.
pub fn generate_recovery_key() -> Result<RecoveryKey, KeyError> {
    let mut bytes = Zeroizing::new([0u8; RECOVERY_GROUPS * 2]);
    SystemRandom::new()
        .fill(bytes.as_mut_slice())
        .map_err(|_| KeyError::Random)?;
    let mut groups = Zeroizing::new([0u16; RECOVERY_GROUPS]);
    for (group, pair) in groups.iter_mut().zip(bytes.chunks_exact(2)) {
        *group = u16::from_be_bytes([pair[0], pair[1]]);
    }
    Ok(RecoveryKey::from_groups(&groups))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_keys_are_random_and_redacted() {
        let a = generate_disk_key().unwrap();
        let b = generate_disk_key().unwrap();
        assert_eq!(a.as_bytes().len(), 32);
        assert_ne!(a.as_bytes(), b.as_bytes());
        assert_eq!(format!("{a:?}"), "DiskKey(<redacted>)");
        assert!(DiskKey::from_bytes(&[1; 31]).is_none());
        assert_eq!(DiskKey::from_bytes(&[1; 32]).unwrap().as_bytes(), &[1; 32]);
    }

    #[test]
    fn recovery_keys_have_the_bitlocker_shape_and_round_trip() {
        let key = generate_recovery_key().unwrap();
        let text = key.expose();
        assert_eq!(text.len(), 8 * 6 + 7);
        for group in text.split('-') {
            assert_eq!(group.len(), 6);
            assert_eq!(group.parse::<u32>().unwrap() % 11, 0);
        }
        assert_eq!(RecoveryKey::parse(text).unwrap().expose(), text);
        // Spaces instead of dashes, no separators at all: the same key.
        let spaced = text.replace('-', " ");
        assert_eq!(RecoveryKey::parse(&spaced).unwrap().expose(), text);
        let packed = text.replace('-', "");
        assert_eq!(RecoveryKey::parse(&packed).unwrap().expose(), text);
        assert_ne!(generate_recovery_key().unwrap().expose(), text);
        assert_eq!(format!("{key:?}"), "RecoveryKey(<redacted>)");
    }

    #[test]
    fn known_groups_format_with_leading_zeros() {
        let key = RecoveryKey::from_groups(&[0, 1, 9, 65535, 4, 5, 6, 7]);
        assert_eq!(
            key.expose(),
            "000000-000011-000099-720885-000044-000055-000066-000077"
        );
    }

    #[test]
    fn a_mistyped_group_is_named_without_echoing_the_key() {
        let text = "000000-000011-000099-720885-000044-000055-000066-000077";
        let typo = text.replace("000099", "000098");
        let err = RecoveryKey::parse(&typo).unwrap_err().to_string();
        assert!(err.contains("group 3 is mistyped"), "{err}");
        assert!(!err.contains("000098"), "{err}");
        // 11 * 65536 = 720896 is above the 16-bit range.
        let big = text.replace("720885", "720896");
        assert!(RecoveryKey::parse(&big)
            .unwrap_err()
            .to_string()
            .contains("group 4"));
        assert!(RecoveryKey::parse("12345")
            .unwrap_err()
            .to_string()
            .contains("5 digits"));
        assert!(RecoveryKey::parse(&text.replace('1', "x"))
            .unwrap_err()
            .to_string()
            .contains("not a digit"));
    }
}
