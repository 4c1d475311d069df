//! Two-phase commits a crash left half done, and how they are finished.
//!
//! Every two-phase commit shardline runs has a decider: one participant that commits in one
//! phase, after the others were prepared. Before the others prepare, the decider's transaction
//! records its decision ([`record_sql`]: a row in `shardline.decisions`, `schema/decisions.sql`)
//! under a secret nonce the proxy drew, naming the participants; the others prepare under
//! [`gid`] (`<kind>:<xid>:<digest>:<server>:<database oid>:<decider>:<participant>`: the
//! decider's xid, the start of the nonce's SHA-256, the low 32 bits of the decider server's
//! system identifier and its database's oid, in hex and decimal). The decider's commit makes the row
//! durable together with everything it wrote, so the row *is* the decision.
//!
//! Whoever finds such a prepared transaction after its proxy went away (the proxies' resolver,
//! the resharder) asks the decider, in the decider's database, two things, in this order and
//! in separate statements: the status of its xid ([`STATUS_SQL`]) and, once that transaction is
//! over, whether the row exists ([`RECORDED_SQL`]); [`verdict`] says what follows. The xid
//! alone cannot decide: a decider that crashed before the xid reached its disk comes back with
//! its counter below it and hands the same xid to a later transaction, whose commit says
//! nothing about this one. The row can: only the transaction that drew the nonce could insert
//! a row with that digest (the nonce is never shown; the row's xid is always the inserting
//! transaction's own). Rows no prepared transaction can need any more are deleted
//! ([`forgettable`]).
//!
//! Two kinds use it: a dual write's copy on a key's new owner during resharding, decided by the
//! old owner ([`Kind::DualWrite`]), and a transaction that wrote on several shards
//! ([`Kind::Transaction`]). Names of an older format (`<kind>:<xid>:<decider>:<participant>`,
//! no row) are still finished from the xid's status alone, as that format was.

use crate::migration::images::literal;

/// The server's identity as prepared names carry it: the low 32 bits of its system identifier
/// (made at `initdb`, kept by its physical replicas), in hex. A shard name pointed at another
/// server, or another deployment with the same shard names, shows there as another server.
macro_rules! server_id {
    () => {
        "(SELECT pg_catalog.lpad(pg_catalog.to_hex(system_identifier & 4294967295), 8, '0') \
          FROM pg_catalog.pg_control_system())"
    };
}

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

/// shardline's dual-write copies prepared in the connection's database older than `$1`
/// seconds (what the resharder finishes): name.
pub const DUAL_WRITES_SQL: &str = "SELECT gid FROM pg_catalog.pg_prepared_xacts \
     WHERE gid LIKE 'sl\\_dw:%' AND database = current_database() \
     AND prepared <= now() - make_interval(secs => $1)";

/// shardline's prepared transactions on a shard, in every database, older than `$1` seconds:
/// name, age in seconds, database and owner (a prepared transaction is finished from its own
/// database, by the user who prepared it or a superuser).
pub const LIST_SQL: &str = "SELECT gid, extract(epoch FROM now() - prepared)::float8, \
     database::text, owner::text FROM pg_catalog.pg_prepared_xacts \
     WHERE (gid LIKE 'sl\\_dw:%' OR gid LIKE 'sl\\_tx:%') \
     AND prepared <= now() - make_interval(secs => $1)";

/// The name of the database with oid `$1` (text), where a decider recorded its decision.
pub const DATABASE_SQL: &str =
    "SELECT datname::text FROM pg_catalog.pg_database WHERE oid = $1::text::oid";

/// The status (`committed`, `aborted`, `in progress`, or NULL when too old to tell) of
/// transaction `$1` on the decider.
///
/// An id the decider has not handed out (again) is `aborted`: a decider that crashed before
/// anything carrying the id reached its disk comes back with its counter below it, and such
/// a transaction never committed there (`pg_xact_status` would call the id "in the future").
///
/// The id handed out next is read with `pg_current_xact_id()`, which takes one for the asking
/// statement: a snapshot's `xmax` would not do, being one past the latest *completed* id, below
/// ids still running.
pub const STATUS_SQL: &str = "SELECT CASE WHEN $1::text::xid8 >= pg_current_xact_id() \
     THEN 'aborted' ELSE pg_xact_status($1::text::xid8)::text END";

