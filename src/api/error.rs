//! API errors and the one place they become an HTTP status, the headers that go with it, and
//! the `{code,msg,data}` envelope; and the refusals the listener answers before any route runs
//! ([`Refusal`]), with their status and headers chosen here too.

/// Whose doing an error is: the caller's (a bad or unauthorised request, a limit it ran into)
/// or the server's (etcd or a peer node could not answer, the node cannot take more now).
/// Server faults are logged at WARN, caller faults at DEBUG or INFO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Caller,
    Server,
}

/// What went wrong with an API request; [`ApiError::fault`] says whose doing it is.
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
    /// Cluster mode: the peer node the request had to reach did not answer (the message names
    /// it); nothing is known to have happened there.
    #[error("{0}")]
    Peer(String),
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

    /// Whose doing the error is: etcd down and a peer that did not answer are the server's;
    /// everything else (the request, its credentials, a limit it ran into) the caller's.
    pub fn fault(&self) -> Fault {
        match self {
            ApiError::Etcd(_) | ApiError::Peer(_) => Fault::Server,
            _ => Fault::Caller,
        }
    }

    /// Headers the answer carries besides Content-Type and Content-Length: a 401 names how to
    /// authenticate (RFC 9110 section 15.5.2, docs/auth.md), a 405 the method the routes take.
    pub fn headers(&self) -> &'static str {
        match self {
            ApiError::Unauthorized(_) => "WWW-Authenticate: HMAC-SHA256 realm=\"wspush\"\r\n",
            ApiError::MethodNotAllowed => "Allow: POST\r\n",
            _ => "",
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

/// A request the listener refuses before any route runs; the answer closes the connection.
/// The API ones ([`Refusal::is_api`]) answer the JSON envelope, the others plain text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The request head could not be read: the parser's status (400, 413, 431, ...), or 408
    /// when it did not come in time.
    Head(u16),
    /// An API request's body could not be read: 400 (malformed chunked framing), 408 (not in
    /// time) or 413 (over MaxBodyBytes).
    Body(u16),
    /// MaxHttpConnsPerCore: 503, come back in a second.
    HttpFull,
    /// The `/ws` request is not a valid WebSocket upgrade: 400, naming the version we speak.
    Handshake,
    /// The `/ws` systemId is unusable (too long, bad characters): 400.
    SystemId,
    /// The node takes no new WebSocket clients now (draining, cut off from its cluster, at
    /// MaxConnsPerCore): 503, come back in a few seconds.
    Unavailable,
    /// The connect authorisation refused: 401 (no or a bad token), or 503 (the system could
    /// not be looked up now).
    Connect(u16),
}

impl Refusal {
    pub fn status(self) -> u16 {
        match self {
            Refusal::Head(status) | Refusal::Body(status) | Refusal::Connect(status) => status,
            Refusal::HttpFull | Refusal::Unavailable => 503,
            Refusal::Handshake | Refusal::SystemId => 400,
        }
    }

    /// Headers the answer carries besides Content-Type and Content-Length: when to come back
    /// (`Retry-After`, which a client library may honour to spread its reconnects), how to
    /// authenticate, or the WebSocket version this server speaks.
    pub fn headers(self) -> &'static str {
        match self {
            Refusal::HttpFull => "Retry-After: 1\r\n",
            Refusal::Handshake => "Sec-WebSocket-Version: 13\r\n",
            Refusal::Unavailable => "Retry-After: 5\r\n",
            Refusal::Connect(401) => "WWW-Authenticate: Bearer realm=\"wspush\"\r\n",
            Refusal::Connect(_) => "Retry-After: 5\r\n",
            Refusal::Head(_) | Refusal::Body(_) | Refusal::SystemId => "",
        }
    }

    /// Whose doing the refusal is: a node that cannot take more (or look a system up) now is
    /// the server's; the rest is the request's.
    pub fn fault(self) -> Fault {
        match self {
            Refusal::HttpFull | Refusal::Unavailable => Fault::Server,
            Refusal::Connect(status) if status >= 500 => Fault::Server,
            _ => Fault::Caller,
        }
    }

    /// Whether the answer is the API's JSON envelope (an API request) rather than plain text.
    pub fn is_api(self) -> bool {
        matches!(self, Refusal::Body(_) | Refusal::HttpFull)
    }
}

/// The success `data` of each route.
pub enum Data {
    /// `[]`
    EmptyList,
    /// `{}`
    EmptyObject,
    /// A push: `{"messageId":"..."}`, with `count` and `failedNodes` where [`Pushed`] says,
    /// and the `X-Wspush-Delivered` header.
    Pushed(Pushed),
    /// `{"count":N,"list":[...]}`
    OnlineList(Vec<String>),
    /// `{"online":bool}`
    Online(bool),
    /// `{"count":N,"list":[{"clientId","userId","extend"}...]}`
    Presence(Vec<crate::cluster::proto::Member>),
    /// `{"clients":N,"groups":N,"users":N}`
    Stats(crate::types::SystemStats),
    /// JSON written by the route (get_group_history, a bind with `since`).
    Raw(Vec<u8>),
    /// `/api/batch`'s `{"results":[...]}`, and the sockets its pushes were queued for in all
    /// (its `X-Wspush-Delivered`).
    Batch { json: Vec<u8>, delivered: usize },
}

