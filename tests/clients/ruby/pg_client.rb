# ruby-pg through shardline: ruby pg_client.rb URL {exec_params|prepared}
#
# The common scenario of docs/compatibility.md, step for step as tests/clients/python/scenario.py.
# exec_params: every statement with parameters through PG::Connection#exec_params (an unnamed
# statement). prepared: each such statement prepared once per connection with #prepare and run
# with #exec_prepared, so the proxy must re-prepare it on whichever backend a transaction gets.
# Values go both ways through ruby-pg's basic type maps, which load pg_type on connect.
# Report lines on stdout: `version`, `ok <step>`, `fail <step>: <why>`, read by run.sh.

require 'bigdecimal'
require 'pg'

URL, MODE = ARGV
$stdout.sync = true

ROWS = 16
KEYS = (1..ROWS).map { |i| 7**i }
NULL_ID = 7**17
BATCH_KEYS = (1..8).map { |i| -(7**i) }
TX_ID = 100
ROLLBACK_ID = 101
# Inserted by the cross-shard transactions, committed and rolled back: four consecutive keys
# land on several of the 4 shards.
CROSS_IDS = (900_001..900_004).to_a
CROSS_ROLLBACK_IDS = (900_011..900_014).to_a
COLUMNS = %w[id n4 name uid amount ts flag blob doc tags nums].freeze
DDL = [
  'DROP TABLE IF EXISTS orders',
  'DROP TABLE IF EXISTS users',
  # bigserial: generated_keys leaves the key out; the other steps name it.
  'CREATE TABLE users (id bigserial PRIMARY KEY, n4 int4, name text, uid uuid, amount numeric,' \
  ' ts timestamptz, flag bool, blob bytea, doc jsonb, tags text[], nums int4[])',
  'CREATE TABLE orders (user_id int8 NOT NULL, n int4 NOT NULL, PRIMARY KEY (user_id, n))'
].freeze
INSERT = 'INSERT INTO users (id, n4, name, uid, amount, ts, flag, blob, doc, tags, nums)' \
         ' VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)'
SELECT_ROW = "SELECT #{COLUMNS.join(', ')} FROM users WHERE id = $1"
SELECT_NAME = 'SELECT name FROM users WHERE id = $1'
LOOKUP = 'SELECT id FROM users WHERE name = $1' # no key: runs on every shard
COUNT_RANGE = 'SELECT count(*) FROM users WHERE id BETWEEN $1 AND $2' # hashed keys: every shard
# session_state: inserted by the transaction that opens with a savepoint, the first rolled back
# to it, the second committed; a timestamp read through the type map, and as the server's text.
SAVEPOINT_IDS = [910_001, 910_002].freeze
TS_NATIVE = "SELECT '2000-01-10 12:00'::timestamp"
TS_TEXT = "SELECT '2000-01-10 12:00'::timestamp::text"
TS_VALUE = Time.new(2000, 1, 10, 12, 0, 0) # the type map reads timestamp without time zone as local time
TS_TEXT_BY_STYLE = { 'ISO' => '2000-01-10 12:00:00', 'German' => '10.01.2000 12:00:00' }.freeze
GERMAN = 'German, YMD'
# generated_keys: rows that leave the key to its default, so the proxy generates it.
GENERATED_NAMES = (1..7).map { |i| "generated #{i}: ünï ✓" }.freeze
INSERT_GENERATED = 'INSERT INTO users (name) VALUES ($1) RETURNING id'
INSERT_GENERATED_3 = 'INSERT INTO users (name) VALUES ($1), ($2), ($3) RETURNING id'

# Row i of the scenario, as the type maps return it (numeric as its exact text).
def make_row(i, key = 7**i)
  [key, -1000 * i, "user #{i}: it's \"ünï\" \\ ✓", format('00000000-0000-4000-8000-%012d', i),
   "#{i}9876543210.012340", Time.utc(2024, 2, 29, 12, i, Rational(56_789_012, 1_000_000)), i.even?,
   [0, i, 255, 39, 92].pack('C*'), { 'i' => i, 's' => 'ünï', 'tags' => %w[x y], 'nested' => { 'ok' => true, 'none' => nil } },
   ['a', 'b,c', 'q"d', nil], [i, -i, 0]]
end

# Binds a row: bytea needs ruby-pg's BinaryData wrapper (a plain String is sent as text).
def bind(row)
  row.each_with_index.map { |v, c| COLUMNS[c] == 'blob' && v ? PG::BasicTypeMapForQueries::BinaryData.new(v) : v }
end

