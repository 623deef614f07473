//! Criterion benchmarks of the per-request hot phases, in pipeline order: route
//! match, token verify per algorithm (verified-token cache hit and miss), policy
//! authorize, traffic_limit clamp plus the canonical rebuild of path and query,
//! and the renew cache key. `cargo bench --bench hot_path` measures; `cargo test
//! --all-targets` runs each once, as a smoke test. The whole gateway against nginx
//! and HAProxy is `scripts/bench.sh`'s job.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, Uri};

use smh_gateway::cache::{CredentialDigest, RenewKey};
use smh_gateway::config::{LibraryConfig, TrafficLimitBounds};
use smh_gateway::fuzzing::{hs_secret_file, router, sign, token_config};
use smh_gateway::proxy::auth::{Principal, Verifier};
use smh_gateway::proxy::policy::{self, NamedSpace, Scope};
use smh_gateway::proxy::rewrite;
use smh_gateway::proxy::route::{Operation, Selected, Target};
use smh_gateway::secret::Secret;

/// An SDK's renew, the most frequent request of an upload (SMH-ROUTES Q1).
const RENEW: &str = "/api/v1/file/lib1/space1/key1?renew&access_token=TOKEN&traffic_limit=5000000&internal_domain=1";
/// A file info, a FilePath row among many siblings of one shape.
const INFO: &str = "/api/v1/file/lib1/space1/dir/sub/a%20file.txt?info&access_token=TOKEN";

const BOUNDS: TrafficLimitBounds = TrafficLimitBounds {
    min: 102_400,
    max: 104_857_600,
    default: None,
};

fn renew_uri() -> Uri {
    RENEW.parse().unwrap()
}

fn renew_op(uri: &Uri) -> Operation<'_> {
    let target = Target::new(uri);
    let Ok(Selected::Row { route, .. }) = router().select(&http::Method::POST, &target) else {
        panic!("renew selects a row");
    };
    Operation::parse(route, &target, &HeaderMap::new()).unwrap()
}

fn route_match(c: &mut Criterion) {
    let router = router();
    for (name, method, text) in [
        ("renew", http::Method::POST, RENEW),
        ("info", http::Method::GET, INFO),
    ] {
        let uri: Uri = text.parse().unwrap();
        c.bench_function(&format!("route/{name}/select+parse"), |b| {
            b.iter(|| {
                let target = Target::new(black_box(&uri));
                let Ok(Selected::Row { route, .. }) = router.select(&method, &target) else {
                    panic!("{text} selects a row");
                };
                Operation::parse(route, &target, &HeaderMap::new()).unwrap()
            })
        });
    }
}

fn token_verify(c: &mut Criterion) {
    let verifier = Verifier::from_config(&token_config(&hs_secret_file())).unwrap();
    let claims = r#"{"exp":4102444800,"iss":"iss-b","aud":"smh","library_id":"lib1","space_id":"space1","permissions":["upload_file"]}"#;
    for (alg, kid) in [("HS256", "hs"), ("RS256", "rs"), ("ES256", "es")] {
        let claims = if kid == "hs" {
            claims.replace("iss-b", "iss-a")
        } else {
            claims.to_string()
        };
        let header = format!(r#"{{"alg":"{alg}","kid":"{kid}","typ":"JWT"}}"#);
        let token = Secret::new(sign(header.as_bytes(), claims.as_bytes()));
        verifier
            .verify_cached(verifier.file_set(), &token)
            .expect("the bench token verifies");
        c.bench_function(&format!("verify/{alg}/hit"), |b| {
            b.iter(|| {
                verifier
                    .verify_cached(verifier.file_set(), black_box(&token))
                    .unwrap()
            })
        });
        // A miss costs a full verification (the cache only adds its insert).
        c.bench_function(&format!("verify/{alg}/miss"), |b| {
            b.iter(|| verifier.verify(black_box(&token)).unwrap())
        });
    }
}

fn policy_authorize(c: &mut Criterion) {
    let libraries = vec![LibraryConfig {
        id: "lib1".into(),
        multi_tenant: true,
        traffic_limit: BOUNDS,
        secret: None,
        rate_limits: Default::default(),
    }];
    let principal = Principal {
        library: Some("lib1".into()),
        spaces: vec!["space1".into()],
        user: None,
        permissions: vec!["upload_file".into()],
        credential: None,
        ..Principal::default()
    };
    let uri = renew_uri();
    let op = renew_op(&uri);
    let named: Vec<NamedSpace> = Vec::new();
    c.bench_function("policy/authorize/renew", |b| {
        b.iter(|| {
            policy::authorize(
                black_box(&libraries),
                black_box(&principal),
                &policy::Request {
                    scope: Scope {
                        library: "lib1",
                        space: op.values.space.as_deref(),
                    },
                    named_spaces: &named,
                    permissions: op.route.required(op.permanent),
                    user_id: None,
                },
            )
            .unwrap()
        })
    });
}

fn rewrite_rebuild(c: &mut Criterion) {
    let uri = renew_uri();
    let op = renew_op(&uri);
    let token = op.token.clone().unwrap();
    c.bench_function("rewrite/clamp+path+query/renew", |b| {
        b.iter(|| {
            let op = black_box(&op);
            let (tl, _) = rewrite::clamp_traffic_limit(op.traffic_limit, &BOUNDS);
            let mut target = rewrite::upstream_path("", &op.route.template, &op.values);
            target.push('?');
            target.push_str(&rewrite::upstream_query(op, Some(&token), None, tl));
            target
        })
    });
}

/// The renew's key as the gateway makes it (src/proxy/mod.rs).
fn renew_key<'a>(op: &'a Operation, digest: &CredentialDigest) -> RenewKey<'a> {
    RenewKey::new(
        op.values.library.as_deref().unwrap_or_default(),
        op.values.space.as_deref().unwrap_or_default(),
        op.values.key.as_deref().unwrap_or_default(),
        None,
        Some(5_000_000),
        digest,
    )
    .varied_by(&rewrite::params_query(op))
}

fn cache_key(c: &mut Criterion) {
    let uri = renew_uri();
    let op = renew_op(&uri);
    let token = op.token.clone().unwrap();
    // Once per token (kept with its verified principal), not per request.
    c.bench_function("cache/key/credential_digest", |b| {
        b.iter(|| CredentialDigest::of(black_box(&token)))
    });
    let digest = CredentialDigest::of(&token);
    // What a memory-store hit computes: the variant alone.
    c.bench_function("cache/key/renew_hit", |b| {
        b.iter(|| renew_key(black_box(&op), &digest).hash)
    });
    // With the upload id too (a miss, a store, the Redis backend).
    c.bench_function("cache/key/renew", |b| {
        b.iter(|| renew_key(black_box(&op), &digest).complete())
    });
}

criterion_group!(
    hot_path,
    route_match,
    token_verify,
    policy_authorize,
    rewrite_rebuild,
    cache_key
);
criterion_main!(hot_path);
