//! The few REST calls the simulator makes as an operator: enrollment tokens, device config,
//! sites and a deployment.

use std::net::SocketAddr;
use std::time::Duration;

use cairn_api::CreatedEnrollmentToken;
use serde_json::{json, Value};

/// Why a REST call failed.
#[derive(Debug, thiserror::Error)]
pub enum RestError {
    /// The client could not be built (bad CA PEM).
    #[error("REST client for central could not be built: {0}")]
    Client(reqwest::Error),
    /// Transport failure.
    #[error("{method} {path} failed: {source}; is central's REST listener up?")]
    Transport {
        /// HTTP method.
        method: &'static str,
        /// API path.
        path: String,
        /// reqwest's reason.
        source: reqwest::Error,
    },
    /// Central answered with an error status.
    #[error("{method} {path} answered {status}: {body}")]
    Status {
        /// HTTP method.
        method: &'static str,
        /// API path.
        path: String,
        /// HTTP status.
        status: u16,
        /// Response body.
        body: String,
    },
    /// A success answer that is not the API's type: central and this simulator differ.
    #[error("{path} answered with a body the API does not describe: {source}; build the simulator from the same tree as central")]
    Answer {
        /// API path.
        path: &'static str,
        /// serde's reason.
        source: serde_json::Error,
    },
}

/// Longest wait for one REST answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// Longest wait for a deployment call: central answers after the placement pass that writes
/// the app for every selected device (the whole fleet here).
const DEPLOYMENT_TIMEOUT: Duration = Duration::from_secs(3600);

/// An operator client of central's REST API (TLS trusting only the fleet CA, bearer token).
#[derive(Clone)]
pub struct Operator {
    client: reqwest::Client,
    base: String,
    token: String,
}

impl Operator {
    /// A client for the REST listener at `addr`.
    pub fn new(addr: SocketAddr, ca_pem: &str, token: &str) -> Result<Self, RestError> {
        let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes()).map_err(RestError::Client)?;
        let client = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .build()
            .map_err(RestError::Client)?;
        Ok(Self {
            client,
            base: format!("https://{addr}"),
            token: token.to_owned(),
        })
    }

    async fn call(
        &self,
        method: &'static str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, RestError> {
        self.call_within(method, path, body, CALL_TIMEOUT).await
    }

    async fn call_within(
        &self,
        method: &'static str,
        path: &str,
        body: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, RestError> {
        let m =
            reqwest::Method::from_bytes(method.as_bytes()).expect("static method names are valid");
        let mut request = self
            .client
            .request(m, format!("{}{path}", self.base))
            .timeout(timeout)
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let transport = |source| RestError::Transport {
            method,
            path: path.to_owned(),
            source,
        };
        let response = request.send().await.map_err(transport)?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(transport)?;
        if !(200..300).contains(&status) {
            return Err(RestError::Status {
                method,
                path: path.to_owned(),
                status,
                body: text,
            });
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Whether `/healthz` answers.
    pub async fn healthy(&self) -> bool {
        self.call("GET", "/healthz", None).await.is_ok()
    }

    /// A new `auto` enrollment token with unlimited uses that admits the simulator's software
    /// keys; returns its secret.
    pub async fn auto_token(&self, name: &str) -> Result<String, RestError> {
        let body = json!({ "name": name, "policy": "auto", "max_uses": null, "expires_in_seconds": 30 * 24 * 3600, "require_tpm": false });
        let answer = self
            .call("POST", "/api/v1/enrollment-tokens", Some(body))
            .await?;
        let created: CreatedEnrollmentToken =
            serde_json::from_value(answer).map_err(|source| RestError::Answer {
                path: "/api/v1/enrollment-tokens",
                source,
            })?;
        Ok(created.secret)
    }

    /// Replace a device's config (`PUT /api/v1/devices/{id}/config`); central pushes the new
    /// DesiredState on the device's stream.
    pub async fn set_config(&self, device_id: &str, config: Value) -> Result<(), RestError> {
        self.call(
            "PUT",
            &format!("/api/v1/devices/{device_id}/config"),
            Some(json!({ "config": config })),
        )
        .await?;
        Ok(())
    }

    /// Create site `name` at a point with `devices` at it (`POST /api/v1/sites`, one call).
    /// A site of that name left by an earlier run on the same registry (SQLite keeps it, with
    /// the same devices) is moved to the point instead.
    pub async fn create_site(
        &self,
        name: &str,
        latitude: f64,
        longitude: f64,
        devices: &[String],
    ) -> Result<(), RestError> {
        let body = json!({ "name": name, "latitude": latitude, "longitude": longitude, "devices": devices });
        match self.call("POST", "/api/v1/sites", Some(body)).await {
            Err(RestError::Status { status: 409, .. }) => {
                let body = json!({ "latitude": latitude, "longitude": longitude });
                self.call("PUT", &format!("/api/v1/sites/{name}"), Some(body))
                    .await?;
                Ok(())
            }
            other => other.map(drop),
        }
    }

    /// Create (`POST`; `PUT` when an earlier run on the same registry left it) or replace
    /// (`PUT`) deployment `name`: `compose_yaml` on `hosts_per_site`
    /// devices of every site. Central answers after its placement pass has written the result.
    pub async fn put_deployment(
        &self,
        name: &str,
        compose_yaml: &str,
        hosts_per_site: u32,
        create: bool,
    ) -> Result<(), RestError> {
        let placement = json!({ "hosts_per_site": hosts_per_site });
        if create {
            let body =
                json!({ "name": name, "compose_yaml": compose_yaml, "placement": placement });
            let created = self
                .call_within(
                    "POST",
                    "/api/v1/deployments",
                    Some(body),
                    DEPLOYMENT_TIMEOUT,
                )
                .await;
            // Left by an earlier run on the same registry: replaced below instead.
            if !matches!(created, Err(RestError::Status { status: 409, .. })) {
                return created.map(drop);
            }
        }
        let body = json!({ "compose_yaml": compose_yaml, "placement": placement });
        self.call_within(
            "PUT",
            &format!("/api/v1/deployments/{name}"),
            Some(body),
            DEPLOYMENT_TIMEOUT,
        )
        .await?;
        Ok(())
    }

    /// Set deployment `deployment`'s secret `name` to `value` for all its devices: created the
    /// first time, a new version after. Central answers once the revisions are bumped.
    pub async fn set_deployment_secret(
        &self,
        deployment: &str,
        name: &str,
        value: &[u8],
    ) -> Result<(), RestError> {
        use base64::Engine;
        let value_base64 = base64::engine::general_purpose::STANDARD.encode(value);
        let listed = self
            .call_within(
                "GET",
                &format!("/api/v1/secrets?deployment={deployment}"),
                None,
                DEPLOYMENT_TIMEOUT,
            )
            .await?;
        let existing = listed["secrets"].as_array().and_then(|list| {
            list.iter()
                .find(|s| s["name"] == name && s["site"].is_null() && s["device"].is_null())
                .and_then(|s| s["id"].as_str().map(str::to_owned))
        });
        match existing {
            Some(id) => {
                self.call_within(
                    "PUT",
                    &format!("/api/v1/secrets/{id}"),
                    Some(json!({ "value_base64": value_base64 })),
                    DEPLOYMENT_TIMEOUT,
                )
                .await?
            }
            None => {
                self.call_within(
                    "POST",
                    "/api/v1/secrets",
                    Some(json!({ "name": name, "deployment": deployment, "value_base64": value_base64 })),
                    DEPLOYMENT_TIMEOUT,
                )
                .await?
            }
        };
        Ok(())
    }
}
