//! Listeners and connections: bind (after everything is validated, with
//! `server.listen_backlog`), accept, and hand each socket to its own task, which
//! does the rest: the connection limit, the TLS handshake, HTTP/1.1 or HTTP/2 (by
//! ALPN on TLS; by the client's first bytes on plain HTTP, so h2c with prior
//! knowledge works), idle close, and the graceful drain on shutdown: `/readyz`
//! turns 503, the listener closes, every connection is told to finish (HTTP/2 gets
//! a GOAWAY and its open streams run to their end), and the process waits up to
//! `server.shutdown_grace`, then stops the background tasks ([`crate::tasks`]).
//!
//! Reload (SPEC §15) splits the config in two: [`Fixed`] (the sockets and the
//! cache backend, bound or connected once; a reload that changes them is refused)
//! and everything else, which [`Reloader::reload`] swaps in: the gateway's
//! [`Settings`] (keys, routes, upstream client, ...) and this file's [`Front`]
//! (certificate, protocol limits, timeouts, `max_connections`). Each connection
//! reads the `Front` current when it is accepted and keeps it; open connections
//! keep their certificate and limits.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulConnection;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access_log::AccessLog;
use crate::cache::RenewCache;
use crate::config::{Config, ConfigError, Fixed, TlsFiles};
use crate::error::GatewayError;
use crate::limit::Limit;
use crate::metrics::ReloadResult;
use crate::proxy::{ClientInfo, Gateway, Settings};
use crate::tasks::Tasks;

mod park;

/// A gateway whose config, keys and upstream are ready and whose ports are bound.
pub struct Server {
    gateway: Arc<Gateway>,
    listener: TcpListener,
    admin: TcpListener,
    live: Arc<Live>,
    fixed: Arc<Fixed>,
    tasks: Tasks,
    draining: Arc<AtomicBool>,
}

/// The server-side state a reload replaces.
struct Live {
    front: ArcSwap<Front>,
    /// `server.max_connections`: its capacity follows reload.
    connections: Arc<Limit>,
}

