//! The upstream's keep-alive pool: HTTP/1.1 connections over
//! `hyper::client::conn::http1`, to the one upstream origin.
//!
//! Replaces hyper-util's legacy client, which hashed a pool key (scheme and
//! authority, SipHash) per request, converted the absolute URI back to origin form,
//! and spawned a task per request to wait for the connection to go idle: about
//! 9,300 instructions of a forwarded request under callgrind. Here a checkout is a
//! mutex and a pop, and a connection goes back to the pool when its answer's body
//! has been read to the end ([`Body`]); a body dropped early closes the connection
//! (hyper cannot reuse one with an answer half-read).
//!
//! Idle connections are used newest first, so a lull lets the oldest ones age out:
//! one idle for [`Pool::idle_timeout`] is closed, at checkout, on the way back in,
//! or by a sweep that runs while the pool exists. At most `max_idle` are kept.
//!
//! Connect and answer have separate deadlines (SPEC §5): TCP connect and TLS
//! handshake together within `upstream.connect_timeout`, the answer then within
//! `upstream.timeout` (the caller's).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::Full;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::time::Instant;
use tower_service::Service;

type Sender = SendRequest<Full<Bytes>>;

/// Why no connection was had.
#[derive(Debug)]
pub enum ConnectError {
    /// TCP connect or TLS handshake failed.
    Failed,
    /// They did not finish within `upstream.connect_timeout`.
    TimedOut,
}

/// Why an exchange on a connection failed.
#[derive(Debug)]
pub enum SendError {
    /// No byte of the request went out (the pooled connection had closed): the
    /// request is handed back, to be sent on another connection.
    NotSent(Box<Request<Full<Bytes>>>),
    /// The request may have reached the upstream.
    Failed,
}

/// Clones share the connections (a reload hands the pool on, see
/// `Upstream::carry_over_from`).
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    connector: HttpsConnector<HttpConnector>,
    /// `scheme://authority/`: what the connector connects to.
    origin: Uri,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    /// Oldest at the front; checkouts take from the back.
    idle: Mutex<VecDeque<Idle>>,
}

struct Idle {
    sender: Sender,
    since: Instant,
}

/// A connection checked out of the pool, ready for one request.
pub struct Conn {
    sender: Sender,
    pool: Weak<Inner>,
    /// Taken from the pool rather than just opened: a failure before sending is
    /// then a stale connection, not the upstream refusing.
    pub reused: bool,
}

