//! Reading a backend's answers in step with what was sent to it.
//!
//! For every message the proxy sends to a backend it queues an [`Expect`]: relay the answers to
//! the client, swallow them (the proxy injected the message: a re-prepare, a settings sync), or
//! emit a reply the proxy made itself at that point in the stream. Knowing how many answers
//! each message gets lets the proxy stop reading at the right moment (after `Flush` as well as
//! after `Sync`) and keep the order the client expects.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::backend::conn::{Backend, BackendError};
use crate::protocol::backend::{self as msg, tag};
use crate::protocol::{Frame, FrameError, FrameReader};
use crate::session::link::output::ClientOutput;
use crate::session::link::stretch;
use crate::session::state::settings::Effect;
use crate::session::state::statements;

/// The kind of a message sent to a backend, which decides what ends its answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    Parse,
    Bind,
    DescribeStatement,
    DescribePortal,
    Execute,
    Close,
    Sync,
    /// A simple-protocol `Query` or a `FunctionCall`: answers end with `ReadyForQuery`.
    Cycle,
}

/// What to do with the answers to one message sent to a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// A client message: forward its answers.
    Relay,
    /// A message the proxy injected: drop its answers.
    Swallow,
    /// A client message whose answers are relayed except the final `ReadyForQuery`, which the
    /// proxy sends itself once it has finished the work the message started (a dual write's
    /// commit on both owners).
    Held,
    /// A client's `Describe` of a statement the proxy rewrote to take this many generated keys
    /// as its last parameters: relayed without them, as the client wrote the statement.
    HideParams(usize),
}

/// One entry of the queue that mirrors what was sent to a backend.
#[derive(Debug)]
pub enum Expect {
    /// Answers to a message sent to the backend.
    Sent {
        reply: Reply,
        mode: Mode,
        /// Setting changes to record as the statement's commands complete: the n-th
        /// `CommandComplete` of this message applies the n-th entry.
        effects: Vec<Option<Effect>>,
        /// Proxy statement id that exists on the backend once this `Parse` succeeds.
        prepares: Option<u64>,
    },
    /// A client message the proxy answered itself: emit these bytes here.
    Local(Bytes),
}

impl Expect {
    /// Relay the answers to a client message.
    pub fn relay(reply: Reply) -> Expect {
        Expect::Sent {
            reply,
            mode: Mode::Relay,
            effects: Vec::new(),
            prepares: None,
        }
    }

    /// Drop the answers to an injected message.
    pub fn swallow(reply: Reply) -> Expect {
        Expect::Sent {
            reply,
            mode: Mode::Swallow,
            effects: Vec::new(),
            prepares: None,
        }
    }

    fn reply(&self) -> Option<Reply> {
        match self {
            Expect::Sent { reply, .. } => Some(*reply),
            Expect::Local(_) => None,
        }
    }
}

/// How an exchange ended.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Status of the last `ReadyForQuery`, if one arrived.
    pub ready: Option<u8>,
    /// Effects of statements that succeeded, in order.
    pub effects: Vec<Effect>,
    /// The backend stopped in the middle of an extended-protocol COPY and waits for the
    /// client's `Sync`; keep it attached.
    pub awaiting_sync: bool,
    /// What the last `CommandComplete` said of the transaction.
    pub last_tag: Option<Completed>,
    /// The shard answered a client message with an error.
    pub failed: bool,
    /// The shard failed a message and ignores everything up to the `Sync` it was not sent yet.
    pub skipping: bool,
    /// The client's `DEALLOCATE ALL` or `DISCARD ALL` ran on the backend: the client's
    /// statements are gone, as on one server.
    pub forgot_statements: bool,
    /// Client `Parse` messages answered with `ParseComplete` (the backend's or the proxy's
    /// own): those after them failed or were skipped, and define nothing.
    pub parsed: usize,
}

/// A `CommandComplete`, as far as a session cares: whether it ended a transaction, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completed {
    Commit,
    Rollback,
    Other,
}

