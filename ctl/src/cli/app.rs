//! `cairnctl app ...`: deploy, list and remove apps (Compose files) on devices.
//!
//! A Compose file is checked here with cairn-compose's parser before it is uploaded, so its
//! problems show as `FILE:LINE: FIELD: what to change` without a round trip; central and the
//! agent check it again with the same parser.

use std::io::Write;
use std::path::{Path, PathBuf};

use cairn_compose::AppSpec;
use cairn_proto::MAX_COMPOSE_BYTES;
use clap::Subcommand;
use thiserror::Error;

use super::{checked, emit, emit_table, CliError};
use crate::client::{Client, CtlError, Reply};
use crate::input;
use crate::output::{self, pretty_json};
use cairn_api::PutApp;

/// `cairnctl app ...`
#[derive(Debug, Subcommand)]
pub enum AppCommand {
    /// Deploy an app (a Compose file) to devices, or replace it there; the devices get it on
    /// their open connection at once, or when they reconnect.
    Deploy {
        /// The Compose file.
        #[arg(short = 'f', long = "file", value_name = "COMPOSE.YML")]
        file: PathBuf,
        /// App name (default: the file name without its extension).
        #[arg(long, value_parser = checked(input::parse_app_name))]
        name: Option<String>,
        /// Device id (dev_...); repeat to deploy to several devices.
        #[arg(long = "device", value_name = "ID", value_parser = checked(input::parse_id), required_unless_present = "site")]
        devices: Vec<String>,
        /// Every device of a site: not here; use `cairnctl deployment create --site NAME`.
        #[arg(long, value_name = "SITE", conflicts_with = "devices")]
        site: Option<String>,
    },
    /// List a device's apps with the per-service state and health it last reported.
    List {
        /// Device id (dev_...).
        #[arg(long, value_name = "ID", value_parser = checked(input::parse_id))]
        device: String,
    },
    /// Remove an app from devices: its containers stop and are removed (volumes are kept).
    Rm {
        /// App name.
        #[arg(value_parser = checked(input::parse_app_name))]
        name: String,
        /// Device id (dev_...); repeat to remove from several devices.
        #[arg(long = "device", value_name = "ID", value_parser = checked(input::parse_id), required_unless_present = "site")]
        devices: Vec<String>,
        /// Every device of a site: not here; use `cairnctl deployment create --site NAME`.
        #[arg(long, value_name = "SITE", conflicts_with = "devices")]
        site: Option<String>,
    },
}

/// Why an app command failed before or while talking to central.
#[derive(Debug, Error)]
pub enum AppError {
    /// The Compose file could not be read.
    #[error("could not read the Compose file {}: {source}", .path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The Compose file is larger than central accepts.
    #[error("the Compose file {} is {size} bytes; the limit is {MAX_COMPOSE_BYTES} bytes (64 KiB)", .path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: usize,
    },
    /// No usable app name could be taken from the file name.
    #[error("the file name {} does not make an app name: {reason}; give --name", .path.display())]
    NameFromFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: input::InputError,
    },
    /// The Compose file is not a valid app spec.
    #[error("{0}\nfix the file and deploy again (nothing was sent to central)")]
    Spec(String),
    /// `--site` was given.
    #[error("apps for a whole site are deployments: use 'cairnctl deployment create -f FILE --site {0}' (central picks the hosts and re-places them); or give each device with --device ID (repeatable)")]
    SiteNotAvailable(String),
    /// A multi-device change failed part-way.
    #[error("{source} (device {device}); the change was already made on: {}; run the command again for the rest", .done.join(", "))]
    Partial {
        /// The device that failed.
        device: String,
        /// Devices changed before it.
        done: Vec<String>,
        /// What failed.
        source: CtlError,
    },
}

/// Runs one `app` command.
pub(super) fn run_app(
    client: &Client,
    command: AppCommand,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match command {
        AppCommand::Deploy {
            file,
            name,
            devices,
            site,
        } => {
            if let Some(site) = site {
                return Err(AppError::SiteNotAvailable(site).into());
            }
            let (name, compose_yaml) = read_app(&file, name)?;
            let request = PutApp { compose_yaml };
            let replies =
                for_each_device(&devices, |device| client.put_app(device, &name, &request))?;
            write_replies(out, json, &replies, |device, value| {
                output::app_deployed(device, value)
            })
        }
        AppCommand::List { device } => {
            let reply = client.list_apps(&device)?;
            emit_table(out, json, &reply, "no apps", output::app_table)
        }
        AppCommand::Rm {
            name,
            devices,
            site,
        } => {
            if let Some(site) = site {
                return Err(AppError::SiteNotAvailable(site).into());
            }
            let replies = for_each_device(&devices, |device| client.delete_app(device, &name))?;
            write_replies(out, json, &replies, |device, value| {
                output::app_removed(device, value)
            })
        }
    }
}

