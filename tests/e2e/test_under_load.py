"""httpd graceful restart and stop under load: a client publishing without
pause through the relays, with publisher confirms (apps/publish_app.wsgi).

One prefork httpd (SERVERS children) serves the app; CLIENTS threads keep
requesting /publish (PER_REQUEST persistent messages to a durable queue,
each waited for; the app records an id only after the broker's ack).
After a few seconds `apache2 -k graceful` replaces every child while the
load goes on; a few seconds later httpd is stopped (SIGTERM: the last
children die mid-request). Then:

- nothing confirmed is lost: every id an app recorded as confirmed is in
  the queue, read directly from the broker (ids published but unconfirmed,
  cut by the stop, may or may not be there; nothing is there twice or
  without having been published);
- upstreams close with Connection.Close: every broker connection the apps
  opened through the relays (found in the broker log by the client-provided
  name the app sets, which the relay passes through) ends with a
  client-initiated close, never "client unexpectedly closed TCP
  connection", "missed heartbeats" or a connection error; the set includes
  connections of the old children (graceful) and of the last ones (stop);
- no child hangs: the old children exit soon after graceful; at the stop
  every child's relay thread stops cleanly within a second of the SIGTERM;
  no child needs a SIGKILL (httpd's or the harness's) unless it is caught
  in mod_wsgi's own deadlock (below); nothing is left running; the error
  log shows no module error or panic.

mod_wsgi's deadlock: prefork runs the child's exit (its pool cleanups) in
the SIGTERM handler, on the thread that was running the request. When the
signal lands while Python holds the GIL, mod_wsgi's cleanup (after the
relay's, which the module registers to run first) waits for the GIL
forever, and httpd SIGKILLs the child ~8 s later. It happens without the
module too (the app connecting to the broker directly), so the test does
not blame the module for it, but only with evidence: the child's only
thread (the relay's is gone) sleeps on a futex inside libpython, which no
one else can ever wake. Any other child that does not exit fails the test.
"""

import datetime
import os
import re
import threading
import time
import types
import urllib.parse

import amqp

from harness import procs
from harness.httpd import Httpd

import stack

SERVERS = 3
CLIENTS = 4
PER_REQUEST = 20
HOST = "publish.e2e"
URL_ENV = "E2E_PUBLISH_AMQP_URL"
# Seconds of load before graceful, and between the new children serving
# and the stop.
LOAD_BEFORE_GRACEFUL = 3.0
LOAD_BEFORE_STOP = 3.0
# An old child finishes its request (PER_REQUEST confirmed publishes, well
# under a second) and its relay closes upstream within a second.
GRACEFUL_EXIT = 10.0
NEW_CHILDREN_SERVE = 15.0
STOP_LIMIT = 10.0
# A run with less than this many confirmed messages did not load anything.
MIN_CONFIRMED = 200
CLIENT_TIMEOUT = 15.0
# A relay that outlived its stop, a module error, a panic.
MODULE_ERROR_RX = r"relay thread did not stop|\[amqp_heartbeat:(error|crit|alert|emerg)\]|panick"
# httpd had to signal a child again, or SIGKILL it.
HTTPD_HANG_RX = re.compile(r"AH0004[56]: child process (\d+) still did not exit")
STOPPED_RX = r"\[amqp_heartbeat:\w+\].*relay thread stopped cleanly"
# The relay's grace at child exit is 0.9 s; the log line follows it.
RELAY_STOP_LIMIT = 1.5
# A child still there this long after the SIGTERM is looked at (its relay
# stopped by then; Python's finalization takes well under a second).
EXIT_WATCH_AFTER = 2.0
# Broker log lines of a connection that did not end with the client's
# Connection.Close.
UNCLEAN_RX = re.compile(r"Error on AMQP connection|unexpectedly closed|missed heartbeats|"
                        r"connection_forced|frame_error|unexpected_frame|syntax_error")


