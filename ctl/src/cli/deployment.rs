//! `cairnctl deployment ...`: an app placed by central's scheduler on `--hosts-per-site`
//! devices of every selected site (by site labels, names, region or distance), re-placed when a
//! host is lost.

use std::io::Write;
use std::path::PathBuf;

use cairn_api::{
    CreateDeployment, DeploymentChanged, DeploymentPlan, DeploymentView, DeviceSelector, Placement,
    SiteSelector, Within,
};
use clap::Subcommand;

use super::app::read_app;
use super::{checked, emit, CliError};
use crate::client::Client;
use crate::input;
use crate::output::{key_values, printable, Table};

/// `cairnctl deployment ...`
#[derive(Debug, Subcommand)]
pub enum DeploymentCommand {
    /// Create a deployment (or only show where it would run, with --dry-run). Site conditions
    /// combine: every one given must hold; none given selects every site.
    Create {
        /// The Compose file (checked here as `cairnctl app deploy` does).
        #[arg(short = 'f', long = "file", value_name = "COMPOSE.YML")]
        file: PathBuf,
        /// Deployment name, also the app name on the devices (default: the file name).
        #[arg(long, value_parser = checked(input::parse_app_name))]
        name: Option<String>,
        /// Sites with this label, e.g. --sites-label country=ch (repeatable: all must match).
        #[arg(long = "sites-label", value_name = "KEY=VALUE", value_parser = input::parse_key_value)]
        sites_labels: Vec<(String, String)>,
        /// Only this site (repeatable).
        #[arg(long = "site", value_name = "NAME", value_parser = checked(input::parse_id))]
        sites: Vec<String>,
        /// Sites within KM kilometres of LAT,LON, e.g. --within 47.37,8.54,50.
        #[arg(long, value_name = "LAT,LON,KM", allow_hyphen_values = true, value_parser = input::parse_within)]
        within: Option<(f64, f64, f64)>,
        /// Sites inside this region (see `cairnctl region list`).
        #[arg(long, value_name = "NAME", value_parser = checked(input::parse_id))]
        region: Option<String>,
        /// Devices of each selected site that run it (central's default: 1).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
        hosts_per_site: Option<u32>,
        /// Only devices with this label, e.g. --device-label gpu=yes (repeatable).
        #[arg(long = "device-label", value_name = "KEY=VALUE", value_parser = input::parse_key_value)]
        device_labels: Vec<(String, String)>,
        /// Never share a device with this deployment (repeatable).
        #[arg(long, value_name = "DEPLOYMENT", value_parser = checked(input::parse_app_name))]
        avoid: Vec<String>,
        /// Only show where central would place it; nothing is stored or sent.
        #[arg(long)]
        dry_run: bool,
    },
    /// List deployments with their host counts.
    List,
    /// Show a deployment: per site, its hosts and the state they reported.
    Show {
        /// Deployment name.
        #[arg(value_parser = checked(input::parse_app_name))]
        name: String,
    },
    /// Remove a deployment: its app leaves every device it was placed on.
    Rm {
        /// Deployment name.
        #[arg(value_parser = checked(input::parse_app_name))]
        name: String,
    },
}

/// A placement as one line of JSON, as central stores it.
fn placement_text(placement: &Placement) -> String {
    serde_json::to_string(placement).unwrap_or_default()
}

