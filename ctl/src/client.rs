//! Typed, blocking client for cairn-central's operator REST API.
//!
//! Requests and answers are cairn-api's types, the ones central's handlers return; they accept
//! fields and enum values a newer central adds. Every call carries the API token as
//! `Authorization: Bearer ...`, has a deadline, and returns both the typed answer and the body
//! exactly as central sent it (see [`Reply`]).

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde::de::DeserializeOwned;
use serde::Serialize;
use thiserror::Error;

use cairn_api::{
    ApiTokenList, ApiTokenReply, AppDeployed, AppList, AppRemoved, AuditLog, AuditQuery,
    BundleList, BundleUploaded, ClaimList, ClaimReply, CreateApiToken, CreateClaim,
    CreateDeployment, CreateEnrollmentToken, CreateRegion, CreateRollout, CreateSecret, CreateSite,
    CreatedApiToken, CreatedEnrollmentToken, DeploymentChanged, DeploymentList, DeploymentRemoved,
    DeploymentReply, DeviceAttestation, DeviceDetail, DeviceList, DeviceLogs, DeviceReply,
    EnrollmentTokenList, EnrollmentTokenReply, ErrorBody, EventList, EventsQuery, LogsQuery,
    PutApp, RecoveryKey, RegionList, RegionReply, Removed, RolloutCreated, RolloutList,
    RolloutReply, SecretList, SecretQuery, SecretReply, SetDeviceLabels, SetDeviceSite,
    SetVariable, SiteList, SiteWithDevices, UpdateSecret, VariableList, VariableQuery,
    VariableReply,
};

use crate::input::{self, InputError};
use crate::output::printable;

/// Central's address when none is given.
pub const DEFAULT_CENTRAL: &str = "https://127.0.0.1:7444";

/// Deadline of one request, from connecting to reading the last byte of the answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Deadline of a logs request: central waits for the device up to its
/// `log_request_timeout_seconds` (at most 300 s).
pub const LOGS_TIMEOUT: Duration = Duration::from_secs(320);

/// Deadline of a bundle upload (bundles are up to a few GiB).
pub const BUNDLE_UPLOAD_TIMEOUT: Duration = Duration::from_secs(2 * 3600);

/// Longest part of an unreadable body quoted in an error message.
const BODY_EXCERPT_CHARS: usize = 200;