/// What a connection is served with, built from one config: read once per
/// accepted connection, replaced as a whole on reload.
struct Front {
    /// `None`: plain HTTP (and h2c).
    tls: Option<TlsAcceptor>,
    // HTTP/1.1 or HTTP/2: by ALPN on TLS, by the client's first bytes on plain
    // HTTP ([`park::sniff`]).
    /// HTTP/1.1 over TLS: hyper bounds the wait for each request head.
    http1_tls: hyper::server::conn::http1::Builder,
    /// Plain HTTP/1.1: the same settings, but without hyper's per-request head
    /// timer (`Conn::drive_h1` keeps the head's deadline, see [`Activity`]).
    http1: hyper::server::conn::http1::Builder,
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
    header_read_timeout: Duration,
    idle_timeout: Duration,
    shutdown_grace: Duration,
    max_connections: usize,
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

/// Everything `serve` checks before binding a port: secrets, upstream TLS roots and
/// client certificate, server certificate, the Redis URL. `check` runs the same,
/// and so does every reload.
fn prepare(config: Config) -> Result<(Settings, Front), ConfigError> {
    crate::cache::check_config(&config)?;
    let front = Front::from_config(&config)?;
    let settings = Settings::from_config(config)?;
    Ok((settings, front))
}

/// `smh-gateway check`: everything `serve` verifies before binding.
pub fn check(config: Config) -> Result<(), ConfigError> {
    prepare(config).map(|_| ())
}

impl Server {
    /// Validates everything, then binds the main and admin listeners.
    pub async fn bind(config: Config, access_log: AccessLog) -> Result<Server, StartError> {
        let fixed = config.fixed();
        let (settings, front) = prepare(config)?;
        let tasks = Tasks::new();
        // Before the ports: a Redis that is down delays this by at most a second
        // and never stops the start (the cache then serves from the upstream).
        let cache = RenewCache::start(&settings.config, &tasks).await?;
        let listener =
            listen(fixed.listen, fixed.listen_backlog).map_err(|error| StartError::Bind {
                what: "server.listen",
                addr: fixed.listen,
                error,
            })?;
        let admin = TcpListener::bind(fixed.admin_listen)
            .await
            .map_err(|error| StartError::Bind {
                what: "admin.listen",
                addr: fixed.admin_listen,
                error,
            })?;
        let gateway = Arc::new(Gateway::new(settings, access_log, cache, tasks.clone()));
        let keys = gateway.keys().clone();
        tasks.spawn("jwks-refresh", move |cancel| {
            crate::proxy::auth::refresh_loop(keys, cancel)
        });
        Ok(Server {
            gateway,
            listener,
            admin,
            live: Arc::new(Live {
                connections: Arc::new(Limit::new(front.max_connections)),
                front: ArcSwap::from_pointee(front),
            }),
            fixed: Arc::new(fixed),
            tasks,
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

    /// The handle that applies a new config to this server while it runs.
    pub fn reloader(&self) -> Reloader {
        Reloader {
            gateway: self.gateway.clone(),
            live: self.live.clone(),
            fixed: self.fixed.clone(),
        }
    }

    /// Serves until `shutdown` completes, then drains. Returns once every connection
    /// and background task has finished or `server.shutdown_grace` has passed.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Server {
            gateway,
            listener,
            admin,
            live,
            fixed: _,
            tasks,
            draining,
        } = self;
        let admin_task = tokio::spawn(crate::admin::serve(
            admin,
            draining.clone(),
            gateway.clone(),
        ));
        let drain = CancellationToken::new();
        let connections = TaskTracker::new();
        let refusals = Arc::new(Semaphore::new(MAX_REFUSALS));

        // Nothing but accepting here: everything per connection happens in its task.
        let accept = async {
            loop {
                match listener.accept().await {
                    Ok((stream, peer)) => {
                        connections.spawn(connection(
                            stream,
                            peer,
                            gateway.clone(),
                            live.clone(),
                            refusals.clone(),
                            drain.clone(),
                        ));
                    }
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        crate::log::warn(&format!("accept failed: {e}"));
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        };
        tokio::select! {
            _ = accept => {}
            _ = shutdown => {}
        }

        // Drain: not ready, no new connections, in-flight requests finish.
        draining.store(true, Ordering::SeqCst);
        drop(listener);
        drain.cancel();
        connections.close();
        let grace = live.front.load().shutdown_grace;
        let deadline = Instant::now() + grace;
        match tokio::time::timeout_at(deadline, connections.wait()).await {
            Ok(()) => crate::log::info("drained: all connections finished"),
            Err(_) => {
                crate::log::warn("shutdown_grace passed with connections still open; closing them")
            }
        }
        // Background tasks get what is left of the grace, and at least a second.
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1));
        tasks.shutdown(left).await;
        admin_task.abort();
        gateway.flush_logs();
    }
}

/// The main listener: `server.listen` with a listen queue of `server.listen_backlog`.
pub fn listen(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As TcpListener::bind does: a restart can bind while old sockets linger.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// One accepted socket, from accept to close: the connection limit, TLS, HTTP.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    gateway: Arc<Gateway>,
    live: Arc<Live>,
    refusals: Arc<Semaphore>,
    drain: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let front = live.front.load_full();
    let Some(_slot) = live.connections.try_take_owned() else {
        // Over the limit: a plaintext client is told why; a TLS one would need a
        // handshake first, so it is just closed.
        if front.tls.is_none()
            && let Ok(_refusing) = refusals.try_acquire_owned()
        {
            refuse_overloaded(stream).await;
        }
        return;
    };
    let open = gateway.metrics().connections().clone();
    open.inc();
    let proto = if front.tls.is_some() { "https" } else { "http" };
    let conn = Conn {
        gateway,
        client: ClientInfo { addr: peer, proto },
        drain,
        front: front.clone(),
    };
    match &front.tls {
        None => {
            // A client that sends nothing is closed after header_read_timeout, as
            // hyper does once it reads a request head.
            let sniffed = tokio::select! {
                sniffed = tokio::time::timeout(front.header_read_timeout, sniff_plain(&stream)) => sniffed.ok().flatten(),
                _ = conn.drain.cancelled() => None,
            };
            // Every path but plain HTTP/1.1 is boxed: the task holding an idle
            // connection is as large as its largest path could need (hyper's
            // HTTP/2 state, rustls's), ten times a parked connection's.
            match sniffed {
                Some(park::Sniffed::Http2) => Box::pin(conn.serve_h2(stream)).await,
                Some(_) => conn.serve_plain_h1(stream).await,
                None => {}
            }
        }
        Some(acceptor) => Box::pin(serve_tls(conn, stream, acceptor.clone())).await,
    }
    open.dec();
}

/// A TLS connection: the handshake (a failed or slow one just closes the socket),
/// then HTTP/2 or HTTP/1.1 by ALPN.
async fn serve_tls(conn: Conn, stream: TcpStream, acceptor: TlsAcceptor) {
    let handshake = tokio::select! {
        done = tokio::time::timeout(conn.front.header_read_timeout, acceptor.accept(stream)) => done.ok(),
        _ = conn.drain.cancelled() => None,
    };
    if let Some(Ok(tls_stream)) = handshake {
        if tls_stream.get_ref().1.alpn_protocol() == Some(b"h2") {
            conn.serve_h2(tls_stream).await;
        } else {
            conn.serve_h1(tls_stream).await;
        }
    }
}

/// Applies a new config to a running server (SIGHUP). The file is validated and
/// every secret, key and certificate read before anything is swapped; a change to
/// a [`Fixed`] key refuses the reload as a whole. Either way it is counted
/// (`smh_gateway_config_reloads_total{result}`) and logged.
#[derive(Clone)]
pub struct Reloader {
    gateway: Arc<Gateway>,
    live: Arc<Live>,
    fixed: Arc<Fixed>,
}

/// Why a reload was not applied; the running config keeps serving.
#[derive(Debug)]
pub enum ReloadError {
    /// The file, a key, a certificate or a secret is not usable.
    Invalid(ConfigError),
    /// Keys that need a restart changed (dotted names).
    Refused(Vec<&'static str>),
}

impl std::fmt::Display for ReloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReloadError::Invalid(e) => write!(f, "{e}"),
            ReloadError::Refused(keys) => {
                write!(f, "{} changed, which needs a restart", keys.join(", "))
            }
        }
    }
}

