//! Statement kinds: what the proxy is told each statement is.

use super::*;
use crate::plan::SavepointOp;

#[test]
fn classifies_statements() {
    let config = config();
    let cases: Vec<(&str, StatementKind)> = vec![
        ("BEGIN", StatementKind::Begin),
        (
            "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY",
            StatementKind::Begin,
        ),
        ("START TRANSACTION", StatementKind::Begin),
        ("COMMIT", StatementKind::Commit),
        ("END", StatementKind::Commit),
        ("ROLLBACK", StatementKind::Rollback),
        ("ABORT", StatementKind::Rollback),
        (
            "ROLLBACK TO SAVEPOINT a",
            StatementKind::Savepoint {
                op: SavepointOp::RollbackTo,
                name: "a".into(),
            },
        ),
        (
            "SAVEPOINT Outer_1",
            StatementKind::Savepoint {
                op: SavepointOp::Define,
                name: "outer_1".into(),
            },
        ),
        (
            "SAVEPOINT \"Quoted\"",
            StatementKind::Savepoint {
                op: SavepointOp::Define,
                name: "Quoted".into(),
            },
        ),
        (
            "RELEASE SAVEPOINT a",
            StatementKind::Savepoint {
                op: SavepointOp::Release,
                name: "a".into(),
            },
        ),
        (
            "RELEASE a",
            StatementKind::Savepoint {
                op: SavepointOp::Release,
                name: "a".into(),
            },
        ),
        ("PREPARE TRANSACTION 'x'", StatementKind::PrepareTransaction),
        ("COMMIT PREPARED 'x'", StatementKind::TransactionControl),
        ("ROLLBACK PREPARED 'x'", StatementKind::TransactionControl),
        (
            "SET search_path TO app, public",
            StatementKind::Set {
                name: "search_path".into(),
                value: "app, public".into(),
            },
        ),
        (
            "set Statement_Timeout = 5000",
            StatementKind::Set {
                name: "statement_timeout".into(),
                value: "5000".into(),
            },
        ),
        (
            "SET application_name = 'my app'",
            StatementKind::Set {
                name: "application_name".into(),
                value: "'my app'".into(),
            },
        ),
        (
            "SET SESSION datestyle TO iso, mdy",
            StatementKind::Set {
                name: "datestyle".into(),
                value: "iso, mdy".into(),
            },
        ),
        (
            "SET TIME ZONE 'UTC'",
            StatementKind::Set {
                name: "timezone".into(),
                value: "'UTC'".into(),
            },
        ),
        (
            "SET TIME ZONE LOCAL",
            StatementKind::Set {
                name: "timezone".into(),
                value: "DEFAULT".into(),
            },
        ),
        (
            "SET x TO DEFAULT",
            StatementKind::Set {
                name: "x".into(),
                value: "DEFAULT".into(),
            },
        ),
        (
            "SET myapp.tenant = '42'",
            StatementKind::Set {
                name: "myapp.tenant".into(),
                value: "'42'".into(),
            },
        ),
        (
            "SET ROLE admin",
            StatementKind::Set {
                name: "role".into(),
                value: "admin".into(),
            },
        ),
        ("SET LOCAL statement_timeout = 0", StatementKind::SetLocal),
        (
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            StatementKind::SetLocal,
        ),
        ("SET CONSTRAINTS ALL DEFERRED", StatementKind::SetLocal),
        (
            "RESET search_path",
            StatementKind::Reset {
                name: "search_path".into(),
            },
        ),
        (
            "RESET TIME ZONE",
            StatementKind::Reset {
                name: "timezone".into(),
            },
        ),
        ("RESET ALL", StatementKind::ResetAll),
        ("DISCARD ALL", StatementKind::DiscardAll),
        ("DEALLOCATE ALL", StatementKind::DeallocateAll),
        ("DEALLOCATE PREPARE ALL", StatementKind::DeallocateAll),
        (
            "DEALLOCATE _pg3_7",
            StatementKind::Deallocate {
                name: "_pg3_7".into(),
            },
        ),
        (
            "DEALLOCATE PREPARE \"Mixed\"",
            StatementKind::Deallocate {
                name: "Mixed".into(),
            },
        ),
        (
            "SET SESSION AUTHORIZATION bob",
            StatementKind::Set {
                name: "session_authorization".into(),
                value: "bob".into(),
            },
        ),
        (
            "SET ROLE NONE",
            StatementKind::Set {
                name: "role".into(),
                value: "none".into(),
            },
        ),
        (
            "SET NAMES 'UTF8'",
            StatementKind::Set {
                name: "client_encoding".into(),
                value: "'UTF8'".into(),
            },
        ),
        (
            "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ COMMITTED",
            StatementKind::Set {
                name: "default_transaction_isolation".into(),
                value: "'read committed'".into(),
            },
        ),
        (
            "SET search_path = \"$user\", public",
            StatementKind::Set {
                name: "search_path".into(),
                value: "\"$user\", public".into(),
            },
        ),
        (
            "SET extra_float_digits = -1",
            StatementKind::Set {
                name: "extra_float_digits".into(),
                value: "-1".into(),
            },
        ),
        ("DISCARD PLANS", StatementKind::SetLocal),
        ("FETCH 10 FROM c", StatementKind::TransactionControl),
        ("MOVE NEXT IN c", StatementKind::TransactionControl),
        ("CLOSE c", StatementKind::TransactionControl),
        ("DECLARE c CURSOR FOR SELECT 1", StatementKind::Read),
        ("LOCK users", StatementKind::Write),
        ("CALL p()", StatementKind::Write),
        ("DO $$ BEGIN END $$", StatementKind::Write),
        ("VACUUM", StatementKind::Ddl),
        ("REINDEX TABLE t", StatementKind::Ddl),
        ("SHOW search_path", StatementKind::Show),
        ("SET x FROM CURRENT", StatementKind::Unsupported),
        ("SHOW TRANSACTION ISOLATION LEVEL", StatementKind::Show),
        ("SHOW ALL", StatementKind::Show),
        ("SELECT 1", StatementKind::Read),
        ("VALUES (1)", StatementKind::Read),
        ("TABLE users", StatementKind::Read),
        ("WITH x AS (SELECT 1) SELECT * FROM x", StatementKind::Read),
        (
            "SELECT * FROM users WHERE id = 1 FOR UPDATE",
            StatementKind::Write,
        ),
        (
            "WITH d AS (DELETE FROM users WHERE id = 1 RETURNING *) SELECT * FROM d",
            StatementKind::Write,
        ),
        ("INSERT INTO users (id) VALUES (1)", StatementKind::Write),
        ("UPDATE users SET a = 1 WHERE id = 1", StatementKind::Write),
        ("DELETE FROM users WHERE id = 1", StatementKind::Write),
        ("CREATE TABLE t (id int)", StatementKind::Ddl),
        ("CREATE TABLE t AS SELECT 1", StatementKind::Ddl),
        ("DROP INDEX i", StatementKind::Ddl),
        ("TRUNCATE users", StatementKind::Ddl),
        ("COPY users FROM STDIN", StatementKind::CopyIn),
        ("COPY users TO STDOUT", StatementKind::CopyOut),
        ("COPY (SELECT 1) TO STDOUT", StatementKind::CopyOut),
        ("EXPLAIN SELECT 1", StatementKind::Explain),
        (
            "EXPLAIN ANALYZE UPDATE users SET a = 1 WHERE id = 1",
            StatementKind::Explain,
        ),
        ("PREPARE p AS SELECT 1", StatementKind::Unsupported),
        ("LISTEN x", StatementKind::Unsupported),
        ("SELECT 1; SELECT 2", StatementKind::Compound),
        ("", StatementKind::Empty),
        ("  ;; /* c */ ", StatementKind::Empty),
    ];
    let mut failures = Vec::new();
    for (sql, want) in &cases {
        let got = plan(&config, sql).kind;
        if got != *want {
            failures.push(format!("{sql:?}: want {want:?}, got {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let compound = plan(&config, "BEGIN; SET x = 1; SELECT 1; COMMIT");
    assert_eq!(
        compound.parts(),
        &[
            StatementKind::Begin,
            StatementKind::Set {
                name: "x".into(),
                value: "1".into()
            },
            StatementKind::Read,
            StatementKind::Commit
        ]
    );
}
