//! The request body, between route and auth (it is request syntax, SPEC §3): read
//! within `server.max_body_bytes` and `server.header_read_timeout`, then, for the
//! rows that take JSON, checked strictly (one object or array, no repeated key, so
//! that SMH cannot read a space the gateway did not see), used to tell flag-less
//! PUTs apart by their keys, and searched for the spaces it names. The bytes are
//! forwarded as received; the gateway never re-serialises a body.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{Map, Value};

use crate::config::ServerConfig;
use crate::error::GatewayError;
use crate::proxy::json::{self, JsonError};
use crate::proxy::policy::NamedSpace;
use crate::proxy::route::Route;
use crate::proxy::routes::{BodyPolicy, SpaceField};
use crate::smh::is_valid_id;

/// Reads a request body, refusing one over `server.max_body_bytes` (chunked ones
/// included) and one that does not arrive within `server.header_read_timeout`: a
/// client trickling a body must not hold a request slot forever. A client that goes
/// away mid-body is `ClientClosed` (499), not a bad request.
pub async fn read(body: Incoming, server: &ServerConfig) -> Result<Bytes, GatewayError> {
    use hyper::body::Body as _;
    // The common case (SDKs send no body): no timer, no collecting.
    if body.is_end_stream() {
        return Ok(Bytes::new());
    }
    let read = Limited::new(body, server.max_body_bytes).collect();
    match tokio::time::timeout(server.header_read_timeout, read).await {
        Err(_) => Err(GatewayError::ReadRequestTimeout),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            Err(GatewayError::RequestEntityTooLarge)
        }
        Ok(Err(_)) => Err(GatewayError::ClientClosed),
    }
}

/// What the body told: the row it selects among flag-less siblings, and the spaces
/// it names.
#[derive(Debug)]
pub struct Inspected {
    pub route: Arc<Route>,
    pub named_spaces: Vec<NamedSpace>,
}

fn invalid(e: JsonError) -> GatewayError {
    GatewayError::ParamInvalid(match e {
        JsonError::DuplicateKey => "the JSON body repeats a key",
        JsonError::TooDeep => "the JSON body is nested too deeply",
        JsonError::NotObject => "the JSON body must be an object",
        JsonError::Syntax => "the JSON body is not valid JSON",
    })
}

/// Checks `body` for `route` (and picks among `dispatch`, its siblings told apart by
/// body keys).
pub fn inspect(
    route: Arc<Route>,
    dispatch: &[Arc<Route>],
    body: &[u8],
) -> Result<Inspected, GatewayError> {
    // A JSON object body is parsed once, for the dispatch and the spaces alike.
    let mut object = None;
    let route = if dispatch.is_empty() {
        route
    } else {
        let parsed = object.insert(json::body_object(body).map_err(invalid)?);
        let object = &*parsed;
        let mut picked: Option<&Arc<Route>> = None;
        for sibling in dispatch {
            let key = sibling.body_key.as_deref().unwrap_or_default();
            if let Some(v) = object.get(key) {
                // `{"copyFrom": null}` must not be a copy here and an upload to a
                // server that takes an empty value as absent.
                if v.as_str().is_none_or(|s| s.is_empty()) {
                    return Err(GatewayError::ParamInvalid(
                        "copyFrom, from and linkTo must be non-empty strings",
                    ));
                }
                if picked.is_some() {
                    return Err(GatewayError::ParamInvalid(
                        "the JSON body holds keys of two operations (copyFrom, from, linkTo)",
                    ));
                }
                picked = Some(sibling);
            }
        }
        picked.cloned().unwrap_or(route)
    };
    let mut known: Vec<&str> = route.spaces.iter().map(|f| f.name()).collect();
    known.extend(dispatch.iter().filter_map(|r| r.body_key.as_deref()));
    known.extend(route.body_key.as_deref());
    let named_spaces = match route.body {
        BodyPolicy::None => Vec::new(),
        BodyPolicy::Json => {
            let object = match object {
                Some(o) => o,
                None => json::body_object(body).map_err(invalid)?,
            };
            check_key_case(&object, &known)?;
            spaces_of_object(&route.spaces, &object)?
        }
        BodyPolicy::JsonArray => {
            if is_blank(body) {
                Vec::new()
            } else {
                let value = json::parse_strict(body).map_err(invalid)?;
                let Value::Array(items) = value else {
                    return Err(GatewayError::ParamInvalid("the JSON body must be an array"));
                };
                let mut out = Vec::new();
                for item in &items {
                    if let Value::Object(o) = item {
                        check_key_case(o, &known)?;
                    }
                }
                for field in &route.spaces {
                    if let SpaceField::Items(name) = field {
                        for item in &items {
                            if let Some(s) = item.get(name) {
                                out.push(named(s, false)?);
                            }
                        }
                    }
                }
                out
            }
        }
    };
    Ok(Inspected {
        route,
        named_spaces,
    })
}

/// A key that equals one the gateway reads, but for case (`CopyFromSpaceId`): a
/// parser that ignores case would act on what the gateway did not check.
fn check_key_case(object: &Map<String, Value>, known: &[&str]) -> Result<(), GatewayError> {
    for key in object.keys() {
        if known
            .iter()
            .any(|k| k.eq_ignore_ascii_case(key) && *k != key.as_str())
        {
            return Err(GatewayError::ParamInvalid(
                "a JSON body key differs from one the gateway reads only by case",
            ));
        }
    }
    Ok(())
}

fn is_blank(body: &[u8]) -> bool {
    body.iter().all(u8::is_ascii_whitespace)
}

