//! The router against the table: every row reached by a request shaped like SMH's
//! SDK sends it, the colliding shapes of SMH-ROUTES Q3, look-alikes, syntax errors,
//! and (proptest) that what is forwarded re-matches the same row with the same
//! values.

use super::*;
use crate::proxy::body;
use crate::proxy::rewrite;
use proptest::prelude::*;

fn router() -> Router {
    Router::new(&[]).unwrap()
}

fn http_method(m: &str) -> http::Method {
    http::Method::from_bytes(m.as_bytes()).unwrap()
}

/// Routes a request the way the pipeline does: select, then the body dispatch.
fn route_of(router: &Router, method: &str, target: &str, body: &str) -> Result<String, String> {
    let uri: Uri = target.parse().map_err(|e| format!("{e}"))?;
    let target = Target::new(&uri);
    match router.select(&http_method(method), &target) {
        Ok(Selected::Row { route, dispatch }) => {
            let inspected = body::inspect(route, &dispatch, body.as_bytes())
                .map_err(|e| e.code().to_string())?;
            Operation::parse(inspected.route.clone(), &target, &HeaderMap::new())
                .map_err(|e| e.code().to_string())?;
            Ok(inspected.route.name.to_string())
        }
        Ok(Selected::Unmatched) => Err("unmatched".into()),
        Err(e) => Err(e.code().to_string()),
    }
}

/// A path for a template, with SDK-like values (FilePath `%2F`-encoded).
fn sample_path(template: &Template) -> String {
    template
        .segs
        .iter()
        .map(|s| match s {
            Seg::Lit(l) => l.clone(),
            Seg::Library => "lib1".into(),
            Seg::Space => "s1".into(),
            Seg::Spaces => "s1%2Cs2".into(),
            Seg::Key => "ck%2Bx".into(),
            Seg::Id => "42".into(),
            Seg::Path => "docs%2Fa%20b.txt".into(),
        })
        .fold(String::new(), |acc, s| acc + "/" + &s)
}

