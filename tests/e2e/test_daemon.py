"""mod_wsgi daemon mode (issue 9): a relay in every WSGIDaemonProcess, by
the one WSGIImportScript line of apache/amqp_heartbeat_daemon.py.

One httpd (prefork, 2 children, their relays on as by default) with five
daemon groups, all running the eventlet + oslo.messaging app with
transport_url from OS_DEFAULT__TRANSPORT_URL and client heartbeat 0:

  idle    processes=2 threads=1: the same upstream (peer port) of each
          process survives 12 x the relay interval of idle time;
  direct  the control, transport_url in its config file, heartbeat 4 and
          no relay: RabbitMQ drops it during the same idle time;
  cpu     threads=15, a sub-interpreter: a request holds the GIL in a CPU
          loop for 20 s, the upstream stays; its WSGI environ has no URL
          (the httpd child sends none for a daemon request);
  maxreq  maximum-requests=2: the exiting daemon's relay closes its
          upstream with Connection.Close; the next daemon has a new relay;
  other   user=nobody group=nogroup, named by WSGIScriptAlias process-group=,
          a sub-interpreter: works, and its WSGI environ has no URL.

Then SIGKILL of one idle daemon (its upstream goes at the broker, no other
does) and `apache2 -k graceful` (every daemon's relay closes its upstreams
cleanly, the new daemons get relays and new URLs).

Beside it, two small httpds: AMQPHeartbeatChildRelay Off (the httpd
children have no relay thread and publish nothing, the daemon has one), and
one without any AMQPHeartbeatBroker (the import script logs one line and
starts nothing).
"""

import os
import re
import threading
import time
import types

from harness import procs
from harness.httpd import Httpd

import stack
from stack import DIRECT_HEARTBEAT, RELAY_INTERVAL

SCRIPT = os.path.join(stack.E2E, "..", "..", "apache", "amqp_heartbeat_daemon.py")
SCRIPT = os.path.abspath(SCRIPT)
IDLE = 12 * RELAY_INTERVAL          # > 10 x relay interval, > 5 x DIRECT_HEARTBEAT
CPU_SECS = 20
POLL = 2.0
ENV = "OS_DEFAULT__TRANSPORT_URL"
URL_RX = re.compile(r"^rabbit://127\.0\.0\.1:(\d+)/$")
HOLD = "/send?ops=notify&hold=1.5"
RELAY_THREAD = "amqp-heartbeat"

# group -> WSGIDaemonProcess options
GROUPS = {
    "idle": "processes=2 threads=1",
    "direct": "processes=1 threads=1",
    "cpu": "processes=1 threads=15",
    "maxreq": "processes=1 threads=1 maximum-requests=2",
    # home=: nobody's home (/nonexistent) does not exist.
    "other": "processes=1 threads=1 user=nobody group=nogroup home=@WORKDIR@",
}


def daemon_lines(groups, script=True):
    out = ""
    for name, options in groups.items():
        out += "WSGIDaemonProcess %s %s display-name=%%{GROUP}\n" % (name, options)
        if script:
            out += "WSGIImportScript %s process-group=%s application-group=%%{GLOBAL}\n" % (SCRIPT, name)
    return out


def kinds(h):
    """{pid: 'mpm' or the daemon group} of the httpd's child processes."""
    out = {}
    for pid in procs.children(h.parent_pid):
        argv0 = (procs.cmdline(pid) or [""])[0].strip()
        out[pid] = argv0[len("(wsgi:"):-1] if argv0.startswith("(wsgi:") else "mpm"
    return out


def relay_threads(pid):
    return procs.thread_names(pid).count(RELAY_THREAD)


def wait_daemons(h, groups, relay=True, timeout=30.0):
    """Wait until every daemon of `groups` ({name: processes}) runs (and,
    with relay, has its relay thread): {pid: group}."""
    deadline = time.time() + timeout
    while True:
        k = {p: g for p, g in kinds(h).items() if g in groups}
        ready = all(sum(1 for g in k.values() if g == name) >= n for name, n in groups.items())
        if ready and (not relay or all(relay_threads(p) == 1 for p in k)):
            return k
        if time.time() > deadline:
            raise AssertionError("daemons not ready: %s\n%s" % (
                {p: (g, procs.thread_names(p)) for p, g in k.items()}, h.error_log_tail()))
        time.sleep(0.2)


