//! Routing of writes (INSERT, UPDATE, DELETE) and of utility statements (DDL, COPY, SET…).

use super::*;

#[test]
fn routes_writes() {
    let env = Env { config: config() };
    let e = &env;
    let (a, b) = e.users_apart();
    let (c, d) = e.users_together();
    let cases = vec![
        // INSERT: the key comes from the row.
        case(format!("INSERT INTO users (id, name) VALUES ({a}, 'ann')"), vec![], e.one(e.user(a))),
        case("INSERT INTO users (name, id) VALUES ($1, $2)", vec![t("ann"), t(b)], e.one(e.user(b))),
        case("INSERT INTO users (name, id) VALUES ($1, $2)", vec![t("ann"), b8(b)], e.one(e.user(b))),
        case("INSERT INTO users (id, name) VALUES ($1::int8, 'x') RETURNING id", vec![t(a)], e.one(e.user(a))),
        case(
            format!("INSERT INTO users AS u (id, name) VALUES ({a}, 'x') ON CONFLICT (id) DO UPDATE SET name = excluded.name"),
            vec![],
            e.one(e.user(a)),
        ),
        case(format!("INSERT INTO users (id) VALUES ({a}) ON CONFLICT (id) DO UPDATE SET id = excluded.id"), vec![], e.one(e.user(a))),
        case(format!("INSERT INTO users (id) VALUES ({a}) ON CONFLICT DO NOTHING"), vec![], e.one(e.user(a))),
        case(format!("INSERT INTO users (id, name) VALUES ({c}, 'a'), ({d}, 'b')"), vec![], e.one(2)),
        case(format!("INSERT INTO users (id, name) VALUES ({a}, 'a'), ({b}, 'b')"), vec![], Want::Error("0A000")),
        case("INSERT INTO users (id, name) VALUES ($1, 'a'), ($2, 'b')", vec![t(c), t(d)], e.one(2)),
        case("INSERT INTO users (id, name) VALUES ($1, 'a'), ($2, 'b')", vec![t(a), t(b)], Want::Error("0A000")),
        case("INSERT INTO users (name) VALUES ('x')", vec![], Want::Error("0A000")),
        case("INSERT INTO users VALUES (1, 'x')", vec![], Want::Error("0A000")),
        case("INSERT INTO users DEFAULT VALUES", vec![], Want::Error("0A000")),
        case("INSERT INTO users (id, name) VALUES (DEFAULT, 'x')", vec![], Want::Error("0A000")),
        case("INSERT INTO users (id, name) VALUES (nextval('s'), 'x')", vec![], Want::Error("0A000")),
        case("INSERT INTO users (id, name) VALUES (NULL, 'x')", vec![], Want::Error("23502")),
        case("INSERT INTO users (id, name) VALUES ($1, 'x')", vec![P::Null], Want::Error("23502")),
        case("INSERT INTO users (id, name) VALUES ('abc', 'x')", vec![], Want::Error("22P02")),
        case("INSERT INTO users (id, name) SELECT id, name FROM old_users", vec![], Want::Error("0A000")),
        case("INSERT INTO events (id) VALUES (1500)", vec![], e.one(1)),
        case("INSERT INTO accounts (email) VALUES ($1)", vec![t("x@y.z")], e.one(e.account("x@y.z"))),
        case(format!("INSERT INTO devices (id) VALUES ('{UUID_B}')"), vec![], e.one(e.device(UUID_B))),
        case("INSERT INTO countries (code, name) VALUES ('fr', 'France')", vec![], e.all()),
        case("INSERT INTO audit_log (msg) VALUES ('x')", vec![], e.one(0)),
        case("INSERT INTO audit_log (msg) SELECT name FROM countries", vec![], e.one(0)),
        case(format!("INSERT INTO audit_log (msg) SELECT name FROM users WHERE id = {}", e.user_on(0)), vec![], e.one(0)),
        case(format!("INSERT INTO audit_log (msg) SELECT name FROM users WHERE id = {}", e.user_on(1)), vec![], Want::Error("0A000")),
        case("INSERT INTO countries (code) SELECT country FROM users", vec![], Want::Error("0A000")),
        // UPDATE / DELETE.
        case(format!("UPDATE users SET name = 'x' WHERE id = {a}"), vec![], e.one(e.user(a))),
        case("UPDATE users SET name = $1 WHERE id = $2", vec![t("x"), b8(b)], e.one(e.user(b))),
        case("UPDATE users SET name = 'x'", vec![], e.all()),
        case("UPDATE users SET name = 'x' WHERE name = 'y'", vec![], e.all()),
        case(format!("DELETE FROM users WHERE id = {a}"), vec![], e.one(e.user(a))),
        case("DELETE FROM users WHERE id = ANY($1)", vec![t(format!("{{{a},{b}}}"))], e.set(&[e.user(a), e.user(b)])),
        case("DELETE FROM users", vec![], e.all()),
        case(format!("DELETE FROM orders o USING users u WHERE o.user_id = u.id AND u.id = {a}"), vec![], e.one(e.user(a))),
        case(format!("UPDATE users u SET country = c.name FROM countries c WHERE c.code = u.cc AND u.id = {a}"), vec![], e.one(e.user(a))),
        case("UPDATE users SET id = 5 WHERE name = 'x'", vec![], Want::Error("0A000")),
        case(format!("UPDATE users SET id = {d} WHERE id = {c}"), vec![], e.one(2)),
        case(format!("UPDATE users SET id = {b} WHERE id = {a}"), vec![], Want::Error("0A000")),
        case("UPDATE users SET id = id + 1 WHERE id = 3", vec![], Want::Error("0A000")),
        case(format!("UPDATE users u SET id = u.id, name = 'x' WHERE u.id = {a}"), vec![], e.one(e.user(a))),
        case("UPDATE orders SET user_id = $1, total = 5 WHERE user_id = $1 AND id = 9", vec![t(a)], e.one(e.user(a))),
        case("UPDATE users SET id = $1 WHERE id = $2", vec![t(c), t(d)], e.one(2)),
        case("UPDATE users SET id = $1 WHERE id = $2", vec![t(a), t(b)], Want::Error("0A000")),
        case("UPDATE countries SET name = 'France' WHERE code = 'fr'", vec![], e.all()),
        case("DELETE FROM countries", vec![], e.all()),
        case("UPDATE countries SET n = (SELECT count(*) FROM users)", vec![], Want::Error("0A000")),
        case("UPDATE settings SET v = 1", vec![], e.one(0)),
        case("MERGE INTO users t USING countries s ON t.country = s.code WHEN MATCHED THEN UPDATE SET x = 1", vec![], Want::Error("0A000")),
        // Data-modifying WITH.
        case(format!("WITH d AS (DELETE FROM users WHERE id = {a} RETURNING *) SELECT * FROM d"), vec![], e.one(e.user(a))),
        case(format!("WITH d AS (DELETE FROM users WHERE id = {a} RETURNING id) INSERT INTO orders (user_id) SELECT id FROM d"), vec![], Want::Error("0A000")),
    ];
    check(&env, cases);
}

