//! Statements routed to their targets.

use shardline_router::{plan, Param};

use super::*;

#[test]
fn routes_each_kind_of_statement() {
    let loaded = loaded();
    let (a, b) = keys_on_two_shards(&loaded);
    let (sa, sb) = (owner(&loaded, "users", a), owner(&loaded, "users", b));
    let mut both = vec![sa, sb];
    both.sort_unstable();
    let all = names(&[0, 1, 2, 3]);
    let cases: Vec<(String, Vec<&str>, String)> = vec![
        ("BEGIN".into(), vec![], "session".into()),
        ("SET search_path = app".into(), vec![], "session".into()),
        ("SHOW search_path".into(), vec![], "session".into()),
        (
            format!("SELECT * FROM users WHERE id = {a}"),
            vec![],
            format!("shard s{sa}"),
        ),
        (
            "SELECT * FROM users WHERE id = $1".into(),
            vec!["5"],
            format!("shard s{}", owner(&loaded, "users", 5)),
        ),
        (
            "SELECT * FROM events WHERE id = 1500".into(),
            vec![],
            "shard s1".into(),
        ),
        (
            "SELECT name FROM users".into(),
            vec![],
            format!("scatter {all}"),
        ),
        (
            "UPDATE users SET name = 'x'".into(),
            vec![],
            format!("scatter {all}"),
        ),
        (
            "SELECT id FROM users ORDER BY id LIMIT 5".into(),
            vec![],
            format!("gather {all}"),
        ),
        (
            "SELECT count(*) FROM users".into(),
            vec![],
            format!("gather {all}"),
        ),
        (
            format!("INSERT INTO users (id, name) VALUES ({a}, 'a'), ({b}, 'b')"),
            vec![],
            format!("split {}", names(&both)),
        ),
        (
            "INSERT INTO users (id, name) VALUES ($1, 'a'), ($2, 'b')".into(),
            vec!["1", "2"],
            "split".into(),
        ),
        (
            "COPY users (id, name) FROM STDIN".into(),
            vec![],
            format!("copy {all}"),
        ),
        (
            "SELECT count(DISTINCT name) FROM users".into(),
            vec![],
            "pull users to s0".into(),
        ),
        (
            "SELECT u.id, e.id FROM users u JOIN events e ON e.id = u.id + 1".into(),
            vec![],
            "pull events,users to s0".into(),
        ),
        (
            "INSERT INTO events (id) SELECT id FROM users WHERE id > 5".into(),
            vec![],
            "insert-select pulling users into s0,s1,s2".into(),
        ),
        (
            "INSERT INTO users SELECT g FROM generate_series(1, 5) g".into(),
            vec![],
            format!("insert-select pulling  into {all}"),
        ),
        (
            "SELECT count(DISTINCT name) FROM public.users".into(),
            vec![],
            "pull users to s0".into(),
        ),
        (
            "SELECT count(DISTINCT name) FROM sales.users".into(),
            vec![],
            "error 0A000".into(),
        ),
        (
            "SELECT * FROM users WHERE id = 'x'".into(),
            vec![],
            "error 22P02".into(),
        ),
        (
            "SELECT * FROM events WHERE id = -5".into(),
            vec![],
            "shard s0".into(),
        ),
        (
            "INSERT INTO users (name) VALUES ('a')".into(),
            vec![],
            "error".into(),
        ),
        (
            "COPY users FROM STDIN (FORMAT binary)".into(),
            vec![],
            "error".into(),
        ),
    ];
    for (sql, params, expected) in cases {
        let plan = plan(&loaded.config, &sql);
        let params: Vec<Param<'_>> = params.iter().map(|p| Param::Text(p.as_bytes())).collect();
        let got = match route(&loaded, &plan, &sql, &params) {
            Ok((target, dual)) => {
                assert!(dual.is_none(), "{sql}: no migration, no dual write");
                target_text(&loaded, &target)
            }
            Err(e) => format!("error {}", e.sqlstate),
        };
        assert!(
            got.starts_with(&expected),
            "{sql}: got {got}, expected {expected}"
        );
    }
}
