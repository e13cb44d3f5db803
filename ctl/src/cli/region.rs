//! `cairnctl region ...`: named polygons deployments place by (`--region`).

use std::io::Write;

use cairn_api::{CreateRegion, Point};
use clap::Subcommand;

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
        #[arg(long = "point", value_name = "LAT,LON", required = true, allow_hyphen_values = true, value_parser = input::parse_point)]
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

/// Runs one `region` command.
pub(super) fn run_region(
    client: &Client,
    command: RegionCommand,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match command {
        RegionCommand::Create { name, points } => {
            let points = points
                .into_iter()
                .map(|(latitude, longitude)| Point {
                    latitude,
                    longitude,
                })
                .collect();
            let reply = client.create_region(&CreateRegion { name, points })?;
            emit(out, json, &reply, |created| {
                format!(
                    "region {} created with {} points\n",
                    printable(&created.region.name),
                    created.region.points.len()
                )
            })
        }
        RegionCommand::List => {
            let reply = client.list_regions()?;
            emit(out, json, &reply, |list| {
                let mut table = Table::new(&["NAME", "POINTS", "CREATED"]);
                for region in &list.regions {
                    table.push_row([
                        region.name.clone(),
                        region.points.len().to_string(),
                        region.created_at.to_string(),
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
            let reply = client.delete_region(&name)?;
            emit(out, json, &reply, |_| {
                format!("region {} removed\n", printable(&name))
            })
        }
    }
}
