//! The A/B boot slots as systemd-boot 252 sees them on the ESP, and RAUC's custom bootloader
//! backend over them (`cairn-agent boot rauc-backend ...`, system.conf
//! `bootloader-custom-backend=/usr/lib/cairn/rauc-bootloader`).
//!
//! # Layout (the image writes the same, image/src/esp.rs)
//!
//! - `EFI/cairn/cairn-{a,b}.efi`: one signed UKI per slot (`cairn.slot=X ... rauc.slot=X`).
//! - `loader/loader.conf`: `default cairn-*`, never rewritten.
//! - `loader/entries/cairn-X[+LEFT-DONE].conf`, one per slot:
//!   `title`, `sort-key cairn`, `version <generation>`, `efi /EFI/cairn/cairn-X.efi`.
//!
//! # How systemd-boot 252 picks the entry (src/boot/efi/boot.c)
//!
//! `config_entry_compare` sorts entries with no tries left (`+0-N`) to the end of the list, then
//! by `sort-key` (strcmp), then by `version` *descending*, then by id (the lowercased file name)
//! descending. `config_default_entry_select` takes the LoaderEntryOneShot and LoaderEntryDefault
//! EFI variables first (Cairn never sets them), then the `default` glob of loader.conf, through
//! `config_entry_find`, which returns the *first* entry of the sorted list that matches. An entry
//! with 0 tries left is still booted when it is the only match; it is skipped only because it is
//! sorted last. Hence `default cairn-*` (not `cairn-a*`): the glob matches both slots, so a slot
//! whose counter ran out falls behind the other one and systemd-boot boots the other slot by
//! itself. The primary slot is the one with the higher `version` (an activation generation, not
//! the OS version: set-primary writes the other slot's generation + 1), so making a slot primary
//! rewrites only that slot's own entry and never touches the running slot's.
//!
//! # Durability and crash order
//!
//! Every change is a sequence of [`EspStep`]s, each made durable before the next (file fsync,
//! rename, then the directory and the filesystem synced: vfat needs syncfs). New content is
//! written under a `.tmp` name first (systemd-boot loads only `*.conf` entries), so a torn write
//! is never an entry. set-primary X: (1) write X's new entry as `cairn-X.conf.tmp`; (2) remove
//! X's old entries; (3) rename the new one to `cairn-X+TRIES-0.conf`. A power cut before (3)
//! leaves no entry for X, and the running slot boots as before (the update is simply not
//! active); after (3) X boots with a full counter. Removing before renaming matters: an old
//! blessed `cairn-X.conf` next to the new counted one would boot X's new UKI without counting
//! once the counted entry ran out. set-state renames a single file. install-uki marks X bad
//! before it replaces X's UKI, so a half-updated slot is never the default.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The entries directory on the ESP.
pub const ENTRIES_DIR: &str = "loader/entries";
/// The `default` of loader.conf that lets systemd-boot fall back by itself.
pub const DEFAULT_PATTERN: &str = "cairn-*";
/// Suffix of files being written; systemd-boot ignores them (it loads `*.conf` only).
const TMP_SUFFIX: &str = ".tmp";

pub use crate::slot::Slot;

/// A slot's boot state, as RAUC's `get-state` / `set-state` name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    /// Bootable: blessed, or still has tries left.
    Good,
    /// Not bootable on its own: no entry, or its counter ran out (`+0-N`).
    Bad,
}

impl SlotState {
    /// `good` or `bad`.
    pub fn parse(name: &str) -> Result<SlotState, SlotError> {
        match name {
            "good" => Ok(SlotState::Good),
            "bad" => Ok(SlotState::Bad),
            _ => Err(SlotError::UnknownState {
                given: name.to_string(),
            }),
        }
    }

    /// `good` or `bad`.
    pub fn name(self) -> &'static str {
        match self {
            SlotState::Good => "good",
            SlotState::Bad => "bad",
        }
    }
}

