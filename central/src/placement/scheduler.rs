//! The scheduler: per deployment and per selected site, which devices run the app.
//!
//! Rules, per site (deterministic; deployments are planned in name order):
//! 1. A device is *eligible* when it is active, at the site, has every label of
//!    `placement.devices.labels`, is allowed the host devices and extra capabilities the app
//!    asks for by its own or its site's labels ([`super::privileges`]), holds no operator app of the same name, runs no app the
//!    deployment avoids and no deployment that avoids this one, and its desired state has room.
//! 2. Current hosts that are eligible and not *lost* (offline longer than the grace period) or
//!    *quarantined* (their boot attestation failed) are kept, online ones first, then by device
//!    id, up to `hosts_per_site`.
//! 3. Free slots go to eligible devices neither lost nor quarantined: online first, then by id.
//! 4. Slots still free keep lost or quarantined current hosts (nobody can take over; they get
//!    it back on reconnect or a verified boot anyway). Otherwise such a host's app moves and is
//!    removed from it (a quarantined device receives the removal once it verifies again).
//! 5. Hosts outside the selected sites, revoked hosts and apps of deleted deployments are removed.
//!
//! [`reconcile`] applies the plan: per changed device one revision bump, its deployment-owned
//! app rows written, an audit record per change, and the new desired state queued for a push.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

use crate::store::db::Connection;
use cairn_proto::MAX_DESIRED_STATE_BYTES;

use super::geo::Point;
use super::privileges;
use super::spec::{Labels, PlacementRules};
use crate::grpc::{desired_states, DESIRED_BATCH};
use crate::rollout::engine::Push;
use crate::store::deployments::{self, AppRow, Deployment};
use crate::store::sites::{self, Site};
use crate::store::{apps, attestation, audit, devices, DeviceStatus, StoreError};
use crate::Shared;
use cairn_compose::AppSpec;

/// Audit actor of the scheduler's own changes.
const SCHEDULER_ACTOR: &str = "central";
/// Rough per-app overhead in a desired state beyond name and Compose text.
const APP_OVERHEAD_BYTES: usize = 64;

/// A device as the planner sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Host {
    /// Device id.
    pub id: String,
    /// Its site.
    pub site: Option<String>,
    /// Its labels.
    pub labels: Labels,
    /// Active (not pending or revoked).
    pub active: bool,
    /// A Sync stream is open.
    pub online: bool,
    /// Offline for longer than the grace period.
    pub lost: bool,
    /// Its last boot attestation failed: it gets no new desired state, so no new app either.
    pub quarantined: bool,
    /// Approximate size of its desired state.
    pub desired_bytes: usize,
}

/// Everything the planner reads; `apps` is updated as deployments are planned.
#[derive(Debug, Clone, Default)]
pub struct World {
    /// Sites by name.
    pub sites: Vec<Site>,
    /// Region polygons by name.
    pub regions: BTreeMap<String, Vec<Point>>,
    /// Devices by id.
    pub hosts: Vec<Host>,
    /// Per device: app name -> owning deployment (`None`: an operator's app).
    pub apps: BTreeMap<String, BTreeMap<String, Option<String>>>,
}

pub use cairn_api::{DeploymentPlan, SitePlan};

/// Approximate bytes an app adds to a desired state.
fn app_cost(name: &str, compose_yaml: &str) -> usize {
    name.len() + compose_yaml.len() + APP_OVERHEAD_BYTES
}

/// Plan every deployment (in name order) against `world`, updating `world.apps` as it goes.
pub fn plan(deployments: &[Deployment], world: &mut World) -> Vec<DeploymentPlan> {
    let mut ordered: Vec<&Deployment> = deployments.iter().collect();
    ordered.sort_by(|a, b| a.name.cmp(&b.name));
    // Deployment name -> deployments that avoid it.
    let mut avoided_by: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for d in &ordered {
        for other in &d.placement.avoid {
            avoided_by
                .entry(other.as_str())
                .or_default()
                .insert(d.name.as_str());
        }
    }
    let mut plans = Vec::new();
    for d in ordered {
        let plan = plan_one(d, avoided_by.get(d.name.as_str()), world);
        let hosts: BTreeSet<String> = plan.hosts().into_iter().map(str::to_owned).collect();
        let cost = app_cost(&d.name, &d.compose_yaml);
        for host in &mut world.hosts {
            let apps = world.apps.entry(host.id.clone()).or_default();
            let had = apps.get(&d.name) == Some(&Some(d.name.clone()));
            let has = hosts.contains(&host.id);
            if had && !has {
                apps.remove(&d.name);
                host.desired_bytes = host.desired_bytes.saturating_sub(cost);
            } else if has && !had {
                apps.insert(d.name.clone(), Some(d.name.clone()));
                host.desired_bytes += cost;
            }
        }
        plans.push(plan);
    }
    plans
}

