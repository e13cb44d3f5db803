//! The A/B root slot: the one type every part of the agent names a slot with (the boot entries
//! on the ESP, RAUC's backend, the update record, the OS status in heartbeats, the CLI).
//!
//! On disk and on the wire a slot is its RAUC bootname, `a` or `b` (the update record's
//! `from_slot`/`to_slot`, `OsStatus.booted_slot`, `rauc.slot=` and `cairn.slot=` on the kernel
//! command line).

use serde::{Deserialize, Serialize};

/// One of the two root slots (RAUC bootname `a` or `b`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    /// root-a.
    A,
    /// root-b.
    B,
}

/// A slot name that is not `a` or `b`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown slot {given:?}: the slots are a and b (RAUC bootnames)")]
pub struct UnknownSlot {
    /// What was given.
    pub given: String,
}

impl Slot {
    /// `a` or `b`; anything else is refused.
    pub fn parse(name: &str) -> Result<Slot, UnknownSlot> {
        match name {
            "a" => Ok(Slot::A),
            "b" => Ok(Slot::B),
            _ => Err(UnknownSlot {
                given: name.to_string(),
            }),
        }
    }

    /// The bootname.
    pub fn name(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    /// The other slot.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// The slot's UKI, relative to the ESP.
    pub fn uki_path(self) -> String {
        format!("EFI/cairn/cairn-{}.efi", self.name())
    }

    /// The slot's root partition (its GPT partition label names it).
    pub fn root_partition(self) -> String {
        format!("/dev/disk/by-partlabel/root-{}", self.name())
    }

    /// The slot a kernel command line names with `key=X` (`cairn.slot`, `rauc.slot`); `None`
    /// when the key is missing or not `a`/`b`.
    pub fn from_cmdline(cmdline: &str, key: &str) -> Option<Slot> {
        cmdline
            .split_whitespace()
            .find_map(|arg| arg.strip_prefix(key)?.strip_prefix('='))
            .and_then(|name| Slot::parse(name).ok())
    }
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Slot {
    type Err = UnknownSlot;

    fn from_str(name: &str) -> Result<Slot, UnknownSlot> {
        Slot::parse(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_is_its_bootname_in_text_and_json() {
        assert_eq!(Slot::parse("b"), Ok(Slot::B));
        assert!(Slot::parse("B").is_err() && Slot::parse("c").is_err());
        assert_eq!(Slot::A.other(), Slot::B);
        assert_eq!(Slot::B.to_string(), "b");
        assert_eq!(serde_json::to_string(&Slot::A).unwrap(), "\"a\"");
        assert_eq!(serde_json::from_str::<Slot>("\"b\"").unwrap(), Slot::B);
        assert!(serde_json::from_str::<Slot>("\"c\"").is_err());
        assert_eq!(Slot::B.uki_path(), "EFI/cairn/cairn-b.efi");
    }

    #[test]
    fn the_booted_slot_is_read_from_the_named_cmdline_key() {
        let cmdline = "cairn.slot=b cairn.roothash=ab rauc.slot=b root=/dev/mapper/root quiet";
        assert_eq!(Slot::from_cmdline(cmdline, "rauc.slot"), Some(Slot::B));
        assert_eq!(Slot::from_cmdline(cmdline, "cairn.slot"), Some(Slot::B));
        assert_eq!(Slot::from_cmdline(cmdline, "rauc"), None);
        assert_eq!(Slot::from_cmdline("rauc.slot=c", "rauc.slot"), None);
    }
}
