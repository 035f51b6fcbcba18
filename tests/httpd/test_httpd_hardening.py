"""Issue 11 in a real httpd child: what the relay does there beside the
interpreter."""

import os
import shutil
import socket
import subprocess
import threading

from harness.dns import Dnsmasq
from harness.httpd import wsgi_body

HARNESS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "harness")


class HeaderCatcher:
    """A "broker" on loopback that records the first 8 bytes of each
    connection and closes it."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.headers = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                got = b""
                try:
                    while len(got) < 8:
                        chunk = conn.recv(8 - len(got))
                        if not chunk:
                            break
                        got += chunk
                except OSError:
                    pass
                self.headers.append(got)

    def close(self):
        self.sock.close()


def test_broker_name_is_resolved_in_the_child(module_so, make_httpd):
    """A broker named by host name ("localhost") is resolved in the child
    by the relay's helper (getent, src/relay/resolve.rs) after the
    interpreter started, and dialled: the broker gets the protocol header."""
    catcher = HeaderCatcher()
    try:
        body = "AMQPHeartbeatBroker amqp://localhost:%d/\n" % catcher.port + wsgi_body()
        h = make_httpd(body, wsgi=True, servers=1).start()
        answer = h.get_json("/?handshake=1")
        assert catcher.headers == [b"AMQP\x00\x00\x09\x01"], (answer, h.error_log_tail())
        assert not h.log_lines(r"cannot resolve|cannot run"), h.error_log_tail()
    finally:
        catcher.close()


# Item 9: the relay thread never reads the process environment, which the
# app may be writing at the same moment (glibc's getenv takes no lock).

SEARCH = "amqphb.test"


def test_an_app_changing_the_resolver_environment_does_not_change_the_relays_lookups(
        module_so, make_httpd, make_rabbit, workdir):
    """The broker is named "rabbit", which only the search domain of the
    resolv.conf that httpd started with makes 127.0.0.1 (a private dnsmasq,
    in httpd's own mount namespace). Before its first AMQP connection, so
    before the relay's first lookup (glibc reads LOCALDOMAIN and RES_OPTIONS
    when a thread first resolves), the app sets both; with them, glibc asks
    for "rabbit" and rabbit.evil.test (127.0.0.2). The relay still resolves with the
    environment captured in child_init: the publish works and the DNS server
    saw queries for rabbit.amqphb.test only."""
    node = make_rabbit()
    records = {"rabbit." + SEARCH: "127.0.0.1", "rabbit.evil.test": "127.0.0.2"}
    with Dnsmasq(os.path.join(workdir, "dns"), records) as dns:
        body = "AMQPHeartbeatBroker amqp://guest:guest@rabbit:%d/\n" % node.amqp_port + wsgi_body()
        h = make_httpd(body, wsgi=True, servers=1, launcher=dns.private_resolver(search=SEARCH)).start()
        answer = h.get_json("/?setenv=LOCALDOMAIN=evil.test&setenv=RES_OPTIONS=ndots:0&publish=1")
        queries = dns.queries()
    assert answer["publish"] == "ok", (answer["publish"], queries, h.error_log_tail())
    assert queries and {name for _, name in queries} == {"rabbit." + SEARCH}, queries


def build_getenv_watch(directory, log, prefix="amqp"):
    """Compile tests/harness/getenv_watch.c into directory: an LD_PRELOAD
    library appending "THREAD NAME" to log for every getenv/secure_getenv
    call of a thread whose name starts with prefix. Returns its path."""
    so = os.path.join(directory, "getenv_watch.so")
    r = subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-Wall", "-Werror", '-DWATCH_LOG="%s"' % log,
                        '-DWATCH_PREFIX="%s"' % prefix, "-o", so, os.path.join(HARNESS, "getenv_watch.c"), "-ldl"],
                       capture_output=True, text=True)
    assert r.returncode == 0, "cc getenv_watch.c failed: %s" % r.stderr
    # The children (www-data) append to it.
    with open(log, "w"):
        pass
    os.chmod(log, 0o666)
    return so


def test_the_relay_threads_never_read_the_environment(module_so, make_httpd, make_rabbit, workdir):
    """Every getenv/secure_getenv call through the dynamic symbol is watched
    (LD_PRELOAD, inherited by the children) and those of the relay's threads
    ("amqp-heartbeat", its lookups' "amqp-heartbeat-dns") are recorded,
    while the app publishes through an amqps:// broker verified with the
    system roots (AMQPHeartbeatTLSCACertificateFile unset): rustls-native-certs
    takes them from SSL_CERT_FILE, the test CA. The app points SSL_CERT_FILE
    at an unrelated CA first, which roots loaded at dial would pick up. A
    native thread of the app's ("amqphb-probe") shows the watcher works."""
    node = make_rabbit(tls=True)
    log = os.path.join(workdir, "getenv.log")
    watch = build_getenv_watch(workdir, log)
    # Copies: httpd's environment must not name the node's dir, or the
    # node's leftover check at its stop would take httpd for its own.
    roots, other_ca = (shutil.copy(os.path.join(os.path.dirname(node.ca_path), f), workdir)
                       for f in ("ca.pem", "other-ca.pem"))
    body = "AMQPHeartbeatBroker amqps://guest:guest@localhost:%d/\n" % node.tls_port + wsgi_body()
    h = make_httpd(body, wsgi=True, servers=1, env={"LD_PRELOAD": watch, "SSL_CERT_FILE": roots}).start()
    answer = h.get_json("/?setenv=SSL_CERT_FILE=%s&probe=AMQPHB_PROBE&publish=1" % other_ca)
    with open(log) as f:
        lines = f.read().splitlines()
    assert "amqphb-probe AMQPHB_PROBE" in lines, ("the watcher saw nothing of the child's threads", lines)
    assert [ln for ln in lines if ln.startswith("amqp-heartbeat")] == [], lines
    assert answer["publish"] == "ok", (answer["publish"], h.error_log_tail())
