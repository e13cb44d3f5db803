//! Test support: start real components for host integration tests, or skip loudly when one truly
//! cannot run here (never silently; under `CI=true` a missing component is a failure).
//!
//! - [`Swtpm`]: a real software TPM 2.0 (`swtpm socket`) on free loopback ports, killed on drop;
//!   optionally manufactured with EK certificates from a [`VendorCa`].
//! - [`VendorCa`]: a local TPM vendor CA (`swtpm_localca`) and its trust anchors.
//! - [`Containerd`]: a real containerd + runc with its own root, state and socket in a temp dir.
//! - [`Registry`]: a real `docker-registry` on a free loopback port, optionally with basic auth.
//! - [`require_tool`]: decide whether a test can run, given the external tools it needs.
//! - [`free_port`]: a loopback TCP port that was free a moment ago.
//! - [`hostile`]: hostile inputs (a YAML alias bomb) and the process's peak memory.
//! - [`leaks`]: files under a directory that contain a secret value.
//! - `images` (feature `images`): busybox OCI images to push to a [`Registry`] or archive.

mod containerd;
mod ports;
mod registry;
mod swtpm;
mod tools;
mod vendor_ca;

#[cfg(feature = "central")]
pub mod central;
pub mod hostile;
pub mod leaks;

#[cfg(feature = "central")]
pub mod expired_central;

#[cfg(feature = "images")]
pub mod images;

pub use containerd::Containerd;
pub use ports::free_port;
pub use registry::Registry;
pub use swtpm::Swtpm;
pub use tools::require_tool;
pub use vendor_ca::VendorCa;
