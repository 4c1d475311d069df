//! The messages a backend is sent for an extended-protocol segment: the client's own, with
//! client statement names turned into proxy names, statements the backend lacks prepared first
//! (silently), and a `Parse` of a statement it already has answered with a local
//! `ParseComplete`; and the matching queue of expected answers.

use std::borrow::Cow;
use std::collections::{HashSet, VecDeque};

use bytes::Bytes;

use crate::backend::conn::Backend;
use crate::protocol::backend::{self as msg, tag};
use crate::protocol::frontend::{build_parse, BindView, TargetView};
use crate::protocol::Frame;
use crate::session::extended::segment::Item;
use crate::session::link::exchange::{Expect, Mode, Reply};
use crate::session::state::settings::effect_of;
use crate::session::state::statements::Statement;

/// The messages one backend is sent for a segment, and the matching answer queue.
pub(crate) fn build_messages(items: &[Item], conn: &mut Backend) -> (Vec<Bytes>, VecDeque<Expect>) {
    let mut out = Vec::with_capacity(items.len() + 2);
    let mut queue = VecDeque::with_capacity(items.len() + 2);
    let mut preparer = Preparer::default();
    for item in items {
        match item {
            Item::Parse {
                frame,
                unnamed: true,
                ..
            } => {
                // The unnamed statement keeps its name: the client's bytes go as they are.
                out.push(frame.bytes().clone());
                queue.push_back(Expect::relay(Reply::Parse));
                preparer.unnamed_ready = true;
            }
            Item::Parse {
                statement,
                unnamed: false,
                ..
            } => {
                if conn.prepared.contains(&statement.id) || !preparer.preparing.insert(statement.id)
                {
                    queue.push_back(Expect::Local(msg::empty(tag::PARSE_COMPLETE)));
                } else {
                    prepare_named(conn, statement, Mode::Relay, &mut out, &mut queue);
                }
            }
            Item::UsesStatement {
                frame,
                statement,
                unnamed,
                reply,
            } => {
                preparer.ensure(conn, statement, *unnamed, &mut out, &mut queue);
                if *unnamed {
                    out.push(frame.bytes().clone());
                } else {
                    out.push(renamed(frame, &statement.server_name));
                }
                match (&statement.generated, reply) {
                    (Some(keys), Reply::DescribeStatement) => queue.push_back(Expect::Sent {
                        reply: *reply,
                        mode: Mode::HideParams(keys.rows),
                        effects: Vec::new(),
                        prepares: None,
                    }),
                    _ => queue.push_back(Expect::relay(*reply)),
                }
            }
            Item::Execute { frame, statement } => {
                out.push(frame.bytes().clone());
                // No effect (nearly every statement) needs no list.
                let effects = statement
                    .as_ref()
                    .and_then(|s| effect_of(&s.plan.kind))
                    .map_or_else(Vec::new, |effect| vec![Some(effect)]);
                queue.push_back(Expect::Sent {
                    reply: Reply::Execute,
                    mode: Mode::Relay,
                    effects,
                    prepares: None,
                });
            }
            Item::CloseStatement => queue.push_back(Expect::Local(msg::empty(tag::CLOSE_COMPLETE))),
            Item::Forward { frame, reply } => {
                out.push(frame.bytes().clone());
                if let Some(reply) = reply {
                    queue.push_back(Expect::relay(*reply));
                }
            }
        }
    }
    (out, queue)
}

/// A `Bind` or `Describe` frame naming statement `name` instead of the client's name.
fn renamed(frame: &Frame, name: &[u8]) -> Bytes {
    let rebuilt = match frame.tag() {
        b'B' => BindView::new(frame).map(|view| view.retarget(frame, name)),
        _ => TargetView::new(frame).map(|view| view.rebuild(b'D', name)),
    };
    // Both were parsed successfully when the segment was read.
    rebuilt.unwrap_or_else(|_| frame.bytes().clone())
}

/// Makes sure a statement exists on the backend before a message uses it.
#[derive(Default)]
struct Preparer {
    /// Statements this segment prepares before the backend has confirmed them.
    preparing: HashSet<u64>,
    /// The unnamed statement on the backend is the one the client last parsed.
    unnamed_ready: bool,
}

impl Preparer {
    fn ensure(
        &mut self,
        conn: &Backend,
        statement: &Statement,
        unnamed: bool,
        out: &mut Vec<Bytes>,
        queue: &mut VecDeque<Expect>,
    ) {
        if unnamed {
            if !self.unnamed_ready {
                out.push(build_parse(
                    b"",
                    &wire_text(conn, &statement.query),
                    &statement.param_types,
                ));
                queue.push_back(Expect::swallow(Reply::Parse));
                self.unnamed_ready = true;
            }
        } else if !conn.prepared.contains(&statement.id) && self.preparing.insert(statement.id) {
            prepare_named(conn, statement, Mode::Swallow, out, queue);
        }
    }
}

/// A statement's text in the encoding `conn` reads it in. The segment's reading refused a
/// statement whose text the client's current encoding cannot carry, and the backend has the
/// client's encoding, so the UTF-8 fallback is never sent.
fn wire_text<'a>(conn: &Backend, text: &'a str) -> Cow<'a, [u8]> {
    if text.is_ascii() {
        return Cow::Borrowed(text.as_bytes());
    }
    conn.client_encoding()
        .encode(text)
        .unwrap_or(Cow::Borrowed(text.as_bytes()))
}

/// A `Parse` of `statement` under its proxy name, whose answer is handled as `mode` says.
fn prepare_named(
    conn: &Backend,
    statement: &Statement,
    mode: Mode,
    out: &mut Vec<Bytes>,
    queue: &mut VecDeque<Expect>,
) {
    out.push(build_parse(
        &statement.server_name,
        &wire_text(conn, &statement.query),
        &statement.param_types,
    ));
    queue.push_back(Expect::Sent {
        reply: Reply::Parse,
        mode,
        effects: Vec::new(),
        prepares: Some(statement.id),
    });
}
