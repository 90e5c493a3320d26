//! OTLP/gRPC: the `TraceService/Export` method, served by tonic's generated service inside the listener's axum
//! router (so the listener's limits, timeouts and drain apply as on every kla listener). gzip requests are
//! accepted; the message size limit is checked by tonic on the inflated message. Errors are gRPC statuses from the
//! error's class (`error::Class::grpc_code`). RESOURCE_EXHAUSTED for a rate or quota and UNAVAILABLE carry the
//! retry delay as OTLP's throttling defines it: a `google.rpc.RetryInfo` detail in `grpc-status-details-bin` (and
//! the same `RetryInfo` as `google.rpc.retryinfo-bin` metadata, which some exporters read instead). Without it
//! OTLP clients treat RESOURCE_EXHAUSTED as final, so an export over `max-body` carries none.

use super::{Otlp, OtlpError};
use crate::error::Classify;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status};

struct Service(Otlp);

fn status(e: &OtlpError) -> Status {
    let code = e.class().grpc_code();
    let Some(secs) = e.retry_after() else {
        return Status::new(tonic::Code::from_i32(code), e.to_string());
    };
    let message = e.to_string();
    let details = super::status::encode(code, &message, Some(secs));
    let mut md = tonic::metadata::MetadataMap::new();
    md.insert_bin(
        "google.rpc.retryinfo-bin",
        tonic::metadata::MetadataValue::from_bytes(&super::status::retry_info(secs)),
    );
    Status::with_details_and_metadata(tonic::Code::from_i32(code), message, details.into(), md)
}

#[tonic::async_trait]
impl TraceService for Service {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let md = request.metadata();
        let tenant = self
            .0
            .authorize(
                md.get("authorization").map(|v| v.as_bytes()),
                md.get(crate::server::X_TENANT_ID).map(|v| v.as_bytes()),
            )
            .map_err(|e| status(&e))?;
        self.0.rate(&tenant).map_err(|e| status(&e))?;
        let slot = self.0.slot().map_err(|e| status(&e))?;
        let a = self
            .0
            .ingest(tenant, request.into_inner(), slot)
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: (a.rejected > 0).then(|| ExportTracePartialSuccess {
                rejected_spans: i64::try_from(a.rejected).unwrap_or(i64::MAX),
                error_message: a.message,
            }),
        }))
    }
}

pub(super) fn router(otlp: Otlp) -> axum::Router {
    let limit = otlp.max_body();
    let svc = TraceServiceServer::new(Service(otlp))
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(limit);
    // Every path goes to the service, which answers UNIMPLEMENTED for methods it does not have.
    axum::Router::new().fallback_service(svc)
}
