//! What operators write: a deployment's placement, labels, and the names of sites and regions.

use std::collections::BTreeMap;

use super::geo::{self, Point, PointGeo};
use super::PlacementError;

/// Most labels on a site or a device.
pub const MAX_LABELS: usize = 64;
/// Most sites named in a selector, and most deployments in `avoid`.
pub const MAX_LIST: usize = 256;
/// Most hosts per site.
pub const MAX_HOSTS_PER_SITE: u32 = 1000;

/// Labels: short keys and values (`region=eu`, `gpu=yes`).
pub type Labels = BTreeMap<String, String>;

pub use cairn_api::{DeviceSelector, Placement, SiteSelector, Within};

/// The centre of a [`Within`] circle.
pub fn centre(within: &Within) -> Point {
    Point {
        latitude: within.latitude,
        longitude: within.longitude,
    }
}

/// Checks of a [`Placement`] and which sites and devices it selects.
pub trait PlacementRules {
    /// Check ranges and names (whether named sites and regions exist is checked by the caller).
    fn validate(&self) -> Result<(), PlacementError>;

    /// Whether a site with these labels, name and location is selected (`region` is the
    /// selector's region polygon, looked up by the caller).
    fn selects_site(
        &self,
        name: &str,
        labels: &Labels,
        location: &Point,
        region: Option<&[Point]>,
    ) -> bool;

    /// Whether a device with these labels may run it (site aside).
    fn selects_device(&self, labels: &Labels) -> bool;
}

impl PlacementRules for Placement {
    fn validate(&self) -> Result<(), PlacementError> {
        if self.hosts_per_site == 0 || self.hosts_per_site > MAX_HOSTS_PER_SITE {
            return Err(PlacementError::Invalid(format!(
                "`placement.hosts_per_site` must be 1 to {MAX_HOSTS_PER_SITE}; got {}",
                self.hosts_per_site
            )));
        }
        validate_labels("placement.sites.labels", &self.sites.labels)?;
        validate_labels("placement.devices.labels", &self.devices.labels)?;
        if let Some(names) = &self.sites.names {
            if names.is_empty() || names.len() > MAX_LIST {
                return Err(PlacementError::Invalid(format!(
                    "`placement.sites.names` must list 1 to {MAX_LIST} sites (leave it out for every site)"
                )));
            }
            for name in names {
                validate_name("placement.sites.names", name)?;
            }
        }
        if let Some(region) = &self.sites.region {
            validate_name("placement.sites.region", region)?;
        }
        if let Some(within) = &self.sites.within {
            centre(within)
                .validate("placement.sites.within")
                .map_err(PlacementError::Geo)?;
            geo::validate_km(within.km).map_err(PlacementError::Geo)?;
        }
        if self.avoid.len() > MAX_LIST {
            return Err(PlacementError::Invalid(format!(
                "`placement.avoid` lists at most {MAX_LIST} deployments"
            )));
        }
        Ok(())
    }

    fn selects_site(
        &self,
        name: &str,
        labels: &Labels,
        location: &Point,
        region: Option<&[Point]>,
    ) -> bool {
        let s = &self.sites;
        s.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && s.names
                .as_ref()
                .is_none_or(|names| names.iter().any(|n| n == name))
            && (s.region.is_none()
                || region.is_some_and(|polygon| geo::polygon_contains(polygon, location)))
            && s.within
                .is_none_or(|w| centre(&w).distance_km(location) <= w.km)
    }

    fn selects_device(&self, labels: &Labels) -> bool {
        self.devices
            .labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// Site and region names: 1-63 lower-case letters, digits and `-`, starting with a letter or
/// digit (they appear in URLs and tables).
pub fn validate_name(field: &str, name: &str) -> Result<(), PlacementError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(PlacementError::Invalid(format!(
            "`{field}` {name:?} must be 1-63 lower-case letters, digits and '-', not starting with '-' (e.g. zurich-1)"
        )))
    }
}

/// Labels: at most [`MAX_LABELS`]; keys 1-63 of letters, digits, `-`, `_`, `.`, `/`; values up
/// to 63 printable characters.
pub fn validate_labels(field: &str, labels: &Labels) -> Result<(), PlacementError> {
    if labels.len() > MAX_LABELS {
        return Err(PlacementError::Invalid(format!(
            "`{field}` has {} labels; at most {MAX_LABELS}",
            labels.len()
        )));
    }
    for (key, value) in labels {
        let key_ok = !key.is_empty()
            && key.len() <= 63
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b));
        if !key_ok {
            return Err(PlacementError::Invalid(format!(
                "`{field}`: label key {key:?} must be 1-63 letters, digits, '-', '_', '.' or '/'"
            )));
        }
        if value.len() > 63 || value.chars().any(char::is_control) {
            return Err(PlacementError::Invalid(format!(
                "`{field}`: the value of label {key:?} must be at most 63 printable characters"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placement(json: serde_json::Value) -> Placement {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn defaults_and_site_selection() {
        let p = placement(serde_json::json!({}));
        assert_eq!(p.hosts_per_site, 1);
        let here = Point {
            latitude: 47.37,
            longitude: 8.54,
        };
        assert!(p.selects_site("zurich-1", &Labels::new(), &here, None));
        let p = placement(serde_json::json!({
            "sites": { "labels": { "country": "ch" }, "within": { "latitude": 46.2, "longitude": 6.14, "km": 250 } }
        }));
        p.validate().unwrap();
        let ch: Labels = [("country".to_owned(), "ch".to_owned())].into();
        assert!(
            p.selects_site("zurich-1", &ch, &here, None),
            "Zurich is 224 km from Geneva"
        );
        assert!(
            !p.selects_site("zurich-1", &Labels::new(), &here, None),
            "label missing"
        );
        let far = Point {
            latitude: 46.95,
            longitude: 10.4,
        };
        assert!(
            p.selects_site("x", &ch, &far, None)
                == (far.distance_km(&centre(&p.sites.within.unwrap())) <= 250.0)
        );
        let p = placement(serde_json::json!({ "sites": { "region": "alps" } }));
        assert!(
            !p.selects_site("x", &ch, &here, None),
            "an unknown region selects nothing"
        );
    }

    #[test]
    fn bad_placements_are_refused() {
        for bad in [
            serde_json::json!({ "hosts_per_site": 0 }),
            serde_json::json!({ "sites": { "names": [] } }),
            serde_json::json!({ "sites": { "names": ["Bad Name"] } }),
            serde_json::json!({ "sites": { "within": { "latitude": 95, "longitude": 0, "km": 1 } } }),
            serde_json::json!({ "sites": { "within": { "latitude": 0, "longitude": 0, "km": -1 } } }),
            serde_json::json!({ "devices": { "labels": { "": "x" } } }),
        ] {
            assert!(placement(bad.clone()).validate().is_err(), "{bad}");
        }
        assert!(validate_name("site", "zurich-1").is_ok());
        assert!(validate_name("site", "-x").is_err());
    }
}
