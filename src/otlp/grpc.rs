//! OTLP/gRPC: the `TraceService/Export` method, served by tonic's generated service inside the listener's axum
//! router (so the listener's limits, timeouts and drain apply as on every kla listener). gzip requests are
//! accepted; the message size limit is checked by tonic on the inflated message. Errors are gRPC statuses from the
//! error's class (`error::Class::grpc_code`); UNAVAILABLE answers carry a `RetryInfo`-free hint in their message,
//! and exporters retry UNAVAILABLE with backoff.

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
    Status::new(tonic::Code::from_i32(e.class().grpc_code()), e.to_string())
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
                md.get(crate::api::auth::X_TENANT_ID).map(|v| v.as_bytes()),
            )
            .map_err(|e| status(&e))?;
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
