//! cairn-central: enrollment, the device registry, the operator REST API and the agent gRPC API.
//!
//! `start` binds both listeners and returns a handle; `main.rs` only parses arguments.

pub mod api;
pub mod attestation;
pub mod audit_writer;
pub mod bundles;
pub mod ca;
pub mod config;
pub mod enroll;
pub mod escrow;
pub mod events;
pub mod grpc;
pub mod listen;
pub mod logs;
pub mod metrics;
pub mod placement;
pub mod rate_limit;
pub mod replicas;
pub mod rollout;
pub mod sealing;
pub mod secrets;
pub mod sessions;
pub mod store;
pub mod time;
mod tls;
pub mod tpm_proof;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::CentralConfig;

/// State shared by every request handler.
pub struct Shared {
    /// Loaded configuration.
    pub config: CentralConfig,
    /// The registry.
    pub store: store::Store,
    /// The fleet CA.
    pub ca: Arc<ca::FleetCa>,
    /// Open agent streams and heartbeat times.
    pub sessions: sessions::Sessions,
    /// Seals escrowed recovery keys.
    pub escrow: escrow::EscrowKey,
    /// Seals app secrets (their data keys).
    pub vault: secrets::SecretVault,
    /// Audit rows written in groups (secret releases: one per device fetching).
    pub audit_writer: audit_writer::AuditWriter,
    /// OS update bundles on disk.
    pub bundles: bundles::BundleFiles,
    /// The deployment scheduler's clock and wake-up signal.
    pub placement: placement::Scheduler,
    /// Events waiting for the batch writer, and drop counters.
    pub events: events::EventBuffer,
    /// REST request counters for `/metrics`.
    pub rest_metrics: metrics::RestMetrics,
    /// Nudges to other central replicas on the same PostgreSQL database (inert on SQLite).
    pub bus: replicas::Bus,
    /// Signs `Enrollment.Time` answers with the TLS server key.
    pub time: time::TimeSigner,
    /// The TPM vendor CAs whose EK certificates prove a device's TPM.
    pub tpm_anchors: tpm_proof::VendorAnchors,
    /// Makes and checks TPM credential challenges at enrollment.
    pub challenger: tpm_proof::Challenger,
    /// Enroll calls per source address.
    pub enroll_limiter: rate_limit::RateLimiter,
}

impl Shared {
    /// Send a device its new desired state: on its stream if it is connected here, else
    /// through the other replicas (one of them may hold its stream); an offline device gets
    /// it when it reconnects.
    pub async fn deliver(&self, device_id: &str, desired: cairn_proto::v1::DesiredState) {
        if !self
            .sessions
            .push_desired(device_id, grpc::desired_message(desired))
        {
            self.bus.announce(replicas::Nudge::Desired, device_id);
        }
    }

    /// [`Shared::deliver`] for a change already committed whose desired state was not built
    /// (its stream was elsewhere): read it back only if the stream is here now.
    pub async fn deliver_stored(&self, device_id: &str) {
        if !self.sessions.is_connected_here(device_id) || !self.push_stored(device_id).await {
            self.bus.announce(replicas::Nudge::Desired, device_id);
        }
    }

    /// Read a device's desired state from the registry and push it on its stream here; false
    /// when the device is not connected here.
    pub async fn push_stored(&self, device_id: &str) -> bool {
        match grpc::load_desired(self, device_id).await {
            Ok(Some(desired)) => self
                .sessions
                .push_desired(device_id, grpc::desired_message(desired)),
            Ok(None) => true, // gone from the registry: nothing to push anywhere
            Err(e) => {
                tracing::warn!(error = %e, device_id, "could not read a device's desired state to push it; it gets it on reconnect");
                true
            }
        }
    }

    /// Push the new desired state of every device of deployment `name` (its app changed):
    /// those connected here now, and one nudge asks every other replica to do the same for
    /// theirs. Nothing is written per device (store::apps::REVISION).
    pub async fn push_deployment(&self, name: &str) {
        self.bus.announce_deployment(name);
        self.push_deployment_here(name).await;
    }

