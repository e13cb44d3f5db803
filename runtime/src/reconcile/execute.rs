//! The executor: carries out the planner's steps against containerd, CNI and the data dir, keeps
//! the reconciler's memory (probes, pulls, failed starts) and adds to the statuses what only
//! acting tells (the pid of a task it started). What a failed step means is the planner's
//! ([`ServicePlan::after_failure`]); failures of steps that do not end a service are logged.

use std::collections::{HashMap, HashSet};
use std::time::{Instant, SystemTime};

use tracing::{info, warn, Instrument};

use super::health::Probe;
use super::plan::{Action, AfterFailure, Plan, Removal, ServicePlan, StartFailures};
use super::{ActionError, DesiredApp, Reconciler, ServiceStatus};
use crate::container::{
    self, NewContainer, LABEL_CRASH_STREAK, LABEL_RESTARTS, LABEL_SPEC_HASH, LABEL_STARTED_AT,
};
use crate::network::AppNetwork;
use crate::userns::{AppNamespaces, AppUserns};
use cairn_compose::{AppSpec, LogLimits};

impl Reconciler {
    /// Carry out `plan`, made for `desired`: its preparation, each service's steps, then its
    /// cleanup. Returns the status of every desired service.
    pub(super) async fn execute(
        &mut self,
        desired: &[DesiredApp],
        plan: Plan<'_>,
    ) -> Vec<ServiceStatus> {
        let desired = Desired(desired);
        for action in &plan.prepare {
            if let Err(e) = self.carry_out(desired, action, None).await {
                log_failure(action, &e);
            }
        }
        let mut statuses = Vec::with_capacity(plan.services.len());
        for service in &plan.services {
            let span = tracing::info_span!(
                "service",
                app = %service.status.app,
                service = %service.status.service
            );
            statuses.push(self.run_service(desired, service).instrument(span).await);
        }
        for action in &plan.cleanup {
            if let Err(e) = self.carry_out(desired, action, None).await {
                log_failure(action, &e);
            }
        }
        statuses
    }

    /// Carry out the steps of one service until one fails in a way that ends them; its status.
    async fn run_service(&mut self, desired: Desired<'_>, plan: &ServicePlan<'_>) -> ServiceStatus {
        let mut started = None;
        for step in &plan.steps {
            let e = match self.carry_out(desired, step, started).await {
                Ok(pid) => {
                    started = pid.or(started);
                    continue;
                }
                Err(e) => e,
            };
            match plan.after_failure(step, &e) {
                AfterFailure::Continue => log_failure(step, &e),
                AfterFailure::Report(status) => return status,
                AfterFailure::StartFailed {
                    container_id,
                    status,
                } => {
                    let now = Instant::now();
                    let failures =
                        self.start_failures
                            .entry(container_id)
                            .or_insert(StartFailures {
                                count: 0,
                                last_at: now,
                                last_error: String::new(),
                            });
                    failures.count += 1;
                    failures.last_at = now;
                    failures.last_error = status.message.clone().unwrap_or_else(|| e.to_string());
                    return status;
                }
                AfterFailure::RemoveBroken {
                    container_id,
                    status,
                } => {
                    warn!(id = %container_id, error = %e, "removing a broken container; the next pass re-creates it");
                    if let Err(e) = self.remove_container(&container_id).await {
                        warn!(id = %container_id, error = %e, "cannot remove the broken container");
                    }
                    return status;
                }
            }
        }
        let mut status = plan.status.clone();
        if started.is_some() {
            status.pid = started;
        }
        status
    }

