//! Phase 5, upstream: a keep-alive pool of HTTP/1.1 connections ([`pool`], over a
//! rustls connector, so `https://` upstreams work with webpki roots or
//! `upstream.ca_file`, presenting `upstream.client_cert` when the upstream asks for
//! one), the timeouts of SPEC §5, and the mapping of transport failures to 502/504.
//!
//! Retries happen only when the connection failed before any byte of the request
//! was sent: a connect error (up to `upstream.retries` more tries) or a pooled
//! connection that closed before use (hyper hands the request back; it goes on
//! another connection, not counted as a retry). Anything later may have reached
//! SMH, so it is never sent twice.
//!
//! `upstream.max_in_flight` bounds the exchanges running at once: each holds a
//! [`Permit`] from the request head until its body is read or streamed out. A
//! coalesced renew flight takes its permit in its own task, so a caller that hangs
//! up still counts until the flight ends; `server.max_in_flight` alone cannot bound
//! those. With every permit taken the exchange is not started: 503, counted in
//! `smh_gateway_upstream_refused_total`. The permits are a [`Limit`] that a reload
//! hands on to the next `Upstream` ([`Upstream::carry_over_from`]): exchanges still
//! running on the old settings keep counting against the new capacity. So are the
//! pooled connections, when the reload leaves what they were opened with alone.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::uri::Scheme;
use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri, header};
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;

use crate::config::{ClientAuthFiles, ConfigError, UpstreamConfig};
use crate::error::{GatewayError, UpstreamFailure};
use crate::limit::{Held, Limit};
use crate::metrics::Metrics;

mod pool;

pub use pool::Body;
use pool::{ConnectError, Pool, SendError};

/// Largest upstream body the gateway buffers (renew answers are a few hundred bytes).
pub const MAX_BUFFERED_RESPONSE: usize = 1 << 20;

/// How long an upstream connection may sit idle in the pool: under the 60 s
/// keep-alive of common servers, so the gateway closes first.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(55);
/// Idle upstream connections kept at most.
const POOL_MAX_IDLE: usize = 1024;

pub struct Upstream {
    pool: Pool,
    host_header: HeaderValue,
    base_path: String,
    timeout: Duration,
    retries: u32,
    /// `upstream.max_in_flight` permits.
    slots: Arc<Limit>,
    /// What the pool's connections were opened with, when a reload may keep them:
    /// the URL and the connect timeout, and no `ca_file` or client certificate
    /// (files a reload is often for, to rotate them).
    reusable: Option<(Uri, Duration)>,
}

