//! `cairnctl rollout ...`: OS update rollouts: create (or plan with --dry-run), list, show with
//! per-device state and download progress, pause, resume, abort, roll back.

use std::io::Write;

use cairn_api::{
    CreateRollout, RolloutCreated, RolloutPlan, RolloutView, Selector, WaveSpec, DEFAULT_CANARY,
};
use clap::Subcommand;

use super::{checked, emit, emit_table, CliError};
use crate::client::Client;
use crate::input;
use crate::output::{printable, Table};

/// `cairnctl rollout ...`
#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Start rolling a bundle out: a canary wave first, then the next wave each time every
    /// device of the released waves finished; central halts by itself past --max-failures.
    #[command(group = clap::ArgGroup::new("target").required(true).multiple(false))]
    Create {
        /// The bundle's SHA-256 (from `cairnctl bundle list`).
        #[arg(long, value_name = "SHA256", value_parser = checked(input::parse_id))]
        bundle: String,
        /// Every active device.
        #[arg(long, group = "target")]
        all: bool,
        /// A device id (dev_...); repeat for several.
        #[arg(long = "device", value_name = "ID", group = "target", value_parser = checked(input::parse_id))]
        devices: Vec<String>,
        /// Devices whose config has KEY=VALUE (repeat: all must match), e.g. --match site=north.
        #[arg(long = "match", value_name = "KEY=VALUE", group = "target", value_parser = input::parse_key_value)]
        matches: Vec<(String, String)>,
        /// Devices in the first (canary) wave, spread over sites (central's default: 1).
        #[arg(long, value_name = "N")]
        canary: Option<u32>,
        /// Cumulative percentages of the devices for the waves after the canary, ending at 100.
        #[arg(
            long,
            value_name = "PCT,...",
            value_delimiter = ',',
            conflicts_with = "per_site"
        )]
        percent: Vec<u32>,
        /// After the canary, one wave per site (config key `site`).
        #[arg(long)]
        per_site: bool,
        /// Halt when more than this percentage of released devices failed (central's default: 10).
        #[arg(long, value_name = "PCT", value_parser = clap::value_parser!(u32).range(0..=100))]
        max_failures: Option<u32>,
        /// Seconds a device's new slot has to pass its health checks (central's default: 600).
        #[arg(long, value_name = "SECS")]
        deadline: Option<u32>,
        /// Allow devices to go to an older version (admin only).
        #[arg(long)]
        allow_downgrade: bool,
        /// Only show the waves central would make; nothing is started.
        #[arg(long)]
        dry_run: bool,
    },
    /// List rollouts, newest first.
    List,
    /// Show a rollout: per wave and per device, with download progress.
    Show {
        /// Rollout id (rol_...).
        #[arg(value_parser = checked(input::parse_id))]
        id: String,
    },
    /// Release no new wave (devices already updating go on).
    Pause {
        /// Rollout id (rol_...).
        #[arg(value_parser = checked(input::parse_id))]
        id: String,
    },
    /// Release waves again after a pause.
    Resume {
        /// Rollout id (rol_...).
        #[arg(value_parser = checked(input::parse_id))]
        id: String,
    },
    /// Stop: devices not yet installing are called off; devices installing finish.
    Abort {
        /// Rollout id (rol_...).
        #[arg(value_parser = checked(input::parse_id))]
        id: String,
    },
    /// Send the updated devices back to the version they ran (its bundle must be uploaded).
    Rollback {
        /// Rollout id (rol_...).
        #[arg(value_parser = checked(input::parse_id))]
        id: String,
    },
}