fn named(value: &Value, target: bool) -> Result<NamedSpace, GatewayError> {
    match value {
        Value::String(s) if is_valid_id(s) => Ok(NamedSpace {
            space: s.clone(),
            target,
        }),
        _ => Err(GatewayError::ParamInvalid(
            "a space id in the body is not a valid id",
        )),
    }
}

fn spaces_of_object(
    fields: &[SpaceField],
    object: &Map<String, Value>,
) -> Result<Vec<NamedSpace>, GatewayError> {
    let mut out = Vec::new();
    for field in fields {
        match *field {
            SpaceField::Body(name) => {
                if let Some(v) = object.get(name) {
                    out.push(named(v, false)?);
                }
            }
            SpaceField::Target(name) => {
                if let Some(v) = object.get(name) {
                    out.push(named(v, true)?);
                }
            }
            SpaceField::BodyList(name) => match object.get(name) {
                None => {}
                Some(Value::Array(items)) => {
                    for v in items {
                        out.push(named(v, false)?);
                    }
                }
                Some(_) => {
                    return Err(GatewayError::ParamInvalid(
                        "a list of space ids in the body is not an array",
                    ));
                }
            },
            SpaceField::Query(_) | SpaceField::Items(_) => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::route::Router;

    fn route(name: &str) -> Arc<Route> {
        let router = Router::new(&[]).unwrap();
        router
            .routes()
            .iter()
            .find(|r| &*r.name == name)
            .unwrap()
            .clone()
    }

    fn siblings() -> Vec<Arc<Route>> {
        ["copy_file", "move_file", "create_symlink"]
            .map(route)
            .to_vec()
    }

    fn picked(body: &str) -> Result<String, String> {
        inspect(route("simple_upload_file"), &siblings(), body.as_bytes())
            .map(|i| i.route.name.to_string())
            .map_err(|e| e.code().to_string())
    }

    #[test]
    fn flagless_puts_are_told_apart_by_body_keys() {
        assert_eq!(picked("").unwrap(), "simple_upload_file");
        assert_eq!(picked("{}").unwrap(), "simple_upload_file");
        assert_eq!(picked(r#"{"size":"3"}"#).unwrap(), "simple_upload_file");
        assert_eq!(picked(r#"{"copyFrom":"a"}"#).unwrap(), "copy_file");
        assert_eq!(picked(r#"{"from":"a"}"#).unwrap(), "move_file");
        assert_eq!(picked(r#"{"linkTo":"a"}"#).unwrap(), "create_symlink");
    }

    #[test]
    fn ambiguous_or_malformed_bodies_are_refused() {
        for bad in [
            r#"{"copyFrom":"a","from":"b"}"#,
            r#"{"copyFrom":"a","copyFrom":"b"}"#,
            r#"{"copyFrom":null}"#,
            r#"{"from":""}"#,
            r#"{"linkTo":7}"#,
            r#"{"CopyFrom":"a"}"#,
            r#"{"size":1,"size":2}"#,
            "[1]",
            "{",
            "nul",
        ] {
            assert_eq!(picked(bad), Err("ParamInvalid".into()), "{bad}");
        }
    }

    #[test]
    fn spaces_named_in_bodies_are_collected() {
        let i = inspect(
            route("copy_file"),
            &[],
            br#"{"copyFrom":"a","copyFromSpaceId":"s9"}"#,
        )
        .unwrap();
        assert_eq!(
            i.named_spaces,
            [NamedSpace {
                space: "s9".into(),
                target: false
            }]
        );
        let i = inspect(
            route("batch_move"),
            &[],
            br#"[{"from":"a","to":"b","fromSpaceId":"s1"},{"from":"c","to":"d"},{"from":"e","to":"f","fromSpaceId":"s2"}]"#,
        )
        .unwrap();
        let spaces: Vec<_> = i.named_spaces.iter().map(|n| n.space.as_str()).collect();
        assert_eq!(spaces, ["s1", "s2"]);
        let i = inspect(
            route("uncompress_file"),
            &[],
            br#"{"targetPath":"/","targetSpaceId":"s3"}"#,
        )
        .unwrap();
        assert_eq!(
            i.named_spaces,
            [NamedSpace {
                space: "s3".into(),
                target: true
            }]
        );
        let i = inspect(
            route("create_quota"),
            &[],
            br#"{"spaces":["a","b"],"removeWhenExceed":true,"removeAfterDays":1}"#,
        )
        .unwrap();
        assert_eq!(i.named_spaces.len(), 2);
    }

    #[test]
    fn bad_space_values_are_refused() {
        for bad in [
            r#"{"copyFrom":"a","copyFromSpaceId":7}"#,
            r#"{"copyFrom":"a","copyFromSpaceId":"../x"}"#,
            r#"{"copyFrom":"a","copyFromSpaceId":""}"#,
        ] {
            assert!(
                inspect(route("copy_file"), &[], bad.as_bytes()).is_err(),
                "{bad}"
            );
        }
        assert!(inspect(route("create_quota"), &[], br#"{"spaces":"a"}"#).is_err());
        assert!(
            inspect(
                route("move_file"),
                &[],
                br#"{"from":"a","fromSpaceId":"s1","FromSpaceId":"s2"}"#
            )
            .is_err()
        );
        assert!(
            inspect(
                route("batch_copy"),
                &[],
                br#"[{"copyFrom":"a","to":"b","CopyFromSpaceId":"s9"}]"#
            )
            .is_err()
        );
        assert!(inspect(route("batch_copy"), &[], br#"{"copyFrom":"a"}"#).is_err());
    }
}
