"""Several prefork children (StartServers 3), each running the oslo app:

- each child's app finds its own relay (its own port in its own env) and
  gets its own upstream connection, whose socket is held by that child;
- SIGKILL of one child closes its upstreams only;
- `apache2 -k graceful` makes the relay close its upstreams the AMQP way:
  the broker logs a client-initiated close, not "client unexpectedly closed
  TCP connection". The control: the direct app's connections in the same
  children, which Python leaves to the kernel when the child exits.
"""

import os
import re
import time
import types

from harness import procs
from harness.httpd import Httpd

import stack
from stack import RELAY_INTERVAL

SERVERS = 3
PATH = "/send?ops=notify&hold=1.5"
URL_RX = re.compile(r"^rabbit://127\.0\.0\.1:(\d+)/$")


def _upstreams(node, answers):
    """{pid: [peer ports of the connections its app opened]}."""
    rows = stack.connections(node)
    out = {}
    for pid, a in answers.items():
        names = {"mod_wsgi:%d:%s" % (pid, cid) for cid in a["connections"]}
        out[pid] = sorted(r["peer_port"] for r in rows if r["connection_name"] in names)
    return out, rows


def run_scenario(rabbit, module_dir):
    s = types.SimpleNamespace()
    s.node = rabbit
    data = os.path.join(module_dir, "httpd", "data")
    # The direct control has no heartbeat at all: only how its connections
    # end matters here.
    direct_conf = stack.write_oslo_conf(os.path.join(module_dir, "oslo-direct.conf"), 0, transport_url=rabbit.url)
    module_conf = stack.write_oslo_conf(os.path.join(module_dir, "oslo-module.conf"), 0)
    body = (stack.directory_block() + stack.default_vhost()
            + stack.oslo_vhost("oslo-direct", data, direct_conf, True)
            + stack.oslo_vhost("oslo-module", data, module_conf, False, broker_url=rabbit.url))
    h = Httpd(os.path.join(module_dir, "httpd"), body, servers=SERVERS, wsgi=True, amqp=True)
    s.httpd = h
    h.start()
    try:
        s.pids = h.children()
        s.module = stack.hit_all(h, PATH, "oslo-module.e2e", SERVERS)
        s.direct = stack.hit_all(h, PATH, "oslo-direct.e2e", SERVERS)
        s.module_up, rows = _upstreams(rabbit, s.module)
        s.direct_up, _ = _upstreams(rabbit, s.direct)
        s.rows = {r["peer_port"]: r for r in rows}
        s.owners = stack.socket_owners(s.pids)

        # SIGKILL one child.
        s.victim = sorted(s.module)[0]
        s.survivors = [p for p in sorted(s.module) if p != s.victim]
        s.kill = stack.KillWatch(rabbit, s.victim, s.module_up[s.victim] + s.direct_up[s.victim])

        # graceful: the old generation exits, the relays close upstream.
        old = [p for p in h.children()]
        s.graceful_at = time.time()
        h.graceful()
        s.still_alive = procs.wait_gone(old, 30)
        s.gone_at = time.time()
        deadline = time.time() + 10
        wanted = {p for pid in s.survivors for p in s.module_up[pid] + s.direct_up[pid]}
        while time.time() < deadline:
            if wanted <= {c["peer_port"] for c in stack.closes(rabbit)}:
                break
            time.sleep(0.5)
        s.closes = stack.closes(rabbit)
        s.error_log = h.error_log()
    finally:
        s.stop_report = h.stop(strict=False)
    _summarize(s)
    return s



def _summarize(s):
    try:
        kill_gone = [c["time"] - s.kill.killed_at for c in s.closes if c["peer_port"] in s.module_up[s.victim]]
        stack.measure("children: %d relays, upstream peer ports %s; SIGKILL: upstream gone after %s; "
                      "graceful: old children gone in %.1fs" % (
                          len(s.module), {p: s.module_up[p] for p in sorted(s.module_up)},
                          "%.1fs" % kill_gone[0] if kill_gone else "never",
                          s.gone_at - s.graceful_at))
    except Exception as e:
        stack.measure("children (no figures: %r)" % (e,))


def test_each_child_has_its_own_relay_and_upstream(scenario):
    s = scenario
    assert sorted(s.module) == sorted(s.pids), "children %s, answers from %s" % (s.pids, sorted(s.module))
    relay_ports = {}
    for pid, a in s.module.items():
        env = a["env"]["OS_DEFAULT__TRANSPORT_URL"]
        m = URL_RX.match(env["os.environ"] or "")
        assert m, "child %d: OS_DEFAULT__TRANSPORT_URL is %r" % (pid, env)
        assert env["request"] == env["os.environ"] == env["libc"], env
        assert a["transport_url_from"] == "environment", a
        relay_ports[pid] = int(m.group(1))
    assert len(set(relay_ports.values())) == SERVERS, "children share a relay port: %s" % relay_ports
    assert s.node.amqp_port not in relay_ports.values()

    all_ports = []
    for pid, ports in s.module_up.items():
        assert len(ports) == 1, "child %d: its notifier has %s upstream connections" % (pid, ports)
        port = ports[0]
        all_ports.append(port)
        assert s.rows[port]["timeout"] == RELAY_INTERVAL, s.rows[port]
        # The upstream socket is the child's own (the relay thread's).
        assert s.owners.get(port) == pid, "peer port %d is held by %s, not child %d" % (
            port, s.owners.get(port), pid)
    assert len(set(all_ports)) == SERVERS


def test_sigkill_closes_only_that_childs_upstreams(scenario):
    s = scenario
    s.kill.check({p for pid in s.survivors for p in s.module_up[pid] + s.direct_up[pid]})


def test_graceful_closes_upstreams_cleanly(scenario):
    s = scenario
    assert not s.still_alive, "old children still running after graceful: %s" % s.still_alive
    for pid in s.survivors:
        for port in s.module_up[pid]:
            c = stack.close_in(s.closes, port)
            assert c is not None, "child %d's upstream (peer port %d) was not closed by graceful" % (pid, port)
            assert c["reason"] is None, "child %d's upstream was not closed cleanly: %s" % (pid, c)


def test_control_direct_client_closes_uncleanly_on_graceful(scenario):
    """Control: the same check fails for a client that leaves its socket to
    the kernel when the child exits."""
    s = scenario
    for pid in s.survivors:
        for port in s.direct_up[pid]:
            c = stack.close_in(s.closes, port)
            assert c is not None and c["reason"] == "client unexpectedly closed TCP connection", c


def test_httpd_stopped_cleanly(scenario):
    assert not scenario.stop_report["killed"], scenario.stop_report