/// Failures of talking to central.
#[derive(Debug, Error)]
pub enum CtlError {
    /// The central URL cannot be used.
    #[error("central URL '{url}' is not usable: {reason}; give --central https://HOST:PORT (or set CAIRN_CENTRAL)")]
    InvalidCentralUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The CA certificate file could not be read.
    #[error("could not read the CA certificate {}: {source}; check --ca (or CAIRN_CA)", .path.display())]
    ReadCa {
        /// The file.
        path: PathBuf,
        /// Why reading failed.
        source: io::Error,
    },
    /// The CA certificate was read but cannot serve as trust root.
    #[error("the CA certificate {origin} is not usable: {reason}; --ca must be the PEM CA certificate that signed cairn-central's certificate")]
    InvalidCa {
        /// Where the certificate came from (a path, or "given in memory").
        origin: String,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused to build a TLS configuration.
    #[error("could not set up TLS: {0}")]
    TlsSetup(#[source] rustls::Error),
    /// The API token file could not be read.
    #[error("could not read the API token file {}: {source}; check --token-file (or CAIRN_TOKEN_FILE)", .path.display())]
    ReadTokenFile {
        /// The file.
        path: PathBuf,
        /// Why reading failed.
        source: io::Error,
    },
    /// The API token cannot be sent.
    #[error("the API token from {origin} is not usable: {reason}")]
    InvalidToken {
        /// Where the token came from; never the token itself.
        origin: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An object id that cannot be part of a URL path.
    #[error("'{id}' is not an id: {reason}")]
    InvalidId {
        /// The id as given (printable form).
        id: String,
        /// What is wrong with it.
        reason: InputError,
    },
    /// Central could not be reached at all.
    #[error("could not connect to central at {url}: {detail}; check --central (or CAIRN_CENTRAL) and that cairn-central is running and reachable")]
    Connect {
        /// The request URL.
        url: String,
        /// What the network stack said.
        detail: String,
    },
    /// The TLS handshake with central failed.
    #[error("TLS handshake with central at {url} failed: {detail}; {hint}")]
    Tls {
        /// The request URL.
        url: String,
        /// What rustls said.
        detail: String,
        /// What to check, given the failure.
        hint: &'static str,
    },
    /// Central did not answer within the deadline.
    #[error("central at {url} did not answer within {} s; check that cairn-central is healthy and that --central points at it", .timeout.as_secs())]
    Timeout {
        /// The request URL.
        url: String,
        /// The deadline that passed.
        timeout: Duration,
    },
    /// Any other failure while sending the request or reading the answer.
    #[error("request to central at {url} failed: {detail}; check that --central (or CAIRN_CENTRAL) points at cairn-central's REST API")]
    Transport {
        /// The request URL.
        url: String,
        /// What failed.
        detail: String,
    },
    /// Central refused the request with an error body.
    #[error("{message} (HTTP {status})")]
    Api {
        /// HTTP status.
        status: u16,
        /// Central's machine-readable error code.
        code: String,
        /// Central's message (control characters escaped).
        message: String,
    },
    /// Central answered with a non-2xx status and no readable error body.
    #[error("central answered HTTP {status} without an error message{}", excerpt_suffix(.excerpt))]
    UnexpectedStatus {
        /// HTTP status.
        status: u16,
        /// Start of the body, printable form.
        excerpt: String,
    },
    /// A 2xx answer whose body does not match the API.
    #[error("central at {url} answered HTTP {status} with a body cairnctl cannot read ({reason}); check that --central points at cairn-central and that cairnctl is as new as central")]
    UnreadableBody {
        /// The request URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// Why the body could not be read.
        reason: String,
    },
}

fn excerpt_suffix(excerpt: &str) -> String {
    if excerpt.is_empty() {
        String::new()
    } else {
        format!(": {excerpt}")
    }
}

/// An API token, sent as `Authorization: Bearer <token>`. Its `Debug` form never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken(String);

impl BearerToken {
    /// Checks a token given as text; `origin` names where it came from for error messages
    /// (e.g. "--token"), never the token itself. Surrounding whitespace is trimmed.
    pub fn new(secret: &str, origin: &str) -> Result<Self, CtlError> {
        let secret = secret.trim();
        let invalid = |reason| CtlError::InvalidToken {
            origin: origin.to_owned(),
            reason,
        };
        if secret.is_empty() {
            return Err(invalid("it is empty"));
        }
        if !secret.chars().all(|c| c.is_ascii_graphic()) {
            return Err(invalid(
                "it holds spaces, control or non-ASCII characters, which an HTTP header cannot carry",
            ));
        }
        Ok(Self(secret.to_owned()))
    }

    /// Reads a token from a file, trimming surrounding whitespace (such as a final newline).
    pub fn from_file(path: &Path) -> Result<Self, CtlError> {
        let text = std::fs::read_to_string(path).map_err(|source| CtlError::ReadTokenFile {
            path: path.to_owned(),
            source,
        })?;
        Self::new(&text, &format!("file {}", path.display()))
    }

    fn header_value(&self) -> String {
        format!("Bearer {}", self.0)
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

/// The certificate of the CA that signed central's TLS certificate: the only trust root used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CentralCa {
    /// A PEM file.
    File(PathBuf),
    /// PEM text already in memory (e.g. made by a test).
    Pem(Vec<u8>),
}

/// Everything needed to talk to one central.
#[derive(Debug, Clone)]
pub struct Connection {
    /// Base URL, e.g. `https://central.example:7444`. `http://` is accepted only for loopback
    /// hosts, so the token never crosses a network in clear.
    pub central: String,
    /// CA certificate trusted for central; `None` trusts the public web PKI roots instead.
    pub ca: Option<CentralCa>,
    /// API token.
    pub token: BearerToken,
    /// Deadline of each request.
    pub timeout: Duration,
}

impl Connection {
    /// A connection with the default deadline ([`REQUEST_TIMEOUT`]).
    pub fn new(central: impl Into<String>, ca: Option<CentralCa>, token: BearerToken) -> Self {
        Self {
            central: central.into(),
            ca,
            token,
            timeout: REQUEST_TIMEOUT,
        }
    }
}

/// A successful answer: the typed value and the body as central sent it.
#[derive(Debug, Clone)]
pub struct Reply<T> {
    /// HTTP status (2xx).
    pub status: u16,
    /// The body exactly as received.
    pub body: String,
    /// The body read into the API model.
    pub value: T,
}

impl<T> Reply<T> {
    /// The typed value, dropping the raw body.
    pub fn into_value(self) -> T {
        self.value
    }
}

/// Client of one central's operator REST API.
#[derive(Debug)]
pub struct Client {
    agent: ureq::Agent,
    base: String,
    token: BearerToken,
    timeout: Duration,
    ca_given: bool,
}

impl Client {
    /// Checks the URL, reads the CA certificate and prepares the HTTP agent. Connects lazily.
    pub fn new(connection: Connection) -> Result<Self, CtlError> {
        let base = check_central_url(&connection.central)?;
        let mut builder = ureq::AgentBuilder::new()
            .timeout(connection.timeout)
            .redirects(0)
            .user_agent(concat!("cairnctl/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &connection.ca {
            builder = builder.tls_config(tls_config(ca)?);
        }
        Ok(Self {
            agent: builder.build(),
            base,
            token: connection.token,
            timeout: connection.timeout,
            ca_given: connection.ca.is_some(),
        })
    }

    /// The base URL requests go to (without a trailing `/`).
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `POST /api/v1/enrollment-tokens`: creates an enrollment token (201).
    pub fn create_enrollment_token(
        &self,
        request: &CreateEnrollmentToken,
    ) -> Result<Reply<CreatedEnrollmentToken>, CtlError> {
        self.post("/api/v1/enrollment-tokens", Some(request))
    }

    /// `GET /api/v1/enrollment-tokens`: lists enrollment tokens.
    pub fn list_enrollment_tokens(&self) -> Result<Reply<EnrollmentTokenList>, CtlError> {
        self.get("/api/v1/enrollment-tokens", &[])
    }

    /// `POST /api/v1/enrollment-tokens/{id}/revoke`: revokes an enrollment token.
    pub fn revoke_enrollment_token(
        &self,
        id: &str,
    ) -> Result<Reply<EnrollmentTokenReply>, CtlError> {
        let id = checked_id(id)?;
        self.post::<(), _>(&format!("/api/v1/enrollment-tokens/{id}/revoke"), None)
    }

    /// `GET /api/v1/devices`: lists devices with their latest host metrics.
    pub fn list_devices(&self) -> Result<Reply<DeviceList>, CtlError> {
        self.get("/api/v1/devices", &[])
    }

    /// `GET /api/v1/devices/{id}`: one device with its host metrics and newest events.
    pub fn get_device(&self, id: &str) -> Result<Reply<DeviceDetail>, CtlError> {
        let id = checked_id(id)?;
        self.get(&format!("/api/v1/devices/{id}"), &[])
    }

    /// `GET /api/v1/devices/{id}/attestation`: the device's attestation state and references.
    pub fn get_device_attestation(&self, id: &str) -> Result<Reply<DeviceAttestation>, CtlError> {
        let id = checked_id(id)?;
        self.get(&format!("/api/v1/devices/{id}/attestation"), &[])
    }

    /// `POST /api/v1/devices/{id}/attestation/accept`: pins what the device's last failed boot
    /// measured (admin).
    pub fn accept_device_attestation(
        &self,
        id: &str,
    ) -> Result<Reply<DeviceAttestation>, CtlError> {
        let id = checked_id(id)?;
        self.post::<(), _>(&format!("/api/v1/devices/{id}/attestation/accept"), None)
    }

    /// `POST /api/v1/devices/{id}/attestation/reset`: forgets the device's pinned references so
    /// its next quote pins them afresh (admin).
    pub fn reset_device_attestation(&self, id: &str) -> Result<Reply<DeviceAttestation>, CtlError> {
        let id = checked_id(id)?;
        self.post::<(), _>(&format!("/api/v1/devices/{id}/attestation/reset"), None)
    }

    /// `POST /api/v1/devices/{id}/approve`: approves a pending device.
    pub fn approve_device(&self, id: &str) -> Result<Reply<DeviceReply>, CtlError> {
        let id = checked_id(id)?;
        self.post::<(), _>(&format!("/api/v1/devices/{id}/approve"), None)
    }

    /// `POST /api/v1/devices/{id}/revoke`: revokes a device; central refuses it from then on.
    pub fn revoke_device(&self, id: &str) -> Result<Reply<DeviceReply>, CtlError> {
        let id = checked_id(id)?;
        self.post::<(), _>(&format!("/api/v1/devices/{id}/revoke"), None)
    }

    /// `POST /api/v1/devices/{id}/wipe`: revoke and order a crypto-erase (admin).
    pub fn wipe_device(&self, id: &str) -> Result<Reply<DeviceReply>, CtlError> {
        let id = checked_id(id)?;
        self.post::<(), _>(&format!("/api/v1/devices/{id}/wipe"), None)
    }

    /// `GET /api/v1/devices/{id}/recovery-key`: the escrowed recovery key (admin; audited).
    pub fn device_recovery_key(&self, id: &str) -> Result<Reply<RecoveryKey>, CtlError> {
        let id = checked_id(id)?;
        self.get(&format!("/api/v1/devices/{id}/recovery-key"), &[])
    }

    /// `PUT /api/v1/devices/{id}/labels`: replaces a device's labels.
    pub fn set_device_labels(
        &self,
        id: &str,
        request: &SetDeviceLabels,
    ) -> Result<Reply<DeviceReply>, CtlError> {
        let id = checked_id(id)?;
        self.send(
            "PUT",
            &format!("/api/v1/devices/{id}/labels"),
            Some(request),
        )
    }

    /// `PUT /api/v1/devices/{id}/site`: puts a device at a site, or at none.
    pub fn set_device_site(
        &self,
        id: &str,
        request: &SetDeviceSite,
    ) -> Result<Reply<DeviceReply>, CtlError> {
        let id = checked_id(id)?;
        self.send("PUT", &format!("/api/v1/devices/{id}/site"), Some(request))
    }

    /// `POST /api/v1/claims`: pre-registers a device by serial or TPM EK hash (201).
    pub fn create_claim(&self, request: &CreateClaim) -> Result<Reply<ClaimReply>, CtlError> {
        self.post("/api/v1/claims", Some(request))
    }

    /// `GET /api/v1/claims`: lists claims.
    pub fn list_claims(&self) -> Result<Reply<ClaimList>, CtlError> {
        self.get("/api/v1/claims", &[])
    }

    /// `POST /api/v1/api-tokens`: creates an API token (201).
    pub fn create_api_token(
        &self,
        request: &CreateApiToken,
    ) -> Result<Reply<CreatedApiToken>, CtlError> {
        self.post("/api/v1/api-tokens", Some(request))
    }

    /// `POST /api/v1/api-tokens/{id}/revoke`: revokes an API token (admin).
    pub fn revoke_api_token(&self, id: &str) -> Result<Reply<ApiTokenReply>, CtlError> {
        let id = checked_id(id)?;
        self.post::<(), _>(&format!("/api/v1/api-tokens/{id}/revoke"), None)
    }

    /// `GET /api/v1/api-tokens`: lists API tokens.
    pub fn list_api_tokens(&self) -> Result<Reply<ApiTokenList>, CtlError> {
        self.get("/api/v1/api-tokens", &[])
    }

    /// `GET /api/v1/audit[?limit=N]`: the latest audit events; central's default count without
    /// a limit.
    pub fn audit(&self, query: &AuditQuery) -> Result<Reply<AuditLog>, CtlError> {
        self.get("/api/v1/audit", &query_pairs(query))
    }

    /// `PUT /api/v1/devices/{id}/apps/{name}`: deploys or replaces an app on a device.
    pub fn put_app(
        &self,
        device_id: &str,
        name: &str,
        request: &PutApp,
    ) -> Result<Reply<AppDeployed>, CtlError> {
        let id = checked_id(device_id)?;
        let name = checked_app_name(name)?;
        self.send(
            "PUT",
            &format!("/api/v1/devices/{id}/apps/{name}"),
            Some(request),
        )
    }

    /// `DELETE /api/v1/devices/{id}/apps/{name}`: removes an app from a device.
    pub fn delete_app(&self, device_id: &str, name: &str) -> Result<Reply<AppRemoved>, CtlError> {
        let id = checked_id(device_id)?;
        let name = checked_app_name(name)?;
        self.send::<(), _>("DELETE", &format!("/api/v1/devices/{id}/apps/{name}"), None)
    }

    /// `GET /api/v1/devices/{id}/apps`: a device's apps with the status it last reported.
    pub fn list_apps(&self, device_id: &str) -> Result<Reply<AppList>, CtlError> {
        let id = checked_id(device_id)?;
        self.get(&format!("/api/v1/devices/{id}/apps"), &[])
    }

    /// `POST /api/v1/bundles`: uploads a signed RAUC bundle of `len` bytes read from `body`
    /// (201 new, 200 already stored); the deadline is [`BUNDLE_UPLOAD_TIMEOUT`].
    pub fn upload_bundle(
        &self,
        body: impl io::Read,
        len: u64,
    ) -> Result<Reply<BundleUploaded>, CtlError> {
        let url = format!("{}/api/v1/bundles", self.base);
        let request = self
            .request("POST", &url)
            .timeout(BUNDLE_UPLOAD_TIMEOUT)
            .set("Content-Type", "application/octet-stream")
            .set("Content-Length", &len.to_string());
        self.finish(&url, request.send(body))
    }

    /// `GET /api/v1/bundles`: lists stored update bundles.
    pub fn list_bundles(&self) -> Result<Reply<BundleList>, CtlError> {
        self.get("/api/v1/bundles", &[])
    }

    /// `DELETE /api/v1/bundles/{sha256}`: removes a bundle (admin).
    pub fn delete_bundle(&self, sha256: &str) -> Result<Reply<Removed>, CtlError> {
        let sha256 = checked_id(sha256)?;
        self.send::<(), _>("DELETE", &format!("/api/v1/bundles/{sha256}"), None)
    }

    /// `POST /api/v1/rollouts`: creates an OS update rollout, or plans one (`dry_run`).
    pub fn create_rollout(
        &self,
        request: &CreateRollout,
    ) -> Result<Reply<RolloutCreated>, CtlError> {
        self.post("/api/v1/rollouts", Some(request))
    }

    /// `GET /api/v1/rollouts`: lists rollouts, newest first.
    pub fn list_rollouts(&self) -> Result<Reply<RolloutList>, CtlError> {
        self.get("/api/v1/rollouts", &[])
    }

    /// `GET /api/v1/rollouts/{id}`: one rollout with its devices.
    pub fn get_rollout(&self, id: &str) -> Result<Reply<RolloutReply>, CtlError> {
        let id = checked_id(id)?;
        self.get(&format!("/api/v1/rollouts/{id}"), &[])
    }

    /// `POST /api/v1/rollouts/{id}/{action}` (pause, resume, abort, rollback).
    pub fn rollout_action(&self, id: &str, action: &str) -> Result<Reply<RolloutReply>, CtlError> {
        let id = checked_id(id)?;
        self.post::<(), _>(&format!("/api/v1/rollouts/{id}/{action}"), None)
    }

    /// `GET /api/v1/events`: the newest matching events, oldest first.
    pub fn list_events(&self, query: &EventsQuery) -> Result<Reply<EventList>, CtlError> {
        self.get("/api/v1/events", &query_pairs(query))
    }

    /// `GET /api/v1/devices/{id}/logs`: waits up to [`LOGS_TIMEOUT`] for the device's answer
    /// (central gives up earlier, after its `log_request_timeout_seconds`).
    pub fn device_logs(&self, id: &str, query: &LogsQuery) -> Result<Reply<DeviceLogs>, CtlError> {
        let id = checked_id(id)?;
        let url = format!("{}/api/v1/devices/{id}/logs", self.base);
        let mut request = self.request("GET", &url).timeout(LOGS_TIMEOUT);
        for (name, value) in query_pairs(query) {
            request = request.query(&name, &value);
        }
        self.finish(&url, request.call())
    }

    /// `GET /api/v1/sites`: every site with its device count.
    pub fn list_sites(&self) -> Result<Reply<SiteList>, CtlError> {
        self.get("/api/v1/sites", &[])
    }

    /// `POST /api/v1/sites`: creates a site (201), optionally with the devices at it.
    pub fn create_site(&self, request: &CreateSite) -> Result<Reply<SiteWithDevices>, CtlError> {
        self.post("/api/v1/sites", Some(request))
    }

    /// `GET /api/v1/sites/{name}`: a site and its devices.
    pub fn get_site(&self, name: &str) -> Result<Reply<SiteWithDevices>, CtlError> {
        let name = checked_id(name)?;
        self.get(&format!("/api/v1/sites/{name}"), &[])
    }

    /// `DELETE /api/v1/sites/{name}`: removes a site no device is at.
    pub fn delete_site(&self, name: &str) -> Result<Reply<Removed>, CtlError> {
        let name = checked_id(name)?;
        self.send::<(), _>("DELETE", &format!("/api/v1/sites/{name}"), None)
    }

    /// `GET /api/v1/secrets`: secrets matching `query`, without values.
    pub fn list_secrets(&self, query: &SecretQuery) -> Result<Reply<SecretList>, CtlError> {
        self.get("/api/v1/secrets", &query_pairs(query))
    }

    /// `POST /api/v1/secrets`: creates a secret (201) with its first value.
    pub fn create_secret(&self, request: &CreateSecret) -> Result<Reply<SecretReply>, CtlError> {
        self.post("/api/v1/secrets", Some(request))
    }

    /// `PUT /api/v1/secrets/{id}`: a new value, a new version.
    pub fn update_secret(
        &self,
        id: &str,
        request: &UpdateSecret,
    ) -> Result<Reply<SecretReply>, CtlError> {
        let id = checked_id(id)?;
        self.send("PUT", &format!("/api/v1/secrets/{id}"), Some(request))
    }

    /// `DELETE /api/v1/secrets/{id}`: removes a secret.
    pub fn delete_secret(&self, id: &str) -> Result<Reply<Removed>, CtlError> {
        let id = checked_id(id)?;
        self.send::<(), _>("DELETE", &format!("/api/v1/secrets/{id}"), None)
    }

    /// `GET /api/v1/variables`: variables matching `query`.
    pub fn list_variables(&self, query: &VariableQuery) -> Result<Reply<VariableList>, CtlError> {
        self.get("/api/v1/variables", &query_pairs(query))
    }

    /// `PUT /api/v1/variables`: creates (201) or replaces (200) a variable.
    pub fn set_variable(&self, request: &SetVariable) -> Result<Reply<VariableReply>, CtlError> {
        self.send("PUT", "/api/v1/variables", Some(request))
    }

    /// `DELETE /api/v1/variables`: removes the variable `query` names.
    pub fn delete_variable(&self, query: &VariableQuery) -> Result<Reply<VariableReply>, CtlError> {
        let url = format!("{}/api/v1/variables", self.base);
        let mut request = self.request("DELETE", &url);
        for (name, value) in query_pairs(query) {
            request = request.query(&name, &value);
        }
        self.finish(&url, request.call())
    }

    /// `GET /api/v1/regions`: every region.
    pub fn list_regions(&self) -> Result<Reply<RegionList>, CtlError> {
        self.get("/api/v1/regions", &[])
    }

    /// `POST /api/v1/regions`: creates a region (201).
    pub fn create_region(&self, request: &CreateRegion) -> Result<Reply<RegionReply>, CtlError> {
        self.post("/api/v1/regions", Some(request))
    }

    /// `DELETE /api/v1/regions/{name}`: removes a region no deployment places by.
    pub fn delete_region(&self, name: &str) -> Result<Reply<Removed>, CtlError> {
        let name = checked_id(name)?;
        self.send::<(), _>("DELETE", &format!("/api/v1/regions/{name}"), None)
    }

    /// `GET /api/v1/deployments`: every deployment with its host count.
    pub fn list_deployments(&self) -> Result<Reply<DeploymentList>, CtlError> {
        self.get("/api/v1/deployments", &[])
    }

    /// `POST /api/v1/deployments`: creates a deployment (201), or only plans it (`dry_run`).
    pub fn create_deployment(
        &self,
        request: &CreateDeployment,
    ) -> Result<Reply<DeploymentChanged>, CtlError> {
        self.post("/api/v1/deployments", Some(request))
    }

    /// `GET /api/v1/deployments/{name}`: a deployment, per site its hosts and their state.
    pub fn get_deployment(&self, name: &str) -> Result<Reply<DeploymentReply>, CtlError> {
        let name = checked_app_name(name)?;
        self.get(&format!("/api/v1/deployments/{name}"), &[])
    }

    /// `DELETE /api/v1/deployments/{name}`: removes a deployment from every device.
    pub fn delete_deployment(&self, name: &str) -> Result<Reply<DeploymentRemoved>, CtlError> {
        let name = checked_app_name(name)?;
        self.send::<(), _>("DELETE", &format!("/api/v1/deployments/{name}"), None)
    }

    fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(String, String)],
    ) -> Result<Reply<T>, CtlError> {
        let url = format!("{}{path}", self.base);
        let mut request = self.request("GET", &url);
        for (name, value) in query {
            request = request.query(name, value);
        }
        self.finish(&url, request.call())
    }

    fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: Option<&B>,
    ) -> Result<Reply<T>, CtlError> {
        self.send("POST", path, body)
    }

    fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&B>,
    ) -> Result<Reply<T>, CtlError> {
        let url = format!("{}{path}", self.base);
        let request = self.request(method, &url);
        let result = match body {
            Some(body) => request.send_json(body),
            None => request.send_bytes(&[]),
        };
        self.finish(&url, result)
    }

    fn request(&self, method: &str, url: &str) -> ureq::Request {
        self.agent
            .request(method, url)
            .set("Authorization", &self.token.header_value())
            .set("Accept", "application/json")
    }

    fn finish<T: DeserializeOwned>(
        &self,
        url: &str,
        result: Result<ureq::Response, ureq::Error>,
    ) -> Result<Reply<T>, CtlError> {
        let response = match result {
            Ok(response) | Err(ureq::Error::Status(_, response)) => response,
            Err(ureq::Error::Transport(transport)) => {
                return Err(self.transport_error(url, &transport))
            }
        };
        let status = response.status();
        let body = response
            .into_string()
            .map_err(|error| self.io_error(url, &error))?;
        if !(200..300).contains(&status) {
            return Err(error_from_response(status, &body));
        }
        let value = serde_json::from_str(&body).map_err(|error| CtlError::UnreadableBody {
            url: url.to_owned(),
            status,
            reason: error.to_string(),
        })?;
        Ok(Reply {
            status,
            body,
            value,
        })
    }
}

/// The fields of an API query type as URL query pairs (absent fields left out).
fn query_pairs<Q: Serialize>(query: &Q) -> Vec<(String, String)> {
    let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(query) else {
        return Vec::new();
    };
    fields
        .into_iter()
        .filter_map(|(name, value)| match value {
            serde_json::Value::Null => None,
            serde_json::Value::String(text) => Some((name, text)),
            other => Some((name, other.to_string())),
        })
        .collect()
}

/// Turns a non-2xx answer into an error: central's message when the body is its error JSON,
/// otherwise the status and the start of the body.
pub fn error_from_response(status: u16, body: &str) -> CtlError {
    match serde_json::from_str::<ErrorBody>(body) {
        Ok(parsed) => CtlError::Api {
            status,
            code: printable(parsed.error.code.as_str()),
            message: printable(&parsed.error.message),
        },
        Err(_) => {
            let trimmed = body.trim();
            let mut excerpt: String = trimmed.chars().take(BODY_EXCERPT_CHARS).collect();
            if trimmed.chars().count() > BODY_EXCERPT_CHARS {
                excerpt.push_str("...");
            }
            CtlError::UnexpectedStatus {
                status,
                excerpt: printable(&excerpt),
            }
        }
    }
}

/// App names go into URL paths: checked like ids, with the app name rules.
fn checked_app_name(name: &str) -> Result<String, CtlError> {
    input::parse_app_name(name).map_err(|reason| CtlError::InvalidId {
        id: printable(name),
        reason,
    })
}

fn checked_id(id: &str) -> Result<String, CtlError> {
    input::parse_id(id).map_err(|reason| CtlError::InvalidId {
        id: printable(id),
        reason,
    })
}

/// Checks central's base URL and returns it without a trailing `/`.
fn check_central_url(url: &str) -> Result<String, CtlError> {
    let invalid = |reason| CtlError::InvalidCentralUrl {
        url: printable(url),
        reason,
    };
    let trimmed = url.trim().trim_end_matches('/');
    let (scheme, rest) = trimmed
        .split_once("://")
        .ok_or_else(|| invalid("it does not start with https://"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        return Err(invalid("it names no host"));
    }
    if authority.contains('@') {
        return Err(invalid(
            "it carries user credentials; give the API token with --token-file instead",
        ));
    }
    if rest.contains(['?', '#']) || rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid("it holds a query, fragment or whitespace"));
    }
    match scheme.to_ascii_lowercase().as_str() {
        "https" => {}
        "http" if is_loopback(host_of(authority)) => {}
        "http" => {
            return Err(invalid(
                "plain http is allowed only to a loopback host, since the API token would cross the network in clear",
            ))
        }
        _ => return Err(invalid("its scheme is not https")),
    }
    Ok(trimmed.to_owned())
}

