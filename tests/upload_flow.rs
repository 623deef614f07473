//! SMH's upload and download sequences (SMH-ROUTES.md Q1) through the real binary
//! in its default configuration (`unmatched = "deny"`), against the mock SMH: a
//! multipart upload (begin → renew → confirm), a simple upload (begin → confirm),
//! a cancel, the resume path (renew first), and the `DirectoryNotFound` → create
//! directory → retry path the SDK takes with `autoCreateDir`.

mod common;

use bytes::Bytes;
use common::*;
use http::Method;
use serde_json::{Value, json};
use smh_gateway::mock_upstream::{MockUpstream, confirm_key_for};

struct Flow {
    _gw: BinGateway,
    mock: MockUpstream,
    base: String,
    token: String,
    _dir: std::path::PathBuf,
}

async fn flow() -> Flow {
    let mock = MockUpstream::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let dir = temp_dir("flow");
    let path = dir.join("gateway.toml");
    let setup = Setup {
        rest: "[[libraries]]\nid = \"lib1\"\n".into(),
        ..Setup::default()
    };
    std::fs::write(&path, config_text(&dir, &mock.url(), &setup)).unwrap();
    let gw = BinGateway::spawn(&path, &[]);
    let base = format!("http://{}/api/v1", gw.addr);
    Flow {
        _gw: gw,
        mock,
        base,
        token: token_with(json!({ "permissions": ["upload_file", "create_directory"] })),
        _dir: dir,
    }
}

impl Flow {
    async fn call(&self, method: Method, target: &str, body: &str) -> Resp {
        let sep = if target.contains('?') { '&' } else { '?' };
        let url = format!("{}{target}{sep}access_token={}", self.base, self.token);
        let headers: &[(&str, &str)] = if body.is_empty() {
            &[]
        } else {
            &[("content-type", "application/json")]
        };
        send(method, &url, headers, Bytes::from(body.to_string())).await
    }
}

impl Flow {
    /// Begins a multipart upload of `path` (as the SDK encodes it) and returns its
    /// confirm key.
    async fn begin_multipart(&self, path: &str) -> String {
        let begin = self
            .call(
                Method::POST,
                &format!("/file/lib1/-/{path}?multipart=1"),
                "{}",
            )
            .await;
        assert_eq!(begin.status, 201, "{}", begin.text());
        json_of(&begin)["confirmKey"].as_str().unwrap().to_string()
    }
}

fn json_of(r: &Resp) -> Value {
    serde_json::from_slice(&r.body).unwrap_or(Value::Null)
}

#[tokio::test]
async fn a_multipart_upload_begins_renews_and_confirms() {
    let f = flow().await;
    let begin = f
        .call(
            Method::POST,
            "/file/lib1/-/docs%2Fbig%20file.bin?multipart=1&filesize=2621440&traffic_limit=819200",
            r#"{"size":"2621440"}"#,
        )
        .await;
    assert_eq!(begin.status, 404, "no directory yet: {}", begin.text());
    assert_eq!(json_of(&begin)["code"], "DirectoryNotFound");
    // The SDK creates the parent directory and begins again.
    let mkdir = f.call(Method::PUT, "/directory/lib1/-/docs", "{}").await;
    assert_eq!(mkdir.status, 201, "{}", mkdir.text());
    let begin = f
        .call(
            Method::POST,
            "/file/lib1/-/docs%2Fbig%20file.bin?multipart=1&filesize=2621440&traffic_limit=819200",
            r#"{"size":"2621440"}"#,
        )
        .await;
    assert_eq!(begin.status, 201, "{}", begin.text());
    let begun = json_of(&begin);
    let ck = begun["confirmKey"].as_str().unwrap().to_string();
    assert_eq!(ck, confirm_key_for("lib1", "-", "docs/big file.bin"));
    // What SMH saw: the FilePath as one segment, the flag first and bare.
    let got = f.mock.last().unwrap();
    assert_eq!(got.path, "/api/v1/file/lib1/-/docs%2Fbig%20file.bin");
    assert!(
        got.query
            .as_deref()
            .unwrap()
            .starts_with("multipart&access_token=")
    );

    let renew = f
        .call(
            Method::POST,
            &format!("/file/lib1/-/{ck}?renew=1&traffic_limit=819200"),
            "",
        )
        .await;
    assert_eq!(renew.status, 200, "{}", renew.text());
    assert_eq!(renew.headers["x-cache"], "MISS");
    assert_eq!(json_of(&renew)["uploadId"], begun["uploadId"]);
    let again = f
        .call(
            Method::POST,
            &format!("/file/lib1/-/{ck}?renew=1&traffic_limit=819200"),
            "",
        )
        .await;
    assert_eq!(again.headers["x-cache"], "HIT");

    let confirm = f
        .call(
            Method::POST,
            &format!("/file/lib1/-/{ck}?confirm=1"),
            r#"{"crc64":"9549364264773228564"}"#,
        )
        .await;
    assert_eq!(confirm.status, 200, "{}", confirm.text());
    assert_eq!(
        f.mock.last().unwrap().body.as_ref(),
        br#"{"crc64":"9549364264773228564"}"#
    );
    // Confirm dropped the cached renew: the next renew reaches SMH, which has
    // closed the upload.
    let late = f
        .call(Method::POST, &format!("/file/lib1/-/{ck}?renew=1"), "")
        .await;
    assert_eq!(late.status, 404, "{}", late.text());
    assert_eq!(late.headers["x-cache"], "MISS");

    // The download flow: info, then the 302 download.
    let info = f
        .call(
            Method::GET,
            "/file/lib1/-/docs%2Fbig%20file.bin?info=1&purpose=download",
            "",
        )
        .await;
    assert_eq!(info.status, 200, "{}", info.text());
    assert!(json_of(&info)["cosUrl"].is_string());
    let download = f
        .call(Method::GET, "/file/lib1/-/docs%2Fbig%20file.bin", "")
        .await;
    assert_eq!(download.status, 302, "{}", download.text());
    assert!(download.headers.contains_key("location"));
}

