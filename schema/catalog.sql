-- The shardline catalog: the state of resharding migrations.
--
-- It lives in schema `shardline` on the source layout's default shard. shardline-reshard
-- installs it (every statement is idempotent) and keeps every decision there, so a killed
-- resharder resumes from it and never from memory.

CREATE SCHEMA IF NOT EXISTS shardline;

-- One row per migration. `phase` is where the migration stands; it only moves forward, or to
-- 'aborted' before cutover.
CREATE TABLE IF NOT EXISTS shardline.migrations (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source_yaml text NOT NULL,
    target_yaml text NOT NULL,
    phase       text NOT NULL CHECK (phase IN
                    ('started', 'backfilled', 'verified', 'cutover', 'done', 'aborted')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- At most one migration is in progress.
CREATE UNIQUE INDEX IF NOT EXISTS migrations_one_in_progress
    ON shardline.migrations ((true)) WHERE phase NOT IN ('done', 'aborted');

-- Backfill progress per moving table and source shard: the last key copied (in key order)
-- and how many rows were copied. Committed after each batch, so a resumed backfill starts at
-- the next key.
CREATE TABLE IF NOT EXISTS shardline.backfill (
    migration   bigint NOT NULL REFERENCES shardline.migrations (id),
    table_name  text NOT NULL,
    source      text NOT NULL,
    last_key    text,
    rows_copied bigint NOT NULL DEFAULT 0,
    done        boolean NOT NULL DEFAULT false,
    PRIMARY KEY (migration, table_name, source)
);

-- The shape of each moving table (read from a source shard when the migration starts): what
-- proxies need to apply row images to new owners without asking the shards.
CREATE TABLE IF NOT EXISTS shardline.moving_tables (
    migration  bigint NOT NULL REFERENCES shardline.migrations (id),
    table_name text NOT NULL,
    columns    text[] NOT NULL,
    unique_key text[] NOT NULL,
    PRIMARY KEY (migration, table_name)
);

-- Which proxy confirmed which phase, and when: the resharder advances a phase only when every
-- proxy it was told about has confirmed the previous one.
CREATE TABLE IF NOT EXISTS shardline.confirmations (
    migration    bigint NOT NULL REFERENCES shardline.migrations (id),
    proxy        text NOT NULL,
    phase        text NOT NULL,
    confirmed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (migration, proxy, phase)
);
