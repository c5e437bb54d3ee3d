//! Operations routes: `GET /metrics` (Prometheus), `GET /status.json` and `GET /status` (the
//! status page). `/healthz` and `/readyz` stay in the listener's `probe()`.
//!
//! - [`metrics`]: the node's snapshot (every core's counters, summed) and its Prometheus text
//!   format; the counters themselves are in [`crate::counters`].
//! - [`status`]: the JSON of the status page, its rates, and the page itself.
//!
//! A request on any core gathers every core's snapshot with one `Op::Metrics` per core (the
//! same scatter-gather as `get_online_list`), so the data path only ever bumps its own core's
//! `Cell`s.
//!
//! Access: when `[wspush] ApiKey` is set (and `OpsRequireKey` is not turned off) these routes
//! want the key too, given as
//! `Authorization: apikey <key>` (scrapers, curl), as HTTP basic auth with the key as the
//! password and any user name (a browser asks for it: the 401 carries `WWW-Authenticate`), or
//! as `?apikey=<key>` in the URL (a bookmark; the page passes it on to its `/status.json`
//! polls). The query form lands in access logs and browser history: prefer the other two.

pub mod metrics;
pub mod status;

use crate::net::http::{self, Head, Method};
use crate::route::Router;
use base64::Engine;
use metrics::NodeSnapshot;
use std::rc::Rc;

/// The operations routes this module answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Metrics,
    Status,
    StatusJson,
}

/// The route of a head, if it is one of ours (GET only; anything else falls through to 404).
pub fn route(head: &Head) -> Option<Route> {
    if head.method != Some(Method::Get) {
        return None;
    }
    Some(match head.path.as_str() {
        "/metrics" => Route::Metrics,
        "/status" => Route::Status,
        "/status.json" => Route::StatusJson,
        _ => return None,
    })
}

/// A complete answer for the listener to write.
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    /// Extra header lines, each ending in CRLF.
    pub headers: &'static str,
    pub body: Vec<u8>,
}

/// Answers one operations request.
pub async fn respond(router: &Rc<Router>, route: Route, head: &Head) -> Response {
    let shard = &router.shard;
    // OpsRequireKey = false: open, ApiKey or not (the start-up log warned about it).
    let key = (shard.config.ops_require_key).then_some(shard.config.api_key.as_str());
    if !authorized(key, head.authorization.as_deref(), &head.query) {
        return Response {
            status: 401,
            content_type: http::TEXT,
            headers: "WWW-Authenticate: Basic realm=\"wspush\", charset=\"UTF-8\"\r\n",
            body: b"this server wants its ApiKey: `Authorization: apikey <key>`, basic auth \
                    with the key as password, or ?apikey=<key>\n"
                .to_vec(),
        };
    }
    // Never cached: every answer is the state of now.
    const NO_STORE: &str = "Cache-Control: no-store\r\n";
    match route {
        Route::Metrics => Response {
            status: 200,
            content_type: metrics::render::CONTENT_TYPE,
            headers: NO_STORE,
            body: metrics::render::render(&gather(router, false).await).into_bytes(),
        },
        Route::StatusJson => {
            let snapshot = gather(router, true).await;
            Response {
                status: 200,
                content_type: http::JSON,
                headers: NO_STORE,
                body: status::json(shard, &snapshot).to_string().into_bytes(),
            }
        }
        Route::Status => Response {
            status: 200,
            content_type: "text/html; charset=utf-8",
            headers: NO_STORE,
            body: status::PAGE.as_bytes().to_vec(),
        },
    }
}

/// Every core's snapshot (`detail`: with systems and groups, for the status page), the
/// side threads' counters, and `/proc/self`.
pub async fn gather(router: &Rc<Router>, detail: bool) -> NodeSnapshot {
    let shard = &router.shard;
    // /proc/self/fd lists one entry per connection: read it off the cores. A core that is
    // shutting down does not answer; the scrape goes on without it.
    let process = glommio::executor().spawn_blocking(metrics::process::read_process);
    let (cores, process) = futures_util::future::join(router.gather_metrics(detail), process).await;
    let (start_time, started) = crate::counters::process_started();
    NodeSnapshot {
        node: shard.node.to_string(),
        version: env!("CARGO_PKG_VERSION"),
        cluster: router.cluster().is_some(),
        ready: crate::readiness::is_ready() && !shard.draining.get(),
        draining: shard.draining.get(),
        uptime: started.elapsed(),
        start_time,
        cores,
        process,
        etcd: router.cluster().map(|_| crate::counters::ETCD.snapshot()),
        webhook: Some(crate::webhook::stats()),
    }
}

/// Whether a request may see the operations routes: always without a key; with one, when the
/// `Authorization` header (`apikey <key>`, or `Basic` with the key as password) or the
/// `apikey` query parameter carries it. Compared in constant time by [`crate::auth`].
pub fn authorized(key: Option<&str>, authorization: Option<&str>, query: &str) -> bool {
    let Some(key) = key.filter(|k| !k.is_empty()) else {
        return true;
    };
    let matches =
        |given: &str| crate::auth::check_api_key(key, Some(&format!("apikey {given}"))).is_ok();
    if let Some(value) = authorization.map(str::trim) {
        let (scheme, rest) = value.split_once([' ', '\t']).unwrap_or((value, ""));
        if scheme.eq_ignore_ascii_case("apikey") {
            return crate::auth::check_api_key(key, Some(value)).is_ok();
        }
        if scheme.eq_ignore_ascii_case("basic") {
            // RFC 7617: base64("user:password"); the user name is not checked.
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(rest.trim())
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok());
            if let Some((_, password)) = decoded.as_deref().and_then(|c| c.split_once(':')) {
                return matches(password);
            }
            return false;
        }
    }
    form_urlencoded::parse(query.as_bytes())
        .find(|(name, _)| name == "apikey")
        .is_some_and(|(_, given)| matches(&given))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "0123456789abcdef-key";

    #[test]
    fn no_key_lets_everyone_in() {
        assert!(authorized(None, None, ""));
        assert!(authorized(Some(""), None, ""));
    }

    #[test]
    fn key_from_header_basic_auth_or_query() {
        assert!(!authorized(Some(KEY), None, ""));
        assert!(authorized(Some(KEY), Some(&format!("apikey {KEY}")), ""));
        assert!(authorized(Some(KEY), Some(&format!("ApiKey  {KEY}")), ""));
        assert!(!authorized(Some(KEY), Some("apikey nope"), ""));
        let basic = |user_pass: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(user_pass)
            )
        };
        assert!(authorized(
            Some(KEY),
            Some(&basic(&format!("ops:{KEY}"))),
            ""
        ));
        assert!(authorized(Some(KEY), Some(&basic(&format!(":{KEY}"))), ""));
        assert!(!authorized(Some(KEY), Some(&basic("ops:nope")), ""));
        assert!(!authorized(Some(KEY), Some("Basic !!!"), ""));
        assert!(authorized(Some(KEY), None, &format!("x=1&apikey={KEY}")));
        assert!(!authorized(Some(KEY), None, "apikey=nope"));
        // A wrong header is not rescued by the query, nor the other way round.
        assert!(!authorized(
            Some(KEY),
            Some("apikey nope"),
            &format!("apikey={KEY}")
        ));
    }
}
