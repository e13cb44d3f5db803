//! OS update bundles: upload (streamed, verified with `rauc info`, content-addressed), list,
//! show, download with HTTP Range support (agents resume interrupted downloads), remove.

use std::io::SeekFrom;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cairn_api::{BundleList, BundleReply, BundleUploaded, ErrorBody, ErrorCode, Removed};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_stream::StreamExt;

use super::{ApiError, Caller};
use crate::bundles::{is_sha256_hex, BundleError, PublishError};
use crate::store::bundles::{self as store_bundles, Bundle};
use crate::store::{audit, now_unix, Role, StoreError, Timestamp};
use crate::Shared;

type St = State<Arc<Shared>>;

/// An upload that sends nothing for this long is abandoned.
const UPLOAD_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How much of a body refused for its declared size is read and dropped before the answer: a
/// client that sends its whole body before reading (ureq, hence cairnctl) then sees the 413 and
/// its reason instead of a connection reset, at least when it is not far over the limit.
const REFUSED_BODY_DRAIN_BYTES: usize = 1024 * 1024;
/// Longest time spent on that.
const REFUSED_BODY_DRAIN_TIME: Duration = Duration::from_secs(5);
/// Read size when serving a bundle.
const SEND_CHUNK_BYTES: usize = 64 * 1024;
/// Longest audit detail of a refused upload.
const AUDIT_REASON_CHARS: usize = 400;

impl From<BundleError> for ApiError {
    fn from(e: BundleError) -> Self {
        match e {
            BundleError::NotConfigured { .. } => ApiError::Conflict(e.to_string()),
            BundleError::TooLarge { .. } => ApiError::TooLarge(e.to_string()),
            BundleError::Body { .. }
            | BundleError::Refused { .. }
            | BundleError::WrongCompatible { .. }
            | BundleError::NoVersion => ApiError::BadRequest(e.to_string()),
            BundleError::Rauc(_) | BundleError::Io { .. } | BundleError::Index { .. } => {
                tracing::error!(error = %e, "bundle operation failed on central");
                ApiError::Internal(e.to_string())
            }
        }
    }
}

impl From<PublishError<StoreError>> for ApiError {
    fn from(e: PublishError<StoreError>) -> Self {
        match e {
            PublishError::Bundle(e) => e.into(),
            PublishError::Record(e) => e.into(),
        }
    }
}

/// The `{sha256}` path segment, checked (it becomes part of a file name).
fn checked_sha256(sha256: &str) -> Result<String, ApiError> {
    let sha256 = sha256.to_ascii_lowercase();
    if !is_sha256_hex(&sha256) {
        return Err(ApiError::BadRequest(
            "a bundle is named by the 64 hex characters of its SHA-256; see GET /api/v1/bundles"
                .into(),
        ));
    }
    Ok(sha256)
}

async fn load(shared: &Shared, sha256: String) -> Result<Bundle, ApiError> {
    let wanted = sha256.clone();
    shared
        .store
        .read(move |conn| store_bundles::get(conn, &wanted))
        .await?
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "no bundle with SHA-256 {sha256}; see GET /api/v1/bundles"
            ))
        })
}

