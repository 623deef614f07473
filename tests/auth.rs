//! SPEC §2 end to end: which tokens reach SMH, and what a refused one gets. Every
//! refusal also asserts that the upstream received nothing.

mod common;

use common::*;
use jsonwebtoken::Algorithm;
use serde_json::json;

#[tokio::test]
async fn valid_token_is_forwarded_in_the_query() {
    let gw = start().await;
    let tok = token();
    let r = gw
        .renew(&format!("access_token={tok}&traffic_limit=500000"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        last_query(&gw),
        format!("renew&access_token={tok}&traffic_limit=500000")
    );
}

#[tokio::test]
async fn missing_or_empty_token_is_empty_access_token() {
    let gw = start().await;
    gw.renew("traffic_limit=500000")
        .await
        .assert_error(400, "EmptyAccessToken");
    gw.renew("access_token=&traffic_limit=500000")
        .await
        .assert_error(400, "EmptyAccessToken");
    assert_eq!(gw.mock.count(), 0);
}

#[tokio::test]
async fn alg_none_is_refused() {
    let gw = start().await;
    use base64::Engine;
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let tok = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "JWT", "kid": "k1"})),
        b64(claims())
    );
    gw.renew(&format!("access_token={tok}"))
        .await
        .assert_error(403, "InvalidAccessToken");
    assert_eq!(gw.mock.count(), 0);
    assert_eq!(gw.log_lines()[0]["reason"], "malformed");
}

#[tokio::test]
async fn hs_rs_confusion_is_refused() {
    let public_pem = std::fs::read(fixture("keys/rsa.pub.pem")).unwrap();
    let gw = start_with(Setup {
        rest: format!(
            "[[auth.keys]]\nkid = \"rsa1\"\nalg = \"RS256\"\npublic_key_file = \"{}\"\n",
            fixture("keys/rsa.pub.pem").display()
        ),
        ..Setup::default()
    })
    .await;
    // An HS256 token whose HMAC secret is the RSA public key's PEM, naming the RSA key.
    let forged = sign_with(&claims(), Algorithm::HS256, Some("rsa1"), &public_pem);
    gw.renew(&format!("access_token={forged}"))
        .await
        .assert_error(403, "InvalidAccessToken");
    assert_eq!(gw.mock.count(), 0);
    assert_eq!(gw.log_lines()[0]["reason"], "alg_mismatch");
}

#[tokio::test]
async fn bad_signature_is_refused() {
    let gw = start().await;
    let forged = sign_with(
        &claims(),
        Algorithm::HS256,
        Some("k1"),
        b"another-secret-of-at-least-32-bytes!!",
    );
    gw.renew(&format!("access_token={forged}"))
        .await
        .assert_error(403, "InvalidAccessToken");
    assert_eq!(gw.mock.count(), 0);
}

