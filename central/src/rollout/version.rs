//! OS versions compared as the agents compare them (`cairn_proto::version`): dotted numbers,
//! missing parts count as 0 (`1.2` = `1.2.0`), a `-` or `+` suffix is ignored for ordering. One
//! rule on both sides, so central's downgrade check and the device's refusal agree.

use std::cmp::Ordering;

pub use cairn_proto::version::BadVersion as VersionError;

/// A parsed OS version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsVersion(Vec<u64>);

impl OsVersion {
    /// Parse `text`.
    pub fn parse(text: &str) -> Result<Self, VersionError> {
        cairn_proto::version::parse(text).map(Self)
    }
}

impl Ord for OsVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        let len = self.0.len().max(other.0.len());
        let at = |v: &[u64], i: usize| v.get(i).copied().unwrap_or(0);
        (0..len)
            .map(|i| at(&self.0, i).cmp(&at(&other.0, i)))
            .find(|o| o.is_ne())
            .unwrap_or(Ordering::Equal)
    }
}

impl PartialOrd for OsVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Compare two version strings.
pub fn compare(a: &str, b: &str) -> Result<Ordering, VersionError> {
    cairn_proto::version::compare(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotted_numbers_compare_numerically() {
        assert_eq!(compare("1.10", "1.9"), Ok(Ordering::Greater));
        assert_eq!(compare("1.2", "1.2.0"), Ok(Ordering::Equal));
        assert_eq!(compare("2.0+build7", "2.0"), Ok(Ordering::Equal));
        assert_eq!(compare("0.9", "1.0"), Ok(Ordering::Less));
        let (a, b) = (
            OsVersion::parse("1.10").unwrap(),
            OsVersion::parse("1.9.9").unwrap(),
        );
        assert!(a > b);
    }

    #[test]
    fn unparsable_versions_say_why() {
        for bad in ["", "test", "1..2", "1.x"] {
            let e = OsVersion::parse(bad).unwrap_err();
            assert!(e.to_string().contains("dotted numbers"), "{bad}: {e}");
        }
    }
}
