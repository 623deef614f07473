//! The JWKS parser on the shapes identity providers publish (RSA, EC P-256, OKP,
//! oct), the JWKs it must leave out and why, and the refresh schedule that
//! `Cache-Control` sets.

use std::path::Path;

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};

use super::*;

fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/keys")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The public JWK of a fixture private key, with this kid.
fn public_jwk(alg: Algorithm, kid: &str) -> Value {
    let pem = fixture(match alg {
        Algorithm::ES256 => "ec256.key",
        Algorithm::ES384 => "ec384.key",
        Algorithm::EdDSA => "ed25519.key",
        _ => "rsa.key",
    });
    let key = match alg {
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
        _ => EncodingKey::from_rsa_pem(&pem),
    }
    .unwrap();
    let mut v = serde_json::to_value(Jwk::from_encoding_key(&key, alg).unwrap()).unwrap();
    v["kid"] = json!(kid);
    v["use"] = json!("sig");
    v
}

fn oct(kid: &str, secret: &[u8]) -> Value {
    use base64::Engine as _;
    json!({
        "kty": "oct",
        "kid": kid,
        "alg": "HS256",
        "k": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret),
    })
}

fn doc(keys: Vec<Value>) -> Vec<u8> {
    json!({ "keys": keys }).to_string().into_bytes()
}

fn kids(p: &Parsed) -> Vec<&str> {
    p.keys.iter().map(|k| k.kid.as_deref().unwrap()).collect()
}

#[test]
fn rsa_ec_and_okp_keys_are_kept_with_their_pinned_alg() {
    let p = parse(
        &doc(vec![
            public_jwk(Algorithm::RS256, "rsa"),
            public_jwk(Algorithm::PS256, "pss"),
            public_jwk(Algorithm::ES256, "p256"),
            public_jwk(Algorithm::ES384, "p384"),
            public_jwk(Algorithm::EdDSA, "ed"),
        ]),
        Origin::Url,
    )
    .unwrap();
    assert_eq!(kids(&p), ["rsa", "pss", "p256", "p384", "ed"]);
    let algs: Vec<Algorithm> = p.keys.iter().map(|k| k.alg).collect();
    use Algorithm as A;
    assert_eq!(algs, [A::RS256, A::PS256, A::ES256, A::ES384, A::EdDSA]);
    assert!(p.skipped.is_empty(), "{:?}", p.skipped);
}

#[test]
fn oct_keys_are_kept_from_a_file_and_refused_from_a_url() {
    let secret = b"a-test-only-hmac-secret-of-32-by";
    let p = parse(&doc(vec![oct("h", secret)]), Origin::File).unwrap();
    assert_eq!(kids(&p), ["h"]);
    let p = parse(&doc(vec![oct("h", secret)]), Origin::Url).unwrap();
    assert!(p.keys.is_empty());
    assert_eq!(p.skipped, [("h".to_string(), Skip::SecretFromUrl)]);
    let p = parse(&doc(vec![oct("short", b"too short")]), Origin::File).unwrap();
    assert_eq!(p.skipped, [("short".to_string(), Skip::ShortSecret(9))]);
    assert!(p.skipped[0].1.is_error_in_file());
}

