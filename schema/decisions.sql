-- Decisions of two-phase commits: the row a multi-shard commit's decider writes.
--
-- A transaction that wrote on several shards (or a dual write during resharding) has one
-- decider shard that commits in one phase after the others were prepared. Just before the
-- others prepare, the decider's transaction inserts a row here under a nonce the proxy drew;
-- the others' prepared names carry the decider's xid and that nonce. The row becomes durable
-- with the decider's commit, so a prepared part whose decider's transaction is over is
-- committed when its row exists and rolled back when it does not. Proxies install this on a
-- shard (every statement is idempotent) before its first such commit, and delete rows no
-- prepared transaction refers to any more.

CREATE SCHEMA IF NOT EXISTS shardline;

CREATE TABLE IF NOT EXISTS shardline.decisions (
    nonce text PRIMARY KEY,
    xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    decided_at timestamptz NOT NULL DEFAULT now()
);

-- Any user the proxy logs clients in as may be a decider.
GRANT USAGE ON SCHEMA shardline TO PUBLIC;
GRANT SELECT, INSERT ON shardline.decisions TO PUBLIC;
