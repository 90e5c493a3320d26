//! The one place where errors become HTTP responses: `{"code","message"}` with the KLA Control Plane API's codes.
//! Domain errors arrive already classified ([`crate::error::Classify`]); this module only renders the class.

use crate::error::{Class, Classify};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// The error kinds kla answers with. The wire `code` is always one of the KLA Control Plane API's seven codes, so a
/// client written against that API knows every code it can get; statuses its table does not list (405, 413, 502,
/// 503) carry the code closest in meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// 400: malformed JSON or a failed schema validation.
    InvalidRequest,
    /// 401: missing, expired or invalid bearer token.
    Unauthorized,
    /// 403: valid token without permission for this tenant or action.
    Forbidden,
    /// 404: unknown resource or route.
    NotFound,
    /// 405: the route exists but not with this method.
    MethodNotAllowed,
    /// 409: idempotency key reuse, duplicate registration, request still in flight.
    Conflict,
    /// 413: body over the configured limit.
    PayloadTooLarge,
    /// 415: a body whose declared media type cannot be read (the tool-call proxy's actions read JSON).
    UnsupportedMediaType,
    /// 429: rate limit exceeded.
    RateLimited,
    /// 500: our fault; retry with backoff.
    Internal,
    /// 502: a service kla relies on failed.
    BadGateway,
    /// 503: a dependency (store, ledger) is unavailable; retry with backoff.
    Unavailable,
}

impl Code {
    /// The HTTP status for this code.
    pub fn status(self) -> StatusCode {
        match self {
            Code::InvalidRequest => StatusCode::BAD_REQUEST,
            Code::Unauthorized => StatusCode::UNAUTHORIZED,
            Code::Forbidden => StatusCode::FORBIDDEN,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Code::Conflict => StatusCode::CONFLICT,
            Code::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Code::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Code::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Code::BadGateway => StatusCode::BAD_GATEWAY,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The wire string. Every 5xx is `internal_error`, as in the KLA Control Plane API; 405, 413 and 415 are
    /// `invalid_request`.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::InvalidRequest
            | Code::MethodNotAllowed
            | Code::PayloadTooLarge
            | Code::UnsupportedMediaType => "invalid_request",
            Code::Unauthorized => "unauthorized",
            Code::Forbidden => "forbidden",
            Code::NotFound => "not_found",
            Code::Conflict => "conflict",
            Code::RateLimited => "rate_limited",
            Code::Internal | Code::BadGateway | Code::Unavailable => "internal_error",
        }
    }
}

/// An API error: a code, a human message, and an optional `Retry-After` in seconds.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// Machine-readable code.
    pub code: Code,
    /// Human-readable message; never contains secrets.
    pub message: String,
    /// Seconds to wait before retrying, sent as `Retry-After`.
    pub retry_after: Option<u64>,
    /// More fields of the body (a conflict's stored state); boxed to keep the common error small.
    pub detail: Option<Box<serde_json::Map<String, serde_json::Value>>>,
}

#[derive(Serialize)]
struct Body<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    detail: Option<&'a serde_json::Map<String, serde_json::Value>>,
}

impl ApiError {
    /// A new error with `code` and `message`.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            retry_after: None,
            detail: None,
        }
    }
    /// 400 `invalid_request`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidRequest, message)
    }
    /// 401 `unauthorized`.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(Code::Unauthorized, message)
    }
    /// 403 `forbidden`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(Code::Forbidden, message)
    }
    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Code::NotFound, message)
    }
    /// 409 `conflict`.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(Code::Conflict, message)
    }
    /// 500 `internal_error`; the detail is logged, not sent.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(Code::Internal, "internal error; retry with backoff")
    }
    /// 503 `internal_error` for an unavailable dependency; the detail is logged.
    pub fn unavailable(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "dependency unavailable");
        let mut e = Self::new(
            Code::Unavailable,
            "service temporarily unavailable; retry with backoff",
        );
        e.retry_after = Some(1);
        e
    }
    /// Adds a field to the body beside `code` and `message`.
    pub fn with_detail(mut self, key: &str, value: serde_json::Value) -> Self {
        self.detail
            .get_or_insert_with(Default::default)
            .insert(key.to_owned(), value);
        self
    }
    /// Adds a `Retry-After` header.
    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&Body {
            code: self.code.as_str(),
            message: &self.message,
            detail: self.detail.as_deref(),
        })
        .unwrap_or_default();
        let mut resp = (
            self.code.status(),
            [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
            body,
        )
            .into_response();
        if self.code == Code::Unauthorized {
            // RFC 6750 section 3: a 401 names the scheme the client must use.
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

impl ApiError {
    /// The answer for a classified domain error: the caller's faults carry the error's own message; kla's and
    /// upstreams' faults are logged and answered with a generic one (their text may name files or internals).
    pub fn classified(e: &(impl Classify + ?Sized)) -> Self {
        match e.class() {
            Class::Invalid => Self::invalid(e.to_string()),
            Class::TooLarge => Self::new(Code::PayloadTooLarge, e.to_string()),
            Class::Unauthenticated => Self::unauthorized(e.to_string()),
            Class::Forbidden => Self::forbidden(e.to_string()),
            Class::NotFound => Self::not_found(e.to_string()),
            Class::Conflict => Self::conflict(e.to_string()),
            Class::RateLimited => Self::new(Code::RateLimited, e.to_string()).with_retry_after(1),
            Class::UpstreamFailed => {
                tracing::warn!(error = %e, "upstream failed");
                Self::new(Code::BadGateway, "an upstream service failed; retry with backoff")
            }
            Class::Unavailable => Self::unavailable(e),
            Class::Internal => Self::internal(e),
        }
    }
}

/// `From` for every domain error an API handler meets, so handlers use `?` and the mapping lives in one place.
macro_rules! from_classified {
    ($($t:ty),* $(,)?) => {
        $(impl From<$t> for ApiError {
            fn from(e: $t) -> Self {
                ApiError::classified(&e)
            }
        })*
    };
}

from_classified!(
    crate::auth::AuthError,
    crate::ledger::LedgerError,
    crate::recorder::RecordError,
    crate::registry::RegistryError,
    crate::store::StoreError,
    crate::decide::DecideError,
    crate::executions::ExecutionError,
);

impl From<crate::approvals::ApprovalError> for ApiError {
    fn from(e: crate::approvals::ApprovalError) -> Self {
        match e {
            // A conflict answers with the approval as stored, so the loser learns what won.
            crate::approvals::ApprovalError::Conflict { message, approval } => {
                ApiError::conflict(message).with_detail("approval", *approval)
            }
            e => ApiError::classified(&e),
        }
    }
}

/// Result alias for handlers.
pub type ApiResult<T> = Result<T, ApiError>;
