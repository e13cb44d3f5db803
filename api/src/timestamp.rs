//! [`Timestamp`]: a point in time, sent as RFC 3339 and held as Unix seconds.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// A point in time to the second. On the wire it is RFC 3339 in UTC (`2026-01-31T12:00:00Z`);
/// a time outside the years 1 to 9999 goes as its Unix seconds in a string, as central always
/// sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The time `seconds` after the Unix epoch.
    pub const fn from_unix_seconds(seconds: i64) -> Self {
        Self(seconds)
    }

    /// Seconds since the Unix epoch.
    pub const fn unix_seconds(self) -> i64 {
        self.0
    }

    /// Reads RFC 3339 (any offset; fractions of a second are dropped) or Unix seconds.
    pub fn parse(text: &str) -> Option<Self> {
        if let Ok(at) = OffsetDateTime::parse(text, &Rfc3339) {
            return Some(Self(at.unix_timestamp()));
        }
        text.parse().ok().map(Self)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let formatted = OffsetDateTime::from_unix_timestamp(self.0)
            .ok()
            .and_then(|at| at.format(&Rfc3339).ok());
        match formatted {
            Some(text) => f.write_str(&text),
            None => write!(f, "{}", self.0),
        }
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "{text:?} is not an RFC 3339 time like 2026-01-31T12:00:00Z"
            ))
        })
    }
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Timestamp {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, SchemaFormat, Type};
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
            .description(Some(
                "RFC 3339 in UTC, whole seconds (2026-01-31T12:00:00Z)",
            ))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Timestamp {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goes_over_the_wire_as_rfc3339_in_utc() {
        let at = Timestamp::from_unix_seconds(1_700_000_000);
        assert_eq!(
            serde_json::to_string(&at).unwrap(),
            "\"2023-11-14T22:13:20Z\""
        );
        let back: Timestamp = serde_json::from_str("\"2023-11-14T22:13:20Z\"").unwrap();
        assert_eq!(back, at);
    }

    #[test]
    fn reads_other_offsets_and_fractions() {
        let at: Timestamp = serde_json::from_str("\"2023-11-14T23:13:20.75+01:00\"").unwrap();
        assert_eq!(at.unix_seconds(), 1_700_000_000);
    }

    #[test]
    fn times_rfc3339_cannot_hold_go_as_seconds() {
        let far = Timestamp::from_unix_seconds(i64::MAX);
        let text = serde_json::to_string(&far).unwrap();
        assert_eq!(text, format!("\"{}\"", i64::MAX));
        assert_eq!(serde_json::from_str::<Timestamp>(&text).unwrap(), far);
    }

    #[test]
    fn text_that_is_no_time_is_refused() {
        let error = serde_json::from_str::<Timestamp>("\"yesterday\"").unwrap_err();
        assert!(error.to_string().contains("RFC 3339"), "{error}");
    }
}
