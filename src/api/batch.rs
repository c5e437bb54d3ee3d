//! `/api/batch` (issue 17, docs/api-additions.md): up to `MaxBatch` push requests in one body,
//! `{"ops": [{"route": "send_to_group", ...that route's fields}, ...]}`, run one after the
//! other in their order, answered `{"results": [...]}` with one envelope per operation, each
//! what its route alone would have answered. One failing operation fails only itself. Its
//! `X-Wspush-Delivered` is the sum of its operations' deliveries.

use super::error::{envelope, ApiError, Data};
use super::request::decode;
use super::{push, route, Route, Router};
use crate::types::SystemInfo;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::rc::Rc;
use std::sync::Arc;

#[derive(Deserialize)]
struct Batch<'a> {
    #[serde(default, borrow)]
    ops: Option<Vec<&'a RawValue>>,
}

/// The one field of an operation batch reads itself; the route reads the rest (and ignores
/// `route`, as every route ignores fields it does not know).
#[derive(Deserialize)]
struct Operation<'a> {
    #[serde(default, borrow)]
    route: Option<Cow<'a, str>>,
}

/// The routes an operation may name, for the error that names another.
const PUSH_ROUTES: &str =
    "send_to_client, send_to_clients, send_to_group, send_to_system, send_to_user";

/// Runs a batch of `system` (registered, its signature checked on the whole body).
pub async fn run(
    router: &Rc<Router>,
    system: Arc<str>,
    info: &SystemInfo,
    body: &[u8],
) -> Result<Data, ApiError> {
    let req: Batch = decode(body)?;
    let ops = req.ops.ok_or_else(|| ApiError::required("ops"))?;
    if ops.is_empty() {
        return Err(ApiError::Field {
            field: "ops".into(),
            problem: "must not be empty".into(),
        });
    }
    let most = router.shard.config.max_batch;
    if ops.len() > most {
        return Err(ApiError::Limit(format!(
            "ops lists {} operations, more than MaxBatch ({most}): nothing was done, split the batch",
            ops.len()
        )));
    }
    let mut out = Vec::with_capacity(16 + 96 * ops.len());
    let mut delivered = 0;
    out.extend_from_slice(b"{\"results\":[");
    for (i, op) in ops.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // In order: pushes of one batch to one client arrive as listed.
        let result = match push_route(i, op) {
            Ok(route) => push(router, route, system.clone(), info, op.get().as_bytes()).await,
            Err(e) => Err(e),
        };
        delivered += result.as_ref().ok().and_then(Data::delivered).unwrap_or(0);
        out.extend_from_slice(&envelope(&result));
    }
    out.extend_from_slice(b"]}");
    Ok(Data::Batch {
        json: out,
        delivered,
    })
}

/// The push route operation `i` names (`"send_to_group"`, or `"/api/send_to_group"`).
fn push_route(i: usize, op: &RawValue) -> Result<Route, ApiError> {
    let field = |problem: String| ApiError::Field {
        field: format!("ops[{i}].route"),
        problem,
    };
    if !op.get().trim_start().starts_with('{') {
        return Err(ApiError::Field {
            field: format!("ops[{i}]"),
            problem: "must be a JSON object".into(),
        });
    }
    let named: Operation = decode(op.get().as_bytes()).map_err(|e| match e {
        ApiError::Field { problem, .. } => field(problem),
        other => other,
    })?;
    let name = match named.route {
        Some(name) if !name.is_empty() => name,
        _ => return Err(field("is required".into())),
    };
    let path = match name.strip_prefix("/api/") {
        Some(_) => name.to_string(),
        None => format!("/api/{name}"),
    };
    match route(&path) {
        Some(route) if route.is_push() => Ok(route),
        _ => Err(field(format!(
            "{name:?} is not a route a batch takes ({PUSH_ROUTES})"
        ))),
    }
}
