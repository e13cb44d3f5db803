//! Command line of cairnctl: clap types and dispatch to the [`Client`].

use std::ffi::OsStr;
use std::io::{self, Write};
use std::path::PathBuf;

use clap::builder::TypedValueParser;
use clap::error::ErrorKind;
use clap::{Args, Parser, Subcommand, ValueEnum};
use thiserror::Error;

pub mod app;
pub mod bundle;
pub mod deployment;
pub mod observe;
pub mod region;
pub mod rollout;
pub mod secret;
pub mod site;
pub mod variable;

pub use app::AppCommand;
pub use bundle::BundleCommand;
pub use deployment::DeploymentCommand;
pub use region::RegionCommand;
pub use rollout::RolloutCommand;
pub use secret::SecretCommand;
pub use site::SiteCommand;
pub use variable::VariableCommand;

use crate::client::{BearerToken, CentralCa, Client, Connection, CtlError, Reply, DEFAULT_CENTRAL};
use crate::input::{self, InputError};
use crate::output::{self, pretty_json, Table};
use cairn_api::{AuditQuery, CreateApiToken, CreateEnrollmentToken, EnrollmentPolicy, Role};

/// Failures of one cairnctl run.
#[derive(Debug, Error)]
pub enum CliError {
    /// The command line is incomplete or contradictory (exit status 2, like clap's own errors).
    #[error("{0}")]
    Usage(String),
    /// Talking to central failed (exit status 1).
    #[error(transparent)]
    Client(#[from] CtlError),
    /// Writing the output failed (e.g. the reading end of a pipe closed).
    #[error("could not write the output: {0}")]
    Output(#[from] io::Error),
    /// An app command failed (Compose file, or a change to several devices stopped part-way).
    #[error(transparent)]
    App(#[from] app::AppError),
    /// A bundle command failed before talking to central.
    #[error(transparent)]
    Bundle(#[from] bundle::BundleError),
    /// A secret command failed before talking to central.
    #[error(transparent)]
    Secret(#[from] secret::SecretError),
}

/// Operate a Cairn fleet through cairn-central's REST API.
#[derive(Debug, Parser)]
#[command(name = "cairnctl", version, about, propagate_version = true)]
pub struct Cli {
    /// Where and how to reach central.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
#[command(next_help_heading = "Connection and output")]
pub struct GlobalArgs {
    /// Base URL of cairn-central's REST API.
    #[arg(long, global = true, env = "CAIRN_CENTRAL", value_name = "URL", default_value = DEFAULT_CENTRAL)]
    pub central: String,

    /// PEM CA certificate of central, the only CA trusted for its TLS certificate.
    #[arg(long, global = true, env = "CAIRN_CA", value_name = "PATH")]
    pub ca: Option<PathBuf>,

    /// API token. Visible to other local users in the process list: prefer --token-file.
    #[arg(
        long,
        global = true,
        env = "CAIRN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN",
        value_parser = TokenParser
    )]
    pub token: Option<BearerToken>,

    /// File holding the API token (surrounding whitespace is ignored).
    #[arg(long, global = true, env = "CAIRN_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<PathBuf>,

    /// Print central's JSON answer instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Enrollment tokens, which fleet images carry so devices can enroll.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Enrolled devices.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// The event log: devices enrolled, connected, apps changing state, OS updates, agent
    /// reports.
    Events(observe::EventsArgs),
    /// The last lines of a device's app service log, or of its agent's journal (operator).
    Logs(observe::LogsArgs),
    /// Devices pre-registered by serial or TPM EK hash, for 'claim' enrollment tokens.
    #[command(subcommand)]
    Claim(ClaimCommand),
    /// API tokens for people and tools using central's REST API.
    #[command(subcommand)]
    ApiToken(ApiTokenCommand),
    /// Apps (Compose files) on devices: deploy, list with their status, remove.
    #[command(subcommand)]
    App(AppCommand),
    /// OS update bundles (signed RAUC bundles) stored on central: upload, list, remove.
    #[command(subcommand)]
    Bundle(BundleCommand),
    /// OS update rollouts: canary and waves, pause, resume, abort, roll back.
    #[command(subcommand)]
    Rollout(RolloutCommand),
    /// Sites (name, labels, coordinates) devices belong to.
    #[command(subcommand)]
    Site(SiteCommand),
    /// Named regions (polygons) deployments place by.
    #[command(subcommand)]
    Region(RegionCommand),
    /// Deployments: an app central places on devices of selected sites, and re-places.
    #[command(subcommand)]
    Deployment(DeploymentCommand),
    /// App secrets: values go to the devices that run the app, and never come back out.
    #[command(subcommand)]
    Secret(SecretCommand),
    /// Variables for Compose files (`${NAME}`), set for the fleet, a site or a deployment.
    #[command(subcommand)]
    Variable(VariableCommand),
    /// The latest entries of central's audit log.
    Audit {
        /// How many events to show (central's default if not given).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        limit: Option<u32>,
    },
}

/// `cairnctl token ...`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create an enrollment token; its secret is shown only once.
    Create {
        /// Name of the token (e.g. the fleet or site it is for).
        #[arg(long, value_parser = checked(input::parse_non_empty))]
        name: String,
        /// How enrolling devices are approved.
        #[arg(long, value_enum)]
        policy: PolicyArg,
        /// Lifetime: a number followed by s, m, h or d (e.g. 30m, 24h, 7d).
        #[arg(long, value_name = "DURATION", value_parser = checked(input::parse_duration_seconds))]
        expires_in: Option<u64>,
        /// Maximum number of devices that may enroll with it (unlimited if not given).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        max_uses: Option<u32>,
        /// Also admit devices whose key central cannot prove to be in a genuine TPM (software
        /// keys, e.g. host agents; TPMs without an EK certificate). Without it only devices
        /// with a TPM proven by its EK certificate may enroll.
        #[arg(long)]
        allow_software_keys: bool,
    },
    /// List enrollment tokens.
    List,
    /// Revoke an enrollment token: no more devices can enroll with it.
    Revoke {
        /// Token id (tok_...).
        #[arg(value_parser = checked(input::parse_id))]
        id: String,
    },
}

/// `cairnctl device ...`
#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// List devices.
    List,
    /// Devices with their latest host metrics (CPU, memory, disk, temperature), busiest first.
    Top,
    /// Show every field of one device.
    Show {
        /// Device id (dev_...).
        #[arg(value_parser = checked(input::parse_id))]
        id: String,
    },
    /// Approve a pending device.
    Approve {
        /// Device id (dev_...).
        #[arg(value_parser = checked(input::parse_id))]
        id: String,
    },
    /// Revoke a device: central refuses it from now on.
    Revoke {
        /// Device id (dev_...).
        #[arg(value_parser = checked(input::parse_id))]
        id: String,
        /// Also order a crypto-erase (admin): on its next contact the device destroys its
        /// sealed data key, that key's LUKS keyslot and its TPM objects, reports it and
        /// reboots; its data partition then stays locked even with its own TPM (only the
        /// escrowed recovery key opens it). A device that never contacts central again is not
        /// wiped.
        #[arg(long)]
        wipe: bool,
    },
    /// Print the escrowed recovery key of a device's encrypted data partition (admin; audited).
    /// Put it in `cairn-recovery-key.txt` on a FAT stick labelled CAIRN-KEY and boot the
    /// device with the stick in: it unlocks and re-seals to its current boot chain.
    RecoveryKey {
        /// Device id (dev_...).
        #[arg(value_parser = checked(input::parse_id))]
        id: String,
    },
    /// Show whether a device's boot chain is proven by its TPM (verified, failed, stale,
    /// pending, unsupported), the firmware PCRs pinned for it and the UKI values it may boot.
    /// After a failed attestation an admin either accepts what the device measured (an
    /// expected firmware or OS change) or resets the references so its next quote pins them
    /// afresh; the device is asked for a fresh quote either way.
    Attestation {
        /// Device id (dev_...).
        #[arg(value_parser = checked(input::parse_id))]
        id: String,
        /// Pin what its last failed boot measured (admin; audited).
        #[arg(long, conflicts_with = "reset")]
        accept: bool,
        /// Forget its pinned firmware reference and learned UKI values (admin; audited).
        #[arg(long)]
        reset: bool,
    },
    /// Set a device's labels, replacing all it had (give none to clear them).
    Label {
        /// Device id (dev_...).
        #[arg(value_parser = checked(input::parse_id))]
        id: String,
        /// Labels as KEY=VALUE, e.g. gpu=yes camera=front.
        #[arg(value_name = "KEY=VALUE", value_parser = input::parse_key_value)]
        labels: Vec<(String, String)>,
    },
    /// Put a device at a site (or at none with --none); deployments follow.
    Site {
        /// Device id (dev_...).
        #[arg(value_parser = checked(input::parse_id))]
        id: String,
        /// Site name (see `cairnctl site list`).
        #[arg(value_parser = checked(input::parse_id), required_unless_present = "none")]
        site: Option<String>,
        /// Take the device out of its site.
        #[arg(long, conflicts_with = "site")]
        none: bool,
    },
}

/// `cairnctl claim ...`
#[derive(Debug, Subcommand)]
pub enum ClaimCommand {
    /// Pre-register a device by its serial number or its TPM EK hash.
    #[command(group = clap::ArgGroup::new("target").required(true).multiple(false))]
    Add {
        /// Hardware serial number of the device.
        #[arg(long, group = "target", value_parser = checked(input::parse_non_empty))]
        serial: Option<String>,
        /// SHA-256 of the device's TPM endorsement key (its DER public key, as in its EK
        /// certificate): 64 hex characters. Matches only an EK the device proves at enrollment.
        #[arg(long, group = "target", value_name = "SHA256HEX", value_parser = checked(input::parse_ek_sha256))]
        ek: Option<String>,
    },
    /// List claims.
    List,
}

/// `cairnctl api-token ...`
#[derive(Debug, Subcommand)]
pub enum ApiTokenCommand {
    /// Create an API token; its secret is shown only once.
    Create {
        /// Name of the token (e.g. the person or tool using it).
        #[arg(long, value_parser = checked(input::parse_non_empty))]
        name: String,
        /// What the token may do.
        #[arg(long, value_enum)]
        role: RoleArg,
        /// Lifetime: a number followed by s, m, h or d (e.g. 90d); until revoked if not given.
        #[arg(long, value_name = "DURATION", value_parser = checked(input::parse_duration_seconds))]
        expires_in: Option<u64>,
    },
    /// List API tokens, with when each expires and was last used.
    List,
    /// Revoke an API token: central refuses it from the next request on. The last admin token
    /// cannot be revoked; revoking the bootstrap one also deletes central's admin.token file.
    Revoke {
        /// Token id (api_...).
        #[arg(value_parser = checked(input::parse_id))]
        id: String,
    },
}

/// `--policy` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PolicyArg {
    /// Approve enrolling devices at once.
    Auto,
    /// Approve only devices pre-registered with `cairnctl claim add`.
    Claim,
    /// Keep devices pending until `cairnctl device approve`.
    Manual,
}

impl From<PolicyArg> for EnrollmentPolicy {
    fn from(policy: PolicyArg) -> Self {
        match policy {
            PolicyArg::Auto => Self::Auto,
            PolicyArg::Claim => Self::Claim,
            PolicyArg::Manual => Self::Manual,
        }
    }
}

/// `--role` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    /// Everything, including API tokens.
    Admin,
    /// Day-to-day fleet operations.
    Operator,
    /// Read only.
    Viewer,
}