/// Runs one `rollout` command.
pub(super) fn run_rollout(
    client: &Client,
    command: RolloutCommand,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match command {
        RolloutCommand::Create {
            bundle,
            all,
            devices,
            matches,
            canary,
            percent,
            per_site,
            max_failures,
            deadline,
            allow_downgrade,
            dry_run,
        } => {
            let selector = if all {
                Selector {
                    all: Some(true),
                    ..Selector::default()
                }
            } else if !devices.is_empty() {
                Selector {
                    devices: Some(devices),
                    ..Selector::default()
                }
            } else {
                Selector {
                    matches: Some(matches.into_iter().collect()),
                    ..Selector::default()
                }
            };
            let waves = WaveSpec {
                canary: canary.unwrap_or(DEFAULT_CANARY),
                percent: (!percent.is_empty()).then_some(percent),
                per_site,
            };
            let request = CreateRollout {
                bundle_sha256: bundle,
                selector,
                waves,
                failure_threshold_percent: max_failures,
                health_deadline_seconds: deadline,
                allow_downgrade,
                dry_run,
            };
            let reply = client.create_rollout(&request)?;
            emit(out, json, &reply, |created| match created {
                RolloutCreated::DryRun(dry_run) => plan_text(&dry_run.plan),
                RolloutCreated::Created(reply) => {
                    let view = &reply.rollout;
                    let rollout = &view.rollout;
                    format!(
                        "rollout {} created: version {} to {} devices in {} waves; follow it with 'cairnctl rollout show {}'\n",
                        printable(&rollout.id),
                        printable(&rollout.version),
                        view.devices.as_ref().map_or(0, Vec::len),
                        rollout.wave_count,
                        printable(&rollout.id)
                    )
                }
            })
        }
        RolloutCommand::List => {
            let reply = client.list_rollouts()?;
            emit_table(out, json, &reply, "no rollouts", |list| {
                rollout_table(&list.rollouts)
            })
        }
        RolloutCommand::Show { id } => {
            let reply = client.get_rollout(&id)?;
            emit(out, json, &reply, |shown| rollout_details(&shown.rollout))
        }
        RolloutCommand::Pause { id } => act(client, &id, "pause", "paused", json, out),
        RolloutCommand::Resume { id } => act(client, &id, "resume", "resumed", json, out),
        RolloutCommand::Abort { id } => act(client, &id, "abort", "aborted", json, out),
        RolloutCommand::Rollback { id } => act(client, &id, "rollback", "rolled back", json, out),
    }
}

/// Runs pause, resume, abort or rollback and confirms the new state.
fn act(
    client: &Client,
    id: &str,
    verb: &str,
    done: &str,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let reply = client.rollout_action(id, verb)?;
    emit(out, json, &reply, |r| {
        format!(
            "rollout {} {done}: now {}\n",
            printable(&r.rollout.rollout.id),
            printable(r.rollout.rollout.state.as_str())
        )
    })
}

/// A dry run's waves, one line per device.
fn plan_text(plan: &RolloutPlan) -> String {
    let mut text = format!(
        "plan (nothing started): {} devices to version {}\n",
        plan.device_count,
        printable(&plan.version)
    );
    let mut table = Table::new(&["WAVE", "KIND", "LABEL", "DEVICE", "SITE", "FROM", "TO"]);
    for wave in &plan.waves {
        for device in &wave.devices {
            table.push_row([
                wave.index.to_string().as_str(),
                wave.kind.as_str(),
                &wave.label,
                &device.device_id,
                device.site.as_deref().unwrap_or("-"),
                &device.from_version,
                &device.to_version,
            ]);
        }
    }
    text.push_str(&table.to_string());
    for skipped in &plan.skipped {
        text.push_str(&format!(
            "skipped {}: already runs {}\n",
            printable(&skipped.device_id),
            printable(&skipped.version)
        ));
    }
    text
}

fn count(rollout: &RolloutView, state: &str) -> u64 {
    rollout.counts.get(state).copied().unwrap_or(0)
}

/// Table of rollouts.
fn rollout_table(rollouts: &[RolloutView]) -> Table {
    let mut table = Table::new(&[
        "ID",
        "VERSION",
        "STATE",
        "WAVES",
        "SUCCEEDED",
        "FAILED",
        "CREATED",
    ]);
    for view in rollouts {
        let r = &view.rollout;
        let total: u64 = view.counts.values().sum();
        table.push_row([
            r.id.as_str(),
            &r.version,
            r.state.as_str(),
            &format!("{}/{}", r.released_waves, r.wave_count),
            &format!("{}/{total}", count(view, "succeeded")),
            &(count(view, "failed") + count(view, "refused")).to_string(),
            &r.created_at.to_string(),
        ]);
    }
    table
}