    /// The devices of deployment `name` connected here get their desired state, read in
    /// batches.
    pub async fn push_deployment_here(&self, name: &str) {
        let key = name.to_owned();
        let hosts = self
            .store
            .read(move |conn| store::deployments::placed_devices(conn, &key))
            .await;
        match hosts {
            Ok(hosts) => {
                let here: Vec<String> = hosts
                    .into_iter()
                    .filter(|id| self.sessions.is_connected_here(id))
                    .collect();
                self.push_stored_many(here).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, deployment = name, "could not read a deployment's devices to push its change; they get it on reconnect")
            }
        }
    }

    /// [`Shared::push_stored`] for many devices: their desired states read
    /// [`grpc::DESIRED_BATCH`] at a time, each batch in one snapshot, and pushed as each batch
    /// is read.
    pub async fn push_stored_many(&self, device_ids: Vec<String>) {
        for batch in device_ids.chunks(grpc::DESIRED_BATCH) {
            match grpc::load_desired_many(self, batch.to_vec()).await {
                Ok(states) => {
                    for (device_id, desired) in states {
                        self.sessions
                            .push_desired(&device_id, grpc::desired_message(desired));
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, devices = batch.len(), "could not read desired states to push them; those devices get them on reconnect")
                }
            }
        }
    }

    /// Ask the device's stream for a fresh quote, wherever it is connected (after an admin
    /// accepted or reset its attestation reference).
    pub fn request_attestation(&self, device_id: &str) {
        if !self.sessions.request_attestation(device_id) {
            self.bus.announce(replicas::Nudge::Attest, device_id);
        }
    }

    /// End a revoked device's stream, wherever it is connected.
    pub fn cut_off(&self, device_id: &str) {
        self.sessions.close(
            device_id,
            tonic::Status::permission_denied(format!("device {device_id} is revoked")),
        );
        self.bus.announce(replicas::Nudge::Revoked, device_id);
    }
}

