//! Shard threads: one OS thread per `--threads`, each running a current-thread tokio runtime
//! that owns its connections and its [`Stats`].
//!
//! Why not one multi-thread runtime: a connection's reader never moves between threads, so its
//! counters are written by one thread only (plain stores, no shared cache lines), and the
//! shard's scratch read buffer (see `ws.rs`) is a thread-local shared by all its connections.
//! The controller (the main thread) only spawns tasks onto shards and reads their counters.

use crate::stats::{Snapshot, Stats};
use std::future::Future;
use std::sync::Arc;
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

struct Shard {
    handle: Handle,
    stats: Arc<Stats>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

pub struct Shards {
    shards: Vec<Shard>,
}

impl Shards {
    /// Starts `n` shard threads (at least one).
    pub fn start(n: usize) -> std::io::Result<Shards> {
        let mut shards = Vec::new();
        for i in 0..n.max(1) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = rt.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            let thread = std::thread::Builder::new()
                .name(format!("shard-{i}"))
                .spawn(move || {
                    // Spawned tasks run while this thread sits in block_on; dropping the runtime
                    // afterwards drops every task still alive (and closes its sockets).
                    rt.block_on(async {
                        let _ = stopped.await;
                    });
                })?;
            shards.push(Shard {
                handle,
                stats: Arc::new(Stats::default()),
                stop: Some(stop),
                thread: Some(thread),
            });
        }
        Ok(Shards { shards })
    }

    /// Runs `make(stats)` on shard `i % len`, with that shard's counters.
    pub fn spawn<F, Fut>(&self, i: usize, make: F) -> JoinHandle<Fut::Output>
    where
        F: FnOnce(Arc<Stats>) -> Fut,
        Fut: Future + Send + 'static,
        Fut::Output: Send + 'static,
    {
        let shard = &self.shards[i % self.shards.len()];
        shard.handle.spawn(make(shard.stats.clone()))
    }

    /// Counters of every shard added up, with this process's CPU time so far in `cpu_ns`.
    pub fn snapshot(&self) -> Snapshot {
        let mut total = Snapshot::default();
        for s in &self.shards {
            total.add(&s.stats.snapshot());
        }
        total.cpu_ns = crate::sys::self_cpu_ns();
        total
    }
}

impl Drop for Shards {
    fn drop(&mut self) {
        for s in &mut self.shards {
            if let Some(stop) = s.stop.take() {
                let _ = stop.send(());
            }
        }
        for s in &mut self.shards {
            if let Some(t) = s.thread.take() {
                let _ = t.join();
            }
        }
    }
}