/// Whether the decision row of transaction `$1` (xid) with digest `$2` exists on the decider,
/// asked in its database (oid `$3` on server `$4`; NULL when asked anywhere else, which cannot
/// tell — another server's database may have the same oid); NULL
/// while this statement's snapshot does not yet see that transaction as over (on
/// PostgreSQL before 15.2, 14.7 and 13.10, `pg_xact_status` could call a transaction committed
/// before snapshots saw its commit). Asked only once [`STATUS_SQL`] said it is over, in a
/// statement of its own.
pub const RECORDED_SQL: &str = concat!(
    "SELECT CASE \
     WHEN (SELECT oid FROM pg_catalog.pg_database \
           WHERE datname = pg_catalog.current_database())::text <> $3 \
       OR ",
    server_id!(),
    " <> $4 THEN NULL \
     WHEN pg_visible_in_snapshot($1::text::xid8, pg_current_snapshot()) \
     THEN EXISTS (SELECT FROM shardline.decisions WHERE xid = $1::text::xid8 AND digest = $2) END"
);

/// Decision rows older than a minute, whose participants may all be finished: digest and the
/// participants' shard names.
pub const STALE_SQL: &str = "SELECT digest, participants FROM shardline.decisions \
     WHERE decided_at < clock_timestamp() - interval '1 minute'";

/// Deletes the decision rows whose digest is in the text array `$1`.
pub const FORGET_SQL: &str = "DELETE FROM shardline.decisions WHERE digest = ANY($1)";

/// Where a database's decisions are, as prepared names carry it (`<server>:<database oid>`),
/// asked once per database by a control connection to it; not in the hot path (reading the
/// system identifier reads the server's control file).
pub const LOCATION_SQL: &str = concat!(
    "SELECT ",
    server_id!(),
    " || ':' || (SELECT oid FROM pg_catalog.pg_database \
     WHERE datname = pg_catalog.current_database())::text"
);

/// The statements, run in the decider's transaction just before `participants` (shard names)
/// prepare, that record the decision under `nonce`. The first row they answer is the
/// decision's part of the participants' names before its [`LOCATION_SQL`] (`<xid>:<digest>`,
/// the xid assigned if the transaction had none). The decider's commit then waits for its WAL
/// to reach the local disk even if the client set `synchronous_commit` off (any stronger
/// setting is left as it is): the parts are committed on the strength of it.
pub fn record_sql(nonce: &str, participants: &[&str]) -> String {
    let names: Vec<String> = participants.iter().map(|name| literal(name)).collect();
    format!(
        "INSERT INTO shardline.decisions (nonce, participants) \
         VALUES ({}, ARRAY[{}]::text[]) \
         RETURNING xid::text || ':' || digest; \
         SELECT pg_catalog.set_config('synchronous_commit', 'local', true) \
          WHERE pg_catalog.current_setting('synchronous_commit') = 'off'",
        literal(nonce),
        names.join(", ")
    )
}

/// A stale decision row ([`STALE_SQL`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub digest: String,
    pub participants: Vec<String>,
}

/// The stale rows that can be deleted: those no prepared transaction names (`named`: digests)
/// whose participants are all among the shards whose prepared transactions were listed
/// (`listed`). A row is read before the listing and committed only after all its participants
/// prepared, so a participant of such a row that is still prepared was listed: none is left.
pub fn forgettable(
    stale: Vec<Recorded>,
    listed: &std::collections::BTreeSet<&str>,
    named: &std::collections::BTreeSet<&str>,
) -> Vec<String> {
    stale
        .into_iter()
        .filter(|row| !named.contains(row.digest.as_str()))
        .filter(|row| row.participants.iter().all(|p| listed.contains(p.as_str())))
        .map(|row| row.digest)
        .collect()
}

/// A nonce for [`record_sql`] from random bits: 16 hex digits, never a `:`.
pub fn nonce(bits: u64) -> String {
    format!("{bits:016x}")
}

