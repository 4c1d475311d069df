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

mod kinds;
mod reads;
mod writes;

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

/// Three shards and the given `tables:` entries (YAML lines).
fn three_shards(tables: &str) -> Config {
    let yaml = format!(
        "users:\n  - {{name: app, password: app}}\nshards:\n  - {{name: s0, port: 5432}}\n  - {{name: s1, port: 5433}}\n  - {{name: s2, port: 5434}}\ntables:\n{tables}"
    );
    match Config::from_yaml(&yaml) {
        Ok(c) => c,
        Err(e) => panic!("{e}\n{yaml}"),
    }
}

#[test]
fn placement_errors_and_co_location_need_the_same_layout() {
    let config = three_shards(
        "
  - {name: users, sharding: hash, column: id}
  - {name: logs, sharding: hash, column: user_id, shards: [s0, s1]}
  - {name: visits, sharding: hash, column: user_id, shards: [s0, s1, s2]}
  - name: metrics
    sharding: range
    column: id
    ranges:
      - {from: 0, to: 100, shard: s1}
",
    );
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

/// A statement placed by one key value takes a shortcut in routing (`Keyed::lone_key`): it
/// must land where the general combination of branches puts the same key, for every kind of
/// value — placed, NULL, out of every range, unparseable — and every sharding.
#[test]
fn one_key_routes_as_the_general_combination_does() {
    let config = three_shards(
        "
  - {name: users, sharding: hash, column: id}
  - {name: accounts, sharding: hash, column: email, type: text}
  - {name: logs, sharding: hash, column: user_id, shards: [s1, s2]}
  - name: metrics
    sharding: range
    column: id
    ranges:
      - {from: 0, to: 100, shard: s1}
      - {from: 100, to: 200, shard: s2}
",
    );
    let values = (0..250)
        .map(t)
        .chain([P::Null, t("x"), t(-5), t(1_i64 << 40), b8(7), b4(150)])
        .collect::<Vec<_>>();
    let route = |sql: &str, p: &P| {
        let bound = params(std::slice::from_ref(p));
        plan(&config, sql)
            .route(&config, &bound)
            .map_err(|e| e.sqlstate)
    };
    for (table, column) in [
        ("users", "id"),
        ("accounts", "email"),
        ("logs", "user_id"),
        ("metrics", "id"),
    ] {
        let lone = format!("SELECT * FROM {table} WHERE {column} = $1");
        // Two branches: the general combination, with the same key in each.
        let general = format!("{lone} UNION ALL {lone}");
        for value in &values {
            assert_eq!(
                route(&lone, value),
                route(&general, value),
                "{table}.{column} = {value:?}"
            );
        }
    }
    // Literals, NULL among them, as the simple protocol's plan cache passes them.
    for value in ["5", "150", "500", "NULL", "'x'"] {
        let lone = format!("SELECT * FROM metrics WHERE id = {value}");
        let general = format!("{lone} UNION ALL {lone}");
        assert_eq!(route(&lone, &P::Null), route(&general, &P::Null), "{value}");
    }
}
