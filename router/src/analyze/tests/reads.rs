//! Routing of reads: keys in WHERE, IN, ANY, OR, casts, joins and subqueries.

use super::*;

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
