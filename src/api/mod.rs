//! The HTTP JSON API: the URL table, request decoding, and the handlers.
//!
//! Flow of one request: [`route`] names it from the path; the connection reads the body; then
//! [`handle`] checks the method, the `SystemId` guard and the fields, and runs the handler, which
//! hands each operation to [`crate::route`], which decides where it runs (this core, another
//! core, or, in cluster mode, another node).

pub mod batch;
pub mod error;
pub mod history;
pub mod offline;
pub mod request;

use crate::auth;
use crate::config::Config;
use crate::net::http::{Head, Method};
use crate::route::clients::{self, BindError};
use crate::route::systems::RegisterError;
use crate::route::{Fanout, Router};
use crate::shard::system::{check_system_id, check_webhook_target, check_webhook_url};
use crate::shard::Shard;
use crate::types::SystemInfo;
use crate::ws::message;
use error::{ApiError, Data, Pushed};
use request::{
    decode, required, Bind, ByClient, ByGroup, GetGroupHistory, NoFields, Push, PushToClients,
    Register, SendToGroup, SendToSystem, SendToUser, Unbind,
};
use std::borrow::Cow;
use std::rc::Rc;
use std::sync::Arc;

/// The routes of the original, one per line, then wspush's own (issue 7, docs/api-extensions.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Register,
    SendToClient,
    SendToClients,
    SendToGroup,
    BindToGroup,
    GetOnlineList,
    CloseClient,
    IsOnline,
    SendToSystem,
    UnbindFromGroup,
    SendToUser,
    GetGroupPresence,
    GetSystemStats,
    GetGroupHistory,
    /// Issue 17: several push requests in one (docs/api-additions.md).
    Batch,
}

impl Route {
    /// The routes `/api/batch` carries: the pushes, each answering `{"messageId", ...}`.
    pub fn is_push(self) -> bool {
        matches!(
            self,
            Route::SendToClient
                | Route::SendToClients
                | Route::SendToGroup
                | Route::SendToSystem
                | Route::SendToUser
        )
    }
}

/// The URL table.
pub fn route(path: &str) -> Option<Route> {
    Some(match path {
        "/api/register" => Route::Register,
        "/api/send_to_client" => Route::SendToClient,
        "/api/send_to_clients" => Route::SendToClients,
        "/api/send_to_group" => Route::SendToGroup,
        "/api/bind_to_group" => Route::BindToGroup,
        "/api/get_online_list" => Route::GetOnlineList,
        "/api/close_client" => Route::CloseClient,
        "/api/is_online" => Route::IsOnline,
        "/api/send_to_system" => Route::SendToSystem,
        "/api/unbind_from_group" => Route::UnbindFromGroup,
        "/api/send_to_user" => Route::SendToUser,
        "/api/get_group_presence" => Route::GetGroupPresence,
        "/api/get_system_stats" => Route::GetSystemStats,
        "/api/get_group_history" => Route::GetGroupHistory,
        "/api/batch" => Route::Batch,
        _ => return None,
    })
}

/// Issue 7's ApiKey, when configured, comes first: a caller without it learns nothing, not even
/// which methods, routes or systems exist. The listener calls it on the request head, before it
/// reads the body; [`handle`] checks again, so no route depends on the listener doing so.
pub fn check_api_key(shard: &Shard, route: Option<Route>, head: &Head) -> Result<(), ApiError> {
    if shard.config.api_key.is_empty() {
        return Ok(());
    }
    auth::check_api_key(&shard.config.api_key, head.authorization.as_deref()).map_err(|e| {
        if let Some(skipped) = shard.throttles.api_refused.admit() {
            tracing::info!(core = shard.id, ?route, path = %head.path, error = %e, also = skipped,
                "API request refused: ApiKey");
        }
        ApiError::Forbidden(e.to_string())
    })
}

