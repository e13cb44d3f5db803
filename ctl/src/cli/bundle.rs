//! `cairnctl bundle ...`: upload, list and remove OS update bundles (signed RAUC bundles) on
//! central. Central verifies each upload's signature and compatible with `rauc info`.

use std::io::Write;
use std::path::PathBuf;

use clap::Subcommand;
use thiserror::Error;

use super::{checked, emit, emit_table, CliError};
use crate::client::Client;
use crate::input;
use crate::output::{printable, Table};
use cairn_api::{Bundle, BundleUploaded};

/// `cairnctl bundle ...`
#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Upload a signed RAUC bundle (.raucb); prints its SHA-256 and version. Uploading the same
    /// file again changes nothing.
    Upload {
        /// The bundle file.
        #[arg(value_name = "FILE.raucb")]
        file: PathBuf,
    },
    /// List the bundles central holds, newest first.
    List,
    /// Remove a bundle from central (admin).
    Rm {
        /// The bundle's SHA-256 (64 hex characters, from `cairnctl bundle list`).
        #[arg(value_name = "SHA256", value_parser = checked(input::parse_id))]
        sha256: String,
    },
}

/// Why a bundle command failed before talking to central.
#[derive(Debug, Error)]
pub enum BundleError {
    /// The bundle file could not be opened.
    #[error("could not read the bundle file {}: {source}; check the path", .path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Runs one `bundle` command.
pub(super) fn run_bundle(
    client: &Client,
    command: BundleCommand,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match command {
        BundleCommand::Upload { file } => {
            let read_error = |source| BundleError::ReadFile {
                path: file.clone(),
                source,
            };
            let opened = std::fs::File::open(&file).map_err(read_error)?;
            let len = opened.metadata().map_err(read_error)?.len();
            let reply = client.upload_bundle(std::io::BufReader::new(opened), len)?;
            emit(out, json, &reply, uploaded)
        }
        BundleCommand::List => {
            let reply = client.list_bundles()?;
            emit_table(out, json, &reply, "no bundles", |list| {
                bundle_table(&list.bundles)
            })
        }
        BundleCommand::Rm { sha256 } => {
            let reply = client.delete_bundle(&sha256)?;
            emit(out, json, &reply, |removed| {
                format!("removed bundle {}\n", printable(&removed.removed))
            })
        }
    }
}

/// Confirmation of an upload: SHA-256 and version, and whether it was new.
fn uploaded(reply: &BundleUploaded) -> String {
    let bundle = &reply.bundle;
    let note = if reply.created {
        "uploaded"
    } else {
        "already stored"
    };
    format!(
        "{note}: sha256 {} version {} ({}, {} bytes)\n",
        printable(&bundle.sha256),
        printable(&bundle.version),
        printable(&bundle.compatible),
        bundle.size
    )
}

/// Table of bundles.
fn bundle_table(bundles: &[Bundle]) -> Table {
    let mut table = Table::new(&["SHA256", "VERSION", "COMPATIBLE", "SIZE", "UPLOADED", "BY"]);
    for bundle in bundles {
        let size = bundle.size.to_string();
        table.push_row([
            bundle.sha256.as_str(),
            &bundle.version,
            &bundle.compatible,
            &size,
            &bundle.uploaded_at.to_string(),
            &bundle.uploaded_by,
        ]);
    }
    table
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("cairnctl").chain(args.iter().copied()))
    }

    #[test]
    fn bundle_commands_parse() {
        let cli = parse(&["bundle", "upload", "os-1.0.raucb"]).unwrap();
        let Command::Bundle(BundleCommand::Upload { file }) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(file, PathBuf::from("os-1.0.raucb"));
        assert!(parse(&["bundle", "list"]).is_ok());
        let sha = "ab".repeat(32);
        assert!(parse(&["bundle", "rm", &sha]).is_ok());
        assert!(parse(&["bundle", "rm", "../x"]).is_err());
        assert!(parse(&["bundle", "upload"]).is_err());
    }

    #[test]
    fn upload_confirmation_names_sha_and_version() {
        let reply = BundleUploaded {
            bundle: Bundle {
                sha256: "ab".repeat(32),
                version: "1.2.0".into(),
                compatible: "cairn-qemu-x86_64".into(),
                size: 4096,
                uploaded_at: cairn_api::Timestamp::from_unix_seconds(1_735_689_600),
                uploaded_by: "api:ops".into(),
            },
            created: true,
        };
        let text = uploaded(&reply);
        assert!(
            text.contains(&"ab".repeat(32)) && text.contains("version 1.2.0"),
            "{text}"
        );
        let table = bundle_table(std::slice::from_ref(&reply.bundle)).to_string();
        assert!(table.contains("cairn-qemu-x86_64"), "{table}");
    }
}