/// A boot slot operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    /// Not `good` or `bad`.
    #[error("unknown slot state {given:?}: use good or bad")]
    UnknownState {
        /// What was given.
        given: String,
    },
    /// The UKI to install is not a PE image.
    #[error("{path} is not an EFI image (no MZ header): refusing to put it on the ESP")]
    NotAnEfiImage {
        /// The file.
        path: PathBuf,
    },
    /// Installing into the running slot.
    #[error("slot {slot} is the booted slot: install its UKI from the other slot")]
    Booted {
        /// The slot.
        slot: Slot,
    },
    /// The slot has no boot entry to change.
    #[error("slot {slot} has no boot entry in {dir}: make it primary (set-primary) to create one")]
    NoEntry {
        /// The slot.
        slot: Slot,
        /// The entries directory.
        dir: PathBuf,
    },
    /// The slot's UKI is missing.
    #[error("slot {slot} has no UKI at {path}: install one first (cairn-agent boot install-uki)")]
    NoUki {
        /// The slot.
        slot: Slot,
        /// The missing file.
        path: PathBuf,
    },
    /// Nothing systemd-boot could boot by default.
    #[error(
        "no Cairn boot entry matches the default of {esp}/loader/loader.conf: is the ESP mounted?"
    )]
    NoDefault {
        /// The ESP.
        esp: PathBuf,
    },
    /// A file on the ESP could not be read or changed.
    #[error("{what} {path}: {source}; check the ESP is mounted read-write")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SlotError {
    let path = path.to_path_buf();
    move |source| SlotError::Io { what, path, source }
}

/// A boot counter: tries left, tries done.
pub type Counter = (u32, u32);

/// The entry file name of a slot: `cairn-a.conf` (blessed) or `cairn-a+3-0.conf`.
pub fn entry_name(slot: Slot, counter: Option<Counter>) -> String {
    match counter {
        Some((left, done)) => format!("cairn-{slot}+{left}-{done}.conf"),
        None => format!("cairn-{slot}.conf"),
    }
}

/// The text of a slot's entry; `generation` orders the slots (higher boots first).
pub fn entry_text(slot: Slot, generation: u64) -> String {
    format!(
        "title Cairn (slot {upper})\nsort-key cairn\nversion {generation}\nefi /{uki}\n",
        upper = slot.name().to_ascii_uppercase(),
        uki = slot.uki_path(),
    )
}

/// Slot and counter from an entry file name, as systemd-boot parses `+LEFT[-DONE]`.
pub fn parse_entry_name(name: &str) -> Option<(Slot, Option<Counter>)> {
    let stem = name.strip_suffix(".conf")?.strip_prefix("cairn-")?;
    let (slot, counter) = match stem.split_once('+') {
        None => (stem, None),
        Some((slot, counter)) => {
            let (left, done) = counter.split_once('-').unwrap_or((counter, "0"));
            let number = |s: &str| {
                (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| s.parse::<u32>().ok())
                    .flatten()
            };
            (slot, Some((number(left)?, number(done)?)))
        }
    };
    Some((Slot::parse(slot).ok()?, counter))
}

/// One of our entry files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// File name in `loader/entries`.
    pub name: String,
    /// The slot it boots.
    pub slot: Slot,
    /// Its boot counter (none: blessed).
    pub counter: Option<Counter>,
    /// `sort-key`.
    pub sort_key: Option<String>,
    /// `version` (our activation generation).
    pub version: Option<String>,
    /// `efi`, relative to the ESP.
    pub efi: Option<String>,
}

impl Entry {
    fn tries_left_zero(&self) -> bool {
        matches!(self.counter, Some((0, _)))
    }

