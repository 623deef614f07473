//! `upstream.max_in_flight` bounds every upstream exchange, coalesced renew flights
//! included: a flight runs in a task of its own and outlives the client that
//! started it, so without this bound a caller cycling confirm keys and hanging up
//! could start any number of upstream calls. The mock holds its answers and counts
//! how many it answers at once; nothing here is timed.

mod common;

use common::*;
use smh_gateway::mock_upstream::MockUpstream;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const LIMIT: usize = 4;
const REFUSED: &str = "smh_gateway_upstream_refused_total";

/// A renew of its own confirm key on a raw connection, its request written whole;
/// dropping the stream is the client hanging up.
async fn renew_on_raw_connection(gw: &TestGateway, ck: &str) -> TcpStream {
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST /api/v1/file/lib1/-/{ck}?renew&access_token={} HTTP/1.1\r\nHost: x\r\n\
         Content-Length: 0\r\n\r\n",
        token()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s
}

/// A gateway with upstream.max_in_flight = LIMIT in front of a mock that holds
/// its answers.
async fn start_limited() -> (TestGateway, MockUpstream) {
    let mock = MockUpstream::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let gw = start_against(
        mock.clone(),
        Setup {
            upstream: format!("max_in_flight = {LIMIT}\ntimeout = \"120s\""),
            ..Setup::default()
        },
    )
    .await;
    mock.hold();
    (gw, mock)
}

#[tokio::test]
async fn distinct_renews_from_clients_that_hang_up_never_exceed_upstream_max_in_flight() {
    let (gw, mock) = start_limited().await;
    let n = 5 * LIMIT;
    for i in 0..n {
        let client = renew_on_raw_connection(&gw, &format!("ck-{i}")).await;
        // Its flight has either reached the (held) upstream or been refused...
        let want = (i + 1) as f64;
        until_metric(gw.admin, REFUSED, |refused| {
            mock.count() as f64 + refused == want
        })
        .await;
        // ...and then the client goes away, which frees its server.max_in_flight
        // slot but not the flight's upstream one.
        drop(client);
    }
    assert_eq!(mock.count(), LIMIT, "upstream calls started");
    assert_eq!(mock.active(), LIMIT, "held flights still running");
    assert_eq!(mock.max_active(), LIMIT, "never more at once");
    assert_eq!(gw.metric(REFUSED).await, (n - LIMIT) as f64);

    // Every slot is taken: another renew, and a forwarded route, are refused at
    // once, in SMH's shape, and counted.
    gw.renew(&format!("access_token={}", token()))
        .await
        .assert_error(503, "ServerOverloaded");
    gw.request(
        http::Method::GET,
        &format!("/api/v1/file/lib1/-/a.bin?info&access_token={}", token()),
        &[],
        b"",
    )
    .await
    .assert_error(503, "ServerOverloaded");
    assert_eq!(gw.metric(REFUSED).await, (n - LIMIT + 2) as f64);
    assert_eq!(mock.max_active(), LIMIT);

    // The held flights end: their slots come back.
    mock.release();
    until("the held flights ended", || mock.active() == 0).await;
    let r = gw.renew(&format!("access_token={}", token())).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(mock.max_active(), LIMIT);
}

#[tokio::test]
async fn with_one_slot_a_second_exchange_is_refused_until_the_first_is_done() {
    let gw = start_with(Setup {
        upstream: "max_in_flight = 1\ntimeout = \"120s\"".into(),
        ..Setup::default()
    })
    .await;
    // With the cache (a flight in its own task) and without (the answer streamed
    // through): the same bound.
    let gw_nocache = start_against(
        gw.mock.clone(),
        Setup {
            upstream: "max_in_flight = 1\ntimeout = \"120s\"".into(),
            rest: "[cache]\nenabled = false\n".into(),
            ..Setup::default()
        },
    )
    .await;
    for gw in [&gw, &gw_nocache] {
        gw.mock.hold();
        let url = gw.url(&format!(
            "/api/v1/file/lib1/-/ck-held?renew&access_token={}",
            token()
        ));
        let held =
            tokio::spawn(
                async move { send(http::Method::POST, &url, &[], bytes::Bytes::new()).await },
            );
        until("the held call", || gw.mock.active() == 1).await;
        gw.renew(&format!("access_token={}", token()))
            .await
            .assert_error(503, "ServerOverloaded");
        gw.mock.release();
        assert_eq!(held.await.unwrap().status, 200);
        // The slot is back once the answer was read whole.
        let r = gw.renew(&format!("access_token={}", token())).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(gw.metric(REFUSED).await, 1.0);
    }
}

/// A reload hands the running exchanges' permits on to the new settings: flights
/// still running on the old upstream count against the new max_in_flight, so a
/// reload (SIGHUP on an unchanged file, say) never lets more run at once; a raised
/// limit lets exactly the difference through.
#[tokio::test]
async fn a_reload_keeps_counting_the_exchanges_still_running() {
    let (gw, mock) = start_limited().await;
    let mut held = Vec::new();
    for i in 0..LIMIT {
        held.push(renew_on_raw_connection(&gw, &format!("ck-{i}")).await);
    }
    until("every slot held", || mock.active() == LIMIT).await;

    let file = gw.dir.join("gateway.toml");
    gw.reloader.reload_file(&file).unwrap();
    gw.renew(&format!("access_token={}", token()))
        .await
        .assert_error(503, "ServerOverloaded");
    assert_eq!(mock.max_active(), LIMIT);

    let text = std::fs::read_to_string(&file).unwrap();
    let raised = text.replace(
        &format!("max_in_flight = {LIMIT}\n"),
        &format!("max_in_flight = {}\n", LIMIT + 1),
    );
    assert_ne!(raised, text, "the limit is in the file");
    std::fs::write(&file, raised).unwrap();
    gw.reloader.reload_file(&file).unwrap();
    held.push(renew_on_raw_connection(&gw, "ck-raised").await);
    until("the one more slot taken", || mock.active() == LIMIT + 1).await;
    gw.renew(&format!("access_token={}", token()))
        .await
        .assert_error(503, "ServerOverloaded");
    assert_eq!(mock.max_active(), LIMIT + 1);
    mock.release();
    until("the held flights ended", || mock.active() == 0).await;
    drop(held);
}
