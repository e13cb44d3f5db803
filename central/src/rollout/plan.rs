//! From a selector and a wave request to waves of devices.
//!
//! Selectors and per-site waves look at [`device_view`]: a device's config map, its labels over
//! it, and its site (`PUT /api/v1/devices/{id}/site`) as key `site` over both. A device without
//! a site still counts the config key `site`, the stand-in used before sites existed.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::version::OsVersion;
use super::RolloutError;

/// Key naming a device's site in [`device_view`].
pub const SITE_KEY: &str = "site";

/// What a rollout's `match` selector and per-site waves see of a device: its config, its labels
/// over it, and its site as [`SITE_KEY`] over both.
pub fn device_view(
    config: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
    site: Option<&str>,
) -> BTreeMap<String, String> {
    let mut view = config.clone();
    view.extend(labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    if let Some(site) = site {
        view.insert(SITE_KEY.to_owned(), site.to_owned());
    }
    view
}
/// Canary devices when the request does not say.
pub const DEFAULT_CANARY: u32 = 1;

/// Which devices a rollout is for: exactly one of the three forms.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    /// `{"all": true}`: every active device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all: Option<bool>,
    /// `{"devices": [ids]}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<Vec<String>>,
    /// `{"match": {"key": "value"}}`: devices whose [`device_view`] has every pair.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub matches: Option<BTreeMap<String, String>>,
}

impl Selector {
    /// Refuse anything but exactly one non-empty form.
    pub fn validate(&self) -> Result<(), RolloutError> {
        let forms = [
            self.all.is_some(),
            self.devices.is_some(),
            self.matches.is_some(),
        ];
        if forms.iter().filter(|f| **f).count() != 1 {
            return Err(RolloutError::Selector(
                "give exactly one of {\"all\":true}, {\"devices\":[ids]} or {\"match\":{\"key\":\"value\"}}".into(),
            ));
        }
        if self.all == Some(false) {
            return Err(RolloutError::Selector(
                "`all` must be true when given".into(),
            ));
        }
        if self
            .devices
            .as_ref()
            .is_some_and(|d| d.is_empty() || d.len() > 100_000)
        {
            return Err(RolloutError::Selector(
                "`devices` must list at least one device id".into(),
            ));
        }
        if self.matches.as_ref().is_some_and(BTreeMap::is_empty) {
            return Err(RolloutError::Selector(
                "`match` must have at least one key".into(),
            ));
        }
        Ok(())
    }

    /// Whether a device with this id and config is selected (device lists are checked apart).
    pub fn selects(&self, id: &str, config: &BTreeMap<String, String>) -> bool {
        if self.all == Some(true) {
            return true;
        }
        if let Some(ids) = &self.devices {
            return ids.iter().any(|d| d == id);
        }
        self.matches
            .as_ref()
            .is_some_and(|m| m.iter().all(|(k, v)| config.get(k) == Some(v)))
    }
}

/// How devices are split into waves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaveSpec {
    /// Devices in wave 0 (spread over sites); 0 = no canary wave.
    #[serde(default = "default_canary")]
    pub canary: u32,
    /// Cumulative percentages of the devices to update after the canary, rising, ending at 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<Vec<u32>>,
    /// After the canary, one wave per site (sites by name; devices without a site last).
    #[serde(default)]
    pub per_site: bool,
}

fn default_canary() -> u32 {
    DEFAULT_CANARY
}

impl Default for WaveSpec {
    fn default() -> Self {
        Self {
            canary: DEFAULT_CANARY,
            percent: None,
            per_site: false,
        }
    }
}

impl WaveSpec {
    /// Refuse percentages that do not rise to 100, and percentages with per-site waves.
    pub fn validate(&self) -> Result<(), RolloutError> {
        if let Some(percent) = &self.percent {
            if self.per_site {
                return Err(RolloutError::Waves(
                    "`percent` and `per_site` exclude each other: per-site waves are one site each"
                        .into(),
                ));
            }
            let rising = percent.windows(2).all(|w| w[0] < w[1]);
            if percent.is_empty()
                || !rising
                || percent[0] == 0
                || percent.last() != Some(&100)
                || percent.len() > 100
            {
                return Err(RolloutError::Waves(format!(
                    "`percent` must rise strictly from above 0 and end at 100, e.g. [25, 100]; got {percent:?}"
                )));
            }
        }
        Ok(())
    }
}

/// A device considered for a rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Device id.
    pub id: String,
    /// Its site ([`device_view`] key `site`), if any.
    pub site: Option<String>,
    /// The OS version it runs.
    pub version: String,
}

/// One device of a planned wave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedDevice {
    /// Device id.
    pub device_id: String,
    /// Its site.
    pub site: Option<String>,
    /// Version it runs.
    pub from_version: String,
}

