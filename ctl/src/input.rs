//! Checks of operator input made before anything is sent to central.
//!
//! Each check returns the reason a value is refused; the CLI puts the option name and the value in
//! front of it ("could not read --expires-in '7x': ...").

use thiserror::Error;

use cairn_api::CreateClaim;

/// Why a piece of operator input was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InputError {
    /// A duration without a known unit or number.
    #[error("use a number followed by s, m, h or d (e.g. 30m, 24h, 7d)")]
    DurationFormat,
    /// A duration of zero.
    #[error("the duration must be longer than zero")]
    DurationZero,
    /// A duration too large to count in seconds.
    #[error("the duration is too long")]
    DurationTooLong,
    /// A TPM EK hash that is not 64 hexadecimal characters.
    #[error("a TPM EK hash is the SHA-256 of the endorsement key: 64 hexadecimal characters, {found} given")]
    EkHashLength {
        /// Number of characters given.
        found: usize,
    },
    /// A TPM EK hash with a non-hex character.
    #[error("a TPM EK hash holds only hexadecimal characters (0-9, a-f), found '{found}'")]
    EkHashCharacter {
        /// The first offending character.
        found: char,
    },
    /// A claim with neither or both of serial and EK hash.
    #[error("give exactly one of --serial or --ek")]
    ClaimTarget,
    /// An empty (or all-whitespace) value.
    #[error("the value must not be empty")]
    Empty,
    /// An id with characters an API id never has.
    #[error("ids hold only letters, digits, '_' and '-' (e.g. dev_...)")]
    IdCharacter,
    /// Not `KEY=VALUE` with a non-empty key.
    #[error("use KEY=VALUE, e.g. site=north")]
    KeyValue,
    /// Not two numbers separated by a comma.
    #[error("use LAT,LON in degrees, e.g. 47.37,8.54")]
    Point,
    /// Not three numbers separated by commas.
    #[error("use LAT,LON,KM, e.g. 47.37,8.54,50")]
    Within,
    /// An empty `--since`.
    #[error("give a duration like 30m or an RFC 3339 time like 2026-01-31T12:00:00Z")]
    Since,
    /// An app name the Compose parser would refuse.
    #[error("app names are 1 to 32 lowercase letters, digits, and single '-' or '.' between them (e.g. web-shop)")]
    AppName,
}

/// Reads a duration such as `30s`, `30m`, `24h` or `7d` as a number of seconds.
pub fn parse_duration_seconds(text: &str) -> Result<u64, InputError> {
    let text = text.trim();
    let unit_at = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or(InputError::DurationFormat)?;
    let (number, unit) = text.split_at(unit_at);
    if number.is_empty() {
        return Err(InputError::DurationFormat);
    }
    let multiplier: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 60 * 60,
        "d" => 24 * 60 * 60,
        _ => return Err(InputError::DurationFormat),
    };
    let number: u64 = number.parse().map_err(|_| InputError::DurationTooLong)?;
    let seconds = number
        .checked_mul(multiplier)
        .ok_or(InputError::DurationTooLong)?;
    if seconds == 0 {
        return Err(InputError::DurationZero);
    }
    Ok(seconds)
}

/// Checks a TPM EK hash (SHA-256, hex) and returns it in lowercase, as central stores it.
pub fn parse_ek_sha256(text: &str) -> Result<String, InputError> {
    let text = text.trim();
    if let Some(found) = text.chars().find(|c| !c.is_ascii_hexdigit()) {
        return Err(InputError::EkHashCharacter { found });
    }
    if text.len() != 64 {
        return Err(InputError::EkHashLength { found: text.len() });
    }
    Ok(text.to_ascii_lowercase())
}

/// Builds a claim from the `--serial` and `--ek` options: exactly one must be given.
pub fn claim_from_options(
    serial: Option<&str>,
    ek_sha256: Option<&str>,
) -> Result<CreateClaim, InputError> {
    match (serial, ek_sha256) {
        (Some(serial), None) => Ok(CreateClaim::serial(parse_non_empty(serial)?)),
        (None, Some(ek)) => Ok(CreateClaim::tpm_ek(parse_ek_sha256(ek)?)),
        _ => Err(InputError::ClaimTarget),
    }
}

