"""psycopg2 through shardline: python3 psycopg2_client.py URL.

psycopg2 binds parameters on the client and sends plain query text (the simple query
protocol), so this is the path of every libpq program that interpolates its values.
"""

import sys
from decimal import Decimal

import psycopg2
import psycopg2.extensions
from psycopg2.extras import Json, execute_values

import scenario


class Psycopg2:
    # psycopg2 has no server-side prepared statements, and SQL-level PREPARE is refused by
    # shardline by design: the step repeats the same statement text instead.
    prepared_note = "psycopg2 has no server-side prepare: same statement text"
    batch_note = "execute_values: one multi-row INSERT"

    def __init__(self, url):
        self.conn = psycopg2.connect(url)
        self.conn.autocommit = True

    def _run(self, sql, params):
        cur = self.conn.cursor()
        cur.execute(sql, params or None)
        return cur

    def query(self, sql, params=()):
        return self._run(sql, params).fetchall()

    def execute(self, sql, params=()):
        return self._run(sql, params).rowcount

    def batch(self, sql, param_list):
        # execute_values: psycopg2's fast batch, one multi-row INSERT ... VALUES statement.
        cur = self.conn.cursor()
        execute_values(cur, sql.split(" VALUES ")[0] + " VALUES %s", param_list)
        return [cur.rowcount]

    def query_many(self, sql, param_list):
        return [self.query(sql, p) for p in param_list]

    def transaction(self, body, commit):
        self.conn.autocommit = False  # the first statement opens the transaction
        try:
            result = body()
            if commit:
                self.conn.commit()
            else:
                self.conn.rollback()
            return result
        except Exception:
            self.conn.rollback()
            raise
        finally:
            self.conn.autocommit = True

    def rollback_to_savepoint(self, body):
        # psycopg2 has no savepoint API: the statements themselves.
        self.execute("SAVEPOINT cross_shard")
        body()
        self.execute("ROLLBACK TO SAVEPOINT cross_shard")

    def prepare(self, sql):
        return lambda params: self.query(sql, params)

    def cancel(self, sql, params):
        scenario.cancel_with_thread(self, self.conn.cancel, sql, params)

    # session_state: psycopg2 parses dates in ISO form only, whatever DateStyle says (it sets
    # DateStyle ISO at connect when the server has another); under German it reads their text.
    reads_any_datestyle = False
    datestyle_note = "psycopg2 parses ISO dates only"

    def parameter_status(self, name):
        return self.conn.get_parameter_status(name)

    @staticmethod
    def prepare_explicitly(_sql):
        return None  # no server-side prepared statements (prepared_note)

    @staticmethod
    def step(fn):
        return fn()

    @staticmethod
    def sqlstate(exc):
        return getattr(exc, "pgcode", None)

    @staticmethod
    def params(v):
        id_, n4, name, uid, amount, ts, flag, blob, doc, tags, nums = v
        return (id_, n4, name, uid, amount and Decimal(amount), ts, flag, blob,
                None if doc is None else Json(doc), tags, nums)

    @staticmethod
    def normalize(v):
        v[4] = v[4] and str(v[4])  # Decimal keeps the scale in str(); uuid arrives as str
        v[7] = v[7] if v[7] is None else bytes(v[7])  # memoryview
        return v

    def close(self):
        self.conn.close()


if __name__ == "__main__":
    libpq = psycopg2.extensions.libpq_version()
    scenario.run(f"{psycopg2.__version__.split()[0]} (libpq {libpq})", lambda: Psycopg2(sys.argv[1]))