/// One of `upstream.max_in_flight`: held for as long as one exchange runs.
#[derive(Debug)]
pub struct Permit(#[allow(dead_code)] Held<Arc<Limit>>);

/// A request to send upstream; rebuilt for each attempt, so it owns its parts.
pub struct UpstreamRequest {
    pub method: Method,
    /// Path and query, already rebuilt (renew) or taken verbatim (forward).
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Upstream {
    pub fn new(cfg: &UpstreamConfig, file: &Path) -> Result<Upstream, ConfigError> {
        let tls = tls_config(cfg, file)?;
        let connector = crate::tls_client::connector(tls, cfg.connect_timeout);
        let url = &cfg.url;
        let authority = url
            .authority()
            .cloned()
            .expect("validated: upstream.url has a host");
        let origin = Uri::builder()
            .scheme(url.scheme().cloned().unwrap_or(Scheme::HTTP))
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .expect("a scheme and an authority make a URI");
        Ok(Upstream {
            pool: Pool::new(
                connector,
                origin,
                cfg.connect_timeout,
                POOL_IDLE_TIMEOUT,
                POOL_MAX_IDLE,
            ),
            host_header: HeaderValue::from_str(authority.as_str())
                .expect("an authority is a valid header value"),
            base_path: url.path().to_string(),
            timeout: cfg.timeout,
            retries: cfg.retries,
            slots: Arc::new(Limit::new(cfg.max_in_flight)),
            reusable: (cfg.ca_file.is_none() && cfg.client_auth.is_none())
                .then(|| (cfg.url.clone(), cfg.connect_timeout)),
        })
    }

    /// What a reload carries over from the running `old` upstream. Its permits,
    /// at this upstream's capacity: the exchanges still running on `old` count
    /// here until they end, so a reload never lets more than
    /// `upstream.max_in_flight` run at once. And its pooled connections, when
    /// both were opened the same way (same URL and connect timeout, no TLS files):
    /// a reload then does not make every request open a new connection to SMH.
    pub fn carry_over_from(&mut self, old: &Upstream) {
        let capacity = self.slots.capacity();
        self.slots = old.slots.clone();
        self.slots.set_capacity(capacity);
        if self.reusable.is_some() && self.reusable == old.reusable {
            self.pool = old.pool.clone();
        }
    }

    /// A permit for one exchange, or `UpstreamOverloaded` (counted) when
    /// `upstream.max_in_flight` exchanges are running: the gateway then refuses
    /// rather than queue work the upstream is already behind on.
    pub fn permit(&self, metrics: &Metrics) -> Result<Permit, GatewayError> {
        match self.slots.try_take_owned() {
            Some(permit) => Ok(Permit(permit)),
            None => {
                metrics.upstream_refused();
                Err(GatewayError::UpstreamOverloaded)
            }
        }
    }

    /// `upstream.timeout`.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// `upstream.url`'s own path, which request paths are appended to.
    pub fn base_path(&self) -> &str {
        &self.base_path
    }

    /// Sends with retries on connect failure; returns the response head and the
    /// deadline by which its body must also have arrived (`upstream.timeout`, from
    /// when a connection was had).
    pub async fn send(
        &self,
        req: UpstreamRequest,
    ) -> Result<(Response<Body>, Instant), GatewayError> {
        let uri = Uri::try_from(req.path_and_query)
            .map_err(|_| GatewayError::ParamInvalid("request target cannot be forwarded"))?;
        // `Host` and `Content-Length` are this hop's, set here whatever the caller
        // sent (`headers::upstream_request_headers` leaves them): the upstream's
        // host, and the length of the body actually sent, so that a stale length
        // cannot make SMH read the next request on the connection as this body.
        let mut headers = req.headers;
        headers.insert(header::HOST, self.host_header.clone());
        if !req.body.is_empty() {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(req.body.len()));
        } else if matches!(req.method, Method::POST | Method::PUT | Method::PATCH) {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        } else {
            headers.remove(header::CONTENT_LENGTH);
        }
        let mut request = Request::new(Full::new(req.body));
        *request.method_mut() = req.method;
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        let mut failed_connects = 0;
        loop {
            let conn = match self.pool.checkout().await {
                Ok(conn) => conn,
                Err(ConnectError::Failed | ConnectError::TimedOut) => {
                    if failed_connects >= self.retries {
                        return Err(GatewayError::UpstreamUnavailable(UpstreamFailure::Connect));
                    }
                    failed_connects += 1;
                    continue;
                }
            };
            let reused = conn.reused;
            let deadline = Instant::now() + self.timeout;
            match tokio::time::timeout_at(deadline, conn.send(request)).await {
                Err(_) => return Err(GatewayError::UpstreamTimeout),
                Ok(Ok(resp)) => return Ok((resp, deadline)),
                // A pooled connection closed as it was taken: nothing went out.
                Ok(Err(SendError::NotSent(unsent))) if reused => request = *unsent,
                // A fresh connection that closes before the request is written is
                // the upstream refusing it, as a failed connect is.
                Ok(Err(SendError::NotSent(unsent))) => {
                    if failed_connects >= self.retries {
                        return Err(GatewayError::UpstreamUnavailable(UpstreamFailure::Connect));
                    }
                    failed_connects += 1;
                    request = *unsent;
                }
                Ok(Err(SendError::Failed)) => {
                    return Err(GatewayError::UpstreamUnavailable(UpstreamFailure::Invalid));
                }
            }
        }
    }
}

/// An upstream body read for buffering.
pub enum ReadBody {
    Whole(Bytes),
    /// Over [`MAX_BUFFERED_RESPONSE`]: what was read, and the rest, still unread.
    TooLarge(Bytes, Body),
}

/// Reads an upstream body by `deadline`; one larger than [`MAX_BUFFERED_RESPONSE`]
/// is handed back half-read, to be streamed on rather than refused.
pub async fn read_body(mut body: Body, deadline: Instant) -> Result<ReadBody, GatewayError> {
    use hyper::body::Body as _;
    let read = async {
        let mut buf = bytes::BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame =
                frame.map_err(|_| GatewayError::UpstreamUnavailable(UpstreamFailure::Invalid))?;
            if let Ok(data) = frame.into_data() {
                buf.extend_from_slice(&data);
                if buf.len() > MAX_BUFFERED_RESPONSE && !body.is_end_stream() {
                    return Ok((buf, true));
                }
            }
        }
        Ok::<_, GatewayError>((buf, false))
    };
    match tokio::time::timeout_at(deadline, read).await {
        Err(_) => Err(GatewayError::UpstreamTimeout),
        Ok(Err(e)) => Err(e),
        Ok(Ok((buf, false))) => Ok(ReadBody::Whole(buf.freeze())),
        Ok(Ok((buf, true))) => Ok(ReadBody::TooLarge(buf.freeze(), body)),
    }
}