def send(h, host, path="/send?ops=notify"):
    t0 = time.time()
    status, body = stack.get_json(h, path, host, timeout=120)
    return {"status": status, "body": body, "start": t0, "end": time.time()}


def upstream_ports(rows, answer):
    """Peer ports at the broker of the connections the answering app opened."""
    names = {"mod_wsgi:%d:%s" % (answer["pid"], cid) for cid in answer.get("connections", {})}
    return sorted(r["peer_port"] for r in rows if r["connection_name"] in names)


def url_port(answer, where="os.environ"):
    value = answer["env"][ENV][where]
    m = URL_RX.match(value or "")
    return int(m.group(1)) if m else None


def relay_start_us(h, pid):
    found = h.log_lines(r"mod_wsgi daemon process %d: relay started in (\d+) us" % pid, pid)
    return int(re.search(r"in (\d+) us", found[-1]).group(1)) if found else None


def run_scenario(rabbit, module_dir):
    s = types.SimpleNamespace(node=rabbit, httpds=[])
    try:
        main = _start_main(s, rabbit, module_dir)
        off = _start_off(s, rabbit, module_dir)
        bare = _start_bare(s, module_dir)
        _first(s, main)
        _side_httpds(s, off, bare)
        stack.wait_until(s.idle_from + IDLE, POLL, s.tl.poll)
        s.idle_to = time.time()
        s.cpu_thread.join(120)
        _second(s, main)
        _maximum_requests(s, main)
        _sigkill(s, main)
        _graceful(s, main)
        s.error_log = main.error_log()
    finally:
        s.stop_reports = [x.stop(strict=False) for x in s.httpds]
    _summarize(s)
    return s


def _start_main(s, rabbit, module_dir):
    data = os.path.join(module_dir, "httpd", "data")
    other_data = os.path.join(module_dir, "other-data")
    os.makedirs(other_data, exist_ok=True)
    os.chmod(other_data, 0o777)        # the daemon running as nobody logs here
    module_conf = stack.write_oslo_conf(os.path.join(module_dir, "oslo-module.conf"), 0)
    direct_conf = stack.write_oslo_conf(os.path.join(module_dir, "oslo-direct.conf"), DIRECT_HEARTBEAT,
                                        transport_url=rabbit.url)
    g = "%{GLOBAL}"
    body = (stack.directory_block() + daemon_lines({k: v for k, v in GROUPS.items() if k != "direct"})
            + daemon_lines({"direct": GROUPS["direct"]}, script=False)
            + stack.default_vhost()
            + stack.oslo_vhost("embedded", data, module_conf, False, g, broker_url=rabbit.url)
            + stack.oslo_vhost("daemon-idle", data, module_conf, False, g, rabbit.url, daemon="idle")
            + stack.oslo_vhost("daemon-direct", data, direct_conf, True, g, daemon="direct")
            + stack.oslo_vhost("daemon-cpu", data, module_conf, False, None, rabbit.url, daemon="cpu")
            + stack.oslo_vhost("daemon-maxreq", data, module_conf, False, g, rabbit.url, daemon="maxreq")
            # Its group named by WSGIScriptAlias (the request's notes), its
            # app in a sub-interpreter.
            + stack.oslo_vhost("daemon-other", other_data, module_conf, False, None, rabbit.url).replace(
                "oslo_app.wsgi\n", "oslo_app.wsgi process-group=other\n"))
    s.httpd = h = _start(s, os.path.join(module_dir, "httpd"), body, 2)
    s.daemons = wait_daemons(h, {"idle": 2, "cpu": 1, "maxreq": 1, "other": 1})
    s.daemons.update(wait_daemons(h, {"direct": 1}, relay=False))
    s.kinds = kinds(h)
    s.threads = h.stable_threads_of(list(s.kinds))
    s.relays = {p: relay_threads(p) for p in s.kinds}
    s.start_us = {p: relay_start_us(h, p) for p, g in s.daemons.items() if g != "direct"}
    return h


