"""The seed's bug and its fix, side by side: an eventlet app in mod_wsgi
embedded (prefork, one child) keeps AMQP connections across requests and
then sits idle for 10 x the direct heartbeat.

- Direct to the broker (the controls): the green heartbeat thread only runs
  during requests, so RabbitMQ closes every connection ("missed heartbeats
  from client") and the next request has to reconnect.
- Through the module: the app's client has heartbeat 0 and talks to the
  relay in its own child; the relay heartbeats upstream every 2 s. The same
  upstream connection (same peer port at the broker) lives through the idle
  time and the next request uses it without reconnecting.

Variants: oslo.messaging (notifier, RPC cast, RPC call whose reply
connection stays open) with a sub-interpreter and with
WSGIApplicationGroup %{GLOBAL}; kombu with a consumer and a producer
connection. All run in one httpd (one vhost each), so they idle at the same
time.
"""

import os
import time
import types

import pytest

from harness.httpd import Httpd

import stack
from stack import DIRECT_HEARTBEAT, RELAY_INTERVAL

IDLE = 10 * DIRECT_HEARTBEAT      # seconds without requests
POLL = 2.0
OSLO_OPS = "notify,cast,call"
OSLO_ROLES = ("notifier", "rpc", "reply")
KOMBU_ROLES = ("consumer", "producer")

# name, app, direct, WSGIApplicationGroup
VARIANTS = [
    ("oslo-direct", "oslo", True, None),
    ("oslo-module", "oslo", False, None),
    ("oslo-direct-global", "oslo", True, "%{GLOBAL}"),
    ("oslo-module-global", "oslo", False, "%{GLOBAL}"),
    ("kombu-direct", "kombu", True, None),
    ("kombu-module", "kombu", False, None),
]


def _send(h, name, app):
    path = "/send?ops=%s" % OSLO_OPS if app == "oslo" else "/send"
    t0 = time.time()
    status, body = stack.get_json(h, path, name + ".e2e", timeout=60)
    return {"status": status, "body": body, "start": t0, "end": time.time()}


def _names(app, answer):
    """role -> client-provided connection name the broker shows for the
    first connection of that role."""
    return {role: names[0] for role, names in _all_names(app, answer).items()}


def _all_names(app, answer):
    """role -> names of every connection of that role the app opened (a
    reconnecting oslo pool may open one under a new name)."""
    body = answer["body"]
    if app == "kombu":
        return {role: [n] for role, n in (body.get("connection_names") or {}).items()}
    out = {}
    for cid, c in (body.get("connections") or {}).items():
        out.setdefault(c["role"], []).append("mod_wsgi:%d:%s" % (body["pid"], cid))
    return out


def _final_ports(s, name, app, role):
    """Peer ports of the role's connections after the second request."""
    names = _all_names(app, s.second[name]).get(role, [])
    return sorted(s.final[n]["peer_port"] for n in names if n in s.final)


def run_scenario(rabbit, module_dir):
    s = types.SimpleNamespace()
    s.node = rabbit
    data = os.path.join(module_dir, "httpd", "data")
    confs = {
        True: stack.write_oslo_conf(os.path.join(module_dir, "oslo-direct.conf"), DIRECT_HEARTBEAT,
                                    transport_url=rabbit.url),
        False: stack.write_oslo_conf(os.path.join(module_dir, "oslo-module.conf"), 0),
    }
    body = stack.directory_block() + stack.default_vhost()
    for name, app, direct, group in VARIANTS:
        if app == "oslo":
            body += stack.oslo_vhost(name, data, confs[direct], direct, group, broker_url=rabbit.url)
        else:
            body += stack.kombu_vhost(name, data, direct, rabbit.url, group)
    h = Httpd(os.path.join(module_dir, "httpd"), body, servers=1, wsgi=True, amqp=True)
    s.httpd = h
    h.start()
    try:
        s.tl = stack.Timeline(rabbit)
        s.first, s.second = {}, {}
        for name, app, _, _ in VARIANTS:
            s.first[name] = _send(h, name, app)
            s.first[name]["poll"] = len(s.tl.polls)
            s.tl.poll()
        s.idle_from = max(a["end"] for a in s.first.values())
        stack.wait_until(s.idle_from + IDLE, POLL, s.tl.poll)
        s.idle_to = time.time()
        for name, app, _, _ in VARIANTS:
            s.second[name] = _send(h, name, app)
        s.tl.poll()
        s.final = {r["connection_name"]: r for r in stack.connections(rabbit) if r["connection_name"]}
        s.closes = stack.closes(rabbit)
        s.error_log = h.error_log()
    finally:
        s.stop_report = h.stop(strict=False)
    _summarize(s)
    return s