/// Why central could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory could not be created.
    #[error("could not create data_dir {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The I/O failure.
        source: std::io::Error,
    },
    /// A listener could not bind.
    #[error("could not listen on {addr}: {source}; is another central running or the port taken?")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O failure.
        source: std::io::Error,
    },
    /// Writing the bootstrap admin token failed.
    #[error("could not write the bootstrap admin token to {path}: {source}")]
    AdminToken {
        /// The file.
        path: PathBuf,
        /// The I/O failure.
        source: std::io::Error,
    },
    /// The configuration is out of range.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// Registry.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// CA.
    #[error(transparent)]
    Ca(#[from] ca::CaError),
    /// The secrets' key-encryption key could not be loaded or created.
    #[error(transparent)]
    Vault(#[from] secrets::SecretVaultError),
    /// The recovery-key escrow key could not be loaded or created.
    #[error(transparent)]
    Escrow(#[from] escrow::EscrowError),
    /// A `tpm_vendor_cas` file is unusable.
    #[error(transparent)]
    TpmAnchors(#[from] tpm_proof::AnchorError),
    /// The bundles directory could not be prepared.
    #[error(transparent)]
    Bundles(#[from] bundles::BundleError),
    /// TLS set-up.
    #[error("TLS set-up failed: {0}")]
    Tls(String),
}

/// A running central.
pub struct Central {
    /// Where agents connect (gRPC).
    pub grpc_addr: SocketAddr,
    /// Where operators connect (REST).
    pub rest_addr: SocketAddr,
    /// Shared state (for tests and the simulator).
    pub shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Path of the bootstrap admin token file inside `data_dir`.
pub fn admin_token_path(config: &CentralConfig) -> PathBuf {
    config.data_dir.join("admin.token")
}

/// Path of the CA certificate agents and cairnctl trust.
pub fn ca_cert_path(config: &CentralConfig) -> PathBuf {
    config.data_dir.join("ca.crt")
}

/// Open (and migrate) the registry `config` names: PostgreSQL at `database_url`, else SQLite in
/// `data_dir`. Blocking: PostgreSQL's sync client runs its own runtime.
pub fn open_store(config: &CentralConfig) -> Result<store::Store, store::StoreError> {
    match &config.database_url {
        Some(url) => store::Store::open_postgres(url),
        None => store::Store::open(&config.data_dir.join("registry.sqlite3")),
    }
}

/// Held while a starting central creates or loads the CA, the keys and the bootstrap token.
const INIT_LOCK_FILE: &str = ".init.lock";

/// The fleet CA, the escrow key and the secrets vault of `data_dir`, created when missing, with
/// the lock on `data_dir/.init.lock` held: replicas starting together on one data_dir then
/// agree on one of each (whoever locks first creates, the others wait and load what it wrote).
/// Without it two could each write their own, and one would seal recovery keys under a key no
/// file holds. The returned lock is to be held until the bootstrap admin token exists too.
fn load_keys(
    data_dir: &std::path::Path,
) -> Result<
    (
        std::fs::File,
        ca::FleetCa,
        escrow::EscrowKey,
        secrets::SecretVault,
    ),
    StartError,
> {
    let lock = cairn_io::lock_exclusive(&data_dir.join(INIT_LOCK_FILE)).map_err(|e| {
        StartError::DataDir {
            path: e.path,
            source: e.source,
        }
    })?;
    let ca = ca::FleetCa::load_or_create(data_dir)?;
    let escrow = escrow::EscrowKey::load_or_create(data_dir)?;
    let vault = secrets::SecretVault::load_or_create(data_dir)?;
    Ok((lock, ca, escrow, vault))
}

/// Open the registry and CA, bind both listeners and serve until `Central::stop`.
#[tracing::instrument(name = "central.start", skip_all, fields(data_dir = %config.data_dir.display()))]
pub async fn start(config: CentralConfig) -> Result<Central, StartError> {
    config.validate()?;
    cairn_io::create_private_dir(&config.data_dir).map_err(|e| StartError::DataDir {
        path: config.data_dir.clone(),
        source: e.source,
    })?;
    // On the blocking pool: PostgreSQL's sync client runs its own runtime, which must not be
    // entered from this async task (SQLite's open and migrations block on the disk as well).
    let store = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || open_store(&config))
            .await
            .map_err(|e| store::StoreError::Worker(e.to_string()))??
    };
    let (init_lock, ca, escrow, vault) = {
        let dir = config.data_dir.clone();
        tokio::task::spawn_blocking(move || load_keys(&dir))
            .await
            .map_err(|e| store::StoreError::Worker(e.to_string()))??
    };
    let ca = Arc::new(ca);
    let tpm_anchors = tpm_proof::VendorAnchors::load(&config.tpm_vendor_cas)?;
    let challenger = tpm_proof::Challenger::new(ca.derive_key(b"enrollment tpm challenge ticket"));
    let enroll_limiter = rate_limit::RateLimiter::new(config.enroll_attempts_per_source_per_minute);
    let bundles = bundles::BundleFiles::open(&config)?;
    bootstrap_admin_token(&config, &store).await?;
    drop(init_lock);
    let (server_cert, server_key) = ca.issue_server_certificate(&config.server_names)?;
    let time =
        time::TimeSigner::from_key_pem(&server_key).map_err(|e| StartError::Tls(e.to_string()))?;

    let grpc_listener = tokio::net::TcpListener::bind(config.grpc_listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.grpc_listen,
            source,
        })?;
    let rest_listener = tokio::net::TcpListener::bind(config.rest_listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.rest_listen,
            source,
        })?;
    let grpc_addr = grpc_listener
        .local_addr()
        .map_err(|source| StartError::Bind {
            addr: config.grpc_listen,
            source,
        })?;
    let rest_addr = rest_listener
        .local_addr()
        .map_err(|source| StartError::Bind {
            addr: config.rest_listen,
            source,
        })?;

    let placement =
        placement::Scheduler::new(Duration::from_secs(config.placement_offline_grace_seconds));
    let bus = replicas::Bus::new(&store);
    let listening = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || replicas::listen(&store))
            .await
            .map_err(|e| store::StoreError::Worker(e.to_string()))??
    };
    let audit_writer = audit_writer::AuditWriter::start(store.clone());
    let shared = Arc::new(Shared {
        bus,
        placement,
        config,
        store,
        ca: ca.clone(),
        sessions: sessions::Sessions::default(),
        escrow,
        vault,
        audit_writer,
        bundles,
        events: events::EventBuffer::default(),
        rest_metrics: metrics::RestMetrics::default(),
        time,
        tpm_anchors,
        challenger,
        enroll_limiter,
    });
    let (shutdown, shutdown_rx) = watch::channel(false);
    let limits = tls::ListenLimits {
        grpc_per_source: shared.config.grpc_connections_per_source,
        rest_per_source: shared.config.rest_connections_per_source,
        rest_idle: Duration::from_secs(shared.config.rest_idle_timeout_seconds),
    };
    let tasks = vec![
        tokio::spawn(tls::serve_grpc(
            grpc_listener,
            shared.clone(),
            &server_cert,
            &server_key,
            limits,
            shutdown_rx.clone(),
        )?),
        tokio::spawn(tls::serve_rest(
            rest_listener,
            api::router(shared.clone()),
            tls::rest_tls_config(&server_cert, &server_key)?,
            limits,
            shutdown_rx.clone(),
        )),
        tokio::spawn(rollout::engine::run(shared.clone(), shutdown_rx.clone())),
        tokio::spawn(placement::run(shared.clone(), shutdown_rx.clone())),
        tokio::spawn(replicas::run(
            shared.clone(),
            listening,
            shutdown_rx.clone(),
        )),
        tokio::spawn(events::run(shared.clone(), shutdown_rx.clone())),
        tokio::spawn(flush_presence(shared.clone(), shutdown_rx)),
    ];
    tracing::info!(%grpc_addr, %rest_addr, "central serving");
    Ok(Central {
        grpc_addr,
        rest_addr,
        shared,
        shutdown,
        tasks,
    })
}

