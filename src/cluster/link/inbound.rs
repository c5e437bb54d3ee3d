//! The accepting side of node links: the per-core and per-address limits on inbound links
//! ([`Inbound`]) and [`serve_peer`], which runs the handshake and then each request of the
//! peer as a task of its own, answering in completion order.

use super::socket::{read_loop, tune, write_loop, LinkAuth, Outbox, PushError, Shared};
use crate::cluster::handshake;
use crate::cluster::proto::{Frame, RemoteOp, RemoteReply};
use glommio::net::TcpStream;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddrV4};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// How often a peer that keeps refusing the handshake the same way is logged again, per link.
pub(super) const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(60);

/// Why an inbound link was refused before its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitRefusal {
    /// This core holds MaxNodeLinksPerCore inbound links.
    Core(usize),
    /// This core holds MaxNodeLinksPerPeer inbound links from that address.
    Peer(usize),
}

/// This core's inbound node links, counted in all and per remote address, so a stranger
/// cannot hold an unbounded number of half-open handshakes (or a peer an unbounded number of
/// links).
#[derive(Debug)]
pub struct Inbound {
    per_core: usize,
    per_peer: usize,
    total: Cell<usize>,
    by_ip: RefCell<HashMap<IpAddr, usize>>,
    /// When each (address, reason) refusal was last logged at WARN: a misconfigured node
    /// retrying every 2 s is reported once a minute, not every time.
    logged: RefCell<HashMap<(IpAddr, &'static str), Instant>>,
}

/// Refusals remembered for [`Inbound::first_in_a_while`]; past this many addresses (a flood
/// from many sources) the memory is dropped and the per-core 1/s throttle alone bounds the log.
const LOGGED_REFUSALS: usize = 256;

/// One admitted inbound link; its slot is given back on drop.
pub struct InboundSlot {
    inbound: Rc<Inbound>,
    ip: IpAddr,
}

impl Drop for InboundSlot {
    fn drop(&mut self) {
        let inbound = &self.inbound;
        inbound.total.set(inbound.total.get().saturating_sub(1));
        let mut by_ip = inbound.by_ip.borrow_mut();
        if let Some(n) = by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                by_ip.remove(&self.ip);
            }
        }
    }
}

impl Inbound {
    pub fn new(per_core: usize, per_peer: usize) -> Rc<Inbound> {
        Rc::new(Inbound {
            per_core,
            per_peer,
            total: Cell::new(0),
            by_ip: RefCell::default(),
            logged: RefCell::default(),
        })
    }

    /// Whether a refusal of `reason` from `ip` was not logged in the last
    /// [`REFUSAL_LOG_EVERY`] (and notes it as logged now).
    pub fn first_in_a_while(&self, ip: IpAddr, reason: &'static str) -> bool {
        let mut logged = self.logged.borrow_mut();
        let now = Instant::now();
        if let Some(at) = logged.get(&(ip, reason)) {
            if now.duration_since(*at) < REFUSAL_LOG_EVERY {
                return false;
            }
        }
        if logged.len() >= LOGGED_REFUSALS {
            logged.retain(|_, at| now.duration_since(*at) < REFUSAL_LOG_EVERY);
            if logged.len() >= LOGGED_REFUSALS {
                logged.clear();
            }
        }
        logged.insert((ip, reason), now);
        true
    }

    /// A slot for one more link from `ip`, or why not.
    pub fn admit(self: &Rc<Self>, ip: IpAddr) -> Result<InboundSlot, LimitRefusal> {
        let total = self.total.get();
        if total >= self.per_core {
            return Err(LimitRefusal::Core(total));
        }
        let mut by_ip = self.by_ip.borrow_mut();
        let from_ip = by_ip.entry(ip).or_insert(0);
        if *from_ip >= self.per_peer {
            return Err(LimitRefusal::Peer(*from_ip));
        }
        *from_ip += 1;
        self.total.set(total + 1);
        Ok(InboundSlot {
            inbound: self.clone(),
            ip,
        })
    }
}

