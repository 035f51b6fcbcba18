#!/bin/bash
# Every test: lint, build, Rust unit + relay integration tests, then the
# Python tests against real httpd / RabbitMQ (tests/httpd, tests/e2e) and
# the Debian package's (tests/deb).
# `make test` runs this after scripts/install-deps.sh.
#
# Work dirs go under $AMQPHB_TMP (exported for the Rust tests too); on exit,
# anything still running from there (apache2, beam, epmd) is killed, and
# nothing else.
set -e
. "$(dirname "$0")/workdir.sh"
cd "$REPO"
use_workdir test-run
export AMQPHB_TMP="$WORK"

step() { echo; echo "=== $*"; }

step "cargo fmt --check"
cargo fmt --check
# Everything is built once, in the release profile: clippy shares its
# build scripts (bindgen) with the module build, and the tests reuse the
# module build's dependencies. Three profiles would triple the build time.
step "cargo clippy"
cargo clippy --release --all-targets -- -D warnings
# And with the relay tests' panic triggers (src/relay/test_hooks.rs).
cargo clippy --release --all-targets --features test-hooks -- -D warnings
step "make build"
make build
step "cargo test"
# std::env::temp_dir() follows TMPDIR: the Rust tests' work dirs (and their
# RabbitMQ nodes) land under $AMQPHB_TMP too, where the cleanup looks.
mkdir -p "$AMQPHB_TMP/cargo"
# test-hooks: the relay tests make a pump and an acceptor panic on cue
# (tests/relay/panics.rs). The module httpd loads (make build, above) is
# built without it.
TMPDIR="$AMQPHB_TMP/cargo" cargo test --release --features test-hooks
suites=(tests/httpd)
[ -d tests/e2e ] && suites+=(tests/e2e)
# The Debian package (make deb, lintian, dpkg -i/-r/-P on this machine);
# `make deb` there is incremental (7 s when nothing changed).
suites+=(tests/deb)
step "pytest ${suites[*]}"
$PYTHON -m pytest -v -p no:cacheprovider "${suites[@]}"
