// PostgreSQL JDBC through shardline: java -cp postgresql.jar JdbcClient.java URL
//
// The common scenario of docs/compatibility.md, step for step as tests/clients/python/scenario.py.
// pgjdbc speaks only the extended protocol; with prepareThreshold=1 every PreparedStatement is
// a named server-side statement from its first execution, which the proxy must re-prepare on
// whichever backend a later transaction gets. Report lines on stdout: `version`, `ok <step>`,
// `fail <step>: <why>`, read by run.sh.

import java.math.BigDecimal;
import java.net.URI;
import java.sql.Array;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Savepoint;
import java.sql.Statement;
import java.sql.Types;
import java.time.LocalDateTime;
import java.time.OffsetDateTime;
import java.time.ZoneOffset;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashSet;
import java.util.HexFormat;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.UUID;
import org.postgresql.PGConnection;
import org.postgresql.util.PGobject;

public class JdbcClient {
    static final int ROWS = 16;
    static final long NULL_ID = pow7(17);
    static final long TX_ID = 100, ROLLBACK_ID = 101;
    // Inserted by the cross-shard transactions, committed and rolled back: four consecutive keys
    // land on several of the 4 shards.
    static final long[] CROSS_IDS = {900001, 900002, 900003, 900004};
    static final long[] CROSS_ROLLBACK_IDS = {900011, 900012, 900013, 900014};
    static final String[] DDL = {
        "DROP TABLE IF EXISTS orders",
        "DROP TABLE IF EXISTS users",
        // bigserial: generated_keys leaves the key out; the other steps name it.
        "CREATE TABLE users (id bigserial PRIMARY KEY, n4 int4, name text, uid uuid, amount numeric,"
            + " ts timestamptz, flag bool, blob bytea, doc jsonb, tags text[], nums int4[])",
        "CREATE TABLE orders (user_id int8 NOT NULL, n int4 NOT NULL, PRIMARY KEY (user_id, n))",
    };
    static final String INSERT = "INSERT INTO users (id, n4, name, uid, amount, ts, flag, blob, doc, tags, nums)"
        + " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";
    static final String SELECT_ROW =
        "SELECT id, n4, name, uid, amount, ts, flag, blob, doc, tags, nums FROM users WHERE id = ?";
    static final String SELECT_NAME = "SELECT name FROM users WHERE id = ?";
    static final String LOOKUP = "SELECT id FROM users WHERE name = ?"; // no key: runs on every shard
    static final String COUNT_RANGE = "SELECT count(*) FROM users WHERE id BETWEEN ? AND ?"; // hashed keys: every shard
    // session_state: inserted by the transaction that opens with a savepoint, the first rolled
    // back to it, the second committed; a timestamp read as LocalDateTime, and as the server's text.
    static final long[] SAVEPOINT_IDS = {910001, 910002};
    static final String TS_NATIVE = "SELECT '2000-01-10 12:00'::timestamp";
    static final String TS_TEXT = "SELECT '2000-01-10 12:00'::timestamp::text";
    static final LocalDateTime TS_VALUE = LocalDateTime.of(2000, 1, 10, 12, 0);
    static final String TS_TEXT_ISO = "2000-01-10 12:00:00";
    // pgjdbc accepts only a DateStyle that begins with ISO: this one changes the input order.
    static final String OTHER_STYLE = "ISO, DMY";
    // generated_keys: rows that leave the key to its default, so the proxy generates it.
    static final String[] GENERATED_NAMES = new String[7];
    static {
        for (int i = 0; i < GENERATED_NAMES.length; i++) GENERATED_NAMES[i] = "generated " + (i + 1) + ": ünï ✓";
    }
    static final String INSERT_GENERATED = "INSERT INTO users (name) VALUES (?) RETURNING id";
    static final String INSERT_GENERATED_3 = "INSERT INTO users (name) VALUES (?), (?), (?) RETURNING id";

    static long pow7(int i) {
        long v = 1;
        for (int n = 0; n < i; n++) v *= 7;
        return v;
    }

