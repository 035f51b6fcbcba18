#!/usr/bin/python3
"""`make demo`: the seed's bug and mod_amqp_heartbeat's fix, side by side.

A private RabbitMQ node (heartbeat 5 s) and ONE prefork httpd (one child,
mod_wsgi embedded) serving the same eventlet + oslo.messaging notifier app
(demo/app.wsgi) on two ports:

  direct  oslo.messaging talks to RabbitMQ itself (heartbeat_timeout_threshold
          5); its heartbeat is a green thread, which runs only during requests.
  module  transport_url comes from OS_DEFAULT__TRANSPORT_URL, which the module
          publishes: the relay in the same child, on 127.0.0.1. The client's
          heartbeat is 0; the relay heartbeats RabbitMQ every second (interval
          2 s), in a native thread.

One request to each, a minute of idle time with the broker's view of both
connections every few seconds, a second request to each, a verdict table.

`--mode=daemon` (`make demo DEMO_MODE=daemon`): the same, with each app in its
own mod_wsgi daemon process (WSGIDaemonProcess processes=1 threads=1, as
nova-api is deployed); the module's gets its relay from the one
WSGIImportScript line of apache/amqp_heartbeat_daemon.py, and
AMQPHeartbeatChildRelay Off leaves httpd's own child without one.
Everything is private, on loopback, and stopped at the end (also on Ctrl-C
or a failure). Exit status 1 when the module's connection did not survive.

Run with Debian's /usr/bin/python3 after `make` (make demo does both).
"""

import argparse
import os
import shutil
import signal
import sys
import tempfile
import textwrap
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, "demo")
for p in (os.path.join(REPO, "tests"), os.path.join(REPO, "tests", "e2e")):
    sys.path.insert(0, p)

from harness import ports, procs  # noqa: E402
from harness.httpd import WSGI_SO, Httpd, HttpdError, module_path  # noqa: E402
from harness.rabbit import RabbitNode  # noqa: E402

import stack  # noqa: E402

BROKER_HEARTBEAT = 5    # RabbitMQ's heartbeat, and the direct client's
RELAY_INTERVAL = 2      # AMQPHeartbeatInterval
IDLE = 60               # seconds without requests
TICK = 5                # seconds between looks at the broker
VARIANTS = ("direct", "module")
DAEMON_SCRIPT = os.path.join(REPO, "apache", "amqp_heartbeat_daemon.py")
SETUP = ["one prefork child"]      # what runs the apps, for the verdict

T0 = time.time()


def say(msg=""):
    print("[%6.1fs] %s" % (time.time() - T0, msg) if msg else "", flush=True)


def line(msg=""):
    print(msg, flush=True)


class Failure(Exception):
    pass


def check_deps():
    missing = []
    try:
        module_path()
    except HttpdError as e:
        missing.append(str(e))
    if not os.path.exists(WSGI_SO):
        missing.append("mod_wsgi is missing (apt-get install libapache2-mod-wsgi-py3)")
    for mod, pkg in (("eventlet", "python3-eventlet"), ("oslo_messaging", "python3-oslo.messaging")):
        try:
            __import__(mod)
        except ImportError:
            missing.append("%s is missing (apt-get install %s)" % (mod, pkg))
    if missing:
        raise Failure("cannot run the demo:\n  " + "\n  ".join(missing) + "\n(`make demo` installs and builds)")


def daemon_lines(daemon):
    """With `daemon`, each app in its own WSGIDaemonProcess; the module's
    gets a relay by the WSGIImportScript line."""
    if not daemon:
        return {"head": "", "direct": "", "module": ""}
    return {
        "head": "AMQPHeartbeatChildRelay Off\n"
                "WSGIDaemonProcess direct processes=1 threads=1\n"
                "WSGIDaemonProcess module processes=1 threads=1\n"
                "WSGIImportScript %s process-group=module application-group=%%{GLOBAL}\n" % DAEMON_SCRIPT,
        "direct": "    WSGIProcessGroup direct\n    WSGIApplicationGroup %{GLOBAL}\n",
        "module": "    WSGIProcessGroup module\n    WSGIApplicationGroup %{GLOBAL}\n",
    }