/// The host part of `host[:port]` or `[v6]:port`.
fn host_of(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default();
    }
    authority.split(':').next().unwrap_or_default()
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback() || ip == IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// A rustls client configuration whose only trust root is `ca`.
fn tls_config(ca: &CentralCa) -> Result<Arc<rustls::ClientConfig>, CtlError> {
    let (pem, origin) = match ca {
        CentralCa::File(path) => (
            std::fs::read(path).map_err(|source| CtlError::ReadCa {
                path: path.clone(),
                source,
            })?,
            path.display().to_string(),
        ),
        CentralCa::Pem(pem) => (pem.clone(), "given in memory".to_owned()),
    };
    let invalid = |reason: String| CtlError::InvalidCa {
        origin: origin.clone(),
        reason,
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|error| invalid(format!("its PEM cannot be read: {error}")))?;
        roots
            .add(cert)
            .map_err(|error| invalid(format!("it is not a usable CA certificate: {error}")))?;
    }
    if roots.is_empty() {
        return Err(invalid("it holds no PEM 'CERTIFICATE' block".to_owned()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(CtlError::TlsSetup)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// What to check after a failed TLS handshake.
fn tls_hint(error: &rustls::Error, ca_given: bool) -> &'static str {
    use rustls::CertificateError;
    match error {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) if !ca_given => {
            "no --ca was given, so only public web CAs are trusted: give --ca with the CA \
             certificate of central (or set CAIRN_CA)"
        }
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "check that --ca (or CAIRN_CA) is the CA certificate that signed this central's certificate"
        }
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => "use a host name or IP address in --central that central's certificate names",
        rustls::Error::InvalidCertificate(
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. },
        ) => "check this machine's clock, and renew central's certificate if it has run out",
        _ => "check that --central points at cairn-central's HTTPS port and that --ca (or CAIRN_CA) \
              is its CA certificate",
    }
}

