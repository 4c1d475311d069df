//! The simple query protocol: one `Query` message is read, routed, decided and carried out,
//! ending with one `ReadyForQuery`. `FunctionCall` messages (libpq's large objects) follow the
//! session to its shard.

use std::borrow::Cow;
use std::sync::Arc;

use shardline_router::normalize::Literals;
use shardline_router::{Param, Plan, ShardId, StatementKind};

use crate::backend::conn::Backend;
use crate::backend::pool::Pooled;
use crate::context::{LastShape, Loaded, SimplePlan};
use crate::protocol::backend::{self as msg, sqlstate};
use crate::protocol::frontend::query_bytes;
use crate::protocol::Frame;
use crate::session::decide::{self, decide, Action, Request, Target};
use crate::session::link::exchange::{Expect, Mode, Reply};
use crate::session::link::outgoing::Outgoing;
use crate::session::local::explain::explained_statement;
use crate::session::multi::copy_in::RowSource;
use crate::session::multi::gather::{Delivery, Gather, Source};
use crate::session::state::settings::effect_of;
use crate::session::state::transaction::DualKeys;
use crate::session::{local, ClientError, Session, SessionEnd};

impl Session {
    /// Answers one simple-protocol `Query`. Every way but the single-shard one runs in a
    /// future of its own (`Box::pin`), so this one stays small: it is allocated per query.
    pub(crate) async fn simple_query(&mut self, frame: Frame) -> Result<(), SessionEnd> {
        let loaded = self.ctx.refresh(self.held_config.take());
        let mut last = std::mem::take(&mut self.last_shape);
        let result = self.simple_query_under(&loaded, &mut last, frame).await;
        self.held_config = Some(loaded);
        // A statement run inside this one (generated keys, a cutover's retry) may have kept
        // its shape meanwhile; this one's is what the client repeats.
        self.last_shape = last;
        result
    }

    /// [`Session::simple_query`] under the config snapshot `loaded`, with the session's last
    /// statement shape taken out of it (`last`) so that its plan is used where it lies.
    ///
    /// Everything up to the decision is worked out before anything is awaited, so this future
    /// holds little beside the one exchange nearly every query is; the rest runs in
    /// [`Session::run_planned`]'s future, allocated only for it.
    async fn simple_query_under(
        &mut self,
        loaded: &Arc<Loaded>,
        last: &mut LastShape,
        frame: Frame,
    ) -> Result<(), SessionEnd> {
        // The text stays in the client's message (borrowed, when it is UTF-8 already); the
        // message itself goes on to the shard as it came.
        let sql = match query_bytes(&frame) {
            Ok(bytes) => match self.client_text(bytes) {
                Ok(sql) => sql,
                Err(e) => return self.fail(e).await,
            },
            Err(e) => {
                let error = ClientError::new(sqlstate::PROTOCOL_VIOLATION, e.to_string());
                return self.fail(error).await;
            }
        };
        if let Some(statement) = explained_statement(&sql) {
            return Box::pin(self.explain_query(loaded, statement)).await;
        }
        // Matched before the exchange is awaited, so the plan is not kept through it.
        let (shard, starts_transaction, relayed) = match self.plan_query(loaded, last, &sql) {
            Prepared::Single {
                shard,
                starts_transaction,
                relayed,
            } => (shard, starts_transaction, relayed),
            Prepared::Planned(planned) => {
                return Box::pin(self.run_planned(loaded, &frame, &sql, planned)).await
            }
        };
        self.exchange_with(loaded, shard, starts_transaction, |_, out| {
            out.send(frame.bytes(), relayed);
        })
        .await
    }

    /// Plans and routes `sql` and, when that settles it, decides: nearly every query goes to
    /// one shard with nothing to tell the client first.
    fn plan_query<'s, 'l>(
        &self,
        loaded: &Loaded,
        last: &'l mut LastShape,
        sql: &'s str,
    ) -> Prepared<'s, 'l> {
        let (plan, literals) = self.ctx.plan_simple(loaded, sql, last);
        let (routed, dual, refusal) = match decide::route(loaded, &plan, sql, &literals) {
            Ok((Target::Session, _)) => (None, None, None),
            Ok((target, dual)) => (Some((0, target)), dual, None),
            Err(error) => (None, None, Some(error)),
        };
        let planned = Planned {
            plan,
            literals,
            routed,
            dual,
            refusal,
        };
        // A refused statement may still go ahead with generated keys (awaited).
        if planned.refusal.is_none() {
            let action = decide(&planned.request(), &self.facts(loaded));
            if let Action::Single {
                shard,
                starts_transaction,
            } = action
            {
                let notice = self.route_notice(loaded, &planned.plan, &action, &planned.literals);
                if notice.is_none() {
                    return Prepared::Single {
                        shard,
                        starts_transaction,
                        relayed: relayed_answers(&planned.plan),
                    };
                }
            }
        }
        Prepared::Planned(planned)
    }

