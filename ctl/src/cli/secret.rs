//! `cairnctl secret ...`: app secrets. A value is read from a file or from stdin, never from
//! the command line (where other users see it in the process list), and no command prints one.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;

use base64::Engine;
use cairn_api::{CreateSecret, SecretInfo, SecretQuery, UpdateSecret};
use clap::{Args, Subcommand};
use zeroize::Zeroizing;

use super::{checked, emit, CliError};
use crate::client::Client;
use crate::input;
use crate::output::{printable, Table};

/// Where a secret applies: a deployment (optionally one site or one device of it), or a
/// per-device app.
#[derive(Debug, Args, Clone)]
pub struct SecretScopeArgs {
    /// The deployment whose app uses the secret.
    #[arg(long, value_name = "NAME", value_parser = checked(input::parse_app_name))]
    pub deployment: Option<String>,
    /// With --deployment: the value for this site's devices only.
    #[arg(long, value_name = "SITE", value_parser = checked(input::parse_id), requires = "deployment", conflicts_with = "device")]
    pub site: Option<String>,
    /// With --deployment: the value for this device only. With --app: the device of the
    /// per-device app.
    #[arg(long, value_name = "DEVICE_ID", value_parser = checked(input::parse_id))]
    pub device: Option<String>,
    /// With --device: the per-device app (deployed with `cairnctl app deploy`) that uses it.
    #[arg(long, value_name = "APP", value_parser = checked(input::parse_app_name), requires = "device", conflicts_with = "deployment")]
    pub app: Option<String>,
}

/// `cairnctl secret ...`
#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Create a secret with its first value, read from --from-file or stdin.
    Create {
        /// Secret name, as the Compose file's top-level `secrets` declares it.
        name: String,
        /// Where it applies.
        #[command(flatten)]
        scope: SecretScopeArgs,
        /// Read the value from this file (`-`: stdin, the default; a terminal is refused).
        #[arg(long, value_name = "PATH", default_value = "-")]
        from_file: PathBuf,
    },
    /// Give a secret a new value (a new version); devices that use it restart the services
    /// that read it.
    Update {
        /// Secret name.
        name: String,
        /// Where it applies (as given at creation).
        #[command(flatten)]
        scope: SecretScopeArgs,
        /// Read the value from this file (`-`: stdin, the default; a terminal is refused).
        #[arg(long, value_name = "PATH", default_value = "-")]
        from_file: PathBuf,
    },
    /// Remove a secret; its devices fall back to a wider scope's value, if any.
    Rm {
        /// Secret name.
        name: String,
        /// Where it applies (as given at creation).
        #[command(flatten)]
        scope: SecretScopeArgs,
    },
    /// List secrets (never their values).
    List {
        /// Only this deployment's secrets.
        #[arg(long, value_name = "NAME", value_parser = checked(input::parse_app_name))]
        deployment: Option<String>,
        /// Only secrets of this device (narrowed to it, or of its per-device apps).
        #[arg(long, value_name = "DEVICE_ID", value_parser = checked(input::parse_id))]
        device: Option<String>,
        /// Only secrets of apps with this name.
        #[arg(long, value_name = "APP", value_parser = checked(input::parse_app_name))]
        app: Option<String>,
    },
}

/// Why a secret command could not run.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The value could not be read.
    #[error("could not read the secret value from {path}: {source}")]
    Read {
        /// The file (or `stdin`).
        path: String,
        /// The failure.
        source: std::io::Error,
    },
    /// Stdin is a terminal: typing would echo the value.
    #[error("the secret value is read from stdin, which is a terminal; pipe it in (`cairnctl secret create NAME ... < file`) or give --from-file PATH")]
    Terminal,
    /// The value is over central's limit.
    #[error("the secret value is over {max} bytes; a secret holds at most {max} bytes")]
    TooLarge {
        /// The limit.
        max: usize,
    },
    /// No secret of that name in that scope.
    #[error("no secret {name:?} in that scope; see `cairnctl secret list`")]
    NotFound {
        /// The name asked for.
        name: String,
    },
    /// Neither a deployment nor a per-device app.
    #[error("say where the secret applies: --deployment NAME (optionally --site or --device), or --device ID --app APP")]
    NoScope,
}