    fn generation(&self) -> u64 {
        self.version
            .as_deref()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

fn parse_entry(name: &str, text: &str) -> Option<Entry> {
    let (slot, counter) = parse_entry_name(name)?;
    let field = |key: &str| {
        text.lines().find_map(|line| {
            let (k, v) = line.trim().split_once(char::is_whitespace)?;
            (k == key).then(|| v.trim().to_string())
        })
    };
    Some(Entry {
        name: name.to_string(),
        slot,
        counter,
        sort_key: field("sort-key"),
        version: field("version"),
        efi: field("efi").map(|p| p.replace('\\', "/").trim_start_matches('/').to_string()),
    })
}

/// Our entries on the ESP (other files are left alone), in directory order.
pub fn read_entries(esp: &Path) -> Result<Vec<Entry>, SlotError> {
    let dir = esp.join(ENTRIES_DIR);
    let mut entries = Vec::new();
    for item in fs::read_dir(&dir).map_err(io("list", &dir))? {
        let item = item.map_err(io("list", &dir))?;
        let Ok(name) = item.file_name().into_string() else {
            continue;
        };
        if parse_entry_name(&name).is_none() {
            continue;
        }
        let text = fs::read_to_string(item.path()).map_err(io("read", &item.path()))?;
        entries.extend(parse_entry(&name, &text));
    }
    Ok(entries)
}

/// systemd's `strverscmp_improved`, for the strings we write: runs of digits compare as
/// numbers, everything else byte by byte.
fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn runs(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let (ra, rb) = (runs(a), runs(b));
    for ((da, sa), (db, sb)) in ra.iter().zip(rb.iter()) {
        let ord = if *da && *db {
            let (ta, tb) = (sa.trim_start_matches('0'), sb.trim_start_matches('0'));
            ta.len().cmp(&tb.len()).then(ta.cmp(tb))
        } else {
            sa.cmp(sb)
        };
        if ord.is_ne() {
            return ord;
        }
    }
    ra.len().cmp(&rb.len())
}

/// systemd-boot 252's `config_entry_compare` for our entries (no machine-id).
fn sd_boot_compare(a: &Entry, b: &Entry) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    // No tries left: to the end of the list.
    let ord = a.tries_left_zero().cmp(&b.tries_left_zero());
    if ord.is_ne() {
        return ord;
    }
    // Entries with a sort key before those without.
    let ord = a.sort_key.is_none().cmp(&b.sort_key.is_none());
    if ord.is_ne() {
        return ord;
    }
    if let (Some(ka), Some(kb)) = (&a.sort_key, &b.sort_key) {
        let ord = ka.cmp(kb);
        if ord.is_ne() {
            return ord;
        }
        let ord = match (&a.version, &b.version) {
            (Some(va), Some(vb)) => version_cmp(vb, va),
            (None, Some(_)) => Ordering::Greater,
            (Some(_), None) => Ordering::Less,
            (None, None) => Ordering::Equal,
        };
        if ord.is_ne() {
            return ord;
        }
    }
    let ord = version_cmp(&b.name.to_lowercase(), &a.name.to_lowercase());
    if ord.is_ne() {
        return ord;
    }
    match (a.counter, b.counter) {
        (Some((la, da)), Some((lb, db))) => lb.cmp(&la).then(da.cmp(&db)),
        _ => Ordering::Equal,
    }
}

/// systemd-boot's `MetaiMatch` for `*` and `?`, case-insensitive.
fn glob_match(pattern: &str, text: &str) -> bool {
    fn go(p: &[u8], t: &[u8]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some((b'*', rest)) => (0..=t.len()).any(|i| go(rest, &t[i..])),
            Some((b'?', rest)) => !t.is_empty() && go(rest, &t[1..]),
            Some((c, rest)) => {
                t.first().is_some_and(|x| x.eq_ignore_ascii_case(c)) && go(rest, &t[1..])
            }
        }
    }
    go(pattern.as_bytes(), text.as_bytes())
}

/// The `default` of loader.conf, if any.
fn default_pattern(esp: &Path) -> Result<Option<String>, SlotError> {
    let path = esp.join("loader/loader.conf");
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("read", &path)(e)),
    };
    Ok(text.lines().find_map(|line| {
        let (key, value) = line.trim().split_once(char::is_whitespace)?;
        (key == "default").then(|| value.trim().to_string())
    }))
}

/// The entry systemd-boot 252 boots by default: entries whose UKI exists, sorted as it sorts
/// them, the first matching loader.conf's `default` (the first of all without one).
pub fn default_entry(esp: &Path) -> Result<Option<Entry>, SlotError> {
    let mut entries: Vec<Entry> = read_entries(esp)?
        .into_iter()
        .filter(|e| e.efi.as_deref().is_some_and(|efi| esp.join(efi).is_file()))
        .collect();
    entries.sort_by(sd_boot_compare);
    let pattern = default_pattern(esp)?;
    Ok(entries.into_iter().find(|e| {
        pattern
            .as_deref()
            .is_none_or(|p| glob_match(p, &e.name.to_lowercase()))
    }))
}

/// RAUC `get-primary`: the slot systemd-boot boots next.
pub fn get_primary(esp: &Path) -> Result<Slot, SlotError> {
    default_entry(esp)?
        .map(|e| e.slot)
        .ok_or_else(|| SlotError::NoDefault {
            esp: esp.to_path_buf(),
        })
}

/// RAUC `get-state`: bad when the slot has no entry or its counter ran out.
pub fn get_state(esp: &Path, slot: Slot) -> Result<SlotState, SlotError> {
    let mut mine: Vec<Entry> = read_entries(esp)?
        .into_iter()
        .filter(|e| e.slot == slot)
        .collect();
    mine.sort_by(sd_boot_compare);
    Ok(match mine.first() {
        Some(e) if !e.tries_left_zero() => SlotState::Good,
        _ => SlotState::Bad,
    })
}

