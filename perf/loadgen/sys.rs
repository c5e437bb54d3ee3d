//! What the load generator reads from the kernel: the server's memory and CPU time from
//! `/proc/<pid>/{status,stat}`, its own CPU time (`getrusage`), the wall clock used for
//! stamps, the open-files limit, and the socket options that spread connections over many
//! source addresses.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::time::{SystemTime, UNIX_EPOCH};

/// Connections per source address: 127.0.0.2 holds the first 5,000, 127.0.0.3 the next, ...
/// Each (source address, server address) pair has the ephemeral port range to itself
/// (28,232 ports by default), but `connect` looks for a free port among the even ones first
/// (half the range, ~14,000) and scans past every taken one: at 20,000 per address, opening
/// 18,000 connections took 6.8 s instead of 1.5 s and tripled the server's CPU time per
/// connection (measured). 5,000 also leaves room for the TIME_WAIT entries of earlier runs.
pub const CONNS_PER_SOURCE: usize = 5_000;

/// Nanoseconds since the UNIX epoch: the stamp senders put in `data` and receivers subtract.
/// The wall clock (not `Instant`) because sender and receiver may be different processes.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Source address of WebSocket connection number `index` (counted over all worker processes,
/// from the run's random base, see [`run_base`]). Wraps after 250 addresses (1.25 M
/// connections) so the last octet stays in 2..=251.
pub fn ws_source(index: usize) -> Ipv4Addr {
    let n = (index / CONNS_PER_SOURCE) % 250;
    Ipv4Addr::new(127, 0, 0, 2 + n as u8)
}

/// Source address of HTTP worker `worker`: 127.0.1.x, apart from the WebSocket addresses, so
/// the short-lived connections of `--close` never compete with them for ports.
pub fn http_source(worker: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 1, 1 + (worker % 250) as u8)
}

/// A random number in 0..200 picked once per run: the first source address (WebSocket index
/// `run_base() * CONNS_PER_SOURCE`, HTTP worker `run_base()`), so back-to-back runs do not start
/// on the addresses whose ports the previous run left in TIME_WAIT.
pub fn run_base() -> usize {
    static BASE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *BASE.get_or_init(|| (now_ns() / 1_000 % 200) as usize)
}

/// A TCP socket bound to `source` with the port left to `connect` (`IP_BIND_ADDRESS_NO_PORT`):
/// the kernel then picks the port per 4-tuple, not per source address, so more than 28k
/// connections fit on one address and binding never runs out of ports first.
pub fn bound_socket(source: Ipv4Addr) -> io::Result<tokio::net::TcpSocket> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    set_bind_address_no_port(&socket)?;
    socket.bind(SocketAddr::V4(SocketAddrV4::new(source, 0)))?;
    Ok(socket)
}

fn set_bind_address_no_port(socket: &impl AsRawFd) -> io::Result<()> {
    /// `IP_BIND_ADDRESS_NO_PORT` from `<linux/in.h>` (Linux 4.2+).
    const IP_BIND_ADDRESS_NO_PORT: libc::c_int = 24;
    let one: libc::c_int = 1;
    // SAFETY: a valid fd and a pointer to a live c_int of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            IP_BIND_ADDRESS_NO_PORT,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Raises the soft open-files limit to the hard one; returns the soft limit now in force.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a pointer to a live rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

fn rusage_ns(who: libc::c_int) -> u64 {
    // SAFETY: an all-zero rusage is valid; getrusage fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a pointer to a live rusage.
    if unsafe { libc::getrusage(who, &mut ru) } != 0 {
        return 0;
    }
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1_000;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// CPU time (user + system) of this process so far, in nanoseconds.
pub fn self_cpu_ns() -> u64 {
    rusage_ns(libc::RUSAGE_SELF)
}

/// CPU time of this process's waited-for children (the worker processes), in nanoseconds.
pub fn children_cpu_ns() -> u64 {
    rusage_ns(libc::RUSAGE_CHILDREN)
}

/// `VmRSS` of `pid` in bytes.
pub fn rss_bytes(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| io::Error::other(format!("no VmRSS in /proc/{pid}/status")))
}

/// Open file descriptors of `pid`: the entries of `/proc/<pid>/fd` (the server's sockets,
/// listeners and its own few files).
pub fn fd_count(pid: u32) -> io::Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// CPU time (utime + stime, all threads) of `pid` in nanoseconds, from `/proc/<pid>/stat`.
/// Its resolution is one clock tick (10 ms): fine over windows of seconds.
pub fn proc_cpu_ns(pid: u32) -> io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces and parentheses: count fields after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| io::Error::other("malformed /proc/<pid>/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime field 15.
    let field = |n: usize| -> io::Result<u64> {
        fields
            .get(n - 3)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| io::Error::other("malformed /proc/<pid>/stat"))
    };
    let ticks = field(14)? + field(15)?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(ticks * 1_000_000_000 / hz)
}

/// The server as seen from `/proc`, when `--server-pid` is given.
#[derive(Clone, Copy, Debug)]
pub struct Server(pub Option<u32>);

impl Server {
    pub fn cpu_ns(&self) -> Option<u64> {
        self.0.and_then(|pid| proc_cpu_ns(pid).ok())
    }
    pub fn rss(&self) -> Option<u64> {
        self.0.and_then(|pid| rss_bytes(pid).ok())
    }
    pub fn fds(&self) -> Option<usize> {
        self.0.and_then(|pid| fd_count(pid).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_switch_every_20000() {
        assert_eq!(ws_source(0), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(ws_source(4_999), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(ws_source(5_000), Ipv4Addr::new(127, 0, 0, 3));
        assert_eq!(ws_source(249 * 5_000), Ipv4Addr::new(127, 0, 0, 251));
        assert_eq!(ws_source(250 * 5_000), Ipv4Addr::new(127, 0, 0, 2));
        assert!(run_base() < 200);
        assert_eq!(http_source(0), Ipv4Addr::new(127, 0, 1, 1));
    }

    #[test]
    fn reads_own_proc_entries() {
        let pid = std::process::id();
        assert!(rss_bytes(pid).unwrap() > 0);
        assert!(fd_count(pid).unwrap() >= 3);
        proc_cpu_ns(pid).unwrap();
    }
}
