//! A mock SMH upstream (`smh-gateway mock-upstream`, the demo, and the tests). It is
//! a mock, not SMH: it keeps uploads, directories and files in memory and plays the
//! upload flows of `SMH-ROUTES.md` Q1 — multipart, simple and form begin (201, 202 for
//! a known `beginningHash`, 200 instant upload for a known `fullHash`), renew, upload
//! status, confirm and cancel — plus directory creation and listing, file info,
//! download (302 to a fake COS URL) and delete. Every other SMH business route
//! answers 200 `{"mock":"ok"}`. A missing token is 400 EmptyAccessToken (but on the
//! public share look-ups and the token group, which carry no `access_token`) and a
//! path outside `/api/v1/` is 404 RouteNotFound, in SMH's error shape.
//!
//! Renew of a confirm key the mock never issued still answers 200 in SMH's shape
//! (an expiration one hour ahead, `x-cos-traffic-limit` echoing the traffic_limit it
//! received, as a JSON number like SMH's example): the gateway's tests and
//! benchmarks renew made-up keys. The state machine lives in [`smh`].
//!
//! The token API issues SMH tokens for a library secret set with
//! [`MockUpstream::set_library_secret`]; from then on business requests' tokens are
//! checked like SMH's, grants included (`smh/tokens.rs`).
//!
//! The mock records what it received, so tests can assert on exactly what the
//! gateway forwarded, and its behaviour can be switched to fail on purpose. It can
//! also hold every answer until released ([`MockUpstream::hold`]), and counts the
//! requests it is answering at once (now and at most), so a test can prove that
//! callers are waiting on one call, or that the gateway bounds its upstream work,
//! without timing anything.

mod smh;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use smh::confirm_key_for;
pub use smh::tokens::IssuedToken;
use smh::{MockSmh, json_response};

/// Requests kept for inspection.
const RECORDED: usize = 10_000;

/// One request as the mock received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// How the mock answers.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// Like SMH: the upload flows against the mock's state, SMH error bodies.
    Smh,
    /// This status and JSON body for every request.
    Fixed { status: u16, body: String },
    /// Wait, then answer like SMH.
    Delay(Duration),
    /// Close the connection without answering.
    Hangup,
    /// Wait until the gate is opened, then answer like SMH (tests that need a
    /// request in flight for as long as they say).
    Hold(Gate),
}

/// Held answers wait on this until [`Gate::open`].
#[derive(Debug, Clone)]
pub struct Gate(Arc<tokio::sync::Semaphore>);

impl Default for Gate {
    fn default() -> Gate {
        Gate(Arc::new(tokio::sync::Semaphore::new(0)))
    }
}

impl Gate {
    pub fn new() -> Gate {
        Gate::default()
    }

    /// Lets every held answer, and every later one, through.
    pub fn open(&self) {
        self.0.close();
    }

    async fn wait(&self) {
        // Closing the semaphore wakes every waiter with an error: that is the signal.
        let _ = self.0.acquire().await;
    }
}

#[derive(Debug)]
struct State {
    received: Mutex<Vec<Received>>,
    behaviour: Mutex<Behaviour>,
    smh: Mutex<MockSmh>,
    /// `true` while answers are held ([`MockUpstream::hold`]).
    held: watch::Sender<bool>,
    /// Requests being answered now (received, not yet answered or abandoned).
    active: AtomicUsize,
    /// The most ever answered at once.
    max_active: AtomicUsize,
    /// Connections accepted.
    connections: AtomicUsize,
}

/// Counts one request as active until its answer is done or hyper drops it (the
/// gateway hung up).
struct Active<'a>(&'a State);

