//! The resharding engine: moves keys between shards while the application keeps writing.
//!
//! This is the argument the engine and the proxies are built to; review it before the code.
//! The pieces: what moves and the SQL both sides run on shards live in
//! `shardline_router::migration` (layout, row images, fence, in-doubt rules); the proxies'
//! part is `shardline::migration` and `shardline::session::dual`; this crate holds the catalog
//! ([`catalog`]), `plan` ([`plan`]), the backfill ([`backfill`]), `verify` ([`verify`]),
//! `cutover` and `cleanup` ([`cutover`]), the in-doubt resolver ([`resolve`]) and the proxies'
//! consoles ([`proxies`]), driven by the `shardline-reshard` CLI.
//!
//! # Roles
//! - The **old owner** of a moving key is the source of truth until cutover; reads go there.
//! - The **catalog** (`schema/catalog.sql`, schema `shardline` on the default shard) holds the
//!   migration: both layouts, the phase, backfill progress, the moving tables' shapes and each
//!   proxy's confirmations. The phase decides what proxies do, so a killed resharder resumes
//!   from it and a restarted proxy reads it at start. It is kept apart from `shards.yaml`: a
//!   proxy serves its file with the migration's overlay on top, so a reload keeps the phase.
//! - **Proxies** are driven through their admin consoles (`RESHARD`, `RESHARD PAUSE`,
//!   `RESHARD RESUME`); a phase moves on only when every listed proxy confirmed it, and the
//!   resharder stops naming the proxy it cannot reach.
//!
//! # Dual writes: row images, decided by the old owner's commit
//! A write to a moving key runs on its old owner only, inside a transaction (the client's, or
//! one the proxy opens around an autocommit statement); the proxy notes which moving keys the
//! statement names. At commit the proxy, still inside that transaction on the old owner:
//! 1. takes transaction-level advisory locks on those keys, in key order. Row locks cannot
//!    serialise a key that has no row (an `UPDATE` that matched nothing, a delete of an absent
//!    key); these locks make two transactions writing the same key reach the new owner in the
//!    order they commit on the old one;
//! 2. reads the current rows of the keys (`row_to_json`, `FOR SHARE`) — the images;
//! 3. on each new owner, in a transaction of its own, makes the key's rows exactly the images
//!    (delete what the images lack, upsert the rest) and `PREPARE TRANSACTION`s it under a name
//!    holding the old owner's transaction id;
//! 4. commits on the old owner — this is the decision — then `COMMIT PREPARED` on the new
//!    owners (or `ROLLBACK PREPARED` if the old owner did not commit); the client hears
//!    `ReadyForQuery` only after that.
//!
//! Copying images instead of re-running the statement keeps the copy right where the row was
//! not copied yet (`UPDATE … SET n = n + 1` would match nothing there, an upsert would insert
//! instead of update). A crash between 3 and 4 leaves a prepared copy whose fate the old owner
//! knows: the resolver (every proxy, every 2 s, and the resharder before `verify` and under the
//! cutover's pause) commits it if the old owner's transaction recorded its decision
//! (`shardline_router::indoubt`), rolls it back if that transaction is over without it, and
//! waits while it runs. So a write is never on one
//! owner without its image committed or prepared-and-decided on the other: no silent
//! divergence. Writes to a moving table that name no key, that need several shards, `COPY`
//! into it and DDL on it are refused during the migration with a message saying why.
//!
//! Switching dual writes on, `RESHARD` answers only when every transaction that began before
//! the switch has ended, so the backfill, which starts after every proxy confirmed, sees
//! every write that was not dual-written.
//!
//! # Backfill against concurrent writes
//! Each batch runs in a transaction on the old owner: `SELECT … ORDER BY key LIMIT n FOR SHARE`,
//! upsert the moving rows into their new owners (committed there), then commit the old owner.
//! - An `UPDATE`/`DELETE` of a row in the batch waits for the share lock, i.e. until the batch
//!   is on the new owner; its dual write then replaces or deletes that image: no lost update.
//! - A row deleted before the batch read is not read; one deleted after is deleted on the new
//!   owner by its dual write: no resurrected row.
//! - An `INSERT` racing the batch either committed before the read (read and upserted with the
//!   same image: idempotent) or is not seen (its own dual write carries it); a dual write whose
//!   copy is prepared but not yet committed makes the batch's upsert wait on it, then overwrite
//!   it with the same committed image.
//!
//! Progress (last key copied) is committed to the catalog after each batch, so a killed
//! backfill resumes at the next key and repeats at most one batch, harmlessly.
//!
//! # Verify, cutover, cleanup
//! Verify compares ranges of keys: each range is read `FOR SHARE` on the old owner while the
//! same range is read on the new owners and compared image by image; what differs is
//! overwritten with the old owner's image. A copy without a row on the old owner is deleted only
//! after its key is locked as dual writes lock it and the row is still absent.
//!
//! Cutover: repair with verify while writes flow and prepare the fences; then every proxy holds
//! new writes to the moving keys only (reads and other keys flow) and drains the running
//! ones; under that pause the resharder resolves in-doubt writes, compares per-table counts
//! and 64-bit checksums of the moving rows against the copies (repairing row by row only if
//! they differ), arms the fence on each old owner (a trigger refusing writes to keys the shard
//! no longer owns, so a proxy that missed the switch gets an error and writes nothing), records
//! the phase — the commit point — and switches and resumes every proxy. If the pause reaches
//! its bound (default 2 s) before the commit point, the fences go, the old routing resumes and
//! the operator is told. Cleanup deletes moved rows from old owners in batches through the
//! fence (`shardline.cleanup`), which stays. Abort (before cutover) records the abort, turns
//! the proxies' dual writes off, resolves in-doubt writes and deletes the copies.
//!
//! # Assumptions
//! Dual-writing transactions run at `READ COMMITTED` (PostgreSQL's default): at
//! `REPEATABLE READ` a changed row's image read `FOR SHARE` fails with a serialization error
//! (the client retries), but a row another transaction inserted after the snapshot is invisible
//! to the image, so the copy of that key would be deleted on the new owner; `verify` and the
//! cutover's checksum check find such a difference and repair it from the old owner.

pub mod backfill;
pub mod catalog;
pub mod cutover;
pub mod plan;
pub mod proxies;
pub mod resolve;
pub mod shards;
pub mod verify;
