//! The API of group history (issue 15, docs/history.md): register's `history`, send_to_group
//! of a system with history, get_group_history, and bind_to_group's `since`. Decoding and the
//! answers' shapes; where the stream lives is [`crate::route::history`]'s business.

use super::error::{ApiError, Data};
use super::request::{GetGroupHistory, HistoryRequest, Since};
use crate::config::Config;
use crate::route::Router;
use crate::shard::history::Read;
use crate::types::{HistoryOpts, StreamPos, SystemInfo};
use crate::ws::message::{frame_json, write_json_str};
use std::rc::Rc;
use std::sync::Arc;

fn field(field: &str, problem: impl Into<String>) -> ApiError {
    ApiError::Field {
        field: field.into(),
        problem: problem.into(),
    }
}

/// register's `history`, clamped to this node's HistorySize and HistoryTtl. A node with
/// HistorySize = 0 refuses it rather than register a system whose history would keep nothing.
pub fn register_history(
    config: &Config,
    req: Option<HistoryRequest>,
) -> Result<Option<HistoryOpts>, ApiError> {
    let Some(req) = req else {
        return Ok(None);
    };
    if config.history_size == 0 {
        return Err(field(
            "history",
            "is off on this node (HistorySize = 0 in [wspush])",
        ));
    }
    let size = req.size.ok_or_else(|| ApiError::required("history.size"))?;
    if size == 0 {
        return Err(field("history.size", "must be at least 1"));
    }
    let most_ttl = config.history_ttl.as_secs();
    let ttl = req.ttl_seconds.unwrap_or(most_ttl);
    if ttl == 0 {
        return Err(field("history.ttlSeconds", "must be at least 1"));
    }
    Ok(Some(HistoryOpts {
        size: size.min(config.history_size as u64).min(u32::MAX as u64) as u32,
        ttl_seconds: ttl.min(most_ttl).clamp(1, u32::MAX as u64) as u32,
    }))
}

/// The system's history, or the error of a route that needs one.
pub fn needs_history(info: &SystemInfo, system: &str, what: &str) -> Result<HistoryOpts, ApiError> {
    info.history.ok_or_else(|| {
        field(
            what,
            format!(
                "needs group history, and system {system:?} was registered without \"history\""
            ),
        )
    })
}

/// A `since` as sent: both fields required.
pub fn since(name: &str, since: Option<Since>) -> Result<Option<StreamPos>, ApiError> {
    let Some(since) = since else {
        return Ok(None);
    };
    let offset = since
        .offset
        .ok_or_else(|| ApiError::required(&format!("{name}.offset")))?;
    let epoch = since.epoch.filter(|e| !e.is_empty());
    let epoch = epoch.ok_or_else(|| ApiError::required(&format!("{name}.epoch")))?;
    Ok(Some(StreamPos { offset, epoch }))
}

/// get_group_history: `{"epoch","offset","recovered","list":[push...]}`, the list oldest
/// first, each push as its frame carried it.
pub async fn get_group_history(
    router: &Rc<Router>,
    system: Arc<str>,
    info: &SystemInfo,
    req: GetGroupHistory<'_>,
) -> Result<Data, ApiError> {
    let history = needs_history(info, &system, "get_group_history")?;
    let group = super::request::required("groupName", req.group_name)?;
    let since = since("since", req.since)?;
    let limit = req
        .limit
        .map_or(usize::MAX, |l| l.min(usize::MAX as u64) as usize);
    let read = router
        .read_history(system, Arc::from(&*group), history, since, limit)
        .await
        .map_err(|e| ApiError::Peer(e.to_string()))?;
    Ok(Data::Raw(history_json(&read)))
}

/// The data of get_group_history.
pub fn history_json(read: &Read) -> Vec<u8> {
    let size: usize = read.frames.iter().map(|(_, f)| f.len()).sum();
    let mut out = Vec::with_capacity(64 + size);
    out.extend_from_slice(b"{\"epoch\":");
    write_json_str(&mut out, &read.epoch);
    out.extend_from_slice(format!(",\"offset\":{}", read.offset).as_bytes());
    out.extend_from_slice(format!(",\"recovered\":{}", read.recovered).as_bytes());
    out.extend_from_slice(b",\"list\":[");
    for (i, (_, frame)) in read.frames.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(frame_json(frame));
    }
    out.extend_from_slice(b"]}");
    out
}

/// The data of a bind_to_group with `since`.
pub fn recovered_json(recovered: bool) -> Data {
    Data::Raw(format!("{{\"recovered\":{recovered}}}").into_bytes())
}