/// Store a signed RAUC bundle sent as the raw body (operator), after `rauc info` verified its
/// signature and `compatible`. Every attempt is audited.
#[utoipa::path(
    post,
    path = "/api/v1/bundles",
    tag = "bundles",
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The `.raucb` file"),
    responses(
        (status = 200, description = "The same bytes were stored already", body = BundleUploaded),
        (status = 201, description = "Stored", body = BundleUploaded),
        (status = 400, description = "Not a bundle, not signed by the fleet's update key, or for other hardware"),
        (status = 403, description = "Needs the operator role"),
        (status = 409, description = "Central has no update keyring configured"),
        (status = 413, description = "Larger than central's `max_bundle_bytes`"),
    )
)]
#[tracing::instrument(name = "api.bundle_upload", skip_all, fields(actor = %caller.actor()))]
pub(super) async fn upload_bundle(
    caller: Caller,
    State(shared): St,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<BundleUploaded>), ApiError> {
    caller.require(Role::Operator)?;
    let actor = caller.actor();
    match receive(&shared, &actor, &headers, body).await {
        Ok((bundle, new)) => {
            let status = if new {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok((
                status,
                Json(BundleUploaded {
                    bundle,
                    created: new,
                }),
            ))
        }
        Err((sha256, error)) => {
            let reason: String = error.to_string().chars().take(AUDIT_REASON_CHARS).collect();
            let target = sha256.unwrap_or_else(|| "-".into());
            let recorded = shared
                .store
                .run(move |conn| audit::record(conn, &actor, "bundle.reject", &target, &reason))
                .await;
            if let Err(e) = recorded {
                tracing::warn!(error = %e, "could not audit a refused bundle upload");
            }
            Err(error)
        }
    }
}

/// Reads and drops up to [`REFUSED_BODY_DRAIN_BYTES`] of `body`, for at most
/// [`REFUSED_BODY_DRAIN_TIME`].
async fn drain(body: Body) {
    let mut stream = body.into_data_stream();
    let mut read = 0;
    let _ = tokio::time::timeout(REFUSED_BODY_DRAIN_TIME, async {
        while read < REFUSED_BODY_DRAIN_BYTES {
            match stream.next().await {
                Some(Ok(chunk)) => read += chunk.len(),
                _ => break,
            }
        }
    })
    .await;
}

/// Receive, verify and publish an upload; on failure, the bundle's SHA-256 if it was known.
async fn receive(
    shared: &Shared,
    actor: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Bundle, bool), (Option<String>, ApiError)> {
    let files = &shared.bundles;
    files.check_configured().map_err(|e| (None, e.into()))?;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > files.max_bytes()) {
        drain(body).await;
        return Err((
            None,
            BundleError::TooLarge {
                limit: files.max_bytes(),
            }
            .into(),
        ));
    }
    let mut upload = files.begin_upload().await.map_err(|e| (None, e.into()))?;
    let mut stream = body.into_data_stream();
    loop {
        let next = tokio::time::timeout(UPLOAD_IDLE_TIMEOUT, stream.next())
            .await
            .map_err(|_| {
                let reason = format!("nothing arrived for {} s", UPLOAD_IDLE_TIMEOUT.as_secs());
                (
                    None,
                    BundleError::Body {
                        received: upload.received(),
                        reason,
                    }
                    .into(),
                )
            })?;
        match next {
            None => break,
            Some(Ok(chunk)) => upload.write(&chunk).await.map_err(|e| (None, e.into()))?,
            Some(Err(e)) => {
                let error = BundleError::Body {
                    received: upload.received(),
                    reason: e.to_string(),
                };
                return Err((None, error.into()));
            }
        }
    }
    let verified = files.verify(upload).await.map_err(|e| (None, e.into()))?;
    let sha256 = verified.sha256.clone();
    tracing::info!(%sha256, version = %verified.version, size = verified.size, "bundle verified");
    let row = Bundle {
        sha256: verified.sha256.clone(),
        version: verified.version.clone(),
        compatible: verified.compatible.clone(),
        size: verified.size,
        uploaded_at: Timestamp::from_unix_seconds(now_unix()),
        uploaded_by: actor.to_owned(),
    };
    let actor = actor.to_owned();
    let uki_pcr11 = verified.uki_pcr11.join(" ");
    let record = shared.store.run(move |conn| {
        let tx = conn.transaction()?;
        let (stored, new) = store_bundles::insert(&tx, &row)?;
        store_bundles::set_uki_pcr11(&tx, &row.sha256, &uki_pcr11)?;
        let detail = format!(
            "version={} compatible={} size={} {}",
            row.version,
            row.compatible,
            row.size,
            if new { "stored" } else { "already stored" }
        );
        audit::record(&tx, &actor, "bundle.upload", &row.sha256, &detail)?;
        tx.commit()?;
        Ok((stored, new))
    });
    files
        .publish(verified, record)
        .await
        .map_err(|e| (Some(sha256), e.into()))
}

/// Every stored bundle, newest upload first (viewer).
#[utoipa::path(
    get,
    path = "/api/v1/bundles",
    tag = "bundles",
    responses((status = 200, description = "Every bundle", body = BundleList))
)]
pub(super) async fn list_bundles(
    caller: Caller,
    State(shared): St,
) -> Result<Json<BundleList>, ApiError> {
    caller.require(Role::Viewer)?;
    let bundles = shared.store.read(|conn| store_bundles::list(conn)).await?;
    Ok(Json(BundleList { bundles }))
}

/// One stored bundle (viewer).
#[utoipa::path(
    get,
    path = "/api/v1/bundles/{sha256}",
    tag = "bundles",
    params(("sha256" = String, Path, description = "The bundle's SHA-256 (64 hex characters)")),
    responses(
        (status = 200, description = "The bundle", body = BundleReply),
        (status = 400, description = "Not a SHA-256"),
        (status = 404, description = "No such bundle"),
    )
)]
pub(super) async fn show_bundle(
    caller: Caller,
    State(shared): St,
    Path(sha256): Path<String>,
) -> Result<Json<BundleReply>, ApiError> {
    caller.require(Role::Viewer)?;
    let bundle = load(&shared, checked_sha256(&sha256)?).await?;
    Ok(Json(BundleReply { bundle }))
}

