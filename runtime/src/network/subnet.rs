//! App subnets: an IPv4 prefix type, the pool they are carved from, and the persisted
//! allocation of one subnet per app (deterministic start from a hash of the app name, first free
//! one after it, never one that overlaps a route the host already has).

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// An IPv4 prefix such as `10.88.0.0/16` (host bits are zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ipv4Subnet {
    network: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Subnet {
    /// The prefix `addr/prefix`; host bits of `addr` are cleared. `None` when `prefix > 32`.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Option<Ipv4Subnet> {
        (prefix <= 32).then(|| Ipv4Subnet {
            network: Ipv4Addr::from(u32::from(addr) & mask(prefix)),
            prefix,
        })
    }

    /// Network address.
    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    /// Prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The first host address (`.1` in a /24), used as the bridge's gateway address.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    /// Whether `addr` is inside.
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & mask(self.prefix) == u32::from(self.network)
    }

    /// Whether the two prefixes share an address.
    pub fn overlaps(&self, other: &Ipv4Subnet) -> bool {
        let p = self.prefix.min(other.prefix);
        u32::from(self.network) & mask(p) == u32::from(other.network) & mask(p)
    }

    /// The `index`-th sub-prefix of length `prefix` (`None` when out of range).
    fn nth(&self, prefix: u8, index: u32) -> Option<Ipv4Subnet> {
        if prefix < self.prefix || prefix > 32 || u64::from(index) >= self.count(prefix) {
            return None;
        }
        let step = 1u64 << (32 - prefix);
        let addr = u64::from(u32::from(self.network)) + u64::from(index) * step;
        Ipv4Subnet::new(Ipv4Addr::from(addr as u32), prefix)
    }

    /// How many sub-prefixes of length `prefix` fit.
    fn count(&self, prefix: u8) -> u64 {
        if prefix < self.prefix {
            0
        } else {
            1u64 << (prefix - self.prefix)
        }
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

impl fmt::Display for Ipv4Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// Why a text is not an IPv4 prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseSubnetError {
    /// Not `address/length` with an IPv4 address and a length of at most 32.
    #[error("{text:?} is not an IPv4 prefix; write e.g. \"10.88.0.0/16\"")]
    Syntax {
        /// The text as given.
        text: String,
    },
    /// The address has bits set beyond the prefix length.
    #[error("{text:?} has host bits set; write \"{network}\" instead")]
    HostBits {
        /// The text as given.
        text: String,
        /// The prefix meant, with the host bits cleared.
        network: Ipv4Subnet,
    },
}

impl FromStr for Ipv4Subnet {
    type Err = ParseSubnetError;

    fn from_str(s: &str) -> Result<Ipv4Subnet, ParseSubnetError> {
        let bad = || ParseSubnetError::Syntax {
            text: s.to_string(),
        };
        let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        let net = Ipv4Subnet::new(addr, prefix).ok_or_else(bad)?;
        if net.network != addr {
            return Err(ParseSubnetError::HostBits {
                text: s.to_string(),
                network: net,
            });
        }
        Ok(net)
    }
}

impl Serialize for Ipv4Subnet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Ipv4Subnet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Ipv4Subnet, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What every app bridge's name starts with (the firewall matches app traffic by it).
pub(crate) const BRIDGE_PREFIX: &str = "cairn";

/// The bridge device of an app subnet: `cairn` + the network address in hex (13 characters,
/// within the kernel's 15), unique on the host because subnets never overlap.
pub(crate) fn bridge_name(subnet: &Ipv4Subnet) -> String {
    format!("{BRIDGE_PREFIX}{:08x}", u32::from(subnet.network()))
}