impl<'a> Active<'a> {
    fn enter(state: &'a State) -> Active<'a> {
        let now = state.active.fetch_add(1, Ordering::SeqCst) + 1;
        state.max_active.fetch_max(now, Ordering::SeqCst);
        Active(state)
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A lock that survives a panicking holder: the mock's state stays usable in tests.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running mock upstream; it stops when its task is aborted or the runtime ends.
#[derive(Clone)]
pub struct MockUpstream {
    addr: SocketAddr,
    state: Arc<State>,
}

impl MockUpstream {
    /// Binds `addr` (use port 0 for an ephemeral port) and serves in the background.
    pub async fn start(addr: SocketAddr) -> std::io::Result<MockUpstream> {
        let listener = TcpListener::bind(addr).await?;
        let mock = MockUpstream {
            addr: listener.local_addr()?,
            state: Arc::new(State {
                received: Mutex::new(Vec::new()),
                behaviour: Mutex::new(Behaviour::Smh),
                smh: Mutex::new(MockSmh::new()),
                held: watch::Sender::new(false),
                active: AtomicUsize::new(0),
                max_active: AtomicUsize::new(0),
                connections: AtomicUsize::new(0),
            }),
        };
        tokio::spawn(serve(listener, mock.state.clone()));
        Ok(mock)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_behaviour(&self, behaviour: Behaviour) {
        *lock(&self.state.behaviour) = behaviour;
    }

    /// Everything received so far, oldest first.
    pub fn received(&self) -> Vec<Received> {
        lock(&self.state.received).clone()
    }

    pub fn count(&self) -> usize {
        lock(&self.state.received).len()
    }

    pub fn last(&self) -> Option<Received> {
        lock(&self.state.received).last().cloned()
    }

    /// Sets an SMH library secret for the token API. From the first one on, the
    /// mock checks business requests' tokens like SMH (`smh/tokens.rs`): tokens it
    /// issued, with the grant the operation needs.
    pub fn set_library_secret(&self, library: &str, secret: &str) {
        lock(&self.state.smh).tokens.set_secret(library, secret);
    }

    /// The `expiresIn` the token API answers (`None`: the period, as SMH clamps it).
    pub fn set_token_expires_in(&self, seconds: Option<u64>) {
        lock(&self.state.smh).tokens.expires_in = seconds;
    }

    /// The token API answers 500 while this is set.
    pub fn set_token_api_down(&self, down: bool) {
        lock(&self.state.smh).tokens.api_down = down;
    }

    /// Every business request's token is refused (403 InvalidAccessToken), new
    /// ones included, while this is set.
    pub fn set_refuse_all_tokens(&self, refuse: bool) {
        lock(&self.state.smh).tokens.refuse_all = refuse;
    }

    /// Revokes every token issued so far (SMH then answers 403 InvalidAccessToken
    /// to them); returns how many were live.
    pub fn revoke_tokens(&self) -> usize {
        lock(&self.state.smh).tokens.revoke_all()
    }

    /// Every token the token API issued, oldest first.
    pub fn issued_tokens(&self) -> Vec<IssuedToken> {
        lock(&self.state.smh).tokens.issued()
    }

    /// Create-token calls received (answered or not).
    pub fn token_calls(&self) -> usize {
        lock(&self.state.received)
            .iter()
            .filter(|r| r.path == "/api/v1/token")
            .count()
    }

    /// Forgets the received requests (the uploads, directories and files stay).
    pub fn clear(&self) {
        lock(&self.state.received).clear();
    }

    /// From now on every request is recorded, then waits, unanswered, until
    /// [`MockUpstream::release`]; it is then answered as the behaviour in force at
    /// release says.
    pub fn hold(&self) {
        self.state.held.send_replace(true);
    }

    /// Answers every held request, and stops holding.
    pub fn release(&self) {
        self.state.held.send_replace(false);
    }

    /// Requests being answered right now (held ones included).
    pub fn active(&self) -> usize {
        self.state.active.load(Ordering::SeqCst)
    }

    /// The most requests ever answered at once.
    pub fn max_active(&self) -> usize {
        self.state.max_active.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }
}

async fn serve(listener: TcpListener, state: Arc<State>) {
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        state.connections.fetch_add(1, Ordering::SeqCst);
        let state = state.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let state = state.clone();
                async move { answer(req, &state).await }
            });
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(
    req: Request<Incoming>,
    state: &State,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let _active = Active::enter(state);
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let received = Received {
        method: parts.method.clone(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().map(str::to_string),
        headers: parts.headers.clone(),
        body,
    };
    {
        let mut list = lock(&state.received);
        if list.len() >= RECORDED {
            list.remove(0);
        }
        list.push(received.clone());
    }
    let mut held = state.held.subscribe();
    let _ = held.wait_for(|held| !held).await;
    let behaviour = lock(&state.behaviour).clone();
    match behaviour {
        Behaviour::Smh => Ok(lock(&state.smh).answer(&received)),
        Behaviour::Fixed { status, body } => Ok(json_response(
            StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
            body,
        )),
        Behaviour::Delay(d) => {
            tokio::time::sleep(d).await;
            Ok(lock(&state.smh).answer(&received))
        }
        Behaviour::Hold(gate) => {
            gate.wait().await;
            Ok(lock(&state.smh).answer(&received))
        }
        // An error from the service makes hyper drop the connection unanswered.
        Behaviour::Hangup => Err(std::io::Error::other("mock hangup")),
    }
}

/// SMH's answer to a request, as a freshly started mock (no uploads, directories
/// or files yet) would give it: renew of any key answers 200. Stateless; a
/// [`MockUpstream`] keeps its state across requests instead.
pub fn smh(req: &Received) -> Response<Full<Bytes>> {
    MockSmh::new().answer(req)
}
