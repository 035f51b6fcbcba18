"""Per-child figures with the real module in a real prefork httpd (issue 5).

    /usr/bin/python3 benches/httpd_bench.py p3 [--window 60] [--sweep 1,2,8] [--sweep-only] [--workdir DIR]
    /usr/bin/python3 benches/httpd_bench.py p5 [--window 90] [--workdir DIR]
    /usr/bin/python3 benches/httpd_bench.py soak [--children 256] [--minutes 10]

p3  cost per child: threads, RSS added with 0 and 2 idle relayed
    connections, wakeups and CPU of the relay thread when idle. "direct" is
    the same httpd and app without the module (its 2 connections go to the
    broker directly). Then the connection sweep: one child with the module
    holding 1, then 2, then 8 idle connections (--sweep), the relay
    thread's wakeups per heartbeat interval for the whole child, each over
    the idle window (--sweep-only: the sweep alone).
p5  the seed's peer: oslo.messaging heartbeat_in_pthread=True (threshold
    10) versus the relay at the same heartbeat (AMQPHeartbeatInterval 10:
    both connections negotiate the same timeout with the broker), same oslo
    app, same idle window: CPU and wakeups per connection-hour of the
    threads that keep the heartbeats.
soak  P4: N prefork children, each app holding 2 relayed connections, relay
    heartbeat 5 s, for M minutes: missed-heartbeat closes and relay CPU.

Each figure is printed as `bench: NAME relay=X direct=Y ratio=Z unit=U
goal=G met=yes|NO`. Wakeups are the thread's voluntary context switches
(/proc/PID/task/TID/status): each is one sleep in epoll_wait ended by an
event or a timer, i.e. one time the thread woke up. Preemptions
(nonvoluntary switches: another process took the CPU mid-run, which
depends on the machine's load, not on the relay) are recorded beside
them. Everything started here (broker, httpd) is stopped at the end, also
on failure.
"""

import argparse
import json
import os
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests"))
sys.path.insert(0, os.path.join(REPO, "tests", "e2e"))

import harness.httpd  # noqa: E402
from harness import procs  # noqa: E402
from harness.httpd import Httpd, wsgi_body  # noqa: E402
from harness.rabbit import RabbitNode  # noqa: E402

APPS = os.path.join(HERE, "apps")
RELAY_THREAD = "amqp-heartbeat"


# /proc readings come from tests/harness/procs.py (one /proc helper).
tids, thread_comm, schedstat, ctxt = procs.tids, procs.thread_comm, procs.schedstat, procs.ctxt
rss_kib, private_kib = procs.rss_kib, procs.private_kib


def relay_tid(pid):
    found = [t for t in tids(pid) if thread_comm(pid, t) == RELAY_THREAD]
    if len(found) != 1:
        raise RuntimeError("child %d: %d threads named %s (%s)" % (
            pid, len(found), RELAY_THREAD, [(t, thread_comm(pid, t)) for t in tids(pid)]))
    return found[0]


def watch_threads(pid, threads, seconds):
    """CPU ms, wakeups (voluntary switches), preemptions and run slices of
    `threads` of pid over `seconds` (summed). A thread that ends in the
    window is left out and listed under "vanished"."""
    before = {t: (schedstat(pid, t), ctxt(pid, t)) for t in threads}
    t0 = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - t0
    cpu_ns = slices = woke = preempted = 0
    vanished = []
    for t, ((ns0, sl0), (v0, n0)) in before.items():
        try:
            (ns1, sl1), (v1, n1) = schedstat(pid, t), ctxt(pid, t)
        except OSError:
            vanished.append(t)
            continue
        cpu_ns += ns1 - ns0
        slices += sl1 - sl0
        woke += v1 - v0
        preempted += n1 - n0
    return {"seconds": elapsed, "cpu_ms": cpu_ns / 1e6, "wakeups": woke, "preempted": preempted,
            "run_slices": slices, "vanished": vanished}


# ------------------------------------------------------------------ output

FIGURES = []


def figure(name, relay, direct, unit, goal, met, ratio=None):
    if ratio is None:
        ratio = relay / direct if direct else float("inf") if relay else 1.0
    FIGURES.append((name, relay, direct, ratio, unit, goal, met))
    print("bench: %s relay=%.3f direct=%.3f ratio=%.3f unit=%s goal=%s met=%s"
          % (name, relay, direct, ratio, unit, goal, "yes" if met else "NO"), flush=True)


