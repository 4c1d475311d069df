-- Decisions of two-phase commits: the row a multi-shard commit's decider writes.
--
-- A transaction that wrote on several shards (or a dual write during resharding) has one
-- decider shard that commits in one phase after the others were prepared. Just before the
-- others prepare, the decider's transaction inserts a row here under a secret nonce the proxy
-- drew, naming the participants' shards; their prepared names carry the decider's xid, the
-- row's digest (the start of the nonce's SHA-256), the server's system identifier (its low
-- 32 bits) and this database's oid. The row commits
-- with the decider's commit (which the proxy makes wait for its WAL to reach the local disk),
-- so a prepared part whose decider's transaction is over is committed when its row exists and
-- rolled back when it does not. A proxy installs this, as its first configured user, in the
-- database of a shard before that shard first decides (idempotent, serialised by an advisory
-- lock); that user's resolver deletes rows that no prepared transaction can need.

BEGIN;
SELECT pg_advisory_xact_lock(7403611260411019577);

CREATE SCHEMA IF NOT EXISTS shardline;

CREATE TABLE IF NOT EXISTS shardline.decisions (
    nonce text NOT NULL,
    digest text GENERATED ALWAYS AS (left(encode(sha256(nonce::bytea), 'hex'), 22)) STORED
        PRIMARY KEY,
    xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    participants text[] NOT NULL,
    decided_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Any user the proxy logs clients in as may be a decider. It may set only the nonce and the
-- participants and read back the xid and digest: the nonce stays secret (prepared names carry
-- only its digest) and the xid is always the inserting transaction's own, so no role can
-- record another transaction's decision; only the owner deletes.
GRANT USAGE ON SCHEMA shardline TO PUBLIC;
GRANT INSERT (nonce, participants), SELECT (xid, digest) ON shardline.decisions TO PUBLIC;
COMMIT;