def _start_off(s, rabbit, module_dir):
    """AMQPHeartbeatChildRelay Off: only the daemon runs a relay."""
    data = os.path.join(module_dir, "off", "data")
    conf = stack.write_oslo_conf(os.path.join(module_dir, "oslo-off.conf"), 0)
    g = "%{GLOBAL}"
    body = ("AMQPHeartbeatChildRelay Off\n"
            + "<Location /relay-status>\n    SetHandler amqp-heartbeat-status\n</Location>\n"
            + stack.directory_block() + daemon_lines({"solo": "processes=1 threads=1"})
            + stack.default_vhost()
            + stack.oslo_vhost("embedded", data, conf, False, g, broker_url=rabbit.url)
            + stack.oslo_vhost("daemon-solo", data, conf, False, g, rabbit.url, daemon="solo"))
    s.off = _start(s, os.path.join(module_dir, "off"), body, 2)
    return s.off


def _start_bare(s, module_dir):
    """No AMQPHeartbeatBroker anywhere: the import script does nothing."""
    body = (stack.directory_block() + daemon_lines({"bare": "processes=1 threads=1"})
            + stack.vhost("bare", "oslo_app.wsgi", {"E2E_VARIANT": "bare"}, "%{GLOBAL}", daemon="bare"))
    s.bare = _start(s, os.path.join(module_dir, "bare"), body, 1)
    return s.bare


def _start(s, workdir, body, servers):
    h = Httpd(workdir, body, servers=servers, wsgi=True, amqp=True)
    s.httpds.append(h)     # stopped by run_scenario, also when start fails
    return h.start()


def _first(s, h):
    s.tl = stack.Timeline(s.node)
    s.embedded = stack.hit_all(h, HOLD, "embedded.e2e", 2)
    s.idle1 = stack.hit_all(h, HOLD, "daemon-idle.e2e", 2)
    s.other = send(h, "daemon-other.e2e")
    s.maxreq1 = send(h, "daemon-maxreq.e2e")
    # Last: the broker drops the direct control after 2 x its heartbeat.
    s.direct1 = send(h, "daemon-direct.e2e")
    rows = s.tl.poll()
    s.idle_up = {pid: upstream_ports(rows, a) for pid, a in s.idle1.items()}
    s.direct_up = upstream_ports(rows, s.direct1["body"]) if s.direct1["status"] == 200 else []
    s.other_up = upstream_ports(rows, s.other["body"]) if s.other["status"] == 200 else []
    s.maxreq_up = upstream_ports(rows, s.maxreq1["body"]) if s.maxreq1["status"] == 200 else []
    s.owners = stack.socket_owners(list(s.kinds))
    s.listening = {p: procs.listening_ports(p) for p in s.kinds}
    s.idle_from = time.time()
    s.cpu = {}

    def cpu():
        s.cpu.update(send(h, "daemon-cpu.e2e", "/block?mode=cpu&secs=%d&ops=notify" % CPU_SECS))
    s.cpu_thread = threading.Thread(target=cpu, daemon=True)
    s.cpu_thread.start()


def _side_httpds(s, off, bare):
    s.off_daemons = wait_daemons(off, {"solo": 1})
    s.off_kinds = kinds(off)
    s.off_relays = {p: relay_threads(p) for p in s.off_kinds}
    s.off_send = send(off, "daemon-solo.e2e")
    s.off_embedded = send(off, "embedded.e2e", "/env")
    s.off_status = off.get_json("/relay-status?json")
    rows = stack.connections(s.node)
    s.off_up = upstream_ports(rows, s.off_send["body"]) if s.off_send["status"] == 200 else []
    s.bare_daemons = wait_daemons(bare, {"bare": 1}, relay=False)
    time.sleep(1)
    s.bare_relays = {p: relay_threads(p) for p in kinds(bare)}
    s.bare_env = send(bare, "bare.e2e", "/env")
    s.bare_log = bare.error_log()


def _second(s, h):
    s.idle2 = stack.hit_all(h, HOLD, "daemon-idle.e2e", 2)
    s.direct2 = send(h, "daemon-direct.e2e")
    s.tl.poll()