/// Why no subnet could be allocated.
#[derive(Debug, thiserror::Error)]
pub enum SubnetError {
    /// Every subnet of the pool is taken by an app or overlaps a host route.
    #[error("no free /{prefix} left in the app network pool {pool} ({apps} apps hold one, the rest overlap host routes); remove apps or configure a larger pool")]
    PoolExhausted {
        /// The pool.
        pool: Ipv4Subnet,
        /// Subnet prefix length.
        prefix: u8,
        /// Apps holding a subnet.
        apps: usize,
    },
    /// The pool cannot hold subnets of the configured size.
    #[error("the app network pool {pool} cannot be split into /{prefix} subnets; configure a subnet prefix between {} and 30", pool.prefix())]
    BadPrefix {
        /// The pool.
        pool: Ipv4Subnet,
        /// Subnet prefix length.
        prefix: u8,
    },
    /// The allocation file could not be read or written.
    #[error("cannot {action} the subnet allocations in {path}: {reason}; check that the data dir is writable (or remove a corrupt file: apps get their subnets again)")]
    State {
        /// `read` or `write`.
        action: &'static str,
        /// Path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct AllocationFile {
    /// Subnet of each app.
    apps: BTreeMap<String, Ipv4Subnet>,
}

/// The subnet of every app that has a network, persisted in a JSON file so an app keeps its
/// subnet across agent restarts and reboots.
#[derive(Debug)]
pub(crate) struct SubnetAllocations {
    path: PathBuf,
    apps: BTreeMap<String, Ipv4Subnet>,
}

impl SubnetAllocations {
    /// Load the allocations in `path` (none when the file does not exist).
    pub(crate) fn load(path: &Path) -> Result<SubnetAllocations, SubnetError> {
        let state = |reason: String| SubnetError::State {
            action: "read",
            path: path.to_path_buf(),
            reason,
        };
        let apps = match std::fs::read(path) {
            Ok(bytes) => {
                serde_json::from_slice::<AllocationFile>(&bytes)
                    .map_err(|e| state(e.to_string()))?
                    .apps
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(state(e.to_string())),
        };
        Ok(SubnetAllocations {
            path: path.to_path_buf(),
            apps,
        })
    }

    /// The subnet of `app`, if it has one.
    pub(crate) fn get(&self, app: &str) -> Option<Ipv4Subnet> {
        self.apps.get(app).copied()
    }

    /// Apps holding a subnet.
    pub(crate) fn apps(&self) -> impl Iterator<Item = (&str, Ipv4Subnet)> {
        self.apps.iter().map(|(a, s)| (a.as_str(), *s))
    }

    /// The subnet of `app`, allocating (and persisting) one when it has none or its old one is
    /// not a /`prefix` of `pool` any more. The search starts at a hash of the app name, so an app
    /// gets the same subnet again as long as it is free; subnets that overlap any of
    /// `host_routes` are skipped.
    pub(crate) fn allocate(
        &mut self,
        app: &str,
        pool: Ipv4Subnet,
        prefix: u8,
        host_routes: &[Ipv4Subnet],
    ) -> Result<Ipv4Subnet, SubnetError> {
        if let Some(s) = self.get(app) {
            if s.prefix() == prefix && pool.overlaps(&s) && s.prefix() >= pool.prefix() {
                return Ok(s);
            }
        }
        if prefix < pool.prefix() || prefix > 30 {
            return Err(SubnetError::BadPrefix { pool, prefix });
        }
        let count = pool.count(prefix);
        let digest = Sha256::digest(app.as_bytes());
        let start = u64::from(u32::from_be_bytes([
            digest[0], digest[1], digest[2], digest[3],
        ])) % count;
        let taken: Vec<Ipv4Subnet> = self
            .apps
            .iter()
            .filter(|(a, _)| a.as_str() != app)
            .map(|(_, s)| *s)
            .collect();
        for i in 0..count {
            let index = ((start + i) % count) as u32;
            let Some(candidate) = pool.nth(prefix, index) else {
                continue;
            };
            if taken.iter().any(|t| t.overlaps(&candidate))
                || host_routes.iter().any(|r| r.overlaps(&candidate))
            {
                continue;
            }
            self.apps.insert(app.to_string(), candidate);
            self.save()?;
            return Ok(candidate);
        }
        Err(SubnetError::PoolExhausted {
            pool,
            prefix,
            apps: taken.len(),
        })
    }

    /// Forget the subnet of `app` (persisted).
    pub(crate) fn release(&mut self, app: &str) -> Result<(), SubnetError> {
        if self.apps.remove(app).is_some() {
            self.save()?;
        }
        Ok(())
    }

    fn save(&self) -> Result<(), SubnetError> {
        let state = |reason: String| SubnetError::State {
            action: "write",
            path: self.path.clone(),
            reason,
        };
        let file = AllocationFile {
            apps: self.apps.clone(),
        };
        let json = serde_json::to_vec_pretty(&file).map_err(|e| state(e.to_string()))?;
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| state(e.to_string()))?;
        }
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, json).map_err(|e| state(e.to_string()))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| state(e.to_string()))
    }
}

