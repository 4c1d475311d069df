//! The answers a backend has sent that ask nothing of the proxy but to be relayed, found in
//! one pass over its read buffer. Nearly all of a single-shard exchange (`ParseComplete`,
//! `BindComplete`, a row description, rows, a command tag, `ReadyForQuery`) is such a stretch,
//! and goes to the client in one copy instead of one trip per message through
//! [`drive`](super::exchange::drive), which handles what the stretch stops at.

use std::collections::VecDeque;

use crate::protocol::backend::{self as msg, tag};
use crate::session::link::exchange::{completes, Completed, Expect, Mode, Reply};
use crate::session::state::statements;

/// Whole buffered answers to relay as they are, and what they say.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Stretch {
    /// Their bytes, at the front of the backend's buffer.
    pub len: usize,
    /// Entries of the queue whose last answer is among them.
    pub completed: usize,
    /// What the last `CommandComplete` among them said of the transaction.
    pub last_tag: Option<Completed>,
    /// The status of the `ReadyForQuery` they end with, if they do.
    pub ready: Option<u8>,
    /// `ParseComplete` answers among them.
    pub parsed: usize,
}

/// The stretch at the front of `answers` (a backend's buffered messages, whole), given what
/// `queue` expects of them. It stops before an answer the proxy must act on: an error, a COPY
/// starting, a command tag that concerns the proxy's statements or completes a statement whose
/// setting changes are to be recorded, a `ReadyForQuery` the proxy holds back or rewrites (its
/// own status, `own_status`); at an entry not relayed as it is (swallowed, answered locally,
/// preparing a statement, hiding parameters); and after a `ReadyForQuery`, where the client
/// waits and the output is flushed.
pub fn relayable<'a>(
    answers: impl Iterator<Item = &'a [u8]>,
    queue: &VecDeque<Expect>,
    own_status: bool,
) -> Stretch {
    let mut stretch = Stretch::default();
    let mut entries = queue.iter().map(Plain::of);
    let Some(Some(mut entry)) = entries.next() else {
        return stretch;
    };
    for answer in answers {
        let answer_tag = answer.first().copied().unwrap_or_default();
        let body = answer.get(5..).unwrap_or_default();
        match answer_tag {
            tag::ERROR_RESPONSE | tag::COPY_IN_RESPONSE | tag::COPY_BOTH_RESPONSE => break,
            tag::COMMAND_COMPLETE => {
                let command = msg::command_tag_bytes(body);
                if entry.records_effects || statements::completion_matters(command) {
                    break;
                }
                stretch.last_tag = Some(Completed::of(command));
            }
            tag::READY_FOR_QUERY => match body {
                [status] if !entry.held && !own_status => stretch.ready = Some(*status),
                _ => break,
            },
            _ => {}
        }
        stretch.len += answer.len();
        stretch.parsed += usize::from(answer_tag == tag::PARSE_COMPLETE);
        let done = completes(entry.reply, answer_tag);
        if done {
            stretch.completed += 1;
        }
        if stretch.ready.is_some() {
            break;
        }
        if done {
            match entries.next() {
                Some(Some(next)) => entry = next,
                _ => break,
            }
        }
    }
    stretch
}

/// A queue entry whose answers are relayed as they come.
#[derive(Debug, Clone, Copy)]
struct Plain {
    reply: Reply,
    /// Its `ReadyForQuery` is the proxy's to send.
    held: bool,
    /// Its command tags carry setting changes to record.
    records_effects: bool,
}

