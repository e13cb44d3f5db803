//! The `/etc/hosts` of an app: localhost plus every service name with its address. One file per
//! app, bind-mounted read-only into each of its containers and rewritten in place (same inode) so
//! running containers see a changed address at once. A service with `extra_hosts` gets a file of
//! its own instead: the app's text plus its lines, rewritten whenever the app's is.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;

/// The hosts file listing `services` (name to address).
pub(crate) fn render(services: &BTreeMap<String, Ipv4Addr>) -> String {
    let mut text = String::from(
        "# Written by cairn: the services of this app.\n\
         127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n",
    );
    for (name, ip) in services {
        text.push_str(&format!("{ip}\t{name}\n"));
    }
    text
}

/// `base` (a hosts file) followed by the `extra_hosts` lines of `service`.
pub(crate) fn with_extra_hosts(
    base: &str,
    service: &str,
    extra: &[cairn_compose::ExtraHost],
) -> String {
    let mut text = base.to_string();
    if extra.is_empty() {
        return text;
    }
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    let _ = writeln!(text, "# extra_hosts of service {service}");
    for h in extra {
        let _ = writeln!(text, "{}\t{}", h.ip, h.host);
    }
    text
}

/// Write `text` to `path` unless it already holds exactly that; returns whether it wrote. The
/// file is truncated and rewritten in place, never replaced, because bind mounts pin the inode.
pub(crate) fn write_in_place(path: &Path, text: &str) -> std::io::Result<bool> {
    if std::fs::read_to_string(path).is_ok_and(|old| old == text) {
        return Ok(false);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn extra_hosts_follow_the_base() {
        let extra = [
            cairn_compose::ExtraHost {
                host: "db.example".into(),
                ip: "10.1.2.3".parse().unwrap(),
            },
            cairn_compose::ExtraHost {
                host: "v6.example".into(),
                ip: "fd00::1".parse().unwrap(),
            },
        ];
        let base = render(&BTreeMap::from([(
            "web".to_string(),
            Ipv4Addr::new(10, 88, 3, 2),
        )]));
        let text = with_extra_hosts(&base, "web", &extra);
        assert!(text.starts_with(&base), "{text}");
        assert!(
            text.ends_with(
                "# extra_hosts of service web\n10.1.2.3\tdb.example\nfd00::1\tv6.example\n"
            ),
            "{text}"
        );
        assert_eq!(with_extra_hosts("a b", "web", &[]), "a b");
        assert!(with_extra_hosts("a b", "web", &extra).starts_with("a b\n# extra_hosts"));
    }

    #[test]
    fn lists_services_and_rewrites_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run").join("hosts");
        let mut services = BTreeMap::from([("web".to_string(), Ipv4Addr::new(10, 88, 3, 2))]);
        assert!(write_in_place(&path, &render(&services)).unwrap());
        let inode = std::fs::metadata(&path).unwrap().ino();
        assert!(
            !write_in_place(&path, &render(&services)).unwrap(),
            "unchanged"
        );
        services.insert("client".into(), Ipv4Addr::new(10, 88, 3, 3));
        assert!(write_in_place(&path, &render(&services)).unwrap());
        assert_eq!(std::fs::metadata(&path).unwrap().ino(), inode);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("127.0.0.1\tlocalhost\n"), "{text}");
        assert!(
            text.ends_with("10.88.3.3\tclient\n10.88.3.2\tweb\n"),
            "{text}"
        );
    }
}