impl Central {
    /// Stop serving, write pending heartbeat times and ended streams, and wait for every task.
    pub async fn stop(self) {
        // tonic's graceful shutdown waits for open streams; agent streams never end by themselves.
        // Closed before the signal, so the last presence flush already has them as ended.
        self.shared.sessions.close_all(tonic::Status::unavailable(
            "central is shutting down; reconnect later",
        ));
        let _ = self.shutdown.send(true);
        for mut task in self.tasks {
            if tokio::time::timeout(Duration::from_secs(10), &mut task)
                .await
                .is_err()
            {
                tracing::warn!("a central task did not stop within 10 s; aborting it");
                task.abort();
            }
        }
    }
}

/// Name of the admin API token central makes on first start.
pub const BOOTSTRAP_TOKEN_NAME: &str = "bootstrap-admin";

/// Delete `admin.token` (its token was revoked): overwritten, then removed. A failure is logged;
/// the file then holds only a secret central refuses.
pub fn remove_bootstrap_token_file(config: &CentralConfig) {
    let path = admin_token_path(config);
    match cairn_io::destroy_file(&path) {
        Ok(true) => {
            tracing::info!(path = %path.display(), "removed the bootstrap admin token file: its token is revoked")
        }
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(error = %e, "could not remove the bootstrap admin token file; its token is revoked, delete it by hand")
        }
    }
}

