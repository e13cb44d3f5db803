//! Bearer API tokens and roles.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use super::ApiError;
use crate::store::{now_unix, tokens, Role};
use crate::Shared;

/// A token's `last_used_at` is written when it is older than this: one write a minute for a
/// busy token, not one per request.
pub const LAST_USED_SLACK_SECONDS: i64 = 60;

/// The authenticated operator behind a request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// API token name, used as the audit actor.
    pub name: String,
    /// Its role.
    pub role: Role,
}

impl Caller {
    /// Refuse unless the caller has at least `role`.
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.role.includes(&role) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "this needs the {} role; token {:?} has {}",
                role.as_str(),
                self.name,
                self.role.as_str()
            )))
        }
    }

    /// The actor string written to the audit log.
    pub fn actor(&self) -> String {
        format!("api:{}", self.name)
    }
}

impl FromRequestParts<Arc<Shared>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        shared: &Arc<Shared>,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| {
                ApiError::Unauthorized("missing `Authorization: Bearer <api token>` header".into())
            })?;
        let secret = header
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|s| !s.is_empty() && s.len() <= 256)
            .ok_or_else(|| {
                ApiError::Unauthorized("Authorization header must be `Bearer <api token>`".into())
            })?
            .to_owned();
        let token = shared
            .store
            .read(move |conn| tokens::api_token_by_secret(conn, &secret))
            .await?
            .ok_or_else(|| ApiError::Unauthorized("API token not recognised".into()))?;
        let now = now_unix();
        if token.revoked {
            return Err(ApiError::Unauthorized(format!(
                "API token {} is revoked; ask an admin for a new one",
                token.id
            )));
        }
        if let Some(expired) = token.expires_at.filter(|at| at.unix_seconds() <= now) {
            return Err(ApiError::Unauthorized(format!(
                "API token {} expired at {expired}; ask an admin for a new one",
                token.id
            )));
        }
        if token
            .last_used_at
            .is_none_or(|at| at.unix_seconds() < now - LAST_USED_SLACK_SECONDS)
        {
            let id = token.id.clone();
            // Off the request: a failed write costs only a stale "last used".
            let store = shared.store.clone();
            tokio::spawn(async move {
                let touched = store
                    .run(move |conn| {
                        tokens::touch_api_token(conn, &id, now, LAST_USED_SLACK_SECONDS)
                    })
                    .await;
                if let Err(e) = touched {
                    tracing::warn!(error = %e, "could not note an API token's last use");
                }
            });
        }
        Ok(Caller {
            name: token.name,
            role: token.role,
        })
    }
}
