#!/bin/bash
# `make soak` (P4, not in CI): 256 prefork children, each app holding 2
# relayed connections, relay heartbeat 5 s, idle for 10 minutes; prints the
# missed-heartbeat closes (from the broker's log), connections lost and the
# relay threads' total CPU. About 15 minutes; SOAK_CHILDREN / SOAK_MINUTES
# change the size. Everything it starts is stopped at the end.
set -eo pipefail
. "$(dirname "$0")/workdir.sh"
cd "$REPO"
use_workdir soak-run

# Each child holds the Python app, kombu and 2 sockets; the broker 512
# connections. Raise the fd limit for the parent and the broker.
ulimit -n 65536 2>/dev/null || true
# The figures are kept in tmp/last-soak.txt: `make bench` shows them in its
# table (the soak is too long to run with every bench). The tee writes
# outside $WORK: the bench kills every process that names $WORK when done.
FIGURES="$REPO/tmp/soak-figures-$$.txt"
$PYTHON benches/httpd_bench.py soak --workdir "$WORK" \
    --children "${SOAK_CHILDREN:-256}" --minutes "${SOAK_MINUTES:-10}" --interval 5 |
    tee "$FIGURES"
{
    echo "# make soak, $(date -u '+%Y-%m-%d %H:%M UTC'), ${SOAK_CHILDREN:-256} children, ${SOAK_MINUTES:-10} min"
    grep '^bench: ' "$FIGURES"
} >"$REPO/tmp/last-soak.txt"
rm -f "$FIGURES"