def httpd_body(workdir, node, module_port, daemon=False):
    """Two port-based vhosts: the main Listen port is direct, a second
    Listen port goes through the module."""
    direct_conf = stack.write_oslo_conf(os.path.join(workdir, "oslo-direct.conf"), BROKER_HEARTBEAT,
                                        transport_url=node.url)
    module_conf = stack.write_oslo_conf(os.path.join(workdir, "oslo-module.conf"), 0)
    app = os.path.join(DEMO, "app.wsgi")
    d = daemon_lines(daemon)
    return d["head"] + """
Listen 127.0.0.1:{mport}
<Directory {demo}>
    Require all granted
</Directory>
<VirtualHost 127.0.0.1:@PORT@>
    ServerName direct.demo
    WSGIScriptAlias / {app}
    SetEnv DEMO_VARIANT direct
    SetEnv DEMO_OSLO_CONF {direct_conf}
    SetEnv DEMO_USE_ENV 0
{direct_daemon}</VirtualHost>
<VirtualHost 127.0.0.1:{mport}>
    ServerName module.demo
    WSGIScriptAlias / {app}
    SetEnv DEMO_VARIANT module
    SetEnv DEMO_OSLO_CONF {module_conf}
    SetEnv DEMO_USE_ENV 1
    AMQPHeartbeatBroker {broker}
    AMQPHeartbeatInterval {interval}
    AMQPHeartbeatEnv OS_DEFAULT__TRANSPORT_URL rabbit
{module_daemon}    <Location /relay-status>
        SetHandler amqp-heartbeat-status
        Require ip 127.0.0.1
    </Location>
</VirtualHost>
""".format(mport=module_port, demo=DEMO, app=app, direct_conf=direct_conf, module_conf=module_conf,
           broker=node.url, interval=RELAY_INTERVAL, direct_daemon=d["direct"], module_daemon=d["module"])


class Variant:
    def __init__(self, name, port):
        self.name = name
        self.port = port
        self.answers = []
        self.conn_name = None      # client-provided name at the broker
        self.peer_port = None      # after request 1
        self.timeout = None
        self.last_request_end = None
        self.gone_at = None        # first look that did not see it
        self.close = None          # the broker's log entry
        self.new_peer_port = None  # after request 2

    def request(self):
        t0 = time.time()
        try:
            status, body = stack.get_json("http://127.0.0.1:%d" % self.port, "/", "%s.demo" % self.name,
                                          timeout=60)
        except OSError as e:
            status, body = None, {"error": "no answer: %s" % e}
        self.last_request_end = time.time()
        body["_status"], body["_start"], body["_end"] = status, t0, self.last_request_end
        body["_took"] = self.last_request_end - t0
        self.answers.append(body)
        return body


def describe_answer(v, body):
    if body["_status"] != 200:
        return "%s FAILED (%s): %s" % (v.name, body["_status"], body.get("error") or body.get("events"))
    parts = ["200 in %.2fs" % body["_took"]]
    if v.name == "module":
        parts.append("transport_url %s (from the %s)" % (body.get("transport_url"), body.get("transport_url_from")))
    unreachable = [e["message"] for e in body.get("events", []) if "unreachable" in e["message"]]
    if unreachable:
        parts.append("the client found its connection dead and reconnected:\n%s  \"%s\"" % (
            " " * 12, unreachable[0][:150]))
    elif body.get("reconnected"):
        parts.append("the client reconnected")
    elif len(v.answers) > 1:
        parts.append("no reconnect")
    return "%s: %s" % (v.name, ", ".join(parts))


def find_connections(node, variants):
    rows = stack.connections(node)
    for v in variants:
        body = v.answers[0]
        names = ["mod_wsgi:%d:%s" % (body["pid"], cid) for cid in body.get("connection_ids", [])]
        for r in rows:
            if r["connection_name"] in names:
                v.conn_name, v.peer_port, v.timeout = r["connection_name"], r["peer_port"], r["timeout"]
        if v.peer_port is None:
            raise Failure("the broker shows no connection of the %s app (%s)" % (v.name, names))


def state_of(v, rows, node, idle_from):
    for r in rows:
        if r["peer_port"] == v.peer_port:
            return "port %d, %s" % (v.peer_port, r["state"])
    if v.gone_at is None:
        v.gone_at = time.time()
        v.close = stack.close_of(node, v.peer_port)
        if v.close:
            return "DROPPED at t=+%.1fs" % (v.close["time"] - idle_from)
        return "GONE"
    return "gone"