def _summarize(s):
    for name, app, _, _ in VARIANTS:
        try:
            first, second = s.first[name], s.second[name]
            parts = []
            for role, conn_name in sorted(_names(app, first).items()):
                port, _ = _port_at_first(s, name, conn_name)
                c = stack.close_in(s.closes, port)
                if c:
                    parts.append("%s dropped at +%.1fs (%s)" % (role, c["time"] - first["end"], c["reason"]))
                else:
                    again = _final_ports(s, name, app, role)
                    parts.append("%s alive %.0fs idle, peer port %d%s" % (
                        role, second["start"] - first["end"], port,
                        " unchanged" if again == [port] else " -> %s" % again))
            stack.measure("idle %-19s %s; 2nd request %.2fs, %s reconnect(s)" % (
                name, "; ".join(parts), second["end"] - second["start"], second["body"].get("reconnects")))
        except Exception as e:  # the tests say what is wrong
            stack.measure("idle %-19s (no figures: %r)" % (name, e))


def _check_first(s, name, app):
    a = s.first[name]
    assert a["status"] == 200, "first request to %s failed: %s\n%s" % (name, a["body"], s.httpd.error_log_tail())
    group = {n: g for n, _, _, g in VARIANTS}[name]
    assert a["body"]["application_group"] == ("" if group == "%{GLOBAL}" else "%s.e2e|" % name), a["body"]
    names = _names(app, a)
    want = OSLO_ROLES if app == "oslo" else KOMBU_ROLES
    assert sorted(names) == sorted(want), "%s opened connections for %s, expected %s" % (name, names, want)
    return names


def _port_at_first(s, name, conn_name):
    """Peer port of conn_name in the poll right after the first request."""
    t, ports = s.tl.polls[s.first[name]["poll"]]
    for port in ports:
        seen = s.tl.seen[port]
        if seen["names"].get(t) == conn_name:
            return port, seen
    raise AssertionError("right after the first request the broker showed no connection named %s (%s)"
                         % (conn_name, name))



CASES = [(n, app, role, direct) for n, app, direct, _ in VARIANTS
         for role in (OSLO_ROLES if app == "oslo" else KOMBU_ROLES)]


@pytest.mark.parametrize("name,app,role", [pytest.param(n, a, r, id="%s-%s" % (n, r))
                                           for n, a, r, d in CASES if d])
def test_direct_connection_dropped_while_idle(scenario, name, app, role):
    """Control: without the module the broker drops the idle connection."""
    s = scenario
    conn_name = _check_first(s, name, app)[role]
    port, _ = _port_at_first(s, name, conn_name)
    c = stack.close_in(s.closes, port)
    assert c is not None, "%s/%s (peer port %d) was not closed by the broker in %.0f s of idle time" % (
        name, role, port, s.idle_to - s.first[name]["end"])
    assert c["reason"] and "missed heartbeats from client" in c["reason"], c
    assert s.first[name]["end"] < c["time"] < s.idle_to, c
    # The next request had to open a new connection.
    assert s.second[name]["status"] == 200, s.second[name]["body"]
    again = _final_ports(s, name, app, role)
    assert again and port not in again, (
        "after the idle time %s/%s should be on a new connection: peer ports %s, was %d" % (
            name, role, again, port))
    assert s.second[name]["body"].get("reconnects", 0) > 0, s.second[name]["body"]


@pytest.mark.parametrize("name,app,role", [pytest.param(n, a, r, id="%s-%s" % (n, r))
                                           for n, a, r, d in CASES if not d])
def test_module_connection_survives_idle(scenario, name, app, role):
    s = scenario
    first = s.first[name]
    conn_name = _check_first(s, name, app)[role]
    body = first["body"]
    if app == "oslo":
        assert body["transport_url_from"] == "environment", (
            "oslo.config did not take transport_url from OS_DEFAULT__TRANSPORT_URL: %s" % body)
        assert body["heartbeat_timeout_threshold"] == 0
        assert ":%d/" % s.node.amqp_port not in body["transport_url"], body["transport_url"]
    else:
        assert body["url_from"] == "os.environ[AMQP_HEARTBEAT_URL]" and body["heartbeat"] == 0, body

    port, seen = _port_at_first(s, name, conn_name)
    assert seen["row"]["timeout"] == RELAY_INTERVAL, (
        "%s/%s: the broker negotiated heartbeat %s, the relay asks for %d" % (
            name, role, seen["row"]["timeout"], RELAY_INTERVAL))
    idle_for = s.second[name]["start"] - first["end"]
    assert idle_for >= IDLE
    assert s.tl.present_throughout(port, first["end"], s.second[name]["end"]), (
        "%s/%s (peer port %d) went away at +%.1f s: %s" % (
            name, role, port, (s.tl.gone_after(port) or 0) - first["end"], stack.close_in(s.closes, port)))
    assert stack.close_in(s.closes, port) is None, stack.close_in(s.closes, port)

    second = s.second[name]
    assert second["status"] == 200, second["body"]
    again = _final_ports(s, name, app, role)
    assert again == [port], "after the idle time %s/%s is on peer port(s) %s, was %d" % (
        name, role, again, port)
    assert second["body"].get("reconnects") == 0, second["body"]
    if app == "oslo":
        assert not [e for e in second["body"]["events"] if e["kind"] in ("connected", "reconnected")], \
            second["body"]["events"]


def test_httpd_stopped_cleanly(scenario):
    assert not scenario.stop_report["killed"], scenario.stop_report
