//! Cairn's app runtime: Compose-format apps on containerd. The app spec itself (model, parser,
//! validation) is `cairn_compose`.
//!
//! - [`containerd`]: a namespaced containerd connection (content, leases, snapshots, images).
//! - [`image`]: client-side pull from registries and import of OCI archives, unpacked to snapshots.
//! - [`container`]: service containers and their tasks (OCI spec, logs, stop, exec).
//! - [`network`]: one CNI bridge network per app (subnets, namespaces, published ports, hosts).
//! - [`reconcile`]: the level-triggered loop from desired apps to running containers.
//! - [`userns`]: one user namespace per app, its host id range, and moving files into it.

pub mod cgroup;
pub mod container;
pub mod containerd;
pub mod image;
pub mod network;
pub mod reconcile;
pub mod userns;