fn sample_body(route: &Route) -> String {
    match (route.body, &route.body_key) {
        (_, Some(k)) => format!(r#"{{"{k}":"/src.txt"}}"#),
        (BodyPolicy::JsonArray, _) => "[]".into(),
        (BodyPolicy::Json, _) => "{}".into(),
        (BodyPolicy::None, _) => String::new(),
    }
}

#[test]
fn every_row_is_reached_by_its_own_request() {
    let router = router();
    for r in router.routes() {
        let mut target = sample_path(&r.template);
        if let Some(f) = &r.flag {
            target.push_str(&format!("?{f}=1&access_token=t"));
        } else {
            target.push_str("?access_token=t");
        }
        assert_eq!(
            route_of(&router, r.method.as_str(), &target, &sample_body(r)),
            Ok(r.name.to_string()),
            "{} {target}",
            r.method.as_str()
        );
    }
}

#[test]
fn colliding_shapes_are_decided_as_smh_routes_q3_says() {
    let router = router();
    let cases: &[(&str, &str, &str, &str)] = &[
        // GET /file/: upload before info before zip-preview before preview.
        ("GET", "/api/v1/file/l/s/x?upload=1", "", "get_file_upload"),
        (
            "GET",
            "/api/v1/file/l/s/x?info=1&preview=1",
            "",
            "info_file",
        ),
        (
            "GET",
            "/api/v1/file/l/s/x?preview=1&size=3",
            "",
            "get_cover",
        ),
        (
            "GET",
            "/api/v1/file/l/s/x?transcoding_template_id=h264_720p",
            "",
            "download_transcoded_video",
        ),
        ("GET", "/api/v1/file/l/s/x", "", "download_file"),
        // POST /file/: an unknown flag falls through to form upload.
        (
            "POST",
            "/api/v1/file/l/s/x?confirm",
            "{}",
            "complete_file_upload",
        ),
        ("POST", "/api/v1/file/l/s/x?renew=1", "", "renew"),
        (
            "POST",
            "/api/v1/file/l/s/x?multipart=1",
            "{}",
            "multipart_upload_file",
        ),
        (
            "POST",
            "/api/v1/file/l/s/x?whatever=1",
            "{}",
            "form_upload_file",
        ),
        // DELETE /file/: the flag changes what X means.
        (
            "DELETE",
            "/api/v1/file/l/s/ck?upload=1",
            "",
            "abort_file_upload",
        ),
        ("DELETE", "/api/v1/file/l/s/a.txt", "", "delete_file"),
        // Literals win over parameters.
        ("GET", "/api/v1/share/lib1/list", "", "list_shares"),
        (
            "GET",
            "/api/v1/share/lib1/7?detail=1",
            "",
            "get_share_detail",
        ),
        (
            "GET",
            "/api/v1/share/url-detail/tok",
            "",
            "get_share_url_detail",
        ),
        (
            "POST",
            "/api/v1/share/verify/code",
            "{}",
            "verify_extraction_code",
        ),
        (
            "POST",
            "/api/v1/share/file/code?save=1",
            "{}",
            "save_share_file",
        ),
        ("POST", "/api/v1/share/lib1/search", "{}", "search_shares"),
        ("POST", "/api/v1/share/lib1/s1", "{}", "create_share"),
        (
            "POST",
            "/api/v1/share/lib1/7?update=1",
            "{}",
            "update_share",
        ),
        ("GET", "/api/v1/space/lib1/list", "", "list_space"),
        ("DELETE", "/api/v1/space/lib1/list", "", "delete_space"),
        ("GET", "/api/v1/space/lib1/s1/size", "", "get_space_size"),
        // Whole segments, never string prefixes; depth decides.
        (
            "GET",
            "/api/v1/file-deletion-check/l/s/9",
            "",
            "check_file_deletion",
        ),
        ("GET", "/api/v1/space-quota/l/s", "", "get_space_quota"),
        ("GET", "/api/v1/task/l/1%2C2", "", "query_library_task"),
        ("GET", "/api/v1/task/l/s/1%2C2", "", "query_task"),
        (
            "GET",
            "/api/v1/task-result/l/9",
            "",
            "query_library_task_v2",
        ),
        ("GET", "/api/v1/usage/l", "", "get_library_usage"),
        ("GET", "/api/v1/usage/l/s1%2Cs2", "", "get_usage"),
        ("POST", "/api/v1/quota/l", "{}", "create_quota"),
        ("DELETE", "/api/v1/recycled/l/s", "", "recycle_empty"),
        ("DELETE", "/api/v1/recycled/l/s/5", "", "recycle_purge"),
        // The root directory, both ways the SDK sends it.
        (
            "GET",
            "/api/v1/directory/l/s/?by-marker=1",
            "",
            "list_directory",
        ),
        (
            "GET",
            "/api/v1/directory/l/s/%2F?by-marker=1",
            "",
            "list_directory",
        ),
        // Several raw segments are one FilePath.
        ("GET", "/api/v1/file/l/s/docs/a.txt?info", "", "info_file"),
        // Flag-less PUTs: body keys decide.
        ("PUT", "/api/v1/directory/l/s/d", "{}", "create_directory"),
        (
            "PUT",
            "/api/v1/directory/l/s/d",
            r#"{"from":"/e"}"#,
            "move_directory",
        ),
        (
            "PUT",
            "/api/v1/file/l/s/f",
            r#"{"linkTo":"/g"}"#,
            "create_symlink",
        ),
        (
            "PUT",
            "/api/v1/file/l/s/f?virtual_file=1",
            "{}",
            "create_virtual_file",
        ),
        // HLS reuses the file flags.
        (
            "POST",
            "/api/v1/hls/l/s/ck?renew=1",
            "{}",
            "renew_m3u8_upload",
        ),
        ("PUT", "/api/v1/hls/l/s/v.m3u8", "{}", "prepare_m3u8_upload"),
    ];
    for (m, t, body, want) in cases {
        assert_eq!(
            route_of(&router, m, t, body),
            Ok(want.to_string()),
            "{m} {t}"
        );
    }
}

#[test]
fn refusals_of_the_route_phase() {
    let router = router();
    let cases: &[(&str, &str, &str, &str)] = &[
        // Two flags that select different rows.
        (
            "POST",
            "/api/v1/file/l/s/x?multipart&renew",
            "",
            "ParamInvalid",
        ),
        ("GET", "/api/v1/file/l/s/x?upload&info", "", "ParamInvalid"),
        // A confirm key holding a / (decoded or as two segments), or a trailing /.
        ("POST", "/api/v1/file/l/s/a/b?renew", "", "ParamInvalid"),
        ("POST", "/api/v1/file/l/s/a%2Fb?renew", "", "ParamInvalid"),
        ("POST", "/api/v1/file/l/s/ck/?renew", "", "ParamInvalid"),
        (
            "POST",
            "/api/v1/file/l/s/x%252F..%252Fy?confirm",
            "{}",
            "ParamInvalid",
        ),
        ("DELETE", "/api/v1/recycled/l/s/5/6", "", "ParamInvalid"),
        // FilePath parts.
        (
            "GET",
            "/api/v1/file/l/s/a%2F..%2Fb?info",
            "",
            "ParamInvalid",
        ),
        ("GET", "/api/v1/file/l/s/a//b?info", "", "ParamInvalid"),
        ("GET", "/api/v1/file/l/s/a%2F%2Fb?info", "", "ParamInvalid"),
        ("GET", "/api/v1/file/l/s/a/?info", "", "ParamInvalid"),
        ("GET", "/api/v1/file/l/s/a%00?info", "", "ParamInvalid"),
        // Look-alikes: no row as sent, one after normalising.
        (
            "POST",
            "/api/v1/%66ile/lib1/-/ck1?renew",
            "",
            "ParamInvalid",
        ),
        (
            "POST",
            "/api%2Fv1%2Ffile/lib1/-/ck1?renew",
            "",
            "ParamInvalid",
        ),
        (
            "POST",
            "/api/v1/file;x/lib1/-/ck1?renew",
            "",
            "ParamInvalid",
        ),
        ("POST", "//api/v1/file/lib1/-/ck1?renew", "", "ParamInvalid"),
        (
            "POST",
            "/api/./v1/file/lib1/-/ck1?renew",
            "",
            "ParamInvalid",
        ),
        (
            "POST",
            "/api/v1/x/../file/lib1/-/ck1?renew",
            "",
            "ParamInvalid",
        ),
        ("POST", "/API/v1/file/lib1/-/ck1?renew", "", "ParamInvalid"),
        ("GET", "/api/v1/%2566ile/l/s/x?info", "", "ParamInvalid"),
        ("post", "/api/v1/file/lib1/-/ck1?renew", "", "ParamInvalid"),
        // Bodies.
        (
            "PUT",
            "/api/v1/file/l/s/f",
            r#"{"copyFrom":"a","linkTo":"b"}"#,
            "ParamInvalid",
        ),
        (
            "PUT",
            "/api/v1/file/l/s/f",
            r#"{"a":1,"a":2}"#,
            "ParamInvalid",
        ),
        ("POST", "/api/v1/batch/l/s?copy", "{}", "ParamInvalid"),
        // Parameters.
        ("POST", "/api/v1/file/l/s/x?renew&renew", "", "ParamInvalid"),
        (
            "GET",
            "/api/v1/file/l/s/x?info&history_id=1&history_id=2",
            "",
            "ParamInvalid",
        ),
        (
            "GET",
            "/api/v1/file/l/s/x?info&library_secret=s",
            "",
            "ParamInvalid",
        ),
        (
            "GET",
            "/api/v1/space/l/list?library_secret=s",
            "",
            "ParamInvalid",
        ),
        (
            "POST",
            "/api/v1/file/l/s/x?renew&traffic_limit=1.5",
            "",
            "ParamInvalid",
        ),
    ];
    for (m, t, body, want) in cases {
        assert_eq!(
            route_of(&router, m, t, body),
            Err(want.to_string()),
            "{m} {t}"
        );
    }
}

#[test]
fn requests_that_are_no_row_are_unmatched() {
    let router = router();
    for (m, t) in [
        ("GET", "/api/v1/token?library_id=l"),
        ("POST", "/api/v1/token/l/tok"),
        ("GET", "/api/v1/directory/l/s/d"),
        ("POST", "/api/v1/share/file/code"),
        ("PATCH", "/api/v1/file/l/s/x"),
        ("GET", "/"),
        ("GET", "/healthz"),
    ] {
        assert_eq!(
            route_of(&router, m, t, ""),
            Err("unmatched".into()),
            "{m} {t}"
        );
    }
}

#[test]
fn the_renew_shape_sdks_send_parses() {
    let router = router();
    let uri: Uri =
        "/api/v1/file/lib1/-/ck123?renew=1&access_token=tok&user_id=u1&traffic_limit=500000&evil=1"
            .parse()
            .unwrap();
    let Ok(Selected::Row { route, .. }) = router.select(&http::Method::POST, &Target::new(&uri))
    else {
        panic!()
    };
    let op = Operation::parse(route, &Target::new(&uri), &HeaderMap::new()).unwrap();
    assert_eq!(op.values.library.as_deref(), Some("lib1"));
    assert_eq!(op.values.space.as_deref(), Some("-"));
    assert_eq!(op.values.key.as_deref(), Some("ck123"));
    assert_eq!(op.token.as_ref().map(Secret::expose), Some("tok"));
    assert_eq!(op.user_id.as_deref(), Some("u1"));
    assert_eq!(op.traffic_limit, Some(500000));
    assert!(op.params.is_empty(), "unknown parameters are dropped");
    assert_eq!(
        rewrite::upstream_query(&op, op.token.as_ref(), op.user_id.as_deref(), Some(1)),
        "renew&access_token=tok&user_id=u1&traffic_limit=1"
    );
}

#[test]
fn bearer_token_and_conflicts() {
    let route = router()
        .routes()
        .iter()
        .find(|r| &*r.name == "renew")
        .unwrap()
        .clone();
    let uri: Uri = "/api/v1/file/l/-/c?renew".parse().unwrap();
    let mut h = HeaderMap::new();
    h.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
    let op = Operation::parse(route.clone(), &Target::new(&uri), &h).unwrap();
    assert_eq!(op.token.as_ref().map(Secret::expose), Some("abc"));
    let differ: Uri = "/api/v1/file/l/-/c?renew&access_token=xyz".parse().unwrap();
    assert_eq!(
        Operation::parse(route.clone(), &Target::new(&differ), &h)
            .unwrap_err()
            .code(),
        "ParamInvalid"
    );
    let mut basic = HeaderMap::new();
    basic.insert(header::AUTHORIZATION, "Basic dTpw".parse().unwrap());
    assert_eq!(
        Operation::parse(route.clone(), &Target::new(&uri), &basic)
            .unwrap()
            .token,
        None
    );
    // Found by fuzzing: a tab inside a Bearer token was forwarded as access_token,
    // which the gateway itself refuses in a query (the rebuild did not re-match).
    let mut tab = HeaderMap::new();
    tab.insert(header::AUTHORIZATION, "Bearer ab\tcd".parse().unwrap());
    assert_eq!(
        Operation::parse(route, &Target::new(&uri), &tab)
            .unwrap_err()
            .code(),
        "ParamInvalid"
    );
}

#[test]
fn traffic_limit_syntax() {
    assert_eq!(parse_traffic_limit("0"), Ok(0));
    assert_eq!(parse_traffic_limit("00102400"), Ok(102400));
    assert_eq!(
        parse_traffic_limit("99999999999999999999999999"),
        Ok(u64::MAX)
    );
    for bad in ["", "-1", "+1", "1.5", "1e6", " 1", "1 ", "0x10", "１"] {
        assert!(parse_traffic_limit(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn operator_rules_replace_fields_or_add_rows() {
    let rules = [
        RouteRule {
            name: "renew".into(),
            method: None,
            path: None,
            flag: None,
            permissions: Some(vec!["admin".into()]),
            traffic_limit: None,
            params: None,
        },
        RouteRule {
            name: "vendor_report".into(),
            method: Some("GET".into()),
            path: Some(Template::parse("/api/v2/report/{library}/{space}").unwrap()),
            flag: None,
            permissions: Some(vec!["space_admin".into()]),
            traffic_limit: Some(true),
            params: Some(vec!["day".into()]),
        },
    ];
    let router = Router::new(&rules).unwrap();
    let renew = router
        .routes()
        .iter()
        .find(|r| &*r.name == "renew")
        .unwrap();
    assert_eq!(renew.permissions.to_string(), "admin");
    assert!(
        renew.traffic_limit,
        "fields the rule does not give are kept"
    );
    assert_eq!(
        route_of(&router, "GET", "/api/v2/report/l/s?day=1", ""),
        Ok("vendor_report".into())
    );
    let missing = RouteRule {
        name: "new_one".into(),
        method: None,
        path: None,
        flag: None,
        permissions: None,
        traffic_limit: None,
        params: None,
    };
    assert!(Router::new(&[missing]).is_err());
}

#[test]
fn the_markdown_table_has_a_line_per_row() {
    let router = router();
    assert_eq!(router.markdown().lines().count(), router.routes().len() + 2);
}

/// A value for a path parameter: ids without `/` or `%`, FilePaths with both.
fn id_value() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 ~+&=?#;:,@!$'()*-]{1,12}"
        .prop_filter("not a dot segment", |s| s != "." && s != "..")
}

fn file_path_value() -> impl Strategy<Value = String> {
    (
        prop::bool::ANY,
        prop::collection::vec("[a-zA-Z0-9 %~+&=?#;:,@.-]{1,8}", 0..4),
    )
        .prop_map(|(lead, parts)| {
            let body = parts
                .into_iter()
                .filter(|p| p != "." && p != "..")
                .collect::<Vec<_>>()
                .join("/");
            if lead { format!("/{body}") } else { body }
        })
}

proptest! {
    /// What the gateway forwards re-matches the same row with the same values: the
    /// canonical rebuild never turns a checked request into another operation.
    #[test]
    fn forwarded_requests_rematch_the_same_row(
        row in 0usize..ROUTES.len(),
        library in id_value(),
        space in id_value(),
        key in id_value(),
        path in file_path_value(),
        extra in prop::collection::vec(("[a-z_]{1,10}", "[a-zA-Z0-9 %+&=]{0,6}"), 0..4),
        traffic_limit in prop::option::of(0u64..200_000_000),
    ) {
        let router = router();
        let r = router.routes()[row].clone();
        let values = PathValues {
            library: Some(library.into()),
            space: Some(space.clone().into()),
            spaces: vec![space.into()],
            key: Some(key.clone().into()),
            id: Some(key.into()),
            path: Some(path.into()),
        };
        let mut query = String::new();
        if let Some(f) = &r.flag {
            query.push_str(f);
            query.push_str("=1");
        }
        for (k, v) in &extra {
            if r.flag.as_deref() == Some(k.as_str()) || k == "library_secret" {
                continue;
            }
            query.push('&');
            query.extend(percent_encoding::utf8_percent_encode(k, percent_encoding::NON_ALPHANUMERIC));
            query.push('=');
            query.extend(percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC));
        }
        let sent = format!("{}?{}", rewrite::upstream_path("", &r.template, &values), query);
        let uri: Uri = sent.parse().unwrap();
        let selected = router.select(&r.method.http(), &Target::new(&uri));
        let Ok(Selected::Row { route, dispatch }) = selected else {
            // Two sample keys may collide with a sibling's flag: then nothing passes.
            prop_assert!(selected.is_err(), "{sent}: {selected:?}");
            return Ok(());
        };
        let picked = body::inspect(route, &dispatch, sample_body(&r).as_bytes()).unwrap().route;
        let Ok(op) = Operation::parse(picked, &Target::new(&uri), &HeaderMap::new()) else {
            // A repeated extra key is refused: fine, it is not forwarded either.
            return Ok(());
        };
        let forwarded = format!(
            "{}?{}",
            rewrite::upstream_path("", &op.route.template, &op.values),
            rewrite::upstream_query(&op, Some(&Secret::new("t")), None, traffic_limit.filter(|_| op.route.traffic_limit))
        );
        let again_uri: Uri = forwarded.parse().unwrap();
        let Ok(Selected::Row { route: again, dispatch }) = router.select(&r.method.http(), &Target::new(&again_uri)) else {
            panic!("{forwarded} does not re-match");
        };
        let again = body::inspect(again, &dispatch, sample_body(&r).as_bytes()).unwrap().route;
        prop_assert_eq!(&again.name, &op.route.name, "{}", forwarded);
        let op2 = Operation::parse(again, &Target::new(&again_uri), &HeaderMap::new()).unwrap();
        prop_assert_eq!(&op2.values, &op.values);
        prop_assert_eq!(&op2.params, &op.params);
        if op2.route.auth != AuthPolicy::Public {
            prop_assert_eq!(op2.token.as_ref().map(Secret::expose), Some("t"));
        }
    }

    /// Random raw paths under the file API: whatever passes the route phase
    /// re-matches after the canonical rebuild.
    #[test]
    fn raw_paths_that_pass_rematch(
        method in prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "HEAD"]),
        segs in prop::collection::vec("[a-z0-9%./;+-]{0,6}|%2F|%2f|\\.\\.|%2e%2e", 1..6),
        flag in prop::sample::select(vec!["", "renew", "confirm", "upload", "info", "multipart", "by-marker"]),
    ) {
        let router = router();
        let target = format!("/api/v1/file/{}?{flag}", segs.join("/"));
        let Ok(uri) = target.parse::<Uri>() else { return Ok(()); };
        let Ok(Selected::Row { route, dispatch }) = router.select(&http_method(method), &Target::new(&uri)) else {
            return Ok(());
        };
        let Ok(picked) = body::inspect(route, &dispatch, b"{}") else { return Ok(()); };
        let Ok(op) = Operation::parse(picked.route, &Target::new(&uri), &HeaderMap::new()) else { return Ok(()); };
        let forwarded = format!(
            "{}?{}",
            rewrite::upstream_path("", &op.route.template, &op.values),
            rewrite::upstream_query(&op, None, None, None)
        );
        let again_uri: Uri = forwarded.parse().unwrap();
        let Ok(Selected::Row { route: again, dispatch }) = router.select(&http_method(method), &Target::new(&again_uri)) else {
            panic!("{target} -> {forwarded} does not re-match");
        };
        let again = body::inspect(again, &dispatch, b"{}").unwrap().route;
        prop_assert_eq!(&again.name, &op.route.name);
        let op2 = Operation::parse(again, &Target::new(&again_uri), &HeaderMap::new()).unwrap();
        prop_assert_eq!(&op2.values, &op.values);
    }

    /// The query split (memchr) and the path split read any target as
    /// `str::split` on `&`, `=` and `/` does, with keys decoded by form rules.
    #[test]
    fn targets_split_as_str_split_does(
        path in "(/[a-z0-9%+=&;.-]{0,5}){0,8}",
        query in "[a-z0-9%+=&_.-]{0,40}",
    ) {
        let raw = if path.is_empty() { format!("/?{query}") } else { format!("{path}?{query}") };
        let Ok(uri) = raw.parse::<Uri>() else { return Ok(()); };
        let target = Target::new(&uri);
        let p = uri.path();
        let want: Vec<&str> = p.strip_prefix('/').unwrap_or(p).split('/').collect();
        prop_assert_eq!(&target.segs, &want);
        // (raw key, value), and the key decoded by form rules where it holds no
        // escape (strict escapes are the decoder's own tests).
        let want: Vec<(&str, String, &str)> = uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (k, k.replace('+', " "), v)
            })
            .collect();
        prop_assert_eq!(target.query.pairs.len(), want.len());
        for ((key, value), (raw, decoded, v)) in target.query.pairs.iter().zip(&want) {
            prop_assert_eq!(value, v);
            if !raw.contains('%') {
                prop_assert_eq!(key.as_ref(), decoded.as_str());
            }
        }
    }
}