/// Runs one `deployment` command.
pub(super) fn run_deployment(
    client: &Client,
    command: DeploymentCommand,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match command {
        DeploymentCommand::Create {
            file,
            name,
            sites_labels,
            sites,
            within,
            region,
            hosts_per_site,
            device_labels,
            avoid,
            dry_run,
        } => {
            let (name, compose_yaml) = read_app(&file, name)?;
            let placement = Placement {
                sites: SiteSelector {
                    labels: sites_labels.into_iter().collect(),
                    names: (!sites.is_empty()).then_some(sites),
                    region,
                    within: within.map(|(latitude, longitude, km)| Within {
                        latitude,
                        longitude,
                        km,
                    }),
                },
                hosts_per_site: hosts_per_site.unwrap_or(Placement::default().hosts_per_site),
                devices: DeviceSelector {
                    labels: device_labels.into_iter().collect(),
                },
                avoid,
            };
            let request = CreateDeployment {
                name: name.clone(),
                compose_yaml,
                placement,
                dry_run,
            };
            let reply = client.create_deployment(&request)?;
            emit(out, json, &reply, |changed| match changed {
                DeploymentChanged::DryRun(dry_run) => format!(
                    "dry run: deployment {} would run on\n{}",
                    printable(&name),
                    plan_table(&dry_run.placement)
                ),
                DeploymentChanged::Saved(saved) => format!(
                    "deployment {} created; see it with 'cairnctl deployment show {}'\n{}",
                    printable(&name),
                    printable(&name),
                    sites_table(&saved.deployment)
                ),
            })
        }
        DeploymentCommand::List => {
            let reply = client.list_deployments()?;
            emit(out, json, &reply, |list| {
                let mut table = Table::new(&["NAME", "HOSTS", "PLACEMENT", "UPDATED"]);
                for d in &list.deployments {
                    table.push_row([
                        d.name.clone(),
                        d.hosts.to_string(),
                        placement_text(&d.placement),
                        d.updated_at.to_string(),
                    ]);
                }
                if table.is_empty() {
                    "no deployments\n".to_owned()
                } else {
                    table.to_string()
                }
            })
        }
        DeploymentCommand::Show { name } => {
            let reply = client.get_deployment(&name)?;
            emit(out, json, &reply, |shown| {
                let view = &shown.deployment;
                let d = &view.deployment;
                let head = key_values(&[
                    ("name", d.name.clone()),
                    ("placement", placement_text(&d.placement)),
                    ("created", format!("{} by {}", d.created_at, d.created_by)),
                    ("updated", d.updated_at.to_string()),
                ]);
                format!("{head}\n{}", sites_table(view))
            })
        }
        DeploymentCommand::Rm { name } => {
            let reply = client.delete_deployment(&name)?;
            emit(out, json, &reply, |removed| {
                format!(
                    "deployment {} removed from {} devices\n",
                    printable(&name),
                    removed.removed_from.len()
                )
            })
        }
    }
}

/// Per site and host: online, app state; then the shortfalls.
fn sites_table(view: &DeploymentView) -> String {
    let mut table = Table::new(&["SITE", "WANTED", "DEVICE", "ONLINE", "STATE"]);
    let mut notes = String::new();
    for site in &view.sites {
        let wanted = site.wanted.to_string();
        if site.hosts.is_empty() {
            table.push_row([site.site.as_str(), &wanted]);
        }
        for host in &site.hosts {
            let state = match &host.status {
                None => "no report".to_owned(),
                Some(status) => {
                    let services: Vec<String> = status
                        .services
                        .iter()
                        .map(|s| format!("{}:{}", s.name, s.state))
                        .collect();
                    let sync = if status.in_sync {
                        ""
                    } else {
                        " (older generation)"
                    };
                    format!("{}{sync}", services.join(" "))
                }
            };
            let online = if host.online { "yes" } else { "no" };
            table.push_row([site.site.as_str(), &wanted, &host.device_id, online, &state]);
        }
        if let Some(shortfall) = &site.shortfall {
            notes.push_str(&format!(
                "site {}: {}\n",
                printable(&site.site),
                printable(shortfall)
            ));
        }
    }
    if table.is_empty() {
        return "no site is selected\n".to_owned();
    }
    format!("{table}{notes}")
}

/// A dry run's sites and hosts.
fn plan_table(plan: &DeploymentPlan) -> String {
    let mut table = Table::new(&["SITE", "WANTED", "HOSTS"]);
    let mut notes = String::new();
    for site in &plan.sites {
        table.push_row([
            site.site.clone(),
            site.wanted.to_string(),
            site.hosts.join(" "),
        ]);
        if let Some(shortfall) = &site.shortfall {
            notes.push_str(&format!(
                "site {}: {}\n",
                printable(&site.site),
                printable(shortfall)
            ));
        }
    }
    if table.is_empty() {
        return "no site (the selector matches none)\n".to_owned();
    }
    format!("{table}{notes}")
}