impl Completed {
    /// What the command tag `tag` says.
    pub fn of(tag: &[u8]) -> Completed {
        match tag {
            b"COMMIT" => Completed::Commit,
            b"ROLLBACK" => Completed::Rollback,
            _ => Completed::Other,
        }
    }
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("lost the connection to the shard: {0}")]
    Backend(#[from] BackendError),
    #[error("lost the connection to the client: {0}")]
    Client(std::io::Error),
    #[error("client sent an invalid message during COPY: {0}")]
    ClientFrame(FrameError),
    #[error("the shard sent {0:?}, which the proxy does not support here")]
    Unsupported(char),
    /// The backend sent a `FATAL` error (terminated by an administrator, an idle timeout, a
    /// shutdown) and closes its connection; the error is carried to the client.
    #[error("the shard ended the connection")]
    Terminated(Frame),
}

/// Whether `frame` is the last answer to a message of kind `reply`.
pub fn completes(reply: Reply, frame_tag: u8) -> bool {
    match reply {
        Reply::Parse => frame_tag == tag::PARSE_COMPLETE,
        Reply::Bind => frame_tag == tag::BIND_COMPLETE,
        Reply::Close => frame_tag == tag::CLOSE_COMPLETE,
        Reply::DescribeStatement | Reply::DescribePortal => {
            frame_tag == tag::ROW_DESCRIPTION || frame_tag == tag::NO_DATA
        }
        Reply::Execute => matches!(
            frame_tag,
            tag::COMMAND_COMPLETE | tag::EMPTY_QUERY | tag::PORTAL_SUSPENDED
        ),
        Reply::Sync | Reply::Cycle => frame_tag == tag::READY_FOR_QUERY,
    }
}