impl From<RoleArg> for Role {
    fn from(role: RoleArg) -> Self {
        match role {
            RoleArg::Admin => Self::Admin,
            RoleArg::Operator => Self::Operator,
            RoleArg::Viewer => Self::Viewer,
        }
    }
}

/// Usage error when both token options are present.
const TWO_TOKENS: &str = "both an API token (--token or CAIRN_TOKEN) and a token file \
    (--token-file or CAIRN_TOKEN_FILE) are given; keep only one";

/// Usage error when no token option is present.
const NO_TOKEN: &str = "no API token: give --token-file PATH (or set CAIRN_TOKEN_FILE or \
    CAIRN_TOKEN); an admin makes one with 'cairnctl api-token create'";

/// Builds the connection from the global options: reads the token (file) and names the CA.
pub fn connection(global: &GlobalArgs) -> Result<Connection, CliError> {
    let token = match (&global.token, &global.token_file) {
        (Some(_), Some(_)) => return Err(CliError::Usage(TWO_TOKENS.to_owned())),
        (Some(token), None) => token.clone(),
        (None, Some(path)) => BearerToken::from_file(path)?,
        (None, None) => return Err(CliError::Usage(NO_TOKEN.to_owned())),
    };
    Ok(Connection::new(
        global.central.clone(),
        global.ca.clone().map(CentralCa::File),
        token,
    ))
}

