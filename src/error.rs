//! How every error in kla is classified, once, where it is raised: who is at fault and whether a retry helps.
//!
//! Each module keeps its own error enum (thiserror) and implements [`Classify`] for it; the edges render the
//! class in their own protocol: the REST API as `{"code","message"}` with the KLA Control Plane API's codes
//! (`server::error`), and, as they arrive, MCP JSON-RPC errors and OTLP/gRPC statuses through [`Class::jsonrpc_code`]
//! and [`Class::grpc_code`]. No edge matches on another module's variants: adding a variant means classifying it
//! here, not at every call site. This module knows no protocol types.

/// Who must act for the error to go away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The request is wrong (bad input, missing permission, unknown id): fix the request.
    Caller,
    /// Something kla depends on and does not own failed (a tool's upstream, an identity provider).
    Upstream,
    /// kla itself (its disk, its store, a bug).
    Kla,
}

/// What went wrong, in the terms every edge renders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Malformed or invalid input.
    Invalid,
    /// A body over the accepted size.
    TooLarge,
    /// No valid credentials.
    Unauthenticated,
    /// Valid credentials without the permission.
    Forbidden,
    /// No such resource (in the caller's tenant).
    NotFound,
    /// The request clashes with stored state (a duplicate, a reused idempotency key, a decided approval).
    Conflict,
    /// Over a rate limit.
    RateLimited,
    /// A service kla relies on answered with an error or not at all.
    UpstreamFailed,
    /// kla cannot take the request now (its store or ledger is failing or busy); retry with backoff.
    Unavailable,
    /// A bug or corrupt state in kla; a retry does not help.
    Internal,
}

impl Class {
    /// Who is at fault.
    pub fn fault(self) -> Fault {
        match self {
            Class::Invalid
            | Class::TooLarge
            | Class::Unauthenticated
            | Class::Forbidden
            | Class::NotFound
            | Class::Conflict
            | Class::RateLimited => Fault::Caller,
            Class::UpstreamFailed => Fault::Upstream,
            Class::Unavailable | Class::Internal => Fault::Kla,
        }
    }

    /// Whether the same request may succeed later unchanged.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            Class::RateLimited | Class::UpstreamFailed | Class::Unavailable
        )
    }

    /// The JSON-RPC 2.0 error code for MCP answers: -32602 (invalid params) for the caller's input, -32603
    /// (internal error) for kla's faults, and codes of the implementation-defined range (-32000 to -32099)
    /// for the rest, so an MCP client can tell refusal from failure.
    pub fn jsonrpc_code(self) -> i64 {
        match self {
            Class::Invalid | Class::TooLarge => -32602,
            Class::Unauthenticated => -32001,
            Class::Forbidden => -32003,
            Class::NotFound => -32004,
            Class::Conflict => -32009,
            Class::RateLimited => -32029,
            Class::UpstreamFailed => -32002,
            Class::Unavailable | Class::Internal => -32603,
        }
    }

    /// The gRPC status code (as in `google.rpc.Code`) for OTLP/gRPC answers.
    pub fn grpc_code(self) -> i32 {
        match self {
            Class::Invalid => 3,          // INVALID_ARGUMENT
            Class::TooLarge => 8,         // RESOURCE_EXHAUSTED
            Class::Unauthenticated => 16, // UNAUTHENTICATED
            Class::Forbidden => 7,        // PERMISSION_DENIED
            Class::NotFound => 5,         // NOT_FOUND
            Class::Conflict => 6,         // ALREADY_EXISTS
            Class::RateLimited => 8,      // RESOURCE_EXHAUSTED
            Class::UpstreamFailed => 14,  // UNAVAILABLE
            Class::Unavailable => 14,     // UNAVAILABLE
            Class::Internal => 13,        // INTERNAL
        }
    }
}

/// An error that knows its [`Class`]. Its `Display` is what a caller may read when the fault is the caller's;
/// for kla's and upstreams' faults the edges log it and answer with a generic message.
pub trait Classify: std::error::Error {
    /// The class of this error.
    fn class(&self) -> Class;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transient_classes_are_retryable() {
        let all = [
            Class::Invalid,
            Class::TooLarge,
            Class::Unauthenticated,
            Class::Forbidden,
            Class::NotFound,
            Class::Conflict,
            Class::RateLimited,
            Class::UpstreamFailed,
            Class::Unavailable,
            Class::Internal,
        ];
        let retryable: Vec<_> = all.into_iter().filter(|c| c.retryable()).collect();
        assert_eq!(
            retryable,
            [Class::RateLimited, Class::UpstreamFailed, Class::Unavailable]
        );
        for c in all {
            // A caller's fault never renders as the protocol's "internal error".
            if c.fault() == Fault::Caller {
                assert_ne!(c.jsonrpc_code(), -32603, "{c:?}");
                assert_ne!(c.grpc_code(), 13, "{c:?}");
            }
        }
    }
}
