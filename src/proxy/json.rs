//! Strict JSON for the request bodies the gateway reads to decide (SPEC §11). The
//! gateway checks a body and then forwards it byte for byte, so it must read the
//! body exactly as any upstream parser would: a repeated key is refused, because
//! parsers disagree about which copy wins (`{"library_id":"lib2","library_id":
//! "lib1"}` could pass the check as one library and act upstream as the other).
//! Deep nesting is refused early so that a small body cannot cost a deep stack.

use std::cell::Cell;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// The most arrays and objects open at once. Below serde_json's own limit (128), so
/// that this check, not serde_json's, decides.
pub const MAX_DEPTH: usize = 64;

/// Why a body was refused. The phrases are fixed: nothing of the body is echoed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonError {
    /// Not JSON, or JSON followed by more than whitespace.
    Syntax,
    /// A key repeated in one object, at any depth, after unescaping.
    DuplicateKey,
    /// More than [`MAX_DEPTH`] arrays and objects open at once.
    TooDeep,
    /// JSON, but not the one object the operation expects.
    NotObject,
}

impl JsonError {
    /// The fixed phrase, for `GatewayError::ParamInvalid`.
    pub const fn as_str(self) -> &'static str {
        match self {
            JsonError::Syntax => "request body is not valid JSON",
            JsonError::DuplicateKey => "request body repeats a key in a JSON object",
            JsonError::TooDeep => "request body nests JSON too deeply",
            JsonError::NotObject => "request body is not a JSON object",
        }
    }
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for JsonError {}

/// One JSON value, parsed at any depth with this module's rules: no repeated key,
/// at most [`MAX_DEPTH`] levels (counted from where this value starts). Used through
/// another deserializer, a refusal is that deserializer's error with the fixed
/// phrase as message; [`parse_strict`] also says which rule was broken.
#[derive(Debug, Clone, PartialEq)]
pub struct StrictValue(pub Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let refusal = Cell::new(None);
        Strict::top(&refusal).deserialize(deserializer)
    }
}

/// Parses one JSON value, whole (only whitespace may follow), with the rules of
/// [`StrictValue`].
pub fn parse_strict(bytes: &[u8]) -> Result<Value, JsonError> {
    let refusal = Cell::new(None);
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    Strict::top(&refusal)
        .deserialize(&mut deserializer)
        .and_then(|value| deserializer.end().map(|()| value.0))
        // serde_json's errors carry no kind we could match on: a refusal of ours is
        // recorded beside it, anything else is syntax.
        .map_err(|_| refusal.get().unwrap_or(JsonError::Syntax))
}

/// A body that must be one JSON object; empty or all whitespace is `{}`, as the
/// SDKs send it.
pub fn body_object(bytes: &[u8]) -> Result<Map<String, Value>, JsonError> {
    if bytes
        .iter()
        .all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
    {
        return Ok(Map::new());
    }
    match parse_strict(bytes)? {
        Value::Object(object) => Ok(object),
        _ => Err(JsonError::NotObject),
    }
}

/// The seed and visitor of one value: how many arrays and objects enclose it, and
/// where to record a refusal for [`parse_strict`].
#[derive(Clone, Copy)]
struct Strict<'a> {
    depth: usize,
    refusal: &'a Cell<Option<JsonError>>,
}

impl<'a> Strict<'a> {
    fn top(refusal: &'a Cell<Option<JsonError>>) -> Self {
        Strict { depth: 0, refusal }
    }

    /// The seed for a member of the array or object this value opens, or a refusal
    /// when that would be one level too many. Checked on opening, before any member
    /// is read, so the parser never goes deeper than [`MAX_DEPTH`] + 1.
    fn member<E: de::Error>(self) -> Result<Self, E> {
        let depth = self.depth + 1;
        if depth > MAX_DEPTH {
            return Err(self.refuse(JsonError::TooDeep));
        }
        Ok(Strict { depth, ..self })
    }

