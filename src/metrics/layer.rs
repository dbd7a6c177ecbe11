//! A tower layer on the gRPC server: counts and times every RPC by method
//! and gRPC code.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::codegen::http;

use super::{code_name, Metrics};

/// Adds [`RequestMetrics`] around a service.
#[derive(Clone)]
pub struct RequestMetricsLayer {
    metrics: Arc<Metrics>,
    /// Every path the server serves: anything else is `unknown`, so no
    /// client can add series by sending paths of its own.
    known: Arc<HashSet<String>>,
}

impl RequestMetricsLayer {
    /// The known paths are every method of every service in
    /// `descriptors` (an encoded `FileDescriptorSet`) and gRPC reflection.
    pub fn new(metrics: Arc<Metrics>, descriptors: &[u8]) -> Self {
        use prost::Message;
        let mut known: HashSet<String> = [
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ]
        .into_iter()
        .map(str::to_string)
        .collect();
        if let Ok(set) = prost_types::FileDescriptorSet::decode(descriptors) {
            for f in set.file {
                let package = f.package.unwrap_or_default();
                for svc in f.service {
                    let name = svc.name.unwrap_or_default();
                    for m in svc.method {
                        known.insert(format!("/{package}.{name}/{}", m.name.unwrap_or_default()));
                    }
                }
            }
        }
        RequestMetricsLayer {
            metrics,
            known: Arc::new(known),
        }
    }
}

impl<S> tower::Layer<S> for RequestMetricsLayer {
    type Service = RequestMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestMetrics {
            inner,
            metrics: self.metrics.clone(),
            known: self.known.clone(),
        }
    }
}

/// A service with each call counted and timed in [`Metrics`] (made by
/// [`RequestMetricsLayer`]).
#[derive(Clone)]
pub struct RequestMetrics<S> {
    inner: S,
    metrics: Arc<Metrics>,
    known: Arc<HashSet<String>>,
}

/// A call in flight: recorded as `CANCELLED` if its future is dropped
/// before it answers (the server's timeout, a client's deadline or reset).
struct InFlight {
    metrics: Arc<Metrics>,
    method: String,
    start: Instant,
    done: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.done {
            self.metrics
                .request(&self.method, "CANCELLED", self.start.elapsed());
        }
    }
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
        let path = req.uri().path();
        let method = if self.known.contains(path) {
            path.rsplit('/').next().unwrap_or("unknown").to_string()
        } else {
            "unknown".to_string()
        };
        let mut flight = InFlight {
            metrics: self.metrics.clone(),
            method,
            start: Instant::now(),
            done: false,
        };
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await;
            // An error status comes in the headers (a trailers-only answer);
            // a success's status follows in the trailers: OK here. For a
            // stream this is the time to its first message, and an error
            // later in it is not seen.
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
            flight.done = true;
            flight
                .metrics
                .request(&flight.method, code, flight.start.elapsed());
            res
        })
    }
}
