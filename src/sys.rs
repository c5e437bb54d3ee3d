//! The few raw socket calls glommio does not expose. All `unsafe` in wspush lives here.

use std::io;
use std::os::fd::RawFd;

/// How much to shut down; mirrors `libc::SHUT_*`.
#[derive(Debug, Clone, Copy)]
pub enum Shutdown {
    Write,
    Both,
}

/// `shutdown(2)` on a socket we still own. Waking the reader with EOF is how a core ends a
/// connection it decided to drop (pong timeout, slow consumer, close_client): the reader task then
/// runs the one and only cleanup path.
pub fn shutdown(fd: RawFd, how: Shutdown) {
    let how = match how {
        Shutdown::Write => libc::SHUT_WR,
        Shutdown::Both => libc::SHUT_RDWR,
    };
    // SAFETY: plain syscall on an fd owned by a live TcpStream; errors (ENOTCONN) are harmless.
    unsafe {
        libc::shutdown(fd, how);
    }
}

/// Most slices handed to one `sendmsg`; well under IOV_MAX (1024).
pub const MAX_IOV: usize = 64;

/// Non-blocking vectored send of `bufs` in one syscall. `Ok(n)` bytes went out (possibly fewer
/// than offered); `WouldBlock` when the socket buffer is full. Never raises SIGPIPE.
pub fn send_vectored(fd: RawFd, bufs: &[&[u8]]) -> io::Result<usize> {
    let count = bufs.len().min(MAX_IOV);
    let mut iov: [libc::iovec; MAX_IOV] = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; MAX_IOV];
    for (slot, buf) in iov.iter_mut().zip(&bufs[..count]) {
        slot.iov_base = buf.as_ptr() as *mut libc::c_void;
        slot.iov_len = buf.len();
    }
    // SAFETY: a zeroed msghdr is valid; it points at `iov`, whose entries borrow `bufs` for the
    // duration of the call only.
    let n = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = iov.as_mut_ptr();
        msg.msg_iovlen = count as _;
        libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Number of CPUs this process may run on (its affinity mask), at least 1.
pub fn available_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Hands a std Unix socket to the current glommio executor (the shutdown doorbell).
pub fn glommio_unix_stream(socket: std::os::unix::net::UnixStream) -> glommio::net::UnixStream {
    use std::os::fd::{FromRawFd, IntoRawFd};
    let _ = socket.set_nonblocking(true);
    // SAFETY: `into_raw_fd` gives up ownership, so the fd is owned by exactly one stream.
    unsafe { glommio::net::UnixStream::from_raw_fd(socket.into_raw_fd()) }
}

/// Binds `host:port` with SO_REUSEPORT and listens: one such socket per core, all made before
/// the cores start, so a port that is taken fails the start at once and no outgoing connection
/// can grab the port between two cores' binds. It is non-blocking (see [`accept_now`]). With
/// `nodelay`, TCP_NODELAY is set on it, and Linux copies it to every socket it accepts: one
/// `setsockopt` per core instead of one per connection.
pub fn reuseport_listener(
    host: std::net::Ipv4Addr,
    port: u16,
    backlog: i32,
    nodelay: bool,
) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    // SO_REUSEADDR: bind even while the connections of a server stopped a moment ago wait in
    // TIME_WAIT on this port (a restart); a port something listens on is still refused
    // (see `ensure_port_free`).
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    if nodelay {
        socket.set_nodelay(true)?;
    }
    let addr = std::net::SocketAddr::from((host, port));
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(socket.into())
}

