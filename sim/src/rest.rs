//! The few REST calls the simulator makes as an operator: enrollment tokens and device config.

use std::net::SocketAddr;
use std::time::Duration;

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
}

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
            .timeout(Duration::from_secs(120))
            .build()
            .map_err(RestError::Client)?;
        Ok(Self {
            client,
            base: format!("https://{addr}"),
            token: token.to_owned(),
        })
    }

    async fn call(&self, method: &'static str, path: &str, body: Option<Value>) -> Result<Value, RestError> {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("static method names are valid");
        let mut request = self
            .client
            .request(m, format!("{}{path}", self.base))
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

    /// A new `auto` enrollment token with unlimited uses; returns its secret.
    pub async fn auto_token(&self, name: &str) -> Result<String, RestError> {
        let body = json!({ "name": name, "policy": "auto", "max_uses": null, "expires_in_seconds": 30 * 24 * 3600 });
        let answer = self.call("POST", "/api/v1/enrollment-tokens", Some(body)).await?;
        Ok(answer["secret"].as_str().unwrap_or_default().to_owned())
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
}