/// Remove a bundle, its row (audited) and its file (admin).
#[utoipa::path(
    delete,
    path = "/api/v1/bundles/{sha256}",
    tag = "bundles",
    params(("sha256" = String, Path, description = "The bundle's SHA-256 (64 hex characters)")),
    responses(
        (status = 200, description = "Removed", body = Removed),
        (status = 400, description = "Not a SHA-256"),
        (status = 403, description = "Needs the admin role"),
        (status = 404, description = "No such bundle"),
        (status = 409, description = "An active rollout installs it"),
    )
)]
#[tracing::instrument(name = "api.bundle_delete", skip_all, fields(actor = %caller.actor(), sha256 = %sha256))]
pub(super) async fn delete_bundle(
    caller: Caller,
    State(shared): St,
    Path(sha256): Path<String>,
) -> Result<Json<Removed>, ApiError> {
    caller.require(Role::Admin)?;
    let sha256 = checked_sha256(&sha256)?;
    let wanted = sha256.clone();
    let in_use = shared
        .store
        .run(move |conn| crate::store::rollouts::active_using_bundle(conn, &wanted))
        .await?;
    if let Some(rollout) = in_use {
        return Err(ApiError::Conflict(format!(
            "bundle {sha256} is being rolled out by {rollout}; abort or roll back that rollout (or wait until it completes) first"
        )));
    }
    let actor = caller.actor();
    let target = sha256.clone();
    let remove_row = shared.store.run(move |conn| {
        let tx = conn.transaction()?;
        let Some(bundle) = store_bundles::get(&tx, &target)? else {
            return Ok(false);
        };
        store_bundles::delete(&tx, &target)?;
        audit::record(
            &tx,
            &actor,
            "bundle.delete",
            &target,
            &format!("version={} size={}", bundle.version, bundle.size),
        )?;
        tx.commit()?;
        Ok(true)
    });
    if !shared.bundles.remove(&sha256, remove_row).await? {
        return Err(ApiError::NotFound(format!(
            "no bundle with SHA-256 {sha256}; see GET /api/v1/bundles"
        )));
    }
    Ok(Json(Removed { removed: sha256 }))
}

/// What a `Range` header asks of a file of a given size.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum RangeRequest {
    /// No (applicable) range: the whole file.
    Full,
    /// Bytes `start..=end`.
    Part {
        /// First byte.
        start: u64,
        /// Last byte (inclusive).
        end: u64,
    },
    /// A range this server will not serve, with the reason.
    Unsatisfiable(String),
}

/// Parse a `Range` header for a file of `size` bytes: one `bytes=` range (`a-b`, `a-`, `-n`).
pub(super) fn parse_range(header: Option<&str>, size: u64) -> RangeRequest {
    let Some(header) = header else {
        return RangeRequest::Full;
    };
    let unsatisfiable = |why: &str| RangeRequest::Unsatisfiable(format!("Range {header:?}: {why}"));
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return unsatisfiable("only `bytes=` ranges are served");
    };
    if spec.contains(',') {
        return unsatisfiable(
            "only one range per request is served; ask for each range separately",
        );
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return unsatisfiable("expected bytes=FIRST-LAST, bytes=FIRST- or bytes=-SUFFIX");
    };
    let number = |text: &str| text.trim().parse::<u64>().ok();
    match (first.trim().is_empty(), last.trim().is_empty()) {
        (true, false) => match number(last) {
            Some(0) | None => unsatisfiable("the suffix length must be a positive number"),
            Some(_) if size == 0 => unsatisfiable("the bundle is empty"),
            Some(n) => RangeRequest::Part {
                start: size.saturating_sub(n),
                end: size - 1,
            },
        },
        (false, _) => {
            let Some(start) = number(first) else {
                return unsatisfiable("FIRST is not a number");
            };
            let end = if last.trim().is_empty() {
                size.saturating_sub(1)
            } else {
                match number(last) {
                    Some(end) if end >= start => end.min(size.saturating_sub(1)),
                    _ => return unsatisfiable("LAST must be a number not below FIRST"),
                }
            };
            if start >= size {
                return unsatisfiable(&format!(
                    "it starts at or past the end of the {size}-byte bundle"
                ));
            }
            RangeRequest::Part { start, end }
        }
        (true, true) => unsatisfiable("expected bytes=FIRST-LAST, bytes=FIRST- or bytes=-SUFFIX"),
    }
}

