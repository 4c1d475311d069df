# Sourced by the bench scripts: reading pgbench's output and a process's CPU time.

# The bench scripts' PID arguments may list several processes, separated by spaces (several
# PgBouncers, bench/pgbouncer.sh): their figures are added up.

# utime and stime (clock ticks) of a process.
cpu_ticks() { # PID
  local pid
  for pid in $1; do awk '{print $14, $15}' "/proc/$pid/stat"; done |
    awk '{u += $1; s += $2} END {print u + 0, s + 0}'
}
HZ=$(getconf CLK_TCK)

# Microseconds of user and system CPU per transaction between two cpu_ticks readings.
per_tx() { # BEFORE AFTER TRANSACTIONS
  awk -v b="$1" -v a="$2" -v t="$3" -v hz="$HZ" 'BEGIN {
    split(b, x, " "); split(a, y, " ");
    if (t > 0) printf "%.1f %.1f", (y[1] - x[1]) * 1e6 / hz / t, (y[2] - x[2]) * 1e6 / hz / t;
    else printf "- -" }'
}
# Transactions pgbench processed, and its TPS, from its output on stdin.
processed() { awk -F': ' '/actually processed/ {split($2, a, "/"); print a[1]; exit}'; }
tps() { awk '/^tps/ {printf "%.0f", $3; exit}'; }
# CPU clock ticks of the demo's PostgreSQL servers so far (postmasters started from $DIR,
# their live processes, and the ones that ended, counted in the postmasters' cutime).
postgres_ticks() {
  local ticks=0 postmaster pid
  for postmaster in $(pgrep -f "postgres -D $DIR/" || true); do
    ticks=$((ticks + $(awk '{print $14 + $15 + $16 + $17}' "/proc/$postmaster/stat" 2>/dev/null || echo 0)))
    for pid in $(pgrep -P "$postmaster" || true); do
      ticks=$((ticks + $(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)))
    done
  done
  echo "$ticks"
}
# Microseconds per transaction of a tick count.
ticks_per_tx() { awk -v t="$1" -v n="$2" -v hz="$HZ" 'BEGIN {if (n > 0) printf "%.1f", t * 1e6 / hz / n; else print "-"}'; }

