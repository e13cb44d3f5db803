//! The operator REST API (JSON over TLS, bearer API tokens with roles, audit log).
//!
//! Every request body, query and answer is a type of the `cairn-api` crate, which cairnctl and
//! the tests read too; handlers return `Json<cairn_api::...>`. Request bodies are read strictly
//! ([`ValidJson`]: unknown fields refused), every failure is an [`ApiError`] sent as the API's
//! error body.
//!
//! - `routes.rs`: the route list, each route added with its OpenAPI operation, and the handlers
//!   of health, enrollment tokens, devices, claims, API tokens and the audit log;
//! - `openapi.rs`: the generated OpenAPI document (served at `/api/v1/openapi.json`, committed
//!   as `central/openapi.json`);
//! - `auth.rs`: bearer tokens and roles;
//! - `apps.rs`, `deployments.rs`, `sites.rs`, `bundles.rs`, `rollouts.rs`, `observability.rs`,
//!   `attestation.rs`, `secrets.rs`, `variables.rs`: one part of the API each;
//! - `console.rs`: the web console's static files.

mod apps;
pub(crate) use apps::state_name as service_state_name;
mod attestation;
mod auth;
mod bundles;
mod console;
mod deployments;
mod observability;
mod openapi;
mod rollouts;
mod routes;
mod secrets;
mod sites;
mod variables;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cairn_api::{ErrorBody, ErrorCode};
use serde::de::DeserializeOwned;

use crate::store::StoreError;
use crate::Shared;

pub use auth::Caller;
pub use openapi::{document, document_json};

/// Largest request body accepted; every request here is a small JSON document.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Run `change` in one registry transaction, committed only when it returns `Ok(Ok(_))` (an
/// `Ok(Err(_))` refuses the request and changes nothing), then a scheduler pass so the answer
/// already reflects the change.
async fn change_and_place<T, F>(shared: &Arc<Shared>, change: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&crate::store::db::Transaction<'_>) -> Result<Result<T, ApiError>, StoreError>
        + Send
        + 'static,
{
    let value = shared
        .store
        .run(move |conn| {
            let tx = conn.transaction()?;
            let outcome = change(&tx)?;
            if outcome.is_ok() {
                tx.commit()?;
            }
            Ok(outcome)
        })
        .await??;
    crate::placement::reconcile_now(shared).await;
    Ok(value)
}

/// Send `devices` the desired state the registry now holds for each (after a committed
/// change), from a few tasks side by side: each push reads one device's state, and at 10k
/// devices one after the other took most of a secret rotation's time.
async fn push_stored(shared: Arc<Shared>, devices: Vec<String>) {
    const PUSHERS: usize = 8;
    if devices.is_empty() {
        return;
    }
    let mut pushers = tokio::task::JoinSet::new();
    for chunk in devices.chunks(devices.len().div_ceil(PUSHERS)) {
        let (shared, chunk) = (shared.clone(), chunk.to_vec());
        pushers.spawn(async move {
            for device in &chunk {
                shared.deliver_stored(device).await;
            }
        });
    }
    while pushers.join_next().await.is_some() {}
}

/// A REST failure, sent as `{"error":{"code","message"}}` ([`cairn_api::ErrorBody`]) with a
/// matching HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No or unknown token.
    #[error("{0}")]
    Unauthorized(String),
    /// Role too low.
    #[error("{0}")]
    Forbidden(String),
    /// No such object.
    #[error("{0}")]
    NotFound(String),
    /// Invalid input.
    #[error("{0}")]
    BadRequest(String),
    /// Conflicts with the current state (or central's configuration).
    #[error("{0}")]
    Conflict(String),
    /// The request body is over a limit.
    #[error("{0}")]
    TooLarge(String),
    /// A device did not answer in time.
    #[error("{0}")]
    GatewayTimeout(String),
    /// A device answered with an error.
    #[error("{0}")]
    DeviceFailed(String),
    /// Central failed on its side; the message says what to check (details are logged).
    #[error("{0}")]
    Internal(String),
    /// Registry failure (details logged, not sent).
    #[error("registry failure: {0}")]
    Store(#[from] StoreError),
}

impl ApiError {
    /// The HTTP status and the error code of the body.
    fn status_and_code(&self) -> (StatusCode, ErrorCode) {
        match self {
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, ErrorCode::Forbidden),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, ErrorCode::NotFound),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, ErrorCode::BadRequest),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, ErrorCode::Conflict),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::TooLarge),
            ApiError::GatewayTimeout(_) => (StatusCode::GATEWAY_TIMEOUT, ErrorCode::DeviceTimeout),
            ApiError::DeviceFailed(_) => (StatusCode::BAD_GATEWAY, ErrorCode::DeviceError),
            ApiError::Internal(_) | ApiError::Store(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal)
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let message = match &self {
            ApiError::Store(e) => {
                tracing::error!(error = %e, "REST request failed in the registry");
                "central could not complete the request; it is logged, retry later".to_owned()
            }
            other => other.to_string(),
        };
        (status, Json(ErrorBody::new(code, message))).into_response()
    }
}

