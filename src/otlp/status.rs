//! The `google.rpc` messages OTLP answers carry: `Status` (the body of OTLP/HTTP protobuf errors, and gRPC's
//! `grpc-status-details-bin`) and `RetryInfo`, the retry delay OTLP's throttling asks a server to give with
//! 429 / RESOURCE_EXHAUSTED and may give with 503 / UNAVAILABLE.

use prost::Message;

/// `google.rpc.Status`.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
    #[prost(message, repeated, tag = "3")]
    pub details: Vec<ProtoAny>,
}

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct ProtoAny {
    #[prost(string, tag = "1")]
    pub type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// `google.rpc.RetryInfo`.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    pub retry_delay: Option<ProtoDuration>,
}

/// `google.protobuf.Duration`.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct ProtoDuration {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

const RETRY_INFO_TYPE: &str = "type.googleapis.com/google.rpc.RetryInfo";

/// `RetryInfo` with a delay of `secs`, encoded.
pub(super) fn retry_info(secs: u64) -> Vec<u8> {
    RetryInfo {
        retry_delay: Some(ProtoDuration {
            seconds: i64::try_from(secs).unwrap_or(i64::MAX),
            nanos: 0,
        }),
    }
    .encode_to_vec()
}

/// `google.rpc.Status` with `code` and `message`, and a `RetryInfo` detail when `retry_after` is given, encoded.
pub(super) fn encode(code: i32, message: &str, retry_after: Option<u64>) -> Vec<u8> {
    RpcStatus {
        code,
        message: message.to_owned(),
        details: retry_after
            .map(|s| ProtoAny {
                type_url: RETRY_INFO_TYPE.into(),
                value: retry_info(s),
            })
            .into_iter()
            .collect(),
    }
    .encode_to_vec()
}