/// Runs one parsed command line, writing results to `out`.
pub fn run(cli: Cli, out: &mut dyn Write) -> Result<(), CliError> {
    let client = Client::new(connection(&cli.global)?)?;
    let json = cli.global.json;
    match cli.command {
        Command::Token(command) => run_token(&client, command, json, out),
        Command::Device(command) => run_device(&client, command, json, out),
        Command::Events(args) => observe::run_events(&client, args, json, out),
        Command::Logs(args) => observe::run_logs(&client, args, json, out),
        Command::Claim(command) => run_claim(&client, command, json, out),
        Command::ApiToken(command) => run_api_token(&client, command, json, out),
        Command::App(command) => app::run_app(&client, command, json, out),
        Command::Bundle(command) => bundle::run_bundle(&client, command, json, out),
        Command::Rollout(command) => rollout::run_rollout(&client, command, json, out),
        Command::Site(command) => site::run_site(&client, command, json, out),
        Command::Region(command) => region::run_region(&client, command, json, out),
        Command::Deployment(command) => deployment::run_deployment(&client, command, json, out),
        Command::Secret(command) => secret::run_secret(&client, command, json, out),
        Command::Variable(command) => variable::run_variable(&client, command, json, out),
        Command::Audit { limit } => {
            let reply = client.audit(&AuditQuery { limit })?;
            emit_table(out, json, &reply, "no audit events", |log| {
                output::audit_table(&log.events)
            })
        }
    }
}