impl Plain {
    fn of(expect: &Expect) -> Option<Plain> {
        match expect {
            Expect::Sent {
                reply,
                mode: mode @ (Mode::Relay | Mode::Held),
                effects,
                prepares: None,
            } => Some(Plain {
                reply: *reply,
                held: *mode == Mode::Held,
                records_effects: !effects.is_empty(),
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::session::state::settings::Effect;

    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    fn stretch_of(answers: &[Vec<u8>], queue: Vec<Expect>, own_status: bool) -> Stretch {
        relayable(answers.iter().map(Vec::as_slice), &queue.into(), own_status)
    }

    fn sent(
        reply: Reply,
        mode: Mode,
        effects: Vec<Option<Effect>>,
        prepares: Option<u64>,
    ) -> Expect {
        Expect::Sent {
            reply,
            mode,
            effects,
            prepares,
        }
    }

    fn len(answers: &[Vec<u8>]) -> usize {
        answers.iter().map(Vec::len).sum()
    }

    /// The answers to pgbench's extended-protocol transaction.
    fn extended_answers() -> Vec<Vec<u8>> {
        vec![
            message(tag::PARSE_COMPLETE, b""),
            message(tag::BIND_COMPLETE, b""),
            message(tag::ROW_DESCRIPTION, b"\0\x01name\0rest"),
            message(b'D', b"\0\x01\0\0\0\x03bob"),
            message(tag::COMMAND_COMPLETE, b"SELECT 1\0"),
            message(tag::READY_FOR_QUERY, b"I"),
        ]
    }

    fn extended_queue() -> Vec<Expect> {
        [
            Reply::Parse,
            Reply::Bind,
            Reply::DescribePortal,
            Reply::Execute,
            Reply::Sync,
        ]
        .map(Expect::relay)
        .into()
    }

    #[test]
    fn a_whole_exchange_is_one_stretch_ending_at_ready_for_query() {
        let answers = extended_answers();
        assert_eq!(
            stretch_of(&answers, extended_queue(), false),
            Stretch {
                len: len(&answers),
                completed: 5,
                last_tag: Some(Completed::Other),
                ready: Some(b'I'),
                parsed: 1,
            }
        );
        // Answers after the `ReadyForQuery` are left for the next turn.
        let mut more = answers.clone();
        more.push(message(tag::PARSE_COMPLETE, b""));
        let mut queue = extended_queue();
        queue.push(Expect::relay(Reply::Parse));
        assert_eq!(stretch_of(&more, queue, false).len, len(&answers));
    }

    #[test]
    fn answers_not_yet_complete_end_a_stretch_without_popping_their_entry() {
        let answers = extended_answers();
        let stretch = stretch_of(&answers[..4], extended_queue(), false);
        assert_eq!(stretch.len, len(&answers[..4]));
        assert_eq!(stretch.completed, 3);
        assert_eq!(stretch.ready, None);
    }

    #[test]
    fn a_stretch_stops_before_what_the_proxy_acts_on() {
        let answers = extended_answers();
        let before_ready = len(&answers[..5]);
        // Its own status in the `ReadyForQuery`.
        assert_eq!(
            stretch_of(&answers, extended_queue(), true).len,
            before_ready
        );
        // A `ReadyForQuery` held back.
        let mut queue = extended_queue();
        queue[4] = sent(Reply::Sync, Mode::Held, Vec::new(), None);
        assert_eq!(stretch_of(&answers, queue, false).len, before_ready);
        // An error.
        let failed = [
            message(tag::PARSE_COMPLETE, b""),
            message(tag::ERROR_RESPONSE, b"SERROR\0\0"),
        ];
        assert_eq!(stretch_of(&failed, extended_queue(), false).len, 5);
        // A command tag that concerns the proxy's statements, or carries a setting.
        let before_tag = len(&answers[..4]);
        let mut dropped = answers.clone();
        dropped[4] = message(tag::COMMAND_COMPLETE, b"DROP TABLE\0");
        assert_eq!(
            stretch_of(&dropped, extended_queue(), false).len,
            before_tag
        );
        let mut queue = extended_queue();
        queue[3] = sent(
            Reply::Execute,
            Mode::Relay,
            vec![Some(Effect::ResetAll)],
            None,
        );
        assert_eq!(stretch_of(&answers, queue, false).len, before_tag);
    }

    #[test]
    fn a_stretch_stops_at_an_entry_not_relayed_as_it_is() {
        let answers = extended_answers();
        let parse_complete = answers[0].len();
        let mut queue = extended_queue();
        queue[1] = Expect::Local(Bytes::from(message(tag::BIND_COMPLETE, b"")));
        let stretch = stretch_of(&answers, queue, false);
        assert_eq!((stretch.len, stretch.completed), (parse_complete, 1));
        let mut queue = extended_queue();
        queue[0] = Expect::swallow(Reply::Parse);
        assert_eq!(stretch_of(&answers, queue, false), Stretch::default());
        let mut queue = extended_queue();
        queue[0] = sent(Reply::Parse, Mode::Relay, Vec::new(), Some(7));
        assert_eq!(stretch_of(&answers, queue, false), Stretch::default());
        assert_eq!(stretch_of(&answers, Vec::new(), false), Stretch::default());
    }

    #[test]
    fn a_simple_query_with_many_statements_relays_through_its_tags() {
        let answers = vec![
            message(tag::ROW_DESCRIPTION, b"\0\x01a\0rest"),
            message(b'D', b"\0\x01\0\0\0\x011"),
            message(tag::COMMAND_COMPLETE, b"SELECT 1\0"),
            message(tag::NOTICE_RESPONSE, b"SNOTICE\0\0"),
            message(tag::COMMAND_COMPLETE, b"COMMIT\0"),
            message(tag::READY_FOR_QUERY, b"I"),
        ];
        let stretch = stretch_of(&answers, vec![Expect::relay(Reply::Cycle)], false);
        assert_eq!(
            stretch,
            Stretch {
                len: len(&answers),
                completed: 1,
                last_tag: Some(Completed::Commit),
                ready: Some(b'I'),
                parsed: 0,
            }
        );
    }
}