    /** Row i of the scenario, in the Java types pgjdbc returns (arrays as lists, bytea as hex). */
    static List<Object> makeRow(int i, long key) {
        // jsonb comes back as text in PostgreSQL's canonical form (keys by length, then bytes),
        // which this input already is, so the text is compared exactly.
        String doc = "{\"i\": " + i + ", \"s\": \"ünï\", \"tags\": [\"x\", \"y\"], \"nested\": {\"ok\": true, \"none\": null}}";
        return Arrays.asList(
            key, -1000 * i, "user " + i + ": it's \"ünï\" \\ ✓",
            UUID.fromString(String.format("00000000-0000-4000-8000-%012d", i)),
            new BigDecimal(i + "9876543210.012340"),
            OffsetDateTime.of(2024, 2, 29, 12, i, 56, 789_012_000, ZoneOffset.UTC),
            i % 2 == 0, HexFormat.of().formatHex(new byte[] {0, (byte) i, (byte) 255, 39, 92}), doc,
            Arrays.asList("a", "b,c", "q\"d", null), Arrays.asList(i, -i, 0));
    }

    static List<Object> nullRow(long key) {
        List<Object> row = new ArrayList<>(Arrays.asList(new Object[11]));
        row.set(0, key);
        return row;
    }

    static void bind(Connection conn, PreparedStatement ps, List<Object> row) throws SQLException {
        ps.setLong(1, (Long) row.get(0));
        if (row.get(1) == null) {
            int[] types = {Types.INTEGER, Types.VARCHAR, Types.OTHER, Types.NUMERIC, Types.TIMESTAMP_WITH_TIMEZONE,
                Types.BOOLEAN, Types.BINARY, Types.OTHER, Types.ARRAY, Types.ARRAY};
            for (int c = 0; c < types.length; c++) ps.setNull(c + 2, types[c]);
            return;
        }
        ps.setInt(2, (Integer) row.get(1));
        ps.setString(3, (String) row.get(2));
        ps.setObject(4, row.get(3));
        ps.setBigDecimal(5, (BigDecimal) row.get(4));
        ps.setObject(6, row.get(5));
        ps.setBoolean(7, (Boolean) row.get(6));
        ps.setBytes(8, HexFormat.of().parseHex((String) row.get(7)));
        PGobject json = new PGobject();
        json.setType("jsonb");
        json.setValue((String) row.get(8));
        ps.setObject(9, json);
        ps.setArray(10, conn.createArrayOf("text", ((List<?>) row.get(9)).toArray()));
        ps.setArray(11, conn.createArrayOf("int4", ((List<?>) row.get(10)).toArray()));
    }

    static List<Object> fetchRow(ResultSet rs) throws SQLException {
        byte[] blob = rs.getBytes(8);
        return Arrays.asList(
            rs.getObject(1), rs.getObject(2), rs.getObject(3), rs.getObject(4), rs.getBigDecimal(5),
            rs.getObject(6, OffsetDateTime.class), rs.getObject(7), blob == null ? null : HexFormat.of().formatHex(blob),
            rs.getString(9), list(rs.getArray(10)), list(rs.getArray(11)));
    }

    static List<Object> list(Array a) throws SQLException {
        return a == null ? null : Arrays.asList((Object[]) a.getArray());
    }

    static void check(boolean cond, String what) {
        if (!cond) throw new AssertionError(what);
    }

    /** Compares a value read once with the expected one. */
    static void checkEq(Object got, Object want, String what) {
        if (!got.equals(want)) throw new AssertionError(what + ": got " + got + ", expected " + want);
    }

    interface Body {
        void run() throws Exception;
    }

    static void expectSqlstate(Body body, String want) throws Exception {
        try {
            body.run();
        } catch (SQLException e) {
            check(want.equals(e.getSQLState()), "expected SQLSTATE " + want + ", got " + e.getSQLState() + ": " + e.getMessage());
            return;
        }
        throw new AssertionError("expected SQLSTATE " + want + ", but the statement succeeded");
    }

    /** Thrown by a step for the part pgjdbc cannot express; reported as `skip <step>: <why>`. */
    static class Skip extends Exception {
        Skip(String why) {
            super(why);
        }
    }

    static boolean failed = false;