def idle_timeline(node, variants, idle_from):
    line()
    line("Idle for %d s; t = seconds since the last request. The broker's connections" % IDLE)
    line("(what rabbitmqctl list_connections shows) every %d s:" % TICK)
    line()
    line("  %-7s  %-28s  %-28s" % ("", "direct to RabbitMQ", "through mod_amqp_heartbeat"))
    tick = 0
    while True:
        rows = stack.connections(node)
        now = time.time()
        cells = [state_of(v, rows, node, idle_from) for v in variants]
        left = idle_from + IDLE - now
        line("  t=+%-4s  %-28s  %-28s  %s" % ("%.0fs" % (now - idle_from), cells[0], cells[1],
                                             "(%.0f s to go)" % left if left > 0 else ""))
        for v, cell in zip(variants, cells):
            if cell.startswith("DROPPED") and v.close and v.close["reason"]:
                line("  %7s  ^ the broker's log: \"%s\"" % ("", v.close["reason"]))
        if left <= 0:
            return
        tick += 1
        time.sleep(max(0.0, min(idle_from + tick * TICK, idle_from + IDLE) - time.time()))


def verdict(node, direct, module):
    d1, d2 = direct.answers[0], direct.answers[-1]
    m1, m2 = module.answers[0], module.answers[-1]
    rows = {r["connection_name"]: r for r in stack.connections(node) if r["connection_name"]}
    for v in (direct, module):
        r = rows.get(v.conn_name)
        v.new_peer_port = r["peer_port"] if r else None
        if v.close is None:
            v.close = stack.close_of(node, v.peer_port)

    def idle_cell(v):
        if v.close:
            return "dropped at +%.1f s" % (v.close["time"] - v.answers[0]["_end"])
        if v.gone_at:
            return "gone by +%.0f s" % (v.gone_at - v.answers[0]["_end"])
        return "alive after %.0f s idle" % (v.answers[1]["_start"] - v.answers[0]["_end"])

    def reason_cell(v):
        if v.close:
            return v.close["reason"] or "closed by the client"
        return "-"

    def port_cell(v):
        if v.new_peer_port is None:
            return "%d -> none" % v.peer_port
        if v.new_peer_port == v.peer_port:
            return "%d, unchanged: the same connection" % v.peer_port
        return "%d -> %d: a new connection" % (v.peer_port, v.new_peer_port)

    def second_cell(body):
        if body["_status"] != 200:
            return "FAILED (%s)" % body["_status"]
        return "%s, %.0f ms" % ("reconnected" if body.get("reconnected") else "no reconnect",
                                body["_took"] * 1000)

    table = [
        ("client heartbeat", "%s s (a green thread)" % d1.get("heartbeat_timeout_threshold"),
         "%s (the relay's: %d s)" % (m1.get("heartbeat_timeout_threshold"), RELAY_INTERVAL)),
        ("heartbeat at the broker", "%s s" % direct.timeout, "%s s" % module.timeout),
        ("idle for %d s" % IDLE, idle_cell(direct), idle_cell(module)),
        ("broker's reason", reason_cell(direct), reason_cell(module)),
        ("broker peer port", port_cell(direct), port_cell(module)),
        ("second request", second_cell(d2), second_cell(m2)),
    ]
    line()
    line("Verdict (RabbitMQ heartbeat %d s, %s, +N s = after request 1):" % (BROKER_HEARTBEAT, SETUP[0]))
    line()
    w0, w1, w2 = 24, 36, 38
    line("  %-*s  %-*s  %s" % (w0, "", w1, "direct to RabbitMQ", "through mod_amqp_heartbeat"))
    line("  %s  %s  %s" % ("-" * w0, "-" * w1, "-" * w2))
    for label, a, b in table:
        a, b = textwrap.wrap(a, w1) or [""], textwrap.wrap(b, w2) or [""]
        for i in range(max(len(a), len(b))):
            line("  %-*s  %-*s  %s" % (w0, label if i == 0 else "", w1, a[i] if i < len(a) else "",
                                      b[i] if i < len(b) else ""))
    line()
    survived = (module.close is None and module.gone_at is None and module.new_peer_port == module.peer_port
                and m2["_status"] == 200 and not m2.get("reconnected"))
    dropped = direct.close is not None or direct.gone_at is not None
    if survived:
        line("RESULT: through the module the same upstream connection lived through %d s of idle time"
             % IDLE)
        line("        and the next request did not reconnect.")
    else:
        line("RESULT: FAILED: the module's connection did not survive (see above and %s)." % "the logs")
    if dropped:
        line("        Direct, RabbitMQ dropped the idle connection: the bug the module exists for.")
    else:
        line("        (Direct, the connection was not dropped this time: unexpected, see the logs.)")
    return survived