/// The bundle file, whole or one byte range (operator: a bundle is a whole OS image). `ETag` is the quoted SHA-256; `If-Range`
/// with another tag gets the whole file.
#[utoipa::path(
    get,
    path = "/api/v1/bundles/{sha256}/content",
    tag = "bundles",
    params(
        ("sha256" = String, Path, description = "The bundle's SHA-256 (64 hex characters)"),
        ("Range" = Option<String>, Header, description = "One range: `bytes=FIRST-LAST`, `bytes=FIRST-` or `bytes=-SUFFIX`"),
        ("If-Range" = Option<String>, Header, description = "Serve the range only while the ETag is this"),
    ),
    responses(
        (status = 200, description = "The whole file", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 206, description = "The range asked for (`Content-Range`)", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 400, description = "Not a SHA-256"),
        (status = 404, description = "No such bundle"),
        (status = 416, description = "A range the file does not have, or more than one range"),
    )
)]
#[tracing::instrument(name = "api.bundle_content", skip_all, fields(sha256 = %sha256))]
pub(super) async fn bundle_content(
    caller: Caller,
    State(shared): St,
    Path(sha256): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    // A bundle holds a whole OS image: only those who may roll it out may copy it.
    caller.require(Role::Operator)?;
    let bundle = load(&shared, checked_sha256(&sha256)?).await?;
    let path = shared.bundles.path(&bundle.sha256);
    let open_error = |what: &'static str| {
        let path = path.clone();
        move |source| ApiError::from(BundleError::Io { what, path, source })
    };
    let mut file = tokio::fs::File::open(&path)
        .await
        .map_err(open_error("open"))?;
    let size = file.metadata().await.map_err(open_error("stat"))?.len();
    let etag = format!("\"{}\"", bundle.sha256);
    let if_range_matches = headers
        .get(header::IF_RANGE)
        .is_none_or(|v| v.to_str().is_ok_and(|v| v.trim() == etag));
    let range = headers
        .get(header::RANGE)
        .map(|v| v.to_str().unwrap_or("(not text)"));
    let range = if if_range_matches {
        parse_range(range, size)
    } else {
        RangeRequest::Full
    };
    let mut response_headers = HeaderMap::new();
    response_headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    response_headers.insert(
        header::ETAG,
        HeaderValue::from_str(&etag).expect("hex is a valid header"),
    );
    let (status, start, len) = match range {
        RangeRequest::Full => (StatusCode::OK, 0, size),
        RangeRequest::Part { start, end } => {
            let content_range = format!("bytes {start}-{end}/{size}");
            response_headers.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&content_range).expect("digits"),
            );
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        RangeRequest::Unsatisfiable(reason) => {
            let content_range = format!("bytes */{size}");
            response_headers.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&content_range).expect("digits"),
            );
            let body = ErrorBody::new(ErrorCode::RangeNotSatisfiable, reason);
            return Ok((
                StatusCode::RANGE_NOT_SATISFIABLE,
                response_headers,
                Json(body),
            )
                .into_response());
        }
    };
    if start > 0 {
        file.seek(SeekFrom::Start(start))
            .await
            .map_err(open_error("seek in"))?;
    }
    response_headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    response_headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    let stream = tokio_util::io::ReaderStream::with_capacity(file.take(len), SEND_CHUNK_BYTES);
    tracing::debug!(start, len, "serving bundle");
    Ok((status, response_headers, Body::from_stream(stream)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_clip() {
        let part = |start, end| RangeRequest::Part { start, end };
        assert_eq!(parse_range(None, 100), RangeRequest::Full);
        assert_eq!(parse_range(Some("bytes=0-9"), 100), part(0, 9));
        assert_eq!(parse_range(Some("bytes=90-"), 100), part(90, 99));
        assert_eq!(parse_range(Some("bytes=90-500"), 100), part(90, 99));
        assert_eq!(parse_range(Some("bytes=-10"), 100), part(90, 99));
        assert_eq!(parse_range(Some("bytes=-500"), 100), part(0, 99));
        assert_eq!(parse_range(Some("bytes=99-99"), 100), part(99, 99));
        for bad in [
            "bytes=100-",
            "bytes=5-2",
            "bytes=-0",
            "bytes=0-1,5-6",
            "items=0-1",
            "bytes=x-1",
            "bytes=-",
            "bytes=7",
        ] {
            assert!(
                matches!(parse_range(Some(bad), 100), RangeRequest::Unsatisfiable(_)),
                "{bad}"
            );
        }
        assert!(matches!(
            parse_range(Some("bytes=0-"), 0),
            RangeRequest::Unsatisfiable(_)
        ));
    }
}
