# Sourced by scripts/*.sh: one work-dir convention and one cleanup trap.
#
#   . "$(dirname "$0")/workdir.sh"
#   use_workdir NAME    # WORK=$REPO/tmp/NAME-$$, created, mode 755 (httpd
#                       # children, as www-data, reach their dirs)
#
# On exit, `before_cleanup` runs if the script defines one; then anything
# still running that names $WORK (apache2, beam, epmd) is killed, which
# fails the run; $WORK is removed when the run succeeded.
PYTHON=/usr/bin/python3
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

use_workdir() {
    WORK="$REPO/tmp/$1-$$"
    mkdir -p "$WORK"
    chmod 755 "$REPO/tmp" "$WORK"
    trap _workdir_cleanup EXIT
    trap 'exit 130' INT TERM
}

_workdir_cleanup() {
    local status=$?
    if declare -F before_cleanup >/dev/null; then
        before_cleanup || true
    fi
    if ! $PYTHON "$REPO/tests/harness/procs.py" leftovers "$WORK" --kill; then
        echo "$(basename "$0"): processes were left running (killed above)" >&2
        [ "$status" -ne 0 ] || status=1
    fi
    [ "$status" -ne 0 ] || rm -rf "$WORK"
    exit "$status"
}
