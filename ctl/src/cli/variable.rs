//! `cairnctl variable ...`: variables for Compose files, set for the whole fleet, one site or
//! one deployment. Central merges them with its built-ins (`CAIRN_SITE`, ...) for each app on
//! each device, a site's value beating a deployment's beating the fleet's.

use std::io::Write;

use cairn_api::{SetVariable, VariableQuery, VariableScope};
use clap::{Args, Subcommand};

use super::{checked, emit, emit_table, CliError};
use crate::client::Client;
use crate::input;
use crate::output::{printable, Table};

/// Where a variable applies: exactly one of the three.
#[derive(Debug, Args, Clone)]
#[group(required = true, multiple = false)]
pub struct VariableScopeArgs {
    /// Every app on every device.
    #[arg(long)]
    pub fleet: bool,
    /// Every app on the devices at this site.
    #[arg(long, value_name = "SITE", value_parser = checked(input::parse_id))]
    pub site: Option<String>,
    /// This deployment's app, on every device it places it.
    #[arg(long, value_name = "DEPLOYMENT", value_parser = checked(input::parse_app_name))]
    pub deployment: Option<String>,
}

/// The same, all optional, to filter a list.
#[derive(Debug, Args, Clone)]
#[group(required = false, multiple = false)]
pub struct VariableFilterArgs {
    /// Only the fleet's variables.
    #[arg(long)]
    pub fleet: bool,
    /// Only this site's variables.
    #[arg(long, value_name = "SITE", value_parser = checked(input::parse_id))]
    pub site: Option<String>,
    /// Only this deployment's variables.
    #[arg(long, value_name = "DEPLOYMENT", value_parser = checked(input::parse_app_name))]
    pub deployment: Option<String>,
}

/// `cairnctl variable ...`
#[derive(Debug, Subcommand)]
pub enum VariableCommand {
    /// Set a variable (create or replace); the devices whose apps it changes get it at once.
    Set {
        /// Variable name (letters, digits, '_'; not CAIRN_..., central's built-ins).
        name: String,
        /// Its value (at most 4096 bytes; not secret: use `cairnctl secret` for those).
        value: String,
        /// Where it applies.
        #[command(flatten)]
        scope: VariableScopeArgs,
    },
    /// Remove a variable; apps fall back to a less specific scope's value, or report it unset.
    Rm {
        /// Variable name.
        name: String,
        /// Where it applies (as given to `set`).
        #[command(flatten)]
        scope: VariableScopeArgs,
    },
    /// List the variables operators set (an app's variables on a device, built-ins included,
    /// are in `cairnctl app list --json`).
    List {
        /// Which scope.
        #[command(flatten)]
        scope: VariableFilterArgs,
    },
}

/// The scope and scope name of `fleet`, `site`, `deployment` (at most one given).
fn scope_of(
    fleet: bool,
    site: Option<String>,
    deployment: Option<String>,
) -> Option<(VariableScope, String)> {
    match (fleet, site, deployment) {
        (true, _, _) => Some((VariableScope::Fleet, String::new())),
        (_, Some(site), _) => Some((VariableScope::Site, site)),
        (_, _, Some(deployment)) => Some((VariableScope::Deployment, deployment)),
        _ => None,
    }
}

/// Where a variable applies, for messages and tables: `fleet`, `site S`, `deployment D`.
fn scope_text(scope: &VariableScope, scope_name: &str) -> String {
    match scope {
        VariableScope::Fleet => "fleet".to_owned(),
        _ => format!("{scope} {}", printable(scope_name)),
    }
}

/// Runs one `variable` command.
pub(super) fn run_variable(
    client: &Client,
    command: VariableCommand,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match command {
        VariableCommand::Set { name, value, scope } => {
            let (scope, scope_name) = scope_of(scope.fleet, scope.site, scope.deployment)
                .unwrap_or((VariableScope::Fleet, String::new()));
            let request = SetVariable {
                scope,
                scope_name,
                name,
                value,
            };
            let reply = client.set_variable(&request)?;
            emit(out, json, &reply, |set| {
                format!(
                    "variable {} set for {}, sent to {} devices\n",
                    printable(&set.variable.name),
                    scope_text(&set.variable.scope, &set.variable.scope_name),
                    set.devices_updated
                )
            })
        }
        VariableCommand::Rm { name, scope } => {
            let (scope, scope_name) = scope_of(scope.fleet, scope.site, scope.deployment)
                .unwrap_or((VariableScope::Fleet, String::new()));
            let query = VariableQuery {
                scope: Some(scope.to_string()),
                scope_name: (!scope_name.is_empty()).then_some(scope_name),
                name: Some(name),
            };
            let reply = client.delete_variable(&query)?;
            emit(out, json, &reply, |removed| {
                format!(
                    "variable {} removed from {}, sent to {} devices\n",
                    printable(&removed.variable.name),
                    scope_text(&removed.variable.scope, &removed.variable.scope_name),
                    removed.devices_updated
                )
            })
        }
        VariableCommand::List { scope } => {
            let scope = scope_of(scope.fleet, scope.site, scope.deployment);
            let query = VariableQuery {
                scope: scope.as_ref().map(|(scope, _)| scope.to_string()),
                scope_name: scope.map(|(_, name)| name).filter(|name| !name.is_empty()),
                name: None,
            };
            let reply = client.list_variables(&query)?;
            emit_table(out, json, &reply, "no variables", |list| {
                let mut table = Table::new(&["SCOPE", "NAME", "VALUE", "UPDATED", "BY"]);
                for v in &list.variables {
                    table.push_row([
                        scope_text(&v.scope, &v.scope_name),
                        v.name.clone(),
                        v.value.clone(),
                        v.updated_at.to_string(),
                        v.updated_by.clone(),
                    ]);
                }
                table
            })
        }
    }
}