/// Create an admin API token on first start (and whenever no live admin token is left) and
/// write its secret to `admin.token` (0600); only the path is logged. A file whose token was
/// revoked (on another replica) is removed.
async fn bootstrap_admin_token(
    config: &CentralConfig,
    store: &store::Store,
) -> Result<(), StartError> {
    let path = admin_token_path(config);
    let stale = {
        let path = path.clone();
        store
            .read(move |conn| {
                let Ok(text) = std::fs::read_to_string(&path) else {
                    return Ok(false);
                };
                Ok(store::tokens::api_token_by_secret(conn, text.trim())?
                    .is_some_and(|t| t.revoked))
            })
            .await?
    };
    if stale {
        remove_bootstrap_token_file(config);
    }
    store.run(move |conn| {
        if store::tokens::has_admin_token(conn, store::now_unix())? {
            return Ok(());
        }
        let tx = conn.transaction()?;
        let (token, secret) = store::tokens::create_api_token(&tx, BOOTSTRAP_TOKEN_NAME, store::Role::Admin, None)?;
        cairn_io::write_atomic(&path, format!("{secret}\n").as_bytes(), 0o600)
            .map_err(|e| store::StoreError::Worker(e.to_string()))?;
        store::audit::record(&tx, "central", "api_token.create", &token.id, "bootstrap admin token")?;
        tx.commit()?;
        tracing::info!(path = %path.display(), "wrote the bootstrap admin API token (mode 0600)");
        Ok(())
    })
    .await?;
    Ok(())
}

/// Write heartbeat times collected in memory, and with replicas this replica's stream changes
/// and liveness, to the registry in batches.
async fn flush_presence(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let period = Duration::from_millis(shared.config.presence_flush_ms);
    loop {
        let stopping = tokio::select! {
            _ = tokio::time::sleep(period) => false,
            _ = shutdown.changed() => true,
        };
        let seen = shared.sessions.take_seen();
        // With replicas: which streams opened and ended here, and that this replica is alive,
        // written even when nothing changed (or the others would count its devices offline).
        // On SQLite the changes are taken and dropped, so they do not pile up unread.
        let changes = shared.sessions.take_stream_changes();
        let streams = shared.store.postgres_url().is_some().then_some(changes);
        if !seen.is_empty() || streams.is_some() {
            let (count, replica) = (seen.len(), shared.bus.replica().to_owned());
            let kept = streams.clone();
            let written = shared
                .store
                .run(move |conn| {
                    if !seen.is_empty() {
                        store::devices::set_last_seen(conn, &seen)?;
                    }
                    if let Some(changes) = &streams {
                        store::streams::record(conn, &replica, store::now_unix(), changes)?;
                    }
                    Ok(())
                })
                .await;
            if let Err(e) = written {
                tracing::warn!(error = %e, count, "could not write heartbeat times and stream presence; will retry with the next batch");
                if let Some(changes) = kept {
                    shared.sessions.restore_stream_changes(changes);
                }
            }
        }
        if stopping {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_starting_at_once_on_one_data_dir_agree_on_one_ca_and_one_escrow_key() {
        const REPLICAS: usize = 4;
        let dir = tempfile::tempdir().unwrap();
        let barrier = std::sync::Barrier::new(REPLICAS);
        let loaded: Vec<_> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..REPLICAS)
                .map(|_| {
                    scope.spawn(|| {
                        barrier.wait();
                        let (_lock, ca, escrow, _) = load_keys(dir.path()).unwrap();
                        (ca, escrow)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let on_disk = std::fs::read_to_string(dir.path().join("ca.crt")).unwrap();
        let reopened = escrow::EscrowKey::load_or_create(dir.path()).unwrap();
        for (i, (ca, escrow)) in loaded.iter().enumerate() {
            assert_eq!(ca.cert_pem(), on_disk, "replica {i} serves another CA");
            // A recovery key escrowed through each replica opens with the key on disk.
            let sealed = escrow.seal("dev_1", &format!("recovery-{i}")).unwrap();
            assert_eq!(
                reopened.open("dev_1", &sealed).unwrap(),
                format!("recovery-{i}"),
                "replica {i} sealed under a key no file holds"
            );
        }
    }
}