/// One durable change on the ESP. Paths are relative to the ESP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EspStep {
    /// Write a new file (fsync'd) under a name systemd-boot ignores.
    Write {
        /// The file.
        path: String,
        /// Its content.
        contents: Vec<u8>,
    },
    /// Copy a file from outside the ESP (fsync'd) under a name systemd-boot ignores.
    CopyIn {
        /// The source.
        from: PathBuf,
        /// The file on the ESP.
        to: String,
    },
    /// Remove a file.
    Remove {
        /// The file.
        path: String,
    },
    /// Rename (replacing the target).
    Rename {
        /// From.
        from: String,
        /// To.
        to: String,
    },
}

/// Apply `steps` in order, each durable (file and directory synced) before the next. Tests stop
/// after `limit` steps to model a power cut.
pub fn apply(esp: &Path, steps: &[EspStep], limit: Option<usize>) -> Result<(), SlotError> {
    for step in steps.iter().take(limit.unwrap_or(usize::MAX)) {
        tracing::debug!(?step, "ESP change");
        match step {
            EspStep::Write { path, contents } => {
                let path = esp.join(path);
                let mut file = fs::File::create(&path).map_err(io("create", &path))?;
                file.write_all(contents).map_err(io("write", &path))?;
                file.sync_all().map_err(io("sync", &path))?;
                super::sync_dir(&path).map_err(io("sync", &path))?;
            }
            EspStep::CopyIn { from, to } => {
                let to = esp.join(to);
                fs::copy(from, &to).map_err(io("copy to", &to))?;
                fs::File::open(&to)
                    .and_then(|f| f.sync_all())
                    .map_err(io("sync", &to))?;
                super::sync_dir(&to).map_err(io("sync", &to))?;
            }
            EspStep::Remove { path } => {
                let path = esp.join(path);
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io("remove", &path)(e)),
                }
                super::sync_dir(&path).map_err(io("sync", &path))?;
            }
            EspStep::Rename { from, to } => {
                let (from, to) = (esp.join(from), esp.join(to));
                fs::rename(&from, &to).map_err(io("rename", &from))?;
                super::sync_dir(&to).map_err(io("sync", &to))?;
            }
        }
    }
    Ok(())
}

/// Leftover `.tmp` files of an interrupted change (never entries; removed before the next one).
fn cleanup_steps(esp: &Path) -> Vec<EspStep> {
    let mut steps = Vec::new();
    for dir in [ENTRIES_DIR, "EFI/cairn"] {
        let Ok(items) = fs::read_dir(esp.join(dir)) else {
            continue;
        };
        let mut names: Vec<String> = items
            .filter_map(|i| i.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(TMP_SUFFIX))
            .collect();
        names.sort();
        steps.extend(names.into_iter().map(|n| EspStep::Remove {
            path: format!("{dir}/{n}"),
        }));
    }
    steps
}

/// The steps of `set-state`: one rename per entry of the slot.
pub fn plan_set_state(esp: &Path, slot: Slot, state: SlotState) -> Result<Vec<EspStep>, SlotError> {
    let mine: Vec<Entry> = read_entries(esp)?
        .into_iter()
        .filter(|e| e.slot == slot)
        .collect();
    if mine.is_empty() && state == SlotState::Good {
        return Err(SlotError::NoEntry {
            slot,
            dir: esp.join(ENTRIES_DIR),
        });
    }
    Ok(mine
        .into_iter()
        .filter_map(|e| {
            let counter = match state {
                SlotState::Good => None,
                SlotState::Bad => Some((0, e.counter.map_or(0, |(_, done)| done))),
            };
            let to = entry_name(slot, counter);
            (to != e.name).then(|| EspStep::Rename {
                from: format!("{ENTRIES_DIR}/{}", e.name),
                to: format!("{ENTRIES_DIR}/{to}"),
            })
        })
        .collect())
}

/// The steps of `set-primary` (see the module docs for the order).
pub fn plan_set_primary(esp: &Path, slot: Slot, tries: u32) -> Result<Vec<EspStep>, SlotError> {
    let uki = esp.join(slot.uki_path());
    if !uki.is_file() {
        return Err(SlotError::NoUki { slot, path: uki });
    }
    let entries = read_entries(esp)?;
    let generation = entries.iter().map(Entry::generation).max().unwrap_or(0) + 1;
    let target = entry_name(slot, Some((tries.max(1), 0)));
    let tmp = format!("{ENTRIES_DIR}/cairn-{slot}.conf{TMP_SUFFIX}");
    let mut steps = vec![EspStep::Write {
        path: tmp.clone(),
        contents: entry_text(slot, generation).into_bytes(),
    }];
    steps.extend(
        entries
            .iter()
            .filter(|e| e.slot == slot && e.name != target)
            .map(|e| EspStep::Remove {
                path: format!("{ENTRIES_DIR}/{}", e.name),
            }),
    );
    steps.push(EspStep::Rename {
        from: tmp,
        to: format!("{ENTRIES_DIR}/{target}"),
    });
    Ok(steps)
}

