//! Listeners and connections: bind (after everything is validated), accept with a
//! connection limit, optional TLS, HTTP/1.1 (and HTTP/2 when TLS negotiates it by
//! ALPN; plaintext is HTTP/1.1 only, which spares every request the protocol
//! sniffing of hyper-util's auto builder), idle connections closed, and the graceful drain on shutdown:
//! `/readyz` turns 503, the listener closes, every connection is told to finish its
//! in-flight requests, and the process waits up to `server.shutdown_grace`.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulConnection;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::access_log::AccessLog;
use crate::cache::RenewCache;
use crate::config::{Config, ConfigError, ServerConfig, TlsFiles};
use crate::error::GatewayError;
use crate::proxy::upstream::Upstream;
use crate::proxy::{ClientInfo, Gateway, Settings};

/// A gateway whose config, keys and upstream are ready and whose ports are bound.
pub struct Server {
    gateway: Arc<Gateway>,
    listener: TcpListener,
    admin: TcpListener,
    tls: Option<TlsAcceptor>,
    server: ServerConfig,
    draining: Arc<AtomicBool>,
}

/// Why `serve` could not start: a config problem (exit 2) or a bind failure.
#[derive(Debug)]
pub enum StartError {
    Config(ConfigError),
    Bind {
        what: &'static str,
        addr: SocketAddr,
        error: io::Error,
    },
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Config(e) => write!(f, "{e}"),
            StartError::Bind { what, addr, error } => {
                write!(f, "cannot bind {what} {addr}: {error}")
            }
        }
    }
}

impl std::error::Error for StartError {}

impl From<ConfigError> for StartError {
    fn from(e: ConfigError) -> Self {
        StartError::Config(e)
    }
}

/// Everything `serve` checks before binding a port: secrets, upstream TLS roots,
/// server certificate, the Redis URL. `check` runs the same.
pub fn prepare(config: Config) -> Result<(Settings, Upstream, Option<TlsAcceptor>), ConfigError> {
    let upstream = Upstream::new(&config.upstream, &config.source)?;
    crate::cache::check_config(&config)?;
    let tls = config
        .server
        .tls
        .as_ref()
        .map(|files| tls_acceptor(files, &config))
        .transpose()?;
    let settings = Settings::from_config(config)?;
    Ok((settings, upstream, tls))
}

