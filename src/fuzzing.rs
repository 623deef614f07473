//! Entry points of the fuzz targets (`fuzz/fuzz_targets/`) and of their corpus
//! replay (`tests/fuzz_corpus.rs`): one function per target, taking the raw input
//! and panicking only when a property fails. The fuzzers and CI call the same
//! functions, so the properties cannot drift apart. Not an API (hidden from the
//! docs); `fuzz/README.md`'s section in the main README says how to run them.
//!
//! Input formats, chosen so that corpus files are readable:
//! - [`route`]: `METHOD request-target`, optionally `\n` and an Authorization value.
//! - [`query`]: one byte picking a row, then the query string (after `?`).
//! - [`body`]: one byte picking a row that takes JSON, then the body.
//! - [`token`]: a token as sent; or `sign:` + header JSON + `\n` + claims JSON,
//!   which the harness signs with the key the header's `kid` names.
//! - [`renew_answer`]: an upstream renew answer's body (also read as Redis bytes).
//! - [`config`]: TOML text.

use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use serde_json::Value;

use crate::cache::entry::{self, Answer, Lifetime, Published};
use crate::config::{Config, TrafficLimitBounds};
use crate::proxy::auth::Verifier;
use crate::proxy::json::{self, JsonError};
use crate::proxy::route::{Operation, PathValues, Route, Router, Selected, Target};
use crate::proxy::routes::{AuthPolicy, BodyPolicy};
use crate::proxy::{body as body_phase, rewrite};
use crate::secret::Secret;
use crate::smh::is_valid_id;

/// A target's entry point: the raw input in, a panic when a property fails.
pub type EntryPoint = fn(&[u8]);

/// Every target by name (the directory of its corpus under `fuzz/corpus/`).
pub const TARGETS: &[(&str, EntryPoint)] = &[
    ("route", route),
    ("query", query),
    ("body", body),
    ("token", token),
    ("renew_answer", renew_answer),
    ("config", config),
];

/// The built-in table, as `serve` builds it without operator rules.
pub fn router() -> &'static Router {
    static ROUTER: LazyLock<Router> =
        LazyLock::new(|| Router::new(&[]).expect("the built-in table builds"));
    &ROUTER
}

/// The global traffic_limit bounds of a config that sets none.
const BOUNDS: TrafficLimitBounds = TrafficLimitBounds {
    min: crate::config::TRAFFIC_LIMIT_MIN,
    max: crate::config::TRAFFIC_LIMIT_MAX,
    default: None,
};

// ---- route and query ----

/// `METHOD request-target[\nAuthorization value]` → select → parse → the forwarded
/// target, which must select the same row and parse to the same values.
pub fn route(data: &[u8]) {
    let (head, auth) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (&data[..at], Some(&data[at + 1..])),
        None => (data, None),
    };
    let Some(at) = head.iter().position(|&b| b == b' ') else {
        return;
    };
    let Ok(method) = http::Method::from_bytes(&head[..at]) else {
        return;
    };
    let Ok(uri) = Uri::try_from(&head[at + 1..]) else {
        return;
    };
    let mut headers = HeaderMap::new();
    if let Some(v) = auth.and_then(|a| HeaderValue::from_bytes(a).ok()) {
        headers.insert(header::AUTHORIZATION, v);
    }
    check_request(&method, &uri, &headers);
}

/// A row (picked by the first byte) at a valid path, with an arbitrary query: the
/// same properties as [`route`], aimed at the query parser.
pub fn query(data: &[u8]) {
    let Some((&pick, query)) = data.split_first() else {
        return;
    };
    let routes = router().routes();
    let row = &routes[usize::from(pick) % routes.len()];
    let mut target = sample_path(row).into_bytes();
    target.push(b'?');
    target.extend_from_slice(query);
    let Ok(uri) = Uri::try_from(target) else {
        return;
    };
    check_request(&row.method.http(), &uri, &HeaderMap::new());
}

/// A path the row fits, with valid values.
pub fn sample_path(row: &Route) -> String {
    let values = PathValues {
        library: Some("lib1".into()),
        space: Some("space1".into()),
        spaces: vec!["space1".into(), "space2".into()],
        key: Some("key1".into()),
        id: Some("id1".into()),
        path: Some("/dir/a.txt".into()),
    };
    rewrite::upstream_path("", &row.template, &values)
}