    fn refuse<E: de::Error>(self, why: JsonError) -> E {
        self.refusal.set(Some(why));
        E::custom(why)
    }
}

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = StrictValue;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<StrictValue, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = StrictValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::Bool(v)))
    }

    fn visit_i64<E>(self, v: i64) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::Number(v.into())))
    }

    fn visit_u64<E>(self, v: u64) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::Number(v.into())))
    }

    fn visit_f64<E>(self, v: f64) -> Result<StrictValue, E> {
        // As serde_json's own `Value` does; JSON text cannot spell a non-finite
        // number, so this arm is for other deserializers.
        Ok(StrictValue(
            Number::from_f64(v).map_or(Value::Null, Value::Number),
        ))
    }

    fn visit_str<E>(self, v: &str) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::String(v.to_owned())))
    }

    fn visit_string<E>(self, v: String) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::String(v)))
    }

    fn visit_unit<E>(self) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::Null))
    }

    fn visit_none<E>(self) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::Null))
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<StrictValue, D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<StrictValue, A::Error> {
        let member = self.member()?;
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(StrictValue(item)) = seq.next_element_seed(member)? {
            items.push(item);
        }
        Ok(StrictValue(Value::Array(items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StrictValue, A::Error> {
        let member = self.member()?;
        let mut object = Map::new();
        // Keys arrive unescaped (`"\u0061"` is `"a"`), so spelling a key twice in
        // different ways is caught too. Refused at the key, before its value is read.
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(self.refuse(JsonError::DuplicateKey));
            }
            let StrictValue(value) = map.next_value_seed(member)?;
            object.insert(key, value);
        }
        Ok(StrictValue(Value::Object(object)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested_arrays(depth: usize) -> String {
        format!("{}{}", "[".repeat(depth), "]".repeat(depth))
    }

    fn nested_objects(depth: usize) -> String {
        format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth))
    }

    #[test]
    fn a_repeated_top_level_key_is_refused() {
        assert_eq!(
            parse_strict(br#"{"a":1,"a":1}"#),
            Err(JsonError::DuplicateKey)
        );
        assert_eq!(
            body_object(br#"{"library_id":"lib2","library_id":"lib1"}"#),
            Err(JsonError::DuplicateKey)
        );
    }

    #[test]
    fn a_repeated_nested_key_is_refused() {
        assert_eq!(
            parse_strict(br#"{"a":{"b":1,"b":2}}"#),
            Err(JsonError::DuplicateKey)
        );
        assert_eq!(
            body_object(br#"{"a":{"b":1,"b":2}}"#),
            Err(JsonError::DuplicateKey)
        );
    }

    #[test]
    fn a_repeated_key_in_an_object_inside_an_array_is_refused() {
        assert_eq!(
            parse_strict(br#"[{"a":1},{"b":1,"c":2,"b":3}]"#),
            Err(JsonError::DuplicateKey)
        );
        assert_eq!(
            body_object(br#"{"items":[[{"x":1,"x":1}]]}"#),
            Err(JsonError::DuplicateKey)
        );
    }

    #[test]
    fn a_key_repeated_through_an_escape_is_refused() {
        assert_eq!(
            parse_strict(br#"{"a":1,"\u0061":2}"#),
            Err(JsonError::DuplicateKey)
        );
        assert_eq!(
            parse_strict(br#"{"library_id":1,"library\u005fid":2}"#),
            Err(JsonError::DuplicateKey)
        );
    }

    #[test]
    fn the_same_key_in_sibling_objects_is_fine() {
        let v = parse_strict(br#"[{"a":1},{"a":2}]"#).unwrap();
        assert_eq!(v, serde_json::json!([{"a": 1}, {"a": 2}]));
        let v = parse_strict(br#"{"a":{"a":{"a":1}}}"#).unwrap();
        assert_eq!(v, serde_json::json!({"a": {"a": {"a": 1}}}));
    }

    #[test]
    fn an_empty_body_is_an_empty_object() {
        assert_eq!(body_object(b""), Ok(Map::new()));
    }

    #[test]
    fn a_whitespace_only_body_is_an_empty_object() {
        assert_eq!(body_object(b" \t\r\n "), Ok(Map::new()));
    }

    #[test]
    fn a_form_feed_is_not_json_whitespace() {
        assert_eq!(body_object(b"\x0c"), Err(JsonError::Syntax));
    }

    #[test]
    fn an_object_body_keeps_its_keys_and_values() {
        let object =
            body_object(br#" {"copyFrom":"/a","n":-1.5,"big":18446744073709551615} "#).unwrap();
        assert_eq!(object["copyFrom"], "/a");
        assert_eq!(object["n"], -1.5);
        assert_eq!(object["big"], u64::MAX);
        assert_eq!(object.len(), 3);
    }

    #[test]
    fn an_array_body_parses_with_parse_strict() {
        let v = parse_strict(br#"[{"library_id":"lib1"},2,"x",null,true]"#).unwrap();
        assert_eq!(
            v,
            serde_json::json!([{"library_id": "lib1"}, 2, "x", null, true])
        );
    }

    #[test]
    fn trailing_garbage_is_refused() {
        assert_eq!(parse_strict(br#"{"a":1}x"#), Err(JsonError::Syntax));
        assert_eq!(parse_strict(br#"{"a":1}{"a":2}"#), Err(JsonError::Syntax));
        assert_eq!(body_object(br#"{"a":1} ,"#), Err(JsonError::Syntax));
        assert_eq!(parse_strict(b"[1] \n"), Ok(serde_json::json!([1])));
    }

    #[test]
    fn malformed_json_is_a_syntax_error() {
        for bad in [
            &b""[..],
            b"{",
            b"{'a':1}",
            b"{\"a\":1,}",
            b"[1,]",
            b"NaN",
            b"\"\\ud800\"",
            b"\"\xff\"",
            b"\xef\xbb\xbf{}",
            b"1e400",
        ] {
            assert_eq!(parse_strict(bad), Err(JsonError::Syntax), "{bad:?}");
        }
    }

    #[test]
    fn nesting_of_depth_65_is_refused() {
        assert_eq!(
            parse_strict(nested_arrays(65).as_bytes()),
            Err(JsonError::TooDeep)
        );
        assert_eq!(
            body_object(nested_objects(65).as_bytes()),
            Err(JsonError::TooDeep)
        );
    }

    #[test]
    fn nesting_far_past_serde_jsons_own_limit_is_still_too_deep() {
        assert_eq!(
            parse_strict(nested_arrays(10_000).as_bytes()),
            Err(JsonError::TooDeep)
        );
        // Unclosed: refused on opening, before the missing ends are noticed.
        assert_eq!(
            parse_strict("[".repeat(200).as_bytes()),
            Err(JsonError::TooDeep)
        );
    }

    #[test]
    fn nesting_of_depth_10_and_64_is_fine() {
        assert!(parse_strict(nested_arrays(10).as_bytes()).is_ok());
        assert!(body_object(nested_objects(10).as_bytes()).is_ok());
        assert!(parse_strict(nested_arrays(64).as_bytes()).is_ok());
        assert!(body_object(nested_objects(64).as_bytes()).is_ok());
    }

    #[test]
    fn a_body_that_is_not_an_object_is_refused() {
        for other in [&b"[]"[..], b"[{}]", b"1", b"\"{}\"", b"null", b"true"] {
            assert_eq!(body_object(other), Err(JsonError::NotObject), "{other:?}");
        }
    }

    #[test]
    fn errors_are_fixed_phrases() {
        let err = parse_strict(br#"{"secret-token":1,"secret-token":2}"#).unwrap_err();
        assert!(!err.to_string().contains("secret"));
        for e in [
            JsonError::Syntax,
            JsonError::DuplicateKey,
            JsonError::TooDeep,
            JsonError::NotObject,
        ] {
            assert_eq!(e.to_string(), e.as_str());
        }
    }

    #[test]
    fn strict_value_refuses_a_repeated_key_through_serde_json_from_slice() {
        let err = serde_json::from_slice::<StrictValue>(br#"{"a":1,"a":2}"#).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(JsonError::DuplicateKey.as_str()),
            "{err}"
        );
        let StrictValue(v) = serde_json::from_slice(br#"{"a":[1]}"#).unwrap();
        assert_eq!(v, serde_json::json!({"a": [1]}));
    }
}