impl Client {
    fn tls_error(&self, url: &str, error: &rustls::Error) -> CtlError {
        CtlError::Tls {
            url: url.to_owned(),
            detail: error.to_string(),
            hint: tls_hint(error, self.ca_given),
        }
    }

    /// Sorts a ureq transport failure into what the operator has to check.
    fn transport_error(&self, url: &str, transport: &ureq::Transport) -> CtlError {
        let mut details = vec![transport
            .message()
            .map(str::to_owned)
            .unwrap_or_else(|| transport.kind().to_string())];
        let mut timed_out = false;
        let mut current = transport.source();
        while let Some(error) = current {
            if let Some(tls) = error.downcast_ref::<rustls::Error>() {
                return self.tls_error(url, tls);
            }
            if let Some(io_error) = error.downcast_ref::<io::Error>() {
                timed_out |= is_timeout(io_error);
                // io::Error's source() skips the error it wraps; get_ref() returns it.
                if let Some(inner) = io_error.get_ref() {
                    current = Some(inner as &(dyn StdError + 'static));
                    continue;
                }
            }
            let text = error.to_string();
            if !details.iter().any(|known| known.contains(&text)) {
                details.push(text);
            }
            current = error.source();
        }
        let url = url.to_owned();
        if timed_out {
            return CtlError::Timeout {
                url,
                timeout: self.timeout,
            };
        }
        let detail = details.join(": ");
        match transport.kind() {
            ureq::ErrorKind::Dns | ureq::ErrorKind::ConnectionFailed => {
                CtlError::Connect { url, detail }
            }
            _ => CtlError::Transport { url, detail },
        }
    }

    /// Sorts a failure while reading a body.
    fn io_error(&self, url: &str, error: &io::Error) -> CtlError {
        if is_timeout(error) {
            return CtlError::Timeout {
                url: url.to_owned(),
                timeout: self.timeout,
            };
        }
        if let Some(tls) = error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return self.tls_error(url, tls);
        }
        CtlError::Transport {
            url: url.to_owned(),
            detail: format!("reading the answer: {error}"),
        }
    }
}

fn is_timeout(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_gives_message_and_status() {
        let error = error_from_response(
            404,
            r#"{"error":{"code":"not_found","message":"no device dev_9"}}"#,
        );
        assert!(matches!(&error, CtlError::Api { status: 404, code, .. } if code == "not_found"));
        assert_eq!(error.to_string(), "no device dev_9 (HTTP 404)");
    }

    #[test]
    fn error_body_with_extra_fields_and_no_code() {
        let error = error_from_response(
            403,
            r#"{"error":{"message":"viewer may not approve","required_role":"operator"},"x":1}"#,
        );
        assert_eq!(error.to_string(), "viewer may not approve (HTTP 403)");
    }

    #[test]
    fn error_message_control_characters_are_escaped() {
        let error = error_from_response(
            400,
            r#"{"error":{"code":"bad","message":"host \u001b[31mevil"}}"#,
        );
        assert!(!error.to_string().contains('\u{1b}'));
    }

    #[test]
    fn non_json_error_body_is_quoted() {
        let error = error_from_response(502, "<html>Bad Gateway</html>\n");
        assert_eq!(
            error.to_string(),
            "central answered HTTP 502 without an error message: <html>Bad Gateway</html>"
        );
        let error = error_from_response(500, "");
        assert_eq!(
            error.to_string(),
            "central answered HTTP 500 without an error message"
        );
        let long = "x".repeat(500);
        let CtlError::UnexpectedStatus { excerpt, .. } = error_from_response(500, &long) else {
            panic!("expected UnexpectedStatus");
        };
        assert_eq!(excerpt.len(), BODY_EXCERPT_CHARS + 3);
    }

    #[test]
    fn central_urls() {
        assert_eq!(
            check_central_url("https://central.example:7444/").unwrap(),
            "https://central.example:7444"
        );
        assert_eq!(
            check_central_url("https://lb.example/cairn").unwrap(),
            "https://lb.example/cairn"
        );
        assert!(check_central_url("http://127.0.0.1:7080").is_ok());
        assert!(check_central_url("http://localhost:7080").is_ok());
        assert!(check_central_url("http://[::1]:7080").is_ok());
        for bad in [
            "central:7444",
            "http://central.example:7080",
            "ftp://central.example",
            "https://",
            "https://user:pw@central.example",
            "https://central.example/?x=1",
        ] {
            assert!(
                matches!(
                    check_central_url(bad),
                    Err(CtlError::InvalidCentralUrl { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn token_is_trimmed_checked_and_never_debug_printed() {
        let token = BearerToken::new(" cat_secret\n", "--token").unwrap();
        assert_eq!(token.header_value(), "Bearer cat_secret");
        assert!(!format!("{token:?}").contains("secret"));
        let error = BearerToken::new("cat_a b", "--token").unwrap_err();
        assert!(!error.to_string().contains("cat_a"));
        assert!(BearerToken::new("  \n", "--token").is_err());
    }

    #[test]
    fn token_file_is_trimmed() {
        let path = std::env::temp_dir().join(format!("cairnctl-token-{}", std::process::id()));
        std::fs::write(&path, "cat_from_file\n").unwrap();
        let token = BearerToken::from_file(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(token, BearerToken::new("cat_from_file", "x").unwrap());
        assert!(matches!(
            BearerToken::from_file(&path),
            Err(CtlError::ReadTokenFile { .. })
        ));
    }

    #[test]
    fn ca_without_certificate_is_refused() {
        let error = tls_config(&CentralCa::Pem(b"not a certificate\n".to_vec())).unwrap_err();
        assert!(matches!(error, CtlError::InvalidCa { .. }), "{error}");
        let error = tls_config(&CentralCa::File("/nonexistent/ca.pem".into())).unwrap_err();
        assert!(matches!(error, CtlError::ReadCa { .. }), "{error}");
    }

    #[test]
    fn ids_are_checked_before_requests() {
        let client = Client::new(Connection::new(
            "http://127.0.0.1:9",
            None,
            BearerToken::new("t", "test").unwrap(),
        ))
        .unwrap();
        assert!(matches!(
            client.approve_device("../../api-tokens"),
            Err(CtlError::InvalidId { .. })
        ));
    }

    #[test]
    fn refused_connection_is_a_connect_error() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let client = Client::new(Connection::new(
            format!("http://127.0.0.1:{port}"),
            None,
            BearerToken::new("t", "test").unwrap(),
        ))
        .unwrap();
        let error = client.list_devices().unwrap_err();
        assert!(matches!(error, CtlError::Connect { .. }), "{error}");
        assert!(error.to_string().contains("--central"), "{error}");
    }
}
