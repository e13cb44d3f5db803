//! Parsers for the scalar formats of a Compose file: ports, volumes, durations, sizes, CPUs,
//! restart policies, names and shell-style commands. Each returns a message saying what is wrong
//! and what to write instead.

use std::net::IpAddr;
use std::time::Duration;

use super::{PortMapping, Protocol, RestartPolicy, VolumeMount};

/// Check an app, service or volume name: lowercase ASCII letters and digits in runs separated by
/// single `-`, `_` or `.`, at most `max` characters (these names become containerd ids).
pub(crate) fn check_name(name: &str, max: usize) -> Result<(), String> {
    if name.is_empty() {
        return Err("a name must not be empty".into());
    }
    if name.len() > max {
        return Err(format!(
            "is longer than {max} characters; use a shorter name"
        ));
    }
    let mut prev_sep = true;
    for c in name.chars() {
        let sep = matches!(c, '-' | '_' | '.');
        if !(sep || c.is_ascii_lowercase() || c.is_ascii_digit()) {
            return Err(format!(
                "contains {c:?}; use lowercase letters, digits and single '-', '_' or '.'"
            ));
        }
        if sep && prev_sep {
            return Err(
                "must start with a letter or digit and not have two separators in a row".into(),
            );
        }
        prev_sep = sep;
    }
    if prev_sep {
        return Err("must end with a letter or digit".into());
    }
    Ok(())
}

/// Check a secret name: it becomes the file name `/run/secrets/NAME`.
pub(crate) fn check_secret_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a usable secret name; use up to 64 letters, digits, '-', '_' or '.'"
        ))
    }
}

fn port_number(text: &str, what: &str) -> Result<u16, String> {
    match text.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("{what} {text:?} is not a number from 1 to 65535")),
    }
}

/// Parse `[HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp]`.
pub(crate) fn parse_port(text: &str) -> Result<PortMapping, String> {
    let message = |why: String| {
        format!(
            "{text:?} is not a port mapping: {why}; write \"HOST:CONTAINER[/tcp|udp]\", e.g. \"8080:80\""
        )
    };
    let fail = |why: String| Err(message(why));
    let (addr, protocol) = match text.rsplit_once('/') {
        Some((a, "tcp")) => (a, Protocol::Tcp),
        Some((a, "udp")) => (a, Protocol::Udp),
        Some((_, p)) => return fail(format!("protocol {p:?} is not tcp or udp")),
        None => (text, Protocol::Tcp),
    };
    if addr.contains('-') {
        return fail("port ranges are not supported".into());
    }
    let (host_ip, host, container) = if let Some(rest) = addr.strip_prefix('[') {
        // [v6addr]:host:container
        let Some((ip, rest)) = rest.split_once("]:") else {
            return fail("an IPv6 address must be written as [addr]:HOST:CONTAINER".into());
        };
        match rest.split_once(':') {
            Some((h, c)) => (Some(ip), h, c),
            None => return fail("missing the container port".into()),
        }
    } else {
        let parts: Vec<&str> = addr.split(':').collect();
        match parts.as_slice() {
            [_] => {
                return fail(
                    "the host port is missing (ports are never picked at random here)".into(),
                )
            }
            [h, c] => (None, *h, *c),
            [ip, h, c] => (Some(*ip), *h, *c),
            _ => return fail("too many ':'".into()),
        }
    };
    let host_ip = match host_ip {
        Some(ip) => match ip.parse::<IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) => return fail(format!("host address {ip:?} is not an IP address")),
        },
        None => None,
    };
    let host_port = port_number(host, "host port").map_err(message)?;
    let container_port = port_number(container, "container port").map_err(message)?;
    Ok(PortMapping {
        host_ip,
        host_port,
        container_port,
        protocol,
    })
}

/// Parse `VOLUME:/container/path[:ro|:rw]` (named volumes only).
pub(crate) fn parse_volume(text: &str) -> Result<VolumeMount, String> {
    let parts: Vec<&str> = text.split(':').collect();
    let (name, target, mode) = match parts.as_slice() {
        [n, t] => (*n, *t, "rw"),
        [n, t, m] => (*n, *t, *m),
        _ => {
            return Err(format!(
                "{text:?} is not a volume: write \"NAME:/path/in/container[:ro]\""
            ))
        }
    };
    if name.starts_with('/') || name.starts_with('.') || name.starts_with('~') {
        return Err(format!(
            "{text:?} mounts a host path; only named volumes (kept on the data partition) are \
             allowed: write \"NAME:{target}\""
        ));
    }
    check_volume_name(name).map_err(|why| format!("volume name {name:?} {why}"))?;
    check_container_path(target).map_err(|why| format!("{text:?}: {why}"))?;
    let read_only = match mode {
        "ro" => true,
        "rw" => false,
        other => {
            return Err(format!(
                "{text:?}: mode {other:?} is not supported; use \"ro\" or \"rw\""
            ))
        }
    };
    Ok(VolumeMount {
        volume: name.to_string(),
        target: target.to_string(),
        read_only,
    })
}