/// What a push route answers (issue 12: code 0 alone said nothing about what was delivered).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    pub message_id: String,
    /// Sockets the frame was queued for, on every node that answered: the
    /// `X-Wspush-Delivered` header of every push route.
    pub delivered: usize,
    /// send_to_user's `data.count` (the same number; its own field since issue 7).
    pub with_count: bool,
    /// `data.failedNodes` of the fan-out routes (send_to_group, send_to_system, send_to_user):
    /// the peers (`host:RPCPort`) that did not answer, whose clients got nothing. Always
    /// present on those routes, `[]` when every node answered, so the shape is stable; `None`
    /// on the unicast routes, which keep the original's data.
    pub failed_nodes: Option<Vec<String>>,
}

impl Data {
    /// The `X-Wspush-Delivered` value of a push route's answer; `None` for the other routes.
    pub fn delivered(&self) -> Option<usize> {
        match self {
            Data::Pushed(p) => Some(p.delivered),
            Data::Batch { delivered, .. } => Some(*delivered),
            _ => None,
        }
    }
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
                Data::Pushed(p) => {
                    out.extend_from_slice(b"{\"messageId\":");
                    write_json_str(&mut out, &p.message_id);
                    if p.with_count {
                        out.extend_from_slice(format!(",\"count\":{}", p.delivered).as_bytes());
                    }
                    if let Some(nodes) = &p.failed_nodes {
                        out.extend_from_slice(b",\"failedNodes\":[");
                        for (i, node) in nodes.iter().enumerate() {
                            if i > 0 {
                                out.push(b',');
                            }
                            write_json_str(&mut out, node);
                        }
                        out.push(b']');
                    }
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
                Data::Raw(json) | Data::Batch { json, .. } => out.extend_from_slice(json),
                Data::Stats(s) => {
                    let offline = s
                        .offline_messages
                        .map(|n| format!(",\"offlineMessages\":{n}"))
                        .unwrap_or_default();
                    out.extend_from_slice(
                        format!(
                            "{{\"clients\":{},\"groups\":{},\"users\":{}{offline}}}",
                            s.clients, s.groups, s.users
                        )
                        .as_bytes(),
                    )
                }
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
    fn faults_and_headers() {
        assert_eq!(
            ApiError::Etcd("etcd unreachable".into()).fault(),
            Fault::Server
        );
        assert_eq!(ApiError::Peer("peer down".into()).fault(), Fault::Server);
        assert_eq!(ApiError::MissingSystemId.fault(), Fault::Caller);
        assert_eq!(ApiError::Limit("MaxSystems".into()).fault(), Fault::Caller);
        assert_eq!(ApiError::MethodNotAllowed.headers(), "Allow: POST\r\n");
        assert!(ApiError::Unauthorized("x".into())
            .headers()
            .starts_with("WWW-Authenticate: HMAC-SHA256"));
        assert_eq!(ApiError::NotFound.headers(), "");
        assert_eq!(Refusal::HttpFull.status(), 503);
        assert_eq!(Refusal::HttpFull.headers(), "Retry-After: 1\r\n");
        assert_eq!(Refusal::Connect(401).status(), 401);
        assert!(Refusal::Connect(401)
            .headers()
            .starts_with("WWW-Authenticate: Bearer"));
        assert_eq!(Refusal::Connect(503).headers(), "Retry-After: 5\r\n");
        assert_eq!(Refusal::Connect(503).fault(), Fault::Server);
        assert_eq!(Refusal::Connect(401).fault(), Fault::Caller);
        assert_eq!(Refusal::Head(431).status(), 431);
        assert!(Refusal::Body(413).is_api() && !Refusal::Handshake.is_api());
    }

    #[test]
    fn envelopes_of_the_issue_7_routes() {
        use crate::types::Member;
        use crate::types::SystemStats;
        use serde_json::json;
        let data = |d: Data| -> serde_json::Value {
            let v: serde_json::Value = serde_json::from_slice(&envelope(&Ok(d))).unwrap();
            assert_eq!(v["code"], 0);
            v["data"].clone()
        };
        assert_eq!(data(Data::Online(true)), json!({"online": true}));
        assert_eq!(data(Data::Online(false)), json!({"online": false}));
        let pushed = |with_count: bool, failed_nodes: Option<Vec<String>>| {
            Data::Pushed(Pushed {
                message_id: "00ff".into(),
                delivered: 3,
                with_count,
                failed_nodes,
            })
        };
        assert_eq!(data(pushed(false, None)), json!({"messageId": "00ff"}));
        assert_eq!(
            data(pushed(true, Some(vec![]))),
            json!({"messageId": "00ff", "count": 3, "failedNodes": []})
        );
        assert_eq!(
            data(pushed(
                false,
                Some(vec!["10.0.0.2:7900".into(), "10.0.0.3:7900".into()])
            )),
            json!({"messageId": "00ff", "failedNodes": ["10.0.0.2:7900", "10.0.0.3:7900"]})
        );
        assert_eq!(pushed(false, None).delivered(), Some(3));
        assert_eq!(Data::EmptyList.delivered(), None);
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
                users: 1,
                offline_messages: Some(3)
            })),
            json!({"clients": 5, "groups": 2, "users": 1, "offlineMessages": 3})
        );
        assert_eq!(
            data(Data::Stats(SystemStats {
                clients: 5,
                groups: 2,
                users: 1,
                offline_messages: None
            })),
            json!({"clients": 5, "groups": 2, "users": 1}),
            "offline messages off: the original's three fields"
        );
    }
}
