//! Idle plain HTTP/1.1 keep-alive connections are parked (src/server/park.rs):
//! hyper's state and buffers are released and the socket kept. These tests hold a
//! raw connection, wait (polling the gateway's metrics, never a fixed sleep) until
//! the gateway reports it parked, and check that it still behaves as a keep-alive
//! connection should: the next request on it is answered, bytes sent around the
//! park are not lost, idle_timeout and drain still close it, and one with half a
//! request head is not parked at all.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn renew_request(ck: &str) -> String {
    format!(
        "POST /api/v1/file/lib1/-/{ck}?renew&access_token={} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        token()
    )
}

/// Reads one answer with a Content-Length from `s`; returns its status line and
/// body.
async fn read_answer(s: &mut TcpStream) -> (String, String) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = async {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_string();
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().unwrap())
                    })
                    .expect("a content-length");
                while buf.len() < end + 4 + length {
                    let n = s.read(&mut chunk).await.unwrap();
                    assert!(n > 0, "closed in the middle of an answer");
                    buf.extend_from_slice(&chunk[..n]);
                }
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + length]).to_string();
                buf.drain(..end + 4 + length);
                assert!(buf.is_empty(), "more bytes than one answer");
                return (head.lines().next().unwrap().to_string(), body);
            }
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed before an answer: {buf:?}");
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .expect("an answer in time")
}

#[tokio::test]
async fn an_idle_connection_is_parked_and_answers_its_next_request() {
    let gw = start().await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(renew_request("ck1").as_bytes()).await.unwrap();
    let (status, _) = read_answer(&mut s).await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");

    until_metric(gw.admin, "smh_gateway_parked_connections", |v| v == 1.0).await;
    assert_eq!(gw.metric("smh_gateway_open_connections").await, 1.0);

    // The same socket, woken: a fresh hyper connection answers.
    s.write_all(renew_request("ck2").as_bytes()).await.unwrap();
    let (status, _) = read_answer(&mut s).await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert_eq!(gw.mock.count(), 2);
    assert!(gw.mock.last().unwrap().path.contains("ck2"));
    until_metric(gw.admin, "smh_gateway_parked_connections", |v| v == 0.0).await;

    // And it parks again once idle.
    until_metric(gw.admin, "smh_gateway_connection_parks_total", |v| v >= 2.0).await;
    s.write_all(renew_request("ck3").as_bytes()).await.unwrap();
    let (status, _) = read_answer(&mut s).await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
}

/// A connection with a request head on its way is not parked at the park point:
/// its head's clock (server.header_read_timeout) runs on, and the head is
/// finished on the same hyper connection. (Waiting past the park point takes a
/// sleep: there is no event to poll for.)
#[tokio::test]
async fn a_request_head_begun_before_the_park_point_is_finished_unparked() {
    let gw = start().await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(renew_request("ck1").as_bytes()).await.unwrap();
    read_answer(&mut s).await;
    let next = renew_request("ck2");
    let (first, rest) = next.split_at(40);
    s.write_all(first.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let parks = gw.metric("smh_gateway_connection_parks_total").await;
    assert_eq!(parks, 0.0, "parked with half a head");
    s.write_all(rest.as_bytes()).await.unwrap();
    let (status, _) = read_answer(&mut s).await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert_eq!(gw.mock.count(), 2);
    assert!(gw.mock.last().unwrap().path.contains("ck2"));
}

#[tokio::test]
async fn pipelined_requests_are_all_answered_in_order() {
    let gw = start().await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let both = format!("{}{}", renew_request("ck1"), renew_request("ck2"));
    s.write_all(both.as_bytes()).await.unwrap();
    for _ in 0..2 {
        let (status, _) = read_answer(&mut s).await;
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    }
    until_metric(gw.admin, "smh_gateway_parked_connections", |v| v == 1.0).await;
    let both = format!("{}{}", renew_request("ck3"), renew_request("ck4"));
    s.write_all(both.as_bytes()).await.unwrap();
    for _ in 0..2 {
        let (status, _) = read_answer(&mut s).await;
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    }
    assert_eq!(gw.mock.count(), 4);
}

#[tokio::test]
async fn a_parked_connection_is_closed_at_idle_timeout() {
    let gw = start_with(Setup {
        server: "idle_timeout = \"4s\"".into(),
        ..Setup::default()
    })
    .await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(renew_request("ck1").as_bytes()).await.unwrap();
    read_answer(&mut s).await;
    until_metric(gw.admin, "smh_gateway_parked_connections", |v| v == 1.0).await;
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(PATIENCE, s.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "a parked connection outlived idle_timeout");
    assert!(rest.is_empty(), "{rest:?}");
    until_metric(gw.admin, "smh_gateway_open_connections", |v| v == 0.0).await;
    assert_eq!(gw.metric("smh_gateway_parked_connections").await, 0.0);
}

#[tokio::test]
async fn draining_closes_parked_connections_while_requests_finish() {
    let gw = start().await;
    let mut parked = TcpStream::connect(gw.addr).await.unwrap();
    parked
        .write_all(renew_request("ck1").as_bytes())
        .await
        .unwrap();
    read_answer(&mut parked).await;
    until_metric(gw.admin, "smh_gateway_parked_connections", |v| v == 1.0).await;

    // Another connection's request, held upstream, keeps the drain from finishing.
    gw.mock.hold();
    let mut busy = TcpStream::connect(gw.addr).await.unwrap();
    busy.write_all(renew_request("ck2").as_bytes())
        .await
        .unwrap();
    until("the held request reached the mock", || {
        gw.mock.active() == 1
    })
    .await;

    let mock = gw.mock.clone();
    let stopped = tokio::spawn(gw.stop());
    // The parked connection is idle: drain closes it at once, while the held
    // request is still in flight (shutdown_grace is 30 s in these tests).
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(20), parked.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "a parked connection waited for the drain");
    assert_eq!(mock.active(), 1, "the held request is still in flight");

    // The busy one finishes its request, then the gateway stops.
    mock.release();
    let (status, _) = read_answer(&mut busy).await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    tokio::time::timeout(PATIENCE, stopped)
        .await
        .expect("the gateway stopped")
        .unwrap();
}

#[tokio::test]
async fn a_busy_connection_is_not_parked() {
    let gw = start().await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    // Requests back to back for longer than the park delay: never idle that long.
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut sent = 0;
    while tokio::time::Instant::now() < until {
        s.write_all(renew_request("ck1").as_bytes()).await.unwrap();
        let (status, _) = read_answer(&mut s).await;
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        sent += 1;
    }
    assert!(sent > 1);
    assert_eq!(gw.metric("smh_gateway_connection_parks_total").await, 0.0);
}
