//! Table-driven routing tests: SQL text and parameters in, route or SQLSTATE out.
//!
//! Expected shards are computed through the config (`shard_for`), never hard-coded, so the
//! tests check the analysis, not the hash functions (those are checked against PostgreSQL
//! elsewhere).

use crate::config::{Config, ShardId};
use crate::key::KeyValue;
use crate::params::Param;
use crate::plan::{plan, Route, StatementKind};

const CONFIG: &str = "
users:
  - name: app
    password: app
shards:
  - {name: s0, port: 5432}
  - {name: s1, port: 5433}
  - {name: s2, port: 5434}
  - {name: s3, port: 5435}
tables:
  - {name: users, sharding: hash, column: id, type: int8}
  - {name: orders, sharding: hash, column: user_id, type: int8}
  - {name: accounts, sharding: hash, column: email, type: text}
  - {name: devices, sharding: hash, column: id, type: uuid}
  - name: events
    sharding: range
    column: id
    type: int8
    ranges:
      - {to: 1000, shard: s0}
      - {from: 1000, to: 2000, shard: s1}
      - {from: 2000, shard: s2}
  - {name: countries, sharding: reference}
";

const UUID_A: &str = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
const UUID_B: &str = "6ecd8c99-4036-403d-bf84-cf8400f67836";

fn config() -> Config {
    match Config::from_yaml(CONFIG) {
        Ok(c) => c,
        Err(e) => panic!("test config rejected: {e}"),
    }
}

/// A Bind parameter in a test case.
#[derive(Debug, Clone)]
enum P {
    Text(String),
    Bin(Vec<u8>),
    Null,
}

fn t(s: impl ToString) -> P {
    P::Text(s.to_string())
}

fn b8(v: i64) -> P {
    P::Bin(v.to_be_bytes().to_vec())
}

fn b4(v: i32) -> P {
    P::Bin(v.to_be_bytes().to_vec())
}

