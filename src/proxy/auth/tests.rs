//! Token verification (SPEC §2): every accepted algorithm, the claim shapes, and the
//! attack each refusal exists for. Configs are TOML text, as an operator writes them;
//! HMAC secrets live in a per-test temp dir, public keys in `tests/fixtures/keys`
//! (test-only keys). No test sets an environment variable: tests run in parallel.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{DecodingKey, EncodingKey, Header, encode, get_current_timestamp};
use serde_json::json;

use super::*;

/// Exactly 32 bytes: the shortest secret SPEC §2 allows.
const SECRET: &[u8] = b"test-only-hmac-secret-32-bytes!!";
const OTHER_SECRET: &[u8] = b"another-test-only-secret-32bytes";

// ---- fixtures and helpers ----

/// A fresh directory per test (tests run in parallel), removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("smh-auth-test-{}-{}", std::process::id(), n));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, bytes).expect("write temp file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/keys")
        .join(name)
}

fn read_fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

/// A distinct secret of 40 bytes per name, for configs with several HMAC keys.
fn secret_for(name: &str) -> Vec<u8> {
    format!("{name:-<40}").into_bytes()
}

/// The whole config file: `upstream` lines land under `[upstream]` after its required
/// url, `auth` lines under `[auth]` (they may open `[auth.claims]`), then the keys.
fn parse_config(upstream: &str, auth: &str, keys: &[String]) -> Config {
    let text = format!(
        "[upstream]\nurl = \"http://127.0.0.1:9\"\n{upstream}\n[auth]\n{auth}\n{}",
        keys.concat()
    );
    Config::parse(Path::new("auth-test.toml"), &text)
        .unwrap_or_else(|e| panic!("config does not parse: {e}\n{text}"))
}

fn verifier(upstream: &str, auth: &str, keys: &[String]) -> Verifier {
    Verifier::from_config(&parse_config(upstream, auth, keys))
        .unwrap_or_else(|e| panic!("from_config: {e}"))
}

fn config_error(auth: &str, keys: &[String]) -> ConfigError {
    Verifier::from_config(&parse_config("", auth, keys)).expect_err("from_config must fail")
}

fn secret_key(kid: &str, alg: Algorithm, path: &Path) -> String {
    format!(
        "[[auth.keys]]\nkid = \"{kid}\"\nalg = \"{alg:?}\"\nsecret_file = '{}'\n",
        path.display()
    )
}

fn public_key(kid: &str, alg: Algorithm, path: &Path) -> String {
    format!(
        "[[auth.keys]]\nkid = \"{kid}\"\nalg = \"{alg:?}\"\npublic_key_file = '{}'\n",
        path.display()
    )
}

fn issued_by(key: String, issuer: &str) -> String {
    format!("{key}issuer = \"{issuer}\"\n")
}

/// The fixture pair for a public-key algorithm: (private PEM, public PEM).
fn key_pair(alg: Algorithm) -> (&'static str, &'static str) {
    match alg {
        Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 | Algorithm::PS256 => {
            ("rsa.key", "rsa.pub.pem")
        }
        Algorithm::ES256 => ("ec256.key", "ec256.pub.pem"),
        Algorithm::ES384 => ("ec384.key", "ec384.pub.pem"),
        Algorithm::EdDSA => ("ed25519.key", "ed25519.pub.pem"),
        other => panic!("no fixture for {other:?}"),
    }
}

fn signing_key(alg: Algorithm) -> EncodingKey {
    let pem = read_fixture(key_pair(alg).0);
    match alg {
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
        _ => EncodingKey::from_rsa_pem(&pem),
    }
    .expect("fixture private key loads")
}

fn header(alg: Algorithm, kid: Option<&str>) -> Header {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_string);
    h
}

fn sign(header: &Header, claims: &Value, key: &EncodingKey) -> Secret<'static> {
    Secret::new(encode(header, claims, key).expect("sign"))
}

fn now() -> u64 {
    get_current_timestamp()
}

/// Claims every default config accepts; [`expected`] is their principal.
fn claims() -> Value {
    json!({
        "exp": now() + 600,
        "library_id": "lib1",
        "space_id": "space1",
        "sub": "alice",
        "permissions": ["read", "write"],
    })
}

fn expected() -> Principal {
    Principal {
        library: Some("lib1".into()),
        spaces: vec!["space1".into()],
        user: Some("alice".into()),
        permissions: vec!["read".into(), "write".into()],
        credential: None,
        ..Principal::default()
    }
}

