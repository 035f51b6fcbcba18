"""A request that blocks for 10 x the direct heartbeat, in the middle of
using its AMQP connections (oslo.messaging notifier and RPC cast), under
eventlet in mod_wsgi embedded:

- sleep:  time.sleep, which eventlet made green: the hub runs meanwhile;
- native: the unpatched time.sleep (a C call that blocks the hub, like a
          driver that eventlet cannot patch);
- cpu:    a Python loop holding the GIL (niced, to leave the machine to the
          broker and the relay).

Through the module the upstream connections live through all three (the
relay thread needs neither the GIL nor the hub) and the ops after the block
do not reconnect. The direct controls: with the hub blocked (native, cpu)
RabbitMQ drops the connections; with a green sleep the green heartbeat
thread gets to run and the direct connection lives too (eventlet's own
case, recorded for comparison).

All six requests run at once, one per httpd child.
"""

import os
import time
import types
from concurrent.futures import ThreadPoolExecutor

import pytest

from harness.httpd import Httpd

import stack
from stack import DIRECT_HEARTBEAT, RELAY_INTERVAL

BLOCK = 10 * DIRECT_HEARTBEAT
POLL = 2.0
OPS = "notify,cast"
ROLES = ("notifier", "rpc")
MODES = ("sleep", "native", "cpu")
REQUESTS = [(mode, direct) for mode in MODES for direct in (False, True)]


def _host(direct):
    return "oslo-direct.e2e" if direct else "oslo-module.e2e"


def run_scenario(rabbit, module_dir):
    s = types.SimpleNamespace()
    data = os.path.join(module_dir, "httpd", "data")
    direct_conf = stack.write_oslo_conf(os.path.join(module_dir, "oslo-direct.conf"), DIRECT_HEARTBEAT,
                                        transport_url=rabbit.url)
    module_conf = stack.write_oslo_conf(os.path.join(module_dir, "oslo-module.conf"), 0)
    body = (stack.directory_block() + stack.default_vhost()
            + stack.oslo_vhost("oslo-direct", data, direct_conf, True)
            + stack.oslo_vhost("oslo-module", data, module_conf, False, broker_url=rabbit.url))
    h = Httpd(os.path.join(module_dir, "httpd"), body, servers=len(REQUESTS), wsgi=True, amqp=True)
    s.httpd = h
    h.start()
    try:
        s.tl = stack.Timeline(rabbit)
        s.start = time.time()

        def one(req):
            mode, direct = req
            t0 = time.time()
            status, answer = stack.get_json(h, "/block?mode=%s&secs=%d&ops=%s" % (mode, BLOCK, OPS),
                                            _host(direct), timeout=BLOCK + 120)
            return {"status": status, "body": answer, "start": t0, "end": time.time()}

        with ThreadPoolExecutor(len(REQUESTS)) as pool:
            futures = {req: pool.submit(one, req) for req in REQUESTS}
            while not all(f.done() for f in futures.values()):
                s.tl.poll()
                time.sleep(POLL)
            s.answers = {req: f.result() for req, f in futures.items()}
        s.tl.poll()
        s.closes = stack.closes(rabbit)
    finally:
        s.stop_report = h.stop(strict=False)
    _summarize(s)
    pids = [a["body"].get("pid") for a in s.answers.values()]
    assert len(set(pids)) == len(REQUESTS), "the blocking requests did not get a child each: %s" % pids
    return s


def _summarize(s):
    for req in REQUESTS:
        label = "%s %s" % (req[0], "direct" if req[1] else "module")
        try:
            a = s.answers[req]
            parts = []
            for role, (name, port) in sorted(_ports(s, a).items()):
                c = stack.close_in(s.closes, port)
                parts.append("%s %s" % (role, "dropped %.1fs into the block (%s)" % (
                    c["time"] - a["body"]["blocked"]["started"], c["reason"]) if c else "alive, peer port %d" % port))
            n = len([e for e in a["body"]["events_after"] if e["kind"] in ("reconnected", "unreachable")])
            stack.measure("block %ds %-13s %s; after the block: %d reconnect event(s)" % (
                BLOCK, label, "; ".join(parts), n))
        except Exception as e:
            stack.measure("block %-13s (no figures: %r)" % (label, e))


