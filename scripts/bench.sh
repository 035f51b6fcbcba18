#!/bin/bash
# `make bench` (after deps and build): every benchmark of issue 5 except
# the soak (`make soak`), relay versus direct, then one table of all
# figures, with P4 from the last `make soak` when there is one. Takes
# about 16 minutes on 2 cores.
#
#   P1/P2  cargo bench --bench relay: throughput and latency, in-process
#          relay versus direct and versus haproxy, against one private
#          RabbitMQ node
#   P6     the same run: the relay against haproxy (throughput, added
#          latency, CPU seconds per GiB forwarded)
#   P7     the same binary: app connect-to-Start under a local flood of
#          refused connects from user nobody (needs root), relay CPU
#   P3     benches/httpd_bench.py p3: cost per prefork child, and the idle
#          wakeups of one child with 1, 2 and 8 connections (the sweep)
#   P5     benches/httpd_bench.py p5: oslo heartbeat_in_pthread versus relay
#
# BENCH_QUICK=1 runs short versions (a smoke test of the benchmarks, not
# figures to record). BENCH_ONLY="p1 p3 p5" picks parts. Work dirs go under
# tmp/bench-run-PID; on exit anything still running from there is killed.
set -eo pipefail
. "$(dirname "$0")/workdir.sh"
cd "$REPO"
use_workdir bench-run
OUT="$WORK/figures.txt"
ONLY=${BENCH_ONLY:-p1 p3 p5}

before_cleanup() {
    [ -f "$WORK/rabbit/node.json" ] && $PYTHON tests/harness/rabbit.py stop "$WORK/rabbit" >/dev/null 2>&1
}

quick=()
window_p3=()
window_p5=()
if [ -n "$BENCH_QUICK" ]; then
    quick=(--quick --rounds 1)
    window_p3=(--window 15 --idle0 5)
    window_p5=(--window 20)
fi
has() { [[ " $ONLY " == *" $1 "* ]]; }
touch "$OUT"

if has p1; then
    echo "=== P1/P2/P6: relay versus direct and haproxy (cargo bench --bench relay)"
    port=$($PYTHON tests/harness/rabbit.py start "$WORK/rabbit" |
        $PYTHON -c 'import json,sys; print(json.loads(sys.stdin.read().strip().splitlines()[-1])["amqp_port"])')
    cargo bench --bench relay -- --broker-port "$port" "${quick[@]}" | tee -a "$OUT"
    $PYTHON tests/harness/rabbit.py stop "$WORK/rabbit" >/dev/null
    rm -f "$WORK/rabbit/node.json"
fi
if has p3; then
    echo "=== P3: cost per prefork child (benches/httpd_bench.py p3)"
    $PYTHON benches/httpd_bench.py p3 --workdir "$WORK/p3" "${window_p3[@]}" | tee -a "$OUT"
fi
if has p5; then
    echo "=== P5: oslo heartbeat_in_pthread versus the relay (benches/httpd_bench.py p5)"
    $PYTHON benches/httpd_bench.py p5 --workdir "$WORK/p5" "${window_p5[@]}" | tee -a "$OUT"
fi

# P4 is `make soak` (15 minutes, not part of this run): its last figures.
SOAK="$REPO/tmp/last-soak.txt"
if [ -f "$SOAK" ]; then
    echo "=== P4 from the last \`make soak\`: $(head -1 "$SOAK" | sed 's/^# //')"
    grep '^bench: P4' "$SOAK" | tee -a "$OUT"
else
    echo "=== P4: no soak figures yet (tmp/last-soak.txt); run \`make soak\` (about 15 minutes)"
fi

echo
echo "=== all figures (relay versus direct and haproxy; for P3 'direct' is the child without"
echo "    the module, for P5 it is oslo.messaging's heartbeat_in_pthread thread; P6 ratios are"
echo "    relay/haproxy)"
grep '^bench: P' "$OUT" | sed 's/^bench: //' | awk '
BEGIN { printf "%-28s %14s %14s %14s %9s %-22s %s\n", "figure", "relay", "direct", "haproxy", "ratio", "unit", "goal (met)" }
{
    name = $1; delete f
    for (i = 2; i <= NF; i++) { split($i, kv, "="); k = kv[1]; sub(/^[^=]*=/, "", $i); f[k] = $i }
    d = ("direct" in f) ? f["direct"] : "-"; h = ("haproxy" in f) ? f["haproxy"] : "-"
    printf "%-28s %14s %14s %14s %9s %-22s %s (%s)\n", name, f["relay"], d, h, f["ratio"], f["unit"], f["goal"], f["met"]
}'
if grep -q '^bench: P.* met=NO' "$OUT"; then
    echo "bench.sh: some goals are not met (see above); figures are recorded, not asserted"
fi