#[test]
fn routes_utility_statements() {
    let env = Env { config: config() };
    let e = &env;
    let (a, b) = e.users_apart();
    let cases = vec![
        // Handled by the proxy: default shard.
        case("BEGIN", vec![], e.one(0)),
        case("SET search_path = app, public", vec![], e.one(0)),
        case("SHOW server_version", vec![], e.one(0)),
        case("", vec![], e.one(0)),
        case(" ; -- nothing\n", vec![], e.one(0)),
        // DDL: every shard.
        case("CREATE TABLE t (id int8 PRIMARY KEY)", vec![], e.all()),
        // ... but a temporary table lives with the session, on the default shard.
        case("CREATE TEMP TABLE scratch (x int)", vec![], e.one(0)),
        case(
            "CREATE TEMPORARY TABLE scratch (x int) ON COMMIT DROP",
            vec![],
            e.one(0),
        ),
        case("CREATE INDEX ON users (name)", vec![], e.all()),
        case("ALTER TABLE users ADD COLUMN age int", vec![], e.all()),
        case("DROP TABLE IF EXISTS t", vec![], e.all()),
        case("TRUNCATE users", vec![], e.all()),
        case("GRANT SELECT ON users TO bob", vec![], e.all()),
        case("COMMENT ON TABLE users IS 'people'", vec![], e.all()),
        case("VACUUM ANALYZE users", vec![], e.all()),
        case("CREATE EXTENSION IF NOT EXISTS pgcrypto", vec![], e.all()),
        case(
            "CREATE TABLE t2 AS SELECT * FROM users",
            vec![],
            Want::Error("0A000"),
        ),
        case(
            "CREATE TABLE t2 AS SELECT * FROM settings",
            vec![],
            e.one(0),
        ),
        case("SELECT * INTO t3 FROM users", vec![], Want::Error("0A000")),
        case("SELECT * INTO t3 FROM settings", vec![], e.one(0)),
        // COPY.
        case("COPY settings FROM STDIN", vec![], e.one(0)),
        case(
            "COPY users FROM STDIN WITH (FORMAT csv)",
            vec![],
            Want::Error("0A000"),
        ),
        case("COPY countries FROM STDIN", vec![], Want::Error("0A000")),
        case("COPY users TO STDOUT", vec![], e.all()),
        case("COPY countries TO STDOUT", vec![], e.one(0)),
        case("COPY events (id) TO STDOUT", vec![], e.set(&[0, 1, 2])),
        case(
            format!("COPY (SELECT * FROM users WHERE id = {a}) TO STDOUT"),
            vec![],
            e.one(e.user(a)),
        ),
        case("COPY (SELECT * FROM users) TO STDOUT", vec![], e.all()),
        case(
            "COPY (SELECT count(*) FROM users) TO STDOUT",
            vec![],
            Want::Error("0A000"),
        ),
        case(
            "COPY (SELECT * FROM users ORDER BY id) TO STDOUT",
            vec![],
            Want::Error("0A000"),
        ),
        case(
            "COPY users TO '/tmp/users.csv'",
            vec![],
            Want::Error("0A000"),
        ),
        case(
            "COPY users FROM PROGRAM 'cat x'",
            vec![],
            Want::Error("0A000"),
        ),
        // EXPLAIN routes like the statement.
        case(
            format!("EXPLAIN SELECT * FROM users WHERE id = {a}"),
            vec![],
            e.one(e.user(a)),
        ),
        case(
            "EXPLAIN (ANALYZE, BUFFERS) SELECT * FROM users WHERE id = $1",
            vec![t(b)],
            e.one(e.user(b)),
        ),
        case("EXPLAIN SELECT * FROM users", vec![], e.all()),
        // Refused statements.
        case("PREPARE p AS SELECT 1", vec![], Want::Error("0A000")),
        case("EXECUTE p", vec![], Want::Error("0A000")),
        case("LISTEN jobs", vec![], Want::Error("0A000")),
        case("NOTIFY jobs, 'x'", vec![], Want::Error("0A000")),
        // Several statements: one shard or refused.
        case(
            format!("BEGIN; UPDATE users SET n = 1 WHERE id = {a}; COMMIT"),
            vec![],
            e.one(e.user(a)),
        ),
        case(
            format!("SELECT * FROM users WHERE id = {a}; SELECT * FROM users WHERE id = {a}"),
            vec![],
            e.one(e.user(a)),
        ),
        case(
            format!("SELECT * FROM users WHERE id = {a}; SELECT * FROM users WHERE id = {b}"),
            vec![],
            Want::Error("0A000"),
        ),
        case(
            "SELECT 1; SELECT * FROM users",
            vec![],
            Want::Error("0A000"),
        ),
        case("SELECT 1; SELECT 2", vec![], e.one(0)),
        // Unparseable text: default shard unless it mentions a configured table.
        case("REINDEX TABLE settings", vec![], e.all()),
        case("CLUSTER settings", vec![], e.all()),
        case("REFRESH MATERIALIZED VIEW stats", vec![], e.one(0)),
        case("DO $$ BEGIN PERFORM 1; END $$", vec![], e.one(0)),
        case(
            "DO $$ BEGIN UPDATE users SET x = 1; END $$",
            vec![],
            Want::Error("42601"),
        ),
        case(
            "SELECT * FROM users WHERE id = 1 !!! garbage",
            vec![],
            Want::Error("42601"),
        ),
        case("SELEC * FROM settings", vec![], e.one(0)),
        case("SELECT 'unterminated", vec![], e.one(0)),
        case(
            "SELECT * FROM users WHERE note = 'unterminated",
            vec![],
            Want::Error("42601"),
        ),
        case("PREPARE TRANSACTION 'tx1'", vec![], e.one(0)),
        case("COMMIT PREPARED 'tx1'", vec![], e.one(0)),
        // LOCK and cursors.
        case("LOCK TABLE users IN SHARE MODE", vec![], e.all()),
        case("LOCK TABLE settings", vec![], e.one(0)),
        case(
            format!("DECLARE c CURSOR FOR SELECT * FROM users WHERE id = {a}"),
            vec![],
            e.one(e.user(a)),
        ),
        case(
            "DECLARE c CURSOR FOR SELECT * FROM users",
            vec![],
            Want::Error("0A000"),
        ),
        case("FETCH 10 FROM c", vec![], e.one(0)),
        case("CALL refresh_stats(1)", vec![], e.one(0)),
    ];
    check(&env, cases);
}