def _ports(s, answer):
    """role -> peer port of the connection the ops before the block
    opened (the first port the broker showed under its name)."""
    body = answer["body"]
    out = {}
    for cid, c in (body.get("connections") or {}).items():
        name = "mod_wsgi:%d:%s" % (body["pid"], cid)
        firsts = sorted((seen["first"], port) for port, seen in s.tl.seen.items()
                        if name in seen["names"].values())
        assert firsts, "the broker never showed %s (%s)" % (name, c["role"])
        out.setdefault(c["role"], (name, firsts[0][1]))
    assert sorted(out) == sorted(ROLES), out
    return out



def _check_answer(s, req):
    a = s.answers[req]
    assert a["status"] == 200, "%s: %s" % (req, a["body"])
    assert a["body"]["blocked"]["mode"] == req[0]
    assert a["body"]["blocked"]["seconds"] >= BLOCK - 0.5, a["body"]["blocked"]
    return a


@pytest.mark.parametrize("mode", MODES)
def test_module_upstream_survives_blocked_request(scenario, mode):
    s = scenario
    a = _check_answer(s, (mode, False))
    for role, (name, port) in _ports(s, a).items():
        row = s.tl.seen[port]["row"]
        assert row["timeout"] == RELAY_INTERVAL, row
        seen = s.tl.seen[port]
        blocked = a["body"]["blocked"]
        assert s.tl.present_throughout(port, seen["first"], a["end"]), (
            "%s/%s (peer port %d) went away %.1f s into the block: %s" % (
                mode, role, port, (s.tl.gone_after(port) or 0) - blocked["started"], stack.close_in(s.closes, port)))
        assert seen["first"] <= blocked["started"] + BLOCK / 4 and seen["last"] >= blocked["started"] + BLOCK, (
            "the broker was not watched through the block")
        assert stack.close_in(s.closes, port) is None, stack.close_in(s.closes, port)
    after = a["body"]["events_after"]
    assert not [e for e in after if e["kind"] in ("connected", "reconnected", "unreachable")], after


@pytest.mark.parametrize("mode", ["native", "cpu"])
def test_direct_control_dropped_when_hub_blocked(scenario, mode):
    """Control: with the hub blocked nothing heartbeats a direct
    connection; the broker drops it and the ops after the block reconnect."""
    s = scenario
    a = _check_answer(s, (mode, True))
    for role, (name, port) in _ports(s, a).items():
        c = stack.close_in(s.closes, port)
        assert c is not None, "%s/%s (peer port %d) was not dropped during a %d s block" % (
            mode, role, port, BLOCK)
        assert c["reason"] and "missed heartbeats from client" in c["reason"], c
        blocked = a["body"]["blocked"]
        assert blocked["started"] < c["time"] < blocked["started"] + blocked["seconds"], c
    after = a["body"]["events_after"]
    assert [e for e in after if e["kind"] in ("reconnected", "unreachable")], after


def test_direct_green_sleep_lets_green_heartbeat_run(scenario):
    """For comparison: a green sleep runs the hub, so the direct client's
    green heartbeat thread keeps its connections (the case eventlet covers,
    unlike an idle child or a blocked hub)."""
    s = scenario
    a = _check_answer(s, ("sleep", True))
    for role, (name, port) in _ports(s, a).items():
        # After the request the hub stops again and the broker drops the
        # idle connection (test_idle's case); only the request counts here.
        c = stack.close_in(s.closes, port)
        assert c is None or c["time"] > a["end"], "%s (peer port %d) was dropped during the request: %s" % (
            role, port, c)


def test_httpd_stopped_cleanly(scenario):
    assert not scenario.stop_report["killed"], scenario.stop_report