def main():
    parser = argparse.ArgumentParser(description="mod_amqp_heartbeat demo")
    parser.add_argument("--mode", choices=("embedded", "daemon"), default="embedded",
                        help="mod_wsgi embedded (default) or daemon mode (WSGIDaemonProcess)")
    daemon = parser.parse_args().mode == "daemon"
    check_deps()
    workdir = tempfile.mkdtemp(prefix="amqphb-demo-")
    os.chmod(workdir, 0o755)   # httpd children (www-data) read the configs
    node = httpd = None
    ok = False
    where = "child"
    if daemon:
        where = "daemon process"
        SETUP[0] = "one daemon process per app"
        line("mod_amqp_heartbeat demo: one prefork httpd child, mod_wsgi DAEMON mode: each app in its")
        line("own WSGIDaemonProcess (processes=1 threads=1), the same eventlet + oslo.messaging")
        line("notifier app (demo/app.wsgi) served twice:")
    else:
        line("mod_amqp_heartbeat demo: one prefork httpd child, mod_wsgi embedded, the same")
        line("eventlet + oslo.messaging notifier app (demo/app.wsgi) served twice:")
    line("  direct  the app talks to RabbitMQ itself (heartbeat_timeout_threshold %d)" % BROKER_HEARTBEAT)
    line("  module  the app talks to the relay the module runs in the same %s; transport_url" % where)
    line("          from OS_DEFAULT__TRANSPORT_URL, client heartbeat 0, relay heartbeat %d s" % RELAY_INTERVAL)
    if daemon:
        line("          (its relay: WSGIImportScript %s" % os.path.relpath(DAEMON_SCRIPT, REPO))
        line("           process-group=module application-group=%{GLOBAL})")
    line("It takes about two minutes; Ctrl-C stops everything.")
    line()
    try:
        node = RabbitNode(os.path.join(workdir, "rabbit"), name="amqphb-demo-%d" % os.getpid(),
                          heartbeat=BROKER_HEARTBEAT)
        say("starting a private RabbitMQ node on 127.0.0.1:%d (heartbeat %d s) ..."
            % (node.amqp_port, BROKER_HEARTBEAT))
        node.start()
        say("RabbitMQ is up (%.1f s)" % node.start_seconds)

        module_port = ports.free_port()
        httpd = Httpd(os.path.join(workdir, "httpd"), "", servers=1, wsgi=True, amqp=True,
                      modules=["authz_host"])
        httpd.body = httpd_body(workdir, node, module_port, daemon)
        httpd.write_config()
        say("starting httpd (prefork, 1 child): direct on 127.0.0.1:%d, module on 127.0.0.1:%d ..."
            % (httpd.port, module_port))
        httpd.start()
        say("httpd is up: parent pid %d, child and daemon pids %s" % (httpd.parent_pid, httpd.children()))
        say("status of the relays while the demo runs: http://127.0.0.1:%d/relay-status "
            "(?json, ?metrics, ?health)" % module_port)

        direct, module = Variant("direct", httpd.port), Variant("module", module_port)
        variants = [direct, module]
        for v in (module, direct):   # the direct one last: its idle time starts at t=0
            say("request 1 -> %s ..." % v.name)
            body = v.request()
            say(describe_answer(v, body))
            if body["_status"] != 200:
                raise Failure("the first request to %s failed" % v.name)
        find_connections(node, variants)
        for v in variants:
            say("%s: the broker sees peer port %d, heartbeat %s s (%s)" % (
                v.name, v.peer_port, v.timeout, v.conn_name))

        idle_timeline(node, variants, max(v.last_request_end for v in variants))

        for v in variants:
            say("request 2 -> %s ..." % v.name)
            body = v.request()
            say(describe_answer(v, body))
        ok = verdict(node, direct, module)
    except Failure as e:
        line()
        line("FAILED: %s" % e)
    except KeyboardInterrupt:
        line()
        line("interrupted")
    finally:
        line()
        say("stopping httpd and RabbitMQ ...")
        for what, stop in (("httpd", lambda: httpd and httpd.stop(strict=False)),
                           ("RabbitMQ", lambda: node and node.stop())):
            try:
                stop()
            except Exception as e:
                line("  stopping %s: %s" % (what, e))
        left = procs.kill_leftovers(workdir)
        if left:
            line("  killed leftovers: %s" % left)
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
            say("stopped; nothing left running")
        else:
            say("stopped; logs kept in %s (httpd/logs/error.log, rabbit/log/)" % workdir)
    return 0 if ok else 1


def _sigterm(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _sigterm)
    try:
        sys.exit(main())
    except Failure as e:
        print("FAILED: %s" % e, file=sys.stderr)
        sys.exit(1)