# Context switches of every thread of a process so far: "all involuntary", the involuntary
# ones those where the scheduler took the CPU from a thread that still had work (the rest, a
# thread going to sleep for want of work).
ctx_switches() { # PID
  local pid
  for pid in $1; do cat /proc/"$pid"/task/*/status 2>/dev/null; done |
    awk '/ctxt_switches/ {n += $2} /^nonvoluntary_ctxt_switches/ {i += $2} END {print n + 0, i + 0}'
}
# Resident memory of a process, in kB.
rss_kb() { # PID
  local pid
  for pid in $1; do awk '/^VmRSS/ {print $2}' "/proc/$pid/status"; done | awk '{n += $1} END {print n + 0}'
}
# RSS growth per client, in kB, of process PID when N idle clients log in to PORT.
idle_kb_per_client() { # PID PORT N
  local before after fifo
  before=$(rss_kb "$1")
  fifo=$(mktemp -u)
  mkfifo "$fifo"
  python3 bench/idle_clients.py 127.0.0.1 "$2" app app app "$3" <"$fifo" >"$fifo.out" 2>&1 &
  local clients=$!
  exec {hold}>"$fifo"
  for _ in $(seq 1 240); do grep -q '^ready' "$fifo.out" && break; sleep 0.5; done
  if grep -q '^ready' "$fifo.out"; then
    sleep 1
    after=$(rss_kb "$1")
    awk -v b="$before" -v a="$after" -v n="$3" 'BEGIN {printf "%.1f", (a - b) / n}'
  else
    printf "failed (%s)" "$(tail -1 "$fifo.out" | cut -c1-80)"
    kill "$clients" 2>/dev/null || true
  fi
  exec {hold}>&-
  wait "$clients" 2>/dev/null || true
  rm -f "$fifo" "$fifo.out"
}

# System calls per second of process PID (every thread) over SECONDS, counted with perf's
# syscall tracepoint (package linux-perf; root or perf_event_paranoid <= -1) when SYSCALLS=1;
# "-" otherwise. Tracing slows every system call of the run it watches, so runs for the
# other columns leave it off.
syscall_rate() { # PID SECONDS
  if [ "${SYSCALLS:-0}" != 1 ] || ! command -v perf >/dev/null 2>&1; then
    echo "-"
    return
  fi
  local out count
  out=$(mktemp)
  perf stat -x, -e raw_syscalls:sys_enter -p "$1" -o "$out" -- sleep "$2" 2>/dev/null || true
  count=$(awk -F, '/raw_syscalls:sys_enter/ {print $1; exit}' "$out")
  rm -f "$out"
  case "$count" in '' | *[!0-9]*) echo "-" ;; *) awk -v c="$count" -v s="$2" 'BEGIN {print c / s}' ;; esac
}

# pgbench ($CLIENTS clients, $SECS seconds, the script $DIR/select.sql) through PORT while
# watching process PROC: "TPS user-us/tx sys-us/tx switches/tx syscalls/tx postgres-us/tx
# involuntary-switches/tx" (syscalls "-" unless SYSCALLS=1 and perf is there, and for runs
# under 4 s; postgres is the CPU of the demo's servers). libpq's PG* variables (PGSSLMODE,
# say) apply.
measure() { # PORT PROC MODE
  local before cs_before pg_before out after cs_after pg_after rate pgbench_pid
  out=$(mktemp)
  before=$(cpu_ticks "$2")
  cs_before=$(ctx_switches "$2")
  pg_before=$(postgres_ticks)
  pgbench -n -h 127.0.0.1 -p "$1" -U app -c "$CLIENTS" -j 2 -T "$SECS" -M "$3" \
    -f "$DIR/select.sql" app >"$out" 2>/dev/null &
  pgbench_pid=$!
  # System calls are counted in the steady middle of the run (no logins, no tail).
  rate="-"
  if [ "$SECS" -ge 4 ]; then
    sleep 1
    rate=$(syscall_rate "$2" $((SECS - 2)))
  fi
  wait "$pgbench_pid" || true
  after=$(cpu_ticks "$2")
  cs_after=$(ctx_switches "$2")
  sleep 0.5
  pg_after=$(postgres_ticks)
  local tx tps_now
  tx=$(processed <"$out")
  tps_now=$(tps <"$out")
  rm -f "$out"
  if [ -z "$tx" ] || [ "$tx" = 0 ]; then echo "fails - - - - - -"; return; fi
  echo "$tps_now $(per_tx "$before" "$after" "$tx")" \
    "$(awk -v a="${cs_after% *}" -v b="${cs_before% *}" -v t="$tx" 'BEGIN {printf "%.2f", (a - b) / t}')" \
    "$(awk -v r="$rate" -v t="$tps_now" 'BEGIN {if (r == "-" || t == 0) print "-"; else printf "%.2f", r / t}')" \
    "$(ticks_per_tx $((pg_after - pg_before)) "$tx")" \
    "$(awk -v a="${cs_after#* }" -v b="${cs_before#* }" -v t="$tx" 'BEGIN {printf "%.2f", (a - b) / t}')"
}

# pgbench straight against SHARDS shards at once, $CLIENTS clients split evenly among them
# (at least one each; one pgbench each, the first SHARDS ports from FIRST_PORT): "TPS postgres-us/tx", the
# ceiling for a proxy spreading the same load over the same servers.
measure_spread() { # FIRST_PORT SHARDS MODE
  local pg_before pg_after pids=() k total=0 tx=0 each=$((CLIENTS / $2))
  [ "$each" -ge 1 ] || each=1
  pg_before=$(postgres_ticks)
  for k in $(seq 0 $(($2 - 1))); do
    pgbench -n -h 127.0.0.1 -p $(($1 + k)) -U app -c "$each" -j 1 -T "$SECS" -M "$3" \
      -f "$DIR/select.sql" app >"$DIR/spread.$k" 2>/dev/null &
    pids+=($!)
  done
  wait "${pids[@]}" || true
  # Backends that just ended are counted once their postmaster has reaped them.
  sleep 0.5
  pg_after=$(postgres_ticks)
  for k in $(seq 0 $(($2 - 1))); do
    total=$(awk -v a="$total" -v b="$(tps <"$DIR/spread.$k")" 'BEGIN {print a + b}')
    tx=$((tx + $(processed <"$DIR/spread.$k")))
    rm -f "$DIR/spread.$k"
  done
  echo "$total $(ticks_per_tx $((pg_after - pg_before)) "$tx")"
}