/// What the gateway would send upstream for `op` in passthrough mode: path and
/// query, rebuilt from the checked values.
pub fn forwarded(op: &Operation) -> String {
    let credential = match op.route.auth {
        AuthPolicy::Public => None,
        AuthPolicy::Token | AuthPolicy::ShareToken => op.token.as_ref(),
    };
    let traffic_limit = if op.route.traffic_limit {
        rewrite::clamp_traffic_limit(op.traffic_limit, &BOUNDS).0
    } else {
        None
    };
    let user_id = op.user_id.as_deref().filter(|_| op.route.user_id);
    let mut out = rewrite::upstream_path("", &op.route.template, &op.values);
    out.push('?');
    out.push_str(&rewrite::upstream_query(
        op,
        credential,
        user_id,
        traffic_limit,
    ));
    out
}

fn names(rows: &[Arc<Route>]) -> Vec<&str> {
    rows.iter().map(|r| &*r.name).collect()
}

fn check_request(method: &http::Method, uri: &Uri, headers: &HeaderMap) {
    let router = router();
    let target = Target::new(uri);
    let Ok(Selected::Row { route, dispatch }) = router.select(method, &target) else {
        return;
    };
    // The selected row, and each sibling a body could pick instead.
    for row in std::iter::once(&route).chain(&dispatch) {
        let Ok(op) = Operation::parse(row.clone(), &target, headers) else {
            continue;
        };
        let sent = forwarded(&op);
        let again: Uri = sent
            .parse()
            .unwrap_or_else(|e| panic!("{uri} on {}: forwarded {sent:?}: {e}", row.name));
        let target2 = Target::new(&again);
        match router.select(method, &target2) {
            Ok(Selected::Row {
                route: route2,
                dispatch: dispatch2,
            }) => {
                assert_eq!(
                    (&*route2.name, names(&dispatch2)),
                    (&*route.name, names(&dispatch)),
                    "{uri}: forwarded {sent:?} selects another row"
                );
            }
            other => panic!("{uri}: forwarded {sent:?} selects no row: {other:?}"),
        }
        let op2 = Operation::parse(row.clone(), &target2, &HeaderMap::new())
            .unwrap_or_else(|e| panic!("{uri}: forwarded {sent:?} is refused: {e:?}"));
        let token = |o: &Operation| o.token.as_ref().map(|t| t.expose().to_string());
        assert_eq!(op2.values, op.values, "{uri}: path values of {sent:?}");
        assert_eq!(op2.params, op.params, "{uri}: parameters of {sent:?}");
        assert_eq!(op2.user_id, op.user_id, "{uri}: user_id of {sent:?}");
        assert_eq!(op2.permanent, op.permanent, "{uri}: permanent of {sent:?}");
        assert_eq!(
            op2.named_spaces, op.named_spaces,
            "{uri}: spaces of {sent:?}"
        );
        if row.auth != AuthPolicy::Public {
            assert_eq!(token(&op2), token(&op), "{uri}: token of {sent:?}");
        }
        if row.traffic_limit {
            let clamped = rewrite::clamp_traffic_limit(op.traffic_limit, &BOUNDS).0;
            assert_eq!(
                op2.traffic_limit, clamped,
                "{uri}: traffic_limit of {sent:?}"
            );
        }
        // Canonical: forwarding the forwarded request changes nothing.
        assert_eq!(forwarded(&op2), sent, "{uri}: not a fixed point");
        for v in [
            &op.values.library,
            &op.values.space,
            &op.values.key,
            &op.values.id,
        ] {
            assert!(v.as_deref().is_none_or(is_valid_id), "{uri}: id {v:?}");
        }
    }
}

// ---- body ----

/// A row that takes JSON (picked by the first byte) and a body: the dispatch among
/// flag-less siblings and the spaces named; plus [`json::parse_strict`] against
/// serde_json's own reading.
pub fn body(data: &[u8]) {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    json_properties(body);
    let rows: Vec<&Arc<Route>> = router()
        .routes()
        .iter()
        .filter(|r| r.body != BodyPolicy::None)
        .collect();
    let row = rows[usize::from(pick) % rows.len()];
    // The dispatch set the router hands the body phase for this row's path.
    let mut target = sample_path(row);
    if let Some(flag) = &row.flag {
        target.push('?');
        target.push_str(flag);
    }
    let uri: Uri = target.parse().expect("sample paths are URIs");
    let Ok(Selected::Row { route, dispatch }) =
        router().select(&row.method.http(), &Target::new(&uri))
    else {
        panic!("{target}: the sample path of {} selects no row", row.name);
    };
    let Ok(inspected) = body_phase::inspect(route.clone(), &dispatch, body) else {
        return;
    };
    assert!(
        inspected.route.name == route.name
            || dispatch.iter().any(|d| d.name == inspected.route.name),
        "inspect picked {} outside the dispatch set",
        inspected.route.name
    );
    for n in &inspected.named_spaces {
        assert!(is_valid_id(&n.space), "space {:?} passed", n.space);
    }
    if inspected.route.body == BodyPolicy::Json {
        assert!(
            json::body_object(body).is_ok(),
            "an object row accepted a non-object"
        );
    }
}

