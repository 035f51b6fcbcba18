"""Issue 12: the status page (SetHandler amqp-heartbeat-status) and
mod_status's lines, with one prefork httpd (3 children, relay heartbeat
1 s) and one RabbitMQ node for the whole module; the tests run in file
order and share them.

The broker URL carries a user and password of their own, so "no credential
on any page" is checked against strings that cannot appear by chance.
"""

import json
import os
import re
import signal
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness import procs
from harness.httpd import Httpd, wsgi_body
from harness.rabbit import RabbitNode

USER = "status-user"
PASSWORD = "pw-Zq8vN3xR"
STATUS = "/relay-status"
TMP = os.environ.get("AMQPHB_TMP") or os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "tmp")


def body(broker_url):
    return (wsgi_body(app="publisher.wsgi", mount="/app")
            + "AMQPHeartbeatBroker %s\nAMQPHeartbeatInterval 1\n" % broker_url
            + "<Location %s>\n    SetHandler amqp-heartbeat-status\n    Require ip 127.0.0.1\n</Location>\n" % STATUS
            + "<Location /server-status>\n    SetHandler server-status\n    Require ip 127.0.0.1\n</Location>\n")


@pytest.fixture(scope="module")
def stack(module_so):
    root = os.path.join(TMP, "status-%d" % os.getpid())
    os.makedirs(root, exist_ok=True)
    os.chmod(root, 0o755)
    rabbit = RabbitNode(os.path.join(root, "rabbit"))
    httpd = None
    try:
        rabbit.start()
        rabbit.ctl("add_user", USER, PASSWORD)
        rabbit.ctl("set_permissions", "-p", "/", USER, ".*", ".*", ".*")
        url = "amqp://%s:%s@127.0.0.1:%d/" % (USER, PASSWORD, rabbit.amqp_port)
        httpd = Httpd(os.path.join(root, "httpd"), body(url), servers=3, wsgi=True,
                      modules=["status", "authz_host"]).start()
        yield rabbit, httpd
    finally:
        if httpd is not None:
            httpd.stop(strict=False)
        rabbit.stop()
        left = procs.kill_leftovers(root)
        assert not left, "left running: %s" % left


def status(httpd, fmt="json"):
    code, text = httpd.get(STATUS + "?" + fmt)
    assert code == 200, (code, text[:500])
    return json.loads(text) if fmt == "json" else text


def wait_for(what, check, timeout=15.0):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail("timed out waiting for %s" % what)
        time.sleep(0.2)


def publish(httpd, n):
    answer = httpd.get_json("/app?n=%d" % n)
    assert "error" not in answer, answer
    return answer


def connection_of(page, pid, port):
    for p in page["processes"]:
        for c in p["connections"]:
            if p["pid"] == pid and c["client_port"] == port:
                return p, c
    return None


def test_every_child_is_listed_with_its_listener(stack):
    _, httpd = stack
    page = status(httpd)
    assert {p["pid"] for p in page["processes"]} == set(httpd.children())
    for p in page["processes"]:
        assert p["running"] and p["kind"] == "httpd_child"
        assert p["listeners"][0]["server"] == "127.0.0.1" and p["listeners"][0]["port"] > 0


def test_counters_follow_published_traffic(stack):
    _, httpd = stack
    first = publish(httpd, 50)
    page = status(httpd)
    proc, conn = connection_of(page, first["pid"], first["port"])
    assert proc["counters"]["connections"] >= 1
    # 50 x (method, header, body frames), the body 1000 bytes each.
    assert conn["frames_to_broker"] >= 150 and conn["bytes_to_broker"] >= 50_000, conn
    assert conn["heartbeat_seconds"] == 1 and conn["frame_max"] > 0 and conn["upstream_port"] > 0
    before = conn["bytes_to_broker"]
    again = wait_for("a second publish on the same child", lambda: (lambda a: a if a["pid"] == first["pid"] else None)(publish(httpd, 50)))
    _, conn = connection_of(status(httpd), again["pid"], again["port"])
    assert conn["bytes_to_broker"] >= before + 50_000, (before, conn)
    # Heartbeats both ways once idle for a few intervals.
    # And the broker's last frame is recent (its heartbeats come every
    # half interval; in quiet mode the relay reads them about once an
    # interval, so one reading can be a little over a second old).
    wait_for("heartbeats both ways and a broker frame under 2 s old",
             lambda: (lambda pc: pc if pc and pc[1]["heartbeats_to_broker"] > 0
                      and pc[1]["heartbeats_from_broker"] > 0
                      and pc[1]["last_broker_frame_age_seconds"] < 2.0 else None)(
                 connection_of(status(httpd), first["pid"], first["port"])))


