//! The route table end to end (SPEC §11): every row, walked from the table, refuses
//! a token without its permissions with nothing reaching SMH, and lets each of its
//! permission sets through; a hand-written list of SMH's stated upload-flow grants
//! pins the table rather than restating it; spaces named in bodies are scoped;
//! flag-less PUTs are dispatched by body keys; confirm and cancel drop the renew
//! cache; library_secret never passes.

mod common;

use bytes::Bytes;
use common::*;
use http::Method;
use serde_json::json;
use smh_gateway::mock_upstream::Behaviour;
use smh_gateway::proxy::route::{Route, Router};
use smh_gateway::proxy::routes::{AuthPolicy, BodyPolicy};
use smh_gateway::template::Seg;

fn table() -> Router {
    Router::new(&[]).unwrap()
}

/// A request shaped like the SDK's for this row: path values, its flag, a body.
fn sample(route: &Route, token: Option<&str>) -> (Method, String, Bytes) {
    let mut path = String::new();
    for s in &route.template.segs {
        path.push('/');
        path.push_str(match s {
            Seg::Lit(l) => l,
            Seg::Library => "lib1",
            Seg::Space => "s1",
            Seg::Spaces => "s1",
            Seg::Key => "ck-walk",
            Seg::Id => "42",
            Seg::Path => "docs%2Fa.txt",
        });
    }
    let mut query = Vec::new();
    if let Some(f) = &route.flag {
        query.push(format!("{f}=1"));
    }
    if let Some(t) = token {
        query.push(format!("access_token={t}"));
    }
    let body = match (&route.body_key, route.body) {
        (Some(k), _) => format!(r#"{{"{k}":"/src.txt"}}"#),
        (None, BodyPolicy::JsonArray) => "[]".into(),
        (None, BodyPolicy::Json) => "{}".into(),
        (None, BodyPolicy::None) => String::new(),
    };
    let method = Method::from_bytes(route.method.as_str().as_bytes()).unwrap();
    (
        method,
        format!("{path}?{}", query.join("&")),
        Bytes::from(body),
    )
}

fn token_for(grants: &[&str]) -> String {
    token_with(json!({ "permissions": grants, "space_id": "s1" }))
}

/// An SMH error; a HEAD answer carries its status alone.
#[track_caller]
fn refused(route: &Route, r: &Resp, status: u16, code: &str) {
    if route.method.as_str() == "HEAD" {
        assert_eq!(r.status.as_u16(), status, "{}", route.name);
    } else {
        r.assert_error(status, code);
    }
}

async fn call(gw: &TestGateway, route: &Route, token: Option<&str>) -> Resp {
    let (method, target, body) = sample(route, token);
    send(method, &gw.url(&target), &[], body).await
}

#[tokio::test]
async fn every_row_refuses_a_token_without_its_permissions_and_admits_each_set() {
    let gw = start().await;
    gw.mock.set_behaviour(Behaviour::Fixed {
        status: 200,
        body: "{}".into(),
    });
    let router = table();
    for route in router.routes() {
        let name = &route.name;
        match route.auth {
            AuthPolicy::Public => {
                let before = gw.mock.count();
                let r = call(&gw, route, None).await;
                assert_eq!(r.status, 200, "{name}: {}", r.text());
                assert_eq!(gw.mock.count(), before + 1, "{name}");
                continue;
            }
            AuthPolicy::ShareToken => {
                let r = call(&gw, route, None).await;
                refused(route, &r, 400, "EmptyAccessToken");
                let before = gw.mock.count();
                let r = call(&gw, route, Some("an-smh-share-token")).await;
                assert_eq!(r.status, 200, "{name}: {}", r.text());
                assert_eq!(gw.mock.count(), before + 1, "{name}");
                continue;
            }
            AuthPolicy::Token => {}
        }
        let before = gw.mock.count();
        let r = call(&gw, route, None).await;
        refused(route, &r, 400, "EmptyAccessToken");
        let other = token_with(json!({ "library_id": "lib2", "permissions": ["admin"] }));
        // (A row without a library in its path acts in the token's own.)
        if route.template.has(&Seg::Library) {
            let r = call(&gw, route, Some(&other)).await;
            refused(route, &r, 403, "AccessTokenNotMatchLibrary");
        }
        if !route.permissions.is_open() {
            // A grant that no built-in row asks for.
            let none = token_for(&["acl"]);
            let r = call(&gw, route, Some(&none)).await;
            refused(route, &r, 403, "NoPermission");
        }
        assert_eq!(gw.mock.count(), before, "{name}: a refusal reached SMH");
        let sets: Vec<Vec<&str>> = if route.permissions.is_open() {
            vec![vec!["acl"]]
        } else {
            route
                .permissions
                .alternatives()
                .iter()
                .map(|all| all.iter().map(String::as_str).collect())
                .collect()
        };
        for set in sets {
            let r = call(&gw, route, Some(&token_for(&set))).await;
            assert_eq!(r.status, 200, "{name} with {set:?}: {}", r.text());
        }
        assert!(gw.mock.count() > before, "{name}: nothing reached SMH");
        let got = gw.mock.last().unwrap();
        assert_eq!(got.method.as_str(), route.method.as_str(), "{name}");
    }
}

/// SMH's stated grants for the calls of an upload (SMH-ROUTES.md A, Q1), written out
/// here rather than read from the table, so that a change of the table shows.
#[tokio::test]
async fn the_upload_flow_needs_exactly_smh_s_stated_grants() {
    const UPLOAD: &[&str] = &[
        "admin",
        "space_admin",
        "upload_file",
        "upload_file_force",
        "begin_upload",
        "begin_upload_force",
    ];
    let cases: &[(&str, &[&str])] = &[
        ("renew", UPLOAD),
        ("multipart_upload_file", UPLOAD),
        ("simple_upload_file", UPLOAD),
        ("form_upload_file", UPLOAD),
        ("get_file_upload", UPLOAD),
        ("abort_file_upload", UPLOAD),
        (
            "complete_file_upload",
            &[
                "admin",
                "space_admin",
                "upload_file",
                "upload_file_force",
                "confirm_upload",
            ],
        ),
        (
            "create_directory",
            &["admin", "space_admin", "create_directory"],
        ),
    ];
    let gw = start().await;
    gw.mock.set_behaviour(Behaviour::Fixed {
        status: 200,
        body: "{}".into(),
    });
    let router = table();
    let all = smh_gateway::smh::GRANTS;
    for (name, grants) in cases {
        let route = router.routes().iter().find(|r| &*r.name == *name).unwrap();
        for g in all {
            let r = call(&gw, route, Some(&token_for(&[g]))).await;
            if grants.contains(g) {
                assert_eq!(r.status, 200, "{name} with {g}: {}", r.text());
            } else {
                r.assert_error(403, "NoPermission");
            }
        }
    }
}

#[tokio::test]
async fn flagless_puts_are_authorised_as_the_operation_their_body_names() {
    let gw = start().await;
    gw.mock.set_behaviour(Behaviour::Fixed {
        status: 200,
        body: "{}".into(),
    });
    let put = |tok: String, body: &'static str| {
        let url = gw.url(&format!("/api/v1/file/lib1/s1/dst.txt?access_token={tok}"));
        async move { send(Method::PUT, &url, &[], Bytes::from_static(body.as_bytes())).await }
    };
    // An uploader may begin a simple upload, but not copy, move or link with it.
    let uploader = token_for(&["upload_file"]);
    assert_eq!(put(uploader.clone(), "{}").await.status, 200);
    put(uploader.clone(), r#"{"copyFrom":"/a"}"#)
        .await
        .assert_error(403, "NoPermission");
    put(uploader.clone(), r#"{"from":"/a"}"#)
        .await
        .assert_error(403, "NoPermission");
    assert_eq!(
        put(uploader.clone(), r#"{"linkTo":"/a"}"#).await.status,
        200,
        "upload_file may create a symlink (SMH states it)"
    );
    let copier = token_for(&["copy_file"]);
    assert_eq!(
        put(copier.clone(), r#"{"copyFrom":"/a"}"#).await.status,
        200
    );
    put(copier.clone(), "{}")
        .await
        .assert_error(403, "NoPermission");
    // Ambiguous or repeated keys are refused before any token is looked at.
    let before = gw.mock.count();
    put(copier.clone(), r#"{"copyFrom":"/a","from":"/b"}"#)
        .await
        .assert_error(400, "ParamInvalid");
    put(copier, r#"{"copyFrom":"/a","copyFrom":"/b"}"#)
        .await
        .assert_error(400, "ParamInvalid");
    assert_eq!(gw.mock.count(), before);
    // What was checked is what SMH got: the body byte for byte.
    let body = r#"{ "copyFrom" : "/a" ,"contentCas":"x"}"#;
    let r = put(token_for(&["copy_file"]), body).await;
    assert_eq!(r.status, 200);
    assert_eq!(gw.mock.last().unwrap().body.as_ref(), body.as_bytes());
}

#[tokio::test]
async fn spaces_named_in_bodies_and_queries_are_scoped_like_the_path() {
    let gw = start().await;
    gw.mock.set_behaviour(Behaviour::Fixed {
        status: 200,
        body: "{}".into(),
    });
    let tok = token_with(
        json!({ "permissions": ["space_admin", "copy_file"], "space_id": ["s1", "s2"] }),
    );
    let admin = token_with(json!({ "permissions": ["admin"] }));
    let req = |method: Method, target: String, body: &'static str| {
        let url = gw.url(&target);
        async move { send(method, &url, &[], Bytes::from_static(body.as_bytes())).await }
    };
    let before = gw.mock.count();
    for (method, target, body) in [
        // A copy out of another tenant's space.
        (
            Method::PUT,
            format!("/api/v1/file/lib1/s1/x?access_token={tok}"),
            r#"{"copyFrom":"/a","copyFromSpaceId":"s9"}"#,
        ),
        // A batch item naming another space.
        (
            Method::POST,
            format!("/api/v1/batch/lib1/s1?copy=1&access_token={tok}"),
            r#"[{"copyFrom":"/a","to":"/b","copyFromSpaceId":"s2"},{"copyFrom":"/c","to":"/d","copyFromSpaceId":"s9"}]"#,
        ),
        (
            Method::POST,
            format!("/api/v1/batch/lib1/s1?move=1&access_token={tok}"),
            r#"[{"from":"/a","to":"/b","fromSpaceId":"other"}]"#,
        ),
        // Usage of a list of spaces.
        (
            Method::GET,
            format!("/api/v1/usage/lib1/s1%2Cs9?access_token={tok}"),
            "",
        ),
        // A quota over spaces the token does not cover.
        (
            Method::POST,
            format!("/api/v1/quota/lib1?access_token={tok}"),
            r#"{"spaces":["s1","s9"],"removeWhenExceed":true,"removeAfterDays":1}"#,
        ),
        // A new space named in the query.
        (
            Method::POST,
            format!("/api/v1/space/lib1?space_id=s9&access_token={tok}"),
            "{}",
        ),
        // Saving a share into another space.
        (
            Method::POST,
            format!("/api/v1/share/file/CODE?save=1&access_token={tok}"),
            r#"{"targetSpaceId":"s9","sourceInodesPath":"1","inodes":[1]}"#,
        ),
    ] {
        let r = req(method.clone(), target.clone(), body).await;
        r.assert_error(403, "AccessTokenNotMatchSpace");
    }
    assert_eq!(gw.mock.count(), before, "a cross-space request reached SMH");
    // Within the token's spaces they pass.
    let r = req(
        Method::PUT,
        format!("/api/v1/file/lib1/s1/x?access_token={tok}"),
        r#"{"copyFrom":"/a","copyFromSpaceId":"s2"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Uncompressing into another space needs admin even with both spaces covered.
    let both = token_with(
        json!({ "permissions": ["read_only", "upload_file"], "space_id": ["s1", "s2"] }),
    );
    req(
        Method::POST,
        format!("/api/v1/file/lib1/s1/a.zip?uncompress=1&access_token={both}"),
        r#"{"targetPath":"/","targetSpaceId":"s2"}"#,
    )
    .await
    .assert_error(403, "NoPermission");
    let r = req(
        Method::POST,
        format!("/api/v1/file/lib1/s1/a.zip?uncompress=1&access_token={admin}"),
        r#"{"targetPath":"/","targetSpaceId":"s2"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test]
async fn library_secret_is_refused_on_every_row_and_never_logged() {
    let gw = start().await;
    let router = table();
    for route in router.routes() {
        let (method, target, body) = sample(route, Some(&token_for(&["admin"])));
        let r = send(
            method,
            &gw.url(&format!("{target}&library_secret=TOPSECRET")),
            &[],
            body,
        )
        .await;
        refused(route, &r, 400, "ParamInvalid");
        assert!(!r.text().contains("TOPSECRET"));
    }
    assert_eq!(gw.mock.count(), 0);
    for line in gw.wait_log_lines().await {
        assert!(!line.to_string().contains("TOPSECRET"), "{line}");
    }
}

#[tokio::test]
async fn delete_with_permanent_needs_the_permanent_grant() {
    let gw = start().await;
    gw.mock.set_behaviour(Behaviour::Fixed {
        status: 200,
        body: "{}".into(),
    });
    let plain = token_for(&["delete_file"]);
    let del = |tok: &str, q: &str| {
        let url = gw.url(&format!("/api/v1/file/lib1/s1/a.txt?access_token={tok}{q}"));
        async move { send(Method::DELETE, &url, &[], Bytes::new()).await }
    };
    assert_eq!(del(&plain, "").await.status, 200);
    assert_eq!(del(&plain, "&permanent=0").await.status, 200);
    del(&plain, "&permanent=1")
        .await
        .assert_error(403, "NoPermission");
    let permanent = token_for(&["delete_file_permanent"]);
    assert_eq!(del(&permanent, "&permanent=1").await.status, 200);
    assert!(
        gw.mock
            .last()
            .unwrap()
            .query
            .unwrap()
            .ends_with("permanent=1")
    );
}

#[tokio::test]
async fn rows_forward_exactly_what_they_checked() {
    let gw = start().await;
    gw.mock.set_behaviour(Behaviour::Fixed {
        status: 200,
        body: "{}".into(),
    });
    let tok = token_for(&["upload_file"]);
    let r = gw
        .request(
            Method::GET,
            &format!(
                "/api/v1/file/lib1/s1/dir%20a/sub%2Ff%20%231.txt?purpose=download&info=1&evil=1&access_token={tok}&traffic_limit=1&history_id=a+b"
            ),
            &[],
            b"",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let got = gw.mock.last().unwrap();
    // FilePath as one segment, `/` as %2F; flag first and bare; known parameters
    // re-encoded in the row's order; the unknown one dropped; traffic_limit clamped.
    assert_eq!(
        got.path,
        "/api/v1/file/lib1/s1/dir%20a%2Fsub%2Ff%20%231.txt"
    );
    assert_eq!(
        got.query.as_deref(),
        Some(
            format!(
                "info&access_token={tok}&traffic_limit=102400&history_id=a%20b&purpose=download"
            )
            .as_str()
        )
    );
}

#[tokio::test]
async fn confirm_and_cancel_drop_the_uploads_renew_cache_entries() {
    let gw = start().await;
    let tok = token();
    let target = format!("/api/v1/file/lib1/-/ck-inv?renew&access_token={tok}");
    let renew = || gw.post(&target);
    assert_eq!(renew().await.headers["x-cache"], "MISS");
    assert_eq!(renew().await.headers["x-cache"], "HIT");
    // Confirm (whatever SMH answers) drops the entry, and the upload stays gone
    // for the cache: later renews go to SMH (which refuses a confirmed upload).
    gw.post(&format!(
        "/api/v1/file/lib1/-/ck-inv?confirm&access_token={tok}"
    ))
    .await;
    assert_eq!(renew().await.headers["x-cache"], "MISS");
    assert_eq!(renew().await.headers["x-cache"], "MISS");
    // So does cancel, for another upload.
    let target = format!("/api/v1/file/lib1/-/ck-inv2?renew&access_token={tok}");
    assert_eq!(gw.post(&target).await.headers["x-cache"], "MISS");
    assert_eq!(gw.post(&target).await.headers["x-cache"], "HIT");
    gw.request(
        Method::DELETE,
        &format!("/api/v1/file/lib1/-/ck-inv2?upload=1&access_token={tok}"),
        &[],
        b"",
    )
    .await;
    assert_eq!(gw.post(&target).await.headers["x-cache"], "MISS");
}

#[tokio::test]
async fn operator_rules_replace_permissions_and_add_routes() {
    let gw = start_with(Setup {
        rest: r#"
[[routes.rules]]
name = "renew"
permissions = ["admin"]

[[routes.rules]]
name = "vendor_report"
method = "GET"
path = "/api/v2/report/{library}/{space}"
permissions = ["space_admin"]
params = ["day"]
"#
        .into(),
        ..Setup::default()
    })
    .await;
    gw.mock.set_behaviour(Behaviour::Fixed {
        status: 200,
        body: "{}".into(),
    });
    gw.renew(&format!("access_token={}", token()))
        .await
        .assert_error(403, "NoPermission");
    let admin = token_with(json!({ "permissions": ["admin"] }));
    assert_eq!(gw.renew(&format!("access_token={admin}")).await.status, 200);
    let sa = token_for(&["space_admin"]);
    let r = gw
        .request(
            Method::GET,
            &format!("/api/v2/report/lib1/s1?day=3&x=1&access_token={sa}"),
            &[],
            b"",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        gw.mock.last().unwrap().query.as_deref(),
        Some(format!("access_token={sa}&day=3").as_str())
    );
    let lines = gw.wait_log_lines().await;
    assert!(
        lines.iter().any(|l| l["route"] == "vendor_report"),
        "{lines:?}"
    );
}