impl Server {
    /// Validates everything, then binds the main and admin listeners.
    pub async fn bind(config: Config, access_log: AccessLog) -> Result<Server, StartError> {
        let server = config.server.clone();
        let admin_addr = config.admin.listen;
        let (settings, upstream, tls) = prepare(config)?;
        // Before the ports: a Redis that is down delays this by at most a second
        // and never stops the start (the cache then serves from the upstream).
        let cache = RenewCache::start(&settings.config).await?;
        let listener =
            TcpListener::bind(server.listen)
                .await
                .map_err(|error| StartError::Bind {
                    what: "server.listen",
                    addr: server.listen,
                    error,
                })?;
        let admin = TcpListener::bind(admin_addr)
            .await
            .map_err(|error| StartError::Bind {
                what: "admin.listen",
                addr: admin_addr,
                error,
            })?;
        Ok(Server {
            gateway: Arc::new(Gateway::new(settings, upstream, access_log, cache)),
            listener,
            admin,
            tls,
            server,
            draining: Arc::new(AtomicBool::new(false)),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .local_addr()
            .expect("bound listener has an address")
    }

    pub fn gateway(&self) -> Arc<Gateway> {
        self.gateway.clone()
    }

    /// Serves until `shutdown` completes, then drains. Returns once every connection
    /// has finished or `server.shutdown_grace` has passed.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Server {
            gateway,
            listener,
            admin,
            tls,
            server,
            draining,
        } = self;
        let admin_task = tokio::spawn(crate::admin::serve(
            admin,
            draining.clone(),
            gateway.clone(),
        ));
        let background = tokio_util::sync::CancellationToken::new();
        let jwks_task =
            crate::proxy::auth::spawn_refresh(gateway.keys().clone(), background.clone());
        let (drain_tx, drain_rx) = watch::channel(false);
        let max_connections = server
            .max_connections
            .min(Semaphore::MAX_PERMITS)
            .min(u32::MAX as usize);
        let connections = Arc::new(Semaphore::new(max_connections));
        let refusals = Arc::new(Semaphore::new(MAX_REFUSALS));
        let builder = Arc::new(Protocols::new(&server));
        let proto = if tls.is_some() { "https" } else { "http" };

        let accept = async {
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(conn) => conn,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        crate::log::warn(&format!("accept failed: {e}"));
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let client = ClientInfo { addr: peer, proto };
                let Ok(permit) = connections.clone().try_acquire_owned() else {
                    // Over the limit: a plaintext client is told why; a TLS one
                    // would need a handshake first, so it is just closed.
                    if tls.is_none()
                        && let Ok(slot) = refusals.clone().try_acquire_owned()
                    {
                        tokio::spawn(async move {
                            refuse_overloaded(stream).await;
                            drop(slot);
                        });
                    }
                    continue;
                };
                let conn = Conn {
                    gateway: gateway.clone(),
                    builder: builder.clone(),
                    client,
                    drain: drain_rx.clone(),
                    idle_timeout: server.idle_timeout,
                };
                let tls = tls.clone();
                let handshake_timeout = server.header_read_timeout;
                let open = gateway.metrics().connections().clone();
                open.inc();
                tokio::spawn(async move {
                    match tls {
                        None => conn.serve(stream, false).await,
                        Some(acceptor) => {
                            // A failed or slow handshake just closes the socket.
                            let handshake =
                                tokio::time::timeout(handshake_timeout, acceptor.accept(stream));
                            if let Ok(Ok(tls_stream)) = handshake.await {
                                let h2 = tls_stream.get_ref().1.alpn_protocol() == Some(b"h2");
                                conn.serve(tls_stream, h2).await;
                            }
                        }
                    }
                    open.dec();
                    drop(permit);
                });
            }
        };
        tokio::select! {
            _ = accept => {}
            _ = shutdown => {}
        }

        // Drain: not ready, no new connections, in-flight requests finish.
        draining.store(true, Ordering::SeqCst);
        drop(listener);
        let _ = drain_tx.send(true);
        let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
        match tokio::time::timeout(server.shutdown_grace, connections.acquire_many(all)).await {
            Ok(_) => crate::log::info("drained: all connections finished"),
            Err(_) => {
                crate::log::warn("shutdown_grace passed with connections still open; closing them")
            }
        }
        admin_task.abort();
        background.cancel();
        let _ = jwks_task.await;
        gateway.flush_logs();
    }
}

/// The HTTP/1.1 and HTTP/2 connection settings.
struct Protocols {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
}

impl Protocols {
    fn new(server: &ServerConfig) -> Protocols {
        // hyper's own limit is a backstop (it answers a bare 431); requests under it
        // are measured against server.max_header_bytes/max_uri_bytes in
        // proxy::check_limits, which answers in SMH's JSON shape.
        let buf = (server.max_header_bytes + server.max_uri_bytes + 8192).max(8192);
        let mut http1 = http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(server.header_read_timeout)
            .max_buf_size(buf)
            // hyper's default of 100 headers would answer a bare 431 long before
            // server.max_header_bytes is reached; allow as many as can fit.
            .max_headers((server.max_header_bytes / 8).max(100))
            .keep_alive(true);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(buf).unwrap_or(u32::MAX))
            .max_concurrent_streams(256);
        Protocols { http1, http2 }
    }
}

/// One accepted connection.
struct Conn {
    gateway: Arc<Gateway>,
    builder: Arc<Protocols>,
    client: ClientInfo,
    drain: watch::Receiver<bool>,
    idle_timeout: Duration,
}

/// Requests in flight on a connection and when the last one ended, for idle close.
struct Activity {
    in_flight: AtomicUsize,
    last_ms: AtomicU64,
    epoch: Instant,
}

