//! Table tests for config parsing: the shipped example, the SPEC §10 defaults, and
//! that every rejected input names the dotted key an operator has to fix.

use super::*;

const FILE: &str = "gw.toml";

/// The smallest valid config, as root-level dotted keys so that a case can append
/// more root keys or whole tables after it without redefining a table.
const MINIMAL: &str = r#"
upstream.url = "https://smh.example"
auth.keys = [{ kid = "k1", alg = "HS256", secret_env = "SECRET" }]
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new(FILE), text)
}

fn parse_ok(text: &str) -> Config {
    parse(text).unwrap_or_else(|e| panic!("rejected: {e}\n--- input ---\n{text}"))
}

fn with(extra: &str) -> String {
    format!("{MINIMAL}\n{extra}\n")
}

/// A rejected input: the exact key (`None` for none) and a fragment of the message.
type ErrCase<'a> = (String, Option<&'a str>, &'a str);

/// Runs every case and reports all mismatches at once, so one bad row does not hide
/// the rest of the table.
fn check_errors(cases: &[ErrCase<'_>]) {
    let mut failures = Vec::new();
    for (text, key, fragment) in cases {
        match parse(text) {
            Ok(_) => failures.push(format!("accepted, want key {key:?}:\n{text}")),
            Err(e) => {
                if e.file != Path::new(FILE) || e.key.as_deref() != *key {
                    failures.push(format!("key {:?}, want {key:?} ({e}):\n{text}", e.key));
                } else if !e.message.contains(fragment) {
                    failures.push(format!("message lacks {fragment:?}: {e}\n{text}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
}

/// Everything but the signing keys and the upstream URL, which the callers check.
fn assert_spec_defaults(c: &Config) {
    let s = &c.server;
    assert_eq!(s.listen, "0.0.0.0:8080".parse().unwrap());
    assert!(s.tls.is_none());
    assert_eq!(s.shutdown_grace, Duration::from_secs(30));
    assert_eq!(s.header_read_timeout, Duration::from_secs(10));
    assert_eq!(s.idle_timeout, Duration::from_secs(60));
    assert_eq!(s.max_header_bytes, 32768);
    assert_eq!(s.max_uri_bytes, 16384);
    assert_eq!(s.max_body_bytes, 1_048_576);
    assert_eq!(s.max_connections, 10_000);
    assert_eq!(s.max_in_flight, 4096);
    assert_eq!(c.admin.listen, "127.0.0.1:9090".parse().unwrap());

    let u = &c.upstream;
    assert_eq!(u.connect_timeout, Duration::from_secs(2));
    assert_eq!(u.timeout, Duration::from_secs(10));
    assert_eq!(u.retries, 1);
    assert_eq!(u.max_in_flight, 1024);
    assert!(u.ca_file.is_none());
    assert_eq!(u.credential, CredentialMode::Passthrough);
    assert_eq!(u.token_period, Duration::from_secs(3600));

    let a = &c.auth;
    assert_eq!(a.leeway, Duration::from_secs(30));
    assert_eq!(a.max_token_bytes, 8192);
    assert!(a.issuers.is_none() && a.audiences.is_none() && a.jwks_file.is_none());
    let claims = ClaimNames {
        permissions: "permissions".into(),
        library: "library_id".into(),
        space: "space_id".into(),
        user: "sub".into(),
    };
    assert_eq!(a.claims, claims);

    let global = TrafficLimitBounds {
        min: 102_400,
        max: 104_857_600,
        default: None,
    };
    assert_eq!(c.traffic_limit, global);
    assert!(c.libraries.is_empty());

    let cache = &c.cache;
    assert!(cache.enabled);
    assert_eq!(cache.backend, CacheBackend::Memory);
    assert_eq!(cache.redis_url, "redis://127.0.0.1:6379");
    assert_eq!(cache.max_entries, 100_000);
    assert_eq!(cache.min_remaining, Duration::from_secs(5 * 60));
    assert_eq!(cache.max_ttl, Duration::from_secs(30 * 60));
    assert_eq!(c.routes.unmatched, Unmatched::Deny);
}

#[test]
fn shipped_example_config_parses_to_the_spec_defaults() {
    let path = Path::new("config/gateway.toml");
    let c = Config::load(path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.source, path);
    assert_spec_defaults(&c);
    assert_eq!(c.upstream.url, "https://api.tencentsmh.cn");
    assert_eq!(c.auth.keys.len(), 1);
    let k = &c.auth.keys[0];
    assert_eq!(
        (k.kid.as_str(), k.alg, &k.issuer),
        ("primary", Algorithm::HS256, &None)
    );
    assert_eq!(
        k.source,
        KeySource::SecretEnv("SMH_GATEWAY_JWT_SECRET".into())
    );
}

#[test]
fn minimal_config_gets_the_spec_defaults() {
    let c = parse_ok(
        r#"
[upstream]
url = "https://smh.example/base"

[[auth.keys]]
kid = "k1"
alg = "HS256"
secret_env = "SECRET"
"#,
    );
    assert_spec_defaults(&c);
    assert_eq!(c.upstream.url, "https://smh.example/base");
    assert_eq!(c.auth.keys[0].source, KeySource::SecretEnv("SECRET".into()));
}

/// Unknown keys at every level, with the dotted key each must be reported under.
fn unknown_key_cases() -> Vec<ErrCase<'static>> {
    let first = lib("lib", "");
    let key = "kid = \"k\"\nalg = \"HS256\"\nsecret_env = \"S\"\nfoo = 1";
    vec![
        (with("colour = 1"), Some("colour"), "unknown field `colour`"),
        // A key named "." prints like the root path (found by the config fuzz target).
        (with("\".\" = 1"), Some("."), "unknown field `.`"),
        (
            with("[server]\nlisen = \"x\""),
            Some("server.lisen"),
            "unknown field `lisen`",
        ),
        (
            with("[auth.claims]\nrole = \"r\""),
            Some("auth.claims.role"),
            "unknown field `role`",
        ),
        (
            with("[traffic_limit]\nmax_ = 1"),
            Some("traffic_limit.max_"),
            "unknown field `max_`",
        ),
        (
            keys(&[key]),
            Some("auth.keys[0].foo"),
            "unknown field `foo`",
        ),
        (
            with(&format!("{first}multitenant = true")),
            Some("libraries[0].multitenant"),
            "unknown field `multitenant`",
        ),
        (
            with(&format!("{first}{}", lib("lib2", "maximum = 1"))),
            Some("libraries[1].traffic_limit.maximum"),
            "unknown field `maximum`",
        ),
    ]
}

#[test]
fn unknown_key_is_an_error_naming_the_dotted_key() {
    check_errors(&unknown_key_cases());
}

#[test]
fn bad_server_or_admin_value_is_an_error_naming_its_key() {
    check_errors(&[
        (
            with("server.listen = \"localhost:80\""),
            Some("server.listen"),
            "invalid address",
        ),
        (
            with("server.listen = \"0.0.0.0\""),
            Some("server.listen"),
            "invalid address",
        ),
        (
            with("admin.listen = \"9090\""),
            Some("admin.listen"),
            "invalid address",
        ),
        (
            with("server.shutdown_grace = \"soon\""),
            Some("server.shutdown_grace"),
            "invalid duration",
        ),
        (
            with("server.idle_timeout = \"0s\""),
            Some("server.idle_timeout"),
            "greater than zero",
        ),
        (
            with("server.header_read_timeout = \"0ms\""),
            Some("server.header_read_timeout"),
            "greater than zero",
        ),
        (
            with("server.max_header_bytes = 100"),
            Some("server.max_header_bytes"),
            "at least 1024",
        ),
        (
            with("server.max_uri_bytes = 10"),
            Some("server.max_uri_bytes"),
            "at least 256",
        ),
        (
            with("server.max_in_flight = 0"),
            Some("server.max_in_flight"),
            "at least 1",
        ),
        (
            with("server.tls_cert = \"c.pem\""),
            Some("server.tls_key"),
            "required",
        ),
        (
            with("server.tls_key = \"k.pem\""),
            Some("server.tls_cert"),
            "required",
        ),
    ]);
}

#[test]
fn bad_upstream_is_an_error_naming_its_key() {
    let key = r#"auth.keys = [{ kid = "k1", alg = "HS256", secret_env = "SECRET" }]"#;
    let url = |u: &str| format!("upstream.url = {u:?}\n{key}");
    check_errors(&[
        (key.to_string(), Some("upstream.url"), "required"),
        (
            url("ftp://smh.example"),
            Some("upstream.url"),
            "http:// or https://",
        ),
        (
            url("smh.example"),
            Some("upstream.url"),
            "http:// or https://",
        ),
        (
            url("https://smh.example/?a=1"),
            Some("upstream.url"),
            "query",
        ),
        (
            url("https://user@smh.example"),
            Some("upstream.url"),
            "user info",
        ),
        (
            url("https://smh example"),
            Some("upstream.url"),
            "invalid URL",
        ),
        (
            with("upstream.timeout = \"ten\""),
            Some("upstream.timeout"),
            "invalid duration \"ten\"",
        ),
        (
            with("upstream.connect_timeout = \"0s\""),
            Some("upstream.connect_timeout"),
            "greater than zero",
        ),
        (
            with("upstream.retries = 11"),
            Some("upstream.retries"),
            "0..=10",
        ),
        (
            with("upstream.max_in_flight = 0"),
            Some("upstream.max_in_flight"),
            "at least 1",
        ),
        (
            with("upstream.credential = \"bearer\""),
            Some("upstream.credential"),
            "\"bearer\"",
        ),
        (
            with("upstream.credential = \"claim\"\nupstream.credential_claim = \"\""),
            Some("upstream.credential_claim"),
            "must not be empty",
        ),
        (
            with("upstream.credential = \"static\"\nupstream.credential_env = \"\""),
            Some("upstream.credential_env"),
            "must not be empty",
        ),
        (
            with("upstream.ca_file = \"\""),
            Some("upstream.ca_file"),
            "must not be empty",
        ),
    ]);
}

#[test]
fn credential_modes_map_to_their_typed_form() {
    let cases = [
        ("", CredentialMode::Passthrough),
        (
            "upstream.credential = \"passthrough\"",
            CredentialMode::Passthrough,
        ),
        (
            "upstream.credential = \"claim\"",
            CredentialMode::Claim("smh_token".into()),
        ),
        (
            "upstream.credential = \"claim\"\nupstream.credential_claim = \"t\"",
            CredentialMode::Claim("t".into()),
        ),
        (
            "upstream.credential = \"static\"",
            CredentialMode::Static {
                env: "SMH_ACCESS_TOKEN".into(),
            },
        ),
    ];
    for (extra, want) in cases {
        assert_eq!(parse_ok(&with(extra)).upstream.credential, want, "{extra}");
    }
}

#[test]
fn library_secret_mode_needs_libraries_each_with_a_secret() {
    let mode = "upstream.credential = \"library_secret\"";
    let c = parse_ok(&with(&format!(
        "{mode}\nupstream.token_period = \"10m\"\n[[libraries]]\nid = \"a\"\nsecret_env = \"A_SECRET\"\n[[libraries]]\nid = \"b\"\nsecret_file = \"/run/b.secret\""
    )));
    assert_eq!(c.upstream.credential, CredentialMode::LibrarySecret);
    assert_eq!(c.upstream.token_period, Duration::from_secs(600));
    assert_eq!(
        c.libraries[0].secret,
        Some(SecretSource::Env("A_SECRET".into()))
    );
    assert_eq!(
        c.libraries[1].secret,
        Some(SecretSource::File("/run/b.secret".into()))
    );
    assert_eq!(
        parse_ok(MINIMAL).upstream.token_period,
        Duration::from_secs(3600)
    );
    check_errors(&[
        (with(mode), Some("libraries"), "at least one [[libraries]]"),
        (
            with(&format!(
                "{mode}\n[[libraries]]\nid = \"a\"\nsecret_env = \"A\"\n[[libraries]]\nid = \"b\""
            )),
            Some("libraries[1].secret_env"),
            "give secret_env or secret_file",
        ),
        (
            with("[[libraries]]\nid = \"a\"\nsecret_env = \"A\"\nsecret_file = \"f\""),
            Some("libraries[0].secret_file"),
            "not both",
        ),
        (
            with("[[libraries]]\nid = \"a\"\nsecret_env = \"\""),
            Some("libraries[0].secret_env"),
            "must not be empty",
        ),
        (
            with("upstream.token_period = \"1500ms\""),
            Some("upstream.token_period"),
            "whole seconds",
        ),
        (
            with("upstream.token_period = \"0s\""),
            Some("upstream.token_period"),
            "greater than zero",
        ),
        (
            with("upstream.credential = \"secret\""),
            Some("upstream.credential"),
            "\"library_secret\"",
        ),
    ]);
}

/// A config whose only keys are the given `[[auth.keys]]` bodies.
fn keys(bodies: &[&str]) -> String {
    let mut text = String::from("upstream.url = \"https://smh.example\"\n");
    for body in bodies {
        text.push_str("[[auth.keys]]\n");
        text.push_str(body);
        text.push('\n');
    }
    text
}

#[test]
fn bad_signing_key_is_an_error_naming_the_key_index_and_field() {
    let hs = "kid = \"a\"\nalg = \"HS256\"\nsecret_env = \"S\"";
    check_errors(&[
        (
            keys(&["kid = \"a\"\nalg = \"none\"\nsecret_env = \"S\""]),
            Some("auth.keys[0].alg"),
            "unsupported algorithm",
        ),
        (
            keys(&["kid = \"a\"\nalg = \"hs256\"\nsecret_env = \"S\""]),
            Some("auth.keys[0].alg"),
            "unsupported algorithm",
        ),
        (
            keys(&["kid = \"a\"\nalg = \"HS256\"\npublic_key_file = \"p.pem\""]),
            Some("auth.keys[0].public_key_file"),
            "HMAC",
        ),
        (
            keys(&["kid = \"a\"\nalg = \"RS256\"\nsecret_env = \"S\""]),
            Some("auth.keys[0].secret_env"),
            "public-key",
        ),
        (
            keys(&["kid = \"a\"\nalg = \"ES256\"\nsecret_file = \"s\""]),
            Some("auth.keys[0].secret_file"),
            "public-key",
        ),
        (
            keys(&["kid = \"a\"\nalg = \"HS256\""]),
            Some("auth.keys[0].kid"),
            "secret_env or secret_file",
        ),
        (
            keys(&["kid = \"a\"\nalg = \"RS256\""]),
            Some("auth.keys[0].kid"),
            "public_key_file",
        ),
        (
            keys(&["kid = \"a\"\nalg = \"HS256\"\nsecret_env = \"S\"\nsecret_file = \"f\""]),
            Some("auth.keys[0].kid"),
            "exactly one",
        ),
        (
            keys(&["kid = \"a\"\nalg = \"HS256\"\nsecret_env = \"\""]),
            Some("auth.keys[0].secret_env"),
            "must not be empty",
        ),
        (
            keys(&["kid = \"\"\nalg = \"HS256\"\nsecret_env = \"S\""]),
            Some("auth.keys[0].kid"),
            "must not be empty",
        ),
        (
            keys(&[hs, "kid = \"b\"\nalg = \"HS256\"\nsecret_env = \"S\"", hs]),
            Some("auth.keys[2].kid"),
            "duplicate kid \"a\"",
        ),
        (
            keys(&[&format!("{hs}\nissuer = \"\"")]),
            Some("auth.keys[0].issuer"),
            "must not be empty",
        ),
        (
            keys(&["alg = \"HS256\"\nsecret_env = \"S\""]),
            Some("auth.keys[0].kid"),
            "missing field `kid`",
        ),
        (keys(&[]), Some("auth.keys"), "at least one key"),
        (
            with("auth.issuers = []"),
            Some("auth.issuers"),
            "must not be empty",
        ),
        (
            with("auth.audiences = [\"a\", \"\"]"),
            Some("auth.audiences"),
            "empty string",
        ),
        (
            with("auth.leeway = \"a while\""),
            Some("auth.leeway"),
            "invalid duration",
        ),
        (
            with("auth.max_token_bytes = 10"),
            Some("auth.max_token_bytes"),
            "at least 64",
        ),
        (
            with("auth.claims.user = \"\""),
            Some("auth.claims.user"),
            "must not be empty",
        ),
    ]);
}

#[test]
fn key_sources_and_issuers_map_to_their_typed_form() {
    let c = parse_ok(&keys(&[
        "kid = \"a\"\nalg = \"HS512\"\nsecret_file = \"/s\"",
        "kid = \"a\"\nalg = \"RS256\"\nissuer = \"https://id\"\npublic_key_file = \"/p.pem\"",
        "kid = \"e\"\nalg = \"EdDSA\"\npublic_key_file = \"/e.pem\"",
    ]));
    let got: Vec<_> = c
        .auth
        .keys
        .iter()
        .map(|k| (k.kid.as_str(), k.alg, k.issuer.as_deref(), k.source.clone()))
        .collect();
    assert_eq!(
        got,
        [
            (
                "a",
                Algorithm::HS512,
                None,
                KeySource::SecretFile("/s".into())
            ),
            (
                "a",
                Algorithm::RS256,
                Some("https://id"),
                KeySource::PublicKeyFile("/p.pem".into())
            ),
            (
                "e",
                Algorithm::EdDSA,
                None,
                KeySource::PublicKeyFile("/e.pem".into())
            ),
        ]
    );
}

#[test]
fn jwks_file_alone_satisfies_the_key_requirement() {
    let c = parse_ok("upstream.url = \"https://smh.example\"\nauth.jwks_file = \"/j.json\"");
    assert!(c.auth.keys.is_empty());
    assert_eq!(c.auth.jwks_file.as_deref(), Some(Path::new("/j.json")));
}

fn lib(id: &str, traffic_limit: &str) -> String {
    let mut s = format!("[[libraries]]\nid = {id:?}\n");
    if !traffic_limit.is_empty() {
        s.push_str(&format!("traffic_limit = {{ {traffic_limit} }}\n"));
    }
    s
}

#[test]
fn bad_traffic_limit_or_library_is_an_error_naming_its_key() {
    check_errors(&[
        (
            with("traffic_limit.min = 0"),
            Some("traffic_limit.min"),
            "greater than zero",
        ),
        (
            with("traffic_limit.min = 5000\ntraffic_limit.max = 4000"),
            Some("traffic_limit.min"),
            "above max 4000",
        ),
        (
            with("traffic_limit.default = 1"),
            Some("traffic_limit.default"),
            "outside [102400, 104857600]",
        ),
        (
            with("traffic_limit.max = -1"),
            Some("traffic_limit.max"),
            "",
        ),
        (
            with(&lib("a", "max = 209715200")),
            Some("libraries[0].traffic_limit"),
            "outside the global range",
        ),
        (
            with(&lib("a", "min = 1024")),
            Some("libraries[0].traffic_limit"),
            "outside the global range",
        ),
        (
            with(&lib("a", "min = 2000000, max = 1000000")),
            Some("libraries[0].traffic_limit.min"),
            "above max",
        ),
        (
            with(&lib("a", "max = 1000000, default = 2000000")),
            Some("libraries[0].traffic_limit.default"),
            "outside",
        ),
        (
            with(&lib("a", "min = 0")),
            Some("libraries[0].traffic_limit.min"),
            "greater than zero",
        ),
        (
            with(&format!("{}{}", lib("a", ""), lib("a", ""))),
            Some("libraries[1].id"),
            "duplicate library id \"a\"",
        ),
        (
            with(&lib("", "")),
            Some("libraries[0].id"),
            "invalid library id",
        ),
        (
            with(&lib("a/b", "")),
            Some("libraries[0].id"),
            "invalid library id",
        ),
        (
            with("[[libraries]]\nmulti_tenant = true"),
            Some("libraries[0].id"),
            "missing field `id`",
        ),
    ]);
}

#[test]
fn library_with_only_max_inherits_the_global_min() {
    let c = parse_ok(&with(&format!(
        "traffic_limit.min = 200000\n{}",
        lib("tier", "max = 1000000")
    )));
    let want = TrafficLimitBounds {
        min: 200_000,
        max: 1_000_000,
        default: None,
    };
    assert_eq!(c.libraries[0].traffic_limit, want);
}

#[test]
fn library_without_traffic_limit_gets_the_global_bounds() {
    let global =
        "traffic_limit.min = 200000\ntraffic_limit.max = 9000000\ntraffic_limit.default = 300000";
    for library in [lib("plain", ""), lib("empty", " ")] {
        let c = parse_ok(&with(&format!("{global}\n{library}")));
        assert_eq!(c.libraries[0].traffic_limit, c.traffic_limit, "{library}");
        assert_eq!(c.traffic_limit.default, Some(300_000));
    }
}

#[test]
fn traffic_limit_for_returns_library_bounds_if_listed_else_global() {
    let c = parse_ok(&with(&format!(
        "{}{}",
        lib("tier", "min = 200000, max = 1000000, default = 500000"),
        lib("open", "")
    )));
    let tier = TrafficLimitBounds {
        min: 200_000,
        max: 1_000_000,
        default: Some(500_000),
    };
    let cases = [
        ("tier", tier),
        ("open", c.traffic_limit),
        ("unlisted", c.traffic_limit),
    ];
    for (id, want) in cases {
        assert_eq!(*c.traffic_limit_for(id), want, "{id}");
    }
    assert!(c.library("unlisted").is_none());
    assert!(!c.library("tier").unwrap().multi_tenant);
}

#[test]
fn library_default_overrides_and_global_default_inside_its_range_is_inherited() {
    let global = "traffic_limit.default = 500000";
    let cases = [
        (lib("a", "max = 1000000"), Some(500_000)),
        (lib("a", "max = 1000000, default = 700000"), Some(700_000)),
        (lib("a", "min = 500000"), Some(500_000)),
    ];
    for (library, want) in cases {
        let c = parse_ok(&with(&format!("{global}\n{library}")));
        assert_eq!(c.libraries[0].traffic_limit.default, want, "{library}");
    }
}

/// SPEC §4: the global default is sent when a library has none; a library that
/// narrows the range gets it clamped into that range, never dropped.
#[test]
fn global_default_outside_a_library_range_is_clamped_into_it() {
    let global = "traffic_limit.default = 10485760";
    let cases = [
        (lib("low", "max = 1048576"), 1_048_576),
        (lib("high", "min = 20971520"), 20_971_520),
    ];
    for (library, want) in cases {
        let c = parse_ok(&with(&format!("{global}\n{library}")));
        assert_eq!(
            c.libraries[0].traffic_limit.default,
            Some(want),
            "{library}"
        );
        assert_eq!(c.traffic_limit.default, Some(10_485_760));
    }
}

#[test]
fn bad_cache_or_routes_value_is_an_error_naming_its_key() {
    check_errors(&[
        (
            with("cache.backend = \"memcached\""),
            Some("cache.backend"),
            "\"memory\" or \"redis\"",
        ),
        (
            with("cache.redis_url = \"http://r:6379\""),
            Some("cache.redis_url"),
            "redis://",
        ),
        (
            with("cache.max_entries = 0"),
            Some("cache.max_entries"),
            "at least 1",
        ),
        (
            with("cache.max_ttl = \"0s\""),
            Some("cache.max_ttl"),
            "greater than zero",
        ),
        (
            with("cache.min_remaining = \"5 parsecs\""),
            Some("cache.min_remaining"),
            "invalid duration",
        ),
        (
            with("routes.unmatched = \"allow\""),
            Some("routes.unmatched"),
            "\"deny\" or \"forward\"",
        ),
    ]);
}

#[test]
fn malformed_file_is_an_error_with_or_without_a_key() {
    check_errors(&[
        (with("[server"), None, "TOML syntax"),
        (with("server.listen = "), None, "TOML syntax"),
        (
            format!("{MINIMAL}\nupstream.url = \"https://again\""),
            None,
            "TOML syntax",
        ),
        (
            with("server.max_connections = \"many\""),
            Some("server.max_connections"),
            "invalid type",
        ),
        (
            with("cache.enabled = \"yes\""),
            Some("cache.enabled"),
            "invalid type",
        ),
        (
            with("upstream.timeout = 10"),
            Some("upstream.timeout"),
            "invalid type",
        ),
        (with("server = 1"), Some("server"), "invalid type"),
        (
            with("libraries = [{ id = 7 }]"),
            Some("libraries[0].id"),
            "invalid type",
        ),
    ]);
}

#[test]
fn valid_values_other_than_the_defaults_are_kept() {
    let c = parse_ok(&with(
        "server.tls_cert = \"c.pem\"\nserver.tls_key = \"k.pem\"\nserver.shutdown_grace = \"0s\"\n\
         upstream.retries = 0\nupstream.timeout = \"250ms\"\nauth.issuers = [\"https://id\"]\n\
         cache.backend = \"redis\"\ncache.redis_url = \"rediss://r:6380\"\nroutes.unmatched = \"forward\"\n\
         [[libraries]]\nid = \"lib\"\nmulti_tenant = true",
    ));
    let tls = c.server.tls.as_ref().unwrap();
    assert_eq!(
        (tls.cert.as_path(), tls.key.as_path()),
        (Path::new("c.pem"), Path::new("k.pem"))
    );
    assert_eq!(c.server.shutdown_grace, Duration::ZERO);
    assert_eq!(c.upstream.retries, 0);
    assert_eq!(c.upstream.timeout, Duration::from_millis(250));
    assert_eq!(c.auth.issuers, Some(vec!["https://id".to_string()]));
    assert_eq!(c.cache.backend, CacheBackend::Redis);
    assert_eq!(c.routes.unmatched, Unmatched::Forward);
    assert!(c.library("lib").unwrap().multi_tenant);
}

#[test]
fn error_display_names_the_file_and_the_dotted_key() {
    let e = Config::parse(
        Path::new("/etc/gw.toml"),
        &with("upstream.timeout = \"ten\""),
    )
    .unwrap_err();
    let shown = e.to_string();
    assert!(
        shown.starts_with("/etc/gw.toml: upstream.timeout: invalid duration \"ten\""),
        "{shown}"
    );

    let e = Config::parse(Path::new("/etc/gw.toml"), "[server").unwrap_err();
    assert!(
        e.to_string().starts_with("/etc/gw.toml: TOML syntax"),
        "{e}"
    );
    assert!(!e.to_string().contains('\n'), "{e}");
}

#[test]
fn missing_file_is_an_error_naming_the_file() {
    let path = Path::new("config/does-not-exist.toml");
    let e = Config::load(path).unwrap_err();
    assert_eq!((e.file.as_path(), e.key.as_deref()), (path, None));
    assert!(
        e.to_string()
            .starts_with("config/does-not-exist.toml: cannot read file"),
        "{e}"
    );
}

#[test]
fn leeway_over_an_hour_is_an_error() {
    check_errors(&[(
        with("auth.leeway = \"100years\""),
        Some("auth.leeway"),
        "at most 1h",
    )]);
    assert!(parse(&with("auth.leeway = \"1h\"")).is_ok());
}

#[test]
fn route_rules_are_validated_with_their_key() {
    let base = "[upstream]\nurl = \"http://127.0.0.1:1\"\n[[auth.keys]]\nkid = \"k\"\nalg = \"HS256\"\nsecret_env = \"X\"\n";
    let cases = [
        ("name = \"Bad-Name\"", "routes.rules[0].name"),
        ("name = \"unmatched\"", "routes.rules[0].name"),
        ("name = \"x\"\nmethod = \"PATCH\"", "routes.rules[0].method"),
        (
            "name = \"x\"\npath = \"/api/v1/%66ile\"",
            "routes.rules[0].path",
        ),
        (
            "name = \"x\"\npath = \"/api/{path}/x\"",
            "routes.rules[0].path",
        ),
        (
            "name = \"x\"\npermissions = [\"upload_files\"]",
            "routes.rules[0].permissions",
        ),
        (
            "name = \"x\"\npermissions = []",
            "routes.rules[0].permissions",
        ),
        (
            "name = \"x\"\ntraffic_limit = \"keep\"",
            "routes.rules[0].traffic_limit",
        ),
        (
            "name = \"x\"\nparams = [\"library_secret\"]",
            "routes.rules[0].params",
        ),
        ("name = \"x\"\nflag = \"a b\"", "routes.rules[0].flag"),
        ("name = \"x\"\nsurprise = 1", "routes.rules[0].surprise"),
    ];
    for (rule, key) in cases {
        let text = format!("{base}[[routes.rules]]\n{rule}\n");
        let e = Config::parse(Path::new("t.toml"), &text).unwrap_err();
        assert_eq!(e.key.as_deref(), Some(key), "{rule}: {e}");
    }
    let ok = format!(
        "{base}[[routes.rules]]\nname = \"renew\"\npermissions = [\"admin\"]\n[[routes.rules]]\nname = \"vendor\"\nmethod = \"GET\"\npath = \"/api/v1/v/{{library}}\"\npermissions = [\"admin\"]\ntraffic_limit = \"clamp\"\n"
    );
    let config = Config::parse(Path::new("t.toml"), &ok).unwrap();
    assert_eq!(config.routes.rules.len(), 2);
    assert_eq!(config.routes.rules[1].traffic_limit, Some(true));
}

// ---- auth.jwks_urls (SPEC §14) ----

const JWKS_ONLY: &str = "upstream.url = \"https://smh.example\"\n";

fn jwks_url(body: &str) -> String {
    format!("{JWKS_ONLY}[[auth.jwks_urls]]\n{body}\n")
}

#[test]
fn jwks_url_alone_satisfies_the_key_requirement_with_spec_defaults() {
    let c = parse_ok(&jwks_url(
        "url = \"https://idp.example/realms/r/protocol/openid-connect/certs\"",
    ));
    let a = &c.auth;
    assert!(a.keys.is_empty() && a.jwks_file.is_none());
    assert_eq!(a.jwks_refetch_cooldown, Duration::from_secs(30));
    assert_eq!(a.jwks_max_stale, Duration::from_secs(24 * 3600));
    let u = &a.jwks_urls[0];
    assert_eq!(u.refresh, Duration::from_secs(300));
    assert_eq!(u.issuer, None);
    assert_eq!(u.ca_file, None);
    assert_eq!(u.url.host(), Some("idp.example"));
}

#[test]
fn jwks_url_over_http_is_allowed_only_to_loopback() {
    for host in ["127.0.0.1:8081", "localhost", "[::1]:9000", "127.9.9.9"] {
        parse_ok(&jwks_url(&format!("url = \"http://{host}/jwks\"")));
    }
    check_errors(&[
        (
            jwks_url("url = \"http://idp.example/jwks\""),
            Some("auth.jwks_urls[0].url"),
            "loopback",
        ),
        (
            jwks_url("url = \"http://10.0.0.1/jwks\""),
            Some("auth.jwks_urls[0].url"),
            "loopback",
        ),
        (
            jwks_url("url = \"ftp://idp.example/jwks\""),
            Some("auth.jwks_urls[0].url"),
            "https",
        ),
        (
            jwks_url("url = \"https://u:p@idp.example/jwks\""),
            Some("auth.jwks_urls[0].url"),
            "user info",
        ),
        (
            jwks_url("url = \"/jwks\""),
            Some("auth.jwks_urls[0].url"),
            "host",
        ),
        (
            jwks_url("url = \"https://idp.example/j\"\nissuer = \"\""),
            Some("auth.jwks_urls[0].issuer"),
            "empty",
        ),
        (
            jwks_url("url = \"https://idp.example/j\"\nrefresh = \"0s\""),
            Some("auth.jwks_urls[0].refresh"),
            "greater than zero",
        ),
        (
            jwks_url("url = \"https://idp.example/j\"\nrefresh = \"soon\""),
            Some("auth.jwks_urls[0].refresh"),
            "invalid duration",
        ),
        (
            jwks_url("url = \"https://idp.example/j\"\nca_file = \"\""),
            Some("auth.jwks_urls[0].ca_file"),
            "empty",
        ),
        (
            jwks_url("url = \"https://idp.example/j\"\nsurprise = 1"),
            Some("auth.jwks_urls[0].surprise"),
            "unknown field",
        ),
        (
            jwks_url("issuer = \"x\""),
            Some("auth.jwks_urls[0].url"),
            "missing field",
        ),
        (
            format!(
                "{}[[auth.jwks_urls]]\nurl = \"https://idp.example/j\"\n",
                jwks_url("url = \"https://idp.example/j\"")
            ),
            Some("auth.jwks_urls[1].url"),
            "twice",
        ),
        (
            format!("{}auth.jwks_refetch_cooldown = \"0s\"\n", with("")),
            Some("auth.jwks_refetch_cooldown"),
            "greater than zero",
        ),
        (
            format!("{}auth.jwks_max_stale = \"forever\"\n", with("")),
            Some("auth.jwks_max_stale"),
            "invalid duration",
        ),
    ]);
}

#[test]
fn jwks_url_fields_are_read() {
    let c = parse_ok(&format!(
        "{JWKS_ONLY}auth.jwks_refetch_cooldown = \"1m\"\nauth.jwks_max_stale = \"2h\"\n[[auth.jwks_urls]]\nurl = \"https://a.example/jwks\"\nissuer = \"https://a.example/\"\nrefresh = \"10m\"\nca_file = \"/etc/ca.pem\"\n"
    ));
    let u = &c.auth.jwks_urls[0];
    assert_eq!(u.issuer.as_deref(), Some("https://a.example/"));
    assert_eq!(u.refresh, Duration::from_secs(600));
    assert_eq!(u.ca_file.as_deref(), Some(Path::new("/etc/ca.pem")));
    assert_eq!(c.auth.jwks_refetch_cooldown, Duration::from_secs(60));
    assert_eq!(c.auth.jwks_max_stale, Duration::from_secs(7200));
}

#[test]
fn rate_limits_are_off_by_default() {
    let c = parse_ok(MINIMAL);
    assert_eq!(c.rate_limits, RateLimitsConfig::default());
    assert_eq!(c.rate_limits.backend, RateLimitBackend::Memory);
    assert_eq!(c.rate_limits_for("any"), LibraryRateLimits::default());
}

#[test]
fn rate_limits_and_library_overrides_map_to_their_typed_form() {
    let c = parse_ok(&with(
        "[rate_limits]\nbackend = \"redis\"\n\
         library = { rate = 100, per = \"1s\", burst = 200 }\n\
         user = { rate = 5, burst = 10 }\n\
         auth_failures = { rate = 10, per = \"1m\", burst = 20 }\n\
         [[libraries]]\nid = \"lib1\"\nrate_limits = { user = { rate = 50, per = \"500ms\", burst = 50 } }\n\
         [[libraries]]\nid = \"lib2\"",
    ));
    let limit = |rate, per_ms, burst| Limit {
        rate,
        per: Duration::from_millis(per_ms),
        burst,
    };
    let r = &c.rate_limits;
    assert_eq!(r.backend, RateLimitBackend::Redis);
    assert_eq!(r.library, Some(limit(100, 1000, 200)));
    assert_eq!(r.user, Some(limit(5, 1000, 10)), "per defaults to 1s");
    assert_eq!(r.auth_failures, Some(limit(10, 60_000, 20)));
    let lib1 = c.rate_limits_for("lib1");
    assert_eq!(lib1.user, Some(limit(50, 500, 50)));
    assert_eq!(
        lib1.library,
        Some(limit(100, 1000, 200)),
        "not overridden: global"
    );
    assert_eq!(c.rate_limits_for("lib2").user, Some(limit(5, 1000, 10)));
    assert_eq!(c.rate_limits_for("unlisted").user, Some(limit(5, 1000, 10)));
}

#[test]
fn bad_rate_limit_is_an_error_naming_its_key() {
    let rl = |body: &str| with(&format!("[rate_limits]\n{body}"));
    let libl = |body: &str| {
        with(&format!(
            "[[libraries]]\nid = \"lib1\"\nrate_limits = {body}"
        ))
    };
    check_errors(&[
        (
            rl("backend = \"memcached\""),
            Some("rate_limits.backend"),
            "must be \"memory\" or \"redis\"",
        ),
        (
            rl("library = { rate = 0, burst = 1 }"),
            Some("rate_limits.library.rate"),
            "must be at least 1, got 0",
        ),
        (
            rl("user = { rate = -3, burst = 1 }"),
            Some("rate_limits.user.rate"),
            "must be at least 1, got -3",
        ),
        (
            rl("auth_failures = { rate = 1, burst = 0 }"),
            Some("rate_limits.auth_failures.burst"),
            "must be at least 1, got 0",
        ),
        (
            rl("user = { rate = 1, burst = 2000000 }"),
            Some("rate_limits.user.burst"),
            "must be at most 1000000",
        ),
        (
            rl("user = { rate = 1, per = \"0s\", burst = 1 }"),
            Some("rate_limits.user.per"),
            "must be greater than zero",
        ),
        (
            rl("user = { rate = 1, per = \"soon\", burst = 1 }"),
            Some("rate_limits.user.per"),
            "invalid duration",
        ),
        (
            rl("user = { rate = 1, per = \"2d\", burst = 1 }"),
            Some("rate_limits.user.per"),
            "must be at most 24h",
        ),
        (
            rl("user = { rate = 2000, per = \"1ms\", burst = 1 }"),
            Some("rate_limits.user.rate"),
            "more than one request per microsecond",
        ),
        (
            rl("user = { rate = 1 }"),
            Some("rate_limits.user.burst"),
            "missing field `burst`",
        ),
        (
            rl("user = { burst = 1 }"),
            Some("rate_limits.user.rate"),
            "missing field `rate`",
        ),
        (
            rl("user = { rate = 1, burst = 1, window = \"1s\" }"),
            Some("rate_limits.user.window"),
            "unknown field `window`",
        ),
        (
            rl("per_ip = { rate = 1, burst = 1 }"),
            Some("rate_limits.per_ip"),
            "unknown field `per_ip`",
        ),
        (
            rl("user = { rate = 1.5, burst = 1 }"),
            Some("rate_limits.user.rate"),
            "invalid type",
        ),
        (
            libl("{ user = { rate = 0, burst = 1 } }"),
            Some("libraries[0].rate_limits.user.rate"),
            "must be at least 1",
        ),
        (
            libl("{ library = { rate = 1, burst = 0 } }"),
            Some("libraries[0].rate_limits.library.burst"),
            "must be at least 1",
        ),
        (
            libl("{ auth_failures = { rate = 1, burst = 1 } }"),
            Some("libraries[0].rate_limits.auth_failures"),
            "unknown field `auth_failures`",
        ),
    ]);
}