/// The value from `path` (`-`: stdin), bounded.
fn read_value(path: &PathBuf) -> Result<Zeroizing<Vec<u8>>, SecretError> {
    let max = cairn_proto::MAX_SECRET_BYTES;
    let mut value = Zeroizing::new(Vec::new());
    let shown = if path.as_os_str() == "-" {
        "stdin".to_owned()
    } else {
        path.display().to_string()
    };
    let read = |e| SecretError::Read {
        path: shown.clone(),
        source: e,
    };
    if path.as_os_str() == "-" {
        let stdin = std::io::stdin();
        if stdin.is_terminal() {
            return Err(SecretError::Terminal);
        }
        stdin
            .lock()
            .take(max as u64 + 1)
            .read_to_end(&mut value)
            .map_err(read)?;
    } else {
        std::fs::File::open(path)
            .and_then(|f| f.take(max as u64 + 1).read_to_end(&mut value))
            .map_err(read)?;
    }
    if value.len() > max {
        return Err(SecretError::TooLarge { max });
    }
    Ok(value)
}

fn encode(value: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(value)
}

/// The id of secret `name` in exactly `scope`.
fn find(client: &Client, name: &str, scope: &SecretScopeArgs) -> Result<String, CliError> {
    if scope.deployment.is_none() && scope.app.is_none() {
        return Err(SecretError::NoScope.into());
    }
    let query = SecretQuery {
        deployment: scope.deployment.clone(),
        app: scope.app.clone(),
        name: Some(name.to_owned()),
        ..Default::default()
    };
    let list = client.list_secrets(&query)?;
    list.value
        .secrets
        .into_iter()
        .find(|s| {
            s.name == name
                && s.site == scope.site
                && s.device == scope.device
                && s.deployment == scope.deployment
        })
        .map(|s| s.id)
        .ok_or_else(|| {
            SecretError::NotFound {
                name: name.to_owned(),
            }
            .into()
        })
}

/// Where a secret applies, as one word for tables.
fn scope_text(secret: &SecretInfo) -> String {
    match (&secret.deployment, &secret.site, &secret.device) {
        (Some(_), Some(site), _) => format!("site {site}"),
        (Some(_), None, Some(device)) => format!("device {device}"),
        (Some(_), None, None) => "deployment".to_owned(),
        (None, _, Some(device)) => format!("app on {device}"),
        (None, _, None) => "app".to_owned(),
    }
}

/// Runs one `secret` command.
pub(super) fn run_secret(
    client: &Client,
    command: SecretCommand,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match command {
        SecretCommand::Create {
            name,
            scope,
            from_file,
        } => {
            if scope.deployment.is_none() && scope.app.is_none() {
                return Err(SecretError::NoScope.into());
            }
            let value = read_value(&from_file)?;
            let request = CreateSecret {
                name,
                deployment: scope.deployment,
                site: scope.site,
                device: scope.device,
                app: scope.app,
                value_base64: encode(&value),
            };
            let reply = client.create_secret(&request)?;
            emit(out, json, &reply, |created| {
                format!(
                    "secret {} created (version {}), sent to {} devices\n",
                    printable(&created.secret.name),
                    created.secret.version,
                    created.devices
                )
            })
        }
        SecretCommand::Update {
            name,
            scope,
            from_file,
        } => {
            let value = read_value(&from_file)?;
            let id = find(client, &name, &scope)?;
            let reply = client.update_secret(
                &id,
                &UpdateSecret {
                    value_base64: encode(&value),
                },
            )?;
            emit(out, json, &reply, |updated| {
                format!(
                    "secret {} updated to version {}, sent to {} devices\n",
                    printable(&updated.secret.name),
                    updated.secret.version,
                    updated.devices
                )
            })
        }
        SecretCommand::Rm { name, scope } => {
            let id = find(client, &name, &scope)?;
            let reply = client.delete_secret(&id)?;
            emit(out, json, &reply, |_| {
                format!("secret {} removed\n", printable(&name))
            })
        }
        SecretCommand::List {
            deployment,
            device,
            app,
        } => {
            let query = SecretQuery {
                deployment,
                device,
                app,
                name: None,
            };
            let reply = client.list_secrets(&query)?;
            emit(out, json, &reply, |list| {
                let mut table =
                    Table::new(&["APP", "NAME", "SCOPE", "VERSION", "UPDATED", "BY", "ID"]);
                for secret in &list.secrets {
                    table.push_row([
                        secret.app.clone(),
                        secret.name.clone(),
                        scope_text(secret),
                        secret.version.to_string(),
                        secret.updated_at.to_string(),
                        secret.updated_by.clone(),
                        secret.id.clone(),
                    ]);
                }
                if table.is_empty() {
                    "no secrets\n".to_owned()
                } else {
                    table.to_string()
                }
            })
        }
    }
}
