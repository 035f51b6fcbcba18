"""Issue 2: one relay thread per httpd child, none in the parent, and the
relay URL published to the app (process environment and WSGI environ).

Thread counts are compared with the same httpd configuration without the
module (a baseline measured in the same test), so they hold whatever
mod_wsgi or the MPM do with threads of their own.

mpm_event runs mod_wsgi with WSGIApplicationGroup %{GLOBAL}: with Debian 12's
mod_wsgi 4.9.4 and Python 3.11, a threaded MPM child that ran a
sub-interpreter hangs in Py_EndInterpreter (threading._shutdown) on exit
until httpd SIGKILLs it, with or without this module.
"""

import re
import socket
import time

import pytest

from harness import ports, procs
from harness.httpd import wsgi_body

URL_RX = re.compile(r"^amqp://127\.0\.0\.1:(\d+)/$")
SLOW = "/?sleep=0.3"
RELAY_THREAD = "amqp-heartbeat"  # the relay thread's name (src/relay_thread.rs)
CASES = [
    pytest.param("prefork", None, id="prefork"),
    pytest.param("prefork", "%{GLOBAL}", id="prefork-global"),
    pytest.param("event", "%{GLOBAL}", id="event-global"),
]


def broker_line():
    # Nothing listens there: the relay connects upstream only when a client
    # speaks AMQP to it, and these tests only check the child's side.
    return "AMQPHeartbeatBroker amqp://guest:guest@127.0.0.1:%d/\n" % ports.free_port()


def baseline(make_httpd, mpm, group):
    """Parent and per-child thread counts of the same httpd without the
    module, after every child ran the app."""
    h = make_httpd(wsgi_body(group=group), name="base", mpm=mpm, wsgi=True, amqp=False).start()
    answers = h.hit_all_children(SLOW)
    for a in answers.values():
        assert a["env"]["AMQP_HEARTBEAT_URL"] == {"os.environ": None, "getenv": None, "wsgi": None}
    counts = set(h.stable_threads_of(answers).values())
    assert len(counts) == 1, "baseline children differ in threads: %s" % counts
    parent = h.stable_threads(h.parent_pid)
    h.stop()
    return parent, counts.pop()


def relay_ports(pid, httpd):
    """Listening ports of a child other than httpd's own Listen."""
    return [p for p in procs.listening_ports(pid) if p != httpd.port]


@pytest.mark.parametrize("mpm,group", CASES)
def test_one_relay_thread_per_child_and_url_in_env(module_so, make_httpd, mpm, group):
    base_parent, base_child = baseline(make_httpd, mpm, group)

    h = make_httpd(broker_line() + wsgi_body(group=group), mpm=mpm, wsgi=True).start()
    answers = h.hit_all_children(SLOW + "&connect=1")
    assert sorted(answers) == h.children()

    assert h.stable_threads(h.parent_pid) == base_parent, "the parent got a thread"
    assert relay_ports(h.parent_pid, h) == [], "the parent listens on a relay port"

    threads = h.stable_threads_of(answers)
    seen_ports = set()
    for pid, a in answers.items():
        assert threads[pid] == base_child + 1, "child %d: %d threads, baseline %d" % (pid, threads[pid], base_child)
        assert procs.thread_names(pid).count(RELAY_THREAD) == 1, procs.thread_names(pid)
        env = a["env"]["AMQP_HEARTBEAT_URL"]
        url = env["os.environ"]
        assert url and URL_RX.match(url), "child %d: os.environ has %r" % (pid, url)
        assert env["getenv"] == url and env["wsgi"] == url, env
        port = int(URL_RX.match(url).group(1))
        assert relay_ports(pid, h) == [port], "child %d listens on %s, URL says %d" % (
            pid, relay_ports(pid, h), port)
        assert env["connect"] == "ok", "connecting from the child: %s" % env["connect"]
        # Listening (a closed port refuses): this test process is another
        # uid, which the relay resets at once, maybe before connect returns.
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5):
                pass
        except ConnectionResetError:
            pass
        seen_ports.add(port)
        assert a["home"] is None, "the caller's HOME leaked into the child"
        assert h.log_lines(r"\[amqp_heartbeat:", pid=pid), "child %d logged nothing\n%s" % (
            pid, h.error_log_tail())
    assert len(seen_ports) == len(answers), "children share a relay port: %s" % answers
    assert not h.log_lines(r"\[amqp_heartbeat:(error|crit|alert|emerg)\]"), h.error_log_tail()