/// Drives one backend through `queue`, writing what the client should see to `out`; each
/// relayed `ReadyForQuery` carries `status` when given, else the backend's own. Stops when the
/// queue is empty.
pub async fn drive<R>(
    backend: &mut Backend,
    queue: &mut VecDeque<Expect>,
    out: &mut ClientOutput,
    client: &mut FrameReader<R>,
    status: Option<u8>,
) -> Result<Outcome, ExchangeError>
where
    R: tokio::io::AsyncRead + Unpin,
{
    let mut outcome = Outcome::default();
    // After an error in extended protocol the backend ignores everything up to `Sync`.
    let mut skipping = false;
    while let Some(front) = queue.front() {
        let reply = match front {
            Expect::Local(bytes) => {
                if !skipping {
                    out.push(bytes).await.map_err(ExchangeError::Client)?;
                    outcome.parsed += usize::from(bytes.first() == Some(&tag::PARSE_COMPLETE));
                }
                queue.pop_front();
                continue;
            }
            Expect::Sent { reply, .. } => *reply,
        };
        if skipping && !matches!(reply, Reply::Sync | Reply::Cycle) {
            queue.pop_front();
            continue;
        }
        if !skipping {
            // Answers already buffered that need only relaying: forwarded in one piece.
            let stretch = stretch::relayable(backend.buffered_messages(), queue, status.is_some());
            if stretch.len > 0 {
                let full = out.queue(backend.buffered(stretch.len));
                backend.consume_relayed(stretch.len, stretch.ready);
                queue.drain(..stretch.completed);
                outcome.last_tag = stretch.last_tag.or(outcome.last_tag);
                outcome.parsed += stretch.parsed;
                if let Some(ready) = stretch.ready {
                    outcome.ready = Some(ready);
                }
                if full || stretch.ready.is_some() {
                    out.flush().await.map_err(ExchangeError::Client)?;
                }
                continue;
            }
            if backend.buffered_messages().next().is_none() {
                // Nothing whole yet: wait, then look for a stretch again.
                backend.await_message().await?;
                continue;
            }
        }
        let (relay, held) = match front {
            Expect::Sent { mode, .. } => (*mode != Mode::Swallow, *mode == Mode::Held),
            Expect::Local(_) => (false, false),
        };
        let hidden = match front {
            Expect::Sent {
                mode: Mode::HideParams(n),
                ..
            } => *n,
            _ => 0,
        };
        let message = backend.next_message().await?;
        let frame_tag = message.first().copied().unwrap_or_default();
        match frame_tag {
            // A setting the proxy replayed (a held `SET` reaching the shard, the client's
            // settings brought to a backend) reports its value as if the client had sent it:
            // the client learns it now, as PostgreSQL would have told it at the `SET`.
            tag::PARAMETER_STATUS => {
                out.push(message).await.map_err(ExchangeError::Client)?;
                backend.consume_message();
                continue;
            }
            tag::NOTICE_RESPONSE | tag::NOTIFICATION => {
                if relay {
                    out.push(message).await.map_err(ExchangeError::Client)?;
                }
                backend.consume_message();
                continue;
            }
            tag::ERROR_RESPONSE | tag::COPY_IN_RESPONSE | tag::COPY_BOTH_RESPONSE => {
                // Rare answers, taken out as messages of their own.
                let frame = Frame::from_bytes(Bytes::copy_from_slice(message));
                backend.consume_message();
                let rare = Rare {
                    frame,
                    reply,
                    relay,
                };
                if Box::pin(rare.handle(backend, queue, out, client, &mut outcome)).await? {
                    skipping = true;
                }
                continue;
            }
            _ => {}
        }
        if relay && !(held && frame_tag == tag::READY_FOR_QUERY) {
            let full = match status.filter(|_| frame_tag == tag::READY_FOR_QUERY) {
                Some(status) => out.queue(&msg::ready_for_query(status)),
                None if hidden > 0 && frame_tag == tag::PARAMETER_DESCRIPTION => {
                    let body = message.get(5..).unwrap_or_default();
                    out.queue(&msg::without_last_params(body, hidden))
                }
                None => out.queue(message),
            };
            if full {
                out.flush().await.map_err(ExchangeError::Client)?;
            }
        }
        let mut forgets = false;
        if frame_tag == tag::COMMAND_COMPLETE {
            let command = msg::command_tag_bytes(message.get(5..).unwrap_or_default());
            statements::completed(command);
            forgets = statements::forgets_every_statement(command);
            outcome.last_tag = Some(Completed::of(command));
            if let Some(Expect::Sent { effects, .. }) = queue.front_mut() {
                if !effects.is_empty() {
                    if let Some(effect) = effects.remove(0) {
                        outcome.effects.push(effect);
                    }
                }
            }
        }
        let ready = (frame_tag == tag::READY_FOR_QUERY).then(|| message.get(5).copied());
        backend.consume_message();
        if forgets {
            backend.prepared.clear();
            outcome.forgot_statements |= relay;
        }
        if let Some(ready) = ready {
            outcome.ready = Some(ready.unwrap_or(b'I'));
            skipping = false;
            if relay && !held {
                out.flush().await.map_err(ExchangeError::Client)?;
            }
        }
        if frame_tag == tag::PARSE_COMPLETE {
            outcome.parsed += usize::from(relay);
            if let Some(Expect::Sent {
                prepares: Some(id), ..
            }) = queue.front()
            {
                backend.prepared.insert(*id);
            }
        }
        if completes(reply, frame_tag) {
            queue.pop_front();
        }
    }
    outcome.skipping = skipping;
    Ok(outcome)
}

/// An error or COPY answer from the backend, which [`drive`] hands on to [`Rare::handle`].
struct Rare {
    frame: Frame,
    /// The kind of message it answers.
    reply: Reply,
    /// Whether the answers to that message go to the client.
    relay: bool,
}

