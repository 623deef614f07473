//! SPEC §4 end to end: what traffic_limit the upstream receives.

mod common;

use common::*;

fn received_tl(gw: &TestGateway) -> Option<String> {
    last_query(gw)
        .split('&')
        .find_map(|p| p.strip_prefix("traffic_limit=").map(str::to_string))
}

#[tokio::test]
async fn values_are_clamped_into_the_global_range() {
    let gw = start().await;
    let tok = token();
    for (sent, want) in [
        ("0", "102400"),
        ("50000", "102400"),
        ("102400", "102400"),
        ("500000", "500000"),
        ("000500000", "500000"),
        ("104857600", "104857600"),
        ("104857601", "104857600"),
        ("999999999999", "104857600"),
        ("99999999999999999999999999999999", "104857600"),
    ] {
        let r = gw
            .renew(&format!("access_token={tok}&traffic_limit={sent}"))
            .await;
        assert_eq!(r.status, 200, "{sent}: {}", r.text());
        assert_eq!(received_tl(&gw).as_deref(), Some(want), "{sent}");
        // The mock echoes what it received, as SMH puts it in the COS headers.
        assert_eq!(r.json()["headers"]["x-cos-traffic-limit"].to_string(), want);
    }
}

#[tokio::test]
async fn malformed_values_are_a_400_and_never_forwarded() {
    let gw = start().await;
    let tok = token();
    for bad in [
        "",
        "-1",
        "%2B1",
        "1.5",
        "1e6",
        "%201",
        "1%20",
        "0x10",
        "abc",
        "%EF%BC%91",
    ] {
        gw.renew(&format!("access_token={tok}&traffic_limit={bad}"))
            .await
            .assert_error(400, "ParamInvalid");
    }
    assert_eq!(gw.mock.count(), 0);
}

#[tokio::test]
async fn absent_stays_absent_without_a_default() {
    let gw = start().await;
    let tok = token();
    assert_eq!(gw.renew(&format!("access_token={tok}")).await.status, 200);
    assert_eq!(received_tl(&gw), None);
}

#[tokio::test]
async fn absent_gets_the_global_default() {
    let gw = start_with(Setup {
        rest: "[traffic_limit]\ndefault = 2097152\n".into(),
        ..Setup::default()
    })
    .await;
    assert_eq!(
        gw.renew(&format!("access_token={}", token())).await.status,
        200
    );
    assert_eq!(received_tl(&gw).as_deref(), Some("2097152"));
}

#[tokio::test]
async fn library_tiers_narrow_the_range_and_set_their_default() {
    let gw = start_with(Setup {
        rest: r#"
[traffic_limit]
min = 102400
max = 104857600
default = 10485760

[[libraries]]
id = "lib1"
traffic_limit = { min = 204800, max = 1048576, default = 524288 }

[[libraries]]
id = "lib2"
"#
        .into(),
        ..Setup::default()
    })
    .await;
    let tok = token();
    for (sent, want) in [
        ("102400", "204800"),
        ("700000", "700000"),
        ("99999999", "1048576"),
    ] {
        assert_eq!(
            gw.renew(&format!("access_token={tok}&traffic_limit={sent}"))
                .await
                .status,
            200
        );
        assert_eq!(received_tl(&gw).as_deref(), Some(want), "{sent}");
    }
    assert_eq!(gw.renew(&format!("access_token={tok}")).await.status, 200);
    assert_eq!(received_tl(&gw).as_deref(), Some("524288"));

    // lib2 is listed without a tier: the global range and default apply.
    let tok2 = token_with(serde_json::json!({ "library_id": "lib2" }));
    assert_eq!(
        gw.post(&format!(
            "/api/v1/file/lib2/-/ck?renew&access_token={tok2}&traffic_limit=99999999"
        ))
        .await
        .status,
        200
    );
    assert_eq!(received_tl(&gw).as_deref(), Some("99999999"));
    assert_eq!(
        gw.post(&format!("/api/v1/file/lib2/-/ck?renew&access_token={tok2}"))
            .await
            .status,
        200
    );
    assert_eq!(received_tl(&gw).as_deref(), Some("10485760"));
}
