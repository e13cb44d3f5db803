//! cairn-image: builds Cairn's reproducible disk images and signed update bundles from the
//! data-only recipes under `recipes/`.
//!
//! A build runs in steps, each a module: [`rootfs`] (mmdebstrap pinned to the [`lock`], with the
//! [`overlay`] of Cairn's units and the initramfs verity hook), [`verity`] (squashfs root with an
//! appended dm-verity hash tree), [`uki`] (one signed unified kernel image per slot, via [`pe`]),
//! [`esp`] (systemd-boot with boot counting), [`disk`] (the GPT image), [`publish`] (.zst, .bmap,
//! checksums), [`sbom`] and [`bundle`] (a signed RAUC verity bundle). [`build`] runs them in
//! order into `OUT/.partial` and moves the results into place only when every step succeeded.
//! Every external program runs through [`tool`].

pub mod build;
pub mod bundle;
pub mod disk;
pub mod esp;
pub mod keys;
pub mod lock;
pub mod overlay;
pub mod pe;
pub mod publish;
pub mod recipe;
pub mod rootfs;
pub mod sbom;
pub mod tool;
pub mod uki;
pub mod verity;

pub use build::{build, BuildError, BuildOptions, BuildReport};
pub use recipe::Recipe;