/// Volume names follow Compose (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`), at most 64 characters.
pub(crate) fn check_volume_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if first_ok
        && name.len() <= 64
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        Ok(())
    } else {
        Err("is invalid: use up to 64 letters, digits, '_', '.' or '-', starting with a letter or digit".into())
    }
}

/// An absolute path inside a container, without `..` and not `/` itself.
pub(crate) fn check_container_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("container path {path:?} must be absolute"));
    }
    if path.trim_end_matches('/').is_empty() {
        return Err("cannot mount over the container's root \"/\"".into());
    }
    if path.split('/').any(|c| c == "..") {
        return Err(format!("container path {path:?} must not contain \"..\""));
    }
    Ok(())
}

/// Parse a Compose duration: a sequence of NUMBER UNIT with units `h`, `m`, `s`, `ms`, `us`
/// (e.g. `1m30s`, `500ms`, `1.5s`).
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let fail = || {
        Err(format!(
            "{text:?} is not a duration; write e.g. \"30s\", \"1m30s\" or \"500ms\""
        ))
    };
    let mut rest = text.trim();
    if rest.is_empty() {
        return fail();
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let Ok(n) = rest[..num_len].parse::<f64>() else {
            return fail();
        };
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let secs = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            "us" | "µs" => 0.000_001,
            _ => return fail(),
        };
        rest = &rest[unit_len..];
        total += n * secs;
    }
    if !total.is_finite() || total > 366.0 * 86400.0 {
        return fail();
    }
    Ok(Duration::from_secs_f64(total))
}

/// Parse a memory size: bytes, or a number with `b`, `k`, `m`, `g` (optionally followed by `b`),
/// in binary multiples as Compose does (`512m` = 512 MiB).
pub(crate) fn parse_memory(text: &str) -> Result<u64, String> {
    let fail = || {
        Err(format!(
            "{text:?} is not a memory size; write e.g. \"512m\", \"1g\" or a number of bytes"
        ))
    };
    let lower = text.trim().to_ascii_lowercase();
    let digits = lower
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(lower.len());
    let Ok(n) = lower[..digits].parse::<f64>() else {
        return fail();
    };
    let mult: u64 = match &lower[digits..] {
        "" | "b" => 1,
        "k" | "kb" => 1 << 10,
        "m" | "mb" => 1 << 20,
        "g" | "gb" => 1 << 30,
        _ => return fail(),
    };
    let bytes = n * mult as f64;
    if !(bytes.is_finite() && (1.0..1e18).contains(&bytes)) {
        return fail();
    }
    let bytes = bytes as u64;
    if bytes < 6 << 20 {
        return Err(format!(
            "{text:?} is below the 6 MiB minimum a container needs; give at least \"6m\""
        ));
    }
    Ok(bytes)
}

/// Parse a CPU count such as `0.5` or `2` into thousandths of a CPU.
pub(crate) fn parse_cpus(text: &str) -> Result<u64, String> {
    match text.trim().parse::<f64>() {
        Ok(c) if c.is_finite() && (0.01..=1024.0).contains(&c) => Ok((c * 1000.0).round() as u64),
        _ => Err(format!(
            "{text:?} is not a CPU count; write a number from 0.01 to 1024, e.g. \"0.5\""
        )),
    }
}

/// Parse a restart policy: `no`, `always`, `on-failure[:MAX]`, `unless-stopped`.
pub(crate) fn parse_restart(text: &str) -> Result<RestartPolicy, String> {
    let fail = || {
        Err(format!(
            "{text:?} is not a restart policy; use \"no\", \"always\", \"on-failure[:MAX]\" or \"unless-stopped\""
        ))
    };
    match text {
        "no" | "false" => Ok(RestartPolicy::No),
        "always" => Ok(RestartPolicy::Always),
        "unless-stopped" => Ok(RestartPolicy::UnlessStopped),
        "on-failure" => Ok(RestartPolicy::OnFailure { max_retries: None }),
        _ => match text.strip_prefix("on-failure:").map(str::parse::<u32>) {
            Some(Ok(n)) => Ok(RestartPolicy::OnFailure {
                max_retries: Some(n),
            }),
            _ => fail(),
        },
    }
}

