//! Dual writes a crash left half done, and how they are finished.
//!
//! A proxy prepares the copy of a dual write on the new owner under the name [`gid`]
//! (`sl_dw:<xid>:<old owner>:<new owner>`) before the old owner commits transaction `xid`: the
//! old owner's commit is the decision. Whoever finds such a prepared transaction after its
//! proxy went away (the proxies' resolver, the resharder) asks the old owner for the status of
//! `xid` ([`STATUS_SQL`]) and acts on the [`verdict`].

/// What names a dual write's prepared copy.
pub const GID_PREFIX: &str = "sl_dw";

/// Prepared dual writes on a shard older than `$1` seconds.
pub const LIST_SQL: &str = "SELECT gid FROM pg_prepared_xacts WHERE gid LIKE 'sl\\_dw:%' \
     AND database = current_database() AND prepared <= now() - make_interval(secs => $1)";

/// The status (`committed`, `aborted`, `in progress`) of transaction `$1` on the old owner.
pub const STATUS_SQL: &str = "SELECT pg_xact_status($1::text::xid8)::text";

/// The name of the prepared copy of transaction `xid` of `old` on `new`.
pub fn gid(xid: &str, old: &str, new: &str) -> String {
    format!("{GID_PREFIX}:{xid}:{old}:{new}")
}

/// The old owner's transaction id and shard name in a prepared copy's name.
pub fn parse_gid(gid: &str) -> Option<(&str, &str)> {
    let mut parts = gid.splitn(4, ':');
    (parts.next()? == GID_PREFIX).then_some(())?;
    Some((parts.next()?, parts.next()?))
}

/// What to do with a prepared copy, given the status of its old owner's transaction: the SQL
/// to run, or `None` while that transaction is still running (or too old to tell).
pub fn verdict(gid: &str, status: Option<&str>) -> Option<String> {
    let verb = match status? {
        "committed" => "COMMIT",
        "aborted" => "ROLLBACK",
        _ => return None,
    };
    Some(format!("{verb} PREPARED {}", super::images::literal(gid)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_the_old_owner_decides() {
        let name = gid("4711", "s0", "s2");
        assert_eq!(parse_gid(&name), Some(("4711", "s0")));
        assert_eq!(parse_gid("shardline_1_0"), None);
        assert_eq!(
            verdict(&name, Some("committed")).as_deref(),
            Some("COMMIT PREPARED $s$sl_dw:4711:s0:s2$s$")
        );
        assert!(verdict(&name, Some("aborted")).is_some_and(|s| s.starts_with("ROLLBACK")));
        assert_eq!(verdict(&name, Some("in progress")), None);
        assert_eq!(verdict(&name, None), None);
    }
}