fn plan_one(d: &Deployment, avoided_by: Option<&BTreeSet<&str>>, world: &World) -> DeploymentPlan {
    let placement = &d.placement;
    let region = placement
        .sites
        .region
        .as_ref()
        .and_then(|r| world.regions.get(r))
        .map(Vec::as_slice);
    let cost = app_cost(&d.name, &d.compose_yaml);
    // Stored Compose files were validated on write; one a newer parser refuses asks for
    // nothing here and is refused by the agent with its reason. What an app asks for never
    // depends on the variables of its devices.
    let no_variables = BTreeMap::new();
    let wanted = AppSpec::check_with_unset_variables(
        "compose_yaml",
        &d.name,
        &d.compose_yaml,
        &no_variables,
    )
    .unwrap_or_default();
    let no_apps = BTreeMap::new();
    let apps_of = |host: &Host| world.apps.get(&host.id).unwrap_or(&no_apps);
    let hosting = |host: &Host| apps_of(host).get(&d.name) == Some(&Some(d.name.clone()));
    let eligible = |host: &Host, site_labels: &Labels| {
        let apps = apps_of(host);
        let clash = apps
            .get(&d.name)
            .is_some_and(|owner| owner.as_deref() != Some(d.name.as_str()));
        let avoided = apps.keys().any(|name| {
            name != &d.name
                && (placement.avoid.iter().any(|a| a == name)
                    || avoided_by.is_some_and(|by| by.contains(name.as_str())))
        });
        host.active
            && placement.selects_device(&host.labels)
            && privileges::denied(&wanted, &[&host.labels, site_labels]).is_none()
            && !clash
            && !avoided
            && (hosting(host) || host.desired_bytes + cost <= MAX_DESIRED_STATE_BYTES)
    };
    let by_preference = |a: &&Host, b: &&Host| (!a.online, &a.id).cmp(&(!b.online, &b.id));
    // Hosts grouped by site once: a fleet has tens of thousands of small sites, and filtering
    // every host for every site made a pass quadratic in the fleet.
    let mut by_site: HashMap<&str, Vec<&Host>> = HashMap::new();
    for host in &world.hosts {
        if let Some(site) = host.site.as_deref() {
            by_site.entry(site).or_default().push(host);
        }
    }
    let mut sites = Vec::new();
    for site in &world.sites {
        if !placement.selects_site(&site.name, &site.labels, &site.location(), region) {
            continue;
        }
        let wanted = placement.hosts_per_site as usize;
        let at_site: &[&Host] = by_site.get(site.name.as_str()).map_or(&[], Vec::as_slice);
        let mut usable: Vec<&Host> = at_site
            .iter()
            .copied()
            .filter(|h| eligible(h, &site.labels))
            .collect();
        usable.sort_by(by_preference);
        let live = || usable.iter().copied().filter(|h| !h.lost && !h.quarantined);
        let mut chosen: Vec<&Host> = live().filter(|h| hosting(h)).take(wanted).collect();
        let free = wanted - chosen.len();
        chosen.extend(live().filter(|h| !hosting(h)).take(free));
        let free = wanted - chosen.len();
        let lost_hosts: Vec<&Host> = usable
            .iter()
            .copied()
            .filter(|h| (h.lost || h.quarantined) && hosting(h))
            .take(free)
            .collect();
        chosen.extend(lost_hosts);
        let shortfall = (chosen.len() < wanted).then(|| {
            format!(
                "{} of {wanted} hosts: the site has {} devices, {} of them active, matching the device labels (and the cairn.allow/ labels for the host devices and capabilities the app asks for), free of avoided apps and with room (and neither offline past the grace period nor quarantined)",
                chosen.len(),
                at_site.len(),
                live().count(),
            )
        });
        let mut hosts: Vec<String> = chosen.into_iter().map(|h| h.id.clone()).collect();
        hosts.sort();
        sites.push(SitePlan {
            site: site.name.clone(),
            wanted: placement.hosts_per_site,
            hosts,
            shortfall,
        });
    }
    DeploymentPlan {
        deployment: d.name.clone(),
        sites,
    }
}

