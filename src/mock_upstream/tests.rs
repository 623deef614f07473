//! The mock's state machine driven without sockets (requests built by hand), and
//! one round trip over a socket to show the server keeps state between requests.

use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::{HeaderMap, Method, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Body;
use serde_json::{Value, json};

use super::smh::MockSmh;
use super::{MockUpstream, Received, confirm_key_for, smh};

const FILE: &str = "/api/v1/file/lib1/-";
const DIR: &str = "/api/v1/directory/lib1/-";

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    /// The JSON body; `Null` when the body is empty.
    body: Value,
}

impl Answer {
    #[track_caller]
    fn error(&self, status: u16, code: &str) {
        assert_eq!(self.status.as_u16(), status, "{}", self.body);
        assert_eq!(self.body["code"], code, "{}", self.body);
        assert_eq!(self.body["requestId"], "mock-upstream");
    }
}

fn received(method: Method, target: &str, body: &str) -> Received {
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query.to_string())),
        None => (target, None),
    };
    Received {
        method,
        path: path.to_string(),
        query,
        headers: HeaderMap::new(),
        body: Bytes::from(body.to_string()),
    }
}

/// A `Full` body is ready at once, so one poll reads it.
fn read(resp: Response<Full<Bytes>>) -> Answer {
    let (parts, mut body) = resp.into_parts();
    let mut cx = Context::from_waker(Waker::noop());
    let bytes = match Pin::new(&mut body).poll_frame(&mut cx) {
        Poll::Ready(Some(Ok(frame))) => frame.into_data().unwrap_or_default(),
        _ => Bytes::new(),
    };
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        assert_eq!(parts.headers["content-type"], "application/json");
        serde_json::from_slice(&bytes).expect("a JSON body")
    };
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// `target` is path and query; the token is added to the query.
fn send(m: &mut MockSmh, method: Method, target: &str, body: &str) -> Answer {
    let sep = if target.contains('?') { '&' } else { '?' };
    let target = format!("{target}{sep}access_token=tok");
    read(m.answer(&received(method, &target, body)))
}

/// Begins and confirms `path` (encoded, one segment) in lib1; returns the confirm key.
fn upload(m: &mut MockSmh, path: &str, begin_body: &str) -> String {
    let begun = send(
        m,
        Method::POST,
        &format!("{FILE}/{path}?multipart=1"),
        begin_body,
    );
    assert_eq!(begun.status, 201, "{}", begun.body);
    let ck = begun.body["confirmKey"].as_str().unwrap().to_string();
    let done = send(m, Method::POST, &format!("{FILE}/{ck}?confirm=1"), "{}");
    assert_eq!(done.status, 200, "{}", done.body);
    ck
}

#[track_caller]
fn assert_about_an_hour_ahead(expiration: &Value) {
    let s = expiration.as_str().unwrap();
    assert!(s.ends_with('Z') && s.len() == 24, "{s}");
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    let at = time::PrimitiveDateTime::parse(s, format)
        .unwrap()
        .assume_utc();
    let ahead = at - time::OffsetDateTime::now_utc();
    assert!((ahead - time::Duration::hours(1)).abs() < time::Duration::minutes(1));
}