/// The strict parser accepts a subset of what serde_json accepts, reads it alike,
/// and calls `Syntax` only what serde_json refuses too.
fn json_properties(bytes: &[u8]) {
    let strict = json::parse_strict(bytes);
    let lenient = serde_json::from_slice::<Value>(bytes);
    match (&strict, &lenient) {
        (Ok(s), Ok(l)) => assert_eq!(s, l, "strict and serde_json read differently"),
        (Ok(_), Err(e)) => panic!("strict accepts what serde_json refuses ({e})"),
        (Err(JsonError::Syntax), Ok(_)) => {
            panic!("strict calls syntax what serde_json parses")
        }
        (Err(JsonError::NotObject), _) => panic!("parse_strict never says NotObject"),
        (Err(_), _) => {}
    }
    if let Ok(v) = &strict {
        let text = serde_json::to_vec(v).expect("a Value serialises");
        assert!(
            json::parse_strict(&text).is_ok(),
            "re-serialised value refused"
        );
    }
}

// ---- token ----

/// What [`token`] verifies against: HS256 (`kid` "hs", issuer "iss-a"), RS256
/// ("rs", any issuer) and ES256 ("es", issuer "iss-b") from the test fixtures;
/// issuers `iss-a`, `iss-b`, audience `smh`, leeway 30 s.
struct TokenSetup {
    verifier: Verifier,
    hs: jsonwebtoken::EncodingKey,
    rs: jsonwebtoken::EncodingKey,
    es: jsonwebtoken::EncodingKey,
}

/// 32 bytes, the shortest HMAC secret SPEC §2 allows. Test-only.
pub const HS_SECRET: &[u8] = b"fuzz-only-hmac-secret-32-bytes!!";
const LEEWAY: u64 = 30;

/// The test key fixtures (`tests/fixtures/keys`).
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/keys")
        .join(name)
}

/// The config [`token`] verifies with; `secret_file` holds [`HS_SECRET`].
pub fn token_config(secret_file: &Path) -> Config {
    let text = format!(
        "[upstream]\nurl = \"http://127.0.0.1:9\"\n\
         [auth]\nissuers = [\"iss-a\", \"iss-b\"]\naudiences = [\"smh\"]\nleeway = \"{LEEWAY}s\"\n\
         [[auth.keys]]\nkid = \"hs\"\nalg = \"HS256\"\nissuer = \"iss-a\"\nsecret_file = '{}'\n\
         [[auth.keys]]\nkid = \"rs\"\nalg = \"RS256\"\npublic_key_file = '{}'\n\
         [[auth.keys]]\nkid = \"es\"\nalg = \"ES256\"\nissuer = \"iss-b\"\npublic_key_file = '{}'\n",
        secret_file.display(),
        fixture("rsa.pub.pem").display(),
        fixture("ec256.pub.pem").display(),
    );
    Config::parse(Path::new("fuzz-token.toml"), &text).expect("the token config parses")
}

/// A file holding [`HS_SECRET`], written once per process.
pub fn hs_secret_file() -> PathBuf {
    static FILE: LazyLock<PathBuf> = LazyLock::new(|| {
        let dir = std::env::temp_dir().join(format!("smh-gateway-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("hs.secret");
        std::fs::write(&path, HS_SECRET).expect("write the HMAC secret");
        path
    });
    FILE.clone()
}

fn setup() -> &'static TokenSetup {
    static SETUP: LazyLock<TokenSetup> = LazyLock::new(|| {
        let pem = |name: &str| std::fs::read(fixture(name)).expect("key fixture");
        TokenSetup {
            verifier: Verifier::from_config(&token_config(&hs_secret_file()))
                .expect("the token verifier builds"),
            hs: jsonwebtoken::EncodingKey::from_secret(HS_SECRET),
            rs: jsonwebtoken::EncodingKey::from_rsa_pem(&pem("rsa.key")).expect("rsa fixture"),
            es: jsonwebtoken::EncodingKey::from_ec_pem(&pem("ec256.key")).expect("ec fixture"),
        }
    });
    &SETUP
}

/// Signs `header.claims` (raw JSON texts) with the key the header's `kid` names
/// (HS256 when it names none of ours).
pub fn sign(header: &[u8], claims: &[u8]) -> String {
    let s = setup();
    let kid = serde_json::from_slice::<Value>(header)
        .ok()
        .and_then(|h| h.get("kid").and_then(Value::as_str).map(str::to_string));
    let (key, alg) = match kid.as_deref() {
        Some("rs") => (&s.rs, jsonwebtoken::Algorithm::RS256),
        Some("es") => (&s.es, jsonwebtoken::Algorithm::ES256),
        _ => (&s.hs, jsonwebtoken::Algorithm::HS256),
    };
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let message = format!("{}.{}", b64.encode(header), b64.encode(claims));
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), key, alg).expect("signing");
    format!("{message}.{signature}")
}