/// Read the world from the registry; presence comes from the Sync streams and the scheduler's
/// offline clock.
pub fn load_world(tx: &Connection, shared: &Shared) -> Result<(World, Vec<AppRow>), StoreError> {
    let now = Instant::now();
    let rows = deployments::all_app_rows(tx)?;
    let mut apps: BTreeMap<String, BTreeMap<String, Option<String>>> = BTreeMap::new();
    let mut app_bytes: BTreeMap<&str, usize> = BTreeMap::new();
    for row in &rows {
        apps.entry(row.device_id.clone())
            .or_default()
            .insert(row.name.clone(), row.deployment.clone());
        *app_bytes.entry(row.device_id.as_str()).or_default() +=
            app_cost(&row.name, &row.compose_yaml);
    }
    let quarantined: BTreeSet<String> = attestation::failed_device_ids(tx)?.into_iter().collect();
    let mut hosts = Vec::new();
    for device in devices::list(tx)? {
        let active = device.status == DeviceStatus::Active;
        let presence =
            shared
                .placement
                .presence(&device.id, shared.sessions.is_online(&device.id), now);
        let config_bytes: usize = device
            .config
            .iter()
            .map(|(k, v)| k.len() + v.len() + 8)
            .sum();
        hosts.push(Host {
            quarantined: quarantined.contains(&device.id),
            desired_bytes: app_bytes.get(device.id.as_str()).copied().unwrap_or(0)
                + config_bytes
                + 1024,
            id: device.id,
            site: device.site,
            labels: device.labels,
            active,
            online: presence.online,
            lost: presence.lost,
        });
    }
    hosts.sort_by(|a, b| a.id.cmp(&b.id));
    shared
        .placement
        .retain(|id| hosts.binary_search_by(|h| h.id.as_str().cmp(id)).is_ok());
    let regions = sites::list_regions(tx)?
        .into_iter()
        .map(|r| (r.name, r.points))
        .collect();
    Ok((
        World {
            sites: sites::list(tx)?,
            regions,
            hosts,
            apps,
        },
        rows,
    ))
}

/// One change to a device's deployment-owned apps.
enum Change<'a> {
    Place {
        deployment: &'a Deployment,
        site: &'a str,
    },
    Remove {
        deployment: String,
        reason: String,
    },
}

/// Plan every deployment and write the result: one transaction, one revision bump per changed
/// device; returns the desired states to push after the commit.
pub fn reconcile(conn: &mut Connection, shared: &Shared) -> Result<Vec<Push>, StoreError> {
    let tx = conn.transaction()?;
    let all = deployments::list(&tx)?;
    // Nothing to place and nothing placed: skip reading the fleet.
    if all.is_empty() && !deployments::any_placed(&tx)? {
        return Ok(Vec::new());
    }
    let (mut world, rows) = load_world(&tx, shared)?;
    let before = world.hosts.clone();
    let plans = plan(&all, &mut world);
    let grace = shared.placement.grace().as_secs_f64();
    let mut changes: BTreeMap<&str, Vec<Change>> = BTreeMap::new();
    let owned: Vec<&AppRow> = rows.iter().filter(|r| r.deployment.is_some()).collect();
    for (d, plan) in all.iter().zip(&plans) {
        let wanted = plan.hosts();
        // A changed Compose file needs no write here: devices read it from the deployment.
        let current: BTreeSet<&str> = owned
            .iter()
            .filter(|r| r.deployment.as_deref() == Some(d.name.as_str()))
            .map(|r| r.device_id.as_str())
            .collect();
        for device in &current {
            if !wanted.contains(device) {
                // `before` is sorted by id (load_world).
                let host = before
                    .binary_search_by(|h| h.id.as_str().cmp(device))
                    .ok()
                    .map(|i| &before[i]);
                let reason = match host {
                    Some(h) if !h.active => "the device is not active".to_owned(),
                    Some(h) if h.lost => {
                        format!("the device was offline for longer than the {grace} s grace period")
                    }
                    Some(h) if h.quarantined => {
                        "the device is quarantined: its boot attestation failed".to_owned()
                    }
                    _ => "no longer selected (site, labels, hosts_per_site or avoid)".to_owned(),
                };
                changes.entry(device).or_default().push(Change::Remove {
                    deployment: d.name.clone(),
                    reason,
                });
            }
        }
        for site in &plan.sites {
            for device in &site.hosts {
                if !current.contains(device.as_str()) {
                    changes.entry(device).or_default().push(Change::Place {
                        deployment: d,
                        site: &site.site,
                    });
                }
            }
        }
    }
    for row in &owned {
        let owner = row.deployment.as_deref().unwrap_or_default();
        if !all.iter().any(|d| d.name == owner) {
            let reason = "the deployment was removed".to_owned();
            changes
                .entry(&row.device_id)
                .or_default()
                .push(Change::Remove {
                    deployment: owner.to_owned(),
                    reason,
                });
        }
    }
    let mut pushes = Vec::new();
    let mut here = Vec::new();
    for (device_id, list) in changes {
        let Some(revision) = apps::bump_revision(&tx, device_id)? else {
            continue;
        };
        for change in list {
            let (action, detail) = match change {
                Change::Place { deployment, site } => {
                    deployments::upsert_owned_app(
                        &tx,
                        device_id,
                        &deployment.name,
                        &deployment.compose_yaml,
                        revision,
                    )?;
                    (
                        "deployment.place",
                        format!(
                            "deployment={} site={site} revision={revision}",
                            deployment.name
                        ),
                    )
                }
                Change::Remove { deployment, reason } => {
                    deployments::delete_owned_app(&tx, device_id, &deployment)?;
                    (
                        "deployment.unplace",
                        format!("deployment={deployment} revision={revision}: {reason}"),
                    )
                }
            };
            tracing::info!(device_id, %detail, "{action}");
            audit::record(&tx, SCHEDULER_ACTOR, action, device_id, &detail)?;
        }
        if shared.sessions.is_connected_here(device_id) {
            here.push(device_id.to_owned());
        } else {
            pushes.push(Push {
                device_id: device_id.to_owned(),
                desired: None,
            });
        }
    }
    // The streams here get their new states built now, a batch of devices per few queries.
    for batch in here.chunks(DESIRED_BATCH) {
        for (device_id, desired) in desired_states(&tx, batch)? {
            pushes.push(Push {
                device_id,
                desired: Some(desired),
            });
        }
    }
    tx.commit()?;
    Ok(pushes)
}

