//! `INSERT INTO t … SELECT …` with `t` sharded (planned by `shardline_router::insert_select`).
//!
//! On the default shard's backend, in a transaction of its own: the staging table shaped like
//! `t` is created, the sharded tables the `SELECT` reads are pulled in (see [`super::pull`]),
//! the client's `SELECT` fills the staging table (bound with the client's values in the
//! extended protocol), and the staged rows stream out with `COPY … TO STDOUT`. They go into
//! `t`'s shards as the rows of a routed `COPY` (see [`super::copy_in`]), which commit together
//! with two-phase commit: the statement loads all of its rows or none. The staging
//! transaction is rolled back at the end, taking the temporary tables with it.

use shardline_router::insert_select::InsertSelect;
use shardline_router::placeholders::ShardStatement;
use shardline_router::ShardId;

use crate::backend::pool::Pooled;
use crate::context::Loaded;
use crate::protocol::backend::{self as msg, tag};
use crate::session::link::attach::{drain_to_ready, ready_status};
use crate::session::multi::copy_in::RowSource;
use crate::session::multi::gather::{Delivery, MergeFailure, Source};
use crate::session::multi::pull::read_answer;
use crate::session::{local, ClientError, Session, SessionEnd};

impl Session {
    /// Runs `plan` (outside a transaction block); `source` is the client's statement, whose
    /// parameters the `SELECT` reads.
    pub(crate) async fn insert_select(
        &mut self,
        loaded: &Loaded,
        plan: &InsertSelect,
        source: &Source<'_>,
        delivery: &Delivery,
    ) -> Result<(), SessionEnd> {
        if delivery.extended && delivery.describe {
            // An INSERT without RETURNING describes no rows.
            self.out.push(&msg::empty(tag::NO_DATA)).await?;
        }
        let home = loaded.config.default_shard;
        let name = self.shard_names(&[home]);
        let mut conn = match self.pulled(loaded, home, &plan.pulled, &plan.stage).await {
            Ok(conn) => conn,
            Err(error) => {
                return self
                    .complete(Err(MergeFailure::Query(error)), delivery)
                    .await
            }
        };
        if let Err(error) = self.unload(&mut conn, home, &name, plan, source).await {
            let clean = roll_back(&mut conn).await;
            self.let_go(home, conn, clean);
            return self
                .complete(Err(MergeFailure::Query(error)), delivery)
                .await;
        }
        let mut rows = RowSource::Shard {
            conn: &mut conn,
            name,
            ended: false,
        };
        let result = self
            .copy_split(loaded, &plan.copy, &plan.spec, delivery, &mut rows)
            .await;
        let RowSource::Shard { ended, .. } = rows else {
            return result;
        };
        // A COPY that ended (or failed) leaves the backend reading commands in the staging
        // transaction; one cut off mid-stream can only be closed.
        let clean = ended && ready_status(&mut conn).await.is_some() && roll_back(&mut conn).await;
        self.let_go(home, conn, clean);
        result
    }

    /// Fills the staging table with the client's `SELECT` and starts copying it out.
    async fn unload(
        &mut self,
        conn: &mut Pooled,
        home: ShardId,
        name: &str,
        plan: &InsertSelect,
        source: &Source<'_>,
    ) -> Result<(), ClientError> {
        let statement = ShardStatement {
            sql: plan.fill.clone(),
            params: (0..source.params().len()).collect(),
        };
        let fill = source
            .request(&statement, &[], self.encoding())
            .map_err(ClientError::from)?;
        conn.send(&fill)
            .await
            .map_err(|e| ClientError::lost_shard(name, e))?;
        read_answer(conn, name).await?;
        self.start_copy(conn, home, name, &plan.unload, tag::COPY_OUT_RESPONSE)
            .await
    }
}

/// Ends the staging transaction; true when the backend is idle again.
async fn roll_back(conn: &mut Pooled) -> bool {
    !conn.broken
        && conn.send(&local::query_message("ROLLBACK")).await.is_ok()
        && drain_to_ready(conn).await
}