/// A token string (or a `sign:` request, see the module header) through the
/// verifier: never a panic; an accepted token's header and claims satisfy every
/// check; the cached path answers as the full one.
pub fn token(data: &[u8]) {
    let token = match data.strip_prefix(b"sign:") {
        Some(rest) => {
            let (header, claims) = match rest.iter().position(|&b| b == b'\n') {
                Some(at) => (&rest[..at], &rest[at + 1..]),
                None => (rest, &b"{}"[..]),
            };
            sign(header, claims)
        }
        None => match std::str::from_utf8(data) {
            Ok(t) => t.to_string(),
            Err(_) => return,
        },
    };
    let s = setup();
    let secret = Secret::new(token.clone());
    let full = s.verifier.verify(&secret);
    let cached = s.verifier.verify_cached(s.verifier.file_set(), &secret);
    let hit = s.verifier.verify_cached(s.verifier.file_set(), &secret);
    match (&full, &cached, &hit) {
        (Ok(p), Ok(c), Ok(h)) => {
            assert_eq!((p, p), (&**c, &**h), "cached principal differs");
        }
        (Err(a), Err(b), Err(c)) => {
            assert_eq!((a, a), (b, c), "cached refusal differs");
            return;
        }
        _ => panic!("verify and verify_cached disagree: {full:?} {cached:?} {hit:?}"),
    }
    let principal = full.expect("matched above");
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "accepted a token of {} parts", parts.len());
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let decode = |part: &str| {
        let bytes = b64.decode(part).expect("accepted part is base64url");
        match json::parse_strict(&bytes).expect("accepted part is strict JSON") {
            Value::Object(o) => o,
            other => panic!("accepted part is not an object: {other}"),
        }
    };
    let header = decode(parts[0]);
    let claims = decode(parts[1]);
    assert!(!header.contains_key("crit") && !header.contains_key("enc"));
    let iss = claims
        .get("iss")
        .and_then(Value::as_str)
        .expect("iss is a string");
    assert!(["iss-a", "iss-b"].contains(&iss), "issuer {iss:?}");
    // SPEC §2: the key named by `kid` among the issuer's keys and the issuer-less
    // one; without `kid`, the issuer's sole key.
    let kid = header.get("kid").and_then(Value::as_str);
    let expected_alg = match (kid, iss) {
        (Some("hs"), "iss-a") | (None, "iss-a") => "HS256",
        (Some("es"), "iss-b") | (None, "iss-b") => "ES256",
        (Some("rs"), _) => "RS256",
        (kid, iss) => panic!("accepted kid {kid:?} for issuer {iss:?}"),
    };
    assert_eq!(
        header.get("alg").and_then(Value::as_str),
        Some(expected_alg)
    );
    let now = jsonwebtoken::get_current_timestamp() as f64;
    let exp = claims.get("exp").and_then(Value::as_f64).expect("exp");
    assert!(
        exp + LEEWAY as f64 >= now - 5.0,
        "accepted an expired token"
    );
    if let Some(nbf) = claims.get("nbf") {
        let nbf = nbf.as_f64().expect("a numeric nbf");
        assert!(
            nbf <= now + LEEWAY as f64 + 5.0,
            "accepted a token before nbf"
        );
    }
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => a == "smh",
        Some(Value::Array(a)) => a.iter().any(|v| v == "smh"),
        _ => false,
    };
    assert!(aud_ok, "audience {:?}", claims.get("aud"));
    let scalar = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    assert_eq!(
        principal.library,
        claims.get("library_id").and_then(scalar),
        "library"
    );
    assert_eq!(
        principal.user,
        claims.get("sub").and_then(scalar).filter(|u| !u.is_empty()),
        "user"
    );
    for p in &principal.permissions {
        let listed = match claims.get("permissions") {
            Some(Value::Array(a)) => a.iter().any(|v| v.as_str() == Some(p)),
            Some(Value::String(s)) => s.split([',', ' ']).any(|x| x == p),
            _ => false,
        };
        assert!(listed, "permission {p:?} not in the claims");
    }
}