/// A JSON request body of type `T`, read strictly: a rejection is our JSON error with the
/// parser's precise message, and a field `T` does not have is refused (the API types accept
/// unknown fields, which suits clients reading answers but not a server reading requests: a
/// misspelt option must not be silently ignored).
pub struct ValidJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ValidJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !json_content_type(req.headers()) {
            return Err(ApiError::BadRequest(
                "Expected request with `Content-Type: application/json`".into(),
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|_| {
            ApiError::BadRequest(format!(
                "request body unreadable or larger than {MAX_BODY_BYTES} bytes"
            ))
        })?;
        let Json(value) =
            Json::<T>::from_bytes(&bytes).map_err(|e| ApiError::BadRequest(e.body_text()))?;
        let unknown = unknown_fields::<T>(&bytes);
        if !unknown.is_empty() {
            return Err(ApiError::BadRequest(format!(
                "Failed to deserialize the JSON body into the target type: unknown field {}; see /api/v1/openapi.json for the fields this operation takes",
                unknown.join(", ")
            )));
        }
        Ok(ValidJson(value))
    }
}

/// Whether the request says its body is JSON (`application/json` or `application/*+json`).
fn json_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || essence
            .strip_prefix("application/")
            .is_some_and(|subtype| subtype.ends_with("+json"))
}

/// The fields of a JSON document that `T` does not read, as `` `path.to.field` ``.
fn unknown_fields<T: DeserializeOwned>(bytes: &[u8]) -> Vec<String> {
    let mut unknown = Vec::new();
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    // The document already parsed as `T`; this second pass only collects what it ignored.
    let _ = serde_ignored::deserialize::<_, _, T>(&mut deserializer, |path| {
        unknown.push(format!("`{path}`"))
    });
    unknown
}

/// Query parameters of type `T`; a rejection is our JSON error (axum's own is plain text).
pub struct ValidQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ValidQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(value)| ValidQuery(value))
            .map_err(|e| ApiError::BadRequest(e.body_text()))
    }
}

/// Refuse a value of an API enum this central does not know (the API types accept any string
/// so that clients survive new values; a request must name a known one).
fn require_known(field: &str, value: &str, is_known: bool, allowed: &str) -> Result<(), ApiError> {
    if is_known {
        return Ok(());
    }
    Err(ApiError::BadRequest(format!(
        "`{field}` must be {allowed}; got {value:?}"
    )))
}

/// Build the REST router.
pub fn router(shared: Arc<Shared>) -> axum::Router {
    let (routes, _) = routes::router().split_for_parts();
    routes
        .fallback(|| async {
            ApiError::NotFound("no such API route; see /api/v1/openapi.json".into())
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            count_request,
        ))
        .with_state(shared)
}

/// Count every answered request by status class and duration for `/metrics`.
async fn count_request(
    axum::extract::State(shared): axum::extract::State<Arc<Shared>>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    shared
        .rest_metrics
        .observe(response.status().as_u16(), started.elapsed());
    response
}
