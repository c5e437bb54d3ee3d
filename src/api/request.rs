//! Request bodies. Strings borrow from the body where they can; `data` is kept as raw JSON.
//!
//! Decoding errors are split the way the contract wants them: a body that is not JSON is a 400,
//! a field of the wrong type is code -1 with the field named (serde_path_to_error finds it).

use super::error::ApiError;
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use std::borrow::Cow;

/// Fields every push route shares.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct PushFields<'a> {
    #[serde(default, borrow)]
    pub send_user_id: Option<Cow<'a, str>>,
    #[serde(default)]
    pub code: Option<i64>,
    #[serde(default, borrow)]
    pub msg: Option<Cow<'a, str>>,
    /// Any JSON value, `null` included, delivered as received.
    #[serde(default, borrow, deserialize_with = "raw_present")]
    pub data: Option<&'a RawValue>,
}

fn raw_present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

// serde's `flatten` buffers its input and cannot lend out `&RawValue`, so each push request
// repeats the shared fields through a hand-written split below instead.
macro_rules! push_request {
    ($name:ident { $($field:ident : $ty:ty => $json:literal),* }) => {
        pub struct $name<'a> {
            $(pub $field: $ty,)*
            pub fields: PushFields<'a>,
        }

        impl<'de: 'a, 'a> Deserialize<'de> for $name<'a> {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                #[derive(Deserialize)]
                struct Raw<'a> {
                    $(#[serde(default, borrow, rename = $json)] $field: $ty,)*
                    #[serde(default, borrow, rename = "sendUserId")]
                    send_user_id: Option<Cow<'a, str>>,
                    #[serde(default)]
                    code: Option<i64>,
                    #[serde(default, borrow)]
                    msg: Option<Cow<'a, str>>,
                    #[serde(default, borrow, deserialize_with = "raw_present")]
                    data: Option<&'a RawValue>,
                }
                let raw = Raw::deserialize(d)?;
                Ok($name {
                    $($field: raw.$field,)*
                    fields: PushFields {
                        send_user_id: raw.send_user_id,
                        code: raw.code,
                        msg: raw.msg,
                        data: raw.data,
                    },
                })
            }
        }
    };
}

push_request!(Push { client_id: Option<Cow<'a, str>> => "clientId" });
push_request!(PushToClients { client_ids: Option<Vec<Cow<'a, str>>> => "clientIds" });
// `excludeClientId` (issue 17): the connection the push leaves out, usually the sender's.
push_request!(SendToGroup {
    group_name: Option<Cow<'a, str>> => "groupName",
    exclude_client_id: Option<Cow<'a, str>> => "excludeClientId"
});
push_request!(SendToUser {
    user_id: Option<Cow<'a, str>> => "userId",
    store: Option<&'a RawValue> => "store",
    exclude_client_id: Option<Cow<'a, str>> => "excludeClientId"
});
push_request!(SendToSystem { exclude_client_id: Option<Cow<'a, str>> => "excludeClientId" });

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Register<'a> {
    #[serde(default, borrow)]
    pub system_id: Option<Cow<'a, str>>,
    /// Issue 7: signs the system's API calls and connect tokens (see `docs/auth.md`).
    #[serde(default, borrow)]
    pub secret: Option<Cow<'a, str>>,
    /// Issue 7: where this system's connection events are POSTed.
    #[serde(default, borrow)]
    pub webhook_url: Option<Cow<'a, str>>,
    /// Issue 15: group history for the system (docs/history.md).
    #[serde(default)]
    pub history: Option<HistoryRequest>,
    /// Issue 17: one connection per userId (docs/api-additions.md).
    #[serde(default)]
    pub single_connection: Option<bool>,
}

/// register's `history`: `{"size": N, "ttlSeconds": T}` (T defaults to HistoryTtl).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryRequest {
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
}

/// A stream position a caller sends back: `{"offset": N, "epoch": "..."}`.
#[derive(Deserialize)]
pub struct Since {
    #[serde(default)]
    pub offset: Option<u64>,
    #[serde(default)]
    pub epoch: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GetGroupHistory<'a> {
    #[serde(default, borrow)]
    pub group_name: Option<Cow<'a, str>>,
    #[serde(default)]
    pub since: Option<Since>,
    #[serde(default)]
    pub limit: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bind<'a> {
    #[serde(default, borrow)]
    pub client_id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub group_name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub user_id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub extend: Option<Cow<'a, str>>,
    /// Issue 15: replay the pushes missed since this position first.
    #[serde(default)]
    pub since: Option<Since>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Unbind<'a> {
    #[serde(default, borrow)]
    pub client_id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub group_name: Option<Cow<'a, str>>,
}

/// The body of a route without fields (`{}`): still a JSON object, as everywhere else; any
/// fields it has are ignored. (A derived empty struct would also take `[]`.)
pub struct NoFields;

impl<'de> Deserialize<'de> for NoFields {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = NoFields;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<NoFields, A::Error> {
                use serde::de::IgnoredAny;
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(NoFields)
            }
        }
        d.deserialize_map(Visitor)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ByGroup<'a> {
    #[serde(default, borrow)]
    pub group_name: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ByClient<'a> {
    #[serde(default, borrow)]
    pub client_id: Option<Cow<'a, str>>,
}

/// Decodes a body, naming the offending field on a type error.
///
/// The success path is plain serde_json; only a body that fails is decoded a second time through
/// serde_path_to_error, which finds the field but doubles the cost of every decode.
pub fn decode<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    if let Ok(value) = serde_json::from_slice(body) {
        return Ok(value);
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data if path == "." => ApiError::Field {
                field: "request body".into(),
                problem: "must be a JSON object".into(),
            },
            serde_json::error::Category::Data => ApiError::Field {
                field: path,
                problem: format!("has the wrong type: {}", strip_position(&inner.to_string())),
            },
            _ => ApiError::BadJson(inner.to_string()),
        }
    })?;
    de.end().map_err(|e| ApiError::BadJson(e.to_string()))?;
    Ok(value)
}

