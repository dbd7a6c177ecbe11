//! Thin gRPC handlers: protobuf in, domain types to the core, protobuf out.
//! Errors go through the one table in [`status`].

pub mod datakey;
pub mod keys;
pub mod operator;
pub mod status;

use std::sync::Arc;

use tonic::Status;

use crate::core::Keywarden;

/// Runs a blocking core call off the async runtime.
pub(crate) async fn blocking<T, F>(core: &Arc<Keywarden>, f: F) -> Result<T, Status>
where
    T: Send + 'static,
    F: FnOnce(&Keywarden) -> T + Send + 'static,
{
    let core = Arc::clone(core);
    tokio::task::spawn_blocking(move || f(&core))
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "core task failed");
            Status::internal("internal error")
        })
}
