//! Two-phase commits a crash left half done, and how they are finished.
//!
//! Every two-phase commit shardline runs has a decider: one participant that commits in one
//! phase, after the others were prepared. The others are prepared under [`gid`]
//! (`<kind>:<decider's xid>:<decider shard>:<participant shard>`), so the decider's commit is the
//! decision and the prepared name says where to look it up. Whoever finds such a prepared
//! transaction after its proxy went away (the proxies' resolver, the resharder) asks the decider
//! for the status of that xid ([`STATUS_SQL`]) and acts on the [`verdict`]. The hot path writes
//! no log of its own.
//!
//! Two kinds use it: a dual write's copy on a key's new owner during resharding, decided by the
//! old owner ([`Kind::DualWrite`]), and a transaction that wrote on several shards
//! ([`Kind::Transaction`]).

use crate::migration::images::literal;

/// What a prepared transaction of shardline's belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The copy of a dual write on the new owner of a moving key.
    DualWrite,
    /// One shard's part of a transaction that wrote on several shards.
    Transaction,
}

impl Kind {
    fn prefix(self) -> &'static str {
        match self {
            Kind::DualWrite => "sl_dw",
            Kind::Transaction => "sl_tx",
        }
    }
}

/// shardline's prepared transactions on a shard older than `$1` seconds: name and age in
/// seconds.
pub const LIST_SQL: &str = "SELECT gid, extract(epoch FROM now() - prepared)::float8 \
     FROM pg_prepared_xacts \
     WHERE (gid LIKE 'sl\\_dw:%' OR gid LIKE 'sl\\_tx:%') \
     AND database = current_database() AND prepared <= now() - make_interval(secs => $1)";

/// The status (`committed`, `aborted`, `in progress`) of transaction `$1` on the decider.
///
/// An id the decider has not handed out (again) is `aborted`: a decider that crashed before
/// anything carrying the id reached its disk comes back with its counter below it, and such
/// a transaction never committed there (`pg_xact_status` would call the id "in the future"
/// and nothing could ever settle its prepared participants).
pub const STATUS_SQL: &str = "SELECT CASE WHEN $1::text::xid8 >= pg_current_xact_id() \
     THEN 'aborted' ELSE pg_xact_status($1::text::xid8)::text END";

/// The decider's transaction id, assigning one if it has none yet (a decider that wrote
/// nothing still needs an id whose fate can be looked up).
pub const DECIDER_XID_SQL: &str = "SELECT pg_current_xact_id()::text";

/// The name under which `participant` prepares its part of transaction `xid` of `decider`.
pub fn gid(kind: Kind, xid: &str, decider: &str, participant: &str) -> String {
    format!("{}:{xid}:{decider}:{participant}", kind.prefix())
}

/// The decider's transaction id and shard name in a prepared transaction's name.
pub fn parse_gid(gid: &str) -> Option<(&str, &str)> {
    let mut parts = gid.splitn(4, ':');
    let prefix = parts.next()?;
    [Kind::DualWrite, Kind::Transaction]
        .iter()
        .any(|k| k.prefix() == prefix)
        .then_some(())?;
    Some((parts.next()?, parts.next()?))
}

/// What to do with a prepared transaction, given the status of its decider's transaction: the
/// SQL to run, or `None` while that transaction is still running (or too old to tell).
pub fn verdict(gid: &str, status: Option<&str>) -> Option<String> {
    let verb = match status? {
        "committed" => "COMMIT",
        "aborted" => "ROLLBACK",
        _ => return None,
    };
    Some(format!("{verb} PREPARED {}", literal(gid)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_the_decider_decides() {
        for kind in [Kind::DualWrite, Kind::Transaction] {
            let name = gid(kind, "4711", "s0", "s2");
            assert_eq!(parse_gid(&name), Some(("4711", "s0")));
            assert!(verdict(&name, Some("aborted")).is_some_and(|s| s.starts_with("ROLLBACK")));
            assert_eq!(verdict(&name, Some("in progress")), None);
            assert_eq!(verdict(&name, None), None);
        }
        assert_eq!(parse_gid("shardline_1_0"), None);
        assert_eq!(parse_gid("sl_xx:1:s0:s1"), None);
        assert_eq!(
            verdict(&gid(Kind::DualWrite, "4711", "s0", "s2"), Some("committed")).as_deref(),
            Some("COMMIT PREPARED $s$sl_dw:4711:s0:s2$s$")
        );
    }
}