class Load:
    """CLIENTS threads requesting /publish until finish()."""

    def __init__(self, h):
        self.h = h
        self.stopping = threading.Event()
        self.answers = []    # (time, status, body)
        self.failures = []   # (time, repr): refused or reset while httpd restarts or stops
        self.threads = [threading.Thread(target=self._run, name="load-%d" % i, daemon=True)
                        for i in range(CLIENTS)]

    def _run(self):
        while not self.stopping.is_set():
            try:
                status, body = stack.get_json(self.h, "/publish?n=%d" % PER_REQUEST, HOST,
                                              timeout=CLIENT_TIMEOUT)
                self.answers.append((time.time(), status, body))
            except Exception as e:
                self.failures.append((time.time(), repr(e)))
                time.sleep(0.05)   # httpd down: do not spin

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def finish(self):
        self.stopping.set()
        for t in self.threads:
            t.join(CLIENT_TIMEOUT + 5)
        return [t.name for t in self.threads if t.is_alive()]


def _libpython_ranges(pid):
    """[(start, end)] of pid's memory mappings of libpython."""
    out = []
    with open("/proc/%d/maps" % pid) as f:
        for line in f:
            parts = line.split()
            if len(parts) > 5 and "/libpython3" in parts[5]:
                start, end = (int(x, 16) for x in parts[0].split("-"))
                out.append((start, end))
    return out


def exit_state(pid):
    """What an exiting child is doing: 'gone'; 'gil-wait' (its only
    thread sleeps on a futex inside libpython: the GIL, held by the request
    its SIGTERM handler interrupted); 'running'; or a description."""
    try:
        tids = os.listdir("/proc/%d/task" % pid)
        if not procs.alive(pid):
            return "gone"
        if len(tids) != 1:
            return "%d threads" % len(tids)
        ranges = _libpython_ranges(pid)
        with open("/proc/%d/task/%s/syscall" % (pid, tids[0])) as f:
            fields = f.read().split()
    except (FileNotFoundError, ProcessLookupError):
        return "gone"
    if fields and fields[0] == "running":
        return "running"   # between two waits of its GIL loop (every 5 ms)
    if len(fields) >= 2 and fields[0] != "-1":
        addr = int(fields[1], 16)
        if any(a <= addr < b for a, b in ranges):
            return "gil-wait"
        return "in syscall %s (first argument %#x, not in libpython)" % (fields[0], addr)
    return "syscall %s" % " ".join(fields)


class ExitWatch:
    """Samples exit_state() of pids from EXIT_WATCH_AFTER s after start()
    until finish(): a child caught in mod_wsgi's GIL deadlock shows up as
    'gil-wait' (and 'running') only."""

    def __init__(self, pids):
        self.pids = list(pids)
        self.samples = {p: [] for p in self.pids}
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="exit-watch", daemon=True)

    def _run(self):
        if self.stopping.wait(EXIT_WATCH_AFTER):
            return
        while not self.stopping.is_set():
            for p in self.pids:
                state = exit_state(p)
                if state != "gone":
                    self.samples[p].append(state)
            time.sleep(0.1)

    def start(self):
        self.thread.start()
        return self

    def finish(self):
        self.stopping.set()
        self.thread.join(5)

    def gil_deadlocked(self):
        """Pids seen only waiting for the GIL (or between two waits)."""
        return sorted(p for p, states in self.samples.items()
                      if states.count("gil-wait") >= 2 and set(states) <= {"gil-wait", "running"})


def log_time(line):
    """Epoch seconds of an error log line (httpd logs local time)."""
    stamp = line[1:line.index("]")]
    return datetime.datetime.strptime(stamp, "%a %b %d %H:%M:%S.%f %Y").timestamp()


def read_ids(data_dir, kind):
    """Every id the apps wrote to KIND-PID.log ('published' or 'confirmed'),
    in file order."""
    out = []
    for name in sorted(os.listdir(data_dir)):
        if name.startswith(kind + "-") and name.endswith(".log"):
            with open(os.path.join(data_dir, name)) as f:
                out += f.read().splitlines()
    return out


def pid_of(msg_id):
    return int(msg_id.split("-")[0])