    /// Answers `EXPLAIN (ROUTE) statement`.
    async fn explain_query(&mut self, loaded: &Loaded, statement: &str) -> Result<(), SessionEnd> {
        let reply = self.explain_route(loaded, statement).await;
        self.answer(&reply).await
    }

    /// Carries out a planned query that is not one plain exchange with one shard (see
    /// [`Session::plan_query`]): generated keys, a notice of its route, and every other
    /// decision.
    async fn run_planned(
        &mut self,
        loaded: &Arc<Loaded>,
        frame: &Frame,
        sql: &str,
        planned: Planned<'_, '_>,
    ) -> Result<(), SessionEnd> {
        if planned.refusal.is_some() {
            // An INSERT that leaves its shard key to the table's default gets generated keys.
            match Box::pin(self.with_generated_keys(loaded, &planned.plan, sql)).await {
                Ok(Some(keyed)) => match local::query_message_in(self.encoding(), &keyed) {
                    Ok(query) => {
                        return Box::pin(self.simple_query(Frame::from_bytes(query))).await
                    }
                    Err(e) => return self.fail(e.into()).await,
                },
                Ok(None) => {}
                Err(error) => return self.fail(error).await,
            }
        }
        let Planned {
            plan,
            literals,
            routed,
            dual,
            refusal,
        } = planned;
        let request = Planned::request_of(&plan, &routed, dual.is_some(), refusal.as_ref());
        let action = decide(&request, &self.facts(loaded));
        if let Some(notice) = self.route_notice(loaded, &plan, &action, &literals) {
            self.out.push(&notice).await?;
        }
        let message = frame.bytes();
        match action {
            Action::Local => match self.answer_locally(&plan.kind, sql) {
                Some(reply) => self.answer(&reply).await,
                None => self.fail(internal("a local answer went missing")).await,
            },
            // A query string is one message: nothing of it was read before a refusal.
            Action::Refuse(error) | Action::RunThenRefuse(error) => self.refuse(error).await,
            Action::CommitDual { old } => {
                let build = |_: &mut Pooled, out: &mut Outgoing| {
                    out.send(message, Expect::relay(Reply::Cycle));
                };
                Box::pin(self.commit_dual(loaded, old, build)).await
            }
            Action::AwaitCutover => {
                // A cutover holds writes to moving keys; afterwards they may route elsewhere.
                self.ctx.gate.resumed().await;
                Box::pin(self.simple_query(frame.clone())).await
            }
            Action::DualWrite { old } => {
                let keys = dual.unwrap_or_default();
                let relayed = relayed_answers(&plan);
                let build = |_: &mut Pooled, out: &mut Outgoing| out.send(message, relayed);
                Box::pin(self.dual_write(loaded, old, keys, build)).await
            }
            Action::Single {
                shard,
                starts_transaction,
            } => {
                let relayed = relayed_answers(&plan);
                self.exchange_with(loaded, shard, starts_transaction, |_, out| {
                    out.send(message, relayed);
                })
                .await
            }
            Action::Scatter(shards) => {
                let build = |_: &mut Backend, out: &mut Outgoing| {
                    out.send(message, Expect::relay(Reply::Cycle));
                };
                let reads = plan.kind == StatementKind::Read;
                Box::pin(self.scatter(loaded, shards, reads, build)).await
            }
            Action::Gather(shards) => {
                let Some(how) = Gather::of(&plan) else {
                    return self.fail(internal("a gathered read lost its plan")).await;
                };
                let source = Source::Simple {
                    sql,
                    literals: &text_params(&literals),
                };
                Box::pin(self.gather(loaded, shards, source, how, Delivery::simple())).await
            }
            Action::Split(parts) => {
                let source = Source::Simple {
                    sql,
                    literals: &text_params(&literals),
                };
                Box::pin(self.insert_split(loaded, parts.to_vec(), &source, &Delivery::simple()))
                    .await
            }
            Action::Copy(spec) => {
                let delivery = Delivery::simple();
                Box::pin(self.copy_split(
                    loaded,
                    sql,
                    spec,
                    None,
                    &delivery,
                    &mut RowSource::Client,
                ))
                .await
            }
            Action::Pull(tables) => Box::pin(self.pull_up(loaded, tables, sql)).await,
            Action::InsertSelect(plan) => {
                let source = Source::Simple {
                    sql,
                    literals: &text_params(&literals),
                };
                Box::pin(self.insert_select(loaded, plan, &source, &Delivery::simple())).await
            }
            Action::Everywhere => {
                let build = |_: &mut Backend, out: &mut Outgoing| {
                    out.send(message, Expect::relay(Reply::Cycle));
                };
                Box::pin(self.everywhere(loaded, &[(&plan.kind, sql)], build)).await
            }
            Action::Finish { commit } => {
                let (result, reported) = Box::pin(self.finish_transaction(commit)).await;
                self.out.push(&reported.concat()).await?;
                match result {
                    Ok(tag) => self.answer(&msg::command_complete(tag)).await,
                    Err(error) => self.fail(error).await,
                }
            }
            Action::Spread => self.fail(internal("a query string cannot spread")).await,
        }
    }

