//! The shard-key values a statement names, table class by table class: what a resharding
//! migration needs to know about a write beyond its route (which keys it may change, so their
//! rows can be copied to the keys' new owners, or that it names none).

use crate::config::Config;
use crate::key::KeyValue;
use crate::params::Params;

use super::eval::Eval;
use super::target::{ClassInfo, KeySrc, Restr, Target};
use super::{Plan, RouteError};

/// The keys a statement restricts one class of co-located tables to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedKeys {
    /// The statement's tables in the class (co-located: they share key values).
    pub tables: Vec<String>,
    /// Every key value the statement names for the class (a superset of the keys whose rows
    /// it can touch), or `None` when some part of it is not restricted by the key.
    pub keys: Option<Vec<KeyValue>>,
}

impl Plan {
    /// The key values this statement names per class of sharded tables, for the given Bind
    /// parameters; empty when it touches no sharded table.
    pub fn named_keys(
        &self,
        config: &Config,
        params: &dyn Params,
    ) -> Result<Vec<NamedKeys>, RouteError> {
        let mut eval = Eval::new(config, params, false);
        let mut found = Vec::new();
        collect(&mut eval, &self.target, &mut found)?;
        Ok(found)
    }
}

fn collect(
    eval: &mut Eval<'_>,
    target: &Target,
    found: &mut Vec<NamedKeys>,
) -> Result<(), RouteError> {
    match target {
        Target::Keyed(keyed) => {
            let mut per_class: Vec<Option<Vec<KeyValue>>> =
                vec![Some(Vec::new()); keyed.classes.len()];
            let restrictions = keyed
                .branches
                .iter()
                .flat_map(|b| b.anchored.iter().chain(&b.floating));
            for (class, restr) in restrictions {
                let (Some(info), Some(slot)) =
                    (keyed.classes.get(*class), per_class.get_mut(*class))
                else {
                    continue;
                };
                match (restr_keys(eval, info, restr)?, slot.as_mut()) {
                    (Some(more), Some(keys)) => merge(keys, more),
                    (None, _) => *slot = None,
                    (Some(_), None) => {}
                }
            }
            if let Some(update) = &keyed.key_update {
                if let (Some(info), Some(Some(keys))) = (
                    keyed.classes.get(update.class),
                    per_class.get_mut(update.class),
                ) {
                    source_keys(eval, info, &update.value, keys)?;
                }
            }
            for (info, keys) in keyed.classes.iter().zip(per_class) {
                found.push(NamedKeys {
                    tables: info.tables.clone(),
                    keys,
                });
            }
        }
        Target::Compound(parts) => {
            for part in parts {
                collect(eval, part, found)?;
            }
        }
        Target::Anywhere(_)
        | Target::Default(_)
        | Target::AllShards(_)
        | Target::Tables(..)
        | Target::Error(_) => {}
    }
    Ok(())
}

/// The keys one restriction allows (a superset), or `None` when it allows any key.
fn restr_keys(
    eval: &mut Eval<'_>,
    info: &ClassInfo,
    restr: &Restr,
) -> Result<Option<Vec<KeyValue>>, RouteError> {
    Ok(match restr {
        Restr::All => None,
        Restr::Keys(sources) => {
            let mut keys = Vec::new();
            for src in sources {
                source_keys(eval, info, src, &mut keys)?;
            }
            Some(keys)
        }
        // Rows match some alternative: every one must be restricted.
        Restr::Or(parts) => {
            let mut keys = Vec::new();
            for part in parts {
                match restr_keys(eval, info, part)? {
                    Some(more) => merge(&mut keys, more),
                    None => return Ok(None),
                }
            }
            Some(keys)
        }
        // Rows match every condition: one restricted condition is enough, and the union of
        // all of them is still a superset.
        Restr::And(parts) => {
            let mut keys: Option<Vec<KeyValue>> = None;
            for part in parts {
                if let Some(more) = restr_keys(eval, info, part)? {
                    merge(keys.get_or_insert_with(Vec::new), more);
                }
            }
            keys
        }
    })
}

fn merge(keys: &mut Vec<KeyValue>, more: Vec<KeyValue>) {
    for key in more {
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
}

fn source_keys(
    eval: &mut Eval<'_>,
    info: &ClassInfo,
    src: &KeySrc,
    keys: &mut Vec<KeyValue>,
) -> Result<(), RouteError> {
    eval.key_values(info, src, &mut |value| {
        if !keys.contains(value) {
            keys.push(value.clone());
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::Param;
    use crate::plan;

    fn config() -> Config {
        Config::from_yaml(
            "shards:\n  - {name: s0, host: 127.0.0.1, port: 5432}\n  - {name: s1, host: 127.0.0.1, port: 5433}\nusers:\n  - {name: app, password: app}\ntables:\n  - {name: users, sharding: hash, column: id, type: int8}\n  - {name: orders, sharding: hash, column: user_id, type: int8}\n",
        )
        .expect("test config")
    }

    fn keys(sql: &str, params: &[Param<'_>]) -> Vec<(Vec<String>, Option<Vec<i64>>)> {
        let config = config();
        let plan = plan(&config, sql);
        plan.named_keys(&config, &params.to_vec())
            .expect("named keys")
            .into_iter()
            .map(|n| {
                let ints = n.keys.map(|k| {
                    let mut ints: Vec<i64> = k
                        .iter()
                        .map(|v| match v {
                            KeyValue::Int(i) => *i,
                            other => panic!("not an int key: {other:?}"),
                        })
                        .collect();
                    ints.sort_unstable();
                    ints
                });
                (n.tables, ints)
            })
            .collect()
    }

    /// A statement, its parameters, and the keys it names (`None`: unrestricted).
    type Case<'a> = (&'a str, Vec<Param<'a>>, Option<Vec<i64>>);

    #[test]
    fn writes_name_their_keys() {
        let users = vec!["users".to_owned()];
        let cases: Vec<Case<'_>> = vec![
            ("INSERT INTO users (id, name) VALUES (7, 'a')", vec![], Some(vec![7])),
            ("INSERT INTO users (id, name) VALUES (7, 'a'), (9, 'b')", vec![], Some(vec![7, 9])),
            ("UPDATE users SET name = 'x' WHERE id = $1", vec![Param::Text(b"42")], Some(vec![42])),
            ("DELETE FROM users WHERE id IN (1, 2) OR id = 3", vec![], Some(vec![1, 2, 3])),
            ("DELETE FROM users WHERE id = 5 AND name = 'x'", vec![], Some(vec![5])),
            ("INSERT INTO users (id, name) VALUES ($1, 'a') ON CONFLICT (id) DO UPDATE SET name = 'b'", vec![Param::Text(b"11")], Some(vec![11])),
            ("UPDATE users SET name = 'x' WHERE name = 'y'", vec![], None),
            ("DELETE FROM users WHERE id = 5 OR name = 'x'", vec![], None),
            ("UPDATE users SET id = 8 WHERE id = 4", vec![], Some(vec![4, 8])),
        ];
        for (sql, params, expected) in cases {
            assert_eq!(keys(sql, &params), vec![(users.clone(), expected)], "{sql}");
        }
    }

    #[test]
    fn statements_on_unsharded_tables_name_nothing() {
        assert!(keys("INSERT INTO settings VALUES (1)", &[]).is_empty());
        assert!(keys("SELECT 1", &[]).is_empty());
    }
}