fn with(mut claims: Value, name: &str, value: Value) -> Value {
    claims[name] = value;
    claims
}

fn without(mut claims: Value, name: &str) -> Value {
    claims.as_object_mut().expect("object").remove(name);
    claims
}

/// The usual setup: one HS256 key `k1` holding [`SECRET`].
fn hs256_verifier(upstream: &str, auth: &str) -> Verifier {
    let dir = TempDir::new();
    let path = dir.write("hmac.secret", SECRET);
    verifier(upstream, auth, &[secret_key("k1", Algorithm::HS256, &path)])
}

fn hs256_token(claims: &Value) -> Secret<'static> {
    sign(
        &header(Algorithm::HS256, Some("k1")),
        claims,
        &EncodingKey::from_secret(SECRET),
    )
}

fn segments(token: &Secret<'_>) -> Vec<String> {
    token.expose().split('.').map(str::to_string).collect()
}

/// Base64url without padding, to hand-craft headers jsonwebtoken refuses to write.
fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let n = (b(0) << 16) | (b(1) << 8) | b(2);
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

// ---- fixtures load ----

#[test]
fn fixture_key_pairs_load_and_match() {
    for alg in [
        Algorithm::RS256,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ] {
        let public = read_fixture(key_pair(alg).1);
        let decoding = match alg {
            Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(&public),
            Algorithm::EdDSA => DecodingKey::from_ed_pem(&public),
            _ => DecodingKey::from_rsa_pem(&public),
        }
        .expect("fixture public key loads");
        let token = sign(&header(alg, None), &claims(), &signing_key(alg));
        jsonwebtoken::decode::<Value>(token.expose(), &decoding, &Validation::new(alg))
            .unwrap_or_else(|e| panic!("{alg:?} fixture pair does not match: {e}"));
    }
    assert_eq!(SECRET.len(), MIN_HMAC_SECRET_BYTES);
    assert_eq!(OTHER_SECRET.len(), MIN_HMAC_SECRET_BYTES);
}

// ---- every algorithm ----

fn assert_verifies(alg: Algorithm) {
    let dir = TempDir::new();
    let (key, signing) = match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => (
            secret_key("k1", alg, &dir.write("hmac.secret", SECRET)),
            EncodingKey::from_secret(SECRET),
        ),
        _ => (
            public_key("k1", alg, &fixture(key_pair(alg).1)),
            signing_key(alg),
        ),
    };
    let v = verifier("", "", &[key]);
    let token = sign(&header(alg, Some("k1")), &claims(), &signing);
    assert_eq!(v.verify(&token), Ok(expected()), "{alg:?}");
}

#[test]
fn hs256_token_verifies() {
    assert_verifies(Algorithm::HS256);
}

#[test]
fn hs384_token_verifies() {
    assert_verifies(Algorithm::HS384);
}

#[test]
fn hs512_token_verifies() {
    assert_verifies(Algorithm::HS512);
}

#[test]
fn rs256_token_verifies() {
    assert_verifies(Algorithm::RS256);
}

#[test]
fn rs384_token_verifies() {
    assert_verifies(Algorithm::RS384);
}

#[test]
fn rs512_token_verifies() {
    assert_verifies(Algorithm::RS512);
}

#[test]
fn ps256_token_verifies() {
    assert_verifies(Algorithm::PS256);
}

#[test]
fn es256_token_verifies() {
    assert_verifies(Algorithm::ES256);
}

#[test]
fn es384_token_verifies() {
    assert_verifies(Algorithm::ES384);
}

#[test]
fn eddsa_token_verifies() {
    assert_verifies(Algorithm::EdDSA);
}

// ---- claim shapes ----

fn principal_for(claims: &Value) -> Principal {
    hs256_verifier("", "")
        .verify(&hs256_token(claims))
        .expect("token verifies")
}

#[test]
fn permissions_as_array_are_listed() {
    let p = principal_for(&with(claims(), "permissions", json!(["a", "b"])));
    assert_eq!(p.permissions, ["a", "b"]);
    assert!(p.has("a") && p.has("b") && !p.has("c"));
}

#[test]
fn permissions_as_space_separated_string_are_split() {
    let p = principal_for(&with(claims(), "permissions", json!("a b")));
    assert_eq!(p.permissions, ["a", "b"]);
}

#[test]
fn permissions_as_comma_separated_string_are_split() {
    let p = principal_for(&with(claims(), "permissions", json!("a,b")));
    assert_eq!(p.permissions, ["a", "b"]);
}

