//! A mock SMH upstream (`smh-gateway mock-upstream`, the demo, and the tests). It
//! answers renew in SMH's shape (an expiration one hour ahead, `x-cos-traffic-limit`
//! echoing the traffic_limit it received, as a JSON number like SMH's example), and
//! SMH error bodies for a missing token (400 EmptyAccessToken) and unknown routes
//! (404 RouteNotFound). It records what it received, so tests can assert on exactly
//! what the gateway forwarded, and its behaviour can be switched to fail on purpose.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::json;
use tokio::net::TcpListener;

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
    /// Like SMH: renew answers, SMH error bodies otherwise.
    Smh,
    /// This status and JSON body for every request.
    Fixed { status: u16, body: String },
    /// Wait, then answer like SMH.
    Delay(Duration),
    /// Close the connection without answering.
    Hangup,
}

#[derive(Debug)]
struct State {
    received: Mutex<Vec<Received>>,
    behaviour: Mutex<Behaviour>,
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
        *self
            .state
            .behaviour
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = behaviour;
    }

    /// Everything received so far, oldest first.
    pub fn received(&self) -> Vec<Received> {
        self.state
            .received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn count(&self) -> usize {
        self.state
            .received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    pub fn last(&self) -> Option<Received> {
        self.state
            .received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last()
            .cloned()
    }

    pub fn clear(&self) {
        self.state
            .received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

async fn serve(listener: TcpListener, state: Arc<State>) {
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
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
        let mut list = state.received.lock().unwrap_or_else(|e| e.into_inner());
        if list.len() >= RECORDED {
            list.remove(0);
        }
        list.push(received.clone());
    }
    let behaviour = state
        .behaviour
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    match behaviour {
        Behaviour::Smh => Ok(smh(&received)),
        Behaviour::Fixed { status, body } => Ok(json_response(
            StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
            body,
        )),
        Behaviour::Delay(d) => {
            tokio::time::sleep(d).await;
            Ok(smh(&received))
        }
        // An error from the service makes hyper drop the connection unanswered.
        Behaviour::Hangup => Err(std::io::Error::other("mock hangup")),
    }
}

/// SMH's answer to a request.
pub fn smh(req: &Received) -> Response<Full<Bytes>> {
    let params: Vec<(String, String)> = req
        .query
        .as_deref()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let v = percent_encoding::percent_decode_str(v)
                .decode_utf8_lossy()
                .into_owned();
            (k.to_string(), v)
        })
        .collect();
    let get = |k: &str| {
        params
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    let segments: Vec<&str> = req.path.trim_start_matches('/').split('/').collect();
    let is_renew = req.method == Method::POST
        && segments.len() == 6
        && segments[..3] == ["api", "v1", "file"]
        && get("renew").is_some();
    if !is_renew {
        return smh_error(StatusCode::NOT_FOUND, "RouteNotFound", "route not found");
    }
    if get("access_token").is_none_or(str::is_empty) {
        return smh_error(
            StatusCode::BAD_REQUEST,
            "EmptyAccessToken",
            "access token is empty",
        );
    }
    let (library, confirm_key) = (segments[3], segments[5]);
    let expiration = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    let expiration = expiration
        .format(time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
        ))
        .unwrap_or_default();
    let mut headers = json!({
        "Content-Type": "application/octet-stream",
        "Authorization": "q-sign-algorithm=sha1&q-ak=mock&q-sign-time=0;1&q-key-time=0;1&q-header-list=&q-url-param-list=&q-signature=mock",
        "x-cos-security-token": "mock-security-token",
    });
    if let Some(tl) = get("traffic_limit").and_then(|v| v.parse::<u64>().ok()) {
        headers["x-cos-traffic-limit"] = json!(tl);
    }
    let body = json!({
        "domain": "examplebucket-1250000000.cos.ap-beijing.myqcloud.com",
        "path": format!("/{library}/{confirm_key}"),
        "uploadId": format!("mock-upload-{confirm_key}"),
        "headers": headers,
        "confirmKey": confirm_key,
        "expiration": expiration,
        "availableDomainNum": 1,
    });
    json_response(StatusCode::OK, body.to_string())
}

fn smh_error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    let body = json!({ "code": code, "message": message, "requestId": "mock-upstream" });
    json_response(status, body.to_string())
}

fn json_response(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}