def test_metrics_parse_with_the_prometheus_parser(stack):
    _, httpd = stack
    publish(httpd, 1)
    families = {f.name: f for f in text_string_to_metric_families(status(httpd, "metrics"))}
    # What a scrape config with `params: {metrics: ["1"]}` asks for (a `?`
    # in metrics_path would be escaped).
    code, text = httpd.get(STATUS + "?metrics=1")
    assert code == 200 and text.startswith("# HELP amqp_heartbeat_"), (code, text[:200])
    # The parser drops _total from counter family names.
    for name in ("amqp_heartbeat_connections", "amqp_heartbeat_closes", "amqp_heartbeat_broker_dead",
                 "amqp_heartbeat_connection_bytes", "amqp_heartbeat_healthy", "amqp_heartbeat_relay_up"):
        assert name in families, sorted(families)
    assert families["amqp_heartbeat_connections"].type == "counter"
    pids = {s.labels["pid"] for s in families["amqp_heartbeat_relay_up"].samples}
    assert pids == {str(p) for p in httpd.children()}
    sent = [s for s in families["amqp_heartbeat_connection_bytes"].samples
            if s.labels["direction"] == "to_broker"]
    assert sent and all(s.labels["broker"].startswith("127.0.0.1:") and s.labels["server"] for s in sent)
    assert any(s.value >= 1000 for s in sent)


def test_server_status_auto_carries_the_summary(stack):
    _, httpd = stack
    publish(httpd, 1)
    code, text = httpd.get("/server-status?auto")
    assert code == 200
    lines = dict(ln.split(": ", 1) for ln in text.splitlines() if ln.startswith("AMQPHeartbeat"))
    assert int(lines["AMQPHeartbeatRelays"]) == len(httpd.children())
    assert int(lines["AMQPHeartbeatConnections"]) >= 1
    assert int(lines["AMQPHeartbeatConnectionsTotal"]) >= 1
    assert lines["AMQPHeartbeatHealthy"] == "1"
    code, html = httpd.get("/server-status")
    assert code == 200 and "AMQPHeartbeatConnections: " in html


def test_no_credential_on_any_page(stack):
    _, httpd = stack
    publish(httpd, 1)
    pages = [httpd.get(STATUS + q)[1] for q in ("", "?json", "?metrics", "?health")]
    pages += [httpd.get("/server-status" + q)[1] for q in ("", "?auto")]
    for text in pages:
        assert PASSWORD not in text and USER not in text, text[:2000]
    assert "127.0.0.1:" in pages[0], "the broker is shown as host:port"


def test_a_silent_broker_is_counted_as_dead_with_close_320(stack):
    rabbit, httpd = stack
    publish(httpd, 1)
    rabbit.sigstop()
    try:
        def dead():
            procs_ = status(httpd)["processes"]
            # Closed is counted once the close plan ran, after the verdict.
            return [p for p in procs_ if p["counters"]["broker_dead"] > 0
                    and p["counters"]["closes"]["broker_silent"] > 0]
        dead_ones = wait_for("a broker-dead verdict", dead, timeout=10)
    finally:
        rabbit.sigcont()
    c = dead_ones[0]["counters"]
    assert c["close_codes_sent"]["320"] >= 1 and c["closes"]["broker_silent"] >= 1, c
    metrics = status(httpd, "metrics")
    assert re.search(r'amqp_heartbeat_close_sent_total\{pid="%d",code="320"\} [1-9]' % dead_ones[0]["pid"], metrics)


def test_health_fails_while_a_relay_is_stuck(stack):
    _, httpd = stack
    answer = wait_for("a fresh connection", lambda: (lambda a: a if "error" not in a else None)(
        httpd.get_json("/app?n=1")))
    assert httpd.get(STATUS + "?health")[0] == 200
    os.kill(answer["pid"], signal.SIGSTOP)
    try:
        code, text = wait_for("health 503", lambda: (lambda r: r if r[0] == 503 else None)(
            httpd.get(STATUS + "?health", timeout=5)), timeout=10)
    finally:
        os.kill(answer["pid"], signal.SIGCONT)
    assert "pid %d: connection #" % answer["pid"] in text and "nothing from the broker" in text, text


def test_a_killed_childs_slot_clears(stack):
    _, httpd = stack
    victim = httpd.children()[0]
    os.kill(victim, signal.SIGKILL)
    procs.wait_gone([victim], 5.0)
    httpd.wait_children(exclude=[victim])
    page = wait_for("the page without the killed child", lambda: (lambda p: p if {
        x["pid"] for x in p["processes"]} == set(httpd.children()) else None)(status(httpd)))
    assert victim not in {p["pid"] for p in page["processes"]}


def test_both_generations_are_listed_during_a_graceful_restart(stack):
    """The table outlives the restart (httpd reloads the module, whose
    statics start afresh): an old child still busy with a request stays
    listed next to the new ones until it is done, then drops off."""
    _, httpd = stack
    held = os.path.join(httpd.data_dir, "held-request")
    with ThreadPoolExecutor(1) as pool:
        busy = pool.submit(httpd.get_json, "/app?n=1&hold=" + urllib.parse.quote(held))
        try:
            wait_for("the request in a child", lambda: os.path.exists(held))
            old = httpd.graceful()
            # The busy child keeps its scoreboard slot: one new child fewer.
            new = httpd.wait_children(n=httpd.servers - 1, exclude=old)
            listed = {p["pid"] for p in status(httpd)["processes"]}
        finally:
            if os.path.exists(held):
                os.unlink(held)
        answer = busy.result(timeout=30)
    assert answer["pid"] in old and answer["pid"] in listed, (answer["pid"], old, listed)
    assert set(new) <= listed, (new, listed)

    def only_new():
        pids = {p["pid"] for p in status(httpd)["processes"]}
        return pids == set(httpd.children()) and not pids & set(old)
    wait_for("only the new generation on the page (the old child exits after its request)", only_new)