/// Serves one accepted peer connection: first the handshake (nothing is decoded before the peer
/// proved it holds the key), then each request runs as its own task (`run`, told which node
/// asks), answers go back in completion order. A malformed frame closes this link only.
/// Returns the handshake's failure, for the caller to count and log.
pub async fn serve_peer<F, Fut>(
    mut stream: TcpStream,
    core: usize,
    auth: &LinkAuth,
    run: F,
) -> Result<(), handshake::Refused>
where
    F: Fn(SocketAddrV4, RemoteOp) -> Fut + 'static,
    Fut: Future<Output = RemoteReply> + 'static,
{
    let peer = stream.peer_addr().ok();
    tune(&stream);
    let from = handshake::accept(&mut stream, &auth.key, auth.node).await?;
    tracing::debug!(peer = ?peer, node = %from, core, "inbound node link up");
    let stream = Shared(Rc::new(RefCell::new(stream)));
    let outbox = Rc::new(Outbox::default());
    let writer = {
        let (stream, outbox) = (stream.clone(), outbox.clone());
        glommio::spawn_local(async move {
            let closer = stream.closer();
            if let Err(e) = write_loop(stream, outbox.clone()).await {
                // Answers can no longer leave: end the reader too, instead of running requests
                // whose answers would pile up unsent.
                tracing::debug!(peer = ?peer, core, error = %e, "node link write failed");
                outbox.close();
                closer.shutdown();
            }
        })
    };
    let run = Rc::new(run);
    let closer = Rc::new(stream.closer());
    let result = read_loop(stream, |frame| match frame {
        Frame::Request { id, op } => {
            let outbox = outbox.clone();
            let run = run.clone();
            let closer = closer.clone();
            glommio::spawn_local(async move {
                let reply = run(from, op).await;
                match outbox.push(&Frame::Response { id, reply }) {
                    Ok(()) => {}
                    Err(PushError::TooLarge(n)) => {
                        tracing::warn!(peer = ?peer, core, bytes = n,
                            "node-link reply over the frame limit; answering Failed instead");
                        let why = format!("reply of {n} bytes is over the node-link frame limit");
                        let _ = outbox.push(&Frame::Response { id, reply: RemoteReply::Failed(why) });
                    }
                    Err(PushError::Full) => {
                        tracing::warn!(peer = ?peer, core, "closing node link: the peer does not read its answers");
                        outbox.close();
                        closer.shutdown();
                    }
                    // The link is gone; the peer's call has failed already.
                    Err(PushError::Closed) => {}
                }
            })
            .detach();
            Ok(())
        }
        Frame::Response { .. } => Err("peer sent a response on its outbound link".into()),
    })
    .await;
    if let Err(e) = result {
        tracing::warn!(peer = ?peer, core, error = %e, "closing node link");
    }
    outbox.close();
    let _ = writer.await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbound_links_are_limited_per_core_and_per_address() {
        let inbound = Inbound::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = inbound.admit(a).unwrap();
        let _a2 = inbound.admit(a).unwrap();
        assert_eq!(inbound.admit(a).err(), Some(LimitRefusal::Peer(2)));
        let _b1 = inbound.admit(b).unwrap();
        assert_eq!(inbound.admit(b).err(), Some(LimitRefusal::Core(3)));
        drop(a1);
        let _b2 = inbound.admit(b).unwrap();
        assert_eq!(inbound.by_ip.borrow()[&a], 1);
        // A refusal is logged once a minute per address and reason.
        assert!(inbound.first_in_a_while(a, "secret_mismatch"));
        assert!(!inbound.first_in_a_while(a, "secret_mismatch"));
        assert!(inbound.first_in_a_while(a, "timeout"));
        assert!(inbound.first_in_a_while(b, "secret_mismatch"));
    }
}