/// What the scheduler would do for `candidate` (new or changed) given everything else, without
/// writing anything.
pub fn dry_run(
    tx: &Connection,
    shared: &Shared,
    candidate: &Deployment,
) -> Result<DeploymentPlan, StoreError> {
    let mut all: Vec<Deployment> = deployments::list(tx)?
        .into_iter()
        .filter(|d| d.name != candidate.name)
        .collect();
    all.push(candidate.clone());
    let (mut world, _) = load_world(tx, shared)?;
    Ok(plan(&all, &mut world)
        .into_iter()
        .find(|p| p.deployment == candidate.name)
        .expect("the candidate is planned"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::spec::Placement;

    fn site(name: &str, latitude: f64, longitude: f64, labels: &[(&str, &str)]) -> Site {
        Site {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            latitude,
            longitude,
            created_at: crate::store::Timestamp::from_unix_seconds(0),
            updated_at: crate::store::Timestamp::from_unix_seconds(0),
        }
    }

    fn host(id: &str, site: &str, online: bool) -> Host {
        Host {
            id: id.into(),
            site: Some(site.into()),
            labels: Labels::new(),
            active: true,
            online,
            lost: false,
            quarantined: false,
            desired_bytes: 0,
        }
    }

    fn deployment(name: &str, placement: serde_json::Value) -> Deployment {
        Deployment {
            name: name.into(),
            compose_yaml: "services: {}".into(),
            placement: serde_json::from_value::<Placement>(placement).unwrap(),
            created_by: "t".into(),
            created_at: crate::store::Timestamp::from_unix_seconds(0),
            updated_at: crate::store::Timestamp::from_unix_seconds(0),
        }
    }

    fn world() -> World {
        World {
            sites: vec![
                site("a", 47.0, 8.0, &[("tier", "edge")]),
                site("b", 46.0, 6.0, &[]),
            ],
            hosts: vec![
                host("a1", "a", true),
                host("a2", "a", true),
                host("a3", "a", false),
                host("b1", "b", true),
            ],
            ..Default::default()
        }
    }

    fn hosts_at(plan: &DeploymentPlan, site: &str) -> Vec<String> {
        plan.sites
            .iter()
            .find(|s| s.site == site)
            .map(|s| s.hosts.clone())
            .unwrap_or_default()
    }

    #[test]
    fn picks_online_devices_by_id_and_keeps_current_hosts() {
        let mut w = world();
        let d = deployment("web", serde_json::json!({ "hosts_per_site": 2 }));
        let plans = plan(std::slice::from_ref(&d), &mut w);
        assert_eq!(hosts_at(&plans[0], "a"), ["a1", "a2"]);
        assert_eq!(hosts_at(&plans[0], "b"), ["b1"]);
        assert!(plans[0].sites[1]
            .shortfall
            .as_ref()
            .unwrap()
            .starts_with("1 of 2 hosts"));
        // a1 goes offline (within grace): kept. a2 is lost: a3 (offline, not lost) takes over
        // only because no online device is free.
        w.hosts[0].online = false;
        w.hosts[1].online = false;
        w.hosts[1].lost = true;
        let plans = plan(std::slice::from_ref(&d), &mut w);
        assert_eq!(hosts_at(&plans[0], "a"), ["a1", "a3"]);
        // A new online device does not displace valid hosts.
        w.hosts.push(host("a0", "a", true));
        let plans = plan(&[d], &mut w);
        assert_eq!(hosts_at(&plans[0], "a"), ["a1", "a3"]);
    }

    #[test]
    fn an_app_using_a_host_device_goes_only_where_a_label_allows_it() {
        let mut w = world();
        w.hosts[1]
            .labels
            .insert(privileges::ALLOW_DEVICES.into(), "/dev/ttyUSB*".into());
        // Site b allows it for every device there.
        w.sites[1]
            .labels
            .insert(privileges::ALLOW_DEVICES.into(), "/dev/ttyUSB0".into());
        let mut d = deployment("serial", serde_json::json!({ "hosts_per_site": 2 }));
        d.compose_yaml =
            "services:\n  s: {image: x, devices: ['/dev/ttyUSB0:/dev/ttyUSB0']}\n".into();
        let plans = plan(std::slice::from_ref(&d), &mut w);
        assert_eq!(hosts_at(&plans[0], "a"), ["a2"]);
        assert_eq!(hosts_at(&plans[0], "b"), ["b1"]);
        assert!(plans[0].sites[0]
            .shortfall
            .as_ref()
            .unwrap()
            .contains("cairn.allow/"));
        // Without the label the device's app moves away.
        w.hosts[1].labels.clear();
        let plans = plan(&[d], &mut w);
        assert_eq!(hosts_at(&plans[0], "a"), Vec::<String>::new());
    }

    #[test]
    fn lost_host_is_kept_when_nobody_can_take_over() {
        let mut w = World {
            sites: vec![site("b", 46.0, 6.0, &[])],
            hosts: vec![host("b1", "b", true)],
            ..Default::default()
        };
        let d = deployment("web", serde_json::json!({}));
        plan(std::slice::from_ref(&d), &mut w);
        w.hosts[0].online = false;
        w.hosts[0].lost = true;
        assert_eq!(hosts_at(&plan(&[d], &mut w)[0], "b"), ["b1"]);
    }

    #[test]
    fn labels_avoid_and_clashes_exclude_devices() {
        let mut w = world();
        w.hosts[0].labels.insert("gpu".into(), "yes".into());
        w.apps
            .entry("a2".into())
            .or_default()
            .insert("web".into(), None);
        let gpu = deployment(
            "ml",
            serde_json::json!({ "sites": { "labels": { "tier": "edge" } }, "devices": { "labels": { "gpu": "yes" } } }),
        );
        let web = deployment("web", serde_json::json!({ "hosts_per_site": 3 }));
        // Planned in name order: ml, web, then zz-db.
        let db = deployment("zz-db", serde_json::json!({ "avoid": ["ml"] }));
        let plans = plan(&[db, gpu, web], &mut w);
        let by_name = |n: &str| plans.iter().find(|p| p.deployment == n).unwrap();
        assert_eq!(hosts_at(by_name("ml"), "a"), ["a1"]);
        assert!(
            by_name("ml").sites.iter().all(|s| s.site == "a"),
            "site labels select site a only"
        );
        assert_eq!(
            hosts_at(by_name("web"), "a"),
            ["a1", "a3"],
            "a2 holds an operator app named web"
        );
        assert_eq!(
            hosts_at(by_name("zz-db"), "a"),
            ["a2"],
            "zz-db avoids ml (on a1)"
        );
        // The other way round: ml avoids db, which was placed first: ml must not join it.
        let mut w = world();
        let db = deployment("db", serde_json::json!({ "hosts_per_site": 3 }));
        let ml = deployment("ml", serde_json::json!({ "avoid": ["db"] }));
        let plans = plan(&[db, ml], &mut w);
        assert_eq!(hosts_at(&plans[1], "a"), Vec::<String>::new());
        assert!(plans[1].sites[0].shortfall.is_some());
    }
}