/// One planned wave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedWave {
    /// Index (0 first).
    pub index: u32,
    /// "canary", "percent" or "site".
    pub kind: &'static str,
    /// e.g. "25%", "site north", "no site", "canary".
    pub label: String,
    /// Its devices.
    pub devices: Vec<PlannedDevice>,
}

/// A device left out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedDevice {
    /// Device id.
    pub device_id: String,
    /// The version it runs (the target).
    pub version: String,
    /// Why.
    pub reason: String,
}

/// Waves and skipped devices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// Non-empty waves in release order.
    pub waves: Vec<PlannedWave>,
    /// Devices already on the target version.
    pub skipped: Vec<SkippedDevice>,
}

impl Plan {
    /// Devices to update.
    pub fn device_count(&self) -> usize {
        self.waves.iter().map(|w| w.devices.len()).sum()
    }
}

/// Split `candidates` into waves for `target`; downgrades need `allow_downgrade`.
pub fn plan(
    target: &str,
    allow_downgrade: bool,
    candidates: Vec<Candidate>,
    spec: &WaveSpec,
) -> Result<Plan, RolloutError> {
    spec.validate()?;
    let target_version = OsVersion::parse(target).map_err(RolloutError::BundleVersion)?;
    let mut unparsable = Vec::new();
    let mut downgrades = Vec::new();
    let mut skipped = Vec::new();
    let mut update = Vec::new();
    for candidate in candidates {
        match OsVersion::parse(&candidate.version).map(|v| v.cmp(&target_version)) {
            Err(_) => unparsable.push((candidate.id, candidate.version)),
            Ok(Ordering::Equal) => skipped.push(SkippedDevice {
                device_id: candidate.id,
                version: candidate.version,
                reason: "already runs the target version".into(),
            }),
            Ok(Ordering::Greater) if !allow_downgrade => {
                downgrades.push((candidate.id, candidate.version))
            }
            Ok(_) => update.push(candidate),
        }
    }
    if !unparsable.is_empty() {
        return Err(RolloutError::UnparsableVersions(unparsable));
    }
    if !downgrades.is_empty() {
        return Err(RolloutError::Downgrade {
            target: target.to_owned(),
            devices: downgrades,
        });
    }
    // Sites by name, devices without a site last; by id within a site.
    update.sort_by(|a, b| {
        (a.site.is_none(), &a.site, &a.id).cmp(&(b.site.is_none(), &b.site, &b.id))
    });
    let total = update.len();
    let canary = pick_canary(&mut update, spec.canary as usize);
    let planned = |c: Candidate| PlannedDevice {
        device_id: c.id,
        site: c.site,
        from_version: c.version,
    };
    let mut waves: Vec<(&'static str, String, Vec<Candidate>)> = Vec::new();
    if !canary.is_empty() {
        waves.push(("canary", "canary".into(), canary));
    }
    if spec.per_site {
        let mut by_site: BTreeMap<(bool, Option<String>), Vec<Candidate>> = BTreeMap::new();
        for c in update {
            by_site
                .entry((c.site.is_none(), c.site.clone()))
                .or_default()
                .push(c);
        }
        for ((_, site), devices) in by_site {
            let label = site.map_or_else(|| "no site".to_owned(), |s| format!("site {s}"));
            waves.push(("site", label, devices));
        }
    } else {
        let percent = spec.percent.clone().unwrap_or_else(|| vec![100]);
        let mut done = total - update.len();
        let mut rest = update.into_iter();
        for p in percent {
            let upto = (total * p as usize).div_ceil(100).max(done);
            let devices: Vec<Candidate> = rest.by_ref().take(upto - done).collect();
            done += devices.len();
            waves.push(("percent", format!("{p}%"), devices));
        }
    }
    let waves = waves
        .into_iter()
        .filter(|(_, _, devices)| !devices.is_empty())
        .enumerate()
        .map(|(index, (kind, label, devices))| PlannedWave {
            index: index as u32,
            kind,
            label,
            devices: devices.into_iter().map(planned).collect(),
        })
        .collect();
    Ok(Plan { waves, skipped })
}

/// Take `n` canary devices out of `sorted`, one per site in turn (sites by name, then the
/// devices without a site), so a bad update shows up wherever it would hurt.
fn pick_canary(sorted: &mut Vec<Candidate>, n: usize) -> Vec<Candidate> {
    let mut picked = BTreeSet::new();
    let groups: Vec<Option<String>> = {
        let mut seen = Vec::new();
        for c in sorted.iter() {
            if !seen.contains(&c.site) {
                seen.push(c.site.clone());
            }
        }
        seen
    };
    let n = n.min(sorted.len());
    let mut round = 0;
    while picked.len() < n {
        for site in &groups {
            if picked.len() >= n {
                break;
            }
            if let Some((index, _)) = sorted
                .iter()
                .enumerate()
                .filter(|(_, c)| &c.site == site)
                .nth(round)
            {
                picked.insert(index);
            }
        }
        round += 1;
    }
    let mut canary = Vec::new();
    let mut rest = Vec::new();
    for (index, c) in std::mem::take(sorted).into_iter().enumerate() {
        if picked.contains(&index) {
            canary.push(c);
        } else {
            rest.push(c);
        }
    }
    *sorted = rest;
    canary
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(id: &str, site: Option<&str>, version: &str) -> Candidate {
        Candidate {
            id: id.into(),
            site: site.map(str::to_owned),
            version: version.into(),
        }
    }

    fn ids(plan: &Plan) -> Vec<Vec<&str>> {
        plan.waves
            .iter()
            .map(|w| w.devices.iter().map(|d| d.device_id.as_str()).collect())
            .collect()
    }

    #[test]
    fn canary_then_cumulative_percentages() {
        let fleet: Vec<Candidate> = (0..10)
            .map(|i| device(&format!("d{i}"), None, "1.0"))
            .collect();
        let spec = WaveSpec {
            canary: 1,
            percent: Some(vec![25, 100]),
            per_site: false,
        };
        let plan = plan("2.0", false, fleet, &spec).unwrap();
        assert_eq!(
            ids(&plan),
            vec![
                vec!["d0"],
                vec!["d1", "d2"],
                vec!["d3", "d4", "d5", "d6", "d7", "d8", "d9"]
            ]
        );
        assert_eq!(plan.waves[1].label, "25%");
    }

    #[test]
    fn canary_spreads_over_sites_and_per_site_waves_follow() {
        let fleet = vec![
            device("a1", Some("south"), "1.0"),
            device("a2", Some("south"), "1.0"),
            device("b1", Some("north"), "1.0"),
            device("b2", Some("north"), "1.0"),
            device("c1", None, "1.0"),
            device("up", Some("north"), "2.0"),
        ];
        let spec = WaveSpec {
            canary: 2,
            percent: None,
            per_site: true,
        };
        let plan = plan("2.0", false, fleet, &spec).unwrap();
        assert_eq!(
            ids(&plan),
            vec![vec!["b1", "a1"], vec!["b2"], vec!["a2"], vec!["c1"]]
        );
        let labels: Vec<&str> = plan.waves.iter().map(|w| w.label.as_str()).collect();
        assert_eq!(labels, ["canary", "site north", "site south", "no site"]);
        assert_eq!(plan.skipped.len(), 1);
        assert_eq!(plan.skipped[0].device_id, "up");
    }

    #[test]
    fn downgrades_and_bad_versions_are_refused_with_devices() {
        let fleet = vec![device("new", None, "3.0"), device("old", None, "1.0")];
        let e = plan("2.0", false, fleet.clone(), &WaveSpec::default()).unwrap_err();
        assert!(
            matches!(&e, RolloutError::Downgrade { devices, .. } if devices[0].0 == "new"),
            "{e}"
        );
        assert!(e.to_string().contains("new (3.0)"), "{e}");
        assert_eq!(
            plan("2.0", true, fleet, &WaveSpec::default())
                .unwrap()
                .device_count(),
            2
        );
        let e = plan(
            "2.0",
            false,
            vec![device("odd", None, "test")],
            &WaveSpec::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("odd (test)"), "{e}");
    }

    #[test]
    fn wave_requests_and_selectors_are_checked() {
        for percent in [vec![], vec![50], vec![50, 40, 100], vec![0, 100]] {
            let spec = WaveSpec {
                canary: 0,
                percent: Some(percent),
                per_site: false,
            };
            assert!(spec.validate().is_err());
        }
        let both = WaveSpec {
            canary: 0,
            percent: Some(vec![100]),
            per_site: true,
        };
        assert!(both.validate().is_err());
        assert!(Selector::default().validate().is_err());
        let two = Selector {
            all: Some(true),
            devices: Some(vec!["a".into()]),
            matches: None,
        };
        assert!(two.validate().is_err());
        let matcher = Selector {
            matches: Some([("site".to_owned(), "x".to_owned())].into()),
            ..Default::default()
        };
        assert!(matcher.selects("d", &[("site".to_owned(), "x".to_owned())].into()));
        assert!(!matcher.selects("d", &BTreeMap::new()));
    }

    #[test]
    fn device_view_puts_site_over_labels_over_config() {
        let config: BTreeMap<String, String> =
            [("site".into(), "old".into()), ("k".into(), "config".into())].into();
        let labels: BTreeMap<String, String> =
            [("k".into(), "label".into()), ("gpu".into(), "yes".into())].into();
        let view = device_view(&config, &labels, Some("zurich-1"));
        assert_eq!(view["site"], "zurich-1");
        assert_eq!(view["k"], "label");
        assert_eq!(view["gpu"], "yes");
        assert_eq!(device_view(&config, &labels, None)["site"], "old");
    }
}
