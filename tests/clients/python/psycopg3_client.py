"""psycopg 3 through shardline: python3 psycopg3_client.py URL {plain|prepare|pipeline}.

plain:    the driver's defaults (server-side binding; a statement is prepared automatically
          after 5 executions, and executemany pipelines its inserts).
prepare:  every statement with prepare=True (a named server-side statement at once).
pipeline: every step inside conn.pipeline() (many Parse/Bind/Execute before one Sync).
"""

import sys
from decimal import Decimal
from uuid import UUID

import psycopg
from psycopg.types.json import Jsonb

import scenario


class Psycopg3:
    def __init__(self, url, mode):
        self.mode = mode
        self.conn = psycopg.connect(url, autocommit=True)
        self.pipeline = None  # the open pipeline while a step runs in pipeline mode
        # None is psycopg's default: prepare after prepare_threshold (5) executions.
        self.prepare_flag = True if mode == "prepare" else None
        self.prepared_note = "prepared automatically after 5 executions" if mode == "plain" else None
        self.batch_note = "one pipeline" if mode == "pipeline" else "executemany"

    def _run(self, sql, params):
        return self.conn.execute(sql, params or None, prepare=self.prepare_flag)

    def query(self, sql, params=()):
        try:
            return self._run(sql, params).fetchall()
        except psycopg.Error:
            if self.pipeline:
                # As with PostgreSQL itself, a pipeline that met an error ignores everything
                # up to its next Sync; the application syncs to go on.
                try:
                    self.pipeline.sync()
                except psycopg.Error:
                    pass
            raise

    def execute(self, sql, params=()):
        cur = self._run(sql, params)
        if self.pipeline:
            self.pipeline.sync()  # the row count arrives with the results
        return cur.rowcount

    def batch(self, sql, param_list):
        if self.mode == "pipeline":
            curs = [self._run(sql, p) for p in param_list]
            self.pipeline.sync()
            return [c.rowcount for c in curs]
        cur = self.conn.cursor()
        cur.executemany(sql, param_list, returning=True)  # psycopg pipelines the rows
        counts = [cur.rowcount]
        while cur.nextset():
            counts.append(cur.rowcount)
        return counts

    def query_many(self, sql, param_list):
        # In pipeline mode all statements are sent before the first result is read.
        curs = [self._run(sql, p) for p in param_list]
        return [c.fetchall() for c in curs]

    def transaction(self, body, commit):
        with self.conn.transaction():
            result = body()
            if not commit:
                raise psycopg.Rollback()
        return result

    def rollback_to_savepoint(self, body):
        # A transaction() block inside another is a savepoint; Rollback ends it with
        # ROLLBACK TO SAVEPOINT.
        with self.conn.transaction():
            body()
            raise psycopg.Rollback()

    def prepare(self, sql):
        return lambda params: self.conn.execute(sql, params, prepare=self.prepare_flag).fetchall()

    def cancel(self, sql, params):
        scenario.cancel_with_thread(self, self.conn.cancel_safe, sql, params)

    # session_state: psycopg reads dates as text, parsed by the DateStyle the server reported.
    reads_any_datestyle = True

    def parameter_status(self, name):
        return self.conn.info.parameter_status(name)

    def prepare_explicitly(self, sql):
        return lambda params: self.conn.execute(sql, params, prepare=True).fetchall()

    @staticmethod
    def after_discard_all(run, _sql, _params):
        # psycopg sees DISCARD ALL's command tag and forgets its prepared statements: the same
        # call prepares the statement again.
        return run, "psycopg prepares it again itself"

    def step(self, fn):
        if self.mode != "pipeline":
            return fn()
        with self.conn.pipeline() as p:
            self.pipeline = p
            try:
                return fn()
            finally:
                self.pipeline = None

    @staticmethod
    def sqlstate(exc):
        return getattr(exc, "sqlstate", None)

    @staticmethod
    def params(v):
        id_, n4, name, uid, amount, ts, flag, blob, doc, tags, nums = v
        return (id_, n4, name, uid and UUID(uid), amount and Decimal(amount), ts, flag, blob,
                None if doc is None else Jsonb(doc), tags, nums)

    @staticmethod
    def normalize(v):
        v[3] = v[3] and str(v[3])  # uuid.UUID
        v[4] = v[4] and str(v[4])  # Decimal keeps the scale in str()
        return v

    def close(self):
        self.conn.close()


if __name__ == "__main__":
    url, mode = sys.argv[1], sys.argv[2]
    scenario.run(f"{psycopg.__version__} (libpq {psycopg.pq.version()})", lambda: Psycopg3(url, mode))
