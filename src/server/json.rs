//! The JSON body extractor ([`RawJson`]: read now, parse after the role check) whose errors are `invalid_request`
//! messages that name the field, and 413 (code `invalid_request`) for bodies over the limit. Every body is refused
//! if any object in it repeats a key.

use super::{ApiError, Code};
use axum::extract::{FromRef, FromRequest, Request};
use axum::http::header;
use serde::de::DeserializeOwned;

/// Reads a whole body, refusing more than `limit` bytes with 413.
pub async fn read_body(body: axum::body::Body, limit: usize) -> Result<bytes::Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
            || e.to_string().contains("length limit");
        if too_large {
            ApiError::new(
                Code::PayloadTooLarge,
                format!("request body is larger than {limit} bytes"),
            )
        } else {
            ApiError::invalid(format!("could not read request body: {e}"))
        }
    })
}

/// Parses JSON into `T`, naming the offending field in the error. An object that repeats a key, at any depth, is
/// refused first (`crate::json`): a `Value` or `Map` field would otherwise keep the last occurrence silently.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    crate::json::check_unique_keys(bytes).map_err(|e| ApiError::invalid(e.to_string()))?;
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::invalid(format!("malformed JSON: {inner}"))
        } else if path == "." || path.is_empty() {
            ApiError::invalid(inner.to_string())
        } else {
            ApiError::invalid(format!("field '{path}': {inner}"))
        }
    })?;
    de.end()
        .map_err(|e| ApiError::invalid(format!("malformed JSON: trailing characters ({e})")))?;
    Ok(value)
}

/// A JSON body read but not yet parsed, for handlers that check the caller's role first (so a caller without
/// permission gets 403 whatever the body, and no work is spent parsing it).
pub struct RawJson(pub bytes::Bytes);

impl RawJson {
    /// Parses the body into `T` (errors name the field).
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        parse(&self.0)
    }
}

/// The largest body a router's JSON bodies may have: its state provides it (`FromRef`), so [`RawJson`] works in any
/// router whose state knows its limit.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

impl<S: Send + Sync> FromRequest<S> for RawJson
where
    BodyLimit: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        read_json_body(req, BodyLimit::from_ref(state)).await.map(RawJson)
    }
}

/// Checks the content type and reads the body within the limit.
async fn read_json_body(req: Request, limit: BodyLimit) -> Result<bytes::Bytes, ApiError> {
    if let Some(ct) = req.headers().get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("");
        let essence = ct.split(';').next().unwrap_or("").trim();
        if !essence.eq_ignore_ascii_case("application/json") && !essence.ends_with("+json") {
            return Err(ApiError::invalid(format!(
                "Content-Type must be application/json, got {ct:?}"
            )));
        }
    }
    let bytes = read_body(req.into_body(), limit.0).await?;
    if bytes.is_empty() {
        return Err(ApiError::invalid("request body is empty; expected a JSON object"));
    }
    Ok(bytes)
}

/// A path parameter whose rejection (bad percent-encoding, bad UTF-8) is a `{"code","message"}` 400, not axum's text.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> axum::extract::FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(v)| ApiPath(v))
            .map_err(|e| ApiError::invalid(format!("path: {}", e.body_text())))
    }
}

/// Query parameters whose rejection (missing, unknown or mistyped) is a `{"code","message"}` 400 naming the problem.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> axum::extract::FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(v)| ApiQuery(v))
            .map_err(|e| ApiError::invalid(format!("query: {}", e.body_text())))
    }
}
