"""The common client scenario (docs/compatibility.md), written once for the Python drivers.

Each driver module (psycopg3_client.py, psycopg2_client.py, asyncpg_client.py) supplies a small
adapter: how to run a statement, a transaction, a savepoint, a prepared statement and a cancel,
and how to turn the driver's values into the plain Python values compared here. The scenario
itself, the rows and the report format are the same for every driver, and mirror the node, Java,
Ruby and Rust clients step by step.

Report format on stdout, read by tests/clients/run.sh:
    version <text>        the driver's version
    ok <step>             a step passed
    fail <step>: <why>    a step failed (the run goes on with the next step)
    skip <step>: <why>    the driver cannot do this step
"""

import sys
import threading
import time
from datetime import datetime, timezone

# Row i (1..16) has key 7**i: keys that fit in 2, 4 and 8 bytes, for drivers that bind an
# integer as the smallest type that holds it (psycopg 3 does), spread over the 4 shards.
ROWS = 16
KEYS = [7**i for i in range(1, ROWS + 1)]
NULL_ID = 7**17  # one row whose every other column is NULL
BATCH_KEYS = [-(7**i) for i in range(1, 9)]  # rows inserted by the driver's batch API, last
TX_ID = 100  # inserted by the committed transaction
ROLLBACK_ID = 101  # inserted by the rolled-back transaction
# Inserted by the cross-shard transactions, committed and rolled back: four consecutive keys
# land on several of the 4 shards.
CROSS_IDS = list(range(900001, 900005))
CROSS_ROLLBACK_IDS = list(range(900011, 900015))
# Inserted by session_state's transaction that opens with a savepoint: the first is rolled back
# to it, the second committed.
SAVEPOINT_IDS = [910001, 910002]

COLUMNS = ["id", "n4", "name", "uid", "amount", "ts", "flag", "blob", "doc", "tags", "nums"]

