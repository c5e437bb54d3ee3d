//! The raw syscalls of wspush-floor; all its `unsafe` lives here. Errors the caller cannot act
//! on are folded: a failed `read` reads as end of stream, a failed `accept4` as "none left".

use std::io;
use std::net::Ipv4Addr;

/// `read(2)` found nothing to read (EAGAIN).
pub struct WouldBlock;

pub const EMPTY_EVENT: libc::epoll_event = libc::epoll_event { events: 0, u64: 0 };

/// `-1` as the last OS error.
fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Writing to a socket whose peer is gone then fails with EPIPE instead of killing the process.
pub fn ignore_sigpipe() {
    // SAFETY: setting a signal's disposition to SIG_IGN has no preconditions.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}

/// Raises the soft limit of open files to the hard one (20,000 connections need it).
pub fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit for the kernel to fill, then to read.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn set_int(fd: i32, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: `value` is a c_int that lives across the call, its size passed with it.
    check(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// A non-blocking listening socket on `host:port`. Set once here, inherited by every accepted
/// socket: `TCP_NODELAY` (Linux copies it at accept). With `defer_accept`, `TCP_DEFER_ACCEPT`
/// (1 s): `accept4` returns a connection only once its first bytes arrived, so the first
/// `read` finds them. Returns the socket and its port (the one the kernel picked for port 0).
pub fn listen(host: Ipv4Addr, port: u16, defer_accept: bool) -> io::Result<(i32, u16)> {
    // SAFETY: plain socket creation; the fd is ours.
    let fd = check(unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    })?;
    set_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    set_int(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)?;
    if defer_accept {
        set_int(fd, libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT, 1)?;
    }
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(host).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: `addr` is a valid sockaddr_in of the size given.
    check(unsafe {
        libc::bind(
            fd,
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    })?;
    // SAFETY: `fd` is a bound socket.
    check(unsafe { libc::listen(fd, 4096) })?;
    let mut bound = addr;
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: `bound` is writable for `len` bytes, which the kernel updates.
    check(unsafe {
        libc::getsockname(fd, (&mut bound as *mut libc::sockaddr_in).cast(), &mut len)
    })?;
    Ok((fd, u16::from_be(bound.sin_port)))
}

pub fn epoll_create() -> io::Result<i32> {
    // SAFETY: no pointers involved.
    check(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })
}

/// Adds `fd` for level-triggered readability, tagged `data`.
pub fn epoll_add(epoll: i32, fd: i32, data: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: data,
    };
    // SAFETY: `ev` is a valid epoll_event for the call's duration.
    check(unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, fd, &mut ev) }).map(drop)
}

/// Waits for events (no timeout); 0 when interrupted.
pub fn epoll_wait(epoll: i32, events: &mut [libc::epoll_event]) -> usize {
    let max = events.len().min(i32::MAX as usize) as libc::c_int;
    // SAFETY: `events` is writable for `max` entries.
    let n = unsafe { libc::epoll_wait(epoll, events.as_mut_ptr(), max, -1) };
    n.max(0) as usize
}

/// One connection off the listen queue, non-blocking; `None` when there is none (or it
/// failed: the level-triggered listener reports the rest again).
pub fn accept(listener: i32) -> Option<i32> {
    // SAFETY: null address pointers are allowed (the peer address is not wanted).
    let fd = unsafe {
        libc::accept4(
            listener,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    (fd >= 0).then_some(fd)
}

/// One `read(2)`: `Ok(0)` at the end of the stream or on an error, `Err` if nothing was there.
pub fn read(fd: i32, buf: &mut [u8]) -> Result<usize, WouldBlock> {
    // SAFETY: `buf` is writable for `buf.len()` bytes.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n >= 0 {
        return Ok(n as usize);
    }
    match io::Error::last_os_error().raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EINTR) => Err(WouldBlock),
        _ => Ok(0),
    }
}

/// One `write(2)`; whether it took all of `bytes`. The floor never queues: a socket that
/// cannot take a whole frame or answer at once is the caller's to close.
pub fn write_all_once(fd: i32, bytes: &[u8]) -> bool {
    // SAFETY: `bytes` is readable for `bytes.len()` bytes.
    let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
    n >= 0 && n as usize == bytes.len()
}

pub fn close(fd: i32) {
    // SAFETY: the caller owns `fd` and forgets it after this call.
    unsafe { libc::close(fd) };
}