fn run_token(
    client: &Client,
    command: TokenCommand,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match command {
        TokenCommand::Create {
            name,
            policy,
            expires_in,
            max_uses,
            allow_software_keys,
        } => {
            let reply = client.create_enrollment_token(&CreateEnrollmentToken {
                name,
                policy: policy.into(),
                expires_in_seconds: expires_in,
                max_uses,
                require_tpm: Some(!allow_software_keys),
            })?;
            emit(out, json, &reply, output::enrollment_token_created)
        }
        TokenCommand::List => {
            let reply = client.list_enrollment_tokens()?;
            emit_table(out, json, &reply, "no enrollment tokens", |list| {
                output::enrollment_token_table(&list.tokens)
            })
        }
        TokenCommand::Revoke { id } => {
            let reply = client.revoke_enrollment_token(&id)?;
            emit(out, json, &reply, |revoked| {
                output::enrollment_token_revoked(&revoked.token)
            })
        }
    }
}

fn run_device(
    client: &Client,
    command: DeviceCommand,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match command {
        DeviceCommand::List => {
            let reply = client.list_devices()?;
            emit_table(out, json, &reply, "no devices", |list| {
                output::device_table(&list.devices)
            })
        }
        DeviceCommand::Top => observe::run_top(client, json, out),
        DeviceCommand::Show { id } => {
            let reply = client.get_device(&id)?;
            emit(out, json, &reply, |shown| {
                output::device_details(&shown.device.device)
                    + &output::attestation_summary(&shown.device.attestation)
                    + &observe::device_show_extra(shown)
            })
        }
        DeviceCommand::Approve { id } => {
            let reply = client.approve_device(&id)?;
            emit(out, json, &reply, |changed| {
                output::device_changed("approved", &changed.device)
            })
        }
        DeviceCommand::Revoke { id, wipe: false } => {
            let reply = client.revoke_device(&id)?;
            emit(out, json, &reply, |changed| {
                output::device_changed("revoked", &changed.device)
            })
        }
        DeviceCommand::Revoke { id, wipe: true } => {
            let reply = client.wipe_device(&id)?;
            emit(out, json, &reply, |changed| {
                let mut text = output::device_changed("revoked", &changed.device);
                text.push_str(if changed.device.wiped_at.is_some() {
                    "the device already reported its crypto-erase\n"
                } else {
                    "crypto-erase ordered: the device destroys its data key on its next contact (see `cairnctl device show`)\n"
                });
                text
            })
        }
        DeviceCommand::RecoveryKey { id } => {
            let reply = client.device_recovery_key(&id)?;
            emit(out, json, &reply, |shown| {
                format!("{}\n", shown.recovery_key)
            })
        }
        DeviceCommand::Attestation { id, accept, reset } => {
            let reply = if accept {
                client.accept_device_attestation(&id)?
            } else if reset {
                client.reset_device_attestation(&id)?
            } else {
                client.get_device_attestation(&id)?
            };
            emit(out, json, &reply, output::device_attestation)
        }
        DeviceCommand::Label { id, labels } => {
            site::run_device_label(client, &id, labels, json, out)
        }
        DeviceCommand::Site { id, site, none: _ } => {
            site::run_device_site(client, &id, site, json, out)
        }
    }
}