impl Activity {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// When to look again: when the connection becomes idle-expired if nothing
    /// happens before, or, while a request is in flight, a whole period from now
    /// (the deadline may be long past then, and must not wake the loop at once).
    fn next_idle_check(&self, idle: Duration) -> Instant {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return Instant::now() + idle;
        }
        self.epoch + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + idle
    }

    fn is_idle_for(&self, idle: Duration) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0
            && self
                .now_ms()
                .saturating_sub(self.last_ms.load(Ordering::Relaxed))
                >= idle.as_millis() as u64
    }
}

struct InFlight(Arc<Activity>);

impl InFlight {
    fn begin(activity: &Arc<Activity>) -> InFlight {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.last_ms.store(self.0.now_ms(), Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Conn {
    async fn serve<I>(self, io: I, h2: bool)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Arc::new(Activity {
            in_flight: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        });
        let gateway = self.gateway.clone();
        let client = self.client;
        let act = activity.clone();
        let service = service_fn(move |req: Request<Incoming>| {
            let gateway = gateway.clone();
            let guard = InFlight::begin(&act);
            async move {
                let resp = gateway.handle(req, client).await;
                drop(guard);
                Ok::<_, Infallible>(resp)
            }
        });
        let io = TokioIo::new(io);
        let builder = self.builder.clone();
        if h2 {
            self.drive(builder.http2.serve_connection(io, service), &activity)
                .await;
        } else {
            self.drive(builder.http1.serve_connection(io, service), &activity)
                .await;
        }
    }

    /// Runs a connection to its end, closing it gracefully on drain or when idle.
    async fn drive(
        mut self,
        conn: impl GracefulConnection<Error = hyper::Error>,
        activity: &Activity,
    ) {
        tokio::pin!(conn);
        let mut closing = *self.drain.borrow();
        if closing {
            conn.as_mut().graceful_shutdown();
        }
        loop {
            tokio::select! {
                ended = conn.as_mut() => {
                    if let Err(e) = ended {
                        self.gateway.connection_error(self.client, crate::error::ConnectionError::of(&e));
                    }
                    break;
                }
                _ = self.drain.changed(), if !closing => {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
                _ = tokio::time::sleep_until(activity.next_idle_check(self.idle_timeout)), if !closing => {
                    if activity.is_idle_for(self.idle_timeout) {
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        }
    }
}

/// Over `server.max_connections`: answer one 503 ServerOverloaded without reading
/// the request, and close. Bounded in time, and callers bound how many run at once,
/// so a connection flood cannot hold file descriptors past the limit.
async fn refuse_overloaded(mut stream: TcpStream) {
    use tokio::io::AsyncWriteExt;
    let body = GatewayError::ServerOverloaded.to_response("-").into_body();
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let write = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(&body).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
}

/// Refusals running at once, at most; beyond, connections are just closed.
const MAX_REFUSALS: usize = 256;

fn tls_acceptor(files: &TlsFiles, config: &Config) -> Result<TlsAcceptor, ConfigError> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let file = config.source.as_path();
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            ConfigError::new(
                file,
                Some("server.tls_cert".into()),
                format!("{}: {e}", files.cert.display()),
            )
        })?;
    if certs.is_empty() {
        return Err(ConfigError::new(
            file,
            Some("server.tls_cert".into()),
            format!("{} holds no certificate", files.cert.display()),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        ConfigError::new(
            file,
            Some("server.tls_key".into()),
            format!("{}: {e}", files.key.display()),
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|e| {
            ConfigError::new(
                file,
                Some("server.tls_key".into()),
                format!("certificate and key do not fit: {e}"),
            )
        })?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(tls)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_check_waits_a_whole_period_while_a_request_is_in_flight() {
        let idle = Duration::from_millis(10);
        let activity = Arc::new(Activity {
            in_flight: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        });
        // Idle for longer than the period, then a slow request comes in.
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            activity.next_idle_check(idle) <= Instant::now(),
            "idle and expired: check now"
        );
        let _busy = InFlight::begin(&activity);
        // Not the deadline in the past, which would wake the loop again at once.
        assert!(activity.next_idle_check(idle) >= Instant::now() + Duration::from_millis(9));
        assert!(!activity.is_idle_for(idle));
    }
}