/// serde_json appends " at line L column C"; the field name says more to an API caller.
fn strip_position(msg: &str) -> &str {
    msg.rfind(" at line ").map_or(msg, |i| &msg[..i])
}

/// How deep arrays and objects nest in `json`, JSON text serde_json has already accepted: one
/// pass over the bytes, skipping strings (and the escapes in them), so a `"[[["` inside a string
/// counts for nothing. `data` is kept as raw text, never parsed into a tree, so this is the only
/// place its depth is seen (serde_json's own limit of 128 guards only what it builds itself).
pub fn nesting_depth(json: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &b in json.as_bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// A required string field: present and not empty.
pub fn required<'a>(field: &str, value: Option<Cow<'a, str>>) -> Result<Cow<'a, str>, ApiError> {
    match value {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(ApiError::required(field)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_push_with_raw_data() {
        let p: Push =
            decode(br#"{"clientId":"c","code":3,"msg":"m","data":{"x":[1, 2]}}"#).unwrap();
        assert_eq!(p.client_id.as_deref(), Some("c"));
        assert_eq!(p.fields.code, Some(3));
        assert_eq!(p.fields.data.unwrap().get(), r#"{"x":[1, 2]}"#);
        let p: Push = decode(br#"{"clientId":"c","data":null}"#).unwrap();
        assert_eq!(p.fields.data.unwrap().get(), "null");
        let p: Push = decode(br#"{"clientId":"c"}"#).unwrap();
        assert!(p.fields.data.is_none());
    }

    #[test]
    fn nesting_depth_counts_arrays_and_objects_outside_strings() {
        for (json, depth) in [
            ("1", 0),
            ("\"[[[{{\"", 0),
            ("[]", 1),
            ("{\"a\":[1,{\"b\":[]}]}", 4),
            ("[[],[[]],[]]", 3),
            (r#"["\"[[", "\\", [1]]"#, 2),
            (r#"{"k]}": {"v": "\\\"{"}}"#, 2),
        ] {
            assert_eq!(nesting_depth(json), depth, "{json}");
        }
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(nesting_depth(&deep), 100_000);
    }

    #[test]
    fn no_fields_takes_any_object_and_only_an_object() {
        assert!(decode::<NoFields>(b"{}").is_ok());
        assert!(decode::<NoFields>(br#"{"a":[1,{"b":null}],"c":"d"}"#).is_ok());
        for bad in [&b"[]"[..], b"5", b"\"x\"", b"null"] {
            assert!(
                matches!(decode::<NoFields>(bad), Err(ApiError::Field { .. })),
                "{:?}",
                std::str::from_utf8(bad)
            );
        }
        assert!(matches!(decode::<NoFields>(b""), Err(ApiError::BadJson(_))));
        let u: SendToUser =
            decode(br#"{"userId":"u","code":2,"data":[1],"excludeClientId":"c"}"#).unwrap();
        assert_eq!(u.exclude_client_id.as_deref(), Some("c"));
        assert_eq!(u.user_id.as_deref(), Some("u"));
        assert_eq!(u.fields.data.unwrap().get(), "[1]");
    }

    #[test]
    fn errors_name_the_field_or_say_not_json() {
        let e = decode::<Push>(br#"{"clientId":5}"#).err().unwrap();
        assert!(
            matches!(&e, ApiError::Field { field, .. } if field == "clientId"),
            "{e}"
        );
        let e = decode::<Push>(br#"{"clientId":"c","code":"x"}"#)
            .err()
            .unwrap();
        assert!(
            matches!(&e, ApiError::Field { field, .. } if field == "code"),
            "{e}"
        );
        let e = decode::<PushToClients>(br#"{"clientIds":"c"}"#)
            .err()
            .unwrap();
        assert!(
            matches!(&e, ApiError::Field { field, .. } if field == "clientIds"),
            "{e}"
        );
        for body in [
            &br#"{"groupName":"g","excludeClientId":5}"#[..],
            br#"{"groupName":"g","excludeClientId":["c"]}"#,
        ] {
            let e = decode::<SendToGroup>(body).err().unwrap();
            assert!(
                matches!(&e, ApiError::Field { field, .. } if field == "excludeClientId"),
                "{e}"
            );
        }
        let e = decode::<SendToSystem>(br#"{"excludeClientId":{}}"#)
            .err()
            .unwrap();
        assert!(
            matches!(&e, ApiError::Field { field, .. } if field == "excludeClientId"),
            "{e}"
        );
        let g: SendToGroup = decode(br#"{"groupName":"g","excludeClientId":null}"#).unwrap();
        assert!(g.exclude_client_id.is_none(), "null is absent");
        assert!(matches!(
            decode::<Push>(b"{nope").err().unwrap(),
            ApiError::BadJson(_)
        ));
        assert!(matches!(
            decode::<Push>(b"").err().unwrap(),
            ApiError::BadJson(_)
        ));
        assert!(matches!(
            decode::<Push>(b"{} x").err().unwrap(),
            ApiError::BadJson(_)
        ));
        assert!(matches!(
            decode::<Push>(b"[1]").err().unwrap(),
            ApiError::Field { .. }
        ));
        assert_eq!(
            required("groupName", Some("".into()))
                .unwrap_err()
                .to_string(),
            "groupName is required"
        );
    }
}
