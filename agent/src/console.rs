//! Lines for the device's console: the markers people and the QEMU tests watch for
//! (`CAIRN-UPDATE stage=… version=…`, `CAIRN-UPDATE progress …`, `CAIRN-CLOCK corrected …`).
//!
//! They are ordinary `tracing` events with the target [`TARGET`]. On a device the logging set-up
//! (`cairn-agent`'s `logging`) prints them on stdout, which the unit sends to the journal and the
//! console (`StandardOutput=journal+console`), and keeps them out of the journald layer so they
//! are journaled once; without a journal they go to stderr with everything else.

/// The `tracing` target of console lines: `info!(target: console::TARGET, "CAIRN-…")`.
pub const TARGET: &str = "cairn::console";