#[test]
fn unusable_jwks_are_skipped_each_with_its_reason_and_counted() {
    let rsa = public_jwk(Algorithm::RS256, "ok");
    let mut no_alg = rsa.clone();
    no_alg.as_object_mut().unwrap().remove("alg");
    no_alg["kid"] = json!("no-alg");
    let mut enc = rsa.clone();
    enc["kid"] = json!("enc");
    enc["use"] = json!("enc");
    enc["alg"] = json!("RSA-OAEP");
    let mut ops = rsa.clone();
    ops["kid"] = json!("ops");
    ops.as_object_mut().unwrap().remove("use");
    ops["key_ops"] = json!(["encrypt"]);
    let mut rs384_claim_on_ec = public_jwk(Algorithm::ES256, "mismatch");
    rs384_claim_on_ec["alg"] = json!("RS384");
    let mut p256_as_es384 = public_jwk(Algorithm::ES256, "curve");
    p256_as_es384["alg"] = json!("ES384");
    let mut ps512 = rsa.clone();
    ps512["kid"] = json!("ps512");
    ps512["alg"] = json!("PS512");
    let unknown_kty = json!({ "kty": "AKP", "kid": "pq", "alg": "ES256", "pub": "xyz" });
    let mut broken = rsa.clone();
    broken["kid"] = json!("broken");
    broken["e"] = json!(42);
    let p = parse(
        &doc(vec![
            no_alg,
            enc,
            ops,
            rs384_claim_on_ec,
            p256_as_es384,
            ps512,
            unknown_kty,
            broken,
            rsa,
        ]),
        Origin::Url,
    )
    .unwrap();
    assert_eq!(kids(&p), ["ok"]);
    let reasons: Vec<(&str, &Skip)> = p.skipped.iter().map(|(k, s)| (k.as_str(), s)).collect();
    assert_eq!(reasons.len(), 8, "{reasons:?}");
    assert_eq!(reasons[0], ("no-alg", &Skip::NoAlg));
    assert_eq!(reasons[1], ("enc", &Skip::NotForSignatures));
    assert_eq!(reasons[2], ("ops", &Skip::NotForSignatures));
    assert_eq!(reasons[3], ("mismatch", &Skip::KeyTypeMismatch));
    assert_eq!(reasons[4], ("curve", &Skip::KeyTypeMismatch));
    // PS512 is not among SPEC §2's algorithms.
    assert_eq!(reasons[5], ("ps512", &Skip::UnsupportedAlg("PS512".into())));
    assert_eq!(reasons[6], ("pq", &Skip::UnsupportedKeyType("AKP".into())));
    assert!(
        matches!(reasons[7], ("broken", Skip::BadKey(_))),
        "{reasons:?}"
    );
}

#[test]
fn a_jwk_without_kid_is_labelled_by_its_index() {
    let mut k = public_jwk(Algorithm::RS256, "x");
    k.as_object_mut().unwrap().remove("kid");
    k.as_object_mut().unwrap().remove("alg");
    let p = parse(&doc(vec![k]), Origin::Url).unwrap();
    assert_eq!(p.skipped, [("#0".to_string(), Skip::NoAlg)]);
}

#[test]
fn a_document_that_is_not_a_jwks_is_an_error() {
    for text in [&b"not json"[..], b"{}", b"[]", b"{\"keys\": {}}"] {
        assert!(parse(text, Origin::Url).is_err(), "{text:?}");
    }
    assert!(
        parse(b"{\"keys\": []}", Origin::Url)
            .unwrap()
            .keys
            .is_empty()
    );
}

#[test]
fn cache_control_max_age_is_read() {
    for (value, want) in [
        ("max-age=300", Some(300)),
        ("public, max-age=3600, must-revalidate", Some(3600)),
        ("MAX-AGE = 120", Some(120)),
        ("max-age=\"90\"", Some(90)),
        ("no-cache", Some(0)),
        ("private, no-store", Some(0)),
        ("max-age=-5", None),
        ("max-age=", None),
        ("max-age=1e3", None),
        ("public", None),
        ("", None),
        ("max-age=99999999999999999999999", Some(u64::MAX)),
    ] {
        assert_eq!(max_age(value.as_bytes()), want, "{value:?}");
    }
    assert_eq!(max_age(b"max-age=\xff"), None);
}

#[test]
fn max_age_sets_the_refresh_within_one_minute_and_one_hour() {
    let configured = Duration::from_secs(300);
    let secs = Duration::from_secs;
    assert_eq!(refresh_after(configured, None), configured);
    assert_eq!(refresh_after(configured, Some(120)), secs(120));
    assert_eq!(refresh_after(configured, Some(0)), secs(60));
    assert_eq!(refresh_after(configured, Some(5)), secs(60));
    assert_eq!(refresh_after(configured, Some(86_400)), secs(3600));
    assert_eq!(refresh_after(configured, Some(u64::MAX)), secs(3600));
    // A short configured refresh (no max-age) is the operator's choice.
    assert_eq!(
        refresh_after(Duration::from_millis(200), None),
        Duration::from_millis(200)
    );
}

#[test]
fn failed_fetches_back_off_up_to_the_refresh_and_a_minute() {
    let secs = Duration::from_secs;
    let five_min = secs(300);
    let backoff: Vec<Duration> = (1..=8).map(|n| retry_after(n, five_min)).collect();
    assert_eq!(
        backoff,
        [
            secs(1),
            secs(2),
            secs(4),
            secs(8),
            secs(16),
            secs(32),
            secs(60),
            secs(60)
        ]
    );
    assert_eq!(
        retry_after(1, Duration::from_millis(200)),
        Duration::from_millis(200)
    );
    assert_eq!(retry_after(u32::MAX, five_min), secs(60));
}
