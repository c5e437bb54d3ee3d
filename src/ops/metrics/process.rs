//! What `/proc/self` says about the process, for the `process_*` families of `/metrics` and
//! the status page. Read off the cores (the caller uses `spawn_blocking`) when a scrape asks.

/// What `/proc/self` says about the process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessStats {
    pub rss_bytes: u64,
    pub open_fds: u64,
    pub max_fds: u64,
    pub cpu_seconds: f64,
}

/// Reads [`ProcessStats`]. Listing `/proc/self/fd` costs time in proportion to the open files
/// (one per connection), so the caller runs this off the cores (`spawn_blocking`).
pub fn read_process() -> ProcessStats {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0);
    let open_fds = std::fs::read_dir("/proc/self/fd")
        .map(|dir| dir.count() as u64)
        .unwrap_or(0);
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let max_fds = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0);
    // utime and stime, fields 14 and 15, counted after the `(comm)` field (which may hold
    // spaces), in USER_HZ ticks: 100 a second on every Linux ABI.
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let ticks: u64 = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|t| t.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    ProcessStats {
        rss_bytes: rss_kib * 1024,
        open_fds,
        max_fds,
        cpu_seconds: ticks as f64 / 100.0,
    }
}