impl Reloader {
    /// Reads `path` and applies it.
    pub fn reload_file(&self, path: &Path) -> Result<(), ReloadError> {
        self.reload(Config::load(path))
    }

    /// Applies a loaded config, or counts and logs why not.
    pub fn reload(&self, loaded: Result<Config, ConfigError>) -> Result<(), ReloadError> {
        let result = self.apply(loaded);
        let metrics = self.gateway.metrics();
        match &result {
            Ok(()) => {
                metrics.reload(ReloadResult::Success);
                crate::log::info("reload: applied");
            }
            Err(e @ ReloadError::Refused(_)) => {
                metrics.reload(ReloadResult::Refused);
                crate::log::error(&format!("reload refused, keeping the running config: {e}"));
            }
            Err(e @ ReloadError::Invalid(_)) => {
                metrics.reload(ReloadResult::Failure);
                crate::log::error(&format!("reload failed, keeping the running config: {e}"));
            }
        }
        result
    }

    fn apply(&self, loaded: Result<Config, ConfigError>) -> Result<(), ReloadError> {
        let config = loaded.map_err(ReloadError::Invalid)?;
        let changed = self.fixed.changes(&config.fixed());
        if !changed.is_empty() {
            return Err(ReloadError::Refused(changed));
        }
        let (settings, front) = prepare(config).map_err(ReloadError::Invalid)?;
        self.live.connections.set_capacity(front.max_connections);
        self.live.front.store(Arc::new(front));
        if let Some(cache) = self.gateway.cache() {
            cache.retune(&settings.config);
        }
        self.gateway.replace_settings(settings);
        Ok(())
    }
}

