"""RabbitMQ restarted while the app is idle: the relay loses its upstream,
closes the client's connection, and the next request reconnects through the
same relay URL to the new broker and succeeds.

The control: a second vhost whose app sends while the broker is down gets
no notification through (so the success afterwards is the broker's and
the relay's, not something the relay fakes).
"""

import os
import time
import types

from harness.httpd import Httpd

import stack
from stack import RELAY_INTERVAL

OPS = "notify,cast"
# It stops and starts the shared broker: it runs alone, after the others.
PARALLEL = False


def _send(h, host, ops):
    t0 = time.time()
    status, body = stack.get_json(h, "/send?ops=%s" % ops, host, timeout=120)
    return {"status": status, "body": body, "start": t0, "end": time.time()}


def _by_name(rows, body):
    names = {"mod_wsgi:%d:%s" % (body["pid"], cid): c["role"] for cid, c in body["connections"].items()}
    return {names[r["connection_name"]]: r for r in rows if r["connection_name"] in names}


def run_scenario(rabbit, module_dir):
    s = types.SimpleNamespace()
    s.node = rabbit
    data = os.path.join(module_dir, "httpd", "data")
    conf = stack.write_oslo_conf(os.path.join(module_dir, "oslo-module.conf"), 0)
    body = (stack.directory_block() + stack.default_vhost()
            + stack.oslo_vhost("oslo-module", data, conf, False, broker_url=rabbit.url)
            + stack.oslo_vhost("oslo-probe", data, conf, False, broker_url=rabbit.url, notify_retry=1))
    h = Httpd(os.path.join(module_dir, "httpd"), body, servers=1, wsgi=True, amqp=True)
    s.httpd = h
    h.start()
    try:
        s.first = _send(h, "oslo-module.e2e", OPS)
        s.probe_first = _send(h, "oslo-probe.e2e", "notify")
        s.before = _by_name(stack.connections(rabbit), s.first["body"]) if s.first["status"] == 200 else {}
        time.sleep(3)
        s.stopped_at = time.time()
        s.stop_seconds = rabbit.stop()
        s.probe_down = _send(h, "oslo-probe.e2e", "notify")
        rabbit.start()
        s.started_at = time.time()
        time.sleep(2)
        s.second = _send(h, "oslo-module.e2e", OPS)
        rows = stack.connections(rabbit)
        s.after = _by_name(rows, s.second["body"]) if s.second["status"] == 200 else {}
        s.owners = stack.socket_owners(h.children())
        s.probe_up = _send(h, "oslo-probe.e2e", "notify")
    finally:
        s.stop_report = h.stop(strict=False)
    try:
        stack.measure("restart: broker down %.1fs (stop %.1fs, probe %.1fs, start %.1fs); next request %.2fs with %d reconnect event(s); "
                      "upstream peer ports %s -> %s" % (
                          s.started_at - s.stopped_at, s.stop_seconds,
                          s.probe_down["end"] - s.probe_down["start"], rabbit.start_seconds, s.second["end"] - s.second["start"],
                          s.second["body"].get("reconnects", -1),
                          {r: c["peer_port"] for r, c in s.before.items()},
                          {r: c["peer_port"] for r, c in s.after.items()}))
    except Exception as e:
        stack.measure("restart (no figures: %r)" % (e,))
    return s


def test_next_request_after_restart_reconnects_through_relay(scenario):
    s = scenario
    assert s.first["status"] == 200, s.first["body"]
    assert sorted(s.before) == ["notifier", "rpc"], s.before
    second = s.second
    assert second["status"] == 200, "request after the restart failed: %s\n%s" % (
        second["body"], s.httpd.error_log_tail())
    assert all(o["result"] == "ok" for o in second["body"]["ops"]), second["body"]["ops"]
    assert second["body"]["pid"] == s.first["body"]["pid"]
    # The client saw its old connection gone and opened a new one...
    kinds = [e["kind"] for e in second["body"]["events"]]
    assert "reconnected" in kinds or "unreachable" in kinds, second["body"]["events"]
    # ...to the same relay, which opened a new upstream from this child.
    assert second["body"]["transport_url"] == s.first["body"]["transport_url"]
    assert sorted(s.after) == ["notifier", "rpc"], s.after
    for role, row in s.after.items():
        assert row["timeout"] == RELAY_INTERVAL, row
        assert s.owners.get(row["peer_port"]) == second["body"]["pid"], (
            "upstream peer port %d is held by %s" % (row["peer_port"], s.owners.get(row["peer_port"])))


def test_control_send_while_broker_down_fails(scenario):
    s = scenario
    assert s.probe_first["status"] == 200, s.probe_first["body"]
    down = s.probe_down["body"]
    sent = s.probe_down["status"] == 200 and all(o["result"] == "ok" for o in down.get("ops", []))
    assert not sent, "a notification went out while the broker was down: %s" % down
    # ...and the same app works again once the broker is back.
    assert s.probe_up["status"] == 200, s.probe_up["body"]


def test_httpd_stopped_cleanly(scenario):
    assert not scenario.stop_report["killed"], scenario.stop_report
