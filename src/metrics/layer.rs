//! A tower layer on the gRPC server: counts and times every RPC by method
//! and gRPC code.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::codegen::http;

use super::{code_name, Metrics};

/// Adds [`RequestMetrics`] around a service.
#[derive(Clone)]
pub struct RequestMetricsLayer(pub Arc<Metrics>);

impl<S> tower::Layer<S> for RequestMetricsLayer {
    type Service = RequestMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestMetrics {
            inner,
            metrics: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RequestMetrics<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

/// The method's name from a gRPC path (`/keywarden.v1.DataKeyService/Decrypt`).
fn method_of(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or("unknown")
}

impl<S, B, R> tower::Service<http::Request<B>> for RequestMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    R: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path().to_string();
        let start = Instant::now();
        let fut = self.inner.call(req);
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let res = fut.await;
            // An error status comes in the headers (a trailers-only answer);
            // a success's status follows in the trailers: OK here.
            let code = match &res {
                Ok(r) => r
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map(code_name)
                    .unwrap_or("OK"),
                Err(_) => "UNAVAILABLE",
            };
            // Paths the server does not serve are one label, so that a
            // client cannot grow the series without bound.
            let method = if code == "UNIMPLEMENTED" {
                "unknown"
            } else {
                method_of(&path)
            };
            metrics.request(method, code, start.elapsed());
            res
        })
    }
}
