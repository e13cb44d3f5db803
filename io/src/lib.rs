//! `cairn-io`: the plumbing several crates need and none should copy.
//!
//! - [`file`]: I/O errors that carry the path and what was being done ([`FileError`],
//!   [`PathContext::at`]), crash-safe writes ([`write_atomic`]: temp file, fsync, rename, fsync
//!   the directory), private directories and exclusive lock files ([`try_lock_exclusive`], [`lock_exclusive`]).
//! - [`tool`]: external programs ([`Tool`]) run with a timeout, their process group killed when
//!   it passes, secrets only on stdin, and the end of their stderr in the error.
//! - [`child`]: long-running children killed when the thread that started them ends
//!   ([`die_with_parent`]).
//!
//! Architecture invariant: this crate knows nothing of Cairn's domain (devices, apps, TPMs); it
//! depends on no other Cairn crate and on nothing async.

pub mod child;
pub mod file;
pub mod tool;

pub use child::die_with_parent;
pub use file::{
    create_private_dir, destroy_file, lock_exclusive, try_lock_exclusive, write_atomic, FileError,
    PathContext,
};
pub use tool::{Tool, ToolError, ToolOutput};