#[test]
fn space_as_one_string_is_one_space() {
    let p = principal_for(&with(claims(), "space_id", json!("space1")));
    assert_eq!(p.spaces, ["space1"]);
}

#[test]
fn space_as_array_lists_every_space() {
    let p = principal_for(&with(claims(), "space_id", json!(["s1", "s2"])));
    assert_eq!(p.spaces, ["s1", "s2"]);
}

#[test]
fn space_as_comma_separated_string_lists_every_space() {
    let p = principal_for(&with(claims(), "space_id", json!("s1,s2")));
    assert_eq!(p.spaces, ["s1", "s2"]);
}

#[test]
fn empty_user_claim_means_no_user() {
    let p = principal_for(&with(claims(), "sub", json!("")));
    assert_eq!(p.user, None);
    assert_eq!(principal_for(&without(claims(), "sub")).user, None);
}

#[test]
fn claim_names_come_from_auth_claims() {
    let v = hs256_verifier(
        "",
        "[auth.claims]\npermissions = \"grants\"\nlibrary = \"lib\"\nspace = \"tenant\"\nuser = \"uid\"\n",
    );
    let renamed = json!({
        "exp": now() + 600,
        "lib": "lib1",
        "tenant": "space1",
        "uid": "alice",
        "grants": ["read", "write"],
    });
    assert_eq!(v.verify(&hs256_token(&renamed)), Ok(expected()));
    // The default names mean nothing once renamed.
    assert_eq!(v.verify(&hs256_token(&claims())), Ok(Principal::default()));
}

// ---- attacks and refusals ----

