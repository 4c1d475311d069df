//! The messages a backend is sent for an extended-protocol segment: the client's own, with
//! client statement names turned into proxy names, statements the backend lacks prepared first
//! (silently), and a `Parse` of a statement it already has answered with a local
//! `ParseComplete`; and the matching queue of expected answers.

use std::borrow::Cow;

use bytes::BytesMut;
use rustc_hash::FxHashSet;

use crate::backend::conn::Backend;
use crate::protocol::backend::{self as msg, tag};
use crate::protocol::frontend::{build_parse, BindView, TargetView};
use crate::protocol::Frame;
use crate::session::extended::segment::Item;
use crate::session::link::exchange::{Expect, Mode, Reply};
use crate::session::link::outgoing::Outgoing;
use crate::session::state::settings::effect_of;
use crate::session::state::statements::Statement;

/// Writes the messages one backend is sent for a segment, with the matching answers.
pub(crate) fn build_messages(items: &[Item], conn: &mut Backend, out: &mut Outgoing) {
    let mut preparer = Preparer::default();
    for item in items {
        match item {
            Item::Parse {
                frame,
                unnamed: true,
                ..
            } => {
                // The unnamed statement keeps its name: the client's bytes go as they are.
                out.send(frame.bytes(), Expect::relay(Reply::Parse));
                preparer.unnamed_ready = true;
            }
            Item::Parse {
                statement,
                unnamed: false,
                ..
            } => {
                if conn.prepared.contains(&statement.id) || !preparer.preparing.insert(statement.id)
                {
                    out.answer_locally(msg::empty(tag::PARSE_COMPLETE));
                } else {
                    prepare_named(conn, statement, Mode::Relay, out);
                }
            }
            Item::UsesStatement {
                frame,
                statement,
                unnamed,
                reply,
            } => {
                preparer.ensure(conn, statement, *unnamed, out);
                let expect = match (&statement.generated, reply) {
                    (Some(keys), Reply::DescribeStatement) => Expect::Sent {
                        reply: *reply,
                        mode: Mode::HideParams(keys.rows),
                        effects: Vec::new(),
                        prepares: None,
                    },
                    _ => Expect::relay(*reply),
                };
                if *unnamed {
                    out.send(frame.bytes(), expect);
                } else {
                    write_renamed(frame, &statement.server_name, &mut out.bytes);
                    out.queue.push_back(expect);
                }
            }
            Item::Execute { frame, statement } => {
                // No effect (nearly every statement) needs no list.
                let effects = statement
                    .as_ref()
                    .and_then(|s| effect_of(&s.plan.kind))
                    .map_or_else(Vec::new, |effect| vec![Some(effect)]);
                let expect = Expect::Sent {
                    reply: Reply::Execute,
                    mode: Mode::Relay,
                    effects,
                    prepares: None,
                };
                out.send(frame.bytes(), expect);
            }
            Item::CloseStatement => out.answer_locally(msg::empty(tag::CLOSE_COMPLETE)),
            Item::Forward { frame, reply } => match reply {
                Some(reply) => out.send(frame.bytes(), Expect::relay(*reply)),
                None => out.send_unanswered(frame.bytes()),
            },
        }
    }
}

/// Writes a `Bind` or `Describe` frame naming statement `name` instead of the client's name.
fn write_renamed(frame: &Frame, name: &[u8], out: &mut BytesMut) {
    let written = match frame.tag() {
        b'B' => BindView::new(frame).map(|view| view.retarget_into(frame, name, out)),
        _ => TargetView::new(frame).map(|view| out.extend_from_slice(&view.rebuild(b'D', name))),
    };
    // Both were read successfully when the segment was read.
    if written.is_err() {
        out.extend_from_slice(frame.bytes());
    }
}

/// Makes sure a statement exists on the backend before a message uses it.
#[derive(Default)]
struct Preparer {
    /// Statements this segment prepares before the backend has confirmed them.
    preparing: FxHashSet<u64>,
    /// The unnamed statement on the backend is the one the client last parsed.
    unnamed_ready: bool,
}

impl Preparer {
    fn ensure(&mut self, conn: &Backend, statement: &Statement, unnamed: bool, out: &mut Outgoing) {
        if unnamed {
            if !self.unnamed_ready {
                let parse = build_parse(
                    b"",
                    &wire_text(conn, &statement.query),
                    &statement.param_types,
                );
                out.send(&parse, Expect::swallow(Reply::Parse));
                self.unnamed_ready = true;
            }
        } else if !conn.prepared.contains(&statement.id) && self.preparing.insert(statement.id) {
            prepare_named(conn, statement, Mode::Swallow, out);
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
fn prepare_named(conn: &Backend, statement: &Statement, mode: Mode, out: &mut Outgoing) {
    let parse = build_parse(
        &statement.server_name,
        &wire_text(conn, &statement.query),
        &statement.param_types,
    );
    let expect = Expect::Sent {
        reply: Reply::Parse,
        mode,
        effects: Vec::new(),
        prepares: Some(statement.id),
    };
    out.send(&parse, expect);
}
