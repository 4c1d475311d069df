//! Reading an extended-protocol segment: its messages are interpreted in order (a `Parse`
//! defines a client statement, a `Bind` names one and carries the parameters its route needs)
//! and every statement that touches data is routed with [`decide::route`], ready for the
//! decision.

use std::borrow::Cow;
use std::cell::RefCell;
use std::sync::Arc;

use bytes::Bytes;
use shardline_router::{Param, StatementKind};
use smallvec::SmallVec;

use crate::context::Loaded;
use crate::protocol::backend::sqlstate;
use crate::protocol::encoding::{ClientEncoding, TextError};
use crate::protocol::frontend::{execute_portal, BindView, Malformed, ParseView, TargetView};
use crate::protocol::{spare, Frame};
use crate::session::decide::{self, Request, Target};
use crate::session::generated::rewritten_parse;
use crate::session::link::exchange::Reply;
use crate::session::state::statements::Statement;
use crate::session::state::transaction::DualKeys;
use crate::session::{ClientError, Session};

/// Up to this many parameters, a `Bind`'s keys are read in place (each read walks the values
/// from the first); a longer one (a multi-row `INSERT`) is read into a list once.
const READ_IN_PLACE: usize = 16;

thread_local! {
    static SPARE_FRAMES: RefCell<Vec<Vec<Frame>>> = const { RefCell::new(Vec::new()) };
    static SPARE_ITEMS: RefCell<Vec<Vec<Item>>> = const { RefCell::new(Vec::new()) };
}

/// An empty list for a segment's messages, from this thread's spares (`protocol::spare`): a
/// segment's lists are taken when it starts and given back once it has run, so an idle
/// client holds none and a segment allocates none.
pub(crate) fn take_frames() -> Vec<Frame> {
    spare::take_list(&SPARE_FRAMES)
}

/// Gives a segment's message list back, emptied, for the next segment on this thread.
pub(crate) fn give_back_frames(frames: Vec<Frame>) {
    spare::give_back_list(&SPARE_FRAMES, frames);
}

/// Gives a segment's item list back, emptied, for the next segment on this thread.
pub(crate) fn give_back_items(items: Vec<Item>) {
    spare::give_back_list(&SPARE_ITEMS, items);
}

/// One client message of a segment, with what the proxy learned from it.
pub(crate) enum Item {
    Parse {
        frame: Frame,
        statement: Arc<Statement>,
        unnamed: bool,
    },
    /// `Bind` or `Describe` of a statement: renamed to the statement's backend name.
    UsesStatement {
        frame: Frame,
        statement: Arc<Statement>,
        unnamed: bool,
        reply: Reply,
    },
    Execute {
        frame: Frame,
        statement: Option<Arc<Statement>>,
    },
    CloseStatement,
    Forward {
        frame: Frame,
        reply: Option<Reply>,
    },
}

/// A segment, read and routed.
pub(crate) struct Segment {
    pub(crate) items: Vec<Item>,
    /// Where each `Bind` of a statement that touches data sends it, by the `Bind`'s index in
    /// `items`. (This and `kinds` keep one entry in place: nearly every segment executes one
    /// statement, and allocating for it cost more than the rest of reading the segment.)
    pub(crate) routed: SmallVec<[(usize, Target); 1]>,
    /// Kinds of the statements the segment executes.
    pub(crate) kinds: SmallVec<[StatementKind; 1]>,
    /// Moving keys the segment writes while a resharding migration dual-writes.
    pub(crate) dual: Option<DualKeys>,
    /// The first statement that could not be routed; the messages after it were not read, as
    /// PostgreSQL skips them after an error.
    pub(crate) refusal: Option<ClientError>,
}

impl Segment {
    /// Its messages, the rest dropped: what an exchange with one shard needs of it.
    pub(crate) fn into_items(self) -> Vec<Item> {
        self.items
    }