/// One rollout: summary lines and a device table with download percentages.
fn rollout_details(view: &RolloutView) -> String {
    let r = &view.rollout;
    let mut text = format!(
        "rollout {} to version {} ({}): {}, waves released {}/{}\n",
        printable(&r.id),
        printable(&r.version),
        printable(&r.bundle_sha256),
        printable(r.state.as_str()),
        r.released_waves,
        r.wave_count
    );
    if let Some(reason) = &r.halt_reason {
        text.push_str(&format!("halted: {}\n", printable(reason)));
    }
    let mut table = Table::new(&["WAVE", "DEVICE", "FROM", "STATE", "DOWNLOAD", "ERROR"]);
    for listed in view.devices.iter().flatten() {
        let download = match &listed.progress {
            Some(p) if p.bytes_total > 0 => {
                format!("{}%", p.bytes_done.min(p.bytes_total) * 100 / p.bytes_total)
            }
            _ => "-".to_owned(),
        };
        let d = &listed.device;
        table.push_row([
            d.wave.to_string().as_str(),
            &d.device_id,
            &d.from_version,
            d.state.as_str(),
            &download,
            &d.error,
        ]);
    }
    text.push_str(&table.to_string());
    text
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("cairnctl").chain(args.iter().copied()))
    }

    #[test]
    fn create_needs_exactly_one_target_and_reads_waves() {
        let sha = "ab".repeat(32);
        let cli = parse(&[
            "rollout",
            "create",
            "--bundle",
            &sha,
            "--match",
            "site=north",
            "--percent",
            "25,100",
            "--canary",
            "2",
        ])
        .unwrap();
        let Command::Rollout(RolloutCommand::Create {
            matches,
            percent,
            canary,
            ..
        }) = cli.command
        else {
            panic!("wrong command")
        };
        assert_eq!(matches, vec![("site".to_owned(), "north".to_owned())]);
        assert_eq!((percent, canary), (vec![25, 100], Some(2)));
        assert!(parse(&["rollout", "create", "--bundle", &sha]).is_err());
        assert!(
            parse(&["rollout", "create", "--bundle", &sha, "--all", "--device", "dev_1"]).is_err()
        );
        assert!(parse(&[
            "rollout",
            "create",
            "--bundle",
            &sha,
            "--all",
            "--per-site",
            "--percent",
            "100"
        ])
        .is_err());
        assert!(parse(&["rollout", "create", "--bundle", &sha, "--match", "nokey"]).is_err());
        assert!(parse(&["rollout", "pause", "rol_1"]).is_ok());
    }

    #[test]
    fn show_prints_download_percent() {
        let at = "2025-01-01T00:00:00Z";
        let rollout: RolloutView = serde_json::from_value(serde_json::json!({
            "id": "rol_1", "bundle_sha256": "ab".repeat(32), "version": "2.0",
            "selector": { "all": true }, "waves": { "canary": 1, "per_site": false },
            "wave_count": 2, "released_waves": 1, "skipped": [],
            "failure_threshold_percent": 10, "health_deadline_seconds": 600,
            "allow_downgrade": false, "state": "running", "halt_reason": null,
            "created_by": "api:ops", "created_at": at, "updated_at": at,
            "counts": {}, "wave_summary": [],
            "devices": [{
                "device_id": "dev_1", "wave": 0, "from_version": "1.0",
                "state": "downloading", "error": "", "rollback_sha256": null,
                "updated_at": at, "online": true, "running_version": "1.0",
                "progress": {
                    "phase": "downloading", "bundle_sha256": "ab".repeat(32),
                    "bytes_done": 50, "bytes_total": 200, "bytes_fetched": 10,
                    "reported_at": at
                }
            }]
        }))
        .unwrap();
        let text = rollout_details(&rollout);
        assert!(
            text.contains("25%") && text.contains("dev_1") && text.contains("1/2"),
            "{text}"
        );
    }
}