#[tokio::test]
async fn a_simple_upload_begins_and_confirms_and_a_cancel_ends_an_upload() {
    let f = flow().await;
    let begin = f
        .call(Method::PUT, "/file/lib1/-/small.txt?filesize=3", "{}")
        .await;
    assert_eq!(begin.status, 201, "{}", begin.text());
    let ck = json_of(&begin)["confirmKey"].as_str().unwrap().to_string();
    let confirm = f
        .call(Method::POST, &format!("/file/lib1/-/{ck}?confirm=1"), "{}")
        .await;
    assert_eq!(confirm.status, 200, "{}", confirm.text());

    // Cancel: begin, abort, and the upload is gone.
    let ck = f.begin_multipart("gone.bin").await;
    let cancel = f
        .call(Method::DELETE, &format!("/file/lib1/-/{ck}?upload=1"), "")
        .await;
    assert_eq!(cancel.status, 204, "{}", cancel.text());
    let confirm = f
        .call(Method::POST, &format!("/file/lib1/-/{ck}?confirm=1"), "{}")
        .await;
    assert_eq!(confirm.status, 404, "{}", confirm.text());
}

#[tokio::test]
async fn a_resumed_upload_renews_first_then_confirms() {
    let f = flow().await;
    let ck = f.begin_multipart("resume.bin").await;
    // A new client process, with only its checkpoint: status, renew, confirm.
    let status = f
        .call(Method::GET, &format!("/file/lib1/-/{ck}?upload=1"), "")
        .await;
    assert_eq!(status.status, 200, "{}", status.text());
    let renew = f
        .call(Method::POST, &format!("/file/lib1/-/{ck}?renew=1"), "")
        .await;
    assert_eq!(renew.status, 200, "{}", renew.text());
    let confirm = f
        .call(Method::POST, &format!("/file/lib1/-/{ck}?confirm=1"), "{}")
        .await;
    assert_eq!(confirm.status, 200, "{}", confirm.text());
}

#[tokio::test]
async fn the_flow_needs_its_grants_and_nothing_unchecked_reaches_smh() {
    let f = flow().await;
    let reader = token_with(json!({ "permissions": ["read_only"] }));
    let before = f.mock.count();
    for (method, target, body) in [
        (Method::POST, "/file/lib1/-/x.bin?multipart=1", "{}"),
        (Method::PUT, "/file/lib1/-/x.txt", "{}"),
        (Method::POST, "/file/lib1/-/ck-x?confirm=1", "{}"),
        (Method::DELETE, "/file/lib1/-/ck-x?upload=1", ""),
        (Method::PUT, "/directory/lib1/-/d", "{}"),
    ] {
        let sep = if target.contains('?') { '&' } else { '?' };
        let url = format!("{}{target}{sep}access_token={reader}", f.base);
        let r = send(method, &url, &[], Bytes::from(body)).await;
        r.assert_error(403, "NoPermission");
    }
    assert_eq!(f.mock.count(), before);
}
