//! send_to_user's `store` (issue 15, docs/history.md "Offline messages"): whether to keep the
//! push for the user, and keeping it through the router on the user's owner.

use super::error::ApiError;
use crate::config::Config;
use crate::route::{Fanout, Router};
use crate::shard::offline::Stored;
use crate::ws::frame::SharedFrame;
use serde_json::value::RawValue;
use std::rc::Rc;
use std::sync::Arc;

/// When send_to_user keeps its push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// `"store": true`: only when the user has no connection anywhere: none took it, and
    /// none was left out by `excludeClientId` (that one is the user's, online).
    IfOffline,
    /// `"store": "always"`: delivered and kept.
    Always,
}

/// The `store` field: absent, `null` or `false` is today's send_to_user; `true` or
/// `"always"` need `OfflineMax` on this node.
pub fn store_mode(raw: Option<&RawValue>, config: &Config) -> Result<Option<Store>, ApiError> {
    let field = |problem: &str| ApiError::Field {
        field: "store".into(),
        problem: problem.into(),
    };
    let mode = match raw.map(|r| r.get().trim()) {
        None | Some("false") | Some("null") => return Ok(None),
        Some("true") => Store::IfOffline,
        Some("\"always\"") => Store::Always,
        Some(_) => return Err(field("must be true, false or \"always\"")),
    };
    if config.offline_max == 0 {
        return Err(field(
            "needs offline messages on, and this node has OfflineMax = 0",
        ));
    }
    Ok(Some(mode))
}

/// After the push went out: keeps it on the user's owner when `mode` says so.
pub async fn keep(
    router: &Rc<Router>,
    mode: Store,
    fanout: &Fanout,
    system: Arc<str>,
    user_id: Arc<str>,
    message_id: &str,
    frame: SharedFrame,
) -> Result<(), ApiError> {
    if mode == Store::IfOffline && (fanout.delivered > 0 || fanout.skipped) {
        return Ok(());
    }
    let push = Stored {
        message_id: message_id.to_string(),
        frame,
    };
    let kept = router.store_offline(system, user_id, push).await;
    kept.map_err(|e| {
        ApiError::Peer(format!(
            "the node {} that keeps this user's offline messages did not answer ({}); retry",
            e.0, e.1
        ))
    })
}