def _maximum_requests(s, h):
    """The second request is the daemon's last: it exits after it."""
    s.maxreq2 = send(h, "daemon-maxreq.e2e")
    s.maxreq_pid = s.maxreq1["body"]["pid"]
    s.maxreq_exit_at = s.maxreq2["end"]
    s.maxreq_left = procs.wait_gone([s.maxreq_pid], 20)
    s.maxreq3 = send(h, "daemon-maxreq.e2e")


def _sigkill(s, h):
    s.victim = sorted(s.idle1)[0]
    s.survivor = sorted(s.idle1)[1]
    # Every other relay's upstreams (the direct control's come and go).
    relays = [p for p, g in kinds(h).items() if g not in ("direct", s.victim)]
    owners = stack.socket_owners(relays)
    rows = stack.connections(s.node)
    s.kill_others = {r["peer_port"] for r in rows if owners.get(r["peer_port"]) not in (None, s.victim)}
    s.kill = stack.KillWatch(s.node, s.victim, s.idle_up[s.victim])


def _graceful(s, h):
    old = {p: g for p, g in kinds(h).items() if g not in ("mpm", "direct")}
    # Upstreams of relays in the daemons that graceful stops.
    owners = stack.socket_owners(list(old))
    rows = stack.connections(s.node)
    s.graceful_up = {r["peer_port"]: owners[r["peer_port"]] for r in rows if r["peer_port"] in owners}
    s.graceful_old = old
    s.graceful_at = time.time()
    h.graceful()
    s.graceful_left = procs.wait_gone(list(old), 30)
    s.graceful_gone_at = time.time()
    deadline = time.time() + 10
    while time.time() < deadline:
        if set(s.graceful_up) <= {c["peer_port"] for c in stack.closes(s.node)}:
            break
        time.sleep(0.5)
    s.closes = stack.closes(s.node)
    s.new_daemons = wait_daemons(h, {"idle": 2})
    s.idle3 = stack.hit_all(h, HOLD, "daemon-idle.e2e", 2)
    s.idle3_relays = {p: relay_threads(p) for p in s.idle3}


def _summarize(s):
    try:
        kinds_threads = {}
        for pid, kind in s.kinds.items():
            kinds_threads.setdefault(kind, []).append("%d/%d" % (s.threads[pid], s.relays[pid]))
        stack.measure("daemon: threads/relay threads per process kind %s; ChildRelay Off: %s" % (
            kinds_threads, {g: s.off_relays[p] for p, g in s.off_kinds.items()}))
        stack.measure("daemon: relay start in the daemon (us) %s" % sorted(v for v in s.start_us.values() if v))
        survive = {pid: "%s -> %s" % (s.idle_up[pid], _final_idle_ports(s, pid)) for pid in s.idle_up}
        stack.measure("daemon: idle %.0fs (%.0f x relay interval), upstream peer ports per daemon %s" % (
            s.idle_to - s.idle_from, (s.idle_to - s.idle_from) / RELAY_INTERVAL, survive))
        close_after = []
        for port, pid in s.graceful_up.items():
            c = stack.close_in(s.closes, port)
            if c:
                close_after.append(round(c["time"] - s.graceful_at, 2))
        m = stack.close_in(s.closes, s.maxreq_up[0]) if s.maxreq_up else None
        stack.measure("daemon: upstream Close at exit: maximum-requests %s after the last response; "
                      "graceful %s s after apache2 -k graceful (daemons gone after %.1f s)" % (
                          "%.2f s" % (m["time"] - s.maxreq_exit_at) if m else "never", sorted(close_after),
                          s.graceful_gone_at - s.graceful_at))
    except Exception as e:
        stack.measure("daemon (no figures: %r)" % (e,))


def _final_idle_ports(s, pid):
    names = {"mod_wsgi:%d:%s" % (pid, cid) for cid in s.idle2[pid].get("connections", {})}
    last = s.tl.polls[-1][0]
    return sorted(p for p, seen in s.tl.seen.items()
                  if seen["row"]["connection_name"] in names and seen["last"] == last)


