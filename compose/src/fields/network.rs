//! Published ports (`[HOST_IP:]HOST[-LAST]:CONTAINER[-LAST][/PROTOCOL]`, a range expanded to one
//! mapping per port), host names and `extra_hosts` entries.

use std::net::IpAddr;

use super::{FieldError, PortError};
use crate::{ExtraHost, PortMapping, Protocol};

/// Most ports one service may publish, a range counting each of its ports.
pub(crate) const MAX_PORTS_PER_SERVICE: usize = 1024;

/// Most ports one app may publish: every one is a forwarding rule on the device.
pub(crate) const MAX_PORTS_PER_APP: usize = 4096;

/// An inclusive range of ports; a single port is a range of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PortRange {
    first: u16,
    last: u16,
}

impl PortRange {
    fn len(self) -> usize {
        usize::from(self.last - self.first) + 1
    }
}

fn port_number(text: &str, error: fn(String) -> PortError) -> Result<u16, PortError> {
    match text.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(error(text.to_string())),
    }
}

/// Parse `PORT` or `FIRST-LAST`; `error` names a number that is not a port (host or container).
pub(crate) fn parse_port_range(
    text: &str,
    error: fn(String) -> PortError,
) -> Result<PortRange, PortError> {
    let (first, last) = text.split_once('-').unwrap_or((text, text));
    let range = PortRange {
        first: port_number(first, error)?,
        last: port_number(last, error)?,
    };
    if range.last < range.first {
        return Err(PortError::RangeOrder {
            range: text.to_string(),
        });
    }
    if range.len() > MAX_PORTS_PER_SERVICE {
        return Err(PortError::RangeTooLong {
            count: range.len(),
            max: MAX_PORTS_PER_SERVICE,
        });
    }
    Ok(range)
}

/// One mapping per port of a host range and a container range of the same length.
pub(crate) fn expand_ports(
    host_ip: Option<IpAddr>,
    host: PortRange,
    container: PortRange,
    protocol: Protocol,
) -> Result<Vec<PortMapping>, PortError> {
    if host.len() != container.len() {
        return Err(PortError::RangeLengths {
            host: host.len(),
            container: container.len(),
        });
    }
    Ok((0..=container.last - container.first)
        .map(|i| PortMapping {
            host_ip,
            host_port: host.first + i,
            container_port: container.first + i,
            protocol,
        })
        .collect())
}

/// Parse `tcp` or `udp`.
pub(crate) fn parse_protocol(text: &str) -> Result<Protocol, PortError> {
    match text {
        "tcp" => Ok(Protocol::Tcp),
        "udp" => Ok(Protocol::Udp),
        _ => Err(PortError::Protocol {
            protocol: text.to_string(),
        }),
    }
}

/// Parse a host address to publish on.
pub(crate) fn parse_host_ip(text: &str) -> Result<IpAddr, PortError> {
    text.parse().map_err(|_| PortError::HostAddress {
        address: text.to_string(),
    })
}

/// Check a long-syntax port `mode`: `host` and `ingress` both publish on the device itself.
pub(crate) fn parse_port_mode(text: &str) -> Result<(), FieldError> {
    match text {
        "host" | "ingress" => Ok(()),
        _ => Err(FieldError::PortMode {
            mode: text.to_string(),
        }),
    }
}

/// Split `[HOST_IP:]HOST:CONTAINER` (an IPv6 address in brackets) into its parts.
fn split_address(addr: &str) -> Result<(Option<&str>, &str, &str), PortError> {
    if let Some(rest) = addr.strip_prefix('[') {
        let (ip, rest) = rest.split_once("]:").ok_or(PortError::Ipv6Syntax)?;
        let (host, container) = rest
            .split_once(':')
            .ok_or(PortError::MissingContainerPort)?;
        return Ok((Some(ip), host, container));
    }
    let mut parts = addr.splitn(4, ':');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(_), None, _, _) => Err(PortError::MissingHostPort),
        (Some(h), Some(c), None, _) => Ok((None, h, c)),
        (Some(ip), Some(h), Some(c), None) => Ok((Some(ip), h, c)),
        _ => Err(PortError::TooManyParts),
    }
}

/// Parse `[HOST_IP:]HOST[-LAST]:CONTAINER[-LAST][/tcp|/udp]` into one mapping per port.
pub(crate) fn parse_port(text: &str) -> Result<Vec<PortMapping>, FieldError> {
    let error = |reason| FieldError::Port {
        text: text.to_string(),
        reason,
    };
    let (addr, protocol) = match text.rsplit_once('/') {
        Some((addr, protocol)) => (addr, parse_protocol(protocol).map_err(error)?),
        None => (text, Protocol::Tcp),
    };
    let (host_ip, host, container) = split_address(addr).map_err(error)?;
    let host_ip = host_ip.map(parse_host_ip).transpose().map_err(error)?;
    let host = parse_port_range(host, |text| PortError::HostPort { text }).map_err(error)?;
    let container =
        parse_port_range(container, |text| PortError::ContainerPort { text }).map_err(error)?;
    expand_ports(host_ip, host, container, protocol).map_err(error)
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

/// Check an `extra_hosts` entry: a host name and an IP address (IPv6 possibly in brackets).
pub(crate) fn parse_extra_host(host: &str, address: &str) -> Result<ExtraHost, FieldError> {
    check_hostname(host)?;
    let bare = address
        .strip_prefix('[')
        .and_then(|a| a.strip_suffix(']'))
        .unwrap_or(address);
    let ip = bare.parse().map_err(|_| FieldError::HostAddress {
        host: host.to_string(),
        address: address.to_string(),
    })?;
    Ok(ExtraHost {
        host: host.to_string(),
        ip,
    })
}