/// RAUC `set-state`: good = bless (drop the counter), bad = `+0-DONE`.
pub fn set_state(esp: &Path, slot: Slot, state: SlotState) -> Result<(), SlotError> {
    let mut steps = cleanup_steps(esp);
    steps.extend(plan_set_state(esp, slot, state)?);
    apply(esp, &steps, None)?;
    tracing::info!(%slot, state = state.name(), "boot slot state set");
    Ok(())
}

/// RAUC `set-primary`: the slot boots next, with `tries` tries before systemd-boot falls back to
/// the other slot.
pub fn set_primary(esp: &Path, slot: Slot, tries: u32) -> Result<(), SlotError> {
    let mut steps = cleanup_steps(esp);
    steps.extend(plan_set_primary(esp, slot, tries)?);
    apply(esp, &steps, None)?;
    tracing::info!(%slot, tries, "boot slot made primary");
    Ok(())
}

/// The steps of `install-uki` after the slot was marked bad: copy under a temporary name, then
/// rename over the slot's UKI.
pub fn plan_install_uki(uki: &Path, slot: Slot) -> Vec<EspStep> {
    let tmp = format!("{}{TMP_SUFFIX}", slot.uki_path());
    vec![
        EspStep::CopyIn {
            from: uki.to_path_buf(),
            to: tmp.clone(),
        },
        EspStep::Rename {
            from: tmp,
            to: slot.uki_path(),
        },
    ]
}

/// Put `uki` on the ESP as `slot`'s UKI (the RAUC slot hook's job). The slot is marked bad
/// first, so it is never booted by default until `set-primary`; `booted` (from `cairn.slot=` on
/// the kernel command line) is refused.
pub fn install_uki(
    esp: &Path,
    uki: &Path,
    slot: Slot,
    booted: Option<Slot>,
) -> Result<(), SlotError> {
    if booted == Some(slot) {
        return Err(SlotError::Booted { slot });
    }
    let mut magic = [0u8; 2];
    let mut file = fs::File::open(uki).map_err(io("open", uki))?;
    if std::io::Read::read_exact(&mut file, &mut magic).is_err() || &magic != b"MZ" {
        return Err(SlotError::NotAnEfiImage {
            path: uki.to_path_buf(),
        });
    }
    let dir = esp.join(slot.uki_path());
    let dir = dir.parent().expect("has a parent");
    fs::create_dir_all(dir).map_err(io("create", dir))?;
    let mut steps = cleanup_steps(esp);
    steps.extend(plan_set_state(esp, slot, SlotState::Bad)?);
    steps.extend(plan_install_uki(uki, slot));
    apply(esp, &steps, None)?;
    tracing::info!(%slot, uki = %uki.display(), "UKI installed on the ESP");
    Ok(())
}

/// The booted slot from a kernel command line (`cairn.slot=X`).
pub fn booted_slot(cmdline: &str) -> Option<Slot> {
    Slot::from_cmdline(cmdline, "cairn.slot")
}

/// A request of RAUC's custom bootloader backend protocol (RAUC 1.8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RaucRequest {
    /// Print the primary slot's bootname.
    GetPrimary,
    /// Make a slot primary.
    SetPrimary(Slot),
    /// Print `good` or `bad`.
    GetState(Slot),
    /// Mark a slot good or bad.
    SetState(Slot, SlotState),
}

