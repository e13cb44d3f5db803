//! Device access as policy: an app that asks for host devices (`devices:`) or capabilities
//! beyond Docker's default set (`cap_add:`) runs only on a device whose labels, or whose site's
//! labels, allow every item. Pure: labels and the app's [`Privileges`] in, a verdict out.
//!
//! - `cairn.allow/devices`: comma-separated device paths, where `*` matches any run of
//!   characters within one path component (`/dev/ttyUSB*,/dev/video0`).
//! - `cairn.allow/capabilities`: comma-separated capability names, with or without `CAP_`
//!   (`NET_ADMIN,SYS_TIME`).
//!
//! What stays refused whatever the labels (privileged mode, host namespaces, host paths, the
//! TPM, capabilities that escape the container) is refused by the Compose parser already.

use cairn_compose::Privileges;

use super::spec::Labels;

/// Label that allows host devices.
pub const ALLOW_DEVICES: &str = "cairn.allow/devices";
/// Label that allows capabilities beyond Docker's default set.
pub const ALLOW_CAPABILITIES: &str = "cairn.allow/capabilities";

/// Why the labels do not allow the app's privileges, naming the first item missing and the
/// label to set; `None` when they do. `grants` are the device's labels and its site's.
pub fn denied(wanted: &Privileges, grants: &[&Labels]) -> Option<String> {
    let allowed = |label: &str, item: &str, matches: fn(&str, &str) -> bool| {
        grants.iter().any(|labels| {
            labels
                .get(label)
                .is_some_and(|v| v.split(',').any(|p| matches(p.trim(), item)))
        })
    };
    if let Some(path) = wanted
        .devices
        .iter()
        .find(|path| !allowed(ALLOW_DEVICES, path, path_matches))
    {
        return Some(format!(
            "the app uses host device {path}, which neither the device nor its site allows; set label {ALLOW_DEVICES}={path} on the device or the site"
        ));
    }
    if let Some(cap) = wanted
        .capabilities
        .iter()
        .find(|cap| !allowed(ALLOW_CAPABILITIES, cap, capability_matches))
    {
        let short = cap.trim_start_matches("CAP_");
        return Some(format!(
            "the app adds capability {cap}, which neither the device nor its site allows; set label {ALLOW_CAPABILITIES}={short} on the device or the site"
        ));
    }
    None
}

/// `pattern` (with `*` inside one path component) matches `path`.
fn path_matches(pattern: &str, path: &str) -> bool {
    let (pattern, path): (Vec<&str>, Vec<&str>) =
        (pattern.split('/').collect(), path.split('/').collect());
    pattern.len() == path.len()
        && pattern
            .iter()
            .zip(&path)
            .all(|(p, c)| component_matches(p.as_bytes(), c.as_bytes()))
}

/// Glob match of one component: `*` is any run of bytes. Greedy with one backtrack point, so
/// at worst quadratic in lengths that labels and paths keep short.
fn component_matches(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

/// A label's capability name (any case, `CAP_` optional) names `cap` (`CAP_…`).
fn capability_matches(name: &str, cap: &str) -> bool {
    let name = name.to_ascii_uppercase();
    name.strip_prefix("CAP_").unwrap_or(&name) == cap.trim_start_matches("CAP_")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn wants(devices: &[&str], caps: &[&str]) -> Privileges {
        Privileges {
            devices: devices.iter().map(|d| d.to_string()).collect(),
            capabilities: caps.iter().map(|c| c.to_string()).collect(),
        }
    }

    #[test]
    fn an_app_without_privileges_runs_anywhere() {
        assert_eq!(denied(&wants(&[], &[]), &[]), None);
    }

    #[test]
    fn a_device_needs_a_matching_label_on_the_device_or_its_site() {
        let app = wants(&["/dev/ttyUSB0"], &[]);
        let why = denied(&app, &[&labels(&[])]).unwrap();
        assert!(why.contains("cairn.allow/devices=/dev/ttyUSB0"), "{why}");
        let device = labels(&[(ALLOW_DEVICES, "/dev/video0, /dev/ttyUSB*")]);
        assert_eq!(denied(&app, &[&labels(&[]), &device]), None);
        let site = labels(&[(ALLOW_DEVICES, "/dev/ttyUSB0")]);
        assert_eq!(denied(&app, &[&labels(&[]), &site]), None);
        let other = labels(&[(ALLOW_DEVICES, "/dev/ttyACM*")]);
        assert!(denied(&app, &[&other]).is_some());
    }

    #[test]
    fn a_star_stays_inside_one_path_component() {
        assert!(path_matches("/dev/ttyUSB*", "/dev/ttyUSB12"));
        assert!(path_matches("/dev/*", "/dev/video0"));
        assert!(!path_matches("/dev/*", "/dev/dri/card0"));
        assert!(path_matches("/dev/*/*", "/dev/dri/card0"));
        assert!(path_matches("/dev/*USB*", "/dev/ttyUSB0"));
        assert!(!path_matches("/dev/ttyUSB*", "/dev/ttyACM0"));
        assert!(!path_matches("/dev/ttyUSB0", "/dev/ttyUSB01"));
    }

    #[test]
    fn a_hostile_glob_is_matched_in_linear_time() {
        let pattern = format!("/dev/{}b", "*a".repeat(30));
        let path = format!("/dev/{}", "a".repeat(60));
        let started = std::time::Instant::now();
        assert!(!path_matches(&pattern, &path));
        assert!(started.elapsed() < std::time::Duration::from_millis(50));
    }

    #[test]
    fn capabilities_are_matched_by_name_in_any_case() {
        let app = wants(&[], &["CAP_NET_ADMIN"]);
        let why = denied(&app, &[&labels(&[])]).unwrap();
        assert!(why.contains("cairn.allow/capabilities=NET_ADMIN"), "{why}");
        for value in ["NET_ADMIN", "cap_net_admin", "SYS_TIME,net_admin"] {
            let l = labels(&[(ALLOW_CAPABILITIES, value)]);
            assert_eq!(denied(&app, &[&l]), None, "{value}");
        }
        let l = labels(&[(ALLOW_CAPABILITIES, "NET_RAW")]);
        assert!(denied(&app, &[&l]).is_some());
    }
}
