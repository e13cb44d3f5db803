//! Published ports (`[HOST_IP:]HOST_PORT:CONTAINER_PORT[/PROTOCOL]`) and host names.

use std::net::IpAddr;

use super::{FieldError, PortError};
use crate::{PortMapping, Protocol};

fn port_number(text: &str, error: fn(String) -> PortError) -> Result<u16, PortError> {
    match text.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(error(text.to_string())),
    }
}

/// Parse `[HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp]`.
pub(crate) fn parse_port(text: &str) -> Result<PortMapping, FieldError> {
    let error = |reason| FieldError::Port {
        text: text.to_string(),
        reason,
    };
    let fail = |reason| Err(error(reason));
    let (addr, protocol) = match text.rsplit_once('/') {
        Some((a, "tcp")) => (a, Protocol::Tcp),
        Some((a, "udp")) => (a, Protocol::Udp),
        Some((_, p)) => {
            return fail(PortError::Protocol {
                protocol: p.to_string(),
            })
        }
        None => (text, Protocol::Tcp),
    };
    if addr.contains('-') {
        return fail(PortError::Range);
    }
    let (host_ip, host, container) = if let Some(rest) = addr.strip_prefix('[') {
        // [v6addr]:host:container
        let Some((ip, rest)) = rest.split_once("]:") else {
            return fail(PortError::Ipv6Syntax);
        };
        match rest.split_once(':') {
            Some((h, c)) => (Some(ip), h, c),
            None => return fail(PortError::MissingContainerPort),
        }
    } else {
        let parts: Vec<&str> = addr.split(':').collect();
        match parts.as_slice() {
            [_] => return fail(PortError::MissingHostPort),
            [h, c] => (None, *h, *c),
            [ip, h, c] => (Some(*ip), *h, *c),
            _ => return fail(PortError::TooManyParts),
        }
    };
    let host_ip = match host_ip {
        Some(ip) => match ip.parse::<IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                return fail(PortError::HostAddress {
                    address: ip.to_string(),
                })
            }
        },
        None => None,
    };
    let host_port = port_number(host, |text| PortError::HostPort { text }).map_err(error)?;
    let container_port =
        port_number(container, |text| PortError::ContainerPort { text }).map_err(error)?;
    Ok(PortMapping {
        host_ip,
        host_port,
        container_port,
        protocol,
    })
}

/// Check an RFC 1123 host name (what `sethostname` and DNS accept).
pub(crate) fn check_hostname(name: &str) -> Result<(), FieldError> {
    let ok = (1..=253).contains(&name.len())
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(FieldError::HostName {
            name: name.to_string(),
        })
    }
}
