//! `INSERT`s that leave the shard key to the table's default (`serial`, identity, a
//! `nextval()` or `gen_random_uuid()` default): the proxy generates the keys
//! ([`crate::keys`]) and rewrites the statement to carry them, then routes it like any other.
//!
//! In the simple protocol the keys go into the statement as literals. In the extended
//! protocol the statement is rewritten once, at `Parse`, to take the keys as parameters after
//! the client's; each `Bind` of it gets fresh keys appended, so a prepared statement (or a
//! driver's `executemany`) inserts a new key at every execution.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use shardline_router::generated::{keyless_insert, KeylessInsert, KeysAs};
use shardline_router::Plan;

use crate::context::Loaded;
use crate::keys::KeyDefault;
use crate::protocol::frontend::{build_parse, BindView};
use crate::protocol::Frame;
use crate::session::state::statements::{self, GeneratedKeys};
use crate::session::{ClientError, Session};

/// A statement rewritten at `Parse` to take generated keys as parameters.
#[derive(Debug)]
pub(crate) struct Rewritten {
    pub query: String,
    /// The parameter types: the client's, then one unspecified type per key.
    pub param_types: Vec<u8>,
    pub keys: Arc<GeneratedKeys>,
}

impl Session {
    /// The `INSERT` in `sql`, when it leaves out a shard key the proxy generates, and the
    /// key's default.
    pub(crate) async fn keyless(
        &self,
        loaded: &Loaded,
        plan: &Plan,
        sql: &str,
    ) -> Result<Option<(KeylessInsert, KeyDefault)>, ClientError> {
        if !plan.always_refused() {
            return Ok(None);
        }
        let Some(keyless) = keyless_insert(&loaded.config, sql) else {
            return Ok(None);
        };
        let default = self
            .ctx
            .keys
            .default_of(
                &loaded.config,
                &keyless.table,
                &keyless.key_column,
                keyless.key_type,
            )
            .await?;
        Ok((default != KeyDefault::None).then_some((keyless, default)))
    }

    /// `sql` with generated keys as literals, when it is an `INSERT` that leaves them out.
    pub(crate) async fn with_generated_keys(
        &self,
        loaded: &Loaded,
        plan: &Plan,
        sql: &str,
    ) -> Result<Option<String>, ClientError> {
        let Some((keyless, default)) = self.keyless(loaded, plan, sql).await? else {
            return Ok(None);
        };
        let keys = self
            .ctx
            .keys
            .generate(
                &loaded.config,
                &keyless.table,
                &keyless.key_column,
                keyless.key_type,
                keyless.rows,
            )
            .await?;
        Ok(keyless.with_keys(KeysAs::Literals(&keys), default.always()))
    }

    /// The statement a client's `Parse` of `query` becomes when it leaves out a generated key:
    /// `param_types` are the client's (count and OIDs). Drivers that parse the unnamed
    /// statement at every execution get the rewrite from the session's cache.
    pub(crate) async fn rewritten_for_keys(
        &mut self,
        loaded: &Loaded,
        plan: &Plan,
        query: &str,
        param_types: &[u8],
    ) -> Result<Option<Arc<Rewritten>>, ClientError> {
        let generation = (loaded.version, statements::schema_generation());
        if let Some(hit) = self.rewrites.get(query, param_types, generation) {
            return Ok(Some(hit));
        }
        let rewritten = self.rewrite(loaded, plan, query, param_types).await?;
        if let Some(rewritten) = &rewritten {
            self.rewrites
                .put(query, param_types, generation, rewritten.clone());
        }
        Ok(rewritten)
    }

    async fn rewrite(
        &self,
        loaded: &Loaded,
        plan: &Plan,
        query: &str,
        param_types: &[u8],
    ) -> Result<Option<Arc<Rewritten>>, ClientError> {
        let Some((keyless, default)) = self.keyless(loaded, plan, query).await? else {
            return Ok(None);
        };
        let declared = param_types
            .get(..2)
            .map_or(0, |n| usize::from(u16::from_be_bytes([n[0], n[1]])));
        let after = declared.max(keyless.params);
        let Some(rewritten) = keyless.with_keys(KeysAs::Parameters { after }, default.always())
        else {
            return Ok(None);
        };
        let mut types = BytesMut::with_capacity(2 + 4 * (after + keyless.rows));
        let count = u16::try_from(after + keyless.rows).map_err(|_| too_many_parameters())?;
        types.put_u16(count);
        types.put_slice(param_types.get(2..).unwrap_or_default());
        // Unspecified: the server takes each type from the column.
        types.put_bytes(0, 4 * (after + keyless.rows - declared));
        Ok(Some(Arc::new(Rewritten {
            query: rewritten,
            param_types: types.to_vec(),
            keys: Arc::new(GeneratedKeys {
                table: keyless.table,
                column: keyless.key_column,
                key_type: keyless.key_type,
                rows: keyless.rows,
            }),
        })))
    }