# ------------------------------------------------------------------ tests

def test_each_daemon_process_has_one_relay_thread_and_its_own_url(scenario):
    s = scenario
    for pid, group in s.daemons.items():
        assert s.relays[pid] == (0 if group == "direct" else 1), (pid, group, procs.thread_names(pid))
    for pid, a in s.idle1.items():
        port = url_port(a)
        assert port is not None, a["env"]
        assert a["env"][ENV]["libc"] == a["env"][ENV]["os.environ"], a["env"]
        assert a["transport_url_from"] == "environment", a
        # The URL's port is the relay listening in this very daemon.
        assert port in s.listening[pid], (pid, port, s.listening[pid])
    assert len({url_port(a) for a in s.idle1.values()}) == 2


def test_httpd_children_keep_their_relay_by_default(scenario):
    s = scenario
    mpm = [p for p, k in s.kinds.items() if k == "mpm"]
    assert len(mpm) == 2, s.kinds
    assert all(s.relays[p] == 1 for p in mpm), {p: procs.thread_names(p) for p in mpm}


def test_idle_upstream_survives_in_both_daemon_processes(scenario):
    s = scenario
    assert s.idle_to - s.idle_from >= 10 * RELAY_INTERVAL
    assert sorted(s.idle1) == sorted(s.idle2), "daemons changed during idle: %s -> %s" % (
        sorted(s.idle1), sorted(s.idle2))
    for pid, ports in s.idle_up.items():
        assert len(ports) == 1, "daemon %d: upstreams %s" % (pid, ports)
        assert s.tl.present_throughout(ports[0], s.idle_from, s.idle_to), (pid, ports)
        assert s.tl.seen[ports[0]]["row"]["timeout"] == RELAY_INTERVAL
        assert s.owners.get(ports[0]) == pid, "peer port %d held by %s" % (ports[0], s.owners.get(ports[0]))
        assert _final_idle_ports(s, pid) == ports, "daemon %d reconnected: %s -> %s" % (
            pid, ports, _final_idle_ports(s, pid))
        assert s.idle2[pid]["reconnects"] == 0, s.idle2[pid]["events"]


def test_control_direct_daemon_loses_its_connection(scenario):
    s = scenario
    assert s.direct1["status"] == 200 and s.direct_up, s.direct1
    port = s.direct_up[0]
    gone = s.tl.gone_after(port)
    assert gone is not None and gone < s.idle_to, "the direct control's connection survived the idle time"
    assert s.direct2["status"] == 200, s.direct2


def test_gil_held_for_20s_in_a_15_thread_daemon_keeps_the_upstream(scenario):
    s = scenario
    a = s.cpu
    assert a.get("status") == 200, a
    b = a["body"]
    assert b["blocked"]["seconds"] >= CPU_SECS
    assert not [e for e in b["events_after"] if e["kind"] in ("reconnected", "unreachable")], b["events_after"]
    names = {"mod_wsgi:%d:%s" % (b["pid"], cid) for cid in b["connections"]}
    upstream = [p for p, seen in s.tl.seen.items() if seen["row"]["connection_name"] in names]
    assert len(upstream) == 1, upstream
    start = b["blocked"]["started"]
    assert s.tl.present_throughout(upstream[0], start + 1, start + CPU_SECS - 1), upstream


def test_request_environ_never_carries_the_httpd_childs_url(scenario):
    s = scenario
    child_ports = {url_port(a) for a in s.embedded.values()}
    assert len(child_ports) == 2 and None not in child_ports, s.embedded
    answers = list(s.idle1.values()) + list(s.idle2.values()) + [s.other["body"], s.cpu["body"],
                                                                  s.maxreq1["body"]]
    for a in answers:
        own = url_port(a)
        got = a["env"][ENV]["request"]
        assert got is None or url_port(a, "request") == own, (a["pid"], got, own)
        assert url_port(a, "request") not in child_ports, (a["pid"], got)
    # The sub-interpreter apps get none at all: the child sent none
    # (WSGIProcessGroup for cpu, WSGIScriptAlias process-group= for other),
    # and the daemon's event hook only serves its own interpreter.
    for a in (s.cpu["body"], s.other["body"]):
        assert a["env"][ENV]["request"] is None, (a["variant"], a["env"])
        assert url_port(a) is not None