// ---- renew answer ----

/// A renew answer's body: `expiration` parsed, the entry's lifetime within its
/// bounds, and the Redis encodings round-trip; the same bytes read as Redis
/// entries and flight results never panic.
pub fn renew_answer(data: &[u8]) {
    const NOW: u64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
    let lifetime = Lifetime {
        min_remaining: Duration::from_secs(30),
        max_ttl: Duration::from_secs(600),
    };
    let expiration = entry::parse_expiration(data);
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let answer = Answer {
        status: StatusCode::OK,
        headers,
        body: Bytes::copy_from_slice(data),
        rest: None,
    };
    match lifetime.entry_for(&answer, NOW) {
        None => {
            if let Some(exp) = expiration
                && data.len() <= entry::MAX_ENTRY_BODY
            {
                assert!(
                    exp.saturating_sub(30_000) <= NOW,
                    "expiration {exp} parsed but not cached"
                );
            }
        }
        Some(e) => {
            let exp = expiration.expect("a cached answer has an expiration");
            assert!(e.expires_at > NOW, "expires in the past");
            assert!(e.expires_at <= NOW + 600_000, "beyond max_ttl");
            assert!(
                e.expires_at <= exp.saturating_sub(30_000),
                "past min_remaining"
            );
            assert_eq!(e.body, answer.body);
            let back = entry::decode_entry(Bytes::from(entry::encode_entry(&e)))
                .expect("an encoded entry decodes");
            assert_eq!(
                (back.expires_at, &back.content_type, &back.body),
                (e.expires_at, &e.content_type, &e.body)
            );
        }
    }
    match entry::decode_result(Bytes::from(entry::encode_result(&Ok(answer.clone())))) {
        Some(Published::Answer(a)) => {
            assert_eq!((a.status, &a.body), (answer.status, &answer.body));
            assert_eq!(
                a.headers.get(header::CONTENT_TYPE),
                answer.headers.get(header::CONTENT_TYPE)
            );
        }
        other => panic!("an encoded answer decodes as {other:?}"),
    }
    // The same bytes as they might come back from Redis.
    let bytes = Bytes::copy_from_slice(data);
    if let Some(e) = entry::decode_entry(bytes.clone()) {
        let again = entry::decode_entry(Bytes::from(entry::encode_entry(&e))).expect("re-decodes");
        assert_eq!(
            (again.expires_at, &again.content_type, &again.body),
            (e.expires_at, &e.content_type, &e.body)
        );
    }
    if let Some(Published::Answer(a)) = entry::decode_result(bytes) {
        let again = entry::decode_result(Bytes::from(entry::encode_result(&Ok(a.clone()))));
        let Some(Published::Answer(b)) = again else {
            panic!("a decoded answer re-decodes as {again:?}");
        };
        assert_eq!((a.status, &a.body), (b.status, &b.body));
    }
}

// ---- config ----

/// TOML text → `Config` or `ConfigError`, never a panic; an error that is not TOML
/// syntax names its key; an accepted config's bounds are consistent and its route
/// rules build (or are refused by name).
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let config = match Config::parse(Path::new("fuzz.toml"), text) {
        Err(e) => {
            assert!(!e.message.is_empty(), "an error without a message");
            assert!(
                e.key.is_some() || e.message.starts_with("TOML syntax"),
                "an error naming no key: {e}"
            );
            return;
        }
        Ok(c) => c,
    };
    let bounds = std::iter::once(&config.traffic_limit)
        .chain(config.libraries.iter().map(|l| &l.traffic_limit));
    for b in bounds {
        assert!(b.min <= b.max, "traffic_limit min above max: {b:?}");
        if let Some(d) = b.default {
            assert!(
                (b.min..=b.max).contains(&d),
                "default outside bounds: {b:?}"
            );
        }
    }
    if let Err((i, field, message)) = Router::new(&config.routes.rules) {
        assert!(i < config.routes.rules.len() && !field.is_empty() && !message.is_empty());
    }
    let _ = crate::cache::check_config(&config);
}