/// Trims a value and refuses it if nothing is left.
pub fn parse_non_empty(text: &str) -> Result<String, InputError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(InputError::Empty);
    }
    Ok(text.to_owned())
}

/// Checks an app name (the rules of the Compose parser) before it becomes part of a URL path.
pub fn parse_app_name(text: &str) -> Result<String, InputError> {
    let text = text.trim();
    cairn_compose::check_app_name(text).map_err(|_| InputError::AppName)?;
    Ok(text.to_owned())
}

/// Reads `KEY=VALUE` (labels, selectors); the key is trimmed, the value kept as given.
pub fn parse_key_value(text: &str) -> Result<(String, String), InputError> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.to_owned()))
        }
        _ => Err(InputError::KeyValue),
    }
}

/// Comma-separated numbers, exactly `N` of them.
fn numbers<const N: usize>(text: &str) -> Option<[f64; N]> {
    let parsed: Vec<f64> = text
        .split(',')
        .map(|n| n.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .ok()?;
    parsed.try_into().ok()
}

/// Reads `LAT,LON` in degrees.
pub fn parse_point(text: &str) -> Result<(f64, f64), InputError> {
    numbers(text)
        .map(|[lat, lon]| (lat, lon))
        .ok_or(InputError::Point)
}

/// Reads `LAT,LON,KM`.
pub fn parse_within(text: &str) -> Result<(f64, f64, f64), InputError> {
    numbers(text)
        .map(|[lat, lon, km]| (lat, lon, km))
        .ok_or(InputError::Within)
}

/// `--since`: a duration back from `now_ms` becomes Unix milliseconds; anything else goes to
/// central as an RFC 3339 time (central checks it).
pub fn parse_since_at(text: &str, now_ms: i64) -> Result<String, InputError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(InputError::Since);
    }
    if text.starts_with(|c: char| c.is_ascii_digit()) && text.len() <= 12 && !text.contains('-') {
        let seconds = parse_duration_seconds(text)?;
        let back_ms = i64::try_from(seconds)
            .unwrap_or(i64::MAX)
            .saturating_mul(1000);
        return Ok(now_ms.saturating_sub(back_ms).max(0).to_string());
    }
    Ok(text.to_owned())
}

/// [`parse_since_at`] from the current time.
pub fn parse_since(text: &str) -> Result<String, InputError> {
    parse_since_at(text, now_unix_ms())
}