fn run_claim(
    client: &Client,
    command: ClaimCommand,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match command {
        ClaimCommand::Add { serial, ek } => {
            let claim = input::claim_from_options(serial.as_deref(), ek.as_deref())
                .map_err(|error| CliError::Usage(error.to_string()))?;
            let reply = client.create_claim(&claim)?;
            emit(out, json, &reply, |added| output::claim_added(&added.claim))
        }
        ClaimCommand::List => {
            let reply = client.list_claims()?;
            emit_table(out, json, &reply, "no claims", |list| {
                output::claim_table(&list.claims)
            })
        }
    }
}

fn run_api_token(
    client: &Client,
    command: ApiTokenCommand,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match command {
        ApiTokenCommand::Create {
            name,
            role,
            expires_in,
        } => {
            let reply = client.create_api_token(&CreateApiToken {
                name,
                role: role.into(),
                expires_in_seconds: expires_in,
            })?;
            emit(out, json, &reply, output::api_token_created)
        }
        ApiTokenCommand::Revoke { id } => {
            let reply = client.revoke_api_token(&id)?;
            emit(out, json, &reply, |revoked| {
                output::api_token_revoked(&revoked.api_token)
            })
        }
        ApiTokenCommand::List => {
            let reply = client.list_api_tokens()?;
            emit_table(out, json, &reply, "no API tokens", |list| {
                output::api_token_table(&list.api_tokens)
            })
        }
    }
}