/// The name under which `participant` prepares its part of the transaction of `decider` that
/// recorded `decision` (`<xid>:<digest>:<server>:<database oid>`, as [`record_sql`] answers
/// it).
pub fn gid(kind: Kind, decision: &str, decider: &str, participant: &str) -> String {
    format!("{}:{decision}:{decider}:{participant}", kind.prefix())
}

/// Whether `gid` (or text starting with it) is a name of shardline's own, which a client's
/// `PREPARE TRANSACTION` must not take: the resolver would finish it.
pub fn reserved(gid: &str) -> bool {
    [Kind::DualWrite, Kind::Transaction].iter().any(|kind| {
        gid.strip_prefix(kind.prefix())
            .is_some_and(|rest| rest.starts_with(':'))
    })
}

/// What a prepared transaction's name says about its decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prepared<'a> {
    /// The decider's transaction id.
    pub xid: &'a str,
    /// Where its decision row is; `None` in a name of the older format, which has no row.
    pub recorded_in: Option<RecordedIn<'a>>,
    /// The decider's shard.
    pub decider: &'a str,
}

/// Where a decision row is, as a prepared name says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordedIn<'a> {
    /// The row's digest.
    pub digest: &'a str,
    /// The decider's server ([`server_id`]).
    pub server: &'a str,
    /// That database's oid.
    pub database: &'a str,
}

/// Reads a prepared transaction's name; `None` when it is not one of shardline's.
pub fn parse_gid(gid: &str) -> Option<Prepared<'_>> {
    let fields: Vec<&str> = gid.split(':').collect();
    [Kind::DualWrite, Kind::Transaction]
        .iter()
        .any(|k| Some(&k.prefix()) == fields.first())
        .then_some(())?;
    match fields[1..] {
        [xid, digest, server, database, decider, _] => Some(Prepared {
            xid,
            recorded_in: Some(RecordedIn {
                digest,
                server,
                database,
            }),
            decider,
        }),
        [xid, decider, _] => Some(Prepared {
            xid,
            recorded_in: None,
            decider,
        }),
        _ => None,
    }
}

/// What to do with a prepared transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Its decider's transaction still runs (or cannot be told apart): leave it.
    Wait,
    /// That transaction is over: ask whether it recorded its decision ([`RECORDED_SQL`]).
    AskRecord,
    /// Finish it with this statement.
    Finish(String),
}

