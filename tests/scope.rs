//! SPEC §3 end to end: library, tenant mode, space scope, permission and user_id
//! rules, and the order in which they are checked.

mod common;

use common::*;
use serde_json::json;

fn libraries() -> Setup {
    Setup {
        rest: r#"
[[libraries]]
id = "lib1"

[[libraries]]
id = "multi"
multi_tenant = true
"#
        .into(),
        ..Setup::default()
    }
}

#[tokio::test]
async fn token_for_another_library_is_refused() {
    let gw = start().await;
    let tok = token_with(json!({ "library_id": "lib2" }));
    gw.renew(&format!("access_token={tok}"))
        .await
        .assert_error(403, "AccessTokenNotMatchLibrary");
    assert_eq!(gw.mock.count(), 0);
}

#[tokio::test]
async fn any_library_is_served_when_none_are_listed() {
    let gw = start().await;
    let tok = token_with(json!({ "library_id": "whatever" }));
    let r = gw
        .post(&format!(
            "/api/v1/file/whatever/-/ck?renew&access_token={tok}"
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test]
async fn unlisted_library_is_not_found_when_libraries_are_listed() {
    let gw = start_with(libraries()).await;
    let tok = token_with(json!({ "library_id": "lib9" }));
    gw.post(&format!("/api/v1/file/lib9/-/ck?renew&access_token={tok}"))
        .await
        .assert_error(404, "LibraryNotFound");
    assert_eq!(gw.mock.count(), 0);
}

#[tokio::test]
async fn single_tenant_library_refuses_a_real_space() {
    let gw = start_with(libraries()).await;
    let tok = token_with(json!({ "space_id": "s1" }));
    gw.post(&format!("/api/v1/file/lib1/s1/ck?renew&access_token={tok}"))
        .await
        .assert_error(400, "NotMultiSpaceLibrary");
    assert_eq!(gw.mock.count(), 0);
}

#[tokio::test]
async fn multi_tenant_library_refuses_dash() {
    let gw = start_with(libraries()).await;
    let tok = token_with(json!({ "library_id": "multi", "space_id": "s1" }));
    gw.post(&format!("/api/v1/file/multi/-/ck?renew&access_token={tok}"))
        .await
        .assert_error(400, "EmptySpaceId");
    let ok = gw
        .post(&format!(
            "/api/v1/file/multi/s1/ck?renew&access_token={tok}"
        ))
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(gw.mock.last().unwrap().path, "/api/v1/file/multi/s1/ck");
}

#[tokio::test]
async fn space_claim_bounds_the_space() {
    let gw = start_with(libraries()).await;
    for (claim, space, ok) in [
        (json!("s1"), "s1", true),
        (json!(["s1", "s2"]), "s2", true),
        (json!("s1,s2"), "s2", true),
        (json!("s1"), "s2", false),
        (json!(["s1"]), "s3", false),
    ] {
        let tok = token_with(json!({ "library_id": "multi", "space_id": claim }));
        let r = gw
            .post(&format!(
                "/api/v1/file/multi/{space}/ck?renew&access_token={tok}"
            ))
            .await;
        if ok {
            assert_eq!(r.status, 200, "{claim} {space}: {}", r.text());
        } else {
            r.assert_error(403, "AccessTokenNotMatchSpace");
        }
    }
}

#[tokio::test]
async fn token_without_space_claim_may_use_only_dash() {
    let gw = start().await;
    let tok = token();
    assert_eq!(gw.renew(&format!("access_token={tok}")).await.status, 200);
    gw.post(&format!("/api/v1/file/lib1/s1/ck?renew&access_token={tok}"))
        .await
        .assert_error(403, "AccessTokenNotMatchSpace");
}

#[tokio::test]
async fn admin_is_library_wide() {
    let gw = start_with(libraries()).await;
    let tok =
        token_with(json!({ "library_id": "multi", "permissions": ["admin"], "space_id": "s1" }));
    let r = gw
        .post(&format!(
            "/api/v1/file/multi/s9/ck?renew&access_token={tok}"
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test]
async fn every_renew_permission_is_enough_and_others_are_not() {
    let gw = start().await;
    for p in [
        "admin",
        "space_admin",
        "upload_file",
        "upload_file_force",
        "begin_upload",
        "begin_upload_force",
    ] {
        let tok = token_with(json!({ "permissions": ["view", p] }));
        assert_eq!(
            gw.renew(&format!("access_token={tok}")).await.status,
            200,
            "{p}"
        );
    }
    let n = gw.mock.count();
    for perms in [
        json!(["view"]),
        json!(["upload_file_x"]),
        json!([]),
        json!(null),
        json!("confirm_upload delete_file"),
    ] {
        let tok = token_with(json!({ "permissions": perms }));
        gw.renew(&format!("access_token={tok}"))
            .await
            .assert_error(403, "NoPermission");
    }
    assert_eq!(gw.mock.count(), n, "refused requests reached the upstream");
}

#[tokio::test]
async fn permissions_may_be_a_space_or_comma_separated_string() {
    let gw = start().await;
    for perms in ["view upload_file", "view,begin_upload"] {
        let tok = token_with(json!({ "permissions": perms }));
        assert_eq!(
            gw.renew(&format!("access_token={tok}")).await.status,
            200,
            "{perms}"
        );
    }
}

#[tokio::test]
async fn user_id_only_from_an_admin_without_a_user() {
    let gw = start().await;
    let admin = token_with(json!({ "permissions": ["admin"] }));
    let r = gw
        .renew(&format!("access_token={admin}&user_id=alice"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        last_query(&gw),
        format!("renew&access_token={admin}&user_id=alice")
    );

    let admin_with_user = token_with(json!({ "permissions": ["admin"], "sub": "bob" }));
    gw.renew(&format!("access_token={admin_with_user}&user_id=alice"))
        .await
        .assert_error(403, "NoPermission");
    let uploader = token();
    gw.renew(&format!("access_token={uploader}&user_id=alice"))
        .await
        .assert_error(403, "NoPermission");
    assert_eq!(gw.mock.count(), 1);

    let admin_empty_user = token_with(json!({ "permissions": ["admin"], "sub": "" }));
    assert_eq!(
        gw.renew(&format!("access_token={admin_empty_user}&user_id=alice"))
            .await
            .status,
        200
    );
}

/// SPEC §3: route → syntax → token present → token valid → library listed →
/// library match → tenant mode → space scope → permission → user_id.
#[tokio::test]
async fn checks_run_in_spec_order() {
    let gw = start_with(libraries()).await;
    let bad_everything =
        token_with(json!({ "library_id": "other", "permissions": ["view"], "sub": "u" }));
    // syntax beats a missing token
    gw.post("/api/v1/file/lib1/-/ck?renew&traffic_limit=x")
        .await
        .assert_error(400, "ParamInvalid");
    // a missing token beats an unknown library
    gw.post("/api/v1/file/lib9/-/ck?renew")
        .await
        .assert_error(400, "EmptyAccessToken");
    // an invalid token beats an unknown library
    let expired = token_with(json!({ "exp": now() - 3600, "library_id": "lib9" }));
    gw.post(&format!(
        "/api/v1/file/lib9/-/ck?renew&access_token={expired}"
    ))
    .await
    .assert_error(403, "InvalidAccessToken");
    // library listed beats library match
    gw.post(&format!(
        "/api/v1/file/lib9/-/ck?renew&access_token={bad_everything}"
    ))
    .await
    .assert_error(404, "LibraryNotFound");
    // library match beats tenant mode
    gw.post(&format!(
        "/api/v1/file/lib1/s1/ck?renew&access_token={bad_everything}"
    ))
    .await
    .assert_error(403, "AccessTokenNotMatchLibrary");
    // tenant mode beats space scope
    let lib1_viewer = token_with(json!({ "permissions": ["view"], "sub": "u" }));
    gw.post(&format!(
        "/api/v1/file/lib1/s1/ck?renew&access_token={lib1_viewer}"
    ))
    .await
    .assert_error(400, "NotMultiSpaceLibrary");
    // space scope beats permission
    let multi_viewer = token_with(
        json!({ "library_id": "multi", "permissions": ["view"], "space_id": "s1", "sub": "u" }),
    );
    gw.post(&format!(
        "/api/v1/file/multi/s2/ck?renew&access_token={multi_viewer}"
    ))
    .await
    .assert_error(403, "AccessTokenNotMatchSpace");
    // permission beats user_id
    gw.post(&format!(
        "/api/v1/file/multi/s1/ck?renew&user_id=x&access_token={multi_viewer}"
    ))
    .await
    .assert_error(403, "NoPermission");
    // route beats everything
    gw.post("/api/v1/nothing?renew&traffic_limit=x")
        .await
        .assert_error(404, "RouteNotFound");
    assert_eq!(gw.mock.count(), 0);
}