    /// Carry out one step; `started` is the pid of a task an earlier step of the same service
    /// started. Returns the pid of the task this step started.
    async fn carry_out(
        &mut self,
        desired: Desired<'_>,
        action: &Action<'_>,
        started: Option<u32>,
    ) -> Result<Option<u32>, ActionError> {
        let runtime = &self.cfg.runtime;
        match action {
            Action::WriteHosts { app, network } => self.write_hosts(app, network)?,
            Action::PullImage {
                name,
                reference,
                login,
            } => self.images.start_pull(name, reference, *login)?,
            Action::RemoveContainer { id, why } => {
                match why {
                    Removal::Undesired => {
                        info!(%id, "removing container of a service that is no longer desired")
                    }
                    Removal::Duplicate => {
                        warn!(%id, "removing a duplicate container of this service")
                    }
                    Removal::Replaced => {
                        info!(%id, "spec or image changed; replacing the container")
                    }
                }
                self.probes.remove(id);
                self.start_failures.remove(id);
                self.remove_container(id).await?;
                if *why == Removal::Undesired {
                    remove_undesired_files(runtime, desired, id)?;
                }
            }
            Action::CreateContainer {
                app,
                service,
                spec,
                image,
                spec_hash,
                join_netns,
                app_hosts,
            } => {
                let name = app.spec.name.as_str();
                let id = container::container_id(name, service);
                let userns = app_userns(&mut self.namespaces, &app.spec)?;
                let labels = HashMap::from([
                    (LABEL_SPEC_HASH.to_string(), spec_hash.clone()),
                    (LABEL_RESTARTS.to_string(), "0".to_string()),
                    (LABEL_CRASH_STREAK.to_string(), "0".to_string()),
                ]);
                let new = NewContainer {
                    app: name,
                    service,
                    spec,
                    image,
                    labels,
                    secrets: &app.secrets,
                    configs: &app.spec.configs,
                    netns: join_netns.then(|| runtime.network.netns_path(&id)),
                    hosts_file: app_hosts.then(|| runtime.app_hosts_path(name)),
                    userns,
                };
                container::create_container(&self.ctr, runtime, &new).await?;
            }
            Action::AttachNetwork {
                network,
                service,
                container_id,
                ports,
            } => {
                let userns = match desired.app(&network.app) {
                    Some(spec) => app_userns(&mut self.namespaces, spec)?.map(|u| u.path),
                    None => None,
                };
                self.networks
                    .attach(network, service, container_id, ports, userns.as_deref())
                    .await?;
            }
            Action::StartTask {
                app,
                service,
                container_id,
                restarts,
                crash_streak,
            } => {
                // The app's user namespace and its files are on tmpfs: after a reboot they are
                // made again.
                if let Some(desired_app) = desired.desired_app(app) {
                    let userns = app_userns(&mut self.namespaces, &desired_app.spec)?;
                    write_files(runtime, desired_app, service, userns.map(|u| u.range))?;
                }
                let log = runtime.service_log(app, service, &desired.log_limits(app, service));
                let pid = container::start_task(&self.ctr, runtime, container_id, &log).await?;
                self.start_failures.remove(container_id);
                let labels = HashMap::from([
                    (LABEL_RESTARTS.to_string(), restarts.to_string()),
                    (LABEL_CRASH_STREAK.to_string(), crash_streak.to_string()),
                    (
                        LABEL_STARTED_AT.to_string(),
                        container::unix_millis(SystemTime::now()).to_string(),
                    ),
                ]);
                if let Err(e) =
                    container::set_container_labels(&self.ctr, container_id, labels).await
                {
                    warn!(id = %container_id, error = %e, "cannot record the restart in labels");
                }
                return Ok(Some(pid));
            }
            Action::StartProbe {
                app,
                service,
                container_id,
                pid,
                check,
            } => {
                if let Some(pid) = pid.or(started) {
                    let output = runtime.health_output_path(app, service);
                    let probe = Probe::start(
                        self.ctr.clone(),
                        container_id.clone(),
                        pid,
                        (*check).clone(),
                        output,
                        self.health_changed.clone(),
                    );
                    self.probes.insert(container_id.clone(), probe);
                }
            }
            Action::StopProbe { container_id } => {
                self.probes.remove(container_id);
            }
            Action::CollectNetworks {
                keep_containers,
                keep_apps,
            } => {
                for e in self.networks.collect(keep_containers, keep_apps).await {
                    warn!(error = %e, "cannot remove an unused network attachment; retrying next pass");
                }
            }
            Action::CleanAppDirs { keep_apps } => self.clean_app_dirs(keep_apps),
            Action::CollectImages { wanted } => {
                if let Err(e) = self.images.collect(wanted).await {
                    warn!(error = %e, "cannot remove unused images; retrying next pass");
                }
            }
        }
        Ok(None)
    }

    /// Rewrite the app's hosts file if an address changed, and the own hosts files of its
    /// services with `extra_hosts` (the app's plus their lines).
    fn write_hosts(&self, app: &AppSpec, network: &AppNetwork) -> Result<(), ActionError> {
        let runtime = &self.cfg.runtime;
        let path = runtime.app_hosts_path(&app.name);
        if self.networks.write_app_hosts(app, network, &path)? {
            info!(app = %app.name, "hosts file updated");
        }
        for (service, spec) in app
            .services
            .iter()
            .filter(|(_, s)| !s.extra_hosts.is_empty())
        {
            container::write_service_hosts(runtime, &app.name, service, spec, Some(&path))?;
        }
        Ok(())
    }

    /// Remove a container (task, record, snapshot) and detach it from its network.
    async fn remove_container(&self, id: &str) -> Result<(), ActionError> {
        container::remove_container(&self.ctr, id, self.cfg.runtime.stop_grace).await?;
        self.networks.detach(id).await?;
        Ok(())
    }

