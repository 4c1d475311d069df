# Sourced by the bench scripts: reading pgbench's output and a process's CPU time.

# utime and stime (clock ticks) of a process.
cpu_ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }
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
