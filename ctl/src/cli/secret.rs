//! `cairnctl secret ...`: app secrets. A value is read from a file or from stdin, never from
//! the command line (where other users see it in the process list), and no command prints one.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;

use base64::Engine;
use cairn_api::{CreateSecret, SecretInfo, SecretKind, SecretQuery, UpdateSecret};
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

/// A registry login instead of a plain value: the password (with --username) is what
/// --from-file or stdin gives.
#[derive(Debug, Args, Clone, Default)]
pub struct RegistryArgs {
    /// Make a login for this private registry (`host[:port]`, as image references name it)
    /// instead of a file secret: the app's devices use it to pull its images from there.
    #[arg(long, value_name = "HOST")]
    pub registry: Option<String>,
    /// With --registry: the user name; the password is read from --from-file or stdin.
    #[arg(long, value_name = "USER", requires = "registry")]
    pub username: Option<String>,
    /// With --registry: extra certificate authorities (PEM) for the registry's TLS, trusted
    /// besides the system's.
    #[arg(long, value_name = "PEM", requires = "registry")]
    pub ca_file: Option<PathBuf>,
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
        /// A registry login instead of a plain value.
        #[command(flatten)]
        registry: RegistryArgs,
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
        /// A registry login instead of a plain value.
        #[command(flatten)]
        registry: RegistryArgs,
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
    /// The registry login is not usable.
    #[error("{0}")]
    Registry(String),
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

/// The value to send and its kind: the file's bytes, or a registry login built from the
/// flags with the password from the file (read only when a user name is given).
fn value_of(
    from_file: &PathBuf,
    registry: RegistryArgs,
) -> Result<(Zeroizing<Vec<u8>>, SecretKind), SecretError> {
    let Some(host) = registry.registry else {
        return Ok((read_value(from_file)?, SecretKind::File));
    };
    let password = match &registry.username {
        Some(_) => {
            let bytes = read_value(from_file)?;
            let text = std::str::from_utf8(&bytes).map_err(|_| {
                SecretError::Registry("the registry password is not UTF-8 text".into())
            })?;
            // A file written with `echo` ends in a newline that is not part of the password.
            Some(Zeroizing::new(
                text.trim_end_matches(['\n', '\r']).to_owned(),
            ))
        }
        None => None,
    };
    let ca_pem = match &registry.ca_file {
        Some(path) => {
            let bytes = read_value(path)?;
            Some(String::from_utf8(bytes.to_vec()).map_err(|_| {
                SecretError::Registry(format!("{} is not PEM text", path.display()))
            })?)
        }
        None => None,
    };
    let login = cairn_compose::RegistryLogin {
        registry: host,
        username: registry.username,
        password: password.as_ref().map(|p| p.to_string()),
        ca_pem,
    };
    let value = Zeroizing::new(login.to_json());
    drop(login);
    cairn_compose::RegistryLogin::parse(&value)
        .map_err(|e| SecretError::Registry(e.to_string()))?;
    Ok((value, SecretKind::Registry))
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
            registry,
        } => {
            if scope.deployment.is_none() && scope.app.is_none() {
                return Err(SecretError::NoScope.into());
            }
            let (value, kind) = value_of(&from_file, registry)?;
            let request = CreateSecret {
                name,
                deployment: scope.deployment,
                site: scope.site,
                device: scope.device,
                app: scope.app,
                kind,
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
            registry,
        } => {
            let (value, _) = value_of(&from_file, registry)?;
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
                let mut table = Table::new(&[
                    "APP", "NAME", "KIND", "SCOPE", "VERSION", "UPDATED", "BY", "ID",
                ]);
                for secret in &list.secrets {
                    table.push_row([
                        secret.app.clone(),
                        secret.name.clone(),
                        secret.kind.as_str().to_owned(),
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

#[cfg(test)]
mod tests {
    use super::*;

    const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    #[test]
    fn a_registry_login_is_built_from_the_flags_and_the_password_file() {
        let dir = tempfile::tempdir().unwrap();
        let password = dir.path().join("password");
        std::fs::write(&password, "pull-pass\n").unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, CA).unwrap();
        let (value, kind) = value_of(
            &password,
            RegistryArgs {
                registry: Some("registry.example.com:5000".into()),
                username: Some("puller".into()),
                ca_file: Some(ca.clone()),
            },
        )
        .unwrap();
        assert_eq!(kind, SecretKind::Registry);
        let login = cairn_compose::RegistryLogin::parse(&value).unwrap();
        assert_eq!(login.password.as_deref(), Some("pull-pass"));
        assert_eq!(login.ca_pem.as_deref(), Some(CA));

        // Only a CA: no password is read (the file is not even opened).
        let (value, _) = value_of(
            &dir.path().join("absent"),
            RegistryArgs {
                registry: Some("registry.example.com".into()),
                username: None,
                ca_file: Some(ca),
            },
        )
        .unwrap();
        assert!(cairn_compose::RegistryLogin::parse(&value)
            .unwrap()
            .password
            .is_none());

        // A host that is not one is refused before anything is sent.
        let e = value_of(
            &password,
            RegistryArgs {
                registry: Some("registry.example.com/team".into()),
                username: Some("puller".into()),
                ca_file: None,
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("not a registry host"), "{e}");

        // Without --registry the file is the value, as it is.
        let (value, kind) = value_of(&password, RegistryArgs::default()).unwrap();
        assert_eq!(
            (value.as_slice(), kind),
            (&b"pull-pass\n"[..], SecretKind::File)
        );
    }
}
