//! `cairnctl site ...` (sites: name, labels, coordinates) and `cairnctl device label|site`.

use std::collections::BTreeMap;
use std::io::Write;

use cairn_api::{CreateSite, SetDeviceLabels, SetDeviceSite, Site};
use clap::Subcommand;

use super::{checked, emit, CliError};
use crate::client::Client;
use crate::input;
use crate::output::{key_values, printable, Table};

/// `cairnctl site ...`
#[derive(Debug, Subcommand)]
pub enum SiteCommand {
    /// Create a site: where devices are installed.
    Create {
        /// Site name: lower-case letters, digits and '-' (e.g. zurich-1).
        #[arg(value_parser = checked(input::parse_id))]
        name: String,
        /// Latitude in degrees north (-90 to 90).
        #[arg(long, value_name = "DEG", allow_negative_numbers = true)]
        lat: f64,
        /// Longitude in degrees east (-180 to 180).
        #[arg(long, value_name = "DEG", allow_negative_numbers = true)]
        lon: f64,
        /// A label deployments select sites by, e.g. --label country=ch (repeatable).
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = input::parse_key_value)]
        labels: Vec<(String, String)>,
        /// A device put at the new site in the same call (repeatable; an unknown one creates
        /// nothing).
        #[arg(long = "device", value_name = "DEVICE_ID", value_parser = checked(input::parse_id))]
        devices: Vec<String>,
    },
    /// List sites with their device counts.
    List,
    /// Show a site and its devices.
    Show {
        /// Site name.
        #[arg(value_parser = checked(input::parse_id))]
        name: String,
    },
    /// Remove a site (only once no device is at it).
    Rm {
        /// Site name.
        #[arg(value_parser = checked(input::parse_id))]
        name: String,
    },
}

/// `k=v,k2=v2`.
pub(super) fn labels_text(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Degrees as central wrote them (`8.0`, not `8`).
fn degrees(value: f64) -> String {
    serde_json::Value::from(value).to_string()
}

fn site_details(site: &Site) -> Vec<(&'static str, String)> {
    vec![
        ("name", site.name.clone()),
        ("latitude", degrees(site.latitude)),
        ("longitude", degrees(site.longitude)),
        ("labels", labels_text(&site.labels)),
        ("created", site.created_at.to_string()),
        ("updated", site.updated_at.to_string()),
    ]
}

/// Runs one `site` command.
pub(super) fn run_site(
    client: &Client,
    command: SiteCommand,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match command {
        SiteCommand::Create {
            name,
            lat,
            lon,
            labels,
            devices,
        } => {
            let request = CreateSite {
                name,
                labels: labels.into_iter().collect(),
                latitude: lat,
                longitude: lon,
                devices,
            };
            let reply = client.create_site(&request)?;
            emit(out, json, &reply, |created| {
                let name = printable(&created.site.name);
                match created.devices.len() {
                    0 => format!("site {name} created\n"),
                    n => format!("site {name} created with {n} devices\n"),
                }
            })
        }
        SiteCommand::List => {
            let reply = client.list_sites()?;
            emit(out, json, &reply, |list| {
                let mut table = Table::new(&["NAME", "LATITUDE", "LONGITUDE", "DEVICES", "LABELS"]);
                for listed in &list.sites {
                    let site = &listed.site;
                    table.push_row([
                        site.name.clone(),
                        degrees(site.latitude),
                        degrees(site.longitude),
                        listed.device_count.to_string(),
                        labels_text(&site.labels),
                    ]);
                }
                if table.is_empty() {
                    "no sites\n".to_owned()
                } else {
                    table.to_string()
                }
            })
        }
        SiteCommand::Show { name } => {
            let reply = client.get_site(&name)?;
            emit(out, json, &reply, |shown| {
                let mut pairs = site_details(&shown.site);
                pairs.push(("devices", shown.devices.join(", ")));
                key_values(&pairs)
            })
        }
        SiteCommand::Rm { name } => {
            let reply = client.delete_site(&name)?;
            emit(out, json, &reply, |removed| {
                format!("site {} removed\n", printable(&removed.removed))
            })
        }
    }
}

/// `cairnctl device label ID [KEY=VALUE]...`: replace the device's labels.
pub(super) fn run_device_label(
    client: &Client,
    id: &str,
    labels: Vec<(String, String)>,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let request = SetDeviceLabels {
        labels: labels.into_iter().collect(),
    };
    let reply = client.set_device_labels(id, &request)?;
    emit(out, json, &reply, |changed| {
        let labels = labels_text(&changed.device.labels);
        let shown = if labels.is_empty() {
            "none".to_owned()
        } else {
            printable(&labels)
        };
        format!("device {} labels: {shown}\n", printable(id))
    })
}

/// `cairnctl device site ID [SITE | --none]`.
pub(super) fn run_device_site(
    client: &Client,
    id: &str,
    site: Option<String>,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let reply = client.set_device_site(id, &SetDeviceSite { site })?;
    emit(out, json, &reply, |changed| match &changed.device.site {
        Some(site) => format!("device {} is at site {}\n", printable(id), printable(site)),
        None => format!("device {} is at no site\n", printable(id)),
    })
}
