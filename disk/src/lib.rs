//! The Cairn data partition (GPT partition 4): LUKS2 through cryptsetup, its 256-bit key sealed in
//! the TPM to the boot chain, and a recovery key for escrow.
//!
//! - [`DataUnlock`]: the boot-time flow: first boot formats and seals, later boots unseal and
//!   open, a refused unseal returns [`UnlockOutcome::NeedsRecovery`] without touching the disk,
//!   and [`DataUnlock::recover`] re-seals with the escrowed recovery key.
//! - [`DataUnlock::seal_for_next_boot`], [`DataUnlock::forget_previous_boot_chain`],
//!   [`SealedKeyFile`]: OS updates keep unlocking: the disk key is sealed in advance to the new
//!   slot's predicted PCRs; the sealed copies follow a power-cut-safe rule across update and
//!   rollback.
//! - [`format_data`], [`is_luks`], [`open_data`], [`close_data`], [`add_recovery_key`],
//!   [`replace_disk_key_with`], [`disk_key_opens`], [`recovery_key_opens`], [`keyslots`]: the
//!   LUKS2 operations (keyslot 0 = disk key, keyslot 1 = recovery key).
//! - [`crypto_erase`]: the wipe of a revoked device: every sealed copy of the disk key is
//!   overwritten and removed and keyslot 0 killed, so only the escrowed recovery key opens the
//!   data; [`EraseReport`] says what was destroyed.
//! - [`generate_disk_key`], [`generate_recovery_key`]: the keys, zeroed on drop, never printed.
//! - [`grow_data_partition`], [`grow_last_partition`]: first boot grows the data partition (the
//!   last GPT partition) to the end of the disk before it is formatted.
//!
//! cryptsetup runs only through one wrapper ([`ToolCommand`]): it logs the command, captures
//! stderr, applies a timeout and maps exit codes to typed errors; keys go through stdin or a 0600
//! file on tmpfs, never argv or logs. Everything blocks: from async code use `spawn_blocking`.
//! Opening needs device-mapper (devices and QEMU tests); the rest works on a plain file.

mod erase;
mod grow;
mod keyfile;
mod keys;
mod luks;
mod mapper;
mod next_boot;
mod sealed_keys;
mod tool;
mod unlock;

pub use erase::{crypto_erase, DiskKeySlotErase, EraseError, EraseReport};
pub use grow::{grow_data_partition, grow_last_partition, GrowError, GrowOutcome};
pub use keys::{
    generate_disk_key, generate_recovery_key, DiskKey, KeyError, RecoveryKey, DISK_KEY_LEN,
};
pub use luks::{
    add_recovery_key, disk_key_opens, ensure_blank, format_data, is_luks, keyslots, luks_uuid,
    recovery_key_opens, replace_disk_key_with, LuksError, DATA_LABEL, DISK_KEY_SLOT,
    RECOVERY_KEY_SLOT,
};
pub use mapper::{active_mapping, close_data, open_data};
pub use sealed_keys::SealedKeyFile;
pub use tool::{ExitKind, ToolCommand, ToolError, ToolOutput};
pub use unlock::{
    CryptsetupOpen, DataUnlock, OpenLuks, RecoveryReason, UnlockError, UnlockOutcome,
};