impl Pool {
    pub fn new(
        connector: HttpsConnector<HttpConnector>,
        origin: Uri,
        connect_timeout: Duration,
        idle_timeout: Duration,
        max_idle: usize,
    ) -> Pool {
        let inner = Arc::new(Inner {
            connector,
            origin,
            connect_timeout,
            idle_timeout,
            max_idle,
            idle: Mutex::new(VecDeque::new()),
        });
        // `smh-gateway check` builds an upstream without a runtime: no sweep there.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(sweep(Arc::downgrade(&inner)));
        }
        Pool { inner }
    }

    /// A pooled connection ready for a request, or a new one.
    pub async fn checkout(&self) -> Result<Conn, ConnectError> {
        while let Some(mut sender) = self.inner.pop() {
            // An answer's end reaches the body before hyper's connection task has
            // gone idle; it is ready a moment later, or closed.
            let ready = sender.is_ready()
                || matches!(
                    tokio::time::timeout(self.inner.connect_timeout, sender.ready()).await,
                    Ok(Ok(()))
                );
            if ready {
                return Ok(Conn {
                    sender,
                    pool: Arc::downgrade(&self.inner),
                    reused: true,
                });
            }
        }
        // Boxed: a connect (TCP and TLS) is rare beside a reuse, and inline its
        // state would make every request's future, moved on each poll's way in,
        // a kilobyte larger.
        let sender = Box::pin(self.inner.connect()).await?;
        Ok(Conn {
            sender,
            pool: Arc::downgrade(&self.inner),
            reused: false,
        })
    }

    /// Connections idle in the pool now.
    #[cfg(test)]
    pub fn idle(&self) -> usize {
        self.inner
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

impl Inner {
    /// The newest idle connection still open and not expired.
    fn pop(&self) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(entry) = idle.pop_back() {
            if !entry.sender.is_closed() && entry.since.elapsed() < self.idle_timeout {
                return Some(entry.sender);
            }
        }
        None
    }

    fn put(&self, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while idle
            .front()
            .is_some_and(|e| now.duration_since(e.since) >= self.idle_timeout)
        {
            idle.pop_front();
        }
        if idle.len() < self.max_idle {
            idle.push_back(Idle { sender, since: now });
        }
    }

    /// Drops the connections that are closed or idle too long.
    fn prune(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let timeout = self.idle_timeout;
        idle.retain(|e| !e.sender.is_closed() && e.since.elapsed() < timeout);
    }

    async fn connect(&self) -> Result<Sender, ConnectError> {
        let mut connector = self.connector.clone();
        let open = async {
            let io = connector
                .call(self.origin.clone())
                .await
                .map_err(|_| ConnectError::Failed)?;
            let (sender, conn) = http1::Builder::new()
                .handshake(io)
                .await
                .map_err(|_| ConnectError::Failed)?;
            // The connection's own task: it ends when the upstream closes, on an
            // error, or once the sender is dropped and the last answer is done.
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(sender)
        };
        tokio::time::timeout(self.connect_timeout, open)
            .await
            .map_err(|_| ConnectError::TimedOut)?
    }
}

/// Closes expired idle connections while the pool is alive.
async fn sweep(pool: Weak<Inner>) {
    let period = match pool.upgrade() {
        Some(inner) => (inner.idle_timeout / 2).max(Duration::from_millis(100)),
        None => return,
    };
    loop {
        tokio::time::sleep(period).await;
        match pool.upgrade() {
            Some(inner) => inner.prune(),
            None => return,
        }
    }
}

impl Conn {
    /// Sends `req` (origin-form URI) and waits for the answer's head. The
    /// connection goes back to the pool once the answer's body is read to its end.
    pub async fn send(mut self, req: Request<Full<Bytes>>) -> Result<Response<Body>, SendError> {
        match self.sender.try_send_request(req).await {
            Ok(resp) => {
                let (parts, inner) = resp.into_parts();
                let mut body = Body {
                    inner,
                    conn: Some((self.sender, self.pool)),
                };
                body.release_if_done();
                Ok(Response::from_parts(parts, body))
            }
            Err(mut e) => match e.take_message() {
                Some(req) => Err(SendError::NotSent(Box::new(req))),
                None => Err(SendError::Failed),
            },
        }
    }
}

/// An upstream answer's body. Its connection returns to the pool when the body has
/// been read to its end; dropped before that, the connection is closed.
pub struct Body {
    inner: Incoming,
    conn: Option<(Sender, Weak<Inner>)>,
}

impl Body {
    /// Hands the connection back to its pool (once; later calls do nothing).
    fn release(&mut self) {
        if let Some((sender, pool)) = self.conn.take()
            && let Some(pool) = pool.upgrade()
        {
            pool.put(sender);
        }
    }

