//! The body of every error answer: `{"error": {"code", "message"}}`.

use serde::{Deserialize, Serialize};

use crate::wire_enum::api_enum;

api_enum! {
    /// Machine-readable kind of an error; the HTTP status says the same in coarser terms.
    ErrorCode {
        /// 401: no API token, or one central does not know (or revoked).
        Unauthorized => "unauthorized",
        /// 403: the token's role is too low for this operation.
        Forbidden => "forbidden",
        /// 404: no such object (or route).
        NotFound => "not_found",
        /// 400: the request is not valid; the message says what to change.
        BadRequest => "bad_request",
        /// 409: conflicts with the current state or with central's configuration.
        Conflict => "conflict",
        /// 413: the body is over a limit.
        TooLarge => "too_large",
        /// 416: a byte range the file does not have.
        RangeNotSatisfiable => "range_not_satisfiable",
        /// 502: the device answered with an error.
        DeviceError => "device_error",
        /// 504: the device did not answer in time.
        DeviceTimeout => "device_timeout",
        /// 500: central failed on its side (the details are in its log).
        Internal => "internal",
    }
}

impl Default for ErrorCode {
    /// An error body without a code (not central's) reads as an empty unknown code.
    fn default() -> Self {
        Self::Other(String::new())
    }
}

/// Every answer with a 4xx or 5xx status carries this body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The `error` object of an error body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    /// Machine-readable kind.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub code: ErrorCode,
    /// For people: what failed and what to do.
    pub message: String,
}

impl ErrorBody {
    /// An error body with this code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            error: ErrorDetail {
                code,
                message: message.into(),
            },
        }
    }
}