    static void step(String name, Body body) {
        try {
            body.run();
            System.out.println("ok " + name);
        } catch (Skip e) {
            System.out.println("skip " + name + ": " + e.getMessage());
        } catch (Exception | AssertionError e) {
            failed = true;
            Throwable cause = e;
            if (e instanceof SQLException && ((SQLException) e).getNextException() != null) {
                cause = ((SQLException) e).getNextException(); // a batch's error names its statement only
            }
            String msg = cause.getClass().getSimpleName() + ": " + cause.getMessage();
            msg = msg.replaceAll("\\s+", " ");
            System.out.println("fail " + name + ": " + msg.substring(0, Math.min(300, msg.length())));
        }
    }

    static Connection conn;
    static TreeMap<Long, List<Object>> present = new TreeMap<>();

    static List<List<Object>> read(long key) throws SQLException {
        try (PreparedStatement ps = conn.prepareStatement(SELECT_ROW)) {
            ps.setLong(1, key);
            List<List<Object>> rows = new ArrayList<>();
            try (ResultSet rs = ps.executeQuery()) {
                while (rs.next()) rows.add(fetchRow(rs));
            }
            return rows;
        }
    }

    static List<Object> column(String sql, Object... params) throws SQLException {
        try (PreparedStatement ps = conn.prepareStatement(sql)) {
            for (int i = 0; i < params.length; i++) ps.setObject(i + 1, params[i]);
            List<Object> values = new ArrayList<>();
            try (ResultSet rs = ps.executeQuery()) {
                while (rs.next()) values.add(rs.getObject(1));
            }
            return values;
        }
    }

    static List<Object> names(PreparedStatement ps) throws SQLException {
        List<Object> values = new ArrayList<>();
        try (ResultSet rs = ps.executeQuery()) {
            while (rs.next()) values.add(rs.getString(1));
        }
        return values;
    }

    /** The ids in `rs`, one per name in `inserted`: added to `ids`, the names to `names`. */
    static void returned(ResultSet rs, List<String> inserted, List<Long> ids, List<String> names) throws SQLException {
        List<Object> got = new ArrayList<>();
        try (rs) {
            while (rs.next()) got.add(rs.getObject(1));
        }
        check(got.size() == inserted.size(), inserted.size() + " rows inserted, returned " + got);
        for (Object id : got) {
            check(id instanceof Long, "id returned: " + id);
            ids.add((Long) id);
        }
        names.addAll(inserted);
    }

    static int update(String sql, Object... params) throws SQLException {
        try (PreparedStatement ps = conn.prepareStatement(sql)) {
            for (int i = 0; i < params.length; i++) ps.setObject(i + 1, params[i]);
            return ps.executeUpdate();
        }
    }

