//! OTLP/HTTP: `POST /v1/traces` with `application/x-protobuf` or `application/json`, optionally gzip. The answer is
//! in the request's encoding: an `ExportTraceServiceResponse` (with `partialSuccess` when spans were rejected), or
//! for errors a `google.rpc.Status` (protobuf requests, as OTLP specifies) or kla's `{"code","message"}` (JSON and
//! everything else). 429 and 503 answers carry `Retry-After`, and in protobuf a `google.rpc.RetryInfo` detail with
//! the same delay.

use super::{Accepted, Encoding, Otlp, OtlpError};
use crate::error::{Class, Classify};
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http_body_util::BodyExt;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceResponse,
};
use prost::Message;

/// Bodies larger than this (as received) are inflated and decoded off the runtime's workers.
const BLOCKING_BYTES: usize = 256 << 10;

pub(super) fn router(otlp: Otlp) -> Router {
    Router::new()
        .route("/v1/traces", post(export))
        .fallback(|uri: axum::http::Uri| async move {
            error(
                None,
                None,
                StatusCode::NOT_FOUND,
                "not_found",
                &format!("no route for {} (OTLP/HTTP takes POST /v1/traces)", uri.path()),
            )
        })
        .method_not_allowed_fallback(|method: axum::http::Method| async move {
            error(
                None,
                None,
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request",
                &format!("method {method} is not allowed on /v1/traces (use POST)"),
            )
        })
        .layer(axum::middleware::from_fn(crate::server::request_id::layer))
        .with_state(otlp)
}

/// An error answer; `retry_after` (seconds) becomes `Retry-After` and, in protobuf, a `RetryInfo` detail.
fn error(
    encoding: Option<Encoding>,
    retry_after: Option<u64>,
    status: StatusCode,
    code: &str,
    message: &str,
) -> Response {
    let mut resp = match encoding {
        Some(Encoding::Protobuf) => {
            let grpc = match status {
                StatusCode::BAD_REQUEST => 3,
                StatusCode::UNAUTHORIZED => 16,
                StatusCode::FORBIDDEN => 7,
                StatusCode::PAYLOAD_TOO_LARGE | StatusCode::TOO_MANY_REQUESTS => 8,
                StatusCode::SERVICE_UNAVAILABLE => 14,
                _ => 13,
            };
            let body = super::status::encode(grpc, message, retry_after);
            (
                status,
                [(header::CONTENT_TYPE, Encoding::Protobuf.content_type())],
                body,
            )
                .into_response()
        }
        _ => (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::json!({"code": code, "message": message}).to_string(),
        )
            .into_response(),
    };
    if let Some(secs) = retry_after {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

fn otlp_error(encoding: Option<Encoding>, e: &OtlpError) -> Response {
    let (status, code) = match e.class() {
        Class::Invalid => (StatusCode::BAD_REQUEST, "invalid_request"),
        Class::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "invalid_request"),
        Class::Unauthenticated => (StatusCode::UNAUTHORIZED, "unauthorized"),
        Class::Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
        Class::RateLimited => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "internal_error"),
    };
    error(encoding, e.retry_after(), status, code, &e.to_string())
}

fn success(encoding: Encoding, a: &Accepted) -> Response {
    let body = match encoding {
        Encoding::Protobuf => ExportTraceServiceResponse {
            partial_success: (a.rejected > 0).then(|| ExportTracePartialSuccess {
                rejected_spans: i64::try_from(a.rejected).unwrap_or(i64::MAX),
                error_message: a.message.clone(),
            }),
        }
        .encode_to_vec(),
        // The OTLP JSON mapping writes int64 as a decimal string.
        Encoding::Json if a.rejected > 0 => serde_json::json!({
            "partialSuccess": {"rejectedSpans": a.rejected.to_string(), "errorMessage": a.message}
        })
        .to_string()
        .into_bytes(),
        Encoding::Json => b"{}".to_vec(),
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, encoding.content_type())],
        body,
    )
        .into_response()
}

async fn export(State(otlp): State<Otlp>, headers: HeaderMap, body: Body) -> Response {
    let Some(encoding) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(Encoding::of_content_type)
    else {
        return error(
            None,
            None,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request",
            "Content-Type must be application/x-protobuf or application/json",
        );
    };
    let enc = Some(encoding);
    let gzip = match headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim())
    {
        None | Some("" | "identity") => false,
        Some(v) if v.eq_ignore_ascii_case("gzip") => true,
        Some(v) => {
            return error(
                enc,
                None,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "invalid_request",
                &format!("Content-Encoding {v:?} is not supported (gzip or none)"),
            );
        }
    };
    let tenant = match otlp.authorize(
        headers.get(header::AUTHORIZATION).map(HeaderValue::as_bytes),
        headers.get(crate::server::X_TENANT_ID).map(HeaderValue::as_bytes),
    ) {
        Ok(t) => t,
        Err(e) => return otlp_error(enc, &e),
    };
    // The rate and the slot are taken before the body is read: a throttled or refused export costs no reading,
    // inflating or decoding.
    if let Err(e) = otlp.rate(&tenant) {
        return otlp_error(enc, &e);
    }
    let slot = match otlp.slot() {
        Ok(s) => s,
        Err(e) => return otlp_error(enc, &e),
    };
    let limit = otlp.max_body();
    let raw: bytes::Bytes = match http_body_util::Limited::new(body, limit).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => {
            return if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                otlp_error(
                    enc,
                    &OtlpError::TooLarge(format!("the export is over {limit} bytes")),
                )
            } else {
                // The connection's body timeout or a broken connection; the client may retry.
                otlp_error(
                    enc,
                    &OtlpError::Invalid(format!("the body could not be read: {e}")),
                )
            };
        }
    };
    let raw_len = raw.len();
    let decode = move || {
        if gzip {
            super::decode(encoding, &super::gunzip(&raw, limit)?)
        } else {
            super::decode(encoding, &raw)
        }
    };
    // A large body is inflated and decoded on a blocking thread, so it does not hold up a runtime worker.
    let decoded = if raw_len > BLOCKING_BYTES {
        match tokio::task::spawn_blocking(decode).await {
            Ok(r) => r,
            Err(e) => Err(OtlpError::Unavailable(format!("decoding failed: {e}"))),
        }
    } else {
        decode()
    };
    let req = match decoded {
        Ok(r) => r,
        Err(e) => return otlp_error(enc, &e),
    };
    match otlp.ingest(tenant, req, slot).await {
        Ok(a) => success(encoding, &a),
        Err(e) => otlp_error(enc, &e),
    }
}
