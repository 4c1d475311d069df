//! `INSERT`s that leave the shard key to the table's default (`serial`, identity, a
//! `nextval()` or `gen_random_uuid()` default): the proxy generates the keys
//! ([`crate::keys`]) and rewrites the statement to carry them, then routes it like any other.
//!
//! In the simple protocol the keys go into the statement as literals. In the extended
//! protocol the statement is rewritten once, at `Parse`, to take the keys as parameters after
//! the client's; each `Bind` of it gets fresh keys appended, so a prepared statement (or a
//! driver's `executemany`) inserts a new key at every execution.

use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use shardline_router::generated::{keyless_insert, KeylessInsert, KeysAs};
use shardline_router::Plan;

use crate::context::Loaded;
use crate::keys::KeyDefault;
use crate::protocol::frontend::{build_parse, BindView};
use crate::protocol::Frame;
use crate::session::state::statements::GeneratedKeys;
use crate::session::{ClientError, Session};

/// A statement rewritten at `Parse` to take generated keys as parameters.
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
    /// `param_types` are the client's (count and OIDs).
    pub(crate) async fn rewritten_for_keys(
        &self,
        loaded: &Loaded,
        plan: &Plan,
        query: &str,
        param_types: &[u8],
    ) -> Result<Option<Rewritten>, ClientError> {
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
        Ok(Some(Rewritten {
            query: rewritten,
            param_types: types.to_vec(),
            keys: Arc::new(GeneratedKeys {
                table: keyless.table,
                column: keyless.key_column,
                key_type: keyless.key_type,
                rows: keyless.rows,
            }),
        }))
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