/// Serve one backend request; returns what to print on stdout.
pub fn rauc_backend(
    esp: &Path,
    tries: u32,
    request: &RaucRequest,
) -> Result<Option<String>, SlotError> {
    let _span = tracing::info_span!("boot.rauc_backend", esp = %esp.display()).entered();
    match request {
        RaucRequest::GetPrimary => get_primary(esp).map(|s| Some(s.name().to_string())),
        RaucRequest::SetPrimary(slot) => set_primary(esp, *slot, tries).map(|()| None),
        RaucRequest::GetState(slot) => get_state(esp, *slot).map(|s| Some(s.name().to_string())),
        RaucRequest::SetState(slot, state) => set_state(esp, *slot, *state).map(|()| None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ESP as the image makes it: both UKIs, `default cairn-*`, a primary (generation 2) and
    /// b (generation 1), both counted.
    fn image_esp() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let esp = dir.path();
        fs::create_dir_all(esp.join("EFI/cairn")).unwrap();
        fs::create_dir_all(esp.join(ENTRIES_DIR)).unwrap();
        fs::write(
            esp.join("loader/loader.conf"),
            "default cairn-*\ntimeout 0\n",
        )
        .unwrap();
        for (slot, generation) in [(Slot::A, 2), (Slot::B, 1)] {
            fs::write(esp.join(slot.uki_path()), format!("MZ old {slot}")).unwrap();
            fs::write(
                esp.join(ENTRIES_DIR).join(entry_name(slot, Some((3, 0)))),
                entry_text(slot, generation),
            )
            .unwrap();
        }
        dir
    }

    fn names(esp: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(esp.join(ENTRIES_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    fn rename(esp: &Path, from: &str, to: &str) {
        let dir = esp.join(ENTRIES_DIR);
        fs::rename(dir.join(from), dir.join(to)).unwrap();
    }

    /// What systemd-boot does to the entry it boots: count one try.
    fn boot_once(esp: &Path) -> Slot {
        let entry = default_entry(esp).unwrap().expect("something boots");
        if let Some((left, done)) = entry.counter {
            if left > 0 {
                let next = entry_name(entry.slot, Some((left - 1, done + 1)));
                rename(esp, &entry.name, &next);
            }
        }
        entry.slot
    }

    #[test]
    fn names_parse_like_systemd_boot() {
        assert_eq!(parse_entry_name("cairn-a.conf"), Some((Slot::A, None)));
        assert_eq!(
            parse_entry_name("cairn-b+3-0.conf"),
            Some((Slot::B, Some((3, 0))))
        );
        assert_eq!(
            parse_entry_name("cairn-b+2.conf"),
            Some((Slot::B, Some((2, 0))))
        );
        assert_eq!(
            parse_entry_name("cairn-a+0-3.conf"),
            Some((Slot::A, Some((0, 3))))
        );
        assert_eq!(parse_entry_name("cairn-c.conf"), None);
        assert_eq!(parse_entry_name("cairn-a.conf.tmp"), None);
        assert_eq!(parse_entry_name("cairn-a+x-1.conf"), None);
        assert_eq!(parse_entry_name("other-a.conf"), None);
        assert!(Slot::parse("c").is_err() && Slot::parse("A").is_err());
    }

    #[test]
    fn sorting_follows_systemd_boot_252() {
        let e = |name: &str, version: &str| {
            parse_entry(name, &format!("sort-key cairn\nversion {version}\n")).unwrap()
        };
        let mut list = [
            e("cairn-a+0-3.conf", "9"),
            e("cairn-b.conf", "2"),
            e("cairn-a+3-0.conf", "10"),
        ];
        list.sort_by(sd_boot_compare);
        let order: Vec<&str> = list.iter().map(|e| e.name.as_str()).collect();
        // No tries left: last whatever its version; then version descending (10 > 2 numerically).
        assert_eq!(
            order,
            ["cairn-a+3-0.conf", "cairn-b.conf", "cairn-a+0-3.conf"]
        );
        assert!(
            glob_match("cairn-*", "cairn-b+1-2.conf") && glob_match("CAIRN-?.conf", "cairn-a.conf")
        );
        assert!(!glob_match("cairn-a*", "cairn-b.conf"));
    }

    #[test]
    fn the_image_layout_boots_a_and_falls_back_to_b_by_itself() {
        let dir = image_esp();
        let esp = dir.path();
        assert_eq!(get_primary(esp).unwrap(), Slot::A);
        // a never gets blessed: three counted boots, then systemd-boot picks b on its own.
        for _ in 0..3 {
            assert_eq!(boot_once(esp), Slot::A);
        }
        assert_eq!(get_state(esp, Slot::A).unwrap(), SlotState::Bad);
        assert_eq!(boot_once(esp), Slot::B);
        assert_eq!(get_primary(esp).unwrap(), Slot::B);
    }

    #[test]
    fn set_primary_gives_a_fresh_counter_and_the_fallback_still_works() {
        let dir = image_esp();
        let esp = dir.path();
        assert_eq!(boot_once(esp), Slot::A);
        set_state(esp, Slot::A, SlotState::Good).unwrap();
        assert_eq!(names(esp), ["cairn-a.conf", "cairn-b+3-0.conf"]);
        // An update into b: RAUC marks b bad, the hook installs the UKI, the agent activates.
        install_uki(
            esp,
            &{
                let uki = esp.join("new.efi");
                fs::write(&uki, b"MZ new b").unwrap();
                uki
            },
            Slot::B,
            Some(Slot::A),
        )
        .unwrap();
        assert_eq!(
            fs::read(esp.join("EFI/cairn/cairn-b.efi")).unwrap(),
            b"MZ new b"
        );
        assert_eq!(get_state(esp, Slot::B).unwrap(), SlotState::Bad);
        assert_eq!(get_primary(esp).unwrap(), Slot::A);
        set_primary(esp, Slot::B, 3).unwrap();
        assert_eq!(names(esp), ["cairn-a.conf", "cairn-b+3-0.conf"]);
        assert_eq!(get_primary(esp).unwrap(), Slot::B);
        assert_eq!(get_state(esp, Slot::B).unwrap(), SlotState::Good);
        // b is broken: it never gets blessed and systemd-boot goes back to a after 3 tries.
        for _ in 0..3 {
            assert_eq!(boot_once(esp), Slot::B);
        }
        assert_eq!(boot_once(esp), Slot::A);
        assert_eq!(get_primary(esp).unwrap(), Slot::A);
        // And a later good update of b is blessed and stays primary.
        set_primary(esp, Slot::B, 2).unwrap();
        assert_eq!(names(esp), ["cairn-a.conf", "cairn-b+2-0.conf"]);
        assert_eq!(boot_once(esp), Slot::B);
        set_state(esp, Slot::B, SlotState::Good).unwrap();
        assert_eq!(names(esp), ["cairn-a.conf", "cairn-b.conf"]);
        assert_eq!(boot_once(esp), Slot::B);
        assert_eq!(get_primary(esp).unwrap(), Slot::B);
    }

    #[test]
    fn set_state_renames_only_the_slot_entry() {
        let dir = image_esp();
        let esp = dir.path();
        rename(esp, "cairn-a+3-0.conf", "cairn-a+1-2.conf");
        set_state(esp, Slot::A, SlotState::Bad).unwrap();
        assert_eq!(names(esp), ["cairn-a+0-2.conf", "cairn-b+3-0.conf"]);
        assert_eq!(get_state(esp, Slot::A).unwrap(), SlotState::Bad);
        set_state(esp, Slot::A, SlotState::Good).unwrap();
        assert_eq!(names(esp), ["cairn-a.conf", "cairn-b+3-0.conf"]);
        set_state(esp, Slot::A, SlotState::Bad).unwrap();
        assert_eq!(names(esp), ["cairn-a+0-0.conf", "cairn-b+3-0.conf"]);
        // Idempotent.
        set_state(esp, Slot::A, SlotState::Bad).unwrap();
        assert_eq!(names(esp), ["cairn-a+0-0.conf", "cairn-b+3-0.conf"]);
        fs::remove_file(esp.join(ENTRIES_DIR).join("cairn-a+0-0.conf")).unwrap();
        assert_eq!(get_state(esp, Slot::A).unwrap(), SlotState::Bad);
        assert!(matches!(
            set_state(esp, Slot::A, SlotState::Good),
            Err(SlotError::NoEntry { .. })
        ));
    }

    #[test]
    fn install_uki_refuses_non_pe_files_and_the_booted_slot() {
        let dir = image_esp();
        let esp = dir.path();
        let text = esp.join("x");
        fs::write(&text, b"#!/bin/sh").unwrap();
        assert!(matches!(
            install_uki(esp, &text, Slot::B, None),
            Err(SlotError::NotAnEfiImage { .. })
        ));
        fs::write(&text, b"M").unwrap();
        assert!(install_uki(esp, &text, Slot::B, None).is_err());
        fs::write(&text, b"MZ").unwrap();
        assert!(matches!(
            install_uki(esp, &text, Slot::A, Some(Slot::A)),
            Err(SlotError::Booted { .. })
        ));
        assert_eq!(
            names(esp),
            ["cairn-a+3-0.conf", "cairn-b+3-0.conf"],
            "nothing changed"
        );
        assert_eq!(booted_slot("x cairn.slot=b rauc.slot=b"), Some(Slot::B));
        assert_eq!(booted_slot("x cairn.slot=c"), None);
    }

    /// A power cut after every step of an update (install-uki, then set-primary) leaves an ESP
    /// on which systemd-boot boots either the old slot, or the new one with a counter, and never
    /// the new UKI through an uncounted entry.
    #[test]
    fn a_power_cut_at_any_step_leaves_a_bootable_sensible_esp() {
        let new_uki = tempfile::NamedTempFile::new().unwrap();
        fs::write(new_uki.path(), b"MZ new b").unwrap();
        let prepare = || {
            let dir = image_esp();
            let esp = dir.path();
            assert_eq!(boot_once(esp), Slot::A);
            set_state(esp, Slot::A, SlotState::Good).unwrap();
            // b as a previous update left it: blessed, generation 5 (a is primary at 6).
            rename(esp, "cairn-b+3-0.conf", "cairn-b.conf");
            fs::write(
                esp.join(ENTRIES_DIR).join("cairn-b.conf"),
                entry_text(Slot::B, 5),
            )
            .unwrap();
            fs::write(
                esp.join(ENTRIES_DIR).join("cairn-a.conf"),
                entry_text(Slot::A, 6),
            )
            .unwrap();
            dir
        };
        let plan = |esp: &Path| {
            let mut steps = plan_set_state(esp, Slot::B, SlotState::Bad).unwrap();
            // set-state runs before install-uki plans its copy; model the whole sequence.
            steps.extend(plan_install_uki(new_uki.path(), Slot::B));
            steps
        };
        let dir = prepare();
        let install = plan(dir.path());
        assert_eq!(install.len(), 3);
        for cut in 0..=install.len() {
            let dir = prepare();
            let esp = dir.path();
            apply(esp, &install, Some(cut)).unwrap();
            let entry = default_entry(esp).unwrap().expect("bootable");
            assert_eq!(
                entry.slot,
                Slot::A,
                "cut after {cut} install steps: {:?}",
                names(esp)
            );
        }
        // Installed, then set-primary cut at every step (stale .tmp files included).
        let dir = prepare();
        apply(dir.path(), &plan(dir.path()), None).unwrap();
        let primary = plan_set_primary(dir.path(), Slot::B, 3).unwrap();
        for cut in 0..=primary.len() {
            let dir = prepare();
            let esp = dir.path();
            apply(esp, &plan(esp), None).unwrap();
            apply(esp, &primary, Some(cut)).unwrap();
            let entry = default_entry(esp).unwrap().expect("bootable");
            let new_uki_boots = entry.slot == Slot::B;
            assert!(
                !new_uki_boots || entry.counter == Some((3, 0)),
                "cut after {cut}: the new UKI boots uncounted: {:?}",
                names(esp)
            );
            assert_eq!(
                new_uki_boots,
                cut == primary.len(),
                "cut after {cut}: {:?}",
                names(esp)
            );
            // Whatever was left, the next set-primary finishes the job.
            set_primary(esp, Slot::B, 3).unwrap();
            assert_eq!(names(esp), ["cairn-a.conf", "cairn-b+3-0.conf"]);
            assert_eq!(get_primary(esp).unwrap(), Slot::B);
        }
    }

    #[test]
    fn rauc_requests_print_what_rauc_reads() {
        let dir = image_esp();
        let esp = dir.path();
        assert_eq!(
            rauc_backend(esp, 3, &RaucRequest::GetPrimary)
                .unwrap()
                .as_deref(),
            Some("a")
        );
        assert_eq!(
            rauc_backend(esp, 3, &RaucRequest::GetState(Slot::B))
                .unwrap()
                .as_deref(),
            Some("good")
        );
        rauc_backend(esp, 3, &RaucRequest::SetState(Slot::B, SlotState::Bad)).unwrap();
        assert_eq!(
            rauc_backend(esp, 3, &RaucRequest::GetState(Slot::B))
                .unwrap()
                .as_deref(),
            Some("bad")
        );
        assert_eq!(
            rauc_backend(esp, 2, &RaucRequest::SetPrimary(Slot::B)).unwrap(),
            None
        );
        assert_eq!(
            rauc_backend(esp, 3, &RaucRequest::GetPrimary)
                .unwrap()
                .as_deref(),
            Some("b")
        );
        assert!(esp.join(ENTRIES_DIR).join("cairn-b+2-0.conf").exists());
        // A slot without its UKI cannot be made primary.
        fs::remove_file(esp.join(Slot::A.uki_path())).unwrap();
        assert!(matches!(
            rauc_backend(esp, 3, &RaucRequest::SetPrimary(Slot::A)),
            Err(SlotError::NoUki { .. })
        ));
    }
}