impl Rare {
    /// Handles the answer; true when the backend now ignores everything up to `Sync` (an
    /// error in the extended protocol).
    async fn handle<R>(
        self,
        backend: &mut Backend,
        queue: &mut VecDeque<Expect>,
        out: &mut ClientOutput,
        client: &mut FrameReader<R>,
        outcome: &mut Outcome,
    ) -> Result<bool, ExchangeError>
    where
        R: tokio::io::AsyncRead + Unpin,
    {
        let Rare {
            frame,
            reply,
            relay,
        } = self;
        match frame.tag() {
            tag::ERROR_RESPONSE if msg::ends_connection(&frame) => {
                Err(ExchangeError::Terminated(frame))
            }
            tag::ERROR_RESPONSE => {
                let injected_cycle = !relay && reply == Reply::Cycle;
                if injected_cycle {
                    tracing::warn!(
                        error = msg::error_field(&frame, b'M').unwrap_or(""),
                        "a statement the proxy sent to prepare a backend failed"
                    );
                    backend.settings = None;
                } else {
                    // The statement's transaction fails with it, and what it created goes.
                    statements::undone();
                    outcome.failed = true;
                    out.push(frame.bytes())
                        .await
                        .map_err(ExchangeError::Client)?;
                }
                if reply == Reply::Cycle {
                    return Ok(false);
                }
                queue.pop_front();
                Ok(true)
            }
            tag::COPY_IN_RESPONSE => {
                if !relay {
                    return Err(ExchangeError::Unsupported('G'));
                }
                // Boxed: COPY's state would otherwise weigh on every exchange.
                let copy = Box::pin(copy_in(backend, out, client, &frame, reply)).await?;
                if copy == CopyEnd::AwaitingSync {
                    if let Some(pos) = queue.iter().position(|e| e.reply() == Some(Reply::Sync)) {
                        queue.remove(pos);
                        outcome.awaiting_sync = true;
                    }
                }
                Ok(false)
            }
            other => Err(ExchangeError::Unsupported(char::from(other))),
        }
    }
}

/// How a client's COPY into a backend ended.
#[derive(Debug, PartialEq, Eq)]
enum CopyEnd {
    /// Done, and the message that started it answered as usual from here.
    Done,
    /// An extended-protocol COPY whose client has not sent its `Sync` yet: the backend waits
    /// for it, and the `Sync` queued before the COPY gets no answer.
    AwaitingSync,
}

/// Relays a COPY the backend started with `CopyInResponse` (`response`): the response to the
/// client, then the client's data to the backend until `CopyDone` or `CopyFail`.
async fn copy_in<R>(
    backend: &mut Backend,
    out: &mut ClientOutput,
    client: &mut FrameReader<R>,
    response: &Frame,
    reply: Reply,
) -> Result<CopyEnd, ExchangeError>
where
    R: tokio::io::AsyncRead + Unpin,
{
    out.push(response.bytes())
        .await
        .map_err(ExchangeError::Client)?;
    out.flush().await.map_err(ExchangeError::Client)?;
    relay_copy_in(backend, client).await?;
    if reply != Reply::Execute {
        return Ok(CopyEnd::Done);
    }
    // In the extended protocol the backend ignored the `Sync` that followed `Execute` while it
    // was copying; clients send another one right after `CopyDone`, and that one ends the
    // segment.
    let next = client.read().await.map_err(ExchangeError::ClientFrame)?;
    if next.tag() == b'S' {
        backend.send(next.bytes()).await?;
        Ok(CopyEnd::Done)
    } else {
        client.unread(next);
        Ok(CopyEnd::AwaitingSync)
    }
}

/// Forwards the client's COPY data to the backend until `CopyDone` or `CopyFail`.
async fn relay_copy_in<R>(
    backend: &mut Backend,
    client: &mut FrameReader<R>,
) -> Result<(), ExchangeError>
where
    R: tokio::io::AsyncRead + Unpin,
{
    loop {
        let frame: Frame = client.read().await.map_err(ExchangeError::ClientFrame)?;
        backend.send(frame.bytes()).await?;
        if matches!(frame.tag(), b'c' | b'f') {
            return Ok(());
        }
    }
}