/// A path that is no route. Under `/api/` the ApiKey is checked first, as on every route, so
/// that a caller without it cannot map the routes by their 403s and 404s.
pub fn unknown_route(shard: &Shard, head: &Head) -> Result<Data, ApiError> {
    if head.path.starts_with("/api/") {
        check_api_key(shard, None, head)?;
    }
    Err(ApiError::NotFound)
}

/// Runs one API request; the result becomes the envelope in [`error::envelope`].
pub async fn handle(
    router: &Rc<Router>,
    route: Route,
    head: &Head,
    body: &[u8],
) -> Result<Data, ApiError> {
    let shard = &router.shard;
    check_api_key(shard, Some(route), head)?;
    if head.method != Some(Method::Post) {
        return Err(ApiError::MethodNotAllowed);
    }
    if route == Route::Register {
        let req: Register = decode(body)?;
        let system = required("systemId", req.system_id)?;
        check_system_id(&system, shard.config.max_system_id_bytes).map_err(|problem| {
            ApiError::Field {
                field: "systemId".into(),
                problem,
            }
        })?;
        // An empty webhookUrl is "none" (SDKs send "" for unset options); an empty secret is an
        // error instead, since its sender believes the system is protected.
        let webhook_url = req.webhook_url.as_deref().filter(|u| !u.is_empty());
        let mut info = register_options(&shard.config, req.secret.as_deref(), webhook_url)?;
        info.history = history::register_history(&shard.config, req.history)?;
        info.single_connection = req.single_connection.unwrap_or(false);
        return match router.register(Arc::from(&*system), Arc::new(info)).await {
            Ok(true) => Ok(Data::EmptyList),
            Ok(false) => Err(ApiError::AlreadyRegistered(system.into_owned())),
            Err(RegisterError::Etcd(e)) => Err(ApiError::Etcd(e)),
            Err(RegisterError::Full(why)) => Err(ApiError::Limit(why.to_string())),
        };
    }
    // The guard of every other route, in the original's order: header present, then registered.
    let system = match head.system_id.as_deref() {
        Some(s) if !s.is_empty() => s,
        _ => return Err(ApiError::MissingSystemId),
    };
    // Before the lookup: in cluster mode an unknown name is asked of etcd.
    check_system_id(system, shard.config.max_system_id_bytes).map_err(|problem| {
        ApiError::Field {
            field: "SystemId header".into(),
            problem,
        }
    })?;
    let limits = &*shard.config;
    let info = match router.lookup_system(system).await {
        Ok(Some(info)) => info,
        Ok(None) => return Err(ApiError::UnknownSystem(system.to_string())),
        Err(e) => return Err(ApiError::Etcd(e.to_string())),
    };
    // A system with a secret signs its calls: route, system, time and the body as received,
    // checked before anything reads the body (the method check above let only POST through).
    if let Some(secret) = &info.secret {
        let signed = auth::SignedRequest {
            path: &head.path,
            system,
            timestamp: head.timestamp.as_deref(),
            signature: head.signature.as_deref(),
            body,
        };
        let compat = shard.config.signature_compat;
        if let Err(e) = auth::verify_signature(secret, &signed, auth::unix_now(), compat) {
            if let Some(skipped) = shard.throttles.api_refused.admit() {
                tracing::info!(core = shard.id, ?route, system, error = %e, also = skipped,
                    "API request refused: signature");
            }
            return Err(ApiError::Unauthorized(e.to_string()));
        }
    }
    let system: Arc<str> = Arc::from(system);
    match route {
        Route::Register => unreachable!("bug: handled above"),
        Route::SendToClient
        | Route::SendToClients
        | Route::SendToGroup
        | Route::SendToSystem
        | Route::SendToUser => push(router, route, system, &info, body).await,
        Route::Batch => batch::run(router, system, &info, body).await,
        Route::BindToGroup => {
            let req: Bind = decode(body)?;
            let client_id = required("clientId", req.client_id)?;
            let group = required("groupName", req.group_name)?;
            name("clientId", &client_id, limits)?;
            name("groupName", &group, limits)?;
            name("userId", req.user_id.as_deref().unwrap_or(""), limits)?;
            within(
                "extend",
                req.extend.as_deref().unwrap_or(""),
                limits.max_extend_bytes,
                "MaxExtendBytes",
            )?;
            let resume = match history::since("since", req.since)? {
                Some(since) => Some(crate::types::Resume {
                    since,
                    history: history::needs_history(&info, &system, "since")?,
                }),
                None => None,
            };
            let user = (
                req.user_id.map(|s| s.into_owned()).unwrap_or_default(),
                req.extend.map(|s| s.into_owned()).unwrap_or_default(),
            );
            let with_since = resume.is_some();
            let bound = clients::bind(router, system, &client_id, Arc::from(&*group), user, resume)
                .await
                .map_err(|e| match e {
                    BindError::Refused(why) => ApiError::Limit(why.to_string()),
                    unreachable @ BindError::Unreachable(_) => {
                        ApiError::Peer(unreachable.to_string())
                    }
                })?;
            Ok(match bound.recovered {
                Some(recovered) => history::recovered_json(recovered),
                // An unknown client recovers nothing.
                None if with_since => history::recovered_json(false),
                None => Data::EmptyList,
            })
        }
        Route::GetOnlineList => {
            let req: ByGroup = decode(body)?;
            let group = required("groupName", req.group_name)?;
            name("groupName", &group, limits)?;
            let list = router.online_list(system, Arc::from(&*group)).await;
            Ok(Data::OnlineList(list))
        }
        Route::CloseClient => {
            let req: ByClient = decode(body)?;
            let client_id = required("clientId", req.client_id)?;
            name("clientId", &client_id, limits)?;
            clients::close(router, system, &client_id, crate::types::Kick::Api)
                .await
                .map_err(|why| ApiError::Limit(why.to_string()))?;
            Ok(Data::EmptyObject)
        }
        Route::IsOnline => {
            let req: ByClient = decode(body)?;
            let client_id = required("clientId", req.client_id)?;
            name("clientId", &client_id, limits)?;
            let online = clients::is_online(router, system, &client_id).await;
            Ok(Data::Online(online))
        }
        Route::UnbindFromGroup => {
            let req: Unbind = decode(body)?;
            let client_id = required("clientId", req.client_id)?;
            let group = required("groupName", req.group_name)?;
            name("clientId", &client_id, limits)?;
            name("groupName", &group, limits)?;
            // Like bind_to_group, an unknown client (or one not in the group) is not an error:
            // afterwards it is not a member either way.
            clients::unbind(router, system, &client_id, Arc::from(&*group)).await;
            Ok(Data::EmptyList)
        }
        Route::GetGroupPresence => {
            let req: ByGroup = decode(body)?;
            let group = required("groupName", req.group_name)?;
            name("groupName", &group, limits)?;
            let list = router.group_presence(system, Arc::from(&*group)).await;
            Ok(Data::Presence(list))
        }
        Route::GetSystemStats => {
            let _: NoFields = decode(body)?;
            let mut stats = router.system_stats(system).await;
            if router.shard.config.offline_max == 0 {
                stats.offline_messages = None;
            }
            Ok(Data::Stats(stats))
        }
        Route::GetGroupHistory => {
            let req: GetGroupHistory = decode(body)?;
            if let Some(group) = &req.group_name {
                name("groupName", group, limits)?;
            }
            history::get_group_history(router, system, &info, req).await
        }
    }
}