    /// A client's `Bind` of a rewritten statement with fresh keys after its own values.
    pub(crate) async fn bind_generated(
        &self,
        loaded: &Loaded,
        keys: &GeneratedKeys,
        view: &BindView<'_>,
    ) -> Result<Frame, ClientError> {
        let values = self
            .ctx
            .keys
            .generate(
                &loaded.config,
                &keys.table,
                &keys.column,
                keys.key_type,
                keys.rows,
            )
            .await?;
        Ok(Frame::from_bytes(view.with_appended(&values)))
    }
}

/// The statements one session rewrote for generated keys, by the client's text and parameter
/// types, valid for one config version and schema generation.
#[derive(Debug, Default)]
pub(crate) struct Rewrites {
    by_query: HashMap<String, CachedRewrite>,
}

/// A rewrite, the client's parameter types it was made for, and its (config version, schema
/// generation).
#[derive(Debug)]
struct CachedRewrite {
    types: Vec<u8>,
    generation: (u64, u64),
    rewritten: Arc<Rewritten>,
}

impl Rewrites {
    /// Entries a session keeps at most (its statements with generated keys, usually few).
    const LIMIT: usize = 256;

    fn get(&self, query: &str, types: &[u8], generation: (u64, u64)) -> Option<Arc<Rewritten>> {
        let cached = self.by_query.get(query)?;
        (cached.types == types && cached.generation == generation).then(|| cached.rewritten.clone())
    }

    fn put(
        &mut self,
        query: &str,
        types: &[u8],
        generation: (u64, u64),
        rewritten: Arc<Rewritten>,
    ) {
        if self.by_query.len() >= Self::LIMIT {
            self.by_query.clear();
        }
        let cached = CachedRewrite {
            types: types.to_vec(),
            generation,
            rewritten,
        };
        self.by_query.insert(query.to_owned(), cached);
    }
}

/// A `Parse` of a rewritten statement under the client's name, in the client's encoding.
pub(crate) fn rewritten_parse(name: &[u8], query: &[u8], param_types: &[u8]) -> Frame {
    Frame::from_bytes(build_parse(name, query, param_types))
}

fn too_many_parameters() -> ClientError {
    ClientError::new(
        crate::protocol::backend::sqlstate::PROGRAM_LIMIT_EXCEEDED,
        "too many parameters once the generated keys are added; insert fewer rows per statement",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardline_router::KeyType;

    fn rewritten() -> Arc<Rewritten> {
        Arc::new(Rewritten {
            query: "INSERT INTO users (id, name) VALUES ($2, $1)".to_owned(),
            param_types: vec![0, 2, 0, 0, 0, 25, 0, 0, 0, 0],
            keys: Arc::new(GeneratedKeys {
                table: "users".to_owned(),
                column: "id".to_owned(),
                key_type: KeyType::Int8,
                rows: 1,
            }),
        })
    }

    #[test]
    fn a_rewrite_is_reused_only_for_the_same_types_config_and_schema() {
        let mut rewrites = Rewrites::default();
        let query = "INSERT INTO users (name) VALUES ($1)";
        let types = [0u8, 1, 0, 0, 0, 25];
        rewrites.put(query, &types, (1, 0), rewritten());
        assert!(rewrites.get(query, &types, (1, 0)).is_some());
        assert!(
            rewrites.get(query, &[0, 0], (1, 0)).is_none(),
            "other types"
        );
        assert!(
            rewrites.get(query, &types, (2, 0)).is_none(),
            "another config"
        );
        assert!(
            rewrites.get(query, &types, (1, 1)).is_none(),
            "a schema change"
        );
        assert!(rewrites
            .get("INSERT INTO users (name) VALUES ('x')", &types, (1, 0))
            .is_none());
    }
}
