"""asyncpg through shardline: python3 asyncpg_client.py URL.

asyncpg speaks the extended protocol itself (no libpq): every query with arguments is a named
prepared statement from its statement cache, executemany pipelines its rows, and a query
timeout sends a CancelRequest.
"""

import asyncio
import json
import re
import sys
from decimal import Decimal
from uuid import UUID

import asyncpg

import scenario


def numbered(sql):
    """%s placeholders of the scenario as asyncpg's $1, $2, ..."""
    counter = iter(range(1, 100))
    return re.sub(r"%s", lambda _: f"${next(counter)}", sql)


class Asyncpg:
    prepared_note = None
    batch_note = "executemany"

    def __init__(self, url):
        self.loop = asyncio.new_event_loop()
        self.conn = self.run(asyncpg.connect(url))
        # jsonb as Python objects: asyncpg looks the type up in pg_type (an introspection query).
        self.run(self.conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog"))

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def query(self, sql, params=()):
        return [tuple(r) for r in self.run(self.conn.fetch(numbered(sql), *params))]

    def execute(self, sql, params=()):
        # Without arguments asyncpg uses the simple query protocol; with them, a prepared statement.
        status = self.run(self.conn.execute(numbered(sql), *params))
        return int(status.split()[-1]) if status.split()[-1].isdigit() else None

    def batch(self, sql, param_list):
        self.run(self.conn.executemany(numbered(sql), param_list))
        return None  # executemany reports no row counts

    def query_many(self, sql, param_list):
        return [self.query(sql, p) for p in param_list]

    def transaction(self, body, commit):
        tx = self.conn.transaction()
        self.run(tx.start())
        try:
            result = body()
        except Exception:
            self.run(tx.rollback())
            raise
        self.run(tx.commit() if commit else tx.rollback())
        return result

    def rollback_to_savepoint(self, body):
        # asyncpg makes a transaction started inside another a savepoint.
        savepoint = self.conn.transaction()
        self.run(savepoint.start())
        try:
            body()
        finally:
            self.run(savepoint.rollback())

    def prepare(self, sql):
        stmt = self.run(self.conn.prepare(numbered(sql)))
        return lambda params: [tuple(r) for r in self.run(stmt.fetch(*params))]

    # session_state: asyncpg reads timestamps in binary, so DateStyle does not change them.
    reads_any_datestyle = True

    def parameter_status(self, name):
        return getattr(self.conn.get_settings(), name, None)

    def prepare_explicitly(self, sql):
        return self.prepare(sql)

    def after_discard_all(self, run, sql, params):
        # asyncpg does not notice DISCARD ALL: its prepared statements are gone from the server,
        # which says so (26000) as PostgreSQL does. The application drops asyncpg's statement
        # cache (reload_schema_state) and prepares again.
        try:
            scenario.expect_sqlstate(self, lambda: run(params), "26000")
        finally:
            self.run(self.conn.reload_schema_state())
        return self.prepare(sql), "the old statement fails with 26000; prepared again"

    def cancel(self, sql, params):
        # asyncpg's way to cancel: a timeout. It sends a CancelRequest and waits for the server
        # to end the statement (the 57014 it receives is not passed on), then raises TimeoutError.
        try:
            self.run(self.conn.fetch(numbered(sql), *params, timeout=0.3))
        except asyncio.TimeoutError:
            return "timeout sends CancelRequest; 57014 not exposed"
        raise AssertionError("the statement was not cancelled")

    @staticmethod
    def step(fn):
        return fn()

    @staticmethod
    def sqlstate(exc):
        return getattr(exc, "sqlstate", None)

    @staticmethod
    def params(v):
        id_, n4, name, uid, amount, ts, flag, blob, doc, tags, nums = v
        return (id_, n4, name, uid and UUID(uid), amount and Decimal(amount), ts, flag, blob, doc, tags, nums)

    @staticmethod
    def normalize(v):
        v[3] = v[3] and str(v[3])
        v[4] = v[4] and str(v[4])
        return v

    def close(self):
        self.run(self.conn.close())


if __name__ == "__main__":
    scenario.run(asyncpg.__version__, lambda: Asyncpg(sys.argv[1]))