/// The push routes, the ones `/api/batch` may carry: `body` is one request of `route`, of the
/// registered `system` (`info`), past the guard.
pub(crate) async fn push(
    router: &Rc<Router>,
    route: Route,
    system: Arc<str>,
    info: &SystemInfo,
    body: &[u8],
) -> Result<Data, ApiError> {
    let shard = &router.shard;
    let limits = &*shard.config;
    match route {
        Route::SendToClient => {
            let req: Push = decode(body)?;
            let client_id = required("clientId", req.client_id)?;
            name("clientId", &client_id, limits)?;
            req.fields.check(limits)?;
            let message_id = shard.message_id();
            let frame = req.fields.frame(&message_id);
            let once = std::iter::once(&*client_id);
            let delivered = clients::deliver(router, &system, once, frame, "send_to_client").await;
            Ok(Data::Pushed(Pushed {
                message_id,
                delivered,
                with_count: false,
                failed_nodes: None,
            }))
        }
        Route::SendToClients => {
            let req: PushToClients = decode(body)?;
            let ids = req
                .client_ids
                .ok_or_else(|| ApiError::required("clientIds"))?;
            if ids.is_empty() {
                return Err(ApiError::Field {
                    field: "clientIds".into(),
                    problem: "must not be empty".into(),
                });
            }
            let most = shard.config.max_client_ids_per_request;
            if ids.len() > most {
                return Err(ApiError::Limit(format!(
                    "clientIds lists {} ids, more than MaxClientIdsPerRequest ({most}): split the request",
                    ids.len()
                )));
            }
            for (i, id) in ids.iter().enumerate() {
                name(&format!("clientIds[{i}]"), id, limits)?;
            }
            req.fields.check(limits)?;
            let message_id = shard.message_id();
            let frame = req.fields.frame(&message_id);
            let ids = ids.iter().map(|s| &**s);
            let delivered = clients::deliver(router, &system, ids, frame, "send_to_clients").await;
            Ok(Data::Pushed(Pushed {
                message_id,
                delivered,
                with_count: false,
                failed_nodes: None,
            }))
        }
        Route::SendToGroup => {
            let req: SendToGroup = decode(body)?;
            let group = required("groupName", req.group_name)?;
            name("groupName", &group, limits)?;
            req.fields.check(limits)?;
            let message_id = shard.message_id();
            let group = Arc::from(&*group);
            let exclude = router.exclude(req.exclude_client_id.as_deref());
            let fanout = match info.history {
                // The stream's owner builds the frame, once it knows the offset, and finds
                // the excluded client itself.
                Some(history) => {
                    let mut push = req.fields.history_push(&message_id);
                    if exclude.here.is_some() || exclude.peer.is_some() {
                        push.exclude = req.exclude_client_id.map(Cow::into_owned);
                    }
                    let pushed = router.push_group_history(system, group, history, push);
                    pushed.await.map_err(|e| ApiError::Peer(e.to_string()))?
                }
                None => {
                    let frame = req.fields.frame(&message_id);
                    let what = "send_to_group";
                    (router.push_group(system, group, frame, what, exclude)).await
                }
            };
            Ok(pushed(message_id, fanout, false))
        }
        Route::SendToSystem => {
            let req: SendToSystem = decode(body)?;
            req.fields.check(limits)?;
            let message_id = shard.message_id();
            let frame = req.fields.frame(&message_id);
            let exclude = router.exclude(req.exclude_client_id.as_deref());
            let fanout = router.push_system(system, frame, exclude).await;
            Ok(pushed(message_id, fanout, false))
        }
        Route::SendToUser => {
            let req: SendToUser = decode(body)?;
            let user_id = required("userId", req.user_id)?;
            name("userId", &user_id, limits)?;
            req.fields.check(limits)?;
            let store = offline::store_mode(req.store, limits)?;
            let message_id = shard.message_id();
            let frame = req.fields.frame(&message_id);
            let user_id: Arc<str> = Arc::from(&*user_id);
            let exclude = router.exclude(req.exclude_client_id.as_deref());
            let push = router.push_user(system.clone(), user_id.clone(), frame.clone(), exclude);
            let fanout = push.await;
            if let Some(mode) = store {
                offline::keep(router, mode, &fanout, system, user_id, &message_id, frame).await?;
            }
            Ok(pushed(message_id, fanout, true))
        }
        _ => Err(ApiError::Field {
            field: "route".into(),
            problem: format!("{route:?} is not a push route"),
        }),
    }
}