/// The verdict on prepared transaction `gid`, from the status of its decider's transaction and,
/// once asked, whether the decision row exists.
pub fn verdict(gid: &str, status: Option<&str>, recorded: Option<bool>) -> Verdict {
    let Some(prepared) = parse_gid(gid) else {
        return Verdict::Wait;
    };
    let commit = match (prepared.recorded_in, status, recorded) {
        (_, Some("in progress"), _) => return Verdict::Wait,
        // Over (committed, aborted, or too old for the status to be kept): the row decides.
        (Some(_), _, Some(recorded)) => recorded,
        (Some(_), _, None) => return Verdict::AskRecord,
        (None, Some("committed"), _) => true,
        (None, Some("aborted"), _) => false,
        (None, _, _) => return Verdict::Wait,
    };
    let verb = if commit { "COMMIT" } else { "ROLLBACK" };
    Verdict::Finish(format!("{verb} PREPARED {}", literal(gid)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finishes_with(verdict: &Verdict, verb: &str) -> bool {
        matches!(verdict, Verdict::Finish(sql) if sql.starts_with(verb))
    }

    #[test]
    fn names_round_trip() {
        for kind in [Kind::DualWrite, Kind::Transaction] {
            let name = gid(kind, "4711:00ff:a1b2c3d4:16384", "s0", "s2");
            assert_eq!(
                parse_gid(&name),
                Some(Prepared {
                    xid: "4711",
                    recorded_in: Some(RecordedIn {
                        digest: "00ff",
                        server: "a1b2c3d4",
                        database: "16384"
                    }),
                    decider: "s0"
                })
            );
        }
        assert_eq!(
            parse_gid("sl_tx:4711:s0:s2"),
            Some(Prepared {
                xid: "4711",
                recorded_in: None,
                decider: "s0"
            })
        );
        for foreign in [
            "shardline_1_0",
            "sl_xx:1:d:i:1:s0:s1",
            "sl_tx:1:s0",
            "sl_tx:1:n:s0:s1",
            "sl_tx:1:d:1:s0:s1",
            "sl_tx:1:d:i:1:s0:s1:x",
        ] {
            assert_eq!(parse_gid(foreign), None, "{foreign}");
        }
        assert!(reserved("sl_tx:mine'") && reserved("sl_dw:"));
        assert!(!reserved("sl_txn") && !reserved("mine"));
    }

    /// The longest name: the largest xid, a digest, a server id, the largest oid, two shard
    /// names of the longest kind `validate` allows. PostgreSQL keeps at most 199 bytes.
    #[test]
    fn the_longest_name_fits() {
        let shard = "s".repeat(63);
        let decision = format!(
            "{}:{}:{}:{}",
            u64::MAX,
            "f".repeat(22),
            "i".repeat(8),
            u32::MAX
        );
        assert!(gid(Kind::Transaction, &decision, &shard, &shard).len() <= 199);
    }

    /// The decision row decides once the decider's transaction is over, whatever its xid's
    /// status says now: a committed status with no row is a later transaction that was handed
    /// the same xid after a crash.
    #[test]
    fn the_recorded_decision_decides() {
        let name = gid(Kind::Transaction, "4711:00ff:a1b2c3d4:5", "s0", "s1");
        assert_eq!(verdict(&name, Some("in progress"), None), Verdict::Wait);
        assert_eq!(
            verdict(&name, Some("in progress"), Some(true)),
            Verdict::Wait
        );
        for status in [Some("committed"), Some("aborted"), None] {
            assert_eq!(verdict(&name, status, None), Verdict::AskRecord);
            assert!(finishes_with(
                &verdict(&name, status, Some(true)),
                "COMMIT PREPARED"
            ));
            assert!(finishes_with(
                &verdict(&name, status, Some(false)),
                "ROLLBACK PREPARED"
            ));
        }
        assert_eq!(
            verdict(&name, Some("committed"), Some(true)),
            Verdict::Finish(format!("COMMIT PREPARED $s${name}$s$"))
        );
    }

    #[test]
    fn older_names_follow_the_status_alone() {
        let name = "sl_dw:4711:s0:s2";
        assert!(finishes_with(
            &verdict(name, Some("committed"), None),
            "COMMIT"
        ));
        assert!(finishes_with(
            &verdict(name, Some("aborted"), None),
            "ROLLBACK"
        ));
        assert_eq!(verdict(name, Some("in progress"), None), Verdict::Wait);
        assert_eq!(verdict(name, None, None), Verdict::Wait);
        assert_eq!(
            verdict("not ours", Some("committed"), Some(true)),
            Verdict::Wait
        );
    }

    #[test]
    fn the_record_statement_quotes_what_it_records() {
        let sql = record_sql("00ff", &["s1", "s$s$2"]);
        assert!(sql.starts_with(
            "INSERT INTO shardline.decisions (nonce, participants) VALUES ($s$00ff$s$, ARRAY[$s$s1$s$, $s1$s$s$2$s1$]::text[])"
        ));
    }

    /// A row goes only when nothing names it and every participant's shard was looked at.
    #[test]
    fn rows_are_forgotten_only_when_no_participant_can_need_them() {
        let row = |digest: &str, participants: &[&str]| Recorded {
            digest: digest.to_owned(),
            participants: participants.iter().map(|p| p.to_string()).collect(),
        };
        let stale = vec![
            row("done", &["s1", "s2"]),
            row("named", &["s1"]),
            row("unlisted", &["s1", "s9"]),
        ];
        let listed = std::collections::BTreeSet::from(["s0", "s1", "s2"]);
        let named = std::collections::BTreeSet::from(["named"]);
        assert_eq!(forgettable(stale, &listed, &named), ["done"]);
    }
}