/// Reads and checks a Compose file; returns the app name (given, or the file stem) and the text.
pub fn read_app(file: &Path, name: Option<String>) -> Result<(String, String), AppError> {
    let name = match name {
        Some(name) => name,
        None => {
            let stem = file
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            input::parse_app_name(&stem).map_err(|reason| AppError::NameFromFile {
                path: file.to_owned(),
                reason,
            })?
        }
    };
    let text = std::fs::read_to_string(file).map_err(|source| AppError::ReadFile {
        path: file.to_owned(),
        source,
    })?;
    if text.len() > MAX_COMPOSE_BYTES {
        return Err(AppError::TooLarge {
            path: file.to_owned(),
            size: text.len(),
        });
    }
    AppSpec::parse(&file.display().to_string(), &name, &text).map_err(|e| {
        let lines: Vec<String> = e.to_string().lines().map(output::printable).collect();
        AppError::Spec(lines.join("\n"))
    })?;
    Ok((name, text))
}

/// Calls `change` for each device in order; stops at the first failure, naming the devices
/// already changed.
fn for_each_device<T>(
    devices: &[String],
    mut change: impl FnMut(&str) -> Result<Reply<T>, CtlError>,
) -> Result<Vec<(String, Reply<T>)>, CliError> {
    let mut replies = Vec::with_capacity(devices.len());
    for device in devices {
        match change(device) {
            Ok(reply) => replies.push((device.clone(), reply)),
            Err(source) if replies.is_empty() => return Err(source.into()),
            Err(source) => {
                return Err(AppError::Partial {
                    device: device.clone(),
                    done: replies.into_iter().map(|(d, _)| d).collect(),
                    source,
                }
                .into())
            }
        }
    }
    Ok(replies)
}

/// One confirmation line per device, or with `--json` central's body (an array of bodies for
/// several devices).
fn write_replies<T>(
    out: &mut dyn Write,
    json: bool,
    replies: &[(String, Reply<T>)],
    render: impl Fn(&str, &T) -> String,
) -> Result<(), CliError> {
    if let [(device, reply)] = replies {
        return emit(out, json, reply, |value| render(device, value));
    }
    let text = if json {
        let bodies: Vec<&str> = replies.iter().map(|(_, r)| r.body.trim()).collect();
        pretty_json(&format!("[{}]", bodies.join(",")))
    } else {
        replies
            .iter()
            .map(|(device, reply)| render(device, &reply.value))
            .collect()
    };
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
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
    fn deploy_takes_repeated_devices_and_needs_a_target() {
        let cli = parse(&[
            "app", "deploy", "-f", "x.yml", "--device", "dev_1", "--device", "dev_2",
        ])
        .unwrap();
        let Command::App(AppCommand::Deploy { devices, name, .. }) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(
            (devices, name),
            (vec!["dev_1".into(), "dev_2".into()], None)
        );
        assert!(parse(&["app", "deploy", "-f", "x.yml"]).is_err());
        assert!(parse(&["app", "deploy", "-f", "x.yml", "--site", "s", "--device", "d"]).is_err());
        assert!(parse(&["app", "deploy", "-f", "x.yml", "--site", "s"]).is_ok());
        assert!(
            parse(&["app", "deploy", "-f", "x.yml", "--name", "Web_1", "--device", "d"]).is_err()
        );
        assert!(parse(&["app", "rm", "web", "--device", "d"]).is_ok());
        assert!(parse(&["app", "list", "--device", "d"]).is_ok());
    }

    #[test]
    fn compose_file_is_checked_before_upload() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("web-shop.yml");
        std::fs::write(&good, "services:\n  web:\n    image: busybox\n").unwrap();
        let (name, text) = read_app(&good, None).unwrap();
        assert_eq!(name, "web-shop");
        assert!(text.contains("busybox"));
        assert_eq!(read_app(&good, Some("other".into())).unwrap().0, "other");

        let bad = dir.path().join("bad.yml");
        std::fs::write(&bad, "services:\n  web:\n    imag: busybox\n").unwrap();
        let error = read_app(&bad, None).unwrap_err().to_string();
        assert!(error.contains("bad.yml:3: services.web.imag"), "{error}");

        let stem = dir.path().join("my_app.yml");
        std::fs::write(&stem, "services:\n  web:\n    image: busybox\n").unwrap();
        assert!(matches!(
            read_app(&stem, None),
            Err(AppError::NameFromFile { .. })
        ));
        let big = dir.path().join("big.yml");
        std::fs::write(&big, "#".repeat(MAX_COMPOSE_BYTES + 1)).unwrap();
        assert!(matches!(
            read_app(&big, None),
            Err(AppError::TooLarge { .. })
        ));
        assert!(matches!(
            read_app(&dir.path().join("missing.yml"), None),
            Err(AppError::ReadFile { .. })
        ));
    }
}