def test_env_names_schemes_and_vhost_without_userinfo(module_so, make_httpd):
    body = (
        "AMQPHeartbeatBroker amqp://nova:s%%40cret@127.0.0.1:%d/nova%%2Fprod amqp://127.0.0.1:%d/nova%%2Fprod\n"
        "AMQPHeartbeatEnv OS_DEFAULT__TRANSPORT_URL rabbit\n"
        "AMQPHeartbeatEnv AMQP_URL\n" % (ports.free_port(), ports.free_port())
    ) + wsgi_body()
    h = make_httpd(body, wsgi=True).start()
    names = "&name=OS_DEFAULT__TRANSPORT_URL&name=AMQP_URL&name=AMQP_HEARTBEAT_URL"
    for pid, a in h.hit_all_children(SLOW + names).items():
        rabbit = a["env"]["OS_DEFAULT__TRANSPORT_URL"]["os.environ"]
        # The vhost is copied, the userinfo never (the relay logs in).
        m = re.match(r"^rabbit://127\.0\.0\.1:(\d+)/nova%2Fprod$", rabbit or "")
        assert m, "child %d: %r" % (pid, rabbit)
        assert a["env"]["AMQP_URL"]["os.environ"] == "amqp://127.0.0.1:%s/nova%%2Fprod" % m.group(1)
        for n in ("OS_DEFAULT__TRANSPORT_URL", "AMQP_URL"):
            assert a["env"][n]["wsgi"] == a["env"][n]["os.environ"] == a["env"][n]["getenv"], a["env"][n]
        # A server that names its variables does not publish the default.
        assert a["env"]["AMQP_HEARTBEAT_URL"] == {"os.environ": None, "getenv": None, "wsgi": None}
    assert "s%40cret" not in h.error_log() and "s@cret" not in h.error_log(), "password in the error log"


@pytest.mark.parametrize("mpm,group", CASES)
def test_no_broker_no_thread_no_env(module_so, make_httpd, mpm, group):
    base_parent, base_child = baseline(make_httpd, mpm, group)
    body = "AMQPHeartbeatInterval 5\nAMQPHeartbeatEnv SOME_URL\n" + wsgi_body(group=group)
    h = make_httpd(body, mpm=mpm, wsgi=True).start()
    answers = h.hit_all_children(SLOW + "&name=SOME_URL&name=AMQP_HEARTBEAT_URL")
    assert h.stable_threads(h.parent_pid) == base_parent
    threads = h.stable_threads_of(answers)
    for pid, a in answers.items():
        assert threads[pid] == base_child, "child %d has a thread without a broker" % pid
        assert RELAY_THREAD not in procs.thread_names(pid)
        assert relay_ports(pid, h) == []
        for n in ("SOME_URL", "AMQP_HEARTBEAT_URL"):
            assert a["env"][n] == {"os.environ": None, "getenv": None, "wsgi": None}, a["env"]


def test_vhost_without_broker_gets_no_request_env(module_so, make_httpd):
    """One child, two name-based vhosts: the relay's vhost sees its URL in
    the WSGI environ, the other vhost does not (main server: no broker)."""
    body = """
<VirtualHost 127.0.0.1:@PORT@>
    ServerName relay.test
    %s
    %s
</VirtualHost>
<VirtualHost 127.0.0.1:@PORT@>
    ServerName plain.test
    %s
</VirtualHost>
""" % (broker_line(), wsgi_body(), wsgi_body())
    h = make_httpd(body, servers=1, wsgi=True).start()
    relay = h.get_json("/", host="relay.test")
    plain = h.get_json("/", host="plain.test")
    assert relay["pid"] == plain["pid"]
    url = relay["env"]["AMQP_HEARTBEAT_URL"]["wsgi"]
    assert url and URL_RX.match(url), relay
    assert relay["env"]["AMQP_HEARTBEAT_URL"]["os.environ"] == url
    assert plain["env"]["AMQP_HEARTBEAT_URL"]["wsgi"] is None, plain
    assert relay_ports(relay["pid"], h) == [int(URL_RX.match(url).group(1))]


def test_many_vhosts_on_one_relay_log_one_notice_per_child(module_so, make_httpd):
    """Vhosts that inherit the main server's broker share its relay: each
    child says where that relay listens once at notice, and each vhost's
    own line goes to debug (thousands of vhosts would otherwise cost the
    error log a line each at every child start)."""
    vhosts = "".join(
        "<VirtualHost 127.0.0.1:@PORT@>\n    ServerName v%d.test\n</VirtualHost>\n" % i for i in range(20))
    h = make_httpd(broker_line() + vhosts, servers=2).start()
    children = h.children()
    assert len(children) == 2, children
    for pid in children:
        lines = []
        for _ in range(50):  # the child's start-up lines are being written
            lines = h.log_lines(r"relay listening on", pid=pid)
            if len(lines) >= 21:
                break
            time.sleep(0.1)
        notices = [ln for ln in lines if "[amqp_heartbeat:notice]" in ln]
        assert len(notices) == 1, "child %d:\n%s" % (pid, "\n".join(lines))
        assert len(lines) == 21, "child %d: %d lines" % (pid, len(lines))
