//! The cross-core half of routing: an [`Op`] sent to the core that owns the state, run there on
//! its [`crate::shard::Shard`], and its [`Reply`] carried back. The pending table matches answers to calls;
//! [`serve_cores`] is the receiver loop every core runs on its end of the channel mesh.

use super::{MemberEvent, Router};
use crate::shard::inbox::{CoreMsg, Op, Reply, Skip};
use crate::shard::BoundHere;
use glommio::channels::channel_mesh::Receivers;
use glommio::channels::local_channel;
use glommio::{GlommioError, ResourceType};
use std::rc::Rc;

impl Router {
    /// Runs `op` on core `core` and waits for its answer (local fast path first).
    pub async fn call(self: &Rc<Self>, core: usize, op: Op) -> Reply {
        if core == self.shard.id {
            return self.run_here(op).await;
        }
        if core >= self.shard.nr_cores {
            return Reply::Done(false);
        }
        let (tx, rx) = local_channel::new_bounded(1);
        let tag = self.next_tag.get();
        self.next_tag.set(tag + 1);
        self.pending.borrow_mut().insert(tag, tx);
        let msg = CoreMsg::Request {
            from: self.shard.id,
            tag,
            op,
        };
        self.shard.metrics.core_requests.inc();
        if self.mesh.send_to(core, msg).await.is_err() {
            self.pending.borrow_mut().remove(&tag);
            return Reply::Unreachable;
        }
        rx.recv().await.unwrap_or(Reply::Unreachable)
    }

    /// Runs `op` on this core: at once when it needs no waiting, else as a task of its own.
    pub(super) async fn run_here(self: &Rc<Self>, op: Op) -> Reply {
        match self.execute_sync(op) {
            Ok(reply) => reply,
            Err(op) => Box::pin(self.clone().execute_async(op)).await,
        }
    }

    /// Ops that complete without waiting; `Err(op)` for those that must.
    fn execute_sync(self: &Rc<Self>, op: Op) -> Result<Reply, Op> {
        let shard = &self.shard;
        Ok(match op {
            Op::Deliver {
                targets,
                system,
                frame,
            } => Reply::Count(shard.deliver_local(&targets, &system, &frame)),
            Op::GroupPush {
                system,
                group,
                frame,
                skip,
            } => {
                let skip = Skip::on_core(skip, shard.id);
                Reply::Count(shard.group_push_local(&system, &group, &frame, skip))
            }
            Op::OnlineList { system, group } => {
                Reply::List(shard.online_list_local(&system, &group))
            }
            Op::Close {
                slot,
                generation,
                system,
                kick,
            } => Reply::Done(shard.close_local(slot, generation, &system, kick)),
            Op::UserClaim {
                system,
                user_id,
                client_id,
                take,
            } => {
                let mut holders = shard.holders.borrow_mut();
                Reply::Claimed(holders.claim(&system, &user_id, &client_id, take))
            }
            Op::UserRelease {
                system,
                user_id,
                client_id,
            } => {
                (shard.holders.borrow_mut()).release(&system, &user_id, &client_id);
                Reply::Done(true)
            }
            Op::AddSystem { system, info } => {
                shard.learn_system(&system, info, false);
                Reply::Done(true)
            }
            Op::IsOnline {
                slot,
                generation,
                system,
            } => Reply::Done(shard.is_online_local(slot, generation, &system)),
            Op::SystemPush {
                system,
                frame,
                skip,
            } => {
                let skip = Skip::on_core(skip, shard.id);
                Reply::Count(shard.system_push_local(&system, &frame, skip))
            }
            Op::UserPush {
                system,
                user_id,
                frame,
                skip,
            } => {
                let skip = Skip::on_core(skip, shard.id);
                match shard.user_push_local(&system, &user_id, &frame, skip) {
                    (n, true) => Reply::CountSkipped(n),
                    (n, false) => Reply::Count(n),
                }
            }
            Op::Presence { system, group } => Reply::Members(shard.presence_local(&system, &group)),
            Op::Stats { system } => Reply::Stats(shard.stats_local(&system)),
            Op::Metrics { detail } => Reply::Metrics(Box::new(self.metrics_snapshot(detail))),
            Op::GiveUpClients => Reply::Count(shard.give_up_clients()),
            Op::HistoryRead {
                system,
                group,
                history,
                since,
                limit,
            } => Reply::History(self.read_here(&system, &group, &history, since.as_ref(), limit)),
            Op::OfflineStore {
                system,
                user_id,
                push,
            } => {
                self.store_here(&system, &user_id, *push);
                Reply::Done(true)
            }
            Op::Occupancy {
                system,
                group,
                holder,
                seq,
                present,
            } => {
                self.occupancy_here(&system, &group, holder, seq, present);
                Reply::Done(true)
            }
            Op::OfflineTake { system, user_id } => {
                Reply::Offline(self.take_here(&system, &user_id))
            }
            op @ (Op::Bind { .. }
            | Op::Register { .. }
            | Op::Unbind { .. }
            | Op::HistoryPush { .. }) => return Err(op),
        })
    }

