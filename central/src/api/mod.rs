//! The operator REST API (JSON over TLS, bearer API tokens with roles, audit log).

mod apps;
pub(crate) use apps::state_name as service_state_name;
mod auth;
mod bundles;
mod console;
mod deployments;
mod observability;
mod rollouts;
mod routes;
mod sites;

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::store::StoreError;
use crate::Shared;

pub use auth::Caller;

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

/// The OpenAPI document describing this API.
pub const OPENAPI: &str = include_str!("../../openapi.json");

/// A REST failure, sent as `{"error":{"code","message"}}` with a matching HTTP status.
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

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            ApiError::GatewayTimeout(_) => (StatusCode::GATEWAY_TIMEOUT, "device_timeout"),
            ApiError::DeviceFailed(_) => (StatusCode::BAD_GATEWAY, "device_error"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            ApiError::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        let message = match &self {
            ApiError::Store(e) => {
                tracing::error!(error = %e, "REST request failed in the registry");
                "central could not complete the request; it is logged, retry later".to_owned()
            }
            other => other.to_string(),
        };
        (
            status,
            Json(json!({ "error": { "code": code, "message": message } })),
        )
            .into_response()
    }
}

/// `Json<T>` whose rejection is our JSON error with the parser's precise message.
pub struct ValidJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ValidJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(ValidJson(value)),
            Err(rejection) => Err(ApiError::BadRequest(match rejection {
                JsonRejection::BytesRejection(_) => {
                    format!("request body unreadable or larger than {MAX_BODY_BYTES} bytes")
                }
                other => other.body_text(),
            })),
        }
    }
}

/// Build the REST router.
pub fn router(shared: Arc<Shared>) -> axum::Router {
    routes::router()
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
