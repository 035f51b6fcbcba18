#!/bin/sh
# Install, with apt-get, whatever the build, the tests and the demo need and
# this machine lacks. Idempotent: does nothing when all is there.
set -e
PACKAGES="apache2 apache2-dev libclang-dev clang libapache2-mod-wsgi-py3 rabbitmq-server
python3-eventlet python3-kombu python3-oslo.messaging python3-pytest curl procps openssl
haproxy"
# haproxy: the third path of `make bench` (P6, relay versus haproxy).
missing=""
for p in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "install-deps: installing:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # policy-rc.d keeps the Debian packages from starting system services:
    # the tests start their own private instances.
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    apt-get install -y -q --no-install-recommends $missing
    rm -f /usr/sbin/policy-rc.d
fi
command -v cargo >/dev/null || { echo "install-deps: cargo not found (a Rust toolchain is needed)" >&2; exit 1; }
