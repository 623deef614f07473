//! The admin listener (SPEC §8): `/metrics` (Prometheus text format 0.0.4),
//! `/healthz` (200 while the process runs) and
//! `/readyz` (200 once config is loaded, listeners are bound and every
//! `auth.jwks_urls` set has been fetched once; 503 while one is past
//! `auth.jwks_max_stale`, and from the moment draining starts). It is a separate
//! port so that it can stay on loopback or a management network while the main
//! port faces clients.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::proxy::Gateway;
use crate::proxy::auth::Readiness;

pub async fn serve(listener: TcpListener, draining: Arc<AtomicBool>, gateway: Arc<Gateway>) {
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let draining = draining.clone();
        let builder = builder.clone();
        let gateway = gateway.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let draining = draining.load(Ordering::SeqCst);
                let gateway = gateway.clone();
                async move { Ok::<_, Infallible>(route(&req, draining, &gateway)) }
            });
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn route(req: &Request<Incoming>, draining: bool, gateway: &Gateway) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/metrics" => {
            let mut resp = Response::new(Full::new(Bytes::from(gateway.render_metrics())));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        "/readyz" if draining => text(StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
        "/readyz" => match gateway.keys().readiness() {
            Readiness::Ready => text(StatusCode::OK, "ready\n"),
            Readiness::Fetching => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "waiting for auth.jwks_urls to answer\n",
            ),
            Readiness::Stale => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "a JWKS set is past auth.jwks_max_stale\n",
            ),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
