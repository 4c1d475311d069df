-- Generated shard keys: blocks of each table's key space, handed to proxies.
--
-- An INSERT that leaves a serial, identity or nextval() shard key to its default gets its key
-- from the proxy (each shard's own sequence would repeat the others' numbers). A proxy takes a
-- block of keys at a time from this table, on the default shard, and hands them out from
-- memory; blocks never overlap, so keys never repeat across proxies or restarts. Proxies
-- install it (every statement is idempotent) the first time they need a key.

CREATE SCHEMA IF NOT EXISTS shardline;

-- The next key no proxy has taken yet, per table (as shards.yaml names it).
CREATE TABLE IF NOT EXISTS shardline.key_blocks (
    table_name text PRIMARY KEY,
    next_value bigint NOT NULL
);