    /// The ops that wait: a first bind and an unbind announce to the group everywhere, a
    /// register tells every core.
    async fn execute_async(self: Rc<Self>, op: Op) -> Reply {
        let shard = &self.shard;
        match op {
            Op::Bind {
                slot,
                generation,
                system,
                group,
                user_id,
                extend,
                resume,
            } => {
                let user: std::sync::Arc<str> = std::sync::Arc::from(&*user_id);
                let BoundHere {
                    conn,
                    first,
                    old_user,
                } = match shard.bind_local(slot, generation, &system, &group, user_id, extend) {
                    Ok(Some(bound)) => bound,
                    Ok(None) => return Reply::Done(false),
                    Err(why) => return Reply::Refused(why),
                };
                // A bind with a userId takes that user's offline messages (docs/history.md).
                if !user.is_empty() && shard.config.offline_max > 0 {
                    let deliver = self.clone().deliver_offline(conn.clone(), user.clone());
                    glommio::spawn_local(deliver).detach();
                }
                if let Some(old_user) = old_user {
                    self.user_changed(&conn, &old_user, &user);
                }
                // In the bind's own step: no push of the group can reach the client unseen.
                if resume.is_some() {
                    shard.begin_recovery(&conn, &group);
                }
                if first {
                    shard.webhook_event(crate::webhook::Kind::Bind, &conn, &group);
                    self.occupancy_check(&system, &group, true);
                    let data = conn.member_event_data();
                    self.announce(&conn, group.clone(), MemberEvent::Online, &data)
                        .await;
                }
                match resume {
                    Some(r) => {
                        let recovered = self.recover(&conn, system, group, r.history, r.since);
                        Reply::Recovered(recovered.await)
                    }
                    None => Reply::Done(true),
                }
            }
            Op::HistoryPush {
                system,
                group,
                history,
                push,
            } => Reply::Count(self.append_here(system, group, history, push).await),
            Op::Unbind {
                slot,
                generation,
                system,
                group,
            } => match shard.find(slot, generation, &system) {
                Some(conn) => Reply::Done(self.unbind_from_group(&conn, group).await),
                None => Reply::Done(false),
            },
            Op::Register { system, info } => self.register_here(system, info).await,
            op => match self.execute_sync(op) {
                Ok(reply) => reply,
                Err(_) => unreachable!("bug: execute_sync refused a synchronous op"),
            },
        }
    }

    /// Handles one message from another core's channel. Never blocks: answers are sent with
    /// `try_send`, falling back to a task when the channel is full, so two cores replying to
    /// each other can never deadlock.
    pub fn on_message(self: &Rc<Self>, msg: CoreMsg) {
        match msg {
            CoreMsg::Reply { tag, reply } => {
                if let Some(tx) = self.pending.borrow_mut().remove(&tag) {
                    let _ = tx.try_send(reply);
                }
            }
            CoreMsg::Request { from, tag, op } => match self.execute_sync(op) {
                Ok(reply) => self.reply(from, tag, reply),
                Err(op) => {
                    let route = self.clone();
                    glommio::spawn_local(async move {
                        let reply = route.clone().execute_async(op).await;
                        route.reply(from, tag, reply);
                    })
                    .detach();
                }
            },
        }
    }

    fn reply(self: &Rc<Self>, to: usize, tag: u64, reply: Reply) {
        self.shard.metrics.core_replies.inc();
        match self.mesh.try_send_to(to, CoreMsg::Reply { tag, reply }) {
            Ok(()) => {}
            Err(GlommioError::WouldBlock(ResourceType::Channel(msg))) => {
                let route = self.clone();
                glommio::spawn_local(async move {
                    let _ = route.mesh.send_to(to, msg).await;
                })
                .detach();
            }
            Err(e) => {
                tracing::debug!(core = self.shard.id, to, error = %e, "reply to a closed core dropped")
            }
        }
    }
}

/// The receiver loop: one task per other core, handing each message to [`Router::on_message`].
pub fn serve_cores(route: &Rc<Router>, mut receivers: Receivers<CoreMsg>) {
    for (_, rx) in receivers.streams() {
        let route = route.clone();
        glommio::spawn_local(async move {
            while let Some(msg) = rx.recv().await {
                route.on_message(msg);
            }
        })
        .detach();
    }
}