    /// The segment as the decision sees it.
    pub(crate) fn request(&self) -> Request<'_> {
        Request {
            extended: true,
            kinds: &self.kinds,
            parts: &[],
            routed: &self.routed,
            dual: self.dual.is_some(),
            refusal: self.refusal.as_ref(),
            read_before_refusal: !self.items.is_empty(),
        }
    }
}

impl Session {
    /// Interprets the segment's messages (taking them out of `frames`) and routes its
    /// statements.
    pub(crate) async fn read_segment(
        &mut self,
        loaded: &Loaded,
        frames: &mut Vec<Frame>,
    ) -> Result<Segment, Malformed> {
        let mut segment = Segment {
            items: spare::take_list(&SPARE_ITEMS),
            routed: SmallVec::new(),
            kinds: SmallVec::new(),
            dual: None,
            refusal: None,
        };
        segment.items.reserve(frames.len());
        // Portals bound in this segment (a few at most, usually only the unnamed one).
        let mut portals: SmallVec<[(Vec<u8>, Arc<Statement>); 1]> = SmallVec::new();
        // Statement names this segment's `Parse`s define (and no `Close` closed since): the
        // client has not been told of them yet, but another `Parse` of one is refused as
        // PostgreSQL refuses it once the first has run.
        let mut parsed: SmallVec<[Bytes; 1]> = SmallVec::new();
        for frame in frames.drain(..) {
            let item = match frame.tag() {
                b'P' => {
                    let view = ParseView::new(&frame)?;
                    let unnamed = view.name.is_empty();
                    let defined = |name: &[u8]| parsed.iter().any(|p| p.as_ref() == name);
                    if !unnamed && (self.statements.confirmed(view.name) || defined(view.name)) {
                        // Only the unnamed statement is replaced by a `Parse`; a named one
                        // must be closed first.
                        segment.refusal = Some(statement_error(
                            sqlstate::DUPLICATE_PREPARED_STATEMENT,
                            view.name,
                            "already exists",
                        ));
                        break;
                    }
                    if !unnamed {
                        parsed.push(frame.bytes().slice_ref(view.name));
                    }
                    let types = view.param_types;
                    let query = match self.parsed_text(&view, loaded.version) {
                        Ok(ParseText::Known(statement)) => {
                            segment.items.push(Item::Parse {
                                frame,
                                statement,
                                unnamed,
                            });
                            continue;
                        }
                        Ok(ParseText::New(query)) => query,
                        Err(e) => {
                            segment.refusal = Some(e);
                            break;
                        }
                    };
                    let plan = self.ctx.plan(loaded, &query);
                    let rewritten = if plan.always_refused() {
                        match Box::pin(self.rewritten_for_keys(loaded, &plan, &query, types)).await
                        {
                            Ok(rewritten) => rewritten,
                            Err(e) => {
                                segment.refusal = Some(e);
                                break;
                            }
                        }
                    } else {
                        None
                    };
                    let (frame, statement) = match rewritten {
                        None => {
                            let statement = self.statements.define(
                                view.name,
                                &query,
                                view.param_types,
                                (plan, loaded.version),
                                None,
                            );
                            (frame, statement)
                        }
                        Some(rewritten) => {
                            // The client's encoding carried the text it came from.
                            let wire = match self.encoding().encode(&rewritten.query) {
                                Ok(wire) => wire,
                                Err(e) => {
                                    segment.refusal = Some(e.into());
                                    break;
                                }
                            };
                            let parse = rewritten_parse(view.name, &wire, &rewritten.param_types);
                            let plan = self.ctx.plan(loaded, &rewritten.query);
                            let statement = self.statements.define(
                                view.name,
                                &rewritten.query,
                                &rewritten.param_types,
                                (plan, loaded.version),
                                Some(rewritten.keys.clone()),
                            );
                            (parse, statement)
                        }
                    };
                    Item::Parse {
                        frame,
                        statement,
                        unnamed,
                    }
                }
                b'B' => {
                    let mut bound = None;
                    let mut view = BindView::new(&frame)?;
                    let Some(statement) = self.statements.get(view.statement) else {
                        segment.refusal = Some(unknown_statement(view.statement));
                        break;
                    };
                    if let Some(keys) = &statement.generated {
                        // Fresh keys for this execution, after the client's values.
                        match Box::pin(self.bind_generated(loaded, keys, &view)).await {
                            Ok(frame) => bound = Some(frame),
                            Err(e) => {
                                segment.refusal = Some(e);
                                break;
                            }
                        }
                    }
                    if let Some(frame) = &bound {
                        view = BindView::new(frame)?;
                    }
                    if !statement.ascii {
                        // Prepared under another `client_encoding` than the one now in use.
                        if let Err(e) = self.encoding().encode(&statement.query) {
                            segment.refusal = Some(e.into());
                            break;
                        }
                    }
                    let plan = &statement.plan;
                    let routed = match self.decoded_params(&view) {
                        // Nearly always: the key is read in place, in the client's frame.
                        Ok(None) if view.len() <= READ_IN_PLACE => {
                            decide::route(loaded, plan, &statement.query, &view)
                        }
                        Ok(None) => decide::route(loaded, plan, &statement.query, &view.params()),
                        Ok(Some(decoded)) => {
                            let params = in_utf8(view.params(), &decoded);
                            decide::route(loaded, plan, &statement.query, &params)
                        }
                        Err(e) => {
                            segment.refusal = Some(e.into());
                            break;
                        }
                    };
                    match routed {
                        Ok((Target::Session, _)) => {}
                        Ok((target, dual)) => {
                            segment.routed.push((segment.items.len(), target));
                            if let Some(keys) = dual {
                                segment
                                    .dual
                                    .get_or_insert_with(Default::default)
                                    .merge(keys);
                            }
                        }
                        Err(error) => {
                            segment.refusal = Some(error);
                            break;
                        }
                    }
                    match portals.iter_mut().find(|(name, _)| name == view.portal) {
                        Some((_, bound)) => *bound = statement.clone(),
                        None => portals.push((view.portal.to_vec(), statement.clone())),
                    }
                    let unnamed = view.statement.is_empty();
                    Item::UsesStatement {
                        frame: bound.unwrap_or(frame),
                        statement,
                        unnamed,
                        reply: Reply::Bind,
                    }
                }
                b'D' => {
                    let view = TargetView::new(&frame)?;
                    if view.kind == b'S' {
                        let Some(statement) = self.statements.get(view.name) else {
                            segment.refusal = Some(unknown_statement(view.name));
                            break;
                        };
                        let unnamed = view.name.is_empty();
                        Item::UsesStatement {
                            frame,
                            statement,
                            unnamed,
                            reply: Reply::DescribeStatement,
                        }
                    } else {
                        Item::Forward {
                            frame,
                            reply: Some(Reply::DescribePortal),
                        }
                    }
                }
                b'E' => {
                    let portal = execute_portal(&frame)?;
                    let statement = portals
                        .iter()
                        .find(|(name, _)| name == portal)
                        .map(|(_, statement)| statement.clone());
                    segment
                        .kinds
                        .extend(statement.as_ref().map(|s| s.plan.kind.clone()));
                    Item::Execute { frame, statement }
                }
                b'C' => {
                    let view = TargetView::new(&frame)?;
                    if view.kind == b'S' {
                        self.statements.close(view.name);
                        parsed.retain(|p| p.as_ref() != view.name);
                        Item::CloseStatement
                    } else {
                        Item::Forward {
                            frame,
                            reply: Some(Reply::Close),
                        }
                    }
                }
                b'S' => Item::Forward {
                    frame,
                    reply: Some(Reply::Sync),
                },
                _ => Item::Forward { frame, reply: None },
            };
            segment.items.push(item);
        }
        Ok(segment)
    }
}

