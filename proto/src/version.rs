//! OS versions as agents and central compare them: dotted numbers (`0.2.0`, `1.10`), optionally
//! followed by `-` or `+` and a suffix that is ignored for ordering (`0.2.0-rc1` == `0.2.0`).
//! Shared so that the device refusing a downgrade and central planning a rollout agree.

use std::cmp::Ordering;

/// A version string that is not dotted numbers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("version {0:?} is not dotted numbers (like 1.2.3); set `[target] version` in the image recipe to that form")]
pub struct BadVersion(pub String);

/// The numeric parts of `version` (at most 8, each fits u64).
pub fn parse(version: &str) -> Result<Vec<u64>, BadVersion> {
    let bad = || BadVersion(version.to_string());
    let core = version.split(['-', '+']).next().unwrap_or_default();
    if core.is_empty() || version.len() > 64 {
        return Err(bad());
    }
    let parts = core
        .split('.')
        .map(|p| {
            (!p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                .then(|| p.parse::<u64>().ok())
                .flatten()
                .ok_or_else(bad)
        })
        .collect::<Result<Vec<u64>, BadVersion>>()?;
    if parts.len() > 8 {
        return Err(bad());
    }
    Ok(parts)
}

/// Compare two versions numerically, part by part (missing parts are 0: `1.2` == `1.2.0`).
pub fn compare(a: &str, b: &str) -> Result<Ordering, BadVersion> {
    let (a, b) = (parse(a)?, parse(b)?);
    let len = a.len().max(b.len());
    let at = |v: &[u64], i: usize| v.get(i).copied().unwrap_or(0);
    Ok((0..len)
        .map(|i| at(&a, i).cmp(&at(&b, i)))
        .find(|o| o.is_ne())
        .unwrap_or(Ordering::Equal))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_numerically() {
        assert_eq!(compare("0.10.0", "0.9.9"), Ok(Ordering::Greater));
        assert_eq!(compare("1.2", "1.2.0"), Ok(Ordering::Equal));
        assert_eq!(compare("0.2.0-rc1", "0.2.0"), Ok(Ordering::Equal));
        assert_eq!(compare("0.1.0", "0.2.0"), Ok(Ordering::Less));
        assert!(compare("", "1").is_err());
        assert!(compare("1..2", "1").is_err());
        assert!(compare("v1.2", "1").is_err());
        assert!(compare("99999999999999999999999", "1").is_err());
    }
}
