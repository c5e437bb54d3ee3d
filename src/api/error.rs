//! API errors and the one place they become an HTTP status and the `{code,msg,data}` envelope.

/// What went wrong with an API request; every variant is the caller's doing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("request body is not valid JSON: {0}")]
    BadJson(String),
    #[error("SystemId header is required")]
    MissingSystemId,
    #[error("systemId {0:?} is not registered")]
    UnknownSystem(String),
    #[error("{field} {problem}")]
    Field { field: String, problem: String },
    #[error("systemId {0:?} is already registered")]
    AlreadyRegistered(String),
    /// Cluster mode: etcd could not answer (the message says so).
    #[error("{0}")]
    Etcd(String),
    /// A configured limit refused the request (the message names the key).
    #[error("{0}")]
    Limit(String),
    /// The request as a whole could not be read (too large, timed out, malformed framing).
    #[error("{0}")]
    Request(String),
    /// `ApiKey` is configured and the request does not carry it (status 403).
    #[error("{0}")]
    Forbidden(String),
    /// The system has a secret and the request's `X-Signature` is missing or wrong (status 401).
    #[error("{0}")]
    Unauthorized(String),
    #[error("method not allowed: API routes take POST")]
    MethodNotAllowed,
    #[error("no such route")]
    NotFound,
}

impl ApiError {
    pub fn required(field: &str) -> ApiError {
        ApiError::Field {
            field: field.to_string(),
            problem: "is required".to_string(),
        }
    }

    /// HTTP status: the original answers 200 with code -1 for everything but these.
    pub fn status(&self) -> u16 {
        match self {
            ApiError::BadJson(_) => 400,
            ApiError::Unauthorized(_) => 401,
            ApiError::Forbidden(_) => 403,
            ApiError::MethodNotAllowed => 405,
            ApiError::NotFound => 404,
            _ => 200,
        }
    }
}

/// The success `data` of each route.
pub enum Data {
    /// `[]`
    EmptyList,
    /// `{}`
    EmptyObject,
    /// `{"messageId":"..."}`
    MessageId(String),
    /// `{"count":N,"list":[...]}`
    OnlineList(Vec<String>),
    /// `{"online":bool}`
    Online(bool),
    /// `{"messageId":"...","count":N}`
    MessageCount(String, usize),
    /// `{"count":N,"list":[{"clientId","userId","extend"}...]}`
    Presence(Vec<crate::cluster::proto::Member>),
    /// `{"clients":N,"groups":N,"users":N}`
    Stats(crate::shard::stats::SystemStats),
}

/// Writes `{"code":..,"msg":..,"data":..}`.
pub fn envelope(result: &Result<Data, ApiError>) -> Vec<u8> {
    use crate::ws::message::write_json_str;
    let mut out = Vec::with_capacity(96);
    match result {
        Ok(data) => {
            out.extend_from_slice(b"{\"code\":0,\"msg\":\"success\",\"data\":");
            match data {
                Data::EmptyList => out.extend_from_slice(b"[]"),
                Data::EmptyObject => out.extend_from_slice(b"{}"),
                Data::MessageId(id) => {
                    out.extend_from_slice(b"{\"messageId\":");
                    write_json_str(&mut out, id);
                    out.push(b'}');
                }
                Data::OnlineList(list) => {
                    out.extend_from_slice(
                        format!("{{\"count\":{},\"list\":[", list.len()).as_bytes(),
                    );
                    for (i, id) in list.iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        write_json_str(&mut out, id);
                    }
                    out.extend_from_slice(b"]}");
                }
                Data::Online(online) => {
                    out.extend_from_slice(format!("{{\"online\":{online}}}").as_bytes())
                }
                Data::MessageCount(id, count) => {
                    out.extend_from_slice(b"{\"messageId\":");
                    write_json_str(&mut out, id);
                    out.extend_from_slice(format!(",\"count\":{count}}}").as_bytes());
                }
                Data::Presence(list) => {
                    out.extend_from_slice(
                        format!("{{\"count\":{},\"list\":[", list.len()).as_bytes(),
                    );
                    for (i, m) in list.iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        out.extend_from_slice(b"{\"clientId\":");
                        write_json_str(&mut out, &m.client_id);
                        out.extend_from_slice(b",\"userId\":");
                        write_json_str(&mut out, &m.user_id);
                        out.extend_from_slice(b",\"extend\":");
                        write_json_str(&mut out, &m.extend);
                        out.push(b'}');
                    }
                    out.extend_from_slice(b"]}");
                }
                Data::Stats(s) => out.extend_from_slice(
                    format!(
                        "{{\"clients\":{},\"groups\":{},\"users\":{}}}",
                        s.clients, s.groups, s.users
                    )
                    .as_bytes(),
                ),
            }
        }
        Err(e) => {
            out.extend_from_slice(b"{\"code\":-1,\"msg\":");
            write_json_str(&mut out, &e.to_string());
            out.extend_from_slice(b",\"data\":[]");
        }
    }
    out.push(b'}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes() {
        let v: serde_json::Value =
            serde_json::from_slice(&envelope(&Ok(Data::OnlineList(vec![])))).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"code":0,"msg":"success","data":{"count":0,"list":[]}})
        );
        let v: serde_json::Value =
            serde_json::from_slice(&envelope(&Err(ApiError::required("clientId")))).unwrap();
        assert_eq!(v["code"], -1);
        assert_eq!(v["msg"], "clientId is required");
        assert_eq!(v["data"], serde_json::json!([]));
    }

    #[test]
    fn envelopes_of_the_issue_7_routes() {
        use crate::cluster::proto::Member;
        use crate::shard::stats::SystemStats;
        use serde_json::json;
        let data = |d: Data| -> serde_json::Value {
            let v: serde_json::Value = serde_json::from_slice(&envelope(&Ok(d))).unwrap();
            assert_eq!(v["code"], 0);
            v["data"].clone()
        };
        assert_eq!(data(Data::Online(true)), json!({"online": true}));
        assert_eq!(data(Data::Online(false)), json!({"online": false}));
        assert_eq!(
            data(Data::MessageCount("00ff".into(), 3)),
            json!({"messageId": "00ff", "count": 3})
        );
        let member = Member {
            client_id: "c\"1".into(),
            user_id: "".into(),
            extend: "{\"a\":1}".into(),
        };
        assert_eq!(
            data(Data::Presence(vec![member.clone(), member])),
            json!({"count": 2, "list": [
                {"clientId": "c\"1", "userId": "", "extend": "{\"a\":1}"},
                {"clientId": "c\"1", "userId": "", "extend": "{\"a\":1}"}
            ]})
        );
        assert_eq!(
            data(Data::Presence(vec![])),
            json!({"count": 0, "list": []})
        );
        assert_eq!(
            data(Data::Stats(SystemStats {
                clients: 5,
                groups: 2,
                users: 1
            })),
            json!({"clients": 5, "groups": 2, "users": 1})
        );
    }
}