#[test]
fn confirm_keys_are_deterministic_per_library_space_and_path() {
    let ck = confirm_key_for("lib1", "-", "docs/a.bin");
    assert!(ck.starts_with("ck-") && ck.len() == 19, "{ck}");
    assert!(ck[3..].bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(ck, confirm_key_for("lib1", "-", "/docs/a.bin"));
    assert_ne!(ck, confirm_key_for("lib2", "-", "docs/a.bin"));
    assert_ne!(ck, confirm_key_for("lib1", "s1", "docs/a.bin"));
    assert_ne!(ck, confirm_key_for("lib1", "-", "docs/b.bin"));
}

#[test]
fn multipart_begin_renew_status_confirm() {
    let mut m = MockSmh::new();
    let begin = format!("{FILE}/big.bin?multipart=1&filesize=10&traffic_limit=819200");
    let r = send(&mut m, Method::POST, &begin, r#"{"size":"10"}"#);
    assert_eq!(r.status, 201);
    let ck = confirm_key_for("lib1", "-", "big.bin");
    let upload_id = format!("mock-upload-{ck}");
    assert_eq!(r.body["confirmKey"], ck);
    assert_eq!(r.body["uploadId"], upload_id);
    assert_eq!(r.body["path"], format!("/lib1/{ck}"));
    assert_eq!(r.body["headers"]["x-cos-traffic-limit"], 819_200);
    assert_eq!(r.body["availableDomainNum"], 1);
    assert_about_an_hour_ahead(&r.body["expiration"]);

    let r = send(
        &mut m,
        Method::POST,
        &format!("{FILE}/{ck}?renew&traffic_limit=102400"),
        "",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body["uploadId"], upload_id);
    assert_eq!(r.body["headers"]["x-cos-traffic-limit"], 102_400);
    assert_about_an_hour_ahead(&r.body["expiration"]);

    let r = send(&mut m, Method::GET, &format!("{FILE}/{ck}?upload=1"), "");
    assert_eq!(r.status, 200);
    assert_eq!(r.body["confirmed"], false);
    assert_eq!(r.body["type"], "multipart");
    assert_eq!(r.body["path"], json!(["big.bin"]));
    assert_eq!(r.body["parts"], json!([]));
    assert_eq!(r.body["uploadPartInfo"]["uploadId"], upload_id);
    assert_eq!(
        r.body["uploadPartInfo"]["headers"]["x-cos-traffic-limit"],
        102_400
    );

    let r = send(
        &mut m,
        Method::POST,
        &format!("{FILE}/{ck}?confirm=1"),
        r#"{"crc64":"123"}"#,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body["path"], json!(["big.bin"]));
    assert_eq!(r.body["name"], "big.bin");
    assert_eq!(r.body["type"], "file");
    assert_eq!(r.body["size"], "10");
    assert_eq!(r.body["crc64"], "123");
    assert_eq!(r.body["metaData"], json!({}));
    assert_eq!(r.body["isOverwritten"], false);

    send(&mut m, Method::POST, &format!("{FILE}/{ck}?confirm"), "").error(409, "UploadComplete");
    send(&mut m, Method::POST, &format!("{FILE}/{ck}?renew"), "").error(404, "ConfirmKeyNotFound");
    send(&mut m, Method::DELETE, &format!("{FILE}/{ck}?upload"), "")
        .error(404, "ConfirmKeyNotFound");
    let r = send(&mut m, Method::GET, &format!("{FILE}/{ck}?upload"), "");
    assert_eq!(r.body["confirmed"], true);
}

#[test]
fn simple_begin_then_confirm() {
    let mut m = MockSmh::new();
    let r = send(
        &mut m,
        Method::PUT,
        &format!("{FILE}/small.txt?filesize=5"),
        "{}",
    );
    assert_eq!(r.status, 201);
    let ck = r.body["confirmKey"].as_str().unwrap().to_string();
    assert!(r.body.get("uploadId").is_none(), "{}", r.body);
    assert_eq!(
        r.body["headers"]["Content-Type"],
        "application/octet-stream"
    );
    assert!(r.body["headers"].get("x-cos-traffic-limit").is_none());
    // SMH renews multipart tasks only.
    send(&mut m, Method::POST, &format!("{FILE}/{ck}?renew"), "").error(404, "ConfirmKeyNotFound");
    let r = send(&mut m, Method::POST, &format!("{FILE}/{ck}?confirm"), "{}");
    assert_eq!(r.status, 200);
    assert_eq!(r.body["size"], "5");
    assert_eq!(r.body["contentType"], "text/plain");
    // A second upload of the same path overwrites it.
    let ck2 = upload(&mut m, "small.txt", "{}");
    assert_eq!(ck2, ck);
}

#[test]
fn form_begin_answers_form_fields() {
    let mut m = MockSmh::new();
    let r = send(
        &mut m,
        Method::POST,
        &format!("{FILE}/f.bin?traffic_limit=819200"),
        "{}",
    );
    assert_eq!(r.status, 201);
    assert_eq!(r.body["confirmKey"], confirm_key_for("lib1", "-", "f.bin"));
    assert_eq!(r.body["form"]["x-cos-traffic-limit"], "819200");
    assert!(r.body.get("headers").is_none() && r.body.get("uploadId").is_none());
}

#[test]
fn a_cancelled_upload_cannot_be_confirmed() {
    let mut m = MockSmh::new();
    let r = send(&mut m, Method::POST, &format!("{FILE}/c.bin?multipart"), "");
    let ck = r.body["confirmKey"].as_str().unwrap().to_string();
    let r = send(&mut m, Method::DELETE, &format!("{FILE}/{ck}?upload=1"), "");
    assert_eq!(r.status, 204);
    assert_eq!(r.body, Value::Null);
    send(&mut m, Method::POST, &format!("{FILE}/{ck}?confirm"), "")
        .error(404, "ConfirmKeyNotFound");
    send(&mut m, Method::DELETE, &format!("{FILE}/{ck}?upload"), "")
        .error(404, "ConfirmKeyNotFound");
    send(&mut m, Method::GET, &format!("{FILE}/{ck}?upload"), "").error(404, "ConfirmKeyNotFound");
    send(&mut m, Method::POST, &format!("{FILE}/{ck}?renew"), "").error(404, "ConfirmKeyNotFound");
    send(&mut m, Method::GET, &format!("{FILE}/c.bin?info"), "").error(404, "FileNotFound");
}

#[test]
fn a_nested_upload_needs_its_directory() {
    let mut m = MockSmh::new();
    let target = format!("{FILE}/docs%2Fsub%2Fa.bin?multipart=1");
    send(&mut m, Method::POST, &target, "{}").error(404, "DirectoryNotFound");
    send(
        &mut m,
        Method::PUT,
        &format!("{FILE}/docs%2Fsub%2Fa.bin"),
        "{}",
    )
    .error(404, "DirectoryNotFound");

    let r = send(&mut m, Method::PUT, &format!("{DIR}/docs%2Fsub"), "{}");
    assert_eq!(r.status, 201);
    assert_eq!(r.body["path"], json!(["docs", "sub"]));
    assert!(r.body["creationTime"].as_str().unwrap().ends_with('Z'));
    // Exists already; so does the parent SMH created with it.
    send(&mut m, Method::PUT, &format!("{DIR}/docs%2Fsub"), "{}")
        .error(409, "SameNameDirectoryOrFileExists");
    send(&mut m, Method::PUT, &format!("{DIR}/docs"), "{}")
        .error(409, "SameNameDirectoryOrFileExists");

    let r = send(&mut m, Method::POST, &target, "{}");
    assert_eq!(r.status, 201);
    // A leading `/` (AGENTS.md style) names the same file.
    assert_eq!(
        r.body["confirmKey"],
        confirm_key_for("lib1", "-", "/docs/sub/a.bin")
    );
    let r = send(
        &mut m,
        Method::POST,
        &format!("{FILE}/%2Fdocs%2Fsub%2Fa.bin?multipart"),
        "",
    );
    assert_eq!(
        r.body["confirmKey"],
        confirm_key_for("lib1", "-", "docs/sub/a.bin")
    );
    // A directory is not an upload target, and a file is not a parent directory.
    send(&mut m, Method::POST, &format!("{FILE}/docs?multipart"), "")
        .error(409, "SameNameDirectoryOrFileExists");
    upload(&mut m, "top.bin", "{}");
    send(&mut m, Method::PUT, &format!("{DIR}/top.bin%2Fx"), "{}")
        .error(409, "SameNameDirectoryOrFileExists");
}

#[test]
fn known_hashes_give_202_then_an_instant_upload() {
    let mut m = MockSmh::new();
    upload(
        &mut m,
        "orig.bin",
        r#"{"beginningHash":"bh","fullHash":"fh","size":"7"}"#,
    );

    let r = send(
        &mut m,
        Method::POST,
        &format!("{FILE}/copy.bin?multipart=1"),
        r#"{"beginningHash":"bh"}"#,
    );
    assert_eq!(r.status, 202);
    assert_eq!(r.body, Value::Null);
    let r = send(
        &mut m,
        Method::PUT,
        &format!("{FILE}/copy.bin"),
        r#"{"beginningHash":"bh"}"#,
    );
    assert_eq!(r.status, 202);

    let body = r#"{"beginningHash":"bh","fullHash":"fh"}"#;
    let r = send(
        &mut m,
        Method::POST,
        &format!("{FILE}/copy.bin?multipart=1"),
        body,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body["path"], json!(["copy.bin"]));
    assert_eq!(r.body["size"], "7");
    let r = send(&mut m, Method::GET, &format!("{FILE}/copy.bin?info"), "");
    assert_eq!(r.status, 200);

    // Unknown hashes start an upload; another library does not share the content.
    let r = send(
        &mut m,
        Method::POST,
        &format!("{FILE}/n.bin?multipart"),
        r#"{"beginningHash":"other"}"#,
    );
    assert_eq!(r.status, 201);
    let r = send(
        &mut m,
        Method::POST,
        "/api/v1/file/lib2/-/n.bin?multipart",
        body,
    );
    assert_eq!(r.status, 201);
}

#[test]
fn info_and_download_of_a_confirmed_file() {
    let mut m = MockSmh::new();
    send(&mut m, Method::PUT, &format!("{DIR}/dir%20a"), "{}");
    upload(&mut m, "dir%20a%2Fb%20c.jpg", r#"{"size":42}"#);

    let r = send(
        &mut m,
        Method::GET,
        &format!("{FILE}/dir%20a%2Fb%20c.jpg?info=1&purpose=download"),
        "",
    );
    assert_eq!(r.status, 200);
    let cos_url = "https://examplebucket-1250000000.cos.ap-beijing.myqcloud.com/lib1/dir%20a/b%20c.jpg?sign=mock";
    assert_eq!(r.body["cosUrl"], cos_url);
    assert_eq!(r.body["type"], "file");
    assert_eq!(r.body["size"], "42");
    assert_eq!(r.body["contentType"], "image/jpeg");
    let r = send(
        &mut m,
        Method::GET,
        &format!("{FILE}/dir%20a%2Fb%20c.jpg?info&pre_check=1"),
        "",
    );
    assert!(r.body.get("cosUrl").is_none());

    let r = send(
        &mut m,
        Method::GET,
        &format!("{FILE}/dir%20a%2Fb%20c.jpg"),
        "",
    );
    assert_eq!(r.status, 302);
    assert_eq!(r.headers["location"], cos_url);
    assert_eq!(r.headers["x-smh-size"], "42");
    assert_eq!(r.headers["x-smh-type"], "file");
    let r = send(
        &mut m,
        Method::HEAD,
        &format!("{FILE}/dir%20a%2Fb%20c.jpg"),
        "",
    );
    assert_eq!(r.status, 200);

    send(&mut m, Method::GET, &format!("{FILE}/nope.jpg?info"), "").error(404, "FileNotFound");
    send(&mut m, Method::GET, &format!("{FILE}/nope.jpg"), "").error(404, "FileNotFound");
    // Files are per library and space.
    send(
        &mut m,
        Method::GET,
        "/api/v1/file/lib2/-/dir%20a%2Fb%20c.jpg?info",
        "",
    )
    .error(404, "FileNotFound");
    send(
        &mut m,
        Method::GET,
        "/api/v1/file/lib1/s1/dir%20a%2Fb%20c.jpg?info",
        "",
    )
    .error(404, "FileNotFound");

    let r = send(
        &mut m,
        Method::GET,
        &format!("{DIR}/dir%20a%2Fb%20c.jpg?info"),
        "",
    );
    assert_eq!(r.body["type"], "file");
    let r = send(&mut m, Method::GET, &format!("{DIR}/dir%20a?info"), "");
    assert_eq!(r.body["type"], "dir");
    assert_eq!(r.body["path"], json!(["dir a"]));
    send(&mut m, Method::GET, &format!("{DIR}/nope?info"), "").error(404, "PathNotFound");
}

#[test]
fn listing_deleting_copying_and_moving() {
    let mut m = MockSmh::new();
    send(&mut m, Method::PUT, &format!("{DIR}/d%2Fe"), "{}");
    upload(&mut m, "d%2Fa.txt", "{}");
    upload(&mut m, "top.txt", "{}");

    let r = send(&mut m, Method::GET, &format!("{DIR}/d?by-marker=1"), "");
    assert_eq!(r.status, 200);
    assert_eq!(r.body["path"], json!(["d"]));
    let names: Vec<_> = r.body["contents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].clone(), e["type"].clone()))
        .collect();
    assert_eq!(
        names,
        [(json!("e"), json!("dir")), (json!("a.txt"), json!("file"))]
    );
    // The root: trailing slash (JSDoc style) or `%2F`.
    for root in [format!("{DIR}/?by-page=1"), format!("{DIR}/%2F?by-page=1")] {
        let r = send(&mut m, Method::GET, &root, "");
        assert_eq!(r.body["path"], json!([]));
        assert_eq!(
            (r.body["fileCount"].clone(), r.body["subDirCount"].clone()),
            (json!(1), json!(1))
        );
    }
    send(&mut m, Method::GET, &format!("{DIR}/nope?by-marker"), "").error(404, "DirectoryNotFound");
    // SMH's docs list without a flag.
    let r = send(&mut m, Method::GET, &format!("{DIR}/d"), "");
    assert_eq!(r.body["contents"].as_array().map(Vec::len), Some(2));
    send(&mut m, Method::GET, &format!("{DIR}/nope"), "").error(404, "DirectoryNotFound");

    let r = send(
        &mut m,
        Method::PUT,
        &format!("{FILE}/d%2Fb.txt"),
        r#"{"copyFrom":"top.txt"}"#,
    );
    assert_eq!(
        (r.status.as_u16(), r.body.clone()),
        (200, json!({"path": ["d", "b.txt"]}))
    );
    let r = send(
        &mut m,
        Method::PUT,
        &format!("{FILE}/moved.txt"),
        r#"{"from":"top.txt"}"#,
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        send(&mut m, Method::GET, &format!("{FILE}/d%2Fb.txt?info"), "").status,
        200
    );
    assert_eq!(
        send(&mut m, Method::GET, &format!("{FILE}/moved.txt?info"), "").status,
        200
    );
    send(&mut m, Method::GET, &format!("{FILE}/top.txt?info"), "").error(404, "FileNotFound");

    assert_eq!(
        send(&mut m, Method::DELETE, &format!("{FILE}/moved.txt"), "").status,
        204
    );
    send(&mut m, Method::DELETE, &format!("{FILE}/moved.txt"), "").error(404, "FileNotFound");
    assert_eq!(
        send(&mut m, Method::DELETE, &format!("{DIR}/d"), "").status,
        204
    );
    send(&mut m, Method::GET, &format!("{FILE}/d%2Fa.txt?info"), "").error(404, "FileNotFound");
    send(&mut m, Method::GET, &format!("{DIR}/d%2Fe?info"), "").error(404, "PathNotFound");
}

#[test]
fn renew_of_a_key_the_mock_never_issued_still_answers_200() {
    // The gateway's tests and benchmarks renew made-up keys; the stateless `smh`
    // answers as a fresh mock does.
    let req = received(
        Method::POST,
        "/api/v1/file/lib1/-/ck1?renew&access_token=t&traffic_limit=819200",
        "",
    );
    for r in [read(smh(&req)), read(MockSmh::new().answer(&req))] {
        assert_eq!(r.status, 200);
        assert_eq!(
            r.body["domain"],
            "examplebucket-1250000000.cos.ap-beijing.myqcloud.com"
        );
        assert_eq!(r.body["path"], "/lib1/ck1");
        assert_eq!(r.body["uploadId"], "mock-upload-ck1");
        assert_eq!(r.body["confirmKey"], "ck1");
        assert_eq!(r.body["availableDomainNum"], 1);
        assert_eq!(r.body["headers"]["x-cos-traffic-limit"], 819_200);
        assert_eq!(
            r.body["headers"]["x-cos-security-token"],
            "mock-security-token"
        );
        assert!(r.body["headers"]["Authorization"].is_string());
        assert_about_an_hour_ahead(&r.body["expiration"]);
    }
    let r = read(smh(&received(
        Method::POST,
        "/api/v1/file/lib1/-/ck1?renew=1&access_token=t",
        "",
    )));
    assert!(r.body["headers"].get("x-cos-traffic-limit").is_none());
}

#[test]
fn a_missing_token_is_400_except_on_public_routes() {
    let mut m = MockSmh::new();
    let ask = |m: &mut MockSmh, method: Method, target: &str| {
        read(m.answer(&received(method, target, "")))
    };
    for target in [
        "/api/v1/file/lib1/-/ck1?renew",
        "/api/v1/file/lib1/-/ck1?renew&access_token=",
        "/api/v1/file/lib1/-/a.bin?multipart=1&traffic_limit=819200",
        "/api/v1/space/lib1/-/size",
    ] {
        ask(&mut m, Method::POST, target).error(400, "EmptyAccessToken");
    }
    for (method, target) in [
        (Method::GET, "/api/v1/share/url-detail/tok"),
        (Method::POST, "/api/v1/share/verify/code"),
        (Method::POST, "/api/v1/token/lib1/tok"),
    ] {
        let r = ask(&mut m, method, target);
        assert_eq!((r.status.as_u16(), r.body), (200, json!({"mock": "ok"})));
    }
    ask(&mut m, Method::GET, "/").error(404, "RouteNotFound");
    ask(
        &mut m,
        Method::POST,
        "/api/v2/file/lib1/-/ck1?renew&access_token=t",
    )
    .error(404, "RouteNotFound");
}

#[test]
fn other_business_routes_answer_a_json_object() {
    let mut m = MockSmh::new();
    for (method, target) in [
        (Method::GET, "/api/v1/space/lib1/-/size"),
        (Method::POST, "/api/v1/batch/lib1/-?delete=1"),
        (
            Method::GET,
            "/api/v1/directory/lib1/-/?stats=1&stats_type=normal",
        ),
        (Method::PUT, "/api/v1/file/lib1/-/a.doc?convert=1"),
        (Method::GET, "/api/v1/file/lib1/-/a.jpg?preview=1"),
    ] {
        let r = send(&mut m, method, target, "[]");
        assert_eq!(
            (r.status.as_u16(), r.body),
            (200, json!({"mock": "ok"})),
            "{target}"
        );
    }
}

#[tokio::test]
async fn the_server_keeps_state_between_requests() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mock = MockUpstream::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = mock.addr();
    let ask = |line: String| async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "{line} HTTP/1.1\r\nHost: m\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    };
    let ck = confirm_key_for("lib1", "-", "a.bin");
    let begin = ask(format!("POST {FILE}/a.bin?multipart=1&access_token=t")).await;
    assert!(begin.starts_with("HTTP/1.1 201"), "{begin}");
    let confirm = ask(format!("POST {FILE}/{ck}?confirm=1&access_token=t")).await;
    assert!(confirm.starts_with("HTTP/1.1 200"), "{confirm}");
    let download = ask(format!("GET {FILE}/a.bin?access_token=t")).await;
    assert!(download.starts_with("HTTP/1.1 302"), "{download}");
    assert_eq!(mock.count(), 3);
}

/// A create-token call's answer, against the mock that knows lib1's secret.
fn create_token(m: &mut MockSmh, query: &str) -> Answer {
    read(m.answer(&received(
        Method::GET,
        &format!("/api/v1/token?{query}"),
        "",
    )))
}

fn with_token(m: &mut MockSmh, method: Method, target: &str, token: &str) -> Answer {
    let sep = if target.contains('?') { '&' } else { '?' };
    read(m.answer(&received(
        method,
        &format!("{target}{sep}access_token={token}"),
        "",
    )))
}

#[test]
fn create_token_checks_the_library_secret_and_remembers_what_it_issued() {
    let mut m = MockSmh::new();
    m.tokens.set_secret("lib1", "s3cr3t");
    create_token(&mut m, "library_id=lib1").error(400, "EmptyLibraryIdOrSecret");
    create_token(&mut m, "library_id=lib1&library_secret=wrong")
        .error(404, "WrongLibraryIdOrSecret");
    create_token(&mut m, "library_id=lib2&library_secret=s3cr3t")
        .error(404, "WrongLibraryIdOrSecret");
    let ok = create_token(
        &mut m,
        "library_id=lib1&library_secret=s3cr3t&space_id=s1&user_id=u1&grant=upload_file%2Cbegin_upload&period=7",
    );
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(
        ok.body["expiresIn"], 300,
        "SMH clamps the period to 300 s at least"
    );
    let token = ok.body["accessToken"].as_str().unwrap();
    let issued = m.tokens.issued();
    assert_eq!(issued.len(), 1);
    assert_eq!(issued[0].token, token);
    assert_eq!(issued[0].space.as_deref(), Some("s1"));
    assert_eq!(issued[0].user.as_deref(), Some("u1"));
    assert_eq!(issued[0].grants, ["upload_file", "begin_upload"]);
    let second = create_token(&mut m, "library_id=lib1&library_secret=s3cr3t");
    assert_ne!(second.body["accessToken"], ok.body["accessToken"]);
    assert_eq!(second.body["expiresIn"], 86_400);
    m.tokens.expires_in = Some(5);
    let short = create_token(&mut m, "library_id=lib1&library_secret=s3cr3t");
    assert_eq!(short.body["expiresIn"], 5);
    m.tokens.api_down = true;
    create_token(&mut m, "library_id=lib1&library_secret=s3cr3t").error(500, "InternalServerError");
}

#[test]
fn with_a_secret_set_tokens_need_the_operations_grant() {
    let mut m = MockSmh::new();
    m.tokens.set_secret("lib1", "s3cr3t");
    let mint = |m: &mut MockSmh, q: &str| {
        create_token(m, &format!("library_id=lib1&library_secret=s3cr3t{q}")).body["accessToken"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let uploader = mint(&mut m, "&grant=upload_file&user_id=u1");
    let reader = mint(&mut m, "");
    let renew = format!("{FILE}/ck1?renew");
    assert_eq!(
        with_token(&mut m, Method::POST, &renew, &uploader).status,
        200
    );
    with_token(&mut m, Method::POST, &renew, &reader).error(403, "NoPermission");
    with_token(&mut m, Method::POST, &renew, "made-up").error(403, "InvalidAccessToken");
    // A read needs no grant; another library's path is refused.
    let list = format!("{DIR}/?by-marker=1");
    assert_eq!(with_token(&mut m, Method::GET, &list, &reader).status, 200);
    with_token(
        &mut m,
        Method::GET,
        "/api/v1/directory/lib2/-/?by-marker=1",
        &reader,
    )
    .error(403, "AccessTokenNotMatchLibrary");
    // A user's token may not pass user_id.
    with_token(
        &mut m,
        Method::POST,
        &format!("{renew}&user_id=u2"),
        &uploader,
    )
    .error(403, "NoPermission");
    // Space-bound tokens stay in their space.
    let spaced = mint(&mut m, "&space_id=s1&grant=upload_file");
    let other_space = "/api/v1/file/lib1/s2/ck1?renew";
    with_token(&mut m, Method::POST, other_space, &spaced).error(403, "AccessTokenNotMatchSpace");
    // Revoked: by the test hook, or by SMH's delete-token call.
    assert_eq!(m.tokens.revoke_all(), 3);
    with_token(&mut m, Method::POST, &renew, &uploader).error(403, "InvalidAccessToken");
    let again = mint(&mut m, "&grant=upload_file");
    let deleted = read(m.answer(&received(
        Method::DELETE,
        &format!("/api/v1/token/lib1/{again}"),
        "",
    )));
    assert_eq!(deleted.status, 204);
    with_token(&mut m, Method::POST, &renew, &again).error(403, "InvalidAccessToken");
    let fresh = mint(&mut m, "&grant=upload_file");
    m.tokens.refuse_all = true;
    with_token(&mut m, Method::POST, &renew, &fresh).error(403, "InvalidAccessToken");
}

#[test]
fn without_a_secret_any_token_is_taken_as_before() {
    let mut m = MockSmh::new();
    let r = with_token(
        &mut m,
        Method::POST,
        &format!("{FILE}/ck1?renew"),
        "anything",
    );
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn held_answers_wait_for_release_and_concurrency_is_counted() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mock = MockUpstream::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = mock.addr();
    let ask = move || async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST {FILE}/ck?renew=1&access_token=t HTTP/1.1\r\nHost: m\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    };
    mock.hold();
    let calls: Vec<_> = (0..3).map(|_| tokio::spawn(ask())).collect();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while mock.active() < 3 {
        assert!(tokio::time::Instant::now() < deadline, "3 held requests");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(mock.count(), 3, "held requests are recorded");
    assert!(calls.iter().all(|c| !c.is_finished()), "none answered yet");
    mock.release();
    for c in calls {
        let out = c.await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    }
    assert_eq!(mock.max_active(), 3);
    // Answered: nothing is active any more (the guard runs before the socket closes).
    assert_eq!(mock.active(), 0);
}