fn tls_config(cfg: &UpstreamConfig, file: &Path) -> Result<rustls::ClientConfig, ConfigError> {
    let err = |msg: String| ConfigError::new(file, Some("upstream.ca_file".into()), msg);
    let roots = crate::tls_client::roots(cfg.ca_file.as_deref()).map_err(err)?;
    let builder = crate::tls_client::builder(roots).map_err(err)?;
    match &cfg.client_auth {
        None => Ok(builder.with_no_client_auth()),
        Some(files) => {
            let (certs, key) = client_identity(files, file)?;
            builder.with_client_auth_cert(certs, key).map_err(|e| {
                ConfigError::new(
                    file,
                    Some("upstream.client_key".into()),
                    format!("client certificate and key do not fit: {e}"),
                )
            })
        }
    }
}

/// `upstream.client_cert` (a chain, leaf first) and `upstream.client_key`.
fn client_identity(
    files: &ClientAuthFiles,
    file: &Path,
) -> Result<
    (
        Vec<rustls::pki_types::CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
    ),
    ConfigError,
> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let err = |key: &str, msg: String| ConfigError::new(file, Some(key.into()), msg);
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            err(
                "upstream.client_cert",
                format!("{}: {e}", files.cert.display()),
            )
        })?;
    if certs.is_empty() {
        return Err(err(
            "upstream.client_cert",
            format!("{} holds no certificate", files.cert.display()),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        err(
            "upstream.client_key",
            format!("{}: {e}", files.key.display()),
        )
    })?;
    Ok((certs, key))
}

/// An upstream body streamed through to the client, failing when the upstream goes
/// quiet for longer than `upstream.timeout` between two frames: a stalled upstream
/// must not hold a client connection and a request slot forever.
pub struct StreamedBody {
    /// Bytes already read from `inner`, sent first.
    prefix: Option<Bytes>,
    inner: Body,
    idle: Duration,
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
    /// The exchange's `upstream.max_in_flight` slot, until the body ends or is
    /// dropped.
    _permit: Option<Permit>,
}

impl StreamedBody {
    pub fn new(inner: Body, idle: Duration) -> StreamedBody {
        StreamedBody::after(None, inner, idle)
    }

    /// `prefix` (already read from `inner`), then the rest of `inner`.
    pub fn after(prefix: Option<Bytes>, inner: Body, idle: Duration) -> StreamedBody {
        StreamedBody {
            prefix,
            inner,
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
            _permit: None,
        }
    }

    /// Keeps `permit` until the body is done with.
    pub fn holding(mut self, permit: Permit) -> StreamedBody {
        self._permit = Some(permit);
        self
    }
}

/// The upstream stopped sending a body midway.
#[derive(Debug)]
pub struct BodyStalled;

impl std::fmt::Display for BodyStalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("upstream body stalled longer than upstream.timeout")
    }
}

impl std::error::Error for BodyStalled {}

impl hyper::body::Body for StreamedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        use std::future::Future;
        use std::task::Poll;
        let this = &mut *self;
        if let Some(prefix) = this.prefix.take() {
            return Poll::Ready(Some(Ok(hyper::body::Frame::data(prefix))));
        }
        match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                let deadline = Instant::now() + this.idle;
                this.timer.as_mut().reset(deadline);
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyStalled)))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        let inner = self.inner.size_hint();
        let extra = self.prefix.as_ref().map_or(0, |p| p.len() as u64);
        let mut hint = hyper::body::SizeHint::new();
        hint.set_lower(inner.lower() + extra);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + extra);
        }
        hint
    }
}