    fn release_if_done(&mut self) {
        if hyper::body::Body::is_end_stream(&self.inner) {
            self.release();
        }
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        self.release_if_done();
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Ok(_))) => this.release_if_done(),
            // A broken body: the connection is not reused.
            Poll::Ready(Some(Err(_))) => this.conn = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// How the test upstream treats each connection after its first answer.
    #[derive(Clone, Copy)]
    enum After {
        KeepAlive,
        Close,
    }

    /// An HTTP/1.1 upstream on a loopback port answering `hello` to every request;
    /// counts the connections it accepted.
    async fn upstream(after: After) -> (Uri, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            match sock.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                        buf.drain(..end);
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
                        if sock.write_all(answer).await.is_err() {
                            return;
                        }
                        if let After::Close = after {
                            return;
                        }
                    }
                });
            }
        });
        (format!("http://{addr}/").parse().unwrap(), accepted)
    }

    fn pool(origin: Uri, idle_timeout: Duration, max_idle: usize) -> Pool {
        let tls = crate::tls_client::builder(crate::tls_client::roots(None).unwrap())
            .unwrap()
            .with_no_client_auth();
        let connector = crate::tls_client::connector(tls, Duration::from_secs(10));
        Pool::new(
            connector,
            origin,
            Duration::from_secs(10),
            idle_timeout,
            max_idle,
        )
    }

    fn get() -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(Bytes::new()));
        *req.uri_mut() = Uri::from_static("/x");
        req.headers_mut().insert(
            http::header::HOST,
            http::HeaderValue::from_static("upstream"),
        );
        req
    }

    /// One request on a checked-out connection, its body read to the end.
    async fn exchange(pool: &Pool) -> (bool, Bytes) {
        let conn = pool.checkout().await.unwrap();
        let reused = conn.reused;
        let resp = conn.send(get()).await.unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (reused, body)
    }

    #[tokio::test]
    async fn a_connection_whose_answer_was_read_is_used_again() {
        let (origin, accepted) = upstream(After::KeepAlive).await;
        let pool = pool(origin, Duration::from_secs(55), 16);
        assert_eq!(exchange(&pool).await, (false, Bytes::from("hello")));
        assert_eq!(pool.idle(), 1);
        for _ in 0..5 {
            assert_eq!(exchange(&pool).await, (true, Bytes::from("hello")));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_body_dropped_unread_does_not_return_its_connection() {
        let (origin, accepted) = upstream(After::KeepAlive).await;
        let pool = pool(origin, Duration::from_secs(55), 16);
        let resp = pool.checkout().await.unwrap().send(get()).await.unwrap();
        drop(resp);
        assert_eq!(pool.idle(), 0);
        assert_eq!(exchange(&pool).await, (false, Bytes::from("hello")));
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_is_not_checked_out() {
        let (origin, accepted) = upstream(After::Close).await;
        let pool = pool(origin, Duration::from_secs(55), 16);
        assert_eq!(exchange(&pool).await, (false, Bytes::from("hello")));
        // Once hyper has seen the close, the pooled connection is skipped.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !pool
            .inner
            .idle
            .lock()
            .unwrap()
            .iter()
            .all(|e| e.sender.is_closed())
        {
            assert!(
                Instant::now() < deadline,
                "the upstream's close was never seen"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(exchange(&pool).await, (false, Bytes::from("hello")));
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_expired_idle_connection_is_not_used() {
        let (origin, accepted) = upstream(After::KeepAlive).await;
        let pool = pool(origin, Duration::ZERO, 16);
        assert!(!exchange(&pool).await.0);
        assert!(!exchange(&pool).await.0);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn at_most_max_idle_connections_are_kept() {
        let (origin, _) = upstream(After::KeepAlive).await;
        let pool = pool(origin, Duration::from_secs(55), 2);
        let conns = [
            pool.checkout().await.unwrap(),
            pool.checkout().await.unwrap(),
            pool.checkout().await.unwrap(),
        ];
        let mut bodies = Vec::new();
        for conn in conns {
            bodies.push(conn.send(get()).await.unwrap().into_body());
        }
        for body in bodies {
            body.collect().await.unwrap();
        }
        assert_eq!(pool.idle(), 2);
    }

    #[tokio::test]
    async fn a_refused_connect_is_a_connect_failure() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let pool = pool(
            format!("http://{addr}/").parse().unwrap(),
            Duration::from_secs(55),
            2,
        );
        assert!(matches!(pool.checkout().await, Err(ConnectError::Failed)));
    }
}
