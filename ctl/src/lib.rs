//! cairnctl: the operator CLI of Cairn, over cairn-central's REST API.
//!
//! The library holds everything; the `cairnctl` binary only parses the command line and calls
//! [`cli::run`]. The API's request and answer types are the `cairn-api` crate's, shared with
//! central. Tests and other tools can use [`client::Client`] directly:
//!
//! ```no_run
//! use cairnctl::client::{BearerToken, CentralCa, Client, Connection};
//!
//! let token = BearerToken::from_file("/etc/cairn/admin.token".as_ref())?;
//! let ca = Some(CentralCa::File("/etc/cairn/central-ca.pem".into()));
//! let client = Client::new(Connection::new("https://127.0.0.1:7444", ca, token))?;
//! for listed in client.list_devices()?.value.devices {
//!     println!("{} {}", listed.device.id, listed.device.status);
//! }
//! # Ok::<(), cairnctl::client::CtlError>(())
//! ```

pub mod cli;
pub mod client;
pub mod input;
pub mod output;