#[test]
fn alg_none_token_is_malformed() {
    let v = hs256_verifier("", "");
    let real = segments(&hs256_token(&claims()));
    // The hand-made header encoder writes what jsonwebtoken writes, so the refusals
    // below are about `none`, not about a broken encoding.
    assert_eq!(
        b64url(br#"{"typ":"JWT","alg":"HS256","kid":"k1"}"#),
        real[0]
    );
    for alg in ["none", "None", "NONE"] {
        for header in [
            format!(r#"{{"alg":"{alg}"}}"#),
            format!(r#"{{"typ":"JWT","alg":"{alg}","kid":"k1"}}"#),
        ] {
            let token = Secret::new(format!("{}.{}.", b64url(header.as_bytes()), real[1]));
            assert_eq!(v.verify(&token), Err(AuthFailure::Malformed), "{header}");
        }
    }
}

#[test]
fn hs256_token_signed_with_the_rsa_public_pem_is_alg_mismatch() {
    let v = verifier(
        "",
        "",
        &[public_key("r1", Algorithm::RS256, &fixture("rsa.pub.pem"))],
    );
    let forged = EncodingKey::from_secret(&read_fixture("rsa.pub.pem"));
    for kid in [Some("r1"), None] {
        let token = sign(&header(Algorithm::HS256, kid), &claims(), &forged);
        assert_eq!(
            v.verify(&token),
            Err(AuthFailure::AlgMismatch),
            "kid {kid:?}"
        );
    }
}

#[test]
fn token_signed_with_another_secret_is_bad_signature() {
    let v = hs256_verifier("", "");
    let token = sign(
        &header(Algorithm::HS256, Some("k1")),
        &claims(),
        &EncodingKey::from_secret(OTHER_SECRET),
    );
    assert_eq!(v.verify(&token), Err(AuthFailure::BadSignature));
}

#[test]
fn hs384_header_for_an_hs256_key_is_alg_mismatch() {
    let v = hs256_verifier("", "");
    let token = sign(
        &header(Algorithm::HS384, Some("k1")),
        &claims(),
        &EncodingKey::from_secret(SECRET),
    );
    assert_eq!(v.verify(&token), Err(AuthFailure::AlgMismatch));
}

#[test]
fn five_segment_jwe_is_malformed() {
    let v = hs256_verifier("", "");
    let jwe_header = b64url(br#"{"alg":"RSA-OAEP","enc":"A256GCM","kid":"k1"}"#);
    let token = Secret::new(format!("{jwe_header}.a2V5.aXY.Y2lwaGVy.dGFn"));
    assert_eq!(v.verify(&token), Err(AuthFailure::Malformed));
    // A valid JWS with two more segments glued on is no better.
    let glued = Secret::new(format!("{}.x.y", hs256_token(&claims()).expose()));
    assert_eq!(v.verify(&glued), Err(AuthFailure::Malformed));
}

#[test]
fn two_segment_token_is_malformed() {
    let v = hs256_verifier("", "");
    let s = segments(&hs256_token(&claims()));
    let token = Secret::new(format!("{}.{}", s[0], s[1]));
    assert_eq!(v.verify(&token), Err(AuthFailure::Malformed));
}

#[test]
fn garbage_is_malformed() {
    let v = hs256_verifier("", "");
    for garbage in ["", "garbage", "..", "a.b.c", "!!!.@@@.###", "eyJ.eyJ.sig"] {
        let token = Secret::new(garbage);
        assert_eq!(v.verify(&token), Err(AuthFailure::Malformed), "{garbage:?}");
    }
}

#[test]
fn token_over_max_token_bytes_is_too_large() {
    let token = hs256_token(&claims());
    let at_limit = hs256_verifier("", &format!("max_token_bytes = {}", token.len()));
    assert_eq!(at_limit.verify(&token), Ok(expected()));
    let below = hs256_verifier("", &format!("max_token_bytes = {}", token.len() - 1));
    assert_eq!(below.verify(&token), Err(AuthFailure::TooLarge));
    // The size cap comes first: even garbage is TooLarge, not Malformed.
    let garbage = Secret::new("x".repeat(token.len()));
    assert_eq!(below.verify(&garbage), Err(AuthFailure::TooLarge));
}

#[test]
fn expired_beyond_leeway_is_expired() {
    let v = hs256_verifier("", "leeway = \"30s\"");
    let token = hs256_token(&with(claims(), "exp", json!(now() - 120)));
    assert_eq!(v.verify(&token), Err(AuthFailure::Expired));
}

#[test]
fn expired_within_leeway_is_accepted() {
    let v = hs256_verifier("", "leeway = \"30s\"");
    let token = hs256_token(&with(claims(), "exp", json!(now() - 10)));
    assert_eq!(v.verify(&token), Ok(expected()));
}

#[test]
fn nbf_in_the_future_beyond_leeway_is_not_yet_valid() {
    let v = hs256_verifier("", "leeway = \"30s\"");
    let token = hs256_token(&with(claims(), "nbf", json!(now() + 120)));
    assert_eq!(v.verify(&token), Err(AuthFailure::NotYetValid));
    let within = hs256_token(&with(claims(), "nbf", json!(now() + 10)));
    assert_eq!(v.verify(&within), Ok(expected()));
}

#[test]
fn missing_exp_is_malformed() {
    let v = hs256_verifier("", "");
    let token = hs256_token(&without(claims(), "exp"));
    assert_eq!(v.verify(&token), Err(AuthFailure::Malformed));
}

#[test]
fn non_numeric_exp_is_malformed() {
    let v = hs256_verifier("", "");
    for exp in [json!("tomorrow"), json!(null), json!([1]), json!(-5)] {
        let token = hs256_token(&with(claims(), "exp", exp.clone()));
        assert_eq!(v.verify(&token), Err(AuthFailure::Malformed), "exp {exp}");
    }
}

#[test]
fn unknown_kid_is_unknown_key() {
    let v = hs256_verifier("", "");
    let token = sign(
        &header(Algorithm::HS256, Some("k2")),
        &claims(),
        &EncodingKey::from_secret(SECRET),
    );
    assert_eq!(v.verify(&token), Err(AuthFailure::UnknownKey));
}

#[test]
fn jku_x5u_jwk_x5c_headers_are_ignored() {
    let v = hs256_verifier("", "");
    let attacker = EncodingKey::from_secret(OTHER_SECRET);
    let mut h = header(Algorithm::HS256, Some("k1"));
    h.jku = Some("https://attacker.example/jwks.json".into());
    h.x5u = Some("https://attacker.example/cert.pem".into());
    h.jwk = Some(Jwk::from_encoding_key(&attacker, Algorithm::HS256).expect("jwk"));
    h.x5c = Some(vec!["MIIBattacker".into()]);
    // Signed with the configured key: verified with it, the pointers unread.
    let honest = sign(&h, &claims(), &EncodingKey::from_secret(SECRET));
    assert_eq!(v.verify(&honest), Ok(expected()));
    // Signed with the key the header offers: still checked against the configured key.
    let forged = sign(&h, &claims(), &attacker);
    assert_eq!(v.verify(&forged), Err(AuthFailure::BadSignature));
}

// ---- key lookup by (iss, kid) ----

fn sign_as(secret: &[u8], kid: Option<&str>, iss: Option<&str>) -> Secret<'static> {
    let c = match iss {
        Some(iss) => with(claims(), "iss", json!(iss)),
        None => claims(),
    };
    sign(
        &header(Algorithm::HS256, kid),
        &c,
        &EncodingKey::from_secret(secret),
    )
}

#[test]
fn same_kid_under_two_issuers_picks_the_issuers_key() {
    let dir = TempDir::new();
    let (a, b) = (secret_for("issuer-a"), secret_for("issuer-b"));
    let v = verifier(
        "",
        "",
        &[
            issued_by(
                secret_key("k1", Algorithm::HS256, &dir.write("a", &a)),
                "https://a.example",
            ),
            issued_by(
                secret_key("k1", Algorithm::HS256, &dir.write("b", &b)),
                "https://b.example",
            ),
        ],
    );
    let ok_a = sign_as(&a, Some("k1"), Some("https://a.example"));
    let ok_b = sign_as(&b, Some("k1"), Some("https://b.example"));
    let crossed = sign_as(&a, Some("k1"), Some("https://b.example"));
    assert_eq!(v.verify(&ok_a), Ok(expected()));
    assert_eq!(v.verify(&ok_b), Ok(expected()));
    assert_eq!(v.verify(&crossed), Err(AuthFailure::BadSignature));
}

#[test]
fn token_without_kid_uses_the_sole_key() {
    let v = hs256_verifier("", "");
    assert_eq!(v.verify(&sign_as(SECRET, None, None)), Ok(expected()));
}

#[test]
fn token_without_kid_is_refused_when_its_issuer_has_two_keys() {
    let dir = TempDir::new();
    let iss = "https://a.example";
    let (one, two) = (secret_for("one"), secret_for("two"));
    let v = verifier(
        "",
        "",
        &[
            issued_by(
                secret_key("k1", Algorithm::HS256, &dir.write("1", &one)),
                iss,
            ),
            issued_by(
                secret_key("k2", Algorithm::HS256, &dir.write("2", &two)),
                iss,
            ),
        ],
    );
    assert_eq!(
        v.verify(&sign_as(&one, None, Some(iss))),
        Err(AuthFailure::UnknownKey)
    );
    assert_eq!(
        v.verify(&sign_as(&one, Some("k1"), Some(iss))),
        Ok(expected())
    );
}

#[test]
fn key_without_issuer_serves_any_issuer() {
    let v = hs256_verifier("", "");
    for iss in [Some("https://a.example"), Some("https://b.example"), None] {
        assert_eq!(
            v.verify(&sign_as(SECRET, Some("k1"), iss)),
            Ok(expected()),
            "{iss:?}"
        );
        assert_eq!(
            v.verify(&sign_as(SECRET, None, iss)),
            Ok(expected()),
            "{iss:?}"
        );
    }
}

#[test]
fn key_without_issuer_serves_other_issuers_beside_a_named_one() {
    let dir = TempDir::new();
    let named = secret_for("named");
    let v = verifier(
        "",
        "",
        &[
            issued_by(
                secret_key("k1", Algorithm::HS256, &dir.write("named", &named)),
                "https://a.example",
            ),
            secret_key("k2", Algorithm::HS256, &dir.write("any", SECRET)),
        ],
    );
    let other = Some("https://b.example");
    assert_eq!(
        v.verify(&sign_as(SECRET, Some("k2"), other)),
        Ok(expected())
    );
    assert_eq!(v.verify(&sign_as(SECRET, None, other)), Ok(expected()));
    // The named key belongs to its issuer only.
    assert_eq!(
        v.verify(&sign_as(&named, Some("k1"), other)),
        Err(AuthFailure::UnknownKey)
    );
    assert_eq!(
        v.verify(&sign_as(&named, Some("k1"), Some("https://a.example"))),
        Ok(expected())
    );
}

// ---- iss and aud ----

const ISSUERS: &str = "issuers = [\"https://id.example\"]";
const AUDIENCES: &str = "audiences = [\"smh-gateway\"]";

#[test]
fn issuers_set_and_iss_missing_is_issuer() {
    let v = hs256_verifier("", ISSUERS);
    assert_eq!(v.verify(&hs256_token(&claims())), Err(AuthFailure::Issuer));
}

#[test]
fn issuers_set_and_iss_unlisted_is_issuer() {
    let v = hs256_verifier("", ISSUERS);
    let token = hs256_token(&with(claims(), "iss", json!("https://evil.example")));
    assert_eq!(v.verify(&token), Err(AuthFailure::Issuer));
}

#[test]
fn issuers_set_and_iss_listed_verifies() {
    let v = hs256_verifier("", ISSUERS);
    let token = hs256_token(&with(claims(), "iss", json!("https://id.example")));
    assert_eq!(v.verify(&token), Ok(expected()));
}

/// RFC 7519 `iss` is one StringOrURI. jsonwebtoken accepts an array holding any
/// listed issuer, so an unlisted issuer could ride along with a listed one.
#[test]
fn issuers_set_and_iss_array_smuggling_a_listed_one_is_issuer() {
    let v = hs256_verifier("", ISSUERS);
    let iss = json!(["https://evil.example", "https://id.example"]);
    let token = hs256_token(&with(claims(), "iss", iss));
    assert_eq!(v.verify(&token), Err(AuthFailure::Issuer));
}

#[test]
fn audiences_set_and_aud_missing_is_audience() {
    let v = hs256_verifier("", AUDIENCES);
    assert_eq!(
        v.verify(&hs256_token(&claims())),
        Err(AuthFailure::Audience)
    );
}

#[test]
fn audiences_set_and_aud_array_holding_a_listed_one_verifies() {
    let v = hs256_verifier("", AUDIENCES);
    let token = hs256_token(&with(claims(), "aud", json!(["other", "smh-gateway"])));
    assert_eq!(v.verify(&token), Ok(expected()));
}

#[test]
fn audiences_set_and_string_aud_unlisted_is_audience() {
    let v = hs256_verifier("", AUDIENCES);
    let token = hs256_token(&with(claims(), "aud", json!("other")));
    assert_eq!(v.verify(&token), Err(AuthFailure::Audience));
}

#[test]
fn audiences_unset_and_token_with_aud_is_accepted() {
    let v = hs256_verifier("", "");
    for aud in [json!("anything"), json!(["a", "b"])] {
        let token = hs256_token(&with(claims(), "aud", aud.clone()));
        assert_eq!(v.verify(&token), Ok(expected()), "aud {aud}");
    }
}

// ---- upstream credential claim ----

#[test]
fn credential_claim_mode_without_the_claim_is_missing_credential_claim() {
    let v = hs256_verifier("credential = \"claim\"", "");
    assert_eq!(
        v.verify(&hs256_token(&claims())),
        Err(AuthFailure::MissingCredentialClaim)
    );
    let empty = hs256_token(&with(claims(), "smh_token", json!("")));
    assert_eq!(v.verify(&empty), Err(AuthFailure::MissingCredentialClaim));
}

#[test]
fn credential_claim_mode_with_the_claim_sets_the_credential() {
    let v = hs256_verifier("credential = \"claim\"", "");
    let token = hs256_token(&with(claims(), "smh_token", json!("upstream-smh-token")));
    let p = v.verify(&token).expect("token verifies");
    assert_eq!(
        p.credential.as_ref().map(Secret::expose),
        Some("upstream-smh-token")
    );
}

#[test]
fn passthrough_mode_ignores_the_credential_claim() {
    let v = hs256_verifier("", "");
    let token = hs256_token(&with(claims(), "smh_token", json!("upstream-smh-token")));
    assert_eq!(v.verify(&token).map(|p| p.credential), Ok(None));
}

// ---- config errors ----

#[test]
fn hmac_secret_file_under_32_bytes_names_secret_file() {
    let dir = TempDir::new();
    let short = dir.write("short", &SECRET[..31]);
    let e = config_error("", &[secret_key("k1", Algorithm::HS256, &short)]);
    assert_eq!(e.key.as_deref(), Some("auth.keys[0].secret_file"));
    // The trailing newline does not count towards the 32 bytes.
    let padded = dir.write("padded", &[&SECRET[..31], b"\n"].concat());
    let e = config_error("", &[secret_key("k1", Algorithm::HS256, &padded)]);
    assert_eq!(e.key.as_deref(), Some("auth.keys[0].secret_file"));
}

#[test]
fn hmac_secret_file_trailing_newline_is_dropped() {
    for ending in [&b"\n"[..], b"\r\n"] {
        let dir = TempDir::new();
        let path = dir.write("hmac.secret", &[SECRET, ending].concat());
        let v = verifier("", "", &[secret_key("k1", Algorithm::HS256, &path)]);
        assert_eq!(v.verify(&hs256_token(&claims())), Ok(expected()));
        let with_newline = [SECRET, ending].concat();
        assert_eq!(
            v.verify(&sign_as(&with_newline, Some("k1"), None)),
            Err(AuthFailure::BadSignature)
        );
    }
}

#[test]
fn unreadable_public_key_file_names_public_key_file() {
    let dir = TempDir::new();
    let missing = dir.0.join("missing.pem");
    let not_pem = dir.write("not.pem", b"not a key");
    for path in [missing, not_pem, fixture("rsa.pub.pem")] {
        // rsa.pub.pem is readable, but not an ES256 key.
        let alg = if path.ends_with("rsa.pub.pem") {
            Algorithm::ES256
        } else {
            Algorithm::RS256
        };
        let e = config_error("", &[public_key("k1", alg, &path)]);
        assert_eq!(
            e.key.as_deref(),
            Some("auth.keys[0].public_key_file"),
            "{}",
            path.display()
        );
    }
}

#[test]
fn unset_secret_env_names_secret_env() {
    const UNSET: &str = "SMH_GATEWAY_AUTH_TEST_NEVER_SET_5E1F";
    assert!(std::env::var_os(UNSET).is_none());
    let key = format!("[[auth.keys]]\nkid = \"k1\"\nalg = \"HS256\"\nsecret_env = \"{UNSET}\"\n");
    let e = config_error("", &[key]);
    assert_eq!(e.key.as_deref(), Some("auth.keys[0].secret_env"));
}

// ---- JWKS ----

#[test]
fn jwks_key_with_alg_verifies_and_key_without_alg_is_skipped() {
    let rsa = signing_key(Algorithm::RS256);
    let mut j1 = serde_json::to_value(Jwk::from_encoding_key(&rsa, Algorithm::RS256).unwrap())
        .expect("jwk json");
    j1["kid"] = json!("j1");
    assert_eq!(j1["alg"], "RS256");
    let mut j2 = without(j1.clone(), "alg");
    j2["kid"] = json!("j2");
    let dir = TempDir::new();
    let jwks = dir.write(
        "jwks.json",
        json!({ "keys": [j1, j2] }).to_string().as_bytes(),
    );
    let v = verifier("", &format!("jwks_file = '{}'", jwks.display()), &[]);

    let signed = |kid| sign(&header(Algorithm::RS256, Some(kid)), &claims(), &rsa);
    assert_eq!(v.verify(&signed("j1")), Ok(expected()));
    assert_eq!(v.verify(&signed("j2")), Err(AuthFailure::UnknownKey));
    // The JWK's alg is pinned like a configured key's.
    let forged = sign(
        &header(Algorithm::HS256, Some("j1")),
        &claims(),
        &EncodingKey::from_secret(&read_fixture("rsa.pub.pem")),
    );
    assert_eq!(v.verify(&forged), Err(AuthFailure::AlgMismatch));
}

#[test]
fn jwks_holding_only_keys_without_alg_is_a_config_error() {
    let rsa = signing_key(Algorithm::RS256);
    let mut jwk = serde_json::to_value(Jwk::from_encoding_key(&rsa, Algorithm::RS256).unwrap())
        .expect("jwk json");
    jwk = without(jwk, "alg");
    let dir = TempDir::new();
    let jwks = dir.write("jwks.json", json!({ "keys": [jwk] }).to_string().as_bytes());
    let e = config_error(&format!("jwks_file = '{}'", jwks.display()), &[]);
    assert_eq!(e.key.as_deref(), Some("auth.jwks_file"));
}

// ---- secrets stay out of Debug ----

#[test]
fn verifier_debug_never_shows_the_secret() {
    let v = hs256_verifier("", "");
    let debug = format!("{v:?}");
    assert!(
        !debug.contains(std::str::from_utf8(SECRET).unwrap()),
        "{debug}"
    );
    assert!(!debug.contains(&format!("{:?}", SECRET)), "{debug}");
    assert!(!debug.contains(&b64url(SECRET)), "{debug}");
}

#[test]
fn principal_debug_never_shows_the_credential() {
    let v = hs256_verifier("credential = \"claim\"", "");
    let token = hs256_token(&with(claims(), "smh_token", json!("upstream-smh-token")));
    let p = v.verify(&token).expect("token verifies");
    let debug = format!("{p:?}");
    assert!(!debug.contains("upstream-smh-token"), "{debug}");
    assert!(debug.contains("[redacted]"), "{debug}");
}

#[test]
fn crit_header_is_refused() {
    let v = hs256_verifier("", "");
    let mut h = header(Algorithm::HS256, Some("k1"));
    h.crit = Some(vec!["b64".into()]);
    let token = sign(&h, &claims(), &EncodingKey::from_secret(SECRET));
    assert_eq!(v.verify(&token), Err(AuthFailure::Malformed));
}

/// A token over raw JSON text (serde cannot write a repeated member).
fn hs256_raw(header_json: &str, claims_json: &str) -> Secret<'static> {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let message = format!("{}.{}", b64(header_json), b64(claims_json));
    let sig = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(SECRET),
        Algorithm::HS256,
    )
    .unwrap();
    Secret::new(format!("{message}.{sig}"))
}

#[test]
fn repeated_members_in_claims_or_header_are_refused() {
    let v = hs256_verifier("", "");
    let exp = now() + 600;
    let ok = hs256_raw(
        r#"{"alg":"HS256","kid":"k1"}"#,
        &format!(r#"{{"exp":{exp},"library_id":"lib1"}}"#),
    );
    assert!(v.verify(&ok).is_ok());
    for (header, claims) in [
        (
            r#"{"alg":"HS256","kid":"k1"}"#.to_string(),
            format!(r#"{{"exp":{exp},"library_id":"lib2","library_id":"lib1"}}"#),
        ),
        (
            r#"{"alg":"HS256","kid":"k1"}"#.to_string(),
            format!(r#"{{"exp":{exp},"permissions":["a"],"permissions":["admin"]}}"#),
        ),
        (
            r#"{"alg":"HS256","kid":"k2","kid":"k1"}"#.to_string(),
            format!(r#"{{"exp":{exp}}}"#),
        ),
    ] {
        assert_eq!(
            v.verify(&hs256_raw(&header, &claims)),
            Err(AuthFailure::Malformed),
            "{header} {claims}"
        );
    }
}

#[test]
fn a_user_or_library_claim_that_is_not_a_string_is_refused() {
    let v = hs256_verifier("", "");
    for (name, value) in [
        ("sub", json!(false)),
        ("sub", json!({})),
        ("sub", json!(["alice"])),
        ("library_id", json!(true)),
    ] {
        let token = hs256_token(&with(claims(), name, value.clone()));
        assert_eq!(
            v.verify(&token),
            Err(AuthFailure::Malformed),
            "{name}={value}"
        );
    }
    // Absent, null and numeric users are fine (a null is absent).
    let token = hs256_token(&with(claims(), "sub", json!(null)));
    assert_eq!(v.verify(&token).unwrap().user, None);
    let token = hs256_token(&with(claims(), "sub", json!(42)));
    assert_eq!(v.verify(&token).unwrap().user.as_deref(), Some("42"));
}

// ---- the key set the verifier is handed ----

fn set_of(generation: u64, keys: Vec<Arc<keys::VerifyKey>>) -> KeySet {
    KeySet::new(generation, keys, std::time::Duration::from_secs(60))
}

#[test]
fn a_cached_token_is_refused_once_its_key_leaves_the_key_set() {
    let v = hs256_verifier("", "");
    let token = hs256_token(&claims());
    let with_key = set_of(1, v.key_sources().file_keys.clone());
    assert!(v.verify_cached(&with_key, &token).is_ok());
    assert!(v.verify_cached(&with_key, &token).is_ok(), "a cache hit");
    let without = set_of(2, Vec::new());
    assert_eq!(
        v.verify_cached(&without, &token),
        Err(AuthFailure::UnknownKey)
    );
    // The same keys under a new generation verify again, from scratch.
    let again = set_of(3, v.key_sources().file_keys.clone());
    assert!(v.verify_cached(&again, &token).is_ok());
}

#[test]
fn a_key_of_a_jwks_set_past_max_stale_is_refused_as_stale() {
    let v = hs256_verifier("", "");
    let token = hs256_token(&claims());
    let freshness = Arc::new(keys::Freshness::default());
    let file_key = &v.key_sources().file_keys[0];
    let fetched = Arc::new(keys::VerifyKey {
        kid: file_key.kid.clone(),
        issuer: None,
        alg: file_key.alg,
        key: file_key.key.clone(),
        fetched: Some(freshness.clone()),
    });
    let set = set_of(1, vec![fetched]);
    // Never fetched successfully: stale.
    assert_eq!(v.verify_cached(&set, &token), Err(AuthFailure::KeysStale));
    freshness.succeeded(keys::now_ms());
    assert!(v.verify_cached(&set, &token).is_ok());
    // Its last success an hour ago, with max_stale one minute: the cached entry is
    // refused too.
    freshness.succeeded(keys::now_ms() - 3_600_000);
    assert_eq!(v.verify_cached(&set, &token), Err(AuthFailure::KeysStale));
}