/// A binary int8 array parameter (`array_send` format).
fn b8_array(values: &[Option<i64>]) -> P {
    let mut out = Vec::new();
    out.extend_from_slice(&1i32.to_be_bytes());
    out.extend_from_slice(&i32::from(values.iter().any(Option::is_none)).to_be_bytes());
    out.extend_from_slice(&20u32.to_be_bytes());
    out.extend_from_slice(&(values.len() as i32).to_be_bytes());
    out.extend_from_slice(&1i32.to_be_bytes());
    for v in values {
        match v {
            Some(v) => {
                out.extend_from_slice(&8i32.to_be_bytes());
                out.extend_from_slice(&v.to_be_bytes());
            }
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    P::Bin(out)
}

fn params(ps: &[P]) -> Vec<Param<'_>> {
    ps.iter()
        .map(|p| match p {
            P::Text(s) => Param::Text(s.as_bytes()),
            P::Bin(b) => Param::Binary(b),
            P::Null => Param::Null,
        })
        .collect()
}

/// What a case expects.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Want {
    Route(Route),
    Error(&'static str),
}

struct Env {
    config: Config,
}

impl Env {
    fn shard(&self, table: &str, key: KeyValue) -> ShardId {
        match self.config.table(table).map(|t| t.shard_for(&key)) {
            Some(Ok(s)) => s,
            other => panic!("cannot place {key} in {table}: {other:?}"),
        }
    }

    fn user(&self, k: i64) -> ShardId {
        self.shard("users", KeyValue::Int(k))
    }

    fn account(&self, email: &str) -> ShardId {
        self.shard("accounts", KeyValue::Text(email.into()))
    }

    fn device(&self, uuid: &str) -> ShardId {
        match crate::key::KeyType::Uuid.parse_text(uuid) {
            Ok(v) => self.shard("devices", v),
            Err(e) => panic!("{e}"),
        }
    }

    /// The smallest positive user key on `shard`.
    fn user_on(&self, shard: ShardId) -> i64 {
        (1..100_000)
            .find(|k| self.user(*k) == shard)
            .unwrap_or_else(|| panic!("no key on shard {shard}"))
    }

    /// Two user keys on different shards.
    fn users_apart(&self) -> (i64, i64) {
        (self.user_on(0), self.user_on(1))
    }

    /// Two different user keys on the same shard.
    fn users_together(&self) -> (i64, i64) {
        let a = self.user_on(2);
        let b = (a + 1..100_000).find(|k| self.user(*k) == 2).unwrap_or(a);
        (a, b)
    }

    fn one(&self, s: ShardId) -> Want {
        Want::Route(Route::Single(s))
    }

    fn set(&self, shards: &[ShardId]) -> Want {
        let mut v = shards.to_vec();
        v.sort_unstable();
        v.dedup();
        if v.len() == 1 {
            Want::Route(Route::Single(v[0]))
        } else {
            Want::Route(Route::Multi(v))
        }
    }

    fn all(&self) -> Want {
        Want::Route(Route::Multi(vec![0, 1, 2, 3]))
    }
}

fn check(env: &Env, cases: Vec<(String, Vec<P>, Want)>) {
    let mut failures = Vec::new();
    for (sql, ps, want) in &cases {
        let plan = plan(&env.config, sql);
        let bound = params(ps);
        let got = match plan.route(&env.config, &bound) {
            Ok(route) => Want::Route(route),
            Err(e) => Want::Error(e.sqlstate),
        };
        if got != *want {
            let detail = plan.route(&env.config, &bound);
            failures.push(format!(
                "{sql}\n    params {ps:?}\n    want {want:?}\n    got  {detail:?}\n    explain: {}",
                plan.explain(&env.config, &bound)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

fn case(sql: impl Into<String>, ps: Vec<P>, want: Want) -> (String, Vec<P>, Want) {
    (sql.into(), ps, want)
}

#[test]
fn routes_reads() {
    let env = Env { config: config() };
    let e = &env;
    let (a, b) = e.users_apart();
    let (c, d) = e.users_together();
    let cases = vec![
        // Equality in either order, literals, parentheses, casts, qualified names.
        case(
            "SELECT * FROM users WHERE id = 42",
            vec![],
            e.one(e.user(42)),
        ),
        case(
            "SELECT * FROM users WHERE 42 = id",
            vec![],
            e.one(e.user(42)),
        ),
        case(
            "select name from USERS where ID = '42'",
            vec![],
            e.one(e.user(42)),
        ),
        case(
            "SELECT * FROM users WHERE (id) = (42)",
            vec![],
            e.one(e.user(42)),
        ),
        case(
            "SELECT * FROM users WHERE id = 42::bigint",
            vec![],
            e.one(e.user(42)),
        ),
        case(
            "SELECT * FROM users WHERE id::bigint = 42",
            vec![],
            e.one(e.user(42)),
        ),
        case(
            "SELECT * FROM users WHERE id = CAST('42' AS int8)",
            vec![],
            e.one(e.user(42)),
        ),
        case(
            "SELECT * FROM users WHERE id = -7",
            vec![],
            e.one(e.user(-7)),
        ),
        case(
            "SELECT * FROM users WHERE id = 1_000",
            vec![],
            e.one(e.user(1000)),
        ),
        case(
            "SELECT * FROM users u WHERE u.id = 42",
            vec![],
            e.one(e.user(42)),
        ),
        case(
            "SELECT * FROM public.users WHERE public.users.id = 42",
            vec![],
            e.one(e.user(42)),
        ),
        case(
            "SELECT * FROM users AS u WHERE u.id = 42 AND u.name = 'x'",
            vec![],
            e.one(e.user(42)),
        ),
        case(
            "SELECT * FROM ONLY users WHERE id = 42",
            vec![],
            e.one(e.user(42)),
        ),
        case("TABLE users", vec![], e.all()),
        // Parameters, text and binary, with casts.
        case(
            "SELECT * FROM users WHERE id = $1",
            vec![t(42)],
            e.one(e.user(42)),
        ),
        case(
            "SELECT * FROM users WHERE id = $1",
            vec![b8(42)],
            e.one(e.user(42)),
        ),
        case(
            "SELECT * FROM users WHERE id = $1",
            vec![b4(42)],
            e.one(e.user(42)),
        ),
        case(
            "SELECT * FROM users WHERE id = $1::bigint",
            vec![t(42)],
            e.one(e.user(42)),
        ),
        case(
            "SELECT * FROM users WHERE name = $1 AND id = $2",
            vec![t("bob"), t(42)],
            e.one(e.user(42)),
        ),
        // IN, OR, AND.
        case(
            format!("SELECT * FROM users WHERE id IN ({a}, {b})"),
            vec![],
            e.set(&[e.user(a), e.user(b)]),
        ),
        case(
            format!("SELECT * FROM users WHERE id IN ({c}, {d})"),
            vec![],
            e.one(2),
        ),
        case(
            "SELECT * FROM users WHERE id IN ($1, $2)",
            vec![t(a), b8(b)],
            e.set(&[e.user(a), e.user(b)]),
        ),
        case(
            format!("SELECT * FROM users WHERE id = {a} OR id = {b}"),
            vec![],
            e.set(&[e.user(a), e.user(b)]),
        ),
        case(
            format!("SELECT * FROM users WHERE (id = {a} OR id = {b}) AND id = {a}"),
            vec![],
            e.one(e.user(a)),
        ),
        case(
            format!("SELECT * FROM users WHERE id = {a} AND name = 'x'"),
            vec![],
            e.one(e.user(a)),
        ),
        case(
            format!("SELECT * FROM users WHERE id = {a} OR name = 'x'"),
            vec![],
            e.all(),
        ),
        case(
            format!("SELECT * FROM users WHERE id = {c} AND id = {d}"),
            vec![],
            e.one(2),
        ),
        case(
            format!("SELECT * FROM users WHERE id = {a} AND id = {b}"),
            vec![],
            e.one(0),
        ),
        case(
            format!("SELECT * FROM users WHERE NOT (id = {a})"),
            vec![],
            e.all(),
        ),
        case(
            format!("SELECT * FROM users WHERE id <> {a}"),
            vec![],
            e.all(),
        ),
        case("SELECT * FROM users WHERE id::text = '42'", vec![], e.all()),
        case(
            "SELECT * FROM users WHERE id::text = 'abc'",
            vec![],
            e.all(),
        ),
        case(
            "SELECT * FROM accounts WHERE email = 'abcdef'::varchar(3)",
            vec![],
            e.all(),
        ),
        case(
            "SELECT * FROM accounts WHERE email = 'ann@example.com'::text",
            vec![],
            e.one(e.account("ann@example.com")),
        ),
        case(
            "SELECT * FROM accounts WHERE lower(email) = 'x'",
            vec![],
            e.all(),
        ),
        case(
            "SELECT * FROM users WHERE id = 0x2A",
            vec![],
            e.one(e.user(42)),
        ),
        case(
            format!("SELECT * FROM users WHERE (id, name) = ({a}, 'x')"),
            vec![],
            e.one(e.user(a)),
        ),
        case(
            format!("SELECT * FROM users WHERE (id, name) IN (({a}, 'x'), ({b}, 'y'))"),
            vec![],
            e.set(&[e.user(a), e.user(b)]),
        ),
        // ANY with arrays: parameter (text and binary), literal, ARRAY[...].
        case(
            "SELECT * FROM users WHERE id = ANY($1)",
            vec![t(format!("{{{a},{b}}}"))],
            e.set(&[e.user(a), e.user(b)]),
        ),
        case(
            "SELECT * FROM users WHERE id = ANY($1::bigint[])",
            vec![t(format!("{{{c}, \"{d}\", NULL}}"))],
            e.one(2),
        ),
        case(
            "SELECT * FROM users WHERE id = ANY($1)",
            vec![b8_array(&[Some(a), None, Some(b)])],
            e.set(&[e.user(a), e.user(b)]),
        ),
        case(
            format!("SELECT * FROM users WHERE id = ANY('{{{a},{b}}}')"),
            vec![],
            e.set(&[e.user(a), e.user(b)]),
        ),
        case(
            format!("SELECT * FROM users WHERE id = ANY(ARRAY[{c}, {d}])"),
            vec![],
            e.one(2),
        ),
        case(
            format!("SELECT * FROM users WHERE id = ANY(ARRAY[$1, {b}]::int8[])"),
            vec![t(a)],
            e.set(&[e.user(a), e.user(b)]),
        ),
        case(
            "SELECT * FROM users WHERE id = ANY($1)",
            vec![t("{}")],
            e.one(0),
        ),
        case(
            "SELECT * FROM users WHERE id = ANY($1)",
            vec![t("{1,")],
            Want::Error("22P02"),
        ),
        // No restriction: every shard of the table.
        case("SELECT * FROM users", vec![], e.all()),
        case(
            "SELECT count(*) FROM users WHERE name LIKE 'a%'",
            vec![],
            e.all(),
        ),
        case("SELECT * FROM users WHERE id > 5", vec![], e.all()),
        case("SELECT * FROM events", vec![], e.set(&[0, 1, 2])),
        // Other key types.
        case(
            "SELECT * FROM accounts WHERE email = 'ann@example.com'",
            vec![],
            e.one(e.account("ann@example.com")),
        ),
        case(
            "SELECT * FROM accounts WHERE email = $1",
            vec![t("bob@example.com")],
            e.one(e.account("bob@example.com")),
        ),
        case(
            "SELECT * FROM accounts WHERE email = $1",
            vec![P::Bin(b"bob@example.com".to_vec())],
            e.one(e.account("bob@example.com")),
        ),
        case(
            "SELECT * FROM accounts WHERE email = E'x\\ty'",
            vec![],
            e.one(e.account("x\ty")),
        ),
        case(
            format!("SELECT * FROM devices WHERE id = '{UUID_A}'::uuid"),
            vec![],
            e.one(e.device(UUID_A)),
        ),
        case(
            format!("SELECT * FROM devices WHERE id = uuid '{UUID_B}'"),
            vec![],
            e.one(e.device(UUID_B)),
        ),
        case(
            format!("SELECT * FROM devices WHERE id = '{UUID_A}'"),
            vec![],
            e.one(e.device(UUID_A)),
        ),
        case(
            "SELECT * FROM devices WHERE id = $1",
            vec![P::Bin(vec![
                0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38,
                0x0a, 0x11,
            ])],
            e.one(e.device(UUID_A)),
        ),
        // Range sharding.
        case("SELECT * FROM events WHERE id = 5", vec![], e.one(0)),
        case("SELECT * FROM events WHERE id = 1000", vec![], e.one(1)),
        case(
            "SELECT * FROM events WHERE id = $1",
            vec![t(999_999)],
            e.one(2),
        ),
        case(
            "SELECT * FROM events WHERE id IN (5, 1500)",
            vec![],
            e.set(&[0, 1]),
        ),
        // NULL keys match no row: one shard of the table answers.
        case("SELECT * FROM users WHERE id = NULL", vec![], e.one(0)),
        case("SELECT * FROM users WHERE id = $1", vec![P::Null], e.one(0)),
        case(
            format!("SELECT * FROM users WHERE id = $1 OR id = {b}"),
            vec![P::Null],
            e.one(e.user(b)),
        ),
        // Bad keys and missing parameters.
        case(
            "SELECT * FROM users WHERE id = 'abc'",
            vec![],
            Want::Error("22P02"),
        ),
        case(
            "SELECT * FROM users WHERE id = 99999999999999999999",
            vec![],
            Want::Error("22P02"),
        ),
        case(
            "SELECT * FROM users WHERE id = $1",
            vec![t("abc")],
            Want::Error("22P02"),
        ),
        case(
            "SELECT * FROM users WHERE id = $1",
            vec![P::Bin(vec![1, 2, 3])],
            Want::Error("22P02"),
        ),
        case(
            "SELECT * FROM users WHERE id = $2",
            vec![t(1)],
            Want::Error("08P01"),
        ),
        case(
            "SELECT * FROM devices WHERE id = 'nope'",
            vec![],
            Want::Error("22P02"),
        ),
        // Tables that are not sharded.
        case("SELECT 1", vec![], e.one(0)),
        case("SELECT version()", vec![], e.one(0)),
        case("SELECT now(), $1::int", vec![t(5)], e.one(0)),
        case("SELECT * FROM settings WHERE k = 'a'", vec![], e.one(0)),
        case(
            "SELECT * FROM pg_catalog.pg_type WHERE typname = 'int4'",
            vec![],
            e.one(0),
        ),
        case("SELECT oid FROM pg_class", vec![], e.one(0)),
        case("SELECT * FROM information_schema.tables", vec![], e.one(0)),
        case("SELECT * FROM countries", vec![], e.one(0)),
        case(
            "SELECT * FROM countries c JOIN currencies x ON x.code = c.currency",
            vec![],
            e.one(0),
        ),
        case("VALUES (1), (2)", vec![], e.one(0)),
    ];
    check(&env, cases);
}

#[test]
fn routes_joins_and_subqueries() {
    let env = Env { config: config() };
    let e = &env;
    let (a, b) = e.users_apart();
    let on_default = e.user_on(0);
    let off_default = e.user_on(3);
    let cases = vec![
        // Co-located joins on the shard key, restriction on either side.
        case(format!("SELECT * FROM users u JOIN orders o ON o.user_id = u.id WHERE u.id = {a}"), vec![], e.one(e.user(a))),
        case("SELECT * FROM users u JOIN orders o ON o.user_id = u.id WHERE o.user_id = $1", vec![t(b)], e.one(e.user(b))),
        case("SELECT * FROM users u, orders o WHERE u.id = o.user_id AND o.user_id = $1", vec![b8(a)], e.one(e.user(a))),
        case("SELECT * FROM users u JOIN orders o ON o.user_id = u.id", vec![], e.all()),
        case(format!("SELECT * FROM users u LEFT JOIN orders o ON o.user_id = u.id WHERE u.id = {a}"), vec![], e.one(e.user(a))),
        case(format!("SELECT * FROM users u LEFT JOIN orders o ON o.user_id = u.id AND o.user_id = {a}"), vec![], e.all()),
        case("SELECT * FROM users u JOIN orders o USING (id) WHERE u.id = 1", vec![], Want::Error("0A000")),
        case("SELECT * FROM orders o JOIN orders p USING (user_id) WHERE o.user_id = 3", vec![], e.one(e.user(3))),
        // Not linked by the key, or not co-located: refused unless on one shard.
        case("SELECT * FROM users u JOIN orders o ON o.id = u.id", vec![], Want::Error("0A000")),
        case("SELECT * FROM users u JOIN events v ON v.id = u.id", vec![], Want::Error("0A000")),
        case(format!("SELECT * FROM users u, orders o WHERE u.id = {a} AND o.user_id = {b}"), vec![], Want::Error("0A000")),
        case(format!("SELECT * FROM users u, orders o WHERE u.id = {a} AND o.user_id = {a}"), vec![], e.one(e.user(a))),
        case("SELECT * FROM users u JOIN accounts x ON x.email = u.name", vec![], Want::Error("0A000")),
        // Reference tables join anything.
        case(format!("SELECT * FROM users u JOIN countries c ON c.code = u.country WHERE u.id = {a}"), vec![], e.one(e.user(a))),
        case("SELECT * FROM users u JOIN countries c ON c.code = u.country", vec![], e.all()),
        // Unlisted tables live on the default shard.
        case(format!("SELECT * FROM users u JOIN settings s ON s.user_id = u.id WHERE u.id = {on_default}"), vec![], e.one(0)),
        case(format!("SELECT * FROM users u JOIN settings s ON s.user_id = u.id WHERE u.id = {off_default}"), vec![], Want::Error("0A000")),
        case("SELECT * FROM users u JOIN settings s ON s.user_id = u.id", vec![], Want::Error("0A000")),
        // Subqueries.
        case(format!("SELECT * FROM (SELECT * FROM users WHERE id = {a}) t"), vec![], e.one(e.user(a))),
        case(format!("SELECT * FROM (SELECT id, name FROM users) t WHERE t.id = {a}"), vec![], e.one(e.user(a))),
        case(format!("SELECT * FROM (SELECT id AS uid FROM users) t JOIN orders o ON o.user_id = t.uid WHERE o.user_id = {b}"), vec![], e.one(e.user(b))),
        case(format!("SELECT * FROM users WHERE id IN (SELECT user_id FROM orders WHERE total > 5) AND id = {a}"), vec![], e.one(e.user(a))),
        case("SELECT * FROM users WHERE id IN (SELECT user_id FROM orders WHERE total > 5)", vec![], e.all()),
        case(format!("SELECT * FROM users u WHERE EXISTS (SELECT 1 FROM orders o WHERE o.user_id = u.id) AND u.id = {a}"), vec![], e.one(e.user(a))),
        case(format!("SELECT * FROM users u WHERE EXISTS (SELECT 1 FROM orders o WHERE o.user_id = u.id AND o.user_id = {a})"), vec![], e.one(e.user(a))),
        case("SELECT u.*, (SELECT count(*) FROM orders o WHERE o.user_id = u.id) FROM users u", vec![], e.all()),
        case("SELECT * FROM users WHERE score > (SELECT avg(score) FROM users)", vec![], Want::Error("0A000")),
        case(format!("SELECT * FROM users u WHERE u.id = {a} AND u.score > (SELECT avg(score) FROM users x WHERE x.id = {a})"), vec![], e.one(e.user(a))),
        case("SELECT * FROM users WHERE EXISTS (SELECT 1 FROM orders WHERE total > 100)", vec![], Want::Error("0A000")),
        case(format!("SELECT (SELECT name FROM users WHERE id = {a})"), vec![], e.one(e.user(a))),
        case("SELECT (SELECT name FROM users)", vec![], Want::Error("0A000")),
        case(format!("SELECT * FROM users u, LATERAL (SELECT * FROM orders o WHERE o.user_id = u.id) x WHERE u.id = {b}"), vec![], e.one(e.user(b))),
        // CTEs.
        case(format!("WITH x AS (SELECT * FROM users WHERE id = {a}) SELECT * FROM x"), vec![], e.one(e.user(a))),
        case(format!("WITH x AS (SELECT * FROM users) SELECT * FROM x WHERE id = {a}"), vec![], e.one(e.user(a))),
        case(format!("WITH x AS (SELECT id FROM users WHERE id = {a}) SELECT * FROM x a, x b"), vec![], e.one(e.user(a))),
        case("WITH x AS (SELECT id FROM users) SELECT * FROM x a, x b", vec![], Want::Error("0A000")),
        case("WITH users AS (SELECT 1 AS id) SELECT * FROM users", vec![], e.one(0)),
        case("WITH unused AS (SELECT * FROM users) SELECT 1", vec![], e.one(0)),
        case(
            "WITH RECURSIVE t AS (SELECT id, parent FROM users WHERE id = 1 UNION ALL SELECT u.id, u.parent FROM users u JOIN t ON u.parent = t.id) SELECT * FROM t",
            vec![],
            Want::Error("0A000"),
        ),
        case("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5) SELECT * FROM n", vec![], e.one(0)),
        case(format!("WITH RECURSIVE x AS (SELECT * FROM users) SELECT * FROM x WHERE id = {a}"), vec![], e.one(e.user(a))),
        case("WITH RECURSIVE x AS (SELECT * FROM users) SELECT * FROM x", vec![], e.all()),
        case("WITH RECURSIVE a AS (SELECT * FROM b), b AS (SELECT * FROM users) SELECT * FROM a", vec![], e.all()),
        case("WITH RECURSIVE a AS (SELECT id FROM b), b AS (SELECT id FROM a) SELECT * FROM a", vec![], e.one(0)),
        // Set operations.
        case(format!("SELECT id FROM users WHERE id = {a} UNION ALL SELECT id FROM users WHERE id = {b}"), vec![], e.set(&[e.user(a), e.user(b)])),
        case(format!("SELECT id FROM users WHERE id = {a} UNION SELECT id FROM users WHERE id = {b}"), vec![], Want::Error("0A000")),
        case(format!("SELECT id FROM users WHERE id = {a} UNION SELECT user_id FROM orders WHERE user_id = {a}"), vec![], e.one(e.user(a))),
        case("SELECT id FROM users UNION ALL SELECT 0", vec![], Want::Error("0A000")),
        case(format!("SELECT id FROM users WHERE id = {a} UNION ALL SELECT 0"), vec![], e.one(e.user(a))),
        case("SELECT id FROM users UNION ALL SELECT user_id FROM orders ORDER BY 1 LIMIT 5", vec![], Want::Error("0A000")),
        // Locking reads.
        case(format!("SELECT * FROM users WHERE id = {a} FOR UPDATE"), vec![], e.one(e.user(a))),
        // Aggregation: merged by the proxy at the top level only; nested, it must stay per key.
        case("SELECT count(*) FROM users", vec![], e.all()),
        case("SELECT country, count(*) AS users FROM accounts GROUP BY country", vec![], Want::Error("0A000")),
        case("SELECT count(*) FROM (SELECT DISTINCT country FROM users) t", vec![], Want::Error("0A000")),
        case("SELECT count(*) FROM (SELECT DISTINCT id FROM users) t", vec![], e.all()),
        case("SELECT * FROM (SELECT country, count(*) FROM users GROUP BY country) t", vec![], Want::Error("0A000")),
        case(format!("SELECT * FROM (SELECT country, count(*) FROM users WHERE id = {a} GROUP BY country) t"), vec![], e.one(e.user(a))),
        case("SELECT * FROM users u JOIN (SELECT user_id, count(*) AS n FROM orders GROUP BY user_id) o ON o.user_id = u.id", vec![], e.all()),
        case("WITH s AS (SELECT country, count(*) AS c FROM users GROUP BY country) SELECT * FROM s", vec![], Want::Error("0A000")),
        case("SELECT * FROM users WHERE id IN (SELECT user_id FROM orders ORDER BY total DESC LIMIT 10)", vec![], Want::Error("0A000")),
        case("SELECT * FROM users WHERE id IN (SELECT user_id FROM orders GROUP BY user_id HAVING sum(total) > 100)", vec![], e.all()),
        case("SELECT * FROM users u, LATERAL (SELECT * FROM orders o WHERE o.user_id = u.id ORDER BY o.total LIMIT 3) x", vec![], e.all()),
        case("SELECT * FROM (SELECT id, rank() OVER (ORDER BY score) FROM users) t", vec![], Want::Error("0A000")),
        case("SELECT * FROM (SELECT id, rank() OVER (PARTITION BY id ORDER BY score) FROM users) t", vec![], e.all()),
        case("SELECT count(*) FROM users UNION ALL SELECT count(*) FROM orders", vec![], Want::Error("0A000")),
        case("SELECT * FROM (SELECT * FROM users LIMIT 10) t", vec![], Want::Error("0A000")),
    ];
    check(&env, cases);
}

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
        ("ROLLBACK TO SAVEPOINT a", StatementKind::TransactionControl),
        ("SAVEPOINT a", StatementKind::TransactionControl),
        ("RELEASE SAVEPOINT a", StatementKind::TransactionControl),
        ("PREPARE TRANSACTION 'x'", StatementKind::TransactionControl),
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
        ("DEALLOCATE ALL", StatementKind::DiscardAll),
        ("DEALLOCATE PREPARE ALL", StatementKind::DiscardAll),
        ("DEALLOCATE stmt1", StatementKind::Unsupported),
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

#[test]
fn every_key_routes_to_its_shard() {
    let config = config();
    let by_literal_template = |k: i64| format!("SELECT * FROM users WHERE id = {k}");
    let by_param = plan(&config, "SELECT * FROM users WHERE id = $1");
    let insert_param = plan(&config, "INSERT INTO users (id, name) VALUES ($1, $2)");
    assert!(by_param.depends_on_params() && insert_param.depends_on_params());
    for k in (-500i64..500).map(|i| i * 7919 + i64::from(i % 3 == 0) * i64::MAX / 3) {
        let want = match config
            .table("users")
            .map(|t| t.shard_for(&KeyValue::Int(k)))
        {
            Some(Ok(s)) => Route::Single(s),
            other => panic!("{other:?}"),
        };
        let text = k.to_string();
        let binary = k.to_be_bytes();
        let literal = plan(&config, &by_literal_template(k));
        assert!(!literal.depends_on_params());
        assert_eq!(literal.route(&config, &()), Ok(want.clone()), "literal {k}");
        let insert = plan(
            &config,
            &format!("INSERT INTO users (id, name) VALUES ({k}, 'n')"),
        );
        assert_eq!(
            insert.route(&config, &()),
            Ok(want.clone()),
            "insert literal {k}"
        );
        let text_param = vec![Param::Text(text.as_bytes())];
        let binary_param = vec![Param::Binary(&binary)];
        assert_eq!(
            by_param.route(&config, &text_param),
            Ok(want.clone()),
            "text param {k}"
        );
        assert_eq!(
            by_param.route(&config, &binary_param),
            Ok(want.clone()),
            "binary param {k}"
        );
        let insert_params = vec![Param::Binary(&binary), Param::Text(b"n")];
        assert_eq!(
            insert_param.route(&config, &insert_params),
            Ok(want),
            "insert param {k}"
        );
    }
}

#[test]
fn explains_decisions() {
    let config = config();
    let k = 42i64;
    let shard = match config
        .table("users")
        .map(|t| t.shard_for(&KeyValue::Int(k)))
    {
        Some(Ok(s)) => s,
        other => panic!("{other:?}"),
    };
    let name = &config.shards[shard].name;
    let p = plan(&config, "SELECT * FROM users WHERE id = $1");
    let text = p.explain(&config, &vec![Param::Text(b"42")]);
    assert_eq!(text, format!("users.id = $1 ($1 = 42) -> hash -> {name}"));
    let all = plan(&config, "SELECT * FROM users").explain(&config, &());
    assert!(
        all.contains("no shard key restriction") && all.contains("all 4 shards"),
        "{all}"
    );
    let err = plan(
        &config,
        "SELECT * FROM users u JOIN events e ON e.id = u.id",
    )
    .explain(&config, &());
    assert!(
        err.contains("error 0A000") && err.contains("cross-shard join of users and events"),
        "{err}"
    );
    let ddl = plan(&config, "CREATE TABLE t (a int)").explain(&config, &());
    assert!(ddl.contains("every shard"), "{ddl}");
}

#[test]
fn error_messages_say_what_to_do() {
    let config = config();
    let message = |sql: &str| match plan(&config, sql).route(&config, &()) {
        Err(e) => e.message,
        Ok(r) => panic!("{sql} routed to {r:?}"),
    };
    assert!(
        message("SELECT * FROM users u JOIN events e ON e.id = u.id")
            .contains("cross-shard join of users and events is not supported")
    );
    assert!(
        message("INSERT INTO users (id) VALUES (1), (2), (3), (4), (5), (6), (7), (8)")
            .contains("insert the rows separately")
    );
    assert!(message("UPDATE users SET id = 1").contains("DELETE and INSERT"));
    assert!(message("COPY users FROM STDIN")
        .contains("COPY into sharded table users is not supported yet; use INSERT"));
    assert!(message("SELECT 1; SELECT * FROM users").contains("send the statements separately"));
    assert!(message("SELECT * FROM users WHERE id = 'abc'").contains("invalid int8 shard key"));
    assert!(
        message("SELECT * FROM users WHERE id = 1 !!! x").contains("mentions sharded table users")
    );
}

#[test]
fn statements_that_must_not_crash() {
    let config = config();
    let deep_or = (0..5000)
        .map(|i| format!("id = {i}"))
        .collect::<Vec<_>>()
        .join(" OR ");
    let long_in = (0..20_000)
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let nested = format!("SELECT {}1{}", "(".repeat(300), ")".repeat(300));
    let inputs = [
        format!("SELECT * FROM users WHERE {deep_or}"),
        format!("SELECT * FROM users WHERE id IN ({long_in})"),
        nested,
        "SELECT * FROM users WHERE id = $0".into(),
        "SELECT * FROM users WHERE id = $99999999999999999999".into(),
        "\0\u{feff}SELECT".into(),
        "SELECT * FROM users WHERE id = ANY('{{{{{{{{1}}}}}}}}')".into(),
        "WITH a AS (SELECT * FROM users), b AS (SELECT * FROM a, a a2), c AS (SELECT * FROM b, b b2) SELECT * FROM c, c c2".into(),
    ];
    let too_long = plan(&config, &inputs[0]).route(&config, &());
    assert_eq!(too_long.map_err(|e| e.sqlstate), Err("54001"));
    for sql in &inputs {
        let p = plan(&config, sql);
        let _ = p.route(&config, &());
        let _ = p.explain(&config, &());
    }
    // The long IN list is still routed precisely.
    let p = plan(
        &config,
        &format!("SELECT * FROM users WHERE id IN ({long_in})"),
    );
    assert_eq!(p.route(&config, &()), Ok(Route::Multi(vec![0, 1, 2, 3])));
}

#[test]
fn mangled_statements_never_panic() {
    let config = config();
    let seeds = [
        "SELECT * FROM users u JOIN orders o ON o.user_id = u.id WHERE u.id = $1 AND o.total > 5",
        "WITH x AS (DELETE FROM users WHERE id = ANY($1) RETURNING *) SELECT count(*) FROM x",
        "INSERT INTO users (id, name) VALUES ($1, 'a'), (2, $2) ON CONFLICT (id) DO UPDATE SET name = excluded.name",
        "UPDATE users u SET id = $1 FROM countries c WHERE c.code = u.cc AND u.id IN (SELECT user_id FROM orders)",
        "SELECT (SELECT max(total) FROM orders o WHERE o.user_id = u.id), * FROM users u LEFT JOIN events e USING (id)",
        "COPY (SELECT id FROM users UNION ALL SELECT user_id FROM orders) TO STDOUT",
        "SELECT * FROM devices WHERE id = uuid 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11' OR id = ANY('{x,\"y\"}')",
    ];
    // A small deterministic generator, so failures reproduce.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let inserts = [
        "(", ")", "'", "\"", "$1", "$$", ";", ",", " OR ", " AND ", "::", "[", "{", "--", "/*",
        "users", "\u{e9}",
    ];
    let params = vec![Param::Text(b"1"), Param::Binary(&[0, 1]), Param::Null];
    let mut count = 0;
    for seed in seeds {
        let boundaries: Vec<usize> = seed
            .char_indices()
            .map(|(i, _)| i)
            .chain([seed.len()])
            .collect();
        for cut in &boundaries {
            let text = &seed[..*cut];
            let p = plan(&config, text);
            let _ = p.route(&config, &params);
            let _ = p.explain(&config, &());
            count += 1;
        }
        for _ in 0..200 {
            let at = boundaries[(next() as usize) % boundaries.len()];
            let insert = inserts[(next() as usize) % inserts.len()];
            let text = format!("{}{insert}{}", &seed[..at], &seed[at..]);
            let p = plan(&config, &text);
            let _ = p.route(&config, &params);
            let _ = p.route(&config, &());
            count += 1;
        }
    }
    assert!(count > 1000);
}

#[test]
fn placement_errors_and_co_location_need_the_same_layout() {
    let yaml = "
users:
  - {name: app, password: app}
shards:
  - {name: s0, port: 5432}
  - {name: s1, port: 5433}
  - {name: s2, port: 5434}
tables:
  - {name: users, sharding: hash, column: id}
  - {name: logs, sharding: hash, column: user_id, shards: [s0, s1]}
  - {name: visits, sharding: hash, column: user_id, shards: [s0, s1, s2]}
  - name: metrics
    sharding: range
    column: id
    ranges:
      - {from: 0, to: 100, shard: s1}
";
    let config = match Config::from_yaml(yaml) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    let route = |sql: &str| {
        plan(&config, sql)
            .route(&config, &())
            .map_err(|e| e.sqlstate)
    };
    assert_eq!(
        route("SELECT * FROM metrics WHERE id = 5"),
        Ok(Route::Single(1))
    );
    assert_eq!(route("SELECT * FROM metrics WHERE id = 500"), Err("22023"));
    assert_eq!(route("INSERT INTO metrics (id) VALUES (-1)"), Err("22023"));
    assert_eq!(route("SELECT * FROM metrics"), Ok(Route::Single(1)));
    // Same key type but a different shard list: not co-located, even when joined on the key.
    assert_eq!(
        route("SELECT * FROM users u JOIN logs l ON l.user_id = u.id"),
        Err("0A000")
    );
    assert_eq!(
        route("SELECT * FROM users u JOIN visits v ON v.user_id = u.id"),
        Ok(Route::Multi(vec![0, 1, 2]))
    );
    // A table with fewer shards: unrestricted means its own shards only.
    assert_eq!(route("SELECT * FROM logs"), Ok(Route::Multi(vec![0, 1])));
    // COPY FROM STDIN works when the table sits on one shard.
    assert_eq!(route("COPY metrics FROM STDIN"), Ok(Route::Single(1)));
}
