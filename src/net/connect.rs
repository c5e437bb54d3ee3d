//! The `/ws` connect's authorisation: whether a connect to a system may proceed, and as which
//! user, from the core's copy of the system's options (looked up through the router when the
//! core has not heard of the system) and the pure JWT check of [`crate::auth`]. Called by the
//! upgrade in [`super::listener`] before the connection gets a slot.

use crate::auth::{token_param, unix_now, verify_jwt, JwtError};
use crate::route::Router;
use std::rc::Rc;

/// Why a connect is refused: the status and the plain-text reason sent as the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub why: String,
}

/// Decides whether a `/ws` connect to `system` may proceed. `Ok(Some(userId))`: a verified token
/// bound the connection to that user. A system without a secret (or not registered: the original
/// lets those connect) needs no token, and one sent anyway is ignored, since nothing can verify
/// it. In cluster mode a token for a system this core has not heard of yet is checked against
/// etcd, so a connect that races the watch after a register is not wrongly refused. One without
/// a token is looked up only until the core has had etcd's list of systems once (a node that
/// just started knows none, and must not let tokenless clients into a system with a secret);
/// after that an unknown system is taken as unregistered, so connects to made-up names cost
/// etcd nothing, and a system registered with a secret within the watch's lag closes such
/// connections when this core learns it (see [`crate::shard::Shard::learn_system`]).
pub async fn authorize_connect(
    router: &Rc<Router>,
    system: &str,
    query: &str,
) -> Result<Option<String>, Refusal> {
    let shard = &router.shard;
    let token = token_param(query);
    let info = match shard.system_info(system) {
        Some(info) => Some(info),
        None if router.cluster().is_some() && (token.is_some() || !shard.systems_synced.get()) => {
            router
                .lookup_system_for_connect(system)
                .await
                .map_err(|why| Refusal {
                    status: 503,
                    why: format!("cannot check the token now: {why}"),
                })?
        }
        None => None,
    };
    let Some(secret) = info.as_ref().and_then(|info| info.secret.as_deref()) else {
        return Ok(None);
    };
    let token = token.ok_or(JwtError::Missing);
    match token.and_then(|t| verify_jwt(secret, &t, system, unix_now())) {
        Ok(claims) => Ok(claims.user_id),
        Err(e) => Err(Refusal {
            status: 401,
            why: e.to_string(),
        }),
    }
}
