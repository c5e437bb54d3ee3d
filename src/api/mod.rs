//! The HTTP JSON API: the URL table, request decoding, and the handlers.
//!
//! Flow of one request: [`route`] names it from the path; the connection reads the body; then
//! [`handle`] checks the method, the `SystemId` guard and the fields, and runs the handler, which
//! resolves clientIds with [`dispatch`] (this core, another core, or, in cluster mode, another node).

pub mod dispatch;
pub mod error;
pub mod request;

use crate::net::http::{Head, Method};
use crate::shard::Shard;
use crate::ws::message;
use error::{ApiError, Data};
use request::{
    decode, required, Bind, ByClient, ByGroup, Push, PushToClients, Register, SendToGroup,
};
use std::rc::Rc;
use std::sync::Arc;

/// The routes of the original, one per line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Register,
    SendToClient,
    SendToClients,
    SendToGroup,
    BindToGroup,
    GetOnlineList,
    CloseClient,
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
        _ => return None,
    })
}

/// Runs one API request; the result becomes the envelope in [`error::envelope`].
pub async fn handle(
    shard: &Rc<Shard>,
    route: Route,
    head: &Head,
    body: &[u8],
) -> Result<Data, ApiError> {
    if head.method != Some(Method::Post) {
        return Err(ApiError::MethodNotAllowed);
    }
    if route == Route::Register {
        let req: Register = decode(body)?;
        let system = required("systemId", req.system_id)?;
        return match shard.register(Arc::from(&*system)).await {
            Ok(true) => Ok(Data::EmptyList),
            Ok(false) => Err(ApiError::AlreadyRegistered(system.into_owned())),
            Err(e) => Err(ApiError::Etcd(e)),
        };
    }
    // The guard of every other route, in the original's order: header present, then registered.
    let system = match head.system_id.as_deref() {
        Some(s) if !s.is_empty() => s,
        _ => return Err(ApiError::MissingSystemId),
    };
    match shard.is_registered(system).await {
        Ok(true) => {}
        Ok(false) => return Err(ApiError::UnknownSystem(system.to_string())),
        Err(e) => return Err(ApiError::Etcd(e)),
    }
    let system: Arc<str> = Arc::from(system);
    match route {
        Route::Register => unreachable!("bug: handled above"),
        Route::SendToClient => {
            let req: Push = decode(body)?;
            let client_id = required("clientId", req.client_id)?;
            let message_id = shard.message_id();
            let frame = req.fields.frame(&message_id);
            dispatch::deliver(shard, &system, std::iter::once(&*client_id), frame).await;
            Ok(Data::MessageId(message_id))
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
            let message_id = shard.message_id();
            let frame = req.fields.frame(&message_id);
            dispatch::deliver(shard, &system, ids.iter().map(|s| &**s), frame).await;
            Ok(Data::MessageId(message_id))
        }
        Route::SendToGroup => {
            let req: SendToGroup = decode(body)?;
            let group = required("groupName", req.group_name)?;
            let message_id = shard.message_id();
            let frame = req.fields.frame(&message_id);
            shard.push_group(system, Arc::from(&*group), frame).await;
            Ok(Data::MessageId(message_id))
        }
        Route::BindToGroup => {
            let req: Bind = decode(body)?;
            let client_id = required("clientId", req.client_id)?;
            let group = required("groupName", req.group_name)?;
            dispatch::bind(
                shard,
                system,
                &client_id,
                Arc::from(&*group),
                req.user_id.map(|s| s.into_owned()).unwrap_or_default(),
                req.extend.map(|s| s.into_owned()).unwrap_or_default(),
            )
            .await
            .map_err(ApiError::Limit)?;
            Ok(Data::EmptyList)
        }
        Route::GetOnlineList => {
            let req: ByGroup = decode(body)?;
            let group = required("groupName", req.group_name)?;
            let list = shard.online_list(system, Arc::from(&*group)).await;
            Ok(Data::OnlineList(list))
        }
        Route::CloseClient => {
            let req: ByClient = decode(body)?;
            let client_id = required("clientId", req.client_id)?;
            dispatch::close(shard, system, &client_id)
                .await
                .map_err(ApiError::Limit)?;
            Ok(Data::EmptyObject)
        }
    }
}

impl request::PushFields<'_> {
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
