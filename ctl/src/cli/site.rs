//! `cairnctl site ...` (sites: name, labels, coordinates) and `cairnctl device label|site`.

use std::collections::BTreeMap;
use std::io::Write;

use clap::Subcommand;
use serde_json::{json, Value};

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
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
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

/// Reads `KEY=VALUE`.
pub(super) fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.to_owned()))
        }
        _ => Err("use KEY=VALUE, e.g. country=ch".to_owned()),
    }
}

/// Labels as a JSON object.
pub(super) fn labels_json(labels: Vec<(String, String)>) -> Value {
    json!(labels.into_iter().collect::<BTreeMap<_, _>>())
}

/// `k=v,k2=v2` of a JSON labels object.
pub(super) fn labels_text(labels: &Value) -> String {
    labels
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn site_details(site: &Value) -> Vec<(&'static str, String)> {
    vec![
        ("name", text(&site["name"])),
        ("latitude", text(&site["latitude"])),
        ("longitude", text(&site["longitude"])),
        ("labels", labels_text(&site["labels"])),
        ("created", text(&site["created_at"])),
        ("updated", text(&site["updated_at"])),
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
            let body = json!({
                "name": name, "latitude": lat, "longitude": lon, "labels": labels_json(labels), "devices": devices,
            });
            let reply = client.call_value("POST", "/api/v1/sites", Some(&body))?;
            emit(out, json, &reply, |v| {
                let name = printable(&text(&v["site"]["name"]));
                match v["devices"].as_array().map_or(0, Vec::len) {
                    0 => format!("site {name} created\n"),
                    n => format!("site {name} created with {n} devices\n"),
                }
            })
        }
        SiteCommand::List => {
            let reply = client.call_value("GET", "/api/v1/sites", None)?;
            emit(out, json, &reply, |v| {
                let mut table = Table::new(&["NAME", "LATITUDE", "LONGITUDE", "DEVICES", "LABELS"]);
                for site in v["sites"].as_array().into_iter().flatten() {
                    table.push_row([
                        text(&site["name"]),
                        text(&site["latitude"]),
                        text(&site["longitude"]),
                        text(&site["device_count"]),
                        labels_text(&site["labels"]),
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
            let reply = client.call_value("GET", &format!("/api/v1/sites/{name}"), None)?;
            emit(out, json, &reply, |v| {
                let mut pairs = site_details(&v["site"]);
                let devices: Vec<String> = v["devices"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(text)
                    .collect();
                pairs.push(("devices", devices.join(", ")));
                key_values(&pairs)
            })
        }
        SiteCommand::Rm { name } => {
            let reply = client.call_value("DELETE", &format!("/api/v1/sites/{name}"), None)?;
            emit(out, json, &reply, |v| {
                format!("site {} removed\n", printable(&text(&v["removed"])))
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
    let body = json!({ "labels": labels_json(labels) });
    let reply = client.call_value("PUT", &format!("/api/v1/devices/{id}/labels"), Some(&body))?;
    emit(out, json, &reply, |v| {
        let labels = labels_text(&v["device"]["labels"]);
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
    let body = json!({ "site": site });
    let reply = client.call_value("PUT", &format!("/api/v1/devices/{id}/site"), Some(&body))?;
    emit(out, json, &reply, |v| match v["device"]["site"].as_str() {
        Some(site) => format!("device {} is at site {}\n", printable(id), printable(site)),
        None => format!("device {} is at no site\n", printable(id)),
    })
}