/// Split a command string the way a POSIX shell splits words (quotes and backslashes; no
/// expansion), as Compose does for `command: "..."`.
///
/// # Errors
/// A message when a quote is not closed or the string ends in a lone backslash.
pub fn split_command(text: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err(format!("{text:?} has an unclosed single quote")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err(format!("{text:?} has an unclosed double quote")),
                        },
                        Some(c) => word.push(c),
                        None => return Err(format!("{text:?} has an unclosed double quote")),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => word.push(c),
                    None => return Err(format!("{text:?} ends with a lone backslash")),
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports() {
        let p = parse_port("8080:80").unwrap();
        assert_eq!(
            (p.host_port, p.container_port, p.protocol),
            (8080, 80, Protocol::Tcp)
        );
        let p = parse_port("127.0.0.1:53:5353/udp").unwrap();
        assert_eq!(p.host_ip, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(p.protocol, Protocol::Udp);
        assert!(parse_port("[::1]:80:80")
            .unwrap()
            .host_ip
            .unwrap()
            .is_ipv6());
        for bad in [
            "80",
            "80:abc",
            "0:80",
            "80:80/sctp",
            "1-5:1-5",
            "a:b:c:d",
            "x:1:2",
        ] {
            let err = parse_port(bad).unwrap_err();
            assert!(err.contains("is not a port mapping"), "{bad}: {err}");
        }
    }

    #[test]
    fn volumes() {
        let v = parse_volume("data:/var/lib/data:ro").unwrap();
        assert_eq!(
            (v.volume.as_str(), v.target.as_str(), v.read_only),
            ("data", "/var/lib/data", true)
        );
        assert!(parse_volume("/etc:/etc").unwrap_err().contains("host path"));
        assert!(parse_volume("./x:/x").unwrap_err().contains("host path"));
        assert!(parse_volume("data:rel").unwrap_err().contains("absolute"));
        assert!(parse_volume("data:/").unwrap_err().contains("root"));
        assert!(parse_volume("data:/a/../b").unwrap_err().contains(".."));
        assert!(parse_volume("data:/x:rx").unwrap_err().contains("mode"));
        assert!(parse_volume("da ta:/x")
            .unwrap_err()
            .contains("volume name"));
        assert!(parse_volume("data").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        for bad in ["", "10", "10x", "s", "1.2.3s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn memory_and_cpus() {
        assert_eq!(parse_memory("512m").unwrap(), 512 << 20);
        assert_eq!(parse_memory("1G").unwrap(), 1 << 30);
        assert_eq!(parse_memory("1.5gb").unwrap(), 3 << 29);
        assert_eq!(parse_memory("104857600").unwrap(), 100 << 20);
        assert!(parse_memory("1k").unwrap_err().contains("minimum"));
        assert!(parse_memory("lots").is_err());
        assert_eq!(parse_cpus("0.5").unwrap(), 500);
        assert_eq!(parse_cpus("2").unwrap(), 2000);
        assert!(parse_cpus("0").is_err());
        assert!(parse_cpus("many").is_err());
    }

    #[test]
    fn restart_policies() {
        assert_eq!(parse_restart("always").unwrap(), RestartPolicy::Always);
        assert_eq!(
            parse_restart("on-failure:3").unwrap(),
            RestartPolicy::OnFailure {
                max_retries: Some(3)
            }
        );
        assert!(parse_restart("sometimes").is_err());
        assert!(parse_restart("on-failure:x").is_err());
    }

    #[test]
    fn names() {
        assert!(check_name("web-1", 32).is_ok());
        assert!(check_name("a.b_c", 32).is_ok());
        for bad in ["", "Web", "-a", "a-", "a--b", "a b", &"x".repeat(33)] {
            assert!(check_name(bad, 32).is_err(), "{bad}");
        }
        assert!(check_secret_name("db_password").is_ok());
        assert!(check_secret_name("..").is_err());
        assert!(check_secret_name("a/b").is_err());
    }

    #[test]
    fn command_splitting() {
        assert_eq!(
            split_command(r#"sh -c 'echo "hi there"' x\ y "a\"b""#).unwrap(),
            vec!["sh", "-c", "echo \"hi there\"", "x y", "a\"b"]
        );
        assert_eq!(split_command("  ").unwrap(), Vec::<String>::new());
        assert_eq!(split_command("''").unwrap(), vec![""]);
        assert!(split_command("'open").is_err());
        assert!(split_command("\"open").is_err());
        assert!(split_command("end\\").is_err());
    }
}