    /// Remove the secret and config files and the runtime files of apps that are not kept
    /// (volumes and logs are kept, like `docker compose down` without `-v`).
    #[tracing::instrument(skip_all)]
    fn clean_app_dirs(&self, keep: &HashSet<String>) {
        self.namespaces.remove_except(keep);
        let runtime = &self.cfg.runtime;
        for (name, dir) in app_dirs(&runtime.data_dir.join("apps")) {
            // Secret values older agents wrote to the data partition go for kept apps too: the
            // containers that used them were replaced, since the secrets' new form changed
            // their spec hash.
            remove_dir(&dir.join("secrets"));
            if !keep.contains(&name) {
                remove_dir(&dir.join("run"));
            }
        }
        for (name, dir) in app_dirs(&runtime.network.run_dir.join("apps")) {
            if !keep.contains(&name) {
                remove_dir(&dir);
            }
        }
    }
}

/// The app directories in `apps_dir`, by app name.
fn app_dirs(apps_dir: &std::path::Path) -> Vec<(String, std::path::PathBuf)> {
    let Ok(entries) = std::fs::read_dir(apps_dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect()
}

/// Remove `dir` and what it holds, if it exists; a failure is logged (the next pass retries).
fn remove_dir(dir: &std::path::Path) {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            warn!(path = %dir.display(), error = %e, "cannot remove");
        }
        _ => {}
    }
}

/// The user namespace `app`'s containers run in (see [`crate::userns::app_wants_userns`]),
/// made when missing (after a reboot).
fn app_userns(
    namespaces: &mut AppNamespaces,
    app: &AppSpec,
) -> Result<Option<AppUserns>, ActionError> {
    if !crate::userns::app_wants_userns(app) {
        return Ok(None);
    }
    Ok(Some(namespaces.ensure(&app.name)?))
}

/// Remove the secret and config files of the service whose container `id` was removed as no
/// longer desired (of an app still desired; the cleanup removes a whole app's). A service still
/// desired keeps them, however its container was named.
fn remove_undesired_files(
    runtime: &container::RuntimeConfig,
    desired: Desired<'_>,
    id: &str,
) -> Result<(), ActionError> {
    // Container ids are `<app>_<service>` and app names have no `_`.
    let Some((app, service)) = id.split_once('_') else {
        return Ok(());
    };
    if desired
        .app(app)
        .is_some_and(|spec| !spec.services.contains_key(service))
    {
        container::remove_service_files(runtime, app, service)?;
    }
    Ok(())
}

/// Write the secret and config files of `service` of `app` (with its id range, if any).
fn write_files(
    runtime: &container::RuntimeConfig,
    app: &DesiredApp,
    service: &str,
    range: Option<crate::userns::IdRange>,
) -> Result<(), ActionError> {
    let Some(spec) = app.spec.services.get(service) else {
        return Ok(());
    };
    let files = container::ServiceFiles {
        app: &app.spec.name,
        service,
        spec,
        secrets: &app.secrets,
        configs: &app.spec.configs,
        range,
    };
    container::write_service_files(runtime, &files)?;
    Ok(())
}

/// The desired apps a plan was made for.
#[derive(Clone, Copy)]
struct Desired<'a>(&'a [DesiredApp]);

impl<'a> Desired<'a> {
    /// Desired app `name`.
    fn desired_app(&self, name: &str) -> Option<&'a DesiredApp> {
        self.0.iter().find(|a| a.spec.name == name)
    }

    /// The spec of desired app `name`.
    fn app(&self, name: &str) -> Option<&'a AppSpec> {
        self.desired_app(name).map(|a| &a.spec)
    }

    /// The `logging` limits of a desired service (none for one that is not desired).
    fn log_limits(&self, app: &str, service: &str) -> LogLimits {
        self.0
            .iter()
            .find(|a| a.spec.name == app)
            .and_then(|a| a.spec.services.get(service))
            .map(|s| s.logging)
            .unwrap_or_default()
    }
}

/// Log a failed step that does not end its service; the next pass tries again.
fn log_failure(action: &Action<'_>, e: &ActionError) {
    match action {
        Action::WriteHosts { app, .. } => {
            warn!(app = %app.name, error = %e, "cannot update the hosts file")
        }
        Action::PullImage { reference, .. } => {
            warn!(image = %reference, error = %e, "cannot start the pull")
        }
        Action::RemoveContainer {
            id,
            why: Removal::Duplicate,
        } => warn!(%id, error = %e, "cannot remove duplicate container"),
        Action::RemoveContainer { id, .. } => {
            warn!(%id, error = %e, "cannot remove container; retrying next pass")
        }
        _ => warn!(error = %e, "step failed; retrying next pass"),
    }
}
