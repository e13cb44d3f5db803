//! cairn-sim: a fleet of simulated devices in one process, each a real protocol client (own
//! software key and certificate from the real Enrollment RPC, one mutual-TLS Sync stream), and
//! the fleet scale benchmark built on it.

pub mod bench;
pub mod central_process;
pub mod connect;
pub mod device;
pub mod fleet;
pub mod identity;
pub mod registry;
pub mod rest;
pub mod shards;

pub use fleet::{FanOut, Fleet, FleetOptions, Latency};
pub use identity::DeviceIdentity;