fn unknown_statement(name: &[u8]) -> ClientError {
    statement_error(sqlstate::INVALID_SQL_STATEMENT_NAME, name, "does not exist")
}

/// An error about the client's prepared statement `name`, worded as PostgreSQL words it.
fn statement_error(code: &'static str, name: &[u8], what: &str) -> ClientError {
    let name = String::from_utf8_lossy(name);
    ClientError::new(code, format!("prepared statement \"{name}\" {what}"))
}

/// What a `Parse` brings.
enum ParseText<'a> {
    /// A statement the client defines again as it is.
    Known(Arc<Statement>),
    /// Text to plan, decoded from the client's encoding.
    New(Cow<'a, str>),
}

impl Session {
    /// The statement a `Parse` defines again as it is (see
    /// [`ClientStatements::reparsed`](crate::session::state::statements::ClientStatements::reparsed)),
    /// else its text, decoded from the client's encoding. Under UTF-8 the message's bytes are
    /// the text itself, so a driver's re-parse of the same statement is recognised without
    /// decoding (validating) it again.
    fn parsed_text<'a>(
        &self,
        view: &ParseView<'a>,
        version: u64,
    ) -> Result<ParseText<'a>, ClientError> {
        let again = |text: &[u8]| {
            self.statements
                .reparsed(view.name, text, view.param_types, version)
        };
        let known = if self.encoding() == ClientEncoding::Utf8 {
            match again(view.query) {
                Some(statement) => statement,
                None => return Ok(ParseText::New(self.client_text(view.query)?)),
            }
        } else {
            let query = self.client_text(view.query)?;
            match again(query.as_bytes()) {
                Some(statement) => statement,
                None => return Ok(ParseText::New(query)),
            }
        };
        Ok(ParseText::Known(known))
    }

    /// The text-format parameters the client sent in a non-UTF-8 `client_encoding` with
    /// non-ASCII bytes, decoded (by index), so a text shard key hashes as the shards read it;
    /// `None` in the common case, where the parameters are read as sent. (Binary values pass
    /// as sent: their type decides whether they are text, which the proxy does not know here.)
    fn decoded_params(
        &self,
        view: &BindView<'_>,
    ) -> Result<Option<Vec<(usize, String)>>, TextError> {
        if !view.has_non_ascii_text() {
            return Ok(None);
        }
        let encoding = self.encoding();
        if encoding == ClientEncoding::Utf8 {
            return Ok(None);
        }
        let mut decoded = Vec::new();
        for (i, param) in view.params().iter().enumerate() {
            if let Param::Text(bytes) = param {
                if !bytes.is_ascii() {
                    decoded.push((i, encoding.decode(bytes)?.into_owned()));
                }
            }
        }
        Ok(Some(decoded))
    }
}

/// `params` with the decoded ones in their places.
fn in_utf8<'a>(mut params: Vec<Param<'a>>, decoded: &'a [(usize, String)]) -> Vec<Param<'a>> {
    for (i, text) in decoded {
        if let Some(param) = params.get_mut(*i) {
            *param = Param::Text(text.as_bytes());
        }
    }
    params
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sync() -> Frame {
        Frame::from_bytes(bytes::Bytes::from_static(b"S\0\0\0\x04"))
    }

    #[test]
    fn a_list_given_back_is_taken_again_empty_and_long_ones_are_not_kept() {
        let mut frames = take_frames();
        frames.push(sync());
        let address = frames.as_ptr();
        give_back_frames(frames);
        let again = take_frames();
        assert!(again.is_empty());
        assert_eq!(again.as_ptr(), address);

        let mut long = Vec::with_capacity(spare::LONGEST_LIST + 1);
        long.push(sync());
        give_back_frames(long);
        assert!(take_frames().capacity() <= spare::LONGEST_LIST);
    }
}