/// The current time in Unix milliseconds (0 before 1970).
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Checks an object id (`dev_...`, `tok_...`) before it becomes part of a URL path.
pub fn parse_id(text: &str) -> Result<String, InputError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(InputError::Empty);
    }
    if !text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(InputError::IdCharacter);
    }
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_names_follow_the_app_spec_rules() {
        for ok in ["web", "web-shop", "db.main", "a1"] {
            assert_eq!(parse_app_name(ok), Ok(ok.to_owned()), "{ok}");
        }
        let long = "a".repeat(33);
        let bad = [
            "", "Web", "web_1", "-web", "web.", "a..b", "a-.b", "../x", &long,
        ];
        for bad in bad {
            assert_eq!(parse_app_name(bad), Err(InputError::AppName), "{bad}");
        }
    }

    #[test]
    fn key_values_points_and_circles() {
        assert_eq!(
            parse_key_value(" site =north=1"),
            Ok(("site".into(), "north=1".into()))
        );
        assert_eq!(parse_key_value("=x"), Err(InputError::KeyValue));
        assert_eq!(parse_key_value("novalue"), Err(InputError::KeyValue));
        assert_eq!(parse_point("-33.9, 18.4"), Ok((-33.9, 18.4)));
        assert_eq!(parse_point("1"), Err(InputError::Point));
        assert_eq!(parse_point("a,b"), Err(InputError::Point));
        assert_eq!(parse_within("-33.9,18.4,50"), Ok((-33.9, 18.4, 50.0)));
        assert_eq!(parse_within("1,2"), Err(InputError::Within));
    }

    #[test]
    fn since_is_a_duration_back_or_a_time_passed_on() {
        assert_eq!(parse_since_at("10m", 1_000_000), Ok("400000".into()));
        assert_eq!(parse_since_at("30d", 1_000), Ok("0".into()));
        assert_eq!(
            parse_since_at("2026-01-31T12:00:00Z", 0),
            Ok("2026-01-31T12:00:00Z".into())
        );
        assert_eq!(
            parse_since_at("10 parsecs", 0),
            Err(InputError::DurationFormat)
        );
        assert_eq!(parse_since_at("", 0), Err(InputError::Since));
    }

    #[test]
    fn durations_in_every_unit() {
        assert_eq!(parse_duration_seconds("3600s"), Ok(3600));
        assert_eq!(parse_duration_seconds("30m"), Ok(1800));
        assert_eq!(parse_duration_seconds("24h"), Ok(86_400));
        assert_eq!(parse_duration_seconds("7d"), Ok(604_800));
        assert_eq!(parse_duration_seconds(" 1d "), Ok(86_400));
    }

    #[test]
    fn durations_refused() {
        for bad in ["7x", "7", "d", "", "-1d", "1.5h", "1 d", "7dd", "1H"] {
            assert_eq!(
                parse_duration_seconds(bad),
                Err(InputError::DurationFormat),
                "{bad:?}"
            );
        }
        assert_eq!(parse_duration_seconds("0h"), Err(InputError::DurationZero));
        assert_eq!(
            parse_duration_seconds("99999999999999999999s"),
            Err(InputError::DurationTooLong)
        );
        assert_eq!(
            parse_duration_seconds("999999999999999999d"),
            Err(InputError::DurationTooLong)
        );
    }

    #[test]
    fn ek_hash_is_64_hex_and_lowercased() {
        let upper = "AB".repeat(32);
        assert_eq!(parse_ek_sha256(&upper), Ok("ab".repeat(32)));
        assert_eq!(
            parse_ek_sha256("abc"),
            Err(InputError::EkHashLength { found: 3 })
        );
        assert_eq!(
            parse_ek_sha256(&"a".repeat(65)),
            Err(InputError::EkHashLength { found: 65 })
        );
        let with_g = format!("{}g", "a".repeat(63));
        assert_eq!(
            parse_ek_sha256(&with_g),
            Err(InputError::EkHashCharacter { found: 'g' })
        );
    }

    #[test]
    fn claim_needs_exactly_one_target() {
        let ek = "0".repeat(64);
        assert_eq!(
            claim_from_options(Some(" SN-1 "), None),
            Ok(CreateClaim::serial("SN-1"))
        );
        assert_eq!(
            claim_from_options(None, Some(&ek)),
            Ok(CreateClaim::tpm_ek(ek.clone()))
        );
        assert_eq!(
            claim_from_options(Some("SN-1"), Some(&ek)),
            Err(InputError::ClaimTarget)
        );
        assert_eq!(claim_from_options(None, None), Err(InputError::ClaimTarget));
        assert_eq!(claim_from_options(Some("  "), None), Err(InputError::Empty));
        assert_eq!(
            claim_from_options(None, Some("xyz")),
            Err(InputError::EkHashCharacter { found: 'x' })
        );
    }

    #[test]
    fn ids_cannot_escape_the_url_path() {
        assert_eq!(parse_id("dev_01HX-a"), Ok("dev_01HX-a".into()));
        assert_eq!(parse_id("../tokens"), Err(InputError::IdCharacter));
        assert_eq!(parse_id("dev_1?x=1"), Err(InputError::IdCharacter));
        assert_eq!(parse_id(""), Err(InputError::Empty));
    }
}