def wait_confirmed(data_dir, pids, n, timeout):
    """Wait until the apps of pids recorded n confirmed messages."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(1 for i in read_ids(data_dir, "confirmed") if pid_of(i) in pids) >= n:
            return True
        time.sleep(0.1)
    return False


def drain(node, queue):
    """Every message body in the queue, read directly from the broker (not
    through a relay), then the queue is deleted."""
    url = urllib.parse.urlsplit(node.url)
    conn = amqp.Connection(host="127.0.0.1:%d" % url.port, userid="guest", password="guest",
                           virtual_host="/", connect_timeout=10)
    conn.connect()
    try:
        chan = conn.channel()
        bodies = []
        while True:
            msg = chan.basic_get(queue, no_ack=True)
            if msg is None:
                break
            bodies.append(msg.body.decode() if isinstance(msg.body, bytes) else msg.body)
        chan.queue_delete(queue)
        return bodies
    finally:
        conn.close()


def upstreams_in_log(node, prefix):
    """{(peer port, connection name): [broker log lines]} of every broker
    connection whose client-provided name starts with prefix (the broker
    puts "127.0.0.1:PORT -> ADDR - NAME" in every line about a named
    connection, including a connection error)."""
    rx = re.compile(r"\(127\.0\.0\.1:(\d+) -> [^ ]+ - (%s-\d+-\d+)[,)]" % re.escape(prefix))
    out = {}
    lines = node.log_text().splitlines()
    for i, line in enumerate(lines):
        m = rx.search(line)
        if m:
            entry = out.setdefault((int(m.group(1)), m.group(2)), [])
            entry.append(line)
            # A closing or error line ending with ':' has its reason on the
            # next line.
            if line.endswith(":") and i + 1 < len(lines):
                entry.append(lines[i + 1])
    return out


def name_pid(name):
    """PREFIX-PID-N -> PID."""
    return int(name.rsplit("-", 2)[1])


def run_scenario(rabbit, module_dir):
    s = types.SimpleNamespace(node=rabbit)
    # Unique in the shared broker (other scenarios run at the same time).
    s.queue = "e2e-under-load-publish-%d" % os.getpid()
    s.conn_prefix = "e2e-load-%d" % os.getpid()
    workdir = os.path.join(module_dir, "httpd")
    s.data = os.path.join(workdir, "data")   # Httpd makes it www-data's
    setenv = {"E2E_URL_ENV": URL_ENV, "E2E_QUEUE": s.queue, "E2E_DATA": s.data,
              "E2E_CONN_NAME": s.conn_prefix}
    body = (stack.directory_block() + stack.default_vhost()
            + stack.vhost("publish", "publish_app.wsgi", setenv,
                          module=stack.module_lines(rabbit.url, URL_ENV, "amqp")))
    h = Httpd(workdir, body, servers=SERVERS, wsgi=True, amqp=True)
    s.httpd = h
    h.start()
    s.parent = h.parent_pid
    load = Load(h)
    try:
        s.old = sorted(h.children())
        load.start()
        s.loaded_old = wait_confirmed(s.data, set(s.old), 1, NEW_CHILDREN_SERVE)
        time.sleep(LOAD_BEFORE_GRACEFUL)
        s.seen_before_graceful = stack.connections(rabbit)

        s.graceful_at = time.time()
        t0 = time.monotonic()
        h.graceful()
        s.graceful_left = procs.wait_gone(s.old, GRACEFUL_EXIT)
        s.graceful_seconds = time.monotonic() - t0
        s.new = sorted(h.wait_children(exclude=s.old))
        s.loaded_new = wait_confirmed(s.data, set(s.new), 1, NEW_CHILDREN_SERVE)
        time.sleep(LOAD_BEFORE_STOP)
        s.seen_before_stop = stack.connections(rabbit)
        s.last = sorted(h.children())

        # While the clients keep publishing.
        watch = ExitWatch(s.last).start()
        s.stop_at = time.time()
        try:
            s.stop_report = h.stop(strict=False)
        finally:
            watch.finish()
        s.exit_samples = watch.samples
        s.gil_deadlocked = watch.gil_deadlocked()
        s.left = [p for p in s.old + s.last + [s.parent] if procs.alive(p)]
        s.leftovers = procs.leftovers(workdir)
    finally:
        s.load_stuck = load.finish()
        if h.parent_pid:
            h.stop(strict=False)
    s.answers, s.failures = load.answers, load.failures
    s.module_error_lines = h.log_lines(MODULE_ERROR_RX)
    s.httpd_hung = sorted({int(m.group(1)) for m in map(HTTPD_HANG_RX.search, h.error_log().splitlines()) if m})
    s.python_aborts = len(h.log_lines(r"Fatal Python error"))
    s.relay_stopped = {p: [log_time(ln) for ln in h.log_lines(STOPPED_RX, pid=p)] for p in s.old + s.last}
    s.error_tail = h.error_log_tail(40)

    s.published = read_ids(s.data, "published")
    s.confirmed = read_ids(s.data, "confirmed")
    s.queued = drain(rabbit, s.queue)

    # The broker logs a close once it has handled it: give it a moment.
    deadline = time.monotonic() + 10
    while True:
        s.upstreams = upstreams_in_log(rabbit, s.conn_prefix)
        closes = [c for c in stack.closes(rabbit) if (c["name"] or "").startswith(s.conn_prefix)]
        s.closes = {key: [c for c in closes if (c["peer_port"], c["name"]) == key] for key in s.upstreams}
        if all(s.closes.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.5)

    confirmed, queued = set(s.confirmed), set(s.queued)
    by_pid = {}
    for i in s.confirmed:
        by_pid[pid_of(i)] = by_pid.get(pid_of(i), 0) + 1
    stack.measure(
        "under load (publish_app): %d confirmed (%d by old children, %d by the last), %d in the queue "
        "(%d published but unconfirmed there, %d lost); %d requests, %d refused/reset, %d app errors; "
        "graceful: old children gone in %.2fs; stop %.2fs (killed %s); %d upstreams in the broker log "
        "(%d of old children, %d of the last), closes: %s; at the stop: %d child(ren) in mod_wsgi's GIL "
        "deadlock %s, %d 'Fatal Python error' abort(s)" % (
            len(confirmed), sum(n for p, n in by_pid.items() if p in s.old),
            sum(n for p, n in by_pid.items() if p in s.last), len(s.queued), len(queued - confirmed),
            len(confirmed - queued), len(s.answers), len(s.failures),
            sum(a[2].get("errors", 0) for a in s.answers), s.graceful_seconds, s.stop_report["seconds"],
            s.stop_report["killed"], len(s.upstreams),
            sum(1 for _, n in s.upstreams if name_pid(n) in s.old),
            sum(1 for _, n in s.upstreams if name_pid(n) in s.last),
            sorted(set(str(c[-1]["reason"]) if c else "none logged" for c in s.closes.values())),
            len(s.gil_deadlocked), s.gil_deadlocked, s.python_aborts))
    return s


def test_load_ran_through_graceful_and_stop(scenario):
    s = scenario
    assert s.loaded_old, "the old children confirmed nothing\n%s" % s.error_tail
    assert s.loaded_new, "the new children confirmed nothing after graceful\n%s" % s.error_tail
    assert len(s.confirmed) > MIN_CONFIRMED, "only %d confirmed\n%s" % (len(s.confirmed), s.error_tail)
    pids = {pid_of(i) for i in s.confirmed}
    # Before the graceful restart (old children) and after it (new ones).
    assert pids & set(s.old), (sorted(pids), s.old)
    assert pids & set(s.last), (sorted(pids), s.last)
    # The load really was on when httpd stopped: requests answered within
    # the last LOAD_BEFORE_STOP seconds.
    assert any(t > s.stop_at - LOAD_BEFORE_STOP and st == 200 and b.get("confirmed")
               for t, st, b in s.answers), "no confirmed request right before the stop"
    assert not s.load_stuck, "client threads still waiting: %s" % s.load_stuck


def test_nothing_confirmed_is_lost(scenario):
    s = scenario
    queued = set(s.queued)
    missing = [i for i in s.confirmed if i not in queued]
    assert not missing, "%d of %d confirmed messages are not in the queue %s, e.g. %s" % (
        len(missing), len(s.confirmed), s.queue, missing[:5])
    assert len(s.confirmed) == len(set(s.confirmed)), "an id was confirmed twice"
    # Nothing is there twice (the relay passes frames once) or without
    # having been published (nor garbled).
    assert len(s.queued) == len(queued), "%d duplicates in the queue" % (len(s.queued) - len(queued))
    strays = sorted(queued - set(s.published))
    assert not strays, "in the queue but never published: %s" % strays[:5]


def test_upstreams_close_with_connection_close(scenario):
    s = scenario
    assert s.upstreams, "no upstream named %s-* in the broker log" % s.conn_prefix
    pids = {name_pid(n) for _, n in s.upstreams}
    # Closed by graceful and closed by the stop.
    assert pids & set(s.old), "no upstream of the old children %s in the broker log" % s.old
    assert pids & set(s.last), "no upstream of the last children %s in the broker log" % s.last
    # What the broker listed live is in the log too (the parse misses none).
    live = {(r["peer_port"], r["connection_name"]) for r in s.seen_before_graceful + s.seen_before_stop
            if (r["connection_name"] or "").startswith(s.conn_prefix)}
    assert live, "the broker listed no connection named %s-* during the load" % s.conn_prefix
    assert live <= set(s.upstreams), sorted(live - set(s.upstreams))
    for (port, name), lines in sorted(s.upstreams.items()):
        unclean = [ln for ln in lines if UNCLEAN_RX.search(ln)]
        assert not unclean, "upstream %s (port %d) did not end cleanly:\n%s" % (name, port, "\n".join(lines))
        closes = s.closes[(port, name)]
        assert closes, "the broker logged no close for upstream %s (port %d):\n%s" % (
            name, port, "\n".join(lines))
        # reason None: the client (the relay) asked, with Connection.Close.
        assert closes[-1]["reason"] is None, "upstream %s (port %d): %s" % (name, port, closes[-1])


def test_no_child_hangs(scenario):
    s = scenario
    assert not s.graceful_left, "old children still running %.0f s after graceful: %s" % (
        GRACEFUL_EXIT, procs.describe(s.graceful_left))
    # The module's part of every child's exit: the relay stopped, promptly.
    for pid in s.old:
        assert s.relay_stopped[pid], "no clean relay stop logged by old child %d\n%s" % (pid, s.error_tail)
    for pid in s.last:
        stops = [t - s.stop_at for t in s.relay_stopped[pid] if t >= s.stop_at - 1]
        assert stops, "no clean relay stop logged by child %d after the stop\n%s" % (pid, s.error_tail)
        assert stops[0] < RELAY_STOP_LIMIT, "child %d: relay stopped %.1f s after the SIGTERM" % (pid, stops[0])
    assert not s.module_error_lines, "\n".join(s.module_error_lines)
    # Children httpd or the harness had to kill: only mod_wsgi's deadlock.
    excused = set(s.gil_deadlocked)
    unexplained = sorted(set(s.httpd_hung) - excused)
    assert not unexplained, "children %s did not exit on SIGTERM: %s\n%s" % (
        unexplained, {p: s.exit_samples.get(p) for p in unexplained}, s.error_tail)
    allowed = excused | ({s.parent} if excused else set())
    killed = [k for k in s.stop_report["killed"] if k[0] not in allowed]
    assert not killed, "SIGKILLed by the harness: %s (states %s)" % (
        killed, {k[0]: s.exit_samples.get(k[0]) for k in killed})
    if not excused:
        assert s.stop_report["seconds"] < STOP_LIMIT, s.stop_report
    assert not s.left, procs.describe(s.left)
    assert not s.leftovers, procs.describe(s.leftovers)