/// A string field within `max` bytes (the key `key`); the error names both. Issue 12: names,
/// userIds and extends are held per connection and copied into pushes and webhook events, so
/// one request must not pin megabytes.
fn within(field: &str, value: &str, max: usize, key: &str) -> Result<(), ApiError> {
    if value.len() <= max {
        return Ok(());
    }
    Err(ApiError::Field {
        field: field.into(),
        problem: format!("is too long ({} bytes, at most {key} = {max})", value.len()),
    })
}

/// [`within`] `MaxNameBytes`: groupName, userId, sendUserId, clientId.
fn name(field: &str, value: &str, limits: &Config) -> Result<(), ApiError> {
    within(field, value, limits.max_name_bytes, "MaxNameBytes")
}

/// A fan-out route's answer: what was delivered, and the nodes that did not answer.
fn pushed(message_id: String, fanout: Fanout, with_count: bool) -> Data {
    Data::Pushed(Pushed {
        message_id,
        delivered: fanout.delivered,
        with_count,
        failed_nodes: Some(fanout.failed.iter().map(|n| n.to_string()).collect()),
    })
}

/// The options `register` may attach (issue 7), validated. Absent fields are the original's
/// behaviour: no secret, no webhook.
fn register_options(
    config: &Config,
    secret: Option<&str>,
    webhook_url: Option<&str>,
) -> Result<SystemInfo, ApiError> {
    let field = |field: &str, problem: String| ApiError::Field {
        field: field.into(),
        problem,
    };
    if let Some(secret) = secret {
        auth::check_secret(secret).map_err(|p| field("secret", p))?;
    }
    if let Some(url) = webhook_url {
        check_webhook_url(url).map_err(|p| field("webhookUrl", p))?;
        check_webhook_target(url, config.webhook_allow_private)
            .map_err(|p| field("webhookUrl", p))?;
    }
    Ok(SystemInfo {
        secret: secret.map(str::to_string),
        webhook_url: webhook_url.map(str::to_string),
        ..SystemInfo::default()
    })
}

