#!/bin/sh
# Install, with apt-get, whatever the build, the tests and the demo need and
# this machine lacks. Idempotent: does nothing when all is there.
set -e
PACKAGES="apache2 apache2-dev libclang-dev clang libapache2-mod-wsgi-py3 rabbitmq-server
python3-eventlet python3-kombu python3-oslo.messaging python3-pika python3-prometheus-client python3-pytest curl procps openssl
build-essential dpkg-dev debhelper fakeroot lintian
haproxy
dnsmasq-base"
# build-essential ... lintian: `make deb` and its test (tests/deb). dh-apache2
# (the debhelper add-on) is a virtual package that apache2-dev provides.
# python3-pika: a second real client in the refusal tests (tests/httpd).
# python3-prometheus-client: the status page test parses ?metrics with it.
# haproxy: the third path of `make bench` (P6, relay versus haproxy).
# dnsmasq-base: the DNS server of the resolver test (tests/httpd, issue 11 item 9);
# the binary only, without the dnsmasq package's system service.
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
