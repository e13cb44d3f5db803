//! `cairnctl region ...`: named polygons deployments place by (`--region`).

use std::io::Write;

use clap::Subcommand;
use serde_json::{json, Value};

use super::{checked, emit, CliError};
use crate::client::Client;
use crate::input;
use crate::output::{printable, Table};

/// `cairnctl region ...`
#[derive(Debug, Subcommand)]
pub enum RegionCommand {
    /// Create a region: at least three corners, in order around it.
    Create {
        /// Region name: lower-case letters, digits and '-' (e.g. alps).
        #[arg(value_parser = checked(input::parse_id))]
        name: String,
        /// A corner as LAT,LON in degrees (repeat, in order around the region).
        #[arg(long = "point", value_name = "LAT,LON", required = true, allow_hyphen_values = true, value_parser = parse_point)]
        points: Vec<(f64, f64)>,
    },
    /// List regions.
    List,
    /// Remove a region no deployment uses.
    Rm {
        /// Region name.
        #[arg(value_parser = checked(input::parse_id))]
        name: String,
    },
}

/// Reads `LAT,LON`.
fn parse_point(text: &str) -> Result<(f64, f64), String> {
    let numbers: Vec<Result<f64, _>> = text.split(',').map(|n| n.trim().parse::<f64>()).collect();
    match numbers.as_slice() {
        [Ok(lat), Ok(lon)] => Ok((*lat, *lon)),
        _ => Err("use LAT,LON in degrees, e.g. 47.37,8.54".to_owned()),
    }
}

/// Runs one `region` command.
pub(super) fn run_region(
    client: &Client,
    command: RegionCommand,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match command {
        RegionCommand::Create { name, points } => {
            let points: Vec<Value> = points
                .iter()
                .map(|(lat, lon)| json!({ "latitude": lat, "longitude": lon }))
                .collect();
            let body = json!({ "name": name, "points": points });
            let reply = client.call_value("POST", "/api/v1/regions", Some(&body))?;
            emit(out, json, &reply, |v| {
                let count = v["region"]["points"].as_array().map_or(0, Vec::len);
                format!(
                    "region {} created with {count} points\n",
                    printable(v["region"]["name"].as_str().unwrap_or_default())
                )
            })
        }
        RegionCommand::List => {
            let reply = client.call_value("GET", "/api/v1/regions", None)?;
            emit(out, json, &reply, |v| {
                let mut table = Table::new(&["NAME", "POINTS", "CREATED"]);
                for region in v["regions"].as_array().into_iter().flatten() {
                    table.push_row([
                        region["name"].as_str().unwrap_or_default().to_owned(),
                        region["points"].as_array().map_or(0, Vec::len).to_string(),
                        region["created_at"].as_str().unwrap_or_default().to_owned(),
                    ]);
                }
                if table.is_empty() {
                    "no regions\n".to_owned()
                } else {
                    table.to_string()
                }
            })
        }
        RegionCommand::Rm { name } => {
            let reply = client.call_value("DELETE", &format!("/api/v1/regions/{name}"), None)?;
            emit(out, json, &reply, |_| {
                format!("region {} removed\n", printable(&name))
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_read_negative_degrees() {
        assert_eq!(parse_point("-33.9, 18.4"), Ok((-33.9, 18.4)));
        assert!(parse_point("1").is_err());
        assert!(parse_point("a,b").is_err());
    }
}