    public static void main(String[] args) throws Exception {
        URI uri = URI.create(args[0]);
        String[] auth = uri.getUserInfo().split(":");
        // Parameters of the URL (sslmode, sslrootcert) go to the driver as they are.
        String extra = uri.getRawQuery() == null ? "" : "&" + uri.getRawQuery();
        String url = "jdbc:postgresql://" + uri.getHost() + ":" + uri.getPort() + uri.getPath() + "?prepareThreshold=1" + extra;
        System.out.println("version " + org.postgresql.Driver.class.getPackage().getImplementationVersion()
            + " (Java " + System.getProperty("java.version") + ")");

        step("connect", () -> conn = DriverManager.getConnection(url, auth[0], auth[1]));
        if (conn == null) System.exit(1);

        Map<Long, List<Object>> rows = new LinkedHashMap<>();
        for (int i = 1; i <= ROWS; i++) rows.put(pow7(i), makeRow(i, pow7(i)));
        rows.put(NULL_ID, nullRow(NULL_ID));
        present.putAll(rows);
        long[] keys = rows.keySet().stream().mapToLong(Long::longValue).toArray();

        step("ddl", () -> {
            try (Statement st = conn.createStatement()) {
                for (String sql : DDL) st.execute(sql);
            }
        });
        step("insert", () -> {
            try (PreparedStatement ps = conn.prepareStatement(INSERT)) {
                for (List<Object> row : rows.values()) {
                    bind(conn, ps, row);
                    check(ps.executeUpdate() == 1, "row count for id " + row.get(0));
                }
            }
        });
        step("read_back", () -> {
            for (Map.Entry<Long, List<Object>> e : rows.entrySet()) {
                List<List<Object>> got = read(e.getKey());
                check(got.equals(List.of(e.getValue())), "id " + e.getKey() + ": read " + got + ", inserted " + e.getValue());
            }
        });
        step("update", () -> {
            long key = keys[0];
            check(update("UPDATE users SET name = ?, n4 = n4 + 1 WHERE id = ?", "renamed ✓", key) == 1, "update count");
            List<Object> row = new ArrayList<>(present.get(key));
            row.set(2, "renamed ✓");
            row.set(1, (Integer) row.get(1) + 1);
            present.put(key, row);
            checkEq(read(key), List.of(row), "after update");
        });
        step("delete", () -> {
            long key = keys[1];
            check(update("DELETE FROM users WHERE id = ?", key) == 1, "delete count");
            present.remove(key);
            check(read(key).isEmpty(), "row still there after delete");
        });
        step("tx_commit", () -> {
            conn.setAutoCommit(false);
            try {
                update("INSERT INTO users (id, name) VALUES (?, ?)", TX_ID, "in tx");
                update("INSERT INTO orders (user_id, n) VALUES (?, 1), (?, 2)", TX_ID, TX_ID);
                update("UPDATE users SET n4 = 7 WHERE id = ?", TX_ID);
                conn.commit();
            } finally {
                conn.setAutoCommit(true);
            }
            List<Object> row = nullRow(TX_ID);
            row.set(1, 7);
            row.set(2, "in tx");
            present.put(TX_ID, row);
            checkEq(read(TX_ID), List.of(row), "committed row");
            List<Object> orders = column("SELECT count(*) FROM orders WHERE user_id = ?", TX_ID);
            check(orders.equals(List.of(2L)), "orders after commit: " + orders);
        });
        step("tx_rollback", () -> {
            conn.setAutoCommit(false);
            try {
                update("INSERT INTO users (id, name) VALUES (?, ?)", ROLLBACK_ID, "rolled back");
                update("INSERT INTO orders (user_id, n) VALUES (?, 1)", ROLLBACK_ID);
                check(column(SELECT_NAME, ROLLBACK_ID).size() == 1, "row invisible inside its transaction");
            } finally {
                conn.rollback();
                conn.setAutoCommit(true);
            }
            check(read(ROLLBACK_ID).isEmpty(), "rolled-back row is there");
            List<Object> orders = column("SELECT count(*) FROM orders WHERE user_id = ?", ROLLBACK_ID);
            check(orders.equals(List.of(0L)), "orders after rollback: " + orders);
        });
        step("tx_cross_shard", () -> {
            // One transaction holds a backend on each shard its keys need, reads its own writes
            // from all of them and commits them together.
            String insert = "INSERT INTO users (id, name) VALUES (?, ?)";
            long first = CROSS_IDS[0], last = CROSS_IDS[CROSS_IDS.length - 1];
            conn.setAutoCommit(false);
            try {
                for (long key : CROSS_IDS) update(insert, key, "cross shard");
                update("UPDATE users SET n4 = 7 WHERE id = ?", last);
                checkEq(column(COUNT_RANGE, first, last), List.of((long) CROSS_IDS.length), "count inside the transaction");
                conn.commit();
            } finally {
                conn.setAutoCommit(true);
            }
            for (long key : CROSS_IDS) {
                List<Object> row = nullRow(key);
                if (key == last) row.set(1, 7);
                row.set(2, "cross shard");
                present.put(key, row);
                checkEq(read(key), List.of(row), "id " + key + " after commit");
            }

            // A savepoint after the first insert: the shards that join later get it replayed,
            // and ROLLBACK TO SAVEPOINT undoes the two inserts after it on whichever shards they ran.
            first = CROSS_ROLLBACK_IDS[0];
            last = CROSS_ROLLBACK_IDS[CROSS_ROLLBACK_IDS.length - 1];
            conn.setAutoCommit(false);
            try {
                update(insert, first, "rolled back");
                Savepoint savepoint = conn.setSavepoint("cross_shard");
                for (int i = 1; i < CROSS_ROLLBACK_IDS.length - 1; i++) update(insert, CROSS_ROLLBACK_IDS[i], "rolled back");
                conn.rollback(savepoint);
                update(insert, last, "rolled back");
                checkEq(column(COUNT_RANGE, first, last), List.of(2L), "count after ROLLBACK TO SAVEPOINT");
            } finally {
                conn.rollback();
                conn.setAutoCommit(true);
            }
            checkEq(column(COUNT_RANGE, first, last), List.of(0L), "count after ROLLBACK");
        });
        step("order_limit", () -> {
            List<Object> got = column("SELECT id FROM users ORDER BY id DESC LIMIT 5");
            List<Object> want = new ArrayList<Object>(present.descendingKeySet()).subList(0, 5);
            check(got.equals(want), "got " + got + ", expected " + want);
        });
        step("count", () -> {
            List<Object> got = column("SELECT count(*) FROM users");
            check(got.equals(List.of((long) present.size())), "count " + got + ", expected " + present.size());
        });
        step("prepared_reuse", () -> {
            // One PreparedStatement (a named server statement, prepareThreshold=1), executed in
            // 24 transactions, so the proxy's backend changes in between.
            List<Long> ids = new ArrayList<>(present.keySet());
            try (PreparedStatement ps = conn.prepareStatement(SELECT_NAME)) {
                conn.setAutoCommit(false);
                try {
                    for (int n = 0; n < 24; n++) {
                        long key = ids.get(n % ids.size());
                        ps.setLong(1, key);
                        List<Object> got = new ArrayList<>();
                        try (ResultSet rs = ps.executeQuery()) {
                            while (rs.next()) got.add(rs.getString(1));
                        }
                        conn.commit();
                        check(got.equals(Arrays.asList(present.get(key).get(2))), "id " + key + ": " + got);
                    }
                } finally {
                    conn.setAutoCommit(true);
                }
            }
        });
        step("second_connection", () -> {
            // A statement over every shard (a lookup without the key) runs twice on this
            // connection, then on a second one, as an application's connection pool does, with
            // the count and a read by key: the proxy shares server-side prepared statements
            // between clients.
            long key = keys[2];
            Object name = present.get(key).get(2);
            checkEq(column(LOOKUP, name), List.of(key), "lookup by name");
            checkEq(column(LOOKUP, name), List.of(key), "lookup by name, again");
            Connection first = conn;
            try (Connection other = DriverManager.getConnection(url, auth[0], auth[1])) {
                conn = other;
                checkEq(column(LOOKUP, name), List.of(key), "second connection, lookup by name");
                List<Object> got = column("SELECT count(*) FROM users");
                check(got.equals(List.of((long) present.size())), "count " + got + ", expected " + present.size());
                checkEq(read(key), List.of(present.get(key)), "id " + key);
            } finally {
                conn = first;
            }
        });
        step("unique_violation", () -> {
            long key = keys[2];
            expectSqlstate(() -> update("INSERT INTO users (id) VALUES (?)", key), "23505");
            check(column(SELECT_NAME, key).equals(List.of(present.get(key).get(2))), "connection unusable after the error");
        });
        step("set_timeout", () -> {
            // current_setting() from a row runs on that row's shard: the SET must follow the client.
            List<Long> ids = new ArrayList<>();
            for (long k : keys) if (k != NULL_ID && present.containsKey(k) && ids.size() < 6) ids.add(k);
            String show = "SELECT current_setting('statement_timeout') FROM users WHERE id = ?";
            try (Statement st = conn.createStatement()) {
                st.execute("SET statement_timeout = '150ms'");
                try {
                    for (long key : ids) checkEq(column(show, key), List.of("150ms"), "id " + key + ": statement_timeout");
                    for (long key : ids.subList(0, 3)) {
                        long start = System.nanoTime();
                        expectSqlstate(() -> column("SELECT pg_sleep(3) FROM users WHERE id = ?", key), "57014");
                        check(System.nanoTime() - start < 2_500_000_000L, "the timeout did not stop the sleep");
                    }
                } finally {
                    st.execute("RESET statement_timeout");
                }
            }
            for (long key : ids) checkEq(column(show, key), List.of("0"), "id " + key + ": statement_timeout after RESET");
        });
        step("session_state", () -> {
            // Session state that the server reports or holds, which a pooling proxy must keep
            // straight: three cases psycopg's own test suite hit.
            String before = (String) column("SHOW DateStyle").get(0);
            PGConnection pg = conn.unwrap(PGConnection.class);
            // DateStyle matters to drivers that read dates as text and parse them by it; pgjdbc
            // reads this timestamp in binary (a named statement) or as ISO text, so the reads
            // check the value and that nothing breaks, and ParameterStatus is checked through
            // getParameterStatus. The timestamp is read first: the driver must have been told
            // before the rows arrive.
            class Style {
                void is(String value, String where) throws SQLException {
                    String told = pg.getParameterStatus("DateStyle");
                    check(value.equals(told), where + ": the driver was told DateStyle " + told + ", not " + value);
                    try (PreparedStatement ps = conn.prepareStatement(TS_NATIVE); ResultSet rs = ps.executeQuery()) {
                        rs.next();
                        checkEq(rs.getObject(1, LocalDateTime.class), TS_VALUE, where + ": timestamp under DateStyle " + value);
                    }
                    checkEq(column(TS_TEXT), List.of(TS_TEXT_ISO), where + ": the text of the timestamp");
                    checkEq(column("SHOW DateStyle"), List.of(value), where + ": SHOW DateStyle");
                }
            }
            Style style = new Style();

            // 1. A setting changed inside a transaction, then rolled back; then outside one and
            // reset. pgjdbc closes the connection when told a DateStyle that does not begin with
            // ISO (as against PostgreSQL): on a second connection, that refusal shows it was told
            // German inside the transaction; this connection uses ISO, DMY.
            try (Connection other = DriverManager.getConnection(url, auth[0], auth[1])) {
                other.setAutoCommit(false);
                try (Statement st = other.createStatement()) {
                    st.execute("SET DateStyle = 'German, YMD'");
                    throw new AssertionError("pgjdbc was not told DateStyle German inside a transaction");
                } catch (SQLException e) {
                    check(String.valueOf(e.getMessage()).contains("DateStyle"), "SET DateStyle German: " + e.getMessage());
                }
            }
            try (Statement st = conn.createStatement()) {
                conn.setAutoCommit(false);
                try {
                    st.execute("SET DateStyle = '" + OTHER_STYLE + "'");
                    style.is(OTHER_STYLE, "after SET inside a transaction");
                } finally {
                    conn.rollback();
                    conn.setAutoCommit(true);
                }
                style.is(before, "after ROLLBACK");
                st.execute("SET DateStyle = '" + OTHER_STYLE + "'");
                try {
                    style.is(OTHER_STYLE, "after SET outside a transaction");
                } finally {
                    st.execute("RESET DateStyle");
                }
                style.is(before, "after RESET");
            }

            // 2. setSavepoint() as the very first statement of a transaction, rolled back to.
            String insert = "INSERT INTO users (id, name) VALUES (?, ?)";
            long rolledBack = SAVEPOINT_IDS[0], kept = SAVEPOINT_IDS[1];
            conn.setAutoCommit(false);
            try {
                Savepoint savepoint = conn.setSavepoint();
                update(insert, rolledBack, "after a savepoint");
                conn.rollback(savepoint);
                update(insert, kept, "after a savepoint");
                conn.commit();
            } catch (Exception e) {
                conn.rollback();
                throw e;
            } finally {
                conn.setAutoCommit(true);
            }
            List<Object> row = nullRow(kept);
            row.set(2, "after a savepoint");
            present.put(kept, row);
            check(read(rolledBack).isEmpty(), "id " + rolledBack + ", rolled back to the savepoint, is there");
            checkEq(read(kept), List.of(row), "id " + kept + " after commit");
            checkEq(column(COUNT_RANGE, rolledBack, kept), List.of(1L), "count after commit");

            // 3. DISCARD ALL outside a transaction: it resets the settings (told to the driver
            // with ParameterStatus) and drops the prepared statements; the PreparedStatement
            // (named on the server from its first execution) runs again.
            long key = keys[2];
            List<Object> want = Arrays.asList(present.get(key).get(2));
            try (PreparedStatement ps = conn.prepareStatement(SELECT_NAME); Statement st = conn.createStatement()) {
                ps.setLong(1, key);
                checkEq(names(ps), want, "before DISCARD ALL");
                st.execute("SET DateStyle = '" + OTHER_STYLE + "'");
                st.execute("DISCARD ALL");
                style.is(before, "after DISCARD ALL");
                checkEq(names(ps), want, "the PreparedStatement after DISCARD ALL");
            }
            checkEq(column(SELECT_NAME, key), want, "a new PreparedStatement after DISCARD ALL");
            throw new Skip("German dates: pgjdbc requires a DateStyle beginning with ISO (checked: it was told"
                + " German inside a transaction and refused it; ISO, DMY used) (the rest passed)");
        });
        step("generated_keys", () -> {
            // users.id is bigserial and these inserts leave it out: the proxy generates each
            // key, routes the row by it and returns it; a read by the returned key (routed to
            // that key's shard) must find the row. One insert of three rows (RETURNING in VALUES
            // order), one PreparedStatement run twice (named on the server from its first
            // execution), and getGeneratedKeys twice (pgjdbc appends RETURNING "id").
            List<Long> ids = new ArrayList<>();
            List<String> names = new ArrayList<>();
            List<String> all = Arrays.asList(GENERATED_NAMES);
            try (PreparedStatement ps = conn.prepareStatement(INSERT_GENERATED_3)) {
                for (int i = 0; i < 3; i++) ps.setString(i + 1, all.get(i));
                returned(ps.executeQuery(), all.subList(0, 3), ids, names);
            }
            try (PreparedStatement ps = conn.prepareStatement(INSERT_GENERATED)) {
                for (String name : all.subList(3, 5)) {
                    ps.setString(1, name);
                    returned(ps.executeQuery(), List.of(name), ids, names);
                }
            }
            try (PreparedStatement ps = conn.prepareStatement("INSERT INTO users (name) VALUES (?)", new String[] {"id"})) {
                for (String name : all.subList(5, 7)) {
                    ps.setString(1, name);
                    check(ps.executeUpdate() == 1, "row count for " + name);
                    returned(ps.getGeneratedKeys(), List.of(name), ids, names);
                }
            }
            check(new HashSet<>(ids).size() == ids.size(), "repeated ids returned: " + ids);
            for (int i = 0; i < ids.size(); i++) {
                long id = ids.get(i);
                checkEq(column(SELECT_NAME, id), List.of(names.get(i)), "id " + id + " (ids " + ids + ")");
                List<Object> row = nullRow(id);
                row.set(2, names.get(i));
                present.put(id, row);
            }
        });
        step("cancel", () -> {
            // Statement.cancel() from another thread sends a CancelRequest.
            long key = keys[2];
            long start = System.nanoTime();
            try (PreparedStatement ps = conn.prepareStatement("SELECT pg_sleep(5) FROM users WHERE id = ?")) {
                ps.setLong(1, key);
                Thread canceller = new Thread(() -> {
                    try {
                        Thread.sleep(300);
                        ps.cancel();
                    } catch (Exception e) {
                        throw new RuntimeException(e);
                    }
                });
                canceller.start();
                try {
                    expectSqlstate(ps::executeQuery, "57014");
                } finally {
                    canceller.join();
                }
            }
            check(System.nanoTime() - start < 4_000_000_000L, "the cancel did not stop the sleep");
            check(column(SELECT_NAME, key).equals(List.of(present.get(key).get(2))), "connection unusable after the cancel");
        });
        step("batch_insert", () -> {
            // addBatch/executeBatch: pgjdbc sends every row's Bind/Execute, then one Sync.
            Map<Long, List<Object>> batch = new LinkedHashMap<>();
            for (int i = 1; i <= 8; i++) batch.put(-pow7(i), makeRow(i, -pow7(i)));
            try (PreparedStatement ps = conn.prepareStatement(INSERT)) {
                for (List<Object> row : batch.values()) {
                    bind(conn, ps, row);
                    ps.addBatch();
                }
                int[] counts = ps.executeBatch();
                check(Arrays.stream(counts).allMatch(c -> c == 1), "row counts " + Arrays.toString(counts));
            }
            for (Map.Entry<Long, List<Object>> e : batch.entrySet()) {
                checkEq(read(e.getKey()), List.of(e.getValue()), "id " + e.getKey());
            }
        });
        conn.close();
        System.exit(failed ? 1 : 0);
    }
}