DDL = [
    "DROP TABLE IF EXISTS orders",
    "DROP TABLE IF EXISTS users",
    # bigserial: generated_keys leaves the key out; the other steps name it.
    "CREATE TABLE users (id bigserial PRIMARY KEY, n4 int4, name text, uid uuid, amount numeric,"
    " ts timestamptz, flag bool, blob bytea, doc jsonb, tags text[], nums int4[])",
    "CREATE TABLE orders (user_id int8 NOT NULL, n int4 NOT NULL, PRIMARY KEY (user_id, n))",
]
INSERT = (
    "INSERT INTO users (id, n4, name, uid, amount, ts, flag, blob, doc, tags, nums)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)
SELECT_ROW = f"SELECT {', '.join(COLUMNS)} FROM users WHERE id = %s"
SELECT_NAME = "SELECT name FROM users WHERE id = %s"
LOOKUP = "SELECT id FROM users WHERE name = %s"  # no key: runs on every shard
COUNT_RANGE = "SELECT count(*) FROM users WHERE id BETWEEN %s AND %s"  # hashed keys: every shard
# session_state: a timestamp read through the driver's own loader, and as the server's text.
TS_NATIVE = "SELECT '2000-01-10 12:00'::timestamp"
TS_TEXT = "SELECT '2000-01-10 12:00'::timestamp::text"
TS_VALUE = datetime(2000, 1, 10, 12, 0)
TS_TEXT_BY_STYLE = {"ISO": "2000-01-10 12:00:00", "German": "10.01.2000 12:00:00"}
GERMAN = "German, YMD"
# generated_keys: rows that leave the key to its default, so the proxy generates it.
GENERATED_NAMES = [f"generated {i}: ünï ✓" for i in range(1, 8)]
INSERT_GENERATED = "INSERT INTO users (name) VALUES (%s) RETURNING id"
INSERT_GENERATED_3 = "INSERT INTO users (name) VALUES (%s), (%s), (%s) RETURNING id"


def make_row(i, key=None):
    """Row i of the scenario (key 7**i unless given), as plain Python values: the canonical
    form every driver's values are compared in."""
    return {
        "id": 7**i if key is None else key,
        "n4": -1000 * i,
        "name": f"user {i}: it's \"ünï\" \\ ✓",
        "uid": f"00000000-0000-4000-8000-{i:012d}",
        "amount": f"{i}9876543210.012340",  # numeric keeps its scale: compared as text
        "ts": datetime(2024, 2, 29, 12, i, 56, 789012, tzinfo=timezone.utc),
        "flag": i % 2 == 0,
        "blob": bytes([0, i, 255, 39, 92]),
        "doc": {"i": i, "s": "ünï", "tags": ["x", "y"], "nested": {"ok": True, "none": None}},
        "tags": ["a", "b,c", 'q"d', None],
        "nums": [i, -i, 0],
    }


def null_row():
    return {c: (NULL_ID if c == "id" else None) for c in COLUMNS}


class Report:
    """Prints one line per step; a step that raises is reported and the run goes on."""

    def __init__(self):
        self.failed = False

    def version(self, text):
        print(f"version {text}", flush=True)

    def run(self, name, fn):
        try:
            note = fn()
        except Skip as e:
            print(f"skip {name}: {e}", flush=True)
        except Exception as e:  # noqa: BLE001 - any driver error is the step's failure
            self.failed = True
            msg = " ".join(f"{type(e).__name__}: {e}".split())
            print(f"fail {name}: {msg[:300]}", flush=True)
        else:
            print(f"ok {name}" + (f" ({note})" if note else ""), flush=True)


class Skip(Exception):
    """Raised by an adapter for a step its driver cannot express."""


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def expect_sqlstate(adapter, fn, want):
    """Runs fn, which must fail with SQLSTATE `want`."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001
        got = adapter.sqlstate(e)
        check(got == want, f"expected SQLSTATE {want}, got {got}: {e}")
        return
    raise AssertionError(f"expected SQLSTATE {want}, but the statement succeeded")


def canonical(adapter, values):
    """The driver's row as the canonical form of make_row (None stays None)."""
    row = dict(zip(COLUMNS, adapter.normalize(list(values))))
    if row["ts"] is not None:
        row["ts"] = row["ts"].astimezone(timezone.utc)
    return row


def run(version, connect):
    """Connects with `connect()` (which returns the driver's adapter), runs every step and
    exits 1 if a step failed."""
    report = Report()
    report.version(version)
    adapters = []
    report.run("connect", lambda: adapters.append(connect()))
    if not adapters:
        sys.exit(1)
    adapter = adapters[0]
    rows = {key: make_row(i) for i, key in enumerate(KEYS, start=1)}
    rows[NULL_ID] = null_row()
    present = dict(rows)  # what the table should hold: the oracle of the later steps

    def read(key):
        got = adapter.query(SELECT_ROW, (key,))
        return [canonical(adapter, r) for r in got]

    def ddl():
        for sql in DDL:
            adapter.execute(sql)

    def insert():
        for key, row in rows.items():
            count = adapter.execute(INSERT, adapter.params([row[c] for c in COLUMNS]))
            check(count == 1, f"id {key}: row count {count}")

    def read_back():
        results = adapter.query_many(SELECT_ROW, [(k,) for k in rows])
        for key, got in zip(rows, results):
            got = [canonical(adapter, r) for r in got]
            check(got == [rows[key]], f"id {key}: read {got}, inserted {rows[key]}")

    def update():
        key = KEYS[0]
        new = "renamed ✓"
        check(adapter.execute("UPDATE users SET name = %s, n4 = n4 + 1 WHERE id = %s", (new, key)) == 1, "update count")
        present[key] = dict(present[key], name=new, n4=present[key]["n4"] + 1)
        check(read(key) == [present[key]], f"after update: {read(key)}")

    def delete():
        key = KEYS[1]
        check(adapter.execute("DELETE FROM users WHERE id = %s", (key,)) == 1, "delete count")
        del present[key]
        check(read(key) == [], "row still there after delete")

    def tx_commit():
        def body():
            adapter.execute("INSERT INTO users (id, name) VALUES (%s, %s)", (TX_ID, "in tx"))
            adapter.execute("INSERT INTO orders (user_id, n) VALUES (%s, 1), (%s, 2)", (TX_ID, TX_ID))
            adapter.execute("UPDATE users SET n4 = 7 WHERE id = %s", (TX_ID,))

        adapter.transaction(body, commit=True)
        present[TX_ID] = dict(null_row(), id=TX_ID, name="in tx", n4=7)
        check(read(TX_ID) == [present[TX_ID]], f"committed row: {read(TX_ID)}")
        orders = adapter.query("SELECT count(*) FROM orders WHERE user_id = %s", (TX_ID,))
        check(orders[0][0] == 2, f"orders after commit: {orders}")

    def tx_rollback():
        def body():
            adapter.execute("INSERT INTO users (id, name) VALUES (%s, %s)", (ROLLBACK_ID, "rolled back"))
            adapter.execute("INSERT INTO orders (user_id, n) VALUES (%s, 1)", (ROLLBACK_ID,))
            check(len(adapter.query(SELECT_NAME, (ROLLBACK_ID,))) == 1, "row invisible inside its transaction")

        adapter.transaction(body, commit=False)
        check(read(ROLLBACK_ID) == [], "rolled-back row is there")
        orders = adapter.query("SELECT count(*) FROM orders WHERE user_id = %s", (ROLLBACK_ID,))
        check(orders[0][0] == 0, f"orders after rollback: {orders}")

    def tx_cross_shard():
        # One transaction holds a backend on each shard its keys need, reads its own writes
        # from all of them and commits them together.
        first, last = CROSS_IDS[0], CROSS_IDS[-1]

        def body():
            for key in CROSS_IDS:
                adapter.execute("INSERT INTO users (id, name) VALUES (%s, %s)", (key, "cross shard"))
            adapter.execute("UPDATE users SET n4 = 7 WHERE id = %s", (last,))
            got = adapter.query(COUNT_RANGE, (first, last))
            check(got[0][0] == len(CROSS_IDS), f"count inside the transaction: {got}")

        adapter.transaction(body, commit=True)
        for key in CROSS_IDS:
            present[key] = dict(null_row(), id=key, name="cross shard", n4=7 if key == last else None)
            check(read(key) == [present[key]], f"id {key} after commit: {read(key)}")

        # A savepoint after the first insert: the shards that join later get it replayed, and
        # ROLLBACK TO SAVEPOINT undoes the two inserts after it on whichever shards they ran.
        first, last = CROSS_ROLLBACK_IDS[0], CROSS_ROLLBACK_IDS[-1]

        def insert_named(key):
            adapter.execute("INSERT INTO users (id, name) VALUES (%s, %s)", (key, "rolled back"))

        def after_savepoint():
            for key in CROSS_ROLLBACK_IDS[1:-1]:
                insert_named(key)

        def rolled_back():
            insert_named(first)
            adapter.rollback_to_savepoint(after_savepoint)
            insert_named(last)
            got = adapter.query(COUNT_RANGE, (first, last))
            check(got[0][0] == 2, f"count after ROLLBACK TO SAVEPOINT: {got}")

        adapter.transaction(rolled_back, commit=False)
        got = adapter.query(COUNT_RANGE, (first, last))
        check(got[0][0] == 0, f"count after ROLLBACK: {got}")

    def order_limit():
        got = [r[0] for r in adapter.query("SELECT id FROM users ORDER BY id DESC LIMIT 5")]
        check(got == sorted(present, reverse=True)[:5], f"got {got}")

    def count():
        got = adapter.query("SELECT count(*) FROM users")[0][0]
        check(got == len(present), f"count {got}, expected {len(present)}")

    def prepared_reuse():
        keys = sorted(present)
        run_prepared = adapter.prepare(SELECT_NAME)
        for n in range(24):  # each in its own transaction, so backends change in between
            key = keys[n % len(keys)]
            got = adapter.transaction(lambda: run_prepared((key,)), commit=True)
            check(got == [(present[key]["name"],)], f"id {key}: {got}")
        return getattr(adapter, "prepared_note", None)

    def second_connection():
        # A statement over every shard (a lookup without the key) runs twice on this
        # connection, then on a second one, as an application's connection pool does, with
        # the count and a read by key: the proxy shares server-side prepared statements
        # between clients.
        key = KEYS[2]
        other = connect()
        try:
            for conn in (adapter, adapter, other):
                got = conn.query(LOOKUP, (present[key]["name"],))
                check(got == [(key,)], f"lookup by name: {got}")
            got = other.query("SELECT count(*) FROM users")[0][0]
            check(got == len(present), f"count {got}, expected {len(present)}")
            got = [canonical(other, r) for r in other.query(SELECT_ROW, (key,))]
            check(got == [present[key]], f"id {key}: read {got}")
        finally:
            other.close()

    def unique_violation():
        key = KEYS[2]
        expect_sqlstate(adapter, lambda: adapter.execute("INSERT INTO users (id) VALUES (%s)", (key,)), "23505")
        got = adapter.query(SELECT_NAME, (key,))
        check(got == [(present[key]["name"],)], f"after the error: {got}")

    def set_timeout():
        # current_setting() from a row of users runs on that row's shard: the SET must have
        # followed the client to whichever backend each transaction got.
        keys = [k for k in KEYS if k in present][:6]
        adapter.execute("SET statement_timeout = '150ms'")
        try:
            for key in keys:
                got = adapter.query("SELECT current_setting('statement_timeout') FROM users WHERE id = %s", (key,))
                check(got == [("150ms",)], f"id {key}: statement_timeout is {got}")
            for key in keys[:3]:
                start = time.monotonic()
                expect_sqlstate(adapter, lambda: adapter.query("SELECT pg_sleep(3) FROM users WHERE id = %s", (key,)), "57014")
                check(time.monotonic() - start < 2.5, "the timeout did not stop the sleep")
        finally:
            adapter.execute("RESET statement_timeout")
        for key in keys:
            got = adapter.query("SELECT current_setting('statement_timeout') FROM users WHERE id = %s", (key,))
            check(got == [("0",)], f"id {key}: after RESET statement_timeout is {got}")

    def session_state():
        # Session state that the server reports or holds, which a pooling proxy must keep
        # straight: three cases psycopg's own test suite hit. Parts a driver cannot express are
        # reported as a skip once the rest has passed.
        skipped = []
        before = adapter.query("SHOW DateStyle")[0][0]

        def datestyle_is(value, where):
            # DateStyle is reported with ParameterStatus; drivers that read dates as text
            # parse them by it (psycopg 3 does). For drivers that read timestamps in binary
            # (asyncpg) it changes nothing: their reads check the value and that nothing breaks.
            # The timestamp is read first, as psycopg's tests do: the driver must have been told
            # before the rows arrive.
            told = adapter.parameter_status("DateStyle")
            check(told in (None, value), f"{where}: the driver was told DateStyle {told!r}, not {value!r}")
            if value == before or adapter.reads_any_datestyle:
                got = adapter.query(TS_NATIVE)
                check(got == [(TS_VALUE,)], f"{where}: read {got} under DateStyle {value}")
            got = adapter.query(TS_TEXT)
            want = TS_TEXT_BY_STYLE[value.split(",")[0]]
            check(got == [(want,)], f"{where}: the text of the timestamp is {got}, expected {want}")
            got = adapter.query("SHOW DateStyle")
            check(got == [(value,)], f"{where}: SHOW DateStyle is {got}, expected {value}")

        # 1. A setting changed inside a transaction, then rolled back; then outside one and reset.
        def set_inside():
            adapter.execute(f"SET DateStyle = '{GERMAN}'")
            datestyle_is(GERMAN, "after SET inside a transaction")

        adapter.transaction(set_inside, commit=False)
        datestyle_is(before, "after ROLLBACK")
        adapter.execute(f"SET DateStyle = '{GERMAN}'")
        try:
            datestyle_is(GERMAN, "after SET outside a transaction")
        finally:
            adapter.execute("RESET DateStyle")
        datestyle_is(before, "after RESET")
        if not adapter.reads_any_datestyle:
            skipped.append(f"German dates read as text only: {adapter.datestyle_note}")

        # 2. A savepoint as the very first statement of a transaction (the driver's API for
        # nested transactions where it has one), then rolled back to.
        rolled_back, kept = SAVEPOINT_IDS

        def insert_named(key):
            adapter.execute("INSERT INTO users (id, name) VALUES (%s, %s)", (key, "after a savepoint"))

        def savepoint_first():
            adapter.rollback_to_savepoint(lambda: insert_named(rolled_back))
            insert_named(kept)

        adapter.transaction(savepoint_first, commit=True)
        # The count (every shard) first: in a pipeline it must not follow reads of one shard
        # before a Sync (docs/compatibility.md).
        got = adapter.query(COUNT_RANGE, (rolled_back, kept))
        check(got[0][0] == 1, f"count after commit: {got}")
        present[kept] = dict(null_row(), id=kept, name="after a savepoint")
        check(read(rolled_back) == [], f"id {rolled_back}, rolled back to the savepoint, is there")
        check(read(kept) == [present[kept]], f"id {kept} after commit: {read(kept)}")

        # 3. DISCARD ALL outside a transaction: it resets the settings (told to the driver with
        # ParameterStatus) and drops the prepared statements; a prepared statement runs again.
        key = KEYS[2]
        want = [(present[key]["name"],)]
        how = None
        run_prepared = adapter.prepare_explicitly(SELECT_NAME)
        if run_prepared:
            check(run_prepared((key,)) == want, "before DISCARD ALL")
        else:
            skipped.append(f"no prepared statement before DISCARD ALL: {adapter.prepared_note}")
        adapter.execute(f"SET DateStyle = '{GERMAN}'")
        adapter.execute("DISCARD ALL")
        if run_prepared:
            # First, for drivers that must drop their statement cache before going on.
            run_prepared, how = adapter.after_discard_all(run_prepared, SELECT_NAME, (key,))
        datestyle_is(before, "after DISCARD ALL")
        if run_prepared:
            check(run_prepared((key,)) == want, f"after DISCARD ALL ({how})")
        check(adapter.query(SELECT_NAME, (key,)) == want, "a statement after DISCARD ALL")
        if skipped:
            raise Skip("; ".join(skipped) + " (the rest passed)")
        return how

    def generated_keys():
        # users.id is bigserial and these inserts leave it out: the proxy generates each key,
        # routes the row by it and returns it; a read by the returned key (routed to that key's
        # shard) must find the row. One insert of three rows (RETURNING in VALUES order), two
        # single-row inserts, two through a prepared statement.
        names = GENERATED_NAMES
        note = None

        def returned(rows, inserted):
            check(len(rows) == len(inserted), f"{len(inserted)} rows inserted, returned {rows}")
            return [(r[0], name) for r, name in zip(rows, inserted)]

        # The three rows first: in a pipeline an INSERT split over shards must not follow other
        # statements before a Sync (docs/compatibility.md).
        got = returned(adapter.query(INSERT_GENERATED_3, tuple(names[0:3])), names[0:3])
        for name in names[3:5]:
            got += returned(adapter.query(INSERT_GENERATED, (name,)), [name])
        run_prepared = adapter.prepare_explicitly(INSERT_GENERATED)
        if not run_prepared:
            note = f"no prepared statement: {adapter.prepared_note}"
            run_prepared = lambda params: adapter.query(INSERT_GENERATED, params)  # noqa: E731
        for name in names[5:7]:
            got += returned(run_prepared((name,)), [name])
        ids = [key for key, _ in got]
        check(None not in ids, f"a NULL id returned: {ids}")
        check(len(set(ids)) == len(ids), f"repeated ids returned: {ids}")
        for key, name in got:
            read_name = adapter.query(SELECT_NAME, (key,))
            check(read_name == [(name,)], f"id {key}: read {read_name}, inserted {name!r} (ids {ids})")
            present[key] = dict(null_row(), id=key, name=name)
        return note

    def cancel():
        key = KEYS[2]
        start = time.monotonic()
        note = adapter.cancel("SELECT pg_sleep(5) FROM users WHERE id = %s", (key,))
        check(time.monotonic() - start < 4, "the cancel did not stop the sleep")
        got = adapter.query(SELECT_NAME, (key,))
        check(got == [(present[key]["name"],)], f"after the cancel: {got}")
        return note

    def batch_insert():
        # Last, because drivers send a batch as many statements before one Sync, which the
        # proxy may refuse; the steps before do not depend on it.
        batch = {k: make_row(i, k) for i, k in enumerate(BATCH_KEYS, start=1)}
        counts = adapter.batch(INSERT, [adapter.params([r[c] for c in COLUMNS]) for r in batch.values()])
        # None: the driver's batch API reports no row counts; the rows are read back instead.
        check(counts is None or sum(counts) == len(batch), f"row counts {counts}")
        for key, row in batch.items():
            check(read(key) == [row], f"id {key}: read {read(key)}, inserted {row}")
        return getattr(adapter, "batch_note", None)

    steps = [
        ("ddl", ddl),
        ("insert", insert),
        ("read_back", read_back),
        ("update", update),
        ("delete", delete),
        ("tx_commit", tx_commit),
        ("tx_rollback", tx_rollback),
        ("tx_cross_shard", tx_cross_shard),
        ("order_limit", order_limit),
        ("count", count),
        ("prepared_reuse", prepared_reuse),
        ("second_connection", second_connection),
        ("unique_violation", unique_violation),
        ("set_timeout", set_timeout),
        ("session_state", session_state),
        ("generated_keys", generated_keys),
        ("cancel", cancel),
        ("batch_insert", batch_insert),
    ]
    for name, fn in steps:
        report.run(name, lambda: adapter.step(fn))
    adapter.close()
    sys.exit(1 if report.failed else 0)


def cancel_with_thread(adapter, cancel_fn, sql, params):
    """Runs sql, cancels it from another thread after 0.3 s; it must fail with 57014."""
    timer = threading.Timer(0.3, cancel_fn)
    timer.start()
    try:
        expect_sqlstate(adapter, lambda: adapter.query(sql, params), "57014")
    finally:
        timer.cancel()
