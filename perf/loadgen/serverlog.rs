//! The server's log (its stderr, given as `--server-log`): how many WARN and ERROR lines, and
//! the slow-consumer lines with the client each names and its time.
//!
//! wspush logs with `tracing_subscriber::fmt` (see `src/main.rs`), one event per line:
//! `2026-11-25T11:01:02.058132Z  WARN wspush::shard: <message> client=<id> peer=... core=0`,
//! the time in UTC; no colours when stderr is a file.

use std::collections::HashMap;
use std::io;
use std::path::Path;

/// The part of the slow-consumer line's message that marks it (`src/shard/mod.rs`).
const SLOW_CONSUMER: &str = "slow consumer";

/// What a log holds.
#[derive(Debug, Default)]
pub struct LogScan {
    pub warn: usize,
    pub error: usize,
    /// Slow-consumer lines: the clientId each names and the line's time (ns since the epoch).
    pub slow: Vec<(String, Option<u64>)>,
    /// WARN and ERROR lines that are not slow-consumer lines, and the first of them.
    pub other: usize,
    pub first_other: Option<String>,
}

impl LogScan {
    /// Slow-consumer lines per clientId.
    pub fn slow_by_client(&self) -> HashMap<&str, usize> {
        let mut by = HashMap::new();
        for (id, _) in &self.slow {
            *by.entry(id.as_str()).or_insert(0) += 1;
        }
        by
    }
}

/// Reads and scans the log at `path`.
pub fn scan(path: &Path) -> io::Result<LogScan> {
    Ok(scan_text(&std::fs::read_to_string(path)?))
}

pub fn scan_text(text: &str) -> LogScan {
    let mut s = LogScan::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let time = words.next();
        match words.next() {
            Some("WARN") => s.warn += 1,
            Some("ERROR") => s.error += 1,
            _ => continue,
        }
        if line.contains(SLOW_CONSUMER) {
            let id = field(line, "client").unwrap_or_default().to_string();
            s.slow.push((id, time.and_then(rfc3339_ns)));
        } else {
            s.other += 1;
            s.first_other.get_or_insert_with(|| line.to_string());
        }
    }
    s
}

/// The value of `name=value` in a line (up to the next space: clientIds hold none).
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
}

/// `2026-11-25T11:01:02.058132Z` as nanoseconds since the UNIX epoch.
pub fn rfc3339_ns(s: &str) -> Option<u64> {
    let (date, time) = s.strip_suffix('Z')?.split_once('T')?;
    let mut ymd = date.splitn(3, '-').map(|v| v.parse::<i64>().ok());
    let (y, mo, d) = (ymd.next()??, ymd.next()??, ymd.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.splitn(3, ':').map(|v| v.parse::<u64>().ok());
    let (h, mi, sec) = (t.next()??, t.next()??, t.next()??);
    if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let nanos = format!("{frac:0<9}").parse::<u64>().ok()?;
    let days = u64::try_from(days_from_civil(y, mo, d)).ok()?;
    Some(((days * 24 + h) * 60 + mi) * 60_000_000_000 + sec * 1_000_000_000 + nanos)
}

/// Days from 1970-01-01 to the given proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339_ns("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(rfc3339_ns("1970-01-01T00:00:01.5Z"), Some(1_500_000_000));
        // date -u -d 2026-11-25T11:01:02Z +%s = 1795604462
        assert_eq!(
            rfc3339_ns("2026-11-25T11:01:02.058132Z"),
            Some(1_795_604_462_058_132_000)
        );
        assert_eq!(
            rfc3339_ns("2024-02-29T23:59:59Z"),
            Some(1_709_251_199_000_000_000)
        );
        assert_eq!(rfc3339_ns("2026-11-25 11:01:02Z"), None);
        assert_eq!(rfc3339_ns("garbage"), None);
    }

    #[test]
    fn counts_levels_and_slow_consumers() {
        let log = "\
2026-11-25T11:01:02.058132Z  INFO wspush::runtime: wspush starting http_port=1 cores=1
2026-11-25T11:01:03.000000Z  WARN wspush::shard: slow consumer: outbound queue full, closing with 1008 client=abc-1 peer=127.0.0.2:5 core=0 frames=256 bytes=9
2026-11-25T11:01:04.000000Z  WARN wspush::shard: slow consumer: outbound queue full, closing with 1008 client=abc-2 peer=127.0.0.2:6 core=0 frames=256 bytes=9
2026-11-25T11:01:05.000000Z ERROR wspush::net: accept failed error=EMFILE
2026-11-25T11:01:06.000000Z  WARN wspush::shard: socket not writable in time clients=3
";
        let s = scan_text(log);
        assert_eq!((s.warn, s.error, s.other), (3, 1, 2));
        assert_eq!(s.slow.len(), 2);
        assert_eq!(s.slow[0].0, "abc-1");
        assert_eq!(s.slow[1].1, rfc3339_ns("2026-11-25T11:01:04Z"));
        assert!(s.first_other.as_deref().unwrap().contains("accept failed"));
        assert_eq!(s.slow_by_client().get("abc-2"), Some(&1));
        assert_eq!(field("a clients=3 client=x", "client"), Some("x"));
    }
}