    /// Sends a reply the proxy made and the `ReadyForQuery` that ends the query.
    async fn answer(&mut self, reply: &[u8]) -> Result<(), SessionEnd> {
        self.out.push(reply).await?;
        self.out
            .push(&msg::ready_for_query(self.tx.status()))
            .await?;
        Ok(self.out.flush().await?)
    }

    /// Runs a `FunctionCall` where the session's transaction runs (the default shard outside
    /// one).
    pub(crate) async fn function_call(&mut self, frame: Frame) -> Result<(), SessionEnd> {
        let loaded = self.ctx.snapshot();
        let shard = self.tx.home().unwrap_or(loaded.config.default_shard);
        self.exchange(&loaded, shard, |_, out| {
            out.send(frame.bytes(), Expect::relay(Reply::Cycle));
        })
        .await
    }
}

/// A `Query`'s statement planned and routed, for its decision.
struct Planned<'s, 'l> {
    plan: SimplePlan<'l>,
    /// Its constants, which its plan routes by.
    literals: Literals<'s>,
    /// Where it goes, unless it follows the session.
    routed: Option<(usize, Target)>,
    /// Moving keys it writes while a migration dual-writes.
    dual: Option<DualKeys>,
    /// Why it could not be routed.
    refusal: Option<ClientError>,
}

impl Planned<'_, '_> {
    /// The request the decision sees.
    fn request(&self) -> Request<'_> {
        Planned::request_of(
            &self.plan,
            &self.routed,
            self.dual.is_some(),
            self.refusal.as_ref(),
        )
    }

    /// The request of a statement planned as `plan` and routed as the rest says.
    fn request_of<'a>(
        plan: &'a Plan,
        routed: &'a Option<(usize, Target)>,
        dual: bool,
        refusal: Option<&'a ClientError>,
    ) -> Request<'a> {
        Request {
            extended: false,
            kinds: std::slice::from_ref(&plan.kind),
            parts: plan.parts(),
            routed: routed.as_slice(),
            dual,
            refusal,
            read_before_refusal: false,
        }
    }
}

/// What [`Session::plan_query`] settled.
enum Prepared<'s, 'l> {
    /// One exchange with one shard, its answers relayed as `relayed` says.
    Single {
        shard: ShardId,
        starts_transaction: bool,
        relayed: Expect,
    },
    /// Anything else, for [`Session::run_planned`].
    Planned(Planned<'s, 'l>),
}

/// How the answers to a query planned as `plan` are relayed: as they come, noting the
/// session settings its statements change (none, for nearly every statement, needs no list).
fn relayed_answers(plan: &Plan) -> Expect {
    let effects = match plan.kind {
        StatementKind::Compound => plan.parts().iter().map(effect_of).collect(),
        ref kind => effect_of(kind).map_or_else(Vec::new, |effect| vec![Some(effect)]),
    };
    Expect::Sent {
        reply: Reply::Cycle,
        mode: Mode::Relay,
        effects,
        prepares: None,
    }
}

/// An error for a state the decision rules out.
fn internal(what: &str) -> ClientError {
    ClientError::new(sqlstate::INTERNAL, what)
}

/// The statement's constants as the text parameters its plan reads, for the executors that
/// take them as a list.
fn text_params<'a>(literals: &'a [Cow<'_, str>]) -> Vec<Param<'a>> {
    literals.iter().map(|l| Param::Text(l.as_bytes())).collect()
}