/// One connection waiting on the non-blocking listener `fd`, with its peer's address, taken with
/// a single `accept4` (close-on-exec; the accepted socket is blocking, as glommio's are: every
/// read and write of it passes MSG_DONTWAIT); `None` when none is waiting.
pub fn accept_now(fd: RawFd) -> io::Result<Option<(socket2::Socket, std::net::SocketAddr)>> {
    // SAFETY: the caller passes the fd of a listener it owns and keeps open for this call; the
    // borrow does not outlive it.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    loop {
        match socket2::SockRef::from(&fd).accept() {
            Ok((socket, addr)) => match addr.as_socket() {
                Some(peer) => return Ok(Some((socket, peer))),
                // Not an IP peer (cannot happen on a TCP listener): drop it, take the next.
                None => continue,
            },
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            // A connection reset while it waited, or a signal: take the next one.
            Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Fails if anything already listens on `host:port`. SO_REUSEPORT would otherwise let a
/// second wspush (or anything of the same user) silently share the port with this one.
pub fn ensure_port_free(host: std::net::Ipv4Addr, port: u16) -> io::Result<()> {
    std::net::TcpListener::bind((host, port)).map(drop)
}

/// TCP keepalive on a node link: probes after `idle` without traffic, every `interval`, and
/// the kernel resets the socket after `retries` unanswered ones. A link whose peer vanished
/// (host down, cable cut: no FIN, no RST) otherwise stays ESTABLISHED for ever on the side
/// that has nothing to send.
pub fn set_keepalive(
    fd: RawFd,
    idle: std::time::Duration,
    interval: std::time::Duration,
    retries: u32,
) -> io::Result<()> {
    // SAFETY: the caller passes the fd of a socket it owns and keeps open for this call; the
    // borrow does not outlive it.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(idle)
        .with_interval(interval)
        .with_retries(retries);
    socket2::SockRef::from(&fd).set_tcp_keepalive(&keepalive)
}

/// Hands a listening socket to the current glommio executor.
pub fn glommio_listener(listener: std::net::TcpListener) -> glommio::net::TcpListener {
    use std::os::fd::{FromRawFd, IntoRawFd};
    // SAFETY: `into_raw_fd` gives up ownership, so the fd is owned by exactly one listener.
    unsafe { glommio::net::TcpListener::from_raw_fd(listener.into_raw_fd()) }
}

/// The first IPv4 address of an interface that is up and not loopback, as the original picks
/// its advertised host.
pub fn first_non_loopback_ipv4() -> Option<std::net::Ipv4Addr> {
    let mut found = None;
    // SAFETY: getifaddrs fills a list we only read and then free with freeifaddrs; every pointer
    // is checked for null before use and the list is not used after it is freed.
    unsafe {
        let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
        if libc::getifaddrs(&mut list) != 0 {
            return None;
        }
        let mut cur = list;
        while !cur.is_null() {
            let ifa = &*cur;
            let up = ifa.ifa_flags & libc::IFF_UP as u32 != 0;
            let loopback = ifa.ifa_flags & libc::IFF_LOOPBACK as u32 != 0;
            if up
                && !loopback
                && !ifa.ifa_addr.is_null()
                && (*ifa.ifa_addr).sa_family as i32 == libc::AF_INET
            {
                let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                found = Some(std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
                break;
            }
            cur = ifa.ifa_next;
        }
        libc::freeifaddrs(list);
    }
    found
}

/// Raises this process's soft open-files limit to its hard limit (as Go's runtime does for the
/// original) and returns the soft limit now in force. Every WebSocket is one file.
pub fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

/// The least locked memory glommio starts an executor with (it refuses below this).
pub const MIN_MEMLOCK: u64 = 512 * 1024;

/// Whether this process may run glommio's executors: a locked-memory limit of at least
/// [`MIN_MEMLOCK`], and io_uring allowed (a ring of four entries is set up and closed). The error
/// is one line that says what to change, since the executor's own failure (`MemLockLimit` or
/// "Operation not permitted" from deep inside glommio) does not.
pub fn check_io_uring() -> Result<(), String> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we own.
    let got = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } == 0;
    if got && limit.rlim_cur != libc::RLIM_INFINITY && limit.rlim_cur < MIN_MEMLOCK {
        return Err(format!(
            "cannot start: the locked-memory limit is {} KiB and glommio needs at least {} KiB: \
             raise it, e.g. docker run --ulimit memlock=8388608:8388608, or LimitMEMLOCK=8M in \
             systemd",
            limit.rlim_cur / 1024,
            MIN_MEMLOCK / 1024
        ));
    }
    // struct io_uring_params: 120 bytes, zeroed = no flags.
    let mut params = [0u64; 15];
    // SAFETY: io_uring_setup reads and writes `params` (120 bytes, ours); the fd it returns is
    // closed at once.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4u32, params.as_mut_ptr()) };
    if fd >= 0 {
        // SAFETY: closing the ring fd just created, owned by nobody else.
        unsafe {
            libc::close(fd as RawFd);
        }
        return Ok(());
    }
    let e = io::Error::last_os_error();
    Err(match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::ENOSYS) => format!(
            "cannot start: io_uring is not allowed here ({e}). In a container, the seccomp \
             profile blocks it (Docker 25 and later do by default): run with \
             --security-opt seccomp=unconfined, or a profile that allows io_uring_setup, \
             io_uring_enter and io_uring_register; on the host, check sysctl \
             kernel.io_uring_disabled (must be 0)"
        ),
        Some(libc::ENOMEM) => format!(
            "cannot start: io_uring has no locked memory ({e}): raise the memlock limit, \
             e.g. docker run --ulimit memlock=8388608:8388608, or LimitMEMLOCK=8M in systemd"
        ),
        _ => format!("cannot start: io_uring_setup failed: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn accept_now_takes_waiting_connections_with_their_address_and_nodelay() {
        let listener = reuseport_listener(std::net::Ipv4Addr::LOCALHOST, 0, 16, true).unwrap();
        let addr = listener.local_addr().unwrap();
        assert!(
            accept_now(listener.as_raw_fd()).unwrap().is_none(),
            "none waiting"
        );
        let client = std::net::TcpStream::connect(addr).unwrap();
        let mut taken = None;
        for _ in 0..100 {
            taken = accept_now(listener.as_raw_fd()).unwrap();
            if taken.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let (socket, peer) = taken.expect("the waiting connection");
        assert_eq!(peer, client.local_addr().unwrap());
        assert!(
            socket.nodelay().unwrap(),
            "TCP_NODELAY comes from the listener"
        );
        assert!(
            !socket.nonblocking().unwrap(),
            "blocking, as glommio's accepted sockets"
        );
        let plain = reuseport_listener(std::net::Ipv4Addr::LOCALHOST, 0, 16, false).unwrap();
        let _client = std::net::TcpStream::connect(plain.local_addr().unwrap()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let (socket, _) = accept_now(plain.as_raw_fd()).unwrap().expect("accepted");
        assert!(
            !socket.nodelay().unwrap(),
            "a listener without nodelay passes none on"
        );
    }
}