def note(text):
    print("  " + text, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ P3

def p3(args):
    node = RabbitNode(os.path.join(args.workdir, "rabbit")).start()
    try:
        results = {}
        if not args.sweep_only:
            for variant in ("module", "baseline"):
                results[variant] = p3_variant(args, node, variant)
        sweep = p3_sweep(args, node)
    finally:
        node.stop()
    for n, r in sweep:
        per_iv = r["wakeups"] / (r["seconds"] / args.interval)
        goal = "<=1.1/interval/child" if n == 8 else "none"
        figure("P3_relay_wakeups_per_interval_%dconn" % n, per_iv, 0.0, "per_interval_per_child", goal,
               per_iv <= 1.1 or n != 8, ratio=per_iv / n)
    note("P3 sweep raw: %s" % json.dumps(sweep))
    if args.sweep_only:
        return
    m, b = results["module"], results["baseline"]
    figure("P3_threads_per_child", m["threads"], b["threads"], "threads", "exactly+1",
           m["threads"] == b["threads"] + 1, ratio=m["threads"] - b["threads"])
    for k, label in (("rss0", "0conn"), ("rss2", "2conn")):
        added = (m[k] - b[k]) / 1024.0
        figure("P3_rss_%s" % label, m[k] / 1024.0, b[k] / 1024.0, "MiB",
               "added<=1MiB(added=%.2fMiB)" % added, added <= 1.0, ratio=m[k] / b[k])
    for k, label in (("private0", "0conn"), ("private2", "2conn")):
        added = (m[k] - b[k]) / 1024.0
        figure("P3_private_%s" % label, m[k] / 1024.0, b[k] / 1024.0, "MiB",
               "added<=1MiB(added=%.2fMiB)" % added, added <= 1.0, ratio=m[k] / b[k])
    iv, window = args.interval, m["idle2"]["seconds"]
    per_min0 = m["idle0"]["wakeups"] * 60.0 / m["idle0"]["seconds"]
    per_min2 = m["idle2"]["wakeups"] * 60.0 / window
    per_iv_conn = m["idle2"]["wakeups"] / (window / iv) / 2.0
    figure("P3_relay_wakeups_0conn", per_min0, 0.0, "per_min", "0(no_polling)", per_min0 <= 1.0, ratio=0.0)
    figure("P3_relay_wakeups_2conn", per_min2, 0.0, "per_min",
           "<=2/interval/conn(%.2f)" % per_iv_conn, per_iv_conn <= 2.0, ratio=per_iv_conn)
    figure("P3_relay_cpu_2conn", m["idle2"]["cpu_ms"] * 60.0 / window, 0.0, "ms_per_min", "none", True,
           ratio=0.0)
    note("P3 raw: %s" % json.dumps(results))


def p3_variant(args, node, variant):
    module = variant == "module"
    body = "SetEnv BENCH_DIRECT_URL %s\n" % node.url + wsgi_body(app="hold.wsgi", apps_dir=APPS)
    if module:
        body += "AMQPHeartbeatBroker %s\nAMQPHeartbeatInterval %d\n" % (node.url, args.interval)
    h = Httpd(os.path.join(args.workdir, "p3-" + variant), body, wsgi=True, amqp=module, servers=1,
              log_level="warn")
    h.start()
    try:
        pid = h.children()[0]
        h.get_json("/info")            # Python and the app (kombu) loaded
        time.sleep(1)
        out = {"pid": pid, "threads": h.stable_threads(pid), "rss0": rss_kib(pid),
               "private0": private_kib(pid),
               "thread_names": [thread_comm(pid, t) for t in tids(pid)]}
        if module:
            tid = relay_tid(pid)
            out["idle0"] = watch_threads(pid, [tid], args.idle0)
        answer = h.get_json("/open?n=2")
        if answer.get("held") != 2 or answer.get("via") != ("relay" if module else "direct"):
            raise RuntimeError("app did not open 2 connections: %s" % answer)
        time.sleep(2)
        out["rss2"] = rss_kib(pid)
        out["private2"] = private_kib(pid)
        out["via"] = answer["via"]
        if module:
            conns = node.list_connections()
            out["idle2"] = watch_threads(pid, [relay_tid(pid)], args.window)
            after = node.list_connections()
            out["broker_connections"] = [(c["peer_port"], c["timeout"]) for c in conns]
            if sorted(c["peer_port"] for c in after) != sorted(c["peer_port"] for c in conns):
                raise RuntimeError("upstream connections changed while idle: %s -> %s" % (conns, after))
            out["rss2_after_idle"] = rss_kib(pid)
        return out
    finally:
        h.stop(strict=False)


def p3_sweep(args, node):
    """One child with the module: the relay thread's wakeups over the idle
    window with each count of idle connections in --sweep (increasing: the
    app only opens more)."""
    body = "SetEnv BENCH_DIRECT_URL %s\n" % node.url + wsgi_body(app="hold.wsgi", apps_dir=APPS)
    body += "AMQPHeartbeatBroker %s\nAMQPHeartbeatInterval %d\n" % (node.url, args.interval)
    body += "AMQPHeartbeatMaxConnections 64\n"
    h = Httpd(os.path.join(args.workdir, "p3-sweep"), body, wsgi=True, amqp=True, servers=1,
              log_level="warn")
    h.start()
    out = []
    try:
        pid = h.children()[0]
        for n in sorted(int(x) for x in args.sweep.split(",") if x):
            answer = h.get_json("/open?n=%d" % n)
            if answer.get("held") != n or answer.get("via") != "relay" or answer.get("pid") != pid:
                raise RuntimeError("app did not open %d relayed connections: %s" % (n, answer))
            time.sleep(2)
            conns = node.list_connections()
            r = watch_threads(pid, [relay_tid(pid)], args.window)
            after = node.list_connections()
            if sorted(c["peer_port"] for c in after) != sorted(c["peer_port"] for c in conns):
                raise RuntimeError("upstream connections changed while idle: %s -> %s" % (conns, after))
            out.append((n, r))
            note("P3 sweep: %d connections, %d wakeups in %.0f s" % (n, r["wakeups"], r["seconds"]))
        return out
    finally:
        h.stop(strict=False)


# ------------------------------------------------------------------ P5

def p5(args):
    import stack
    node = RabbitNode(os.path.join(args.workdir, "rabbit")).start()
    try:
        oslo = p5_variant(args, node, stack, "oslo_pthread")
        relay = p5_variant(args, node, stack, "relay")
    finally:
        node.stop()

    def per_conn_hour(r, key):
        return r[key] * 3600.0 / r["seconds"] / r["connections"]

    for key, unit in (("cpu_ms", "ms_per_conn_hour"), ("wakeups", "wakeups_per_conn_hour")):
        rv, ov = per_conn_hour(relay, key), per_conn_hour(oslo, key)
        figure("P5_%s" % key, rv, ov, unit, "ratio<=0.1", rv <= ov / 10.0)
    note("P5 raw: oslo %s" % json.dumps(oslo))
    note("P5 raw: relay %s" % json.dumps(relay))


def p5_variant(args, node, stack, variant):
    module = variant == "relay"
    wd = os.path.join(args.workdir, "p5-" + variant)
    os.makedirs(wd, exist_ok=True)
    conf = stack.write_oslo_conf(
        os.path.join(wd, "oslo.conf"), heartbeat=args.threshold,
        transport_url=None if module else node.url,
        extra="heartbeat_in_pthread = %s\n" % ("false" if module else "true"))
    body = stack.oslo_vhost(variant, "@WORKDIR@/data", conf, direct=not module, broker_url=node.url)
    if module:
        # Like for like: the relay negotiates the timeout oslo negotiates.
        body = body.replace("AMQPHeartbeatInterval %d" % stack.RELAY_INTERVAL,
                            "AMQPHeartbeatInterval %d" % args.threshold)
    h = Httpd(wd, body, wsgi=True, amqp=module, servers=1, log_level="warn")
    h.start()
    try:
        pid = h.children()[0]
        host = "%s.e2e" % variant
        status, answer = stack.get_json(h, "/send?ops=notify,cast", host)
        if status != 200:
            raise RuntimeError("%s: /send -> %d %s" % (variant, status, answer))
        time.sleep(3)
        conns = node.list_connections()
        if module:
            threads = [relay_tid(pid)]
        else:
            # Every thread but the interpreter's: oslo's heartbeat threads.
            threads = [t for t in tids(pid) if t != pid]
        before_names = [thread_comm(pid, t) for t in threads]
        r = watch_threads(pid, threads, args.window)
        after = node.list_connections()
        r["connections"] = len(conns)
        r["threads"] = before_names
        r["negotiated_timeout"] = sorted(c["timeout"] for c in conns)
        if sorted(c["peer_port"] for c in after) != sorted(c["peer_port"] for c in conns):
            raise RuntimeError("%s: connections changed while idle: %s -> %s" % (variant, conns, after))
        if not conns:
            raise RuntimeError("%s: no broker connections" % variant)
        return r
    finally:
        h.stop(strict=False)


# ------------------------------------------------------------------ P4 soak

def soak(args):
    node = RabbitNode(os.path.join(args.workdir, "rabbit")).start()
    n = args.children
    body = wsgi_body(app="hold.wsgi", apps_dir=APPS)
    body += "AMQPHeartbeatBroker %s\nAMQPHeartbeatInterval %d\nAMQPHeartbeatMaxConnections 4\n" % (
        node.url, args.interval)
    h = Httpd(os.path.join(args.workdir, "soak-httpd"), body, wsgi=True, amqp=True, servers=n,
              log_level="warn")
    try:
        h.start(timeout=300)
        kids = h.children()
        note("soak: %d children; opening 2 relayed connections in each" % len(kids))
        # Every child loads Python and kombu on its first request: on 2
        # cores 256 of them take minutes, so requests are spread and waited
        # for patiently, until the broker holds 2 connections per child.
        deadline = time.monotonic() + 900
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(32) as pool:
            while len(node.list_connections(timeout=120)) < 2 * n:
                if time.monotonic() > deadline:
                    raise RuntimeError("children did not all open 2 connections in 15 min")
                answers = list(pool.map(
                    lambda _: h.get("/open?n=2&hold=1", timeout=600), range(64)))
                bad = [a for a in answers if a[0] != 200]
                if bad:
                    raise RuntimeError("/open failed: %s" % (bad[:3],))
        conns0 = node.list_connections(timeout=120)
        note("soak: %d broker connections; idle for %d min" % (len(conns0), args.minutes))
        relays = {p: relay_tid(p) for p in h.children()}
        start = {p: (schedstat(p, t)[0], ctxt(p, t)[0]) for p, t in relays.items()}
        t0 = time.monotonic()
        log_mark = len(node.log_text())
        time.sleep(args.minutes * 60)
        elapsed = time.monotonic() - t0
        cpu_ns = wakeups = 0
        for p, t in relays.items():
            cpu_ns += schedstat(p, t)[0] - start[p][0]
            wakeups += ctxt(p, t)[0] - start[p][1]
        conns1 = node.list_connections(timeout=120)
        log = node.log_text()[log_mark:]
        missed = log.count("missed heartbeats")
        relay_missed = len(h.log_lines("broker missed heartbeats"))
        ports0 = set(c["peer_port"] for c in conns0)
        ports1 = set(c["peer_port"] for c in conns1)
        lost = len(ports0 - ports1)
        cpu_pct = cpu_ns / 1e9 / elapsed * 100.0
        figure("P4_missed_heartbeat_closes", missed, 0, "closes", "0", missed == 0, ratio=0)
        figure("P4_relay_saw_broker_silent", relay_missed, 0, "closes", "0", relay_missed == 0, ratio=0)
        figure("P4_connections_lost", lost, 0, "connections", "0", lost == 0, ratio=0)
        figure("P4_relay_cpu_total", cpu_pct, 0, "pct_of_core", "<1%", cpu_pct < 1.0, ratio=0)
        figure("P4_relay_wakeups", wakeups * 60.0 / elapsed, 0, "per_min_total", "none", True, ratio=0)
        note("soak: %d children, %d -> %d connections, %.0f s, broker log 'missed heartbeats': %d"
             % (len(relays), len(conns0), len(conns1), elapsed, missed))
        rss = [rss_kib(p) for p in relays]
        note("soak: child RSS median %d KiB" % sorted(rss)[len(rss) // 2])
    finally:
        try:
            h.stop(strict=False)
        finally:
            node.stop()


# ------------------------------------------------------------------ main

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["p3", "p5", "soak"])
    ap.add_argument("--workdir", help="scratch dir (default: REPO/tmp/bench-<pid>, removed after)")
    ap.add_argument("--window", type=float, default=None, help="idle measuring window in seconds")
    ap.add_argument("--sweep", default="1,2,8", help="p3: idle connection counts of the sweep")
    ap.add_argument("--sweep-only", action="store_true", help="p3: only the connection sweep")
    ap.add_argument("--idle0", type=float, default=20.0, help="p3: window with 0 connections")
    ap.add_argument("--interval", type=int, default=5, help="AMQPHeartbeatInterval")
    ap.add_argument("--threshold", type=int, default=10, help="p5: oslo heartbeat_timeout_threshold")
    ap.add_argument("--children", type=int, default=256, help="soak: prefork children")
    ap.add_argument("--minutes", type=float, default=10.0, help="soak: idle minutes")
    args = ap.parse_args()
    if args.window is None:
        args.window = 90.0 if args.what == "p5" else 60.0
    own = args.workdir is None
    if own:
        args.workdir = os.path.join(REPO, "tmp", "bench-%s-%d" % (args.what, os.getpid()))
    os.makedirs(args.workdir, exist_ok=True)
    os.chmod(args.workdir, 0o755)
    # httpd maps a private copy: `make` rewrites target/mod_amqp_heartbeat.so
    # in place, which crashes every running child that has it mapped.
    private = os.path.join(args.workdir, "mod_amqp_heartbeat.so")
    shutil.copyfile(harness.httpd.module_path(), private)
    os.chmod(private, 0o755)
    harness.httpd.MODULE_SO = private
    ok = False
    try:
        {"p3": p3, "p5": p5, "soak": soak}[args.what](args)
        ok = True
    finally:
        left = procs.kill_leftovers(args.workdir)
        if left:
            print("httpd_bench: killed leftovers %s" % left, file=sys.stderr)
        if own and ok:
            shutil.rmtree(args.workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