impl Front {
    fn from_config(config: &Config) -> Result<Front, ConfigError> {
        let server = &config.server;
        let tls = server
            .tls
            .as_ref()
            .map(|files| tls_acceptor(files, config))
            .transpose()?;
        // hyper's own limit is a backstop (it answers a bare 431); requests under it
        // are measured against server.max_header_bytes/max_uri_bytes in
        // proxy::check_limits, which answers in SMH's JSON shape.
        let buf = (server.max_header_bytes + server.max_uri_bytes + 8192).max(8192);
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            // hyper arms (and disarms) a timer for every request head it reads,
            // some 900 instructions a request; plain connections keep their head's
            // deadline in their `Activity` instead.
            .header_read_timeout(None)
            .max_buf_size(buf)
            // hyper's default of 100 headers would answer a bare 431 long before
            // server.max_header_bytes is reached; allow as many as can fit.
            .max_headers((server.max_header_bytes / 8).max(100))
            .keep_alive(true);
        let mut http1_tls = http1.clone();
        http1_tls.header_read_timeout(server.header_read_timeout);
        let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(buf).unwrap_or(u32::MAX))
            .max_concurrent_streams(256);
        Ok(Front {
            tls,
            http1_tls,
            http1,
            http2,
            header_read_timeout: server.header_read_timeout,
            idle_timeout: server.idle_timeout,
            shutdown_grace: server.shutdown_grace,
            max_connections: server.max_connections,
        })
    }
}

/// One accepted connection, with the [`Front`] current when it was accepted.
struct Conn {
    gateway: Arc<Gateway>,
    client: ClientInfo,
    drain: CancellationToken,
    front: Arc<Front>,
}

/// Requests in flight on a connection and when the last one ended, for idle close;
/// on plain HTTP/1.1, also when the bytes of the next request head began to arrive,
/// for its `server.header_read_timeout`.
struct Activity {
    in_flight: AtomicUsize,
    last_ms: AtomicU64,
    /// 1 + the ms (from `epoch`) of the first byte read while no request was in
    /// flight: a head is arriving. 0: none is.
    head_from: AtomicU64,
    epoch: Instant,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            in_flight: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
            head_from: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// Bytes were read (plain HTTP/1.1, [`park::Rewind`]): with no request in
    /// flight they are the start of a request head, whose clock starts now. One
    /// clock read per request head.
    fn note_read(&self) {
        if self.in_flight.load(Ordering::Relaxed) == 0
            && self.head_from.load(Ordering::Relaxed) == 0
        {
            self.head_from.store(self.now_ms() + 1, Ordering::Relaxed);
        }
    }

    /// When the head now arriving must be complete, if one is.
    fn head_deadline(&self, timeout: Duration) -> Option<Instant> {
        match self.head_from.load(Ordering::Relaxed) {
            0 => None,
            from => Some(self.epoch + Duration::from_millis(from - 1) + timeout),
        }
    }