# Raised inside Connection#transaction to roll it back (ruby-pg issues the ROLLBACK).
class Rollback < StandardError; end

# Raised by a step for the part ruby-pg cannot express; reported as `skip <step>: <why>`.
class Skip < StandardError; end

def null_row(key)
  [key] + [nil] * (COLUMNS.size - 1)
end

# A connection whose values go both ways through ruby-pg's basic type maps.
def connect(url)
  conn = PG.connect(url)
  registry = PG::BasicTypeRegistry.new.register_default_types
  conn.type_map_for_queries = PG::BasicTypeMapForQueries.new(conn, registry: registry)
  results = PG::BasicTypeMapForResults.new(conn, registry: registry)
  # numeric as its text, so that its scale is compared too (BigDecimal drops trailing zeros).
  results.add_coder(PG::TextDecoder::String.new(oid: 1700, name: 'numeric'))
  results.add_coder(PG::TextDecoder::String.new(oid: 2950, name: 'uuid')) # no uuid decoder in 1.4
  conn.type_map_for_results = results
  conn
end

class Scenario
  def initialize(conn, mode)
    @conn = conn
    @mode = mode
    @prepared = {}
    @failed = false
  end

  attr_reader :failed

  # Runs a statement with parameters the way this mode does.
  def run(sql, params = [])
    return @conn.exec(sql) if params.empty?
    return @conn.exec_params(sql, params) if @mode == 'exec_params'

    name = (@prepared[sql] ||= "s#{@prepared.size}".tap { |n| @conn.prepare(n, sql) })
    @conn.exec_prepared(name, params)
  end

  def close
    @conn.close
  end

  def query(sql, params = [])
    run(sql, params).values
  end

  def step(name)
    note = yield
    puts "ok #{name}#{note.is_a?(String) ? " (#{note})" : ''}"
  rescue Skip => e
    puts "skip #{name}: #{e.message}"
  rescue StandardError => e
    @failed = true
    puts "fail #{name}: #{"#{e.class}: #{e.message}".split.join(' ')[0, 300]}"
  end

  def check(cond, what)
    raise what unless cond
  end

  def expect_sqlstate(want)
    yield
    raise "expected SQLSTATE #{want}, but the statement succeeded"
  rescue PG::Error => e
    got = e.result&.error_field(PG::PG_DIAG_SQLSTATE)
    check(got == want, "expected SQLSTATE #{want}, got #{got}: #{e.message}")
  end

  def read(key)
    query(SELECT_ROW, [key])
  end

  def names(key)
    query(SELECT_NAME, [key]).map(&:first)
  end

  def count_range(ids)
    query(COUNT_RANGE, [ids.first, ids.last])
  end

  def run_all
    rows = KEYS.each_with_index.to_h { |k, i| [k, make_row(i + 1)] }
    rows[NULL_ID] = null_row(NULL_ID)
    present = rows.dup # what the table should hold: the oracle of the later steps

    step('ddl') { DDL.each { |sql| @conn.exec(sql) } }
    step('insert') do
      rows.each { |key, row| check(run(INSERT, bind(row)).cmd_tuples == 1, "id #{key}: row count") }
    end
    step('read_back') do
      rows.each { |key, row| check(read(key) == [row], "id #{key}: read #{read(key).inspect}, inserted #{row.inspect}") }
    end
    step('update') do
      key = KEYS[0]
      check(run('UPDATE users SET name = $1, n4 = n4 + 1 WHERE id = $2', ['renamed ✓', key]).cmd_tuples == 1, 'update count')
      present[key] = present[key].dup.tap { |r| r[2] = 'renamed ✓'; r[1] += 1 }
      check(read(key) == [present[key]], "after update: #{read(key).inspect}")
    end
    step('delete') do
      key = KEYS[1]
      check(run('DELETE FROM users WHERE id = $1', [key]).cmd_tuples == 1, 'delete count')
      present.delete(key)
      check(read(key).empty?, 'row still there after delete')
    end
    step('tx_commit') do
      @conn.transaction do
        run('INSERT INTO users (id, name) VALUES ($1, $2)', [TX_ID, 'in tx'])
        run('INSERT INTO orders (user_id, n) VALUES ($1, 1), ($1, 2)', [TX_ID])
        run('UPDATE users SET n4 = 7 WHERE id = $1', [TX_ID])
      end
      present[TX_ID] = null_row(TX_ID).tap { |r| r[1] = 7; r[2] = 'in tx' }
      check(read(TX_ID) == [present[TX_ID]], "committed row: #{read(TX_ID).inspect}")
      orders = query('SELECT count(*) FROM orders WHERE user_id = $1', [TX_ID])
      check(orders == [[2]], "orders after commit: #{orders.inspect}")
    end
    step('tx_rollback') do
      begin
        @conn.transaction do
          run('INSERT INTO users (id, name) VALUES ($1, $2)', [ROLLBACK_ID, 'rolled back'])
          run('INSERT INTO orders (user_id, n) VALUES ($1, 1)', [ROLLBACK_ID])
          check(names(ROLLBACK_ID).size == 1, 'row invisible inside its transaction')
          raise Rollback
        end
      rescue Rollback
        nil
      end
      check(read(ROLLBACK_ID).empty?, 'rolled-back row is there')
      orders = query('SELECT count(*) FROM orders WHERE user_id = $1', [ROLLBACK_ID])
      check(orders == [[0]], "orders after rollback: #{orders.inspect}")
    end
    step('tx_cross_shard') do
      # One transaction holds a backend on each shard its keys need, reads its own writes from
      # all of them and commits them together.
      insert = 'INSERT INTO users (id, name) VALUES ($1, $2)'
      @conn.transaction do
        CROSS_IDS.each { |key| run(insert, [key, 'cross shard']) }
        run('UPDATE users SET n4 = 7 WHERE id = $1', [CROSS_IDS.last])
        got = count_range(CROSS_IDS)
        check(got == [[CROSS_IDS.size]], "count inside the transaction: #{got.inspect}")
      end
      CROSS_IDS.each do |key|
        present[key] = null_row(key).tap { |r| r[1] = 7 if key == CROSS_IDS.last; r[2] = 'cross shard' }
        check(read(key) == [present[key]], "id #{key} after commit: #{read(key).inspect}")
      end

      # A savepoint after the first insert: the shards that join later get it replayed, and
      # ROLLBACK TO SAVEPOINT undoes the two inserts after it on whichever shards they ran.
      # ruby-pg has no savepoint API: the statements themselves.
      begin
        @conn.transaction do
          run(insert, [CROSS_ROLLBACK_IDS.first, 'rolled back'])
          @conn.exec('SAVEPOINT cross_shard')
          CROSS_ROLLBACK_IDS[1..-2].each { |key| run(insert, [key, 'rolled back']) }
          @conn.exec('ROLLBACK TO SAVEPOINT cross_shard')
          run(insert, [CROSS_ROLLBACK_IDS.last, 'rolled back'])
          got = count_range(CROSS_ROLLBACK_IDS)
          check(got == [[2]], "count after ROLLBACK TO SAVEPOINT: #{got.inspect}")
          raise Rollback
        end
      rescue Rollback
        nil
      end
      got = count_range(CROSS_ROLLBACK_IDS)
      check(got == [[0]], "count after ROLLBACK: #{got.inspect}")
    end
    step('order_limit') do
      got = query('SELECT id FROM users ORDER BY id DESC LIMIT 5').map(&:first)
      check(got == present.keys.sort.reverse.first(5), "got #{got.inspect}")
    end
    step('count') do
      got = query('SELECT count(*) FROM users')
      check(got == [[present.size]], "count #{got.inspect}, expected #{present.size}")
    end
    step('prepared_reuse') do
      # The same statement in 24 transactions, so the proxy's backend changes in between.
      keys = present.keys.sort
      24.times do |n|
        key = keys[n % keys.size]
        got = @conn.transaction { names(key) }
        check(got == [present[key][2]], "id #{key}: #{got.inspect}")
      end
      @mode == 'prepared' ? 'exec_prepared' : 'exec_params: unnamed statements'
    end
    step('second_connection') do
      # A statement over every shard (a lookup without the key) runs twice on this
      # connection, then on a second one, as an application's connection pool does, with the
      # count and a read by key: the proxy shares server-side prepared statements between
      # clients.
      other = Scenario.new(connect(URL), @mode)
      begin
        [self, self, other].each do |s|
          got = s.query(LOOKUP, [present[KEYS[2]][2]])
          check(got == [[KEYS[2]]], "lookup by name: #{got.inspect}")
        end
        got = other.query('SELECT count(*) FROM users')
        check(got == [[present.size]], "count #{got.inspect}, expected #{present.size}")
        check(other.read(KEYS[2]) == [present[KEYS[2]]], "id #{KEYS[2]}: read #{other.read(KEYS[2]).inspect}")
      ensure
        other.close
      end
    end
    step('unique_violation') do
      key = KEYS[2]
      expect_sqlstate('23505') { run('INSERT INTO users (id) VALUES ($1)', [key]) }
      check(names(key) == [present[key][2]], 'connection unusable after the error')
    end
    step('set_timeout') do
      # current_setting() from a row runs on that row's shard: the SET must follow the client.
      keys = KEYS.select { |k| present.key?(k) }.first(6)
      show = "SELECT current_setting('statement_timeout') FROM users WHERE id = $1"
      @conn.exec("SET statement_timeout = '150ms'")
      begin
        keys.each { |k| check(query(show, [k]) == [['150ms']], "id #{k}: statement_timeout is #{query(show, [k]).inspect}") }
        keys.first(3).each do |k|
          start = Process.clock_gettime(Process::CLOCK_MONOTONIC)
          expect_sqlstate('57014') { run('SELECT pg_sleep(3) FROM users WHERE id = $1', [k]) }
          check(Process.clock_gettime(Process::CLOCK_MONOTONIC) - start < 2.5, 'the timeout did not stop the sleep')
        end
      ensure
        @conn.exec('RESET statement_timeout')
      end
      keys.each { |k| check(query(show, [k]) == [['0']], "id #{k}: after RESET statement_timeout is #{query(show, [k]).inspect}") }
    end
    step('session_state') do
      # Session state that the server reports or holds, which a pooling proxy must keep
      # straight: three cases psycopg's own test suite hit. Parts ruby-pg cannot express are
      # reported as a skip once the rest has passed.
      skipped = []
      before = @conn.exec('SHOW DateStyle').getvalue(0, 0)
      datestyle_is = lambda do |value, where|
        # DateStyle matters to drivers that read dates as text and parse them by it; ruby-pg's
        # timestamp decoder reads the ISO form only, so under German the timestamp is checked as
        # the server's text. The timestamp is read first: libpq must have been told (its
        # parameter_status) before the rows arrive.
        told = @conn.parameter_status('DateStyle')
        check(told == value, "#{where}: libpq was told DateStyle #{told.inspect}, not #{value.inspect}")
        if value == before
          got = query(TS_NATIVE)
          check(got == [[TS_VALUE]], "#{where}: read #{got.inspect} under DateStyle #{value}")
        end
        want = TS_TEXT_BY_STYLE.fetch(value.split(',').first)
        got = query(TS_TEXT)
        check(got == [[want]], "#{where}: the text of the timestamp is #{got.inspect}, expected #{want}")
        got = query('SHOW DateStyle')
        check(got == [[value]], "#{where}: SHOW DateStyle is #{got.inspect}, expected #{value}")
      end

      # 1. A setting changed inside a transaction, then rolled back; then outside one and reset.
      begin
        @conn.transaction do
          @conn.exec("SET DateStyle = '#{GERMAN}'")
          datestyle_is.call(GERMAN, 'after SET inside a transaction')
          raise Rollback
        end
      rescue Rollback
        nil
      end
      datestyle_is.call(before, 'after ROLLBACK')
      @conn.exec("SET DateStyle = '#{GERMAN}'")
      begin
        datestyle_is.call(GERMAN, 'after SET outside a transaction')
      ensure
        @conn.exec('RESET DateStyle')
      end
      datestyle_is.call(before, 'after RESET')
      skipped << 'German dates read as text only: the type map decodes ISO dates only'

      # 2. A savepoint as the very first statement of a transaction (ruby-pg has no savepoint
      # API), then rolled back to.
      rolled_back, kept = SAVEPOINT_IDS
      insert = 'INSERT INTO users (id, name) VALUES ($1, $2)'
      @conn.transaction do
        @conn.exec('SAVEPOINT session_state')
        run(insert, [rolled_back, 'after a savepoint'])
        @conn.exec('ROLLBACK TO SAVEPOINT session_state')
        run(insert, [kept, 'after a savepoint'])
      end
      present[kept] = null_row(kept).tap { |r| r[2] = 'after a savepoint' }
      check(read(rolled_back).empty?, "id #{rolled_back}, rolled back to the savepoint, is there")
      check(read(kept) == [present[kept]], "id #{kept} after commit: #{read(kept).inspect}")
      got = count_range(SAVEPOINT_IDS)
      check(got == [[1]], "count after commit: #{got.inspect}")

      # 3. DISCARD ALL outside a transaction: it resets the settings (told to the driver with
      # ParameterStatus) and drops the prepared statements; a prepared statement runs again.
      key = KEYS[2]
      want = [[present[key][2]]]
      @conn.prepare('session_state', SELECT_NAME)
      check(@conn.exec_prepared('session_state', [key]).values == want, 'before DISCARD ALL')
      @conn.exec("SET DateStyle = '#{GERMAN}'")
      begin
        @conn.exec('DISCARD ALL')
        # libpq keeps no list of prepared statements: the old name is gone from the server,
        # which says so (26000) as PostgreSQL does; the application forgets its statements and
        # prepares again, under the same names.
        expect_sqlstate('26000') { @conn.exec_prepared('session_state', [key]) }
      ensure
        @prepared.clear
      end
      datestyle_is.call(before, 'after DISCARD ALL')
      @conn.prepare('session_state', SELECT_NAME)
      check(@conn.exec_prepared('session_state', [key]).values == want, 'after DISCARD ALL, prepared again')
      check(query(SELECT_NAME, [key]) == want, "a statement after DISCARD ALL (#{@mode})")
      raise Skip, "#{skipped.join('; ')} (the rest passed)"
    end
    step('generated_keys') do
      # users.id is bigserial and these inserts leave it out: the proxy generates each key,
      # routes the row by it and returns it; a read by the returned key (routed to that key's
      # shard) must find the row. One insert of three rows (RETURNING in VALUES order), two in
      # this mode, two through #prepare and #exec_prepared.
      got = [] # [id, name] of every row inserted
      returned = lambda do |res, inserted|
        ids = res.values.map(&:first)
        check(ids.size == inserted.size, "#{inserted.size} rows inserted, returned #{ids.inspect}")
        got.concat(ids.zip(inserted))
      end
      returned.call(run(INSERT_GENERATED_3, GENERATED_NAMES[0, 3]), GENERATED_NAMES[0, 3])
      GENERATED_NAMES[3, 2].each { |name| returned.call(run(INSERT_GENERATED, [name]), [name]) }
      @conn.prepare('generated_keys', INSERT_GENERATED)
      GENERATED_NAMES[5, 2].each { |name| returned.call(@conn.exec_prepared('generated_keys', [name]), [name]) }
      ids = got.map(&:first)
      check(ids.all?(Integer), "ids returned: #{ids.inspect}")
      check(ids.uniq.size == ids.size, "repeated ids returned: #{ids.inspect}")
      got.each do |id, name|
        check(names(id) == [name], "id #{id}: read #{names(id).inspect}, inserted #{name.inspect} (ids #{ids.inspect})")
        present[id] = null_row(id).tap { |r| r[2] = name }
      end
    end
    step('cancel') do
      # PG::Connection#cancel from another thread sends a CancelRequest.
      key = KEYS[2]
      start = Process.clock_gettime(Process::CLOCK_MONOTONIC)
      canceller = Thread.new { sleep 0.3; @conn.cancel }
      expect_sqlstate('57014') { run('SELECT pg_sleep(5) FROM users WHERE id = $1', [key]) }
      canceller.join
      check(Process.clock_gettime(Process::CLOCK_MONOTONIC) - start < 4, 'the cancel did not stop the sleep')
      check(names(key) == [present[key][2]], 'connection unusable after the cancel')
    end
    step('batch_insert') do
      # libpq's pipeline mode: every row's statement is sent, then one Sync.
      batch = BATCH_KEYS.each_with_index.to_h { |k, i| [k, make_row(i + 1, k)] }
      @conn.enter_pipeline_mode
      begin
        batch.each_value { |row| @conn.send_query_params(INSERT, bind(row)) }
        @conn.pipeline_sync
        counts = []
        error = nil
        loop do # every result up to the Sync, before the first error is raised
          res = @conn.get_result
          next if res.nil? # the end of one statement's results
          break if res.result_status == PG::PGRES_PIPELINE_SYNC

          error ||= res.error_message unless res.error_message.empty?
          counts << res.cmd_tuples
        end
        raise error if error

        check(counts == [1] * batch.size, "row counts #{counts.inspect}")
      ensure
        @conn.exit_pipeline_mode
      end
      batch.each { |key, row| check(read(key) == [row], "id #{key}: read #{read(key).inspect}") }
      'pipeline mode'
    end
  end
end

puts "version #{PG::VERSION} (libpq #{PG.library_version})"
conn = nil
begin
  conn = connect(URL)
  puts 'ok connect'
rescue StandardError => e
  puts "fail connect: #{e.class}: #{e.message.split.join(' ')}"
  exit 1
end
scenario = Scenario.new(conn, MODE)
scenario.run_all
conn.close
exit(scenario.failed ? 1 : 0)