impl request::PushFields<'_> {
    /// The limits of the pushed fields: sendUserId (MaxNameBytes), msg (MaxMsgBytes), and how
    /// deep `data` nests (MaxJsonDepth). `data` goes to the clients as it came, so a clients'
    /// recursive JSON parser would meet whatever depth the caller sent.
    fn check(&self, limits: &Config) -> Result<(), ApiError> {
        name(
            "sendUserId",
            self.send_user_id.as_deref().unwrap_or(""),
            limits,
        )?;
        within(
            "msg",
            self.msg.as_deref().unwrap_or(""),
            limits.max_msg_bytes,
            "MaxMsgBytes",
        )?;
        if let Some(data) = self.data {
            let depth = request::nesting_depth(data.get());
            if depth > limits.max_json_depth {
                return Err(ApiError::Field {
                    field: "data".into(),
                    problem: format!(
                        "nests arrays and objects {depth} deep, more than MaxJsonDepth = {}",
                        limits.max_json_depth
                    ),
                });
            }
        }
        Ok(())
    }

    /// The fields of a push the owner of a group's stream builds the frame of (history).
    fn history_push(&self, message_id: &str) -> crate::types::HistoryPush {
        crate::types::HistoryPush {
            message_id: message_id.to_string(),
            send_user_id: self.send_user_id.as_deref().unwrap_or("").to_string(),
            code: self.code.unwrap_or(0),
            msg: self.msg.as_deref().unwrap_or("").to_string(),
            data: self.data.map_or("\"\"", |raw| raw.get()).to_string(),
            exclude: None,
        }
    }

    /// The pushed frame, built once for every recipient.
    fn frame(&self, message_id: &str) -> crate::ws::frame::SharedFrame {
        message::push_frame(
            message_id,
            self.send_user_id.as_deref().unwrap_or(""),
            self.code.unwrap_or(0),
            self.msg.as_deref().unwrap_or(""),
            // The original's `data` is a Go string: absent means "".
            self.data.map(|raw| raw.get()).unwrap_or("\"\""),
        )
    }
}
