//! `cairnctl deployment ...`: an app placed by central's scheduler on `--hosts-per-site`
//! devices of every selected site (by site labels, names, region or distance), re-placed when a
//! host is lost.

use std::io::Write;
use std::path::PathBuf;

use clap::Subcommand;
use serde_json::{json, Map, Value};

use super::app::read_app;
use super::site::{labels_json, parse_label};
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
        #[arg(long = "sites-label", value_name = "KEY=VALUE", value_parser = parse_label)]
        sites_labels: Vec<(String, String)>,
        /// Only this site (repeatable).
        #[arg(long = "site", value_name = "NAME", value_parser = checked(input::parse_id))]
        sites: Vec<String>,
        /// Sites within KM kilometres of LAT,LON, e.g. --within 47.37,8.54,50.
        #[arg(long, value_name = "LAT,LON,KM", allow_hyphen_values = true, value_parser = parse_within)]
        within: Option<(f64, f64, f64)>,
        /// Sites inside this region (see `cairnctl region list`).
        #[arg(long, value_name = "NAME", value_parser = checked(input::parse_id))]
        region: Option<String>,
        /// Devices of each selected site that run it (central's default: 1).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
        hosts_per_site: Option<u32>,
        /// Only devices with this label, e.g. --device-label gpu=yes (repeatable).
        #[arg(long = "device-label", value_name = "KEY=VALUE", value_parser = parse_label)]
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

/// Reads `LAT,LON,KM`.
fn parse_within(text: &str) -> Result<(f64, f64, f64), String> {
    let numbers: Vec<Result<f64, _>> = text.split(',').map(|n| n.trim().parse::<f64>()).collect();
    match numbers.as_slice() {
        [Ok(lat), Ok(lon), Ok(km)] => Ok((*lat, *lon, *km)),
        _ => Err("use LAT,LON,KM, e.g. 47.37,8.54,50".to_owned()),
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
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
            let mut site_selector = Map::new();
            if !sites_labels.is_empty() {
                site_selector.insert("labels".into(), labels_json(sites_labels));
            }
            if !sites.is_empty() {
                site_selector.insert("names".into(), json!(sites));
            }
            if let Some(region) = region {
                site_selector.insert("region".into(), json!(region));
            }
            if let Some((latitude, longitude, km)) = within {
                site_selector.insert(
                    "within".into(),
                    json!({ "latitude": latitude, "longitude": longitude, "km": km }),
                );
            }
            let mut placement = Map::new();
            placement.insert("sites".into(), Value::Object(site_selector));
            if let Some(n) = hosts_per_site {
                placement.insert("hosts_per_site".into(), json!(n));
            }
            if !device_labels.is_empty() {
                placement.insert(
                    "devices".into(),
                    json!({ "labels": labels_json(device_labels) }),
                );
            }
            if !avoid.is_empty() {
                placement.insert("avoid".into(), json!(avoid));
            }
            let body = json!({ "name": name, "compose_yaml": compose_yaml, "placement": placement, "dry_run": dry_run });
            let reply = client.call_value("POST", "/api/v1/deployments", Some(&body))?;
            emit(out, json, &reply, |v| {
                if v["dry_run"] == json!(true) {
                    format!(
                        "dry run: deployment {} would run on\n{}",
                        printable(&name),
                        plan_table(&v["placement"])
                    )
                } else {
                    format!(
                        "deployment {} created; see it with 'cairnctl deployment show {}'\n{}",
                        printable(&name),
                        printable(&name),
                        sites_table(&v["deployment"])
                    )
                }
            })
        }
        DeploymentCommand::List => {
            let reply = client.call_value("GET", "/api/v1/deployments", None)?;
            emit(out, json, &reply, |v| {
                let mut table = Table::new(&["NAME", "HOSTS", "PLACEMENT", "UPDATED"]);
                for d in v["deployments"].as_array().into_iter().flatten() {
                    table.push_row([
                        text(&d["name"]),
                        text(&d["hosts"]),
                        d["placement"].to_string(),
                        text(&d["updated_at"]),
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
            let reply = client.call_value("GET", &format!("/api/v1/deployments/{name}"), None)?;
            emit(out, json, &reply, |v| {
                let d = &v["deployment"];
                let head = key_values(&[
                    ("name", text(&d["name"])),
                    ("placement", d["placement"].to_string()),
                    (
                        "created",
                        format!("{} by {}", text(&d["created_at"]), text(&d["created_by"])),
                    ),
                    ("updated", text(&d["updated_at"])),
                ]);
                format!("{head}\n{}", sites_table(d))
            })
        }
        DeploymentCommand::Rm { name } => {
            let reply =
                client.call_value("DELETE", &format!("/api/v1/deployments/{name}"), None)?;
            emit(out, json, &reply, |v| {
                let from: Vec<String> = v["removed_from"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(text)
                    .collect();
                format!(
                    "deployment {} removed from {} devices\n",
                    printable(&name),
                    from.len()
                )
            })
        }
    }
}

/// Per site and host: online, app state; then the shortfalls.
fn sites_table(d: &Value) -> String {
    let mut table = Table::new(&["SITE", "WANTED", "DEVICE", "ONLINE", "STATE"]);
    let mut notes = String::new();
    for site in d["sites"].as_array().into_iter().flatten() {
        let hosts = site["hosts"].as_array().cloned().unwrap_or_default();
        if hosts.is_empty() {
            table.push_row([text(&site["site"]), text(&site["wanted"])]);
        }
        for host in hosts {
            let state = match &host["status"] {
                Value::Null => "no report".to_owned(),
                status => {
                    let services: Vec<String> = status["services"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|s| format!("{}:{}", text(&s["name"]), text(&s["state"])))
                        .collect();
                    let sync = if status["in_sync"] == json!(true) {
                        ""
                    } else {
                        " (older generation)"
                    };
                    format!("{}{sync}", services.join(" "))
                }
            };
            let online = if host["online"] == json!(true) {
                "yes"
            } else {
                "no"
            };
            table.push_row([
                text(&site["site"]),
                text(&site["wanted"]),
                text(&host["device_id"]),
                online.to_owned(),
                state,
            ]);
        }
        if let Some(shortfall) = site["shortfall"].as_str() {
            notes.push_str(&format!(
                "site {}: {}\n",
                printable(&text(&site["site"])),
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
fn plan_table(plan: &Value) -> String {
    let mut table = Table::new(&["SITE", "WANTED", "HOSTS"]);
    let mut notes = String::new();
    for site in plan["sites"].as_array().into_iter().flatten() {
        let hosts: Vec<String> = site["hosts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(text)
            .collect();
        table.push_row([text(&site["site"]), text(&site["wanted"]), hosts.join(" ")]);
        if let Some(shortfall) = site["shortfall"].as_str() {
            notes.push_str(&format!(
                "site {}: {}\n",
                printable(&text(&site["site"])),
                printable(shortfall)
            ));
        }
    }
    if table.is_empty() {
        return "no site (the selector matches none)\n".to_owned();
    }
    format!("{table}{notes}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn within_reads_three_numbers() {
        assert_eq!(parse_within("-33.9,18.4,50"), Ok((-33.9, 18.4, 50.0)));
        assert!(parse_within("1,2").is_err());
    }
}