    /// [`Activity::next_check`] on plain HTTP/1.1: while a head arrives, its
    /// deadline; while idle, also no later than `head` from now, so that a head
    /// that starts meanwhile is looked at within its timeout.
    fn next_check_h1(&self, period: Duration, head: Duration) -> Instant {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return Instant::now() + period;
        }
        match self.head_deadline(head) {
            Some(deadline) => deadline,
            None => self.idle_deadline(period).min(Instant::now() + head),
        }
    }

    /// When the connection has been idle for `idle`, if nothing happens before.
    fn idle_deadline(&self, idle: Duration) -> Instant {
        self.epoch + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + idle
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// When to look again: when the connection has been idle for `period` if
    /// nothing happens before, or, while a request is in flight, a whole period from now
    /// (the deadline may be long past then, and must not wake the loop at once).
    fn next_check(&self, period: Duration) -> Instant {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return Instant::now() + period;
        }
        self.idle_deadline(period)
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
        activity.head_from.store(0, Ordering::Relaxed);
        InFlight(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.last_ms.store(self.0.now_ms(), Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The service every connection runs: the gateway's pipeline, counted in the
/// connection's [`Activity`] until the answer's body is done with. Its future is
/// boxed: hyper keeps a connection's in-flight slot, sized for the future, for as
/// long as the connection lives, and the pipeline's future is large.
#[derive(Clone)]
struct Service {
    gateway: Arc<Gateway>,
    client: ClientInfo,
    activity: Arc<Activity>,
}

type ServiceFuture =
    std::pin::Pin<Box<dyn Future<Output = Result<http::Response<Tracked>, Infallible>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for Service {
    type Response = http::Response<Tracked>;
    type Error = Infallible;
    type Future = ServiceFuture;

    fn call(&self, req: Request<Incoming>) -> ServiceFuture {
        let gateway = self.gateway.clone();
        let client = self.client;
        let in_flight = InFlight::begin(&self.activity);
        Box::pin(async move {
            let resp = gateway.handle(req, client).await;
            Ok(resp.map(|body| Tracked {
                body,
                _in_flight: in_flight,
            }))
        })
    }
}

/// An answer's body, holding its request's [`InFlight`] until hyper has written it
/// out and dropped it: a connection is idle only when nothing is being answered.
struct Tracked {
    body: crate::proxy::ResponseBody,
    _in_flight: InFlight,
}

impl hyper::body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// How an HTTP/1.1 connection's hyper state ended.
enum H1End {
    /// Closed, or to be closed.
    Closed,
    /// Stopped at an idle point on our request: the socket is still open.
    Parked,
}

impl Conn {
    fn service(&self, activity: &Arc<Activity>) -> Service {
        Service {
            gateway: self.gateway.clone(),
            client: self.client,
            activity: activity.clone(),
        }
    }

    async fn serve_h2<I>(self, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Arc::new(Activity::new());
        let service = self.service(&activity);
        let conn = self.front.http2.serve_connection(TokioIo::new(io), service);
        self.drive(conn, &activity).await;
    }

    /// HTTP/1.1 over TLS: hyper's state for the connection's whole life (see
    /// [`park`] for why TLS connections are not parked).
    async fn serve_h1<I>(self, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Arc::new(Activity::new());
        let service = self.service(&activity);
        let conn = self
            .front
            .http1_tls
            .serve_connection(TokioIo::new(io), service);
        self.drive(conn, &activity).await;
    }

    /// Plain HTTP/1.1, parked while idle ([`park`]): a fresh hyper connection per
    /// busy spell, the bytes it read ahead handed to the next.
    async fn serve_plain_h1(self, stream: TcpStream) {
        let activity = Arc::new(Activity::new());
        let service = self.service(&activity);
        let idle = self.front.idle_timeout;
        let mut io = park::Rewind::new(bytes::Bytes::new(), stream, activity.clone());
        loop {
            let mut conn = Box::new(
                self.front
                    .http1
                    .serve_connection(TokioIo::new(io), service.clone()),
            );
            let end = self.drive_h1(&mut conn, &activity).await;
            // Moved out in a block of its own, so the box is freed now, not at the
            // end of the loop body (after the park).
            let parts = {
                let conn = conn;
                conn.into_parts()
            };
            let (unread, stream) = parts.io.into_inner().into_parts();
            if let H1End::Closed = end {
                let mut stream = stream;
                let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
                return;
            }
            // hyper read `read_buf` from the front of what is left, so it comes first.
            let ahead = park::read_ahead(parts.read_buf, unread);
            io = park::Rewind::new(ahead, stream, activity.clone());
            self.gateway.metrics().parks().inc();
            if io.has_buffered() {
                continue;
            }
            let parked = self.gateway.metrics().parked().clone();
            parked.inc();
            crate::trim::after_park();
            let woke = tokio::select! {
                ready = io.inner.readable() => ready.is_ok(),
                _ = tokio::time::sleep_until(activity.idle_deadline(idle)) => false,
                _ = self.drain.cancelled() => false,
            };
            parked.dec();
            if !woke {
                return;
            }
        }
    }

    /// Runs a connection to its end, closing it gracefully (HTTP/2: GOAWAY, open
    /// streams finish) on drain or when idle.
    async fn drive<C>(self, conn: C, activity: &Activity)
    where
        C: GracefulConnection<Error = hyper::Error>,
    {
        tokio::pin!(conn);
        let idle = self.front.idle_timeout;
        let mut closing = self.drain.is_cancelled();
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
                _ = self.drain.cancelled(), if !closing => {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
                _ = tokio::time::sleep_until(activity.next_check(idle)), if !closing => {
                    if activity.is_idle_for(idle) {
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        }
    }

    /// [`Conn::drive`] for one plain HTTP/1.1 spell: also stops hyper, keeping the
    /// socket, once the connection has been idle for [`park::PARK_AFTER`].
    async fn drive_h1(
        &self,
        conn: &mut hyper::server::conn::http1::Connection<
            TokioIo<park::Rewind<TcpStream>>,
            Service,
        >,
        activity: &Activity,
    ) -> H1End {
        let idle = self.front.idle_timeout;
        let period = idle.min(park::PARK_AFTER);
        let head = self.front.header_read_timeout;
        let mut closing = self.drain.is_cancelled();
        let mut parking = false;
        if closing {
            std::pin::Pin::new(&mut *conn).graceful_shutdown();
        }
        loop {
            tokio::select! {
                ended = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)) => {
                    return match ended {
                        Err(e) => {
                            self.gateway.connection_error(self.client, crate::error::ConnectionError::of(&e));
                            H1End::Closed
                        }
                        Ok(()) if parking && !closing => H1End::Parked,
                        Ok(()) => H1End::Closed,
                    };
                }
                _ = self.drain.cancelled(), if !closing => {
                    closing = true;
                    std::pin::Pin::new(&mut *conn).graceful_shutdown();
                }
                _ = tokio::time::sleep_until(activity.next_check_h1(period, head)), if !closing && !parking => {
                    if activity.in_flight.load(Ordering::Relaxed) > 0 {
                        continue;
                    }
                    match activity.head_deadline(head) {
                        // A head that is not complete in time: the connection is
                        // closed, as hyper closes one over TLS.
                        Some(deadline) if Instant::now() >= deadline => {
                            self.gateway.connection_error(self.client, crate::error::ConnectionError::Timeout);
                            return H1End::Closed;
                        }
                        // A head on its way is neither idle nor parked (a park
                        // would start its clock again).
                        Some(_) => {}
                        None if activity.is_idle_for(idle) => {
                            closing = true;
                            std::pin::Pin::new(&mut *conn).graceful_shutdown();
                        }
                        None if activity.is_idle_for(park::PARK_AFTER) => {
                            parking = true;
                            std::pin::Pin::new(&mut *conn).graceful_shutdown();
                        }
                        None => {}
                    }
                }
            }
        }
    }
}

/// Peeks at a plain connection's first bytes until they tell HTTP/1 from the h2c
/// preface; `None` when the client closes first.
async fn sniff_plain(stream: &TcpStream) -> Option<park::Sniffed> {
    let mut first = [0u8; park::PREFACE.len()];
    loop {
        let n = stream.peek(&mut first).await.ok()?;
        if n == 0 {
            return None;
        }
        match park::sniff(&first[..n]) {
            park::Sniffed::Unsure => {
                // Part of the preface only: the rest is on its way (the caller
                // bounds the wait by header_read_timeout).
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            sniffed => return Some(sniffed),
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

/// The server certificate and key, read now (at start and on every reload).
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
        let activity = Arc::new(Activity::new());
        // Idle for longer than the period, then a slow request comes in.
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            activity.next_check(idle) <= Instant::now(),
            "idle and expired: check now"
        );
        let _busy = InFlight::begin(&activity);
        // Not the deadline in the past, which would wake the loop again at once.
        assert!(activity.next_check(idle) >= Instant::now() + Duration::from_millis(9));
        assert!(!activity.is_idle_for(idle));
    }

    #[test]
    fn a_head_clock_starts_at_the_first_byte_between_requests_and_stops_at_the_request() {
        let head = Duration::from_secs(10);
        let period = Duration::from_secs(2);
        let activity = Arc::new(Activity::new());
        assert_eq!(activity.head_deadline(head), None);
        // Idle, no bytes: the idle check, and a look within `head`.
        assert!(activity.next_check_h1(period, head) <= activity.epoch + period);
        std::thread::sleep(Duration::from_millis(5));
        activity.note_read();
        let deadline = activity.head_deadline(head).expect("a head is arriving");
        assert!(deadline >= activity.epoch + head + Duration::from_millis(5));
        // More bytes of the same head do not move its deadline.
        std::thread::sleep(Duration::from_millis(5));
        activity.note_read();
        assert_eq!(activity.head_deadline(head), Some(deadline));
        assert_eq!(activity.next_check_h1(period, head), deadline);
        // The head is complete: a request, whose body reads start no clock.
        let busy = InFlight::begin(&activity);
        assert_eq!(activity.head_deadline(head), None);
        activity.note_read();
        assert_eq!(activity.head_deadline(head), None);
        drop(busy);
        assert_eq!(activity.head_deadline(head), None);
        activity.note_read();
        assert!(activity.head_deadline(head).is_some());
    }
}
