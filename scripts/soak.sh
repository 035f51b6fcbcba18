#!/bin/bash
# `make soak` (P4, not in CI): 256 prefork children, each app holding 2
# relayed connections, relay heartbeat 5 s, idle for 10 minutes; prints the
# missed-heartbeat closes (from the broker's log), connections lost and the
# relay threads' total CPU. About 15 minutes; SOAK_CHILDREN / SOAK_MINUTES
# change the size. Everything it starts is stopped at the end.
set -eo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
PYTHON=/usr/bin/python3
WORK="$REPO/tmp/soak-run-$$"
mkdir -p "$WORK"
chmod 755 "$REPO/tmp" "$WORK"

cleanup() {
    status=$?
    if ! $PYTHON tests/harness/procs.py leftovers "$WORK" --kill; then
        echo "soak.sh: processes were left running (killed above)" >&2
        [ "$status" -ne 0 ] || status=1
    fi
    [ "$status" -ne 0 ] || rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

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