def test_maximum_requests_restart_closes_cleanly_and_the_new_daemon_has_a_relay(scenario):
    s = scenario
    assert s.maxreq1["status"] == s.maxreq2["status"] == s.maxreq3["status"] == 200
    assert s.maxreq2["body"]["pid"] == s.maxreq_pid and not s.maxreq_left
    new = s.maxreq3["body"]
    assert new["pid"] != s.maxreq_pid
    assert url_port(new) is not None and url_port(new) != url_port(s.maxreq1["body"])
    assert len(s.maxreq_up) == 1
    c = stack.close_in(s.closes, s.maxreq_up[0])
    assert c is not None and c["reason"] is None, "the exiting daemon's upstream was not closed cleanly: %s" % c


def test_sigkill_of_a_daemon_closes_only_its_upstreams(scenario):
    s = scenario
    assert set(s.idle_up[s.survivor]) <= s.kill_others, (s.idle_up, s.kill_others)
    s.kill.check(s.kill_others)


def test_graceful_closes_every_daemon_upstream_cleanly_and_new_daemons_get_new_urls(scenario):
    s = scenario
    assert not s.graceful_left, "old daemons still running: %s" % s.graceful_left
    assert len(s.graceful_up) >= 3, s.graceful_up
    for port, pid in s.graceful_up.items():
        c = stack.close_in(s.closes, port)
        assert c is not None, "daemon %d's upstream (peer port %d) was not closed" % (pid, port)
        assert c["reason"] is None, "daemon %d's upstream was not closed cleanly: %s" % (pid, c)
    old_urls = {url_port(a) for a in list(s.idle1.values()) + list(s.idle2.values())}
    for pid, a in s.idle3.items():
        assert pid not in s.graceful_old
        assert url_port(a) is not None and url_port(a) not in old_urls, a["env"]
        assert s.idle3_relays[pid] == 1, s.idle3_relays
    stops = s.httpd.log_lines(r"relay thread stopped cleanly")
    assert stops, "no relay logged a clean stop"


def test_daemon_as_another_user_works(scenario):
    s = scenario
    assert s.other["status"] == 200, s.other["body"]
    assert url_port(s.other["body"]) is not None
    assert len(s.other_up) == 1
    pid = s.other["body"]["pid"]
    assert s.owners.get(s.other_up[0]) == pid


def test_child_relay_off_leaves_only_the_daemon_with_a_relay(scenario):
    s = scenario
    relays = {p: (g, s.off_relays[p]) for p, g in s.off_kinds.items()}
    assert sorted(relays.values()) == [("mpm", 0), ("mpm", 0), ("solo", 1)], relays
    assert s.off_send["status"] == 200, s.off_send
    assert len(s.off_up) == 1 and url_port(s.off_send["body"]) is not None
    env = s.off_embedded["body"]["env"][ENV]
    assert env == {"os.environ": None, "libc": None, "request": None}, env
    # The status page lists the one relay, labelled as a daemon process.
    listed = [(p["pid"], p["kind"]) for p in s.off_status["processes"]]
    solo = [p for p, g in s.off_kinds.items() if g == "solo"]
    assert listed == [(solo[0], "daemon")], (listed, s.off_kinds)


def test_import_script_without_a_broker_logs_one_line_and_does_nothing(scenario):
    s = scenario
    assert all(n == 0 for n in s.bare_relays.values()), s.bare_relays
    assert s.bare_env["status"] == 200, s.bare_env
    assert s.bare_env["body"]["env"][ENV]["os.environ"] is None
    pid = list(s.bare_daemons)[0]
    lines = [ln for ln in s.bare_log.splitlines() if "[pid %d:" % pid in ln and "[amqp_heartbeat:" in ln]
    assert len(lines) == 1 and "no server names an AMQPHeartbeatBroker" in lines[0], lines


def test_httpds_stopped_cleanly(scenario):
    for report in scenario.stop_reports:
        assert not report["killed"], report
