//! The session's link to one shard: checking a backend out of its pool ([`attach`]), bringing it
//! in line with the client and sending it messages ([`relay`]), reading its answers in step with
//! what was sent ([`exchange`]) and relaying those that need no more in one piece
//! ([`stretch`]), what is sent and expected, built together ([`outgoing`]), and the
//! buffered socket back to the client ([`output`]).

pub(crate) mod attach;
pub(crate) mod exchange;
pub(crate) mod outgoing;
pub(crate) mod output;
pub(crate) mod relay;
pub(crate) mod stretch;
