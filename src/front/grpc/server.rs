//! The gRPC front end's transport: the tonic server on the Unix socket,
//! its limits (request size, concurrency, streams per connection, a
//! deadline per call), its request metrics, reflection, and the record of
//! messages that do not decode.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixListener;

use super::datakey::DataKeyApi;
use super::keys::KeyApi;
use super::mac::MacApi;
use super::operator::{BackupTarget, OperatorApi};
use super::Ctx;
use crate::audit::{AuditSink, EventKind, Outcome};
use crate::proto;
use crate::server::{MAX_CONCURRENT_REQUESTS, MAX_REQUEST_BYTES, MAX_STREAMS_PER_CONNECTION};

/// Serves every gRPC service on `listener` until `stop` completes, then
/// lets in-flight calls finish.
pub async fn serve(
    ctx: Ctx,
    backup: BackupTarget,
    listener: UnixListener,
    audit: Arc<dyn AuditSink>,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    // A message that does not decode is refused as INVALID_ARGUMENT by the
    // codec (keywarden-proto) and recorded here as one bounded line.
    keywarden_proto::codec::on_malformed(Box::new(move |what| {
        audit.record_event(
            EventKind::MalformedRequest,
            Outcome::Refused,
            serde_json::json!({"code": "InvalidArgument", "message": what}),
        )
    }));
    // Both reflection protocols: grpcurl and most tools speak v1, Python's
    // grpcio-reflection client (and older tools) v1alpha.
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let incoming = crate::server::conn::incoming(listener, ctx.connections.clone());
    tonic::transport::Server::builder()
        .timeout(Duration::from_secs(30))
        .concurrency_limit_per_connection(256)
        // HTTP/2 streams one connection may hold open at once (a stream
        // that is never read holds buffers): clients queue past it.
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            MAX_CONCURRENT_REQUESTS,
        ))
        .layer(crate::metrics::layer::RequestMetricsLayer::new(
            ctx.metrics.clone(),
            proto::FILE_DESCRIPTOR_SET,
        ))
        .add_service(
            proto::data_key_service_server::DataKeyServiceServer::new(DataKeyApi::new(ctx.clone()))
                .max_decoding_message_size(MAX_REQUEST_BYTES),
        )
        .add_service(
            proto::key_service_server::KeyServiceServer::new(KeyApi::new(ctx.clone()))
                .max_decoding_message_size(MAX_REQUEST_BYTES),
        )
        .add_service(
            proto::mac_service_server::MacServiceServer::new(MacApi::new(ctx.clone()))
                .max_decoding_message_size(MAX_REQUEST_BYTES),
        )
        .add_service(
            proto::operator_service_server::OperatorServiceServer::new(
                OperatorApi::new(ctx.clone()).with_backup(backup),
            )
            .max_decoding_message_size(MAX_REQUEST_BYTES),
        )
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(incoming, stop)
        .await?;
    Ok(())
}
