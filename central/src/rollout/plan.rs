//! From a selector and a wave request to waves of devices.
//!
//! Selectors and per-site waves look at [`device_view`]: a device's config map, its labels over
//! it, and its site (`PUT /api/v1/devices/{id}/site`) as key `site` over both. A device without
//! a site still counts the config key `site`, the stand-in used before sites existed.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

pub use cairn_api::{PlannedDevice, PlannedWave, Selector, SkippedDevice, WaveKind, WaveSpec};

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

/// Refuse a selector unless it has exactly one non-empty form.
pub fn validate_selector(selector: &Selector) -> Result<(), RolloutError> {
    let forms = [
        selector.all.is_some(),
        selector.devices.is_some(),
        selector.matches.is_some(),
    ];
    if forms.iter().filter(|f| **f).count() != 1 {
        return Err(RolloutError::Selector(
            "give exactly one of {\"all\":true}, {\"devices\":[ids]} or {\"match\":{\"key\":\"value\"}}".into(),
        ));
    }
    if selector.all == Some(false) {
        return Err(RolloutError::Selector(
            "`all` must be true when given".into(),
        ));
    }
    if selector
        .devices
        .as_ref()
        .is_some_and(|d| d.is_empty() || d.len() > 100_000)
    {
        return Err(RolloutError::Selector(
            "`devices` must list at least one device id".into(),
        ));
    }
    if selector.matches.as_ref().is_some_and(BTreeMap::is_empty) {
        return Err(RolloutError::Selector(
            "`match` must have at least one key".into(),
        ));
    }
    Ok(())
}

/// Whether a device with this id and config is selected (device lists are checked apart).
pub fn selects(selector: &Selector, id: &str, config: &BTreeMap<String, String>) -> bool {
    if selector.all == Some(true) {
        return true;
    }
    if let Some(ids) = &selector.devices {
        return ids.iter().any(|d| d == id);
    }
    selector
        .matches
        .as_ref()
        .is_some_and(|m| m.iter().all(|(k, v)| config.get(k) == Some(v)))
}

/// Refuse percentages that do not rise to 100, and percentages with per-site waves.
pub fn validate_waves(spec: &WaveSpec) -> Result<(), RolloutError> {
    if let Some(percent) = &spec.percent {
        if spec.per_site {
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

/// Waves and skipped devices.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    validate_waves(spec)?;
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
        to_version: target.to_owned(),
    };
    let mut waves: Vec<(WaveKind, String, Vec<Candidate>)> = Vec::new();
    if !canary.is_empty() {
        waves.push((WaveKind::Canary, "canary".into(), canary));
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
            waves.push((WaveKind::Site, label, devices));
        }
    } else {
        let percent = spec.percent.clone().unwrap_or_else(|| vec![100]);
        let mut done = total - update.len();
        let mut rest = update.into_iter();
        for p in percent {
            let upto = (total * p as usize).div_ceil(100).max(done);
            let devices: Vec<Candidate> = rest.by_ref().take(upto - done).collect();
            done += devices.len();
            waves.push((WaveKind::Percent, format!("{p}%"), devices));
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
            assert!(validate_waves(&spec).is_err());
        }
        let both = WaveSpec {
            canary: 0,
            percent: Some(vec![100]),
            per_site: true,
        };
        assert!(validate_waves(&both).is_err());
        assert!(validate_selector(&Selector::default()).is_err());
        let two = Selector {
            all: Some(true),
            devices: Some(vec!["a".into()]),
            matches: None,
        };
        assert!(validate_selector(&two).is_err());
        let matcher = Selector {
            matches: Some([("site".to_owned(), "x".to_owned())].into()),
            ..Default::default()
        };
        assert!(selects(
            &matcher,
            "d",
            &[("site".to_owned(), "x".to_owned())].into()
        ));
        assert!(!selects(&matcher, "d", &BTreeMap::new()));
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