#[tokio::test]
async fn expired_beyond_leeway_is_refused_within_leeway_is_not() {
    let gw = start_with(Setup {
        auth: "leeway = \"30s\"".into(),
        ..Setup::default()
    })
    .await;
    let expired = token_with(json!({ "exp": now() - 120 }));
    gw.renew(&format!("access_token={expired}"))
        .await
        .assert_error(403, "InvalidAccessToken");
    assert_eq!(gw.mock.count(), 0);
    let lines = gw.log_lines();
    assert_eq!(lines[0]["reason"], "expired");

    let just_expired = token_with(json!({ "exp": now() - 5 }));
    assert_eq!(
        gw.renew(&format!("access_token={just_expired}"))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn token_without_exp_is_refused() {
    let gw = start().await;
    let no_exp = token_with(json!({ "exp": null }));
    gw.renew(&format!("access_token={no_exp}"))
        .await
        .assert_error(403, "InvalidAccessToken");
    assert_eq!(gw.mock.count(), 0);
}

#[tokio::test]
async fn nbf_in_the_future_is_refused() {
    let gw = start().await;
    let early = token_with(json!({ "nbf": now() + 600 }));
    gw.renew(&format!("access_token={early}"))
        .await
        .assert_error(403, "InvalidAccessToken");
    assert_eq!(gw.log_lines()[0]["reason"], "not_yet_valid");
    assert_eq!(gw.mock.count(), 0);
}

#[tokio::test]
async fn unknown_kid_is_refused() {
    let gw = start().await;
    let other = sign_with(&claims(), Algorithm::HS256, Some("nope"), SECRET);
    gw.renew(&format!("access_token={other}"))
        .await
        .assert_error(403, "InvalidAccessToken");
    assert_eq!(gw.log_lines()[0]["reason"], "unknown_key");
    assert_eq!(gw.mock.count(), 0);
}

#[tokio::test]
async fn oversized_token_is_refused_before_parsing() {
    let gw = start_with(Setup {
        auth: "max_token_bytes = 256".into(),
        ..Setup::default()
    })
    .await;
    let big = token_with(json!({ "padding": "x".repeat(400) }));
    gw.renew(&format!("access_token={big}"))
        .await
        .assert_error(403, "InvalidAccessToken");
    assert_eq!(gw.log_lines()[0]["reason"], "too_large");
    assert_eq!(gw.mock.count(), 0);
}

#[tokio::test]
async fn jwe_and_garbage_tokens_are_refused() {
    let gw = start().await;
    for tok in [
        "a.b.c.d.e",
        "not-a-jwt",
        "a.b",
        "..",
        "eyJhbGciOiJIUzI1NiJ9.e30.",
    ] {
        gw.renew(&format!("access_token={tok}"))
            .await
            .assert_error(403, "InvalidAccessToken");
    }
    assert_eq!(gw.mock.count(), 0);
}

#[tokio::test]
async fn bearer_header_is_accepted_and_forwarded_in_the_query_only() {
    let gw = start().await;
    let tok = token();
    let auth = format!("Bearer {tok}");
    let r = gw
        .request(
            http::Method::POST,
            "/api/v1/file/lib1/-/ck1?renew",
            &[("authorization", &auth)],
            b"",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let got = gw.mock.last().unwrap();
    assert_eq!(
        got.query.as_deref(),
        Some(format!("renew&access_token={tok}").as_str())
    );
    assert!(
        got.headers.get("authorization").is_none(),
        "Authorization must never be forwarded"
    );
}

#[tokio::test]
async fn query_and_header_tokens_that_differ_are_a_400() {
    let gw = start().await;
    let auth = format!("Bearer {}", token_with(json!({ "sub": "someone-else" })));
    let r = gw
        .request(
            http::Method::POST,
            &format!("/api/v1/file/lib1/-/ck1?renew&access_token={}", token()),
            &[("authorization", &auth)],
            b"",
        )
        .await;
    r.assert_error(400, "ParamInvalid");
    assert_eq!(gw.mock.count(), 0);
}

#[tokio::test]
async fn refusals_never_echo_the_token() {
    let gw = start().await;
    let expired = token_with(json!({ "exp": now() - 3600 }));
    let r = gw.renew(&format!("access_token={expired}")).await;
    assert!(!r.text().contains(&expired));
    let line = gw.log_lines()[0].to_string();
    assert!(!line.contains(&expired), "{line}");
}

#[tokio::test]
async fn a_verified_token_still_expires() {
    // The verifier caches successes; the cached entry must not outlive exp. A token
    // one second from expiry is verified (and cached), then renewed until the clock
    // passes exp: no sleep stands in for the expiry, and a slow machine only makes
    // the loop longer. (The cache's own clock arithmetic is unit-tested in
    // src/proxy/auth/cache.rs with the time passed in.)
    let gw = start_with(Setup {
        auth: "leeway = \"0s\"".into(),
        ..Setup::default()
    })
    .await;
    // A slow machine may pass exp before the first request: mint again.
    let mut short = None;
    for _ in 0..5 {
        let tok = token_with(json!({ "exp": now() + 1 }));
        if gw.renew(&format!("access_token={tok}")).await.status == 200 {
            short = Some(tok);
            break;
        }
    }
    let short = short.expect("a token one second from expiry was accepted once");
    let upstream_calls = gw.mock.count();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let refused = loop {
        let r = gw.renew(&format!("access_token={short}")).await;
        if r.status != 200 {
            break r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a token past exp still passes"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    refused.assert_error(403, "InvalidAccessToken");
    // The 200s in between were renew-cache hits; the refusal reached nobody.
    assert_eq!(gw.mock.count(), upstream_calls);
    let expired = "smh_gateway_auth_failures_total{reason=\"expired\"}";
    assert!(gw.metric(expired).await >= 1.0);
}

#[tokio::test]
async fn an_admin_token_whose_user_claim_is_not_a_string_cannot_pass_user_id() {
    let gw = start().await;
    let tok = token_with(json!({ "permissions": ["admin"], "sub": false }));
    gw.renew(&format!("access_token={tok}&user_id=victim"))
        .await
        .assert_error(403, "InvalidAccessToken");
    assert_eq!(gw.mock.count(), 0);
}