/// IPv4 routes of the host (`/proc/net/route`) except those through `except_devices` (our own
/// bridges): destinations a new app subnet must not overlap. The default route is left out.
pub(crate) fn host_routes(except_devices: &[String]) -> Vec<Ipv4Subnet> {
    let text = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    parse_routes(&text, except_devices)
}

fn parse_routes(text: &str, except_devices: &[String]) -> Vec<Ipv4Subnet> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (dev, dest, mask) = (cols.first()?, cols.get(1)?, cols.get(7)?);
            if except_devices.iter().any(|d| d == dev) {
                return None;
            }
            // The kernel prints addresses as native-endian (little-endian here) hex.
            let dest = Ipv4Addr::from(u32::from_be(u32::from_str_radix(dest, 16).ok()?));
            let mask = u32::from_be(u32::from_str_radix(mask, 16).ok()?);
            let prefix = mask.count_ones() as u8;
            (prefix > 0)
                .then(|| Ipv4Subnet::new(dest, prefix))
                .flatten()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Subnet {
        s.parse().unwrap()
    }

    #[test]
    fn prefixes_parse_and_overlap() {
        let pool = net("10.88.0.0/16");
        assert_eq!(pool.to_string(), "10.88.0.0/16");
        assert!(pool.overlaps(&net("10.88.7.0/24")));
        assert!(!pool.overlaps(&net("10.89.0.0/24")));
        assert!(net("10.88.7.0/24").contains("10.88.7.9".parse().unwrap()));
        assert_eq!(net("10.88.7.0/24").gateway().to_string(), "10.88.7.1");
        assert_eq!(pool.nth(24, 255), Some(net("10.88.255.0/24")));
        assert_eq!(pool.nth(24, 256), None);
        assert_eq!(
            "10.88.0.1/16"
                .parse::<Ipv4Subnet>()
                .unwrap_err()
                .to_string(),
            "\"10.88.0.1/16\" has host bits set; write \"10.88.0.0/16\" instead"
        );
        assert!("10.88.0.0".parse::<Ipv4Subnet>().is_err());
        assert_eq!(bridge_name(&net("10.88.7.0/24")), "cairn0a580700");
    }

    #[test]
    fn allocation_is_deterministic_collision_free_and_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("subnets.json");
        let pool = net("10.88.0.0/16");
        let mut a = SubnetAllocations::load(&path).unwrap();
        let shop = a.allocate("shop", pool, 24, &[]).unwrap();
        assert_eq!(a.allocate("shop", pool, 24, &[]).unwrap(), shop);
        // Another allocator (agent restart) reads the same.
        let mut b = SubnetAllocations::load(&path).unwrap();
        assert_eq!(b.get("shop"), Some(shop));
        // A host route over shop's subnet pushes a new app elsewhere; all differ.
        let mut seen = vec![shop];
        for i in 0..50 {
            let s = b.allocate(&format!("app{i}"), pool, 24, &[shop]).unwrap();
            assert!(pool.overlaps(&s) && s.prefix() == 24);
            assert!(!seen.iter().any(|x| x.overlaps(&s)), "{s} allocated twice");
            seen.push(s);
        }
        // The same name on a fresh pool lands on the same subnet (deterministic).
        let mut c = SubnetAllocations::load(&dir.path().join("other.json")).unwrap();
        assert_eq!(c.allocate("shop", pool, 24, &[]).unwrap(), shop);
        b.release("shop").unwrap();
        assert_eq!(SubnetAllocations::load(&path).unwrap().get("shop"), None);
    }

    #[test]
    fn a_full_pool_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = SubnetAllocations::load(&dir.path().join("s.json")).unwrap();
        let pool = net("10.9.0.0/23");
        a.allocate("a", pool, 24, &[]).unwrap();
        a.allocate("b", pool, 24, &[]).unwrap();
        let err = a.allocate("c", pool, 24, &[]).unwrap_err();
        assert!(err.to_string().contains("no free /24"), "{err}");
        assert!(matches!(
            a.allocate("d", pool, 16, &[]),
            Err(SubnetError::BadPrefix { .. })
        ));
    }

    #[test]
    fn routes_from_proc() {
        let text =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                    eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                    eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                    cairn0a580700\t0007580A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(
            parse_routes(text, &["cairn0a580700".into()]),
            vec![net("192.0.2.0/24")]
        );
    }
}
