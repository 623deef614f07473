//! The limiter over the memory backend, without sockets: each limit, overrides, the
//! all-or-nothing rule, the auth-failure peek, headers, and the memory bound.

use std::path::Path;

use super::*;

fn rules(extra: &str) -> Rules {
    let text = format!(
        "upstream.url = \"https://smh.example\"\n\
         auth.keys = [{{ kid = \"k1\", alg = \"HS256\", secret_env = \"S\" }}]\n{extra}"
    );
    let config = Config::parse(Path::new("t.toml"), &text).unwrap_or_else(|e| panic!("{e}"));
    Rules::from_config(&config)
}

fn limiter() -> RateLimiter {
    RateLimiter::new(Arc::new(Metrics::new(&[], &[])), None)
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// How many of `n` requests at once pass.
fn passed(l: &RateLimiter, r: &Rules, library: &str, user: Option<&str>, n: usize) -> usize {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    (0..n)
        .filter(|_| rt.block_on(l.check(r, library, user, &mut None)).is_ok())
        .count()
}

#[test]
fn user_limit_is_per_library_and_user() {
    let r = rules("[rate_limits]\nuser = { rate = 1, per = \"1h\", burst = 3 }");
    let l = limiter();
    assert_eq!(passed(&l, &r, "lib1", Some("alice"), 5), 3);
    assert_eq!(passed(&l, &r, "lib1", Some("bob"), 5), 3, "another user");
    assert_eq!(
        passed(&l, &r, "lib2", Some("alice"), 5),
        3,
        "another library"
    );
    // Tokens without a user share one bucket per library.
    assert_eq!(passed(&l, &r, "lib1", None, 5), 3);
    assert_eq!(passed(&l, &r, "lib1", None, 5), 0);
}

#[test]
fn library_limit_is_shared_by_its_users() {
    let r = rules("[rate_limits]\nlibrary = { rate = 1, per = \"1h\", burst = 4 }");
    let l = limiter();
    assert_eq!(passed(&l, &r, "lib1", Some("alice"), 3), 3);
    assert_eq!(passed(&l, &r, "lib1", Some("bob"), 3), 1);
    assert_eq!(passed(&l, &r, "lib2", Some("bob"), 3), 3);
}

#[test]
fn a_request_refused_by_the_library_limit_gives_its_user_place_back() {
    let r = rules(
        "[rate_limits]\nlibrary = { rate = 1, per = \"1h\", burst = 2 }\n\
         user = { rate = 1, per = \"1h\", burst = 3 }",
    );
    let l = limiter();
    assert_eq!(passed(&l, &r, "lib1", Some("bob"), 2), 2);
    // alice is refused by the library limit: her own bucket stays full.
    assert_eq!(passed(&l, &r, "lib1", Some("alice"), 5), 0);
    let r2 = rules("[rate_limits]\nuser = { rate = 1, per = \"1h\", burst = 3 }");
    assert_eq!(passed(&l, &r2, "lib1", Some("alice"), 5), 3);
}

#[test]
fn library_overrides_replace_the_global_limit_of_their_kind() {
    let r = rules(
        "[rate_limits]\nuser = { rate = 1, per = \"1h\", burst = 2 }\n\
         library = { rate = 1, per = \"1h\", burst = 100 }\n\
         [[libraries]]\nid = \"big\"\nrate_limits = { user = { rate = 1, per = \"1h\", burst = 5 } }\n\
         [[libraries]]\nid = \"small\"\nrate_limits = { library = { rate = 1, per = \"1h\", burst = 1 } }\n\
         [[libraries]]\nid = \"plain\"",
    );
    let l = limiter();
    assert_eq!(passed(&l, &r, "big", Some("u"), 9), 5);
    assert_eq!(passed(&l, &r, "small", Some("u"), 9), 1, "library override");
    assert_eq!(
        passed(&l, &r, "small", Some("v"), 9),
        0,
        "its library is spent"
    );
    assert_eq!(passed(&l, &r, "plain", Some("u"), 9), 2, "the global limit");
    assert_eq!(passed(&l, &r, "unlisted", Some("u"), 9), 2);
}

#[test]
fn headers_name_each_policy_and_the_429_says_when() {
    let r = rules(
        "[rate_limits]\nlibrary = { rate = 100, per = \"1s\", burst = 100 }\n\
         user = { rate = 1, per = \"1s\", burst = 2 }",
    );
    let l = limiter();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut h = None;
    rt.block_on(l.check(&r, "lib1", Some("u"), &mut h)).unwrap();
    let h = h.expect("headers on an allowed request");
    assert_eq!(h.policy, "\"user\";q=2;w=2, \"library\";q=100;w=1");
    assert_eq!(h.state, "\"user\";r=1;t=1, \"library\";r=99;t=1");
    rt.block_on(l.check(&r, "lib1", Some("u"), &mut None))
        .unwrap();
    let mut h = None;
    let err = rt
        .block_on(l.check(&r, "lib1", Some("u"), &mut h))
        .unwrap_err();
    assert!(matches!(
        err,
        GatewayError::RateLimitExceeded {
            limit: LimitKind::User,
            retry_after_secs: 1
        }
    ));
    assert_eq!(h.unwrap().state, "\"user\";r=0;t=1");
}

#[test]
fn no_limits_no_headers() {
    let r = rules("");
    let l = limiter();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut h = None;
    rt.block_on(l.check(&r, "lib1", Some("u"), &mut h)).unwrap();
    assert!(h.is_none());
    assert_eq!(l.memory_keys(), 0, "nothing stored when nothing is limited");
}

#[test]
fn auth_failures_exhaust_an_address_before_any_verification() {
    let r = rules("[rate_limits]\nauth_failures = { rate = 1, per = \"1h\", burst = 3 }");
    let l = limiter();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let bad = addr("192.0.2.1:1000");
    let fail = || {
        Err::<(), _>(GatewayError::InvalidAccessToken(
            crate::error::AuthFailure::BadSignature,
        ))
    };
    for _ in 0..3 {
        l.check_auth_failures(&r, bad, &mut None).unwrap();
        let _ = rt.block_on(l.after_auth(&r, bad, fail()));
    }
    let mut h = None;
    let err = l.check_auth_failures(&r, bad, &mut h).unwrap_err();
    assert!(matches!(
        err,
        GatewayError::RateLimitExceeded {
            limit: LimitKind::AuthFailures,
            ..
        }
    ));
    let h = h.unwrap();
    assert_eq!(h.policy, "\"auth_failures\";q=3;w=10800");
    // The same host on another port is the same client; another host is not.
    assert!(
        l.check_auth_failures(&r, addr("192.0.2.1:2000"), &mut None)
            .is_err()
    );
    assert!(
        l.check_auth_failures(&r, addr("192.0.2.2:1000"), &mut None)
            .is_ok()
    );
    // Successes and other refusals count nothing.
    let other = addr("192.0.2.3:1");
    for _ in 0..10 {
        let _ = rt.block_on(l.after_auth(&r, other, Ok::<(), GatewayError>(())));
        let _ = rt.block_on(l.after_auth(&r, other, Err::<(), _>(GatewayError::NoPermission)));
    }
    assert!(l.check_auth_failures(&r, other, &mut None).is_ok());
    let _ = rt.block_on(l.after_auth(&r, other, Err::<(), _>(GatewayError::EmptyAccessToken)));
}

#[test]
fn ipv6_clients_are_limited_by_their_64() {
    let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
    let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
    let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
    assert_eq!(normalize(a), normalize(b));
    assert_ne!(normalize(a), normalize(c));
    let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
    assert_eq!(normalize(mapped), "192.0.2.1".parse::<IpAddr>().unwrap());
}

#[test]
fn a_caller_cycling_user_ids_does_not_grow_memory_past_the_cap() {
    let r = rules("[rate_limits]\nuser = { rate = 1, per = \"1h\", burst = 1 }");
    let l = limiter();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    for i in 0..(MAX_KEYS + 20_000) {
        let user = format!("u{i}");
        rt.block_on(l.check(&r, "lib1", Some(&user), &mut None))
            .unwrap();
    }
    assert!(l.memory_keys() <= MAX_KEYS, "{} keys", l.memory_keys());
}