/// Writes central's body (`--json`) or the text `render` makes of the typed value.
fn emit<T>(
    out: &mut dyn Write,
    json: bool,
    reply: &Reply<T>,
    render: impl FnOnce(&T) -> String,
) -> Result<(), CliError> {
    let text = if json {
        pretty_json(&reply.body)
    } else {
        render(&reply.value)
    };
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// Like [`emit`] for lists: a table, or `empty_note` when there is nothing to list.
fn emit_table<T>(
    out: &mut dyn Write,
    json: bool,
    reply: &Reply<T>,
    empty_note: &str,
    table: impl FnOnce(&T) -> Table,
) -> Result<(), CliError> {
    emit(out, json, reply, |value| {
        let table = table(value);
        if table.is_empty() {
            format!("{empty_note}\n")
        } else {
            table.to_string()
        }
    })
}

/// A clap value parser running an [`input`] check, so a bad value is a usage error (exit 2) that
/// reads "could not read --option 'value': reason".
fn checked<T>(check: fn(&str) -> Result<T, InputError>) -> CheckedParser<T>
where
    T: Clone + Send + Sync + 'static,
{
    CheckedParser { check }
}

/// See [`checked`].
#[derive(Clone)]
struct CheckedParser<T> {
    check: fn(&str) -> Result<T, InputError>,
}

impl<T> TypedValueParser for CheckedParser<T>
where
    T: Clone + Send + Sync + 'static,
{
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<T, clap::Error> {
        let name = arg_name(arg);
        let text = value
            .to_str()
            .ok_or_else(|| usage_error(cmd, format!("could not read {name}: it is not UTF-8")))?;
        (self.check)(text).map_err(|reason| {
            usage_error(
                cmd,
                format!(
                    "could not read {name} '{}': {reason}",
                    output::printable(text)
                ),
            )
        })
    }
}

/// Checks `--token` without ever echoing its value.
#[derive(Clone)]
struct TokenParser;

impl TypedValueParser for TokenParser {
    type Value = BearerToken;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<BearerToken, clap::Error> {
        let name = arg_name(arg);
        let text = value
            .to_str()
            .ok_or_else(|| usage_error(cmd, format!("could not read {name}: it is not UTF-8")))?;
        BearerToken::new(text, &format!("{name} (or CAIRN_TOKEN)"))
            .map_err(|error| usage_error(cmd, error.to_string()))
    }
}

fn arg_name(arg: Option<&clap::Arg>) -> String {
    match arg {
        Some(arg) => match arg.get_long() {
            Some(long) => format!("--{long}"),
            None => arg
                .get_value_names()
                .and_then(|names| names.first())
                .map_or_else(|| arg.get_id().to_string(), |name| name.to_string()),
        },
        None => "the value".to_owned(),
    }
}

fn usage_error(cmd: &clap::Command, message: String) -> clap::Error {
    let mut cmd = cmd.clone();
    cmd.error(ErrorKind::ValueValidation, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("cairnctl").chain(args.iter().copied()))
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn token_create_reads_duration() {
        let cli = parse(&[
            "token",
            "create",
            "--name",
            "lab",
            "--policy",
            "claim",
            "--expires-in",
            "7d",
            "--max-uses",
            "10",
            "--allow-software-keys",
        ])
        .unwrap();
        let Command::Token(TokenCommand::Create {
            name,
            policy,
            expires_in,
            max_uses,
            allow_software_keys,
        }) = cli.command
        else {
            panic!("wrong command");
        };
        assert_eq!(name, "lab");
        assert_eq!(policy, PolicyArg::Claim);
        assert_eq!(expires_in, Some(604_800));
        assert_eq!(max_uses, Some(10));
        assert!(allow_software_keys);
    }

    #[test]
    fn bad_duration_is_a_usage_error_with_a_clear_message() {
        let error = parse(&[
            "token",
            "create",
            "--name",
            "lab",
            "--policy",
            "auto",
            "--expires-in",
            "7x",
        ])
        .unwrap_err();
        assert_eq!(error.exit_code(), 2);
        let text = error.to_string();
        assert!(
            text.contains(
                "could not read --expires-in '7x': use a number followed by s, m, h or d"
            ),
            "{text}"
        );
    }

    #[test]
    fn claim_add_needs_exactly_one_of_serial_and_ek() {
        let ek = "A".repeat(64);
        let cli = parse(&["claim", "add", "--ek", &ek]).unwrap();
        let Command::Claim(ClaimCommand::Add { serial, ek: parsed }) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(serial, None);
        assert_eq!(parsed, Some("a".repeat(64)));

        assert_eq!(parse(&["claim", "add"]).unwrap_err().exit_code(), 2);
        assert_eq!(
            parse(&["claim", "add", "--serial", "S", "--ek", &ek])
                .unwrap_err()
                .exit_code(),
            2
        );
        let error = parse(&["claim", "add", "--ek", "abc"]).unwrap_err();
        assert!(
            error.to_string().contains("64 hexadecimal characters"),
            "{error}"
        );
    }

    #[test]
    fn ids_and_limits_are_checked() {
        assert!(parse(&["device", "approve", "dev_1"]).is_ok());
        let error = parse(&["device", "approve", "../x"]).unwrap_err();
        assert!(
            error.to_string().contains("could not read ID '../x'"),
            "{error}"
        );
        assert!(parse(&["audit", "--limit", "0"]).is_err());
        assert!(parse(&["api-token", "create", "--name", "ci", "--role", "root"]).is_err());
        assert!(parse(&["api-token", "create", "--name", "ci", "--role", "viewer"]).is_ok());
    }

    #[test]
    fn bad_token_is_refused_without_echoing_it() {
        let error = parse(&["--token", "cat_se cret", "device", "list"]).unwrap_err();
        assert_eq!(error.exit_code(), 2);
        assert!(!error.to_string().contains("cret"), "{error}");
    }

    #[test]
    fn global_options_go_anywhere_and_token_is_required() {
        let cli = parse(&["device", "list", "--json", "--central", "https://c.example"]).unwrap();
        assert!(cli.global.json);
        assert_eq!(cli.global.central, "https://c.example");
        if std::env::var_os("CAIRN_TOKEN").is_none()
            && std::env::var_os("CAIRN_TOKEN_FILE").is_none()
        {
            assert!(matches!(connection(&cli.global), Err(CliError::Usage(_))));
        }
    }

    #[test]
    fn token_and_token_file_together_are_refused() {
        let cli = parse(&["--token", "t", "--token-file", "/x", "device", "list"]).unwrap();
        assert!(matches!(connection(&cli.global), Err(CliError::Usage(_))));
    }
}
