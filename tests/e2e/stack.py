"""What the end-to-end tests and the demo share: the vhost config that
serves the apps in tests/e2e/apps, and ways to look at the broker (its
connections with the client-provided name, its log of closed connections)
and at the sockets of httpd children.

Standard library plus tests/harness; run with Debian's /usr/bin/python3.
"""

import datetime
import glob
import json
import os
import re
import signal
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

E2E = os.path.dirname(os.path.abspath(__file__))
APPS = os.path.join(E2E, "apps")

# The relay's upstream heartbeat in every test (AMQPHeartbeatInterval).
RELAY_INTERVAL = 2
# The client heartbeat of the direct controls: RabbitMQ closes such a
# connection after about 3 x this when the client is silent.
DIRECT_HEARTBEAT = 4


# Measured figures, printed at the end of a pytest run (conftest.py).
MEASUREMENTS = []


def measure(line):
    MEASUREMENTS.append(line)


# ---------------------------------------------------------------- config

def directory_block():
    return "<Directory %s>\n    Require all granted\n</Directory>\n" % APPS


def vhost(name, app, setenv=None, group=None, module=None, daemon=None):
    """A name-based <VirtualHost *:@PORT@> (ServerName NAME) serving
    apps/APP with mod_wsgi, embedded or in WSGIProcessGroup `daemon`.
    setenv: SetEnv for the app. group: WSGIApplicationGroup. module: the
    AMQPHeartbeat* lines (None: the module is off for this vhost)."""
    lines = ["<VirtualHost *:@PORT@>", "    ServerName %s.e2e" % name,
             "    WSGIScriptAlias / %s" % os.path.join(APPS, app)]
    if group:
        lines.append("    WSGIApplicationGroup %s" % group)
    if daemon:
        lines.append("    WSGIProcessGroup %s" % daemon)
    for k, v in (setenv or {}).items():
        lines.append("    SetEnv %s %s" % (k, v))
    for line in module or ():
        lines.append("    " + line)
    lines.append("</VirtualHost>")
    return "\n".join(lines) + "\n"


def default_vhost():
    """First vhost: what a request with an unknown Host gets."""
    return vhost("default", "oslo_app.wsgi", {"E2E_VARIANT": "default"})


def module_lines(broker_url, env_name, scheme, interval=RELAY_INTERVAL):
    return ["AMQPHeartbeatBroker %s" % broker_url,
            "AMQPHeartbeatInterval %d" % interval,
            "AMQPHeartbeatEnv %s %s" % (env_name, scheme)]


def write_oslo_conf(path, heartbeat, transport_url=None, extra=""):
    """An oslo.config file. transport_url None: the app must find it in
    the environment (OS_DEFAULT__TRANSPORT_URL, published by the module)."""
    text = "[DEFAULT]\n"
    if transport_url:
        text += "transport_url = %s\n" % transport_url.replace("amqp://", "rabbit://", 1)
    text += "[oslo_messaging_rabbit]\nheartbeat_timeout_threshold = %d\n" % heartbeat
    text += extra
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o644)
    return path


def oslo_vhost(name, data_dir, conf, direct, group=None, broker_url=None, notify_retry=None, daemon=None):
    """The oslo app: direct (transport_url in its config file, env ignored)
    or through the module (transport_url from OS_DEFAULT__TRANSPORT_URL);
    daemon: its WSGIProcessGroup."""
    setenv = {"E2E_VARIANT": name, "E2E_OSLO_CONF": conf, "E2E_OSLO_ENV": "0" if direct else "1",
              "E2E_LOG": os.path.join(data_dir, "app.log")}
    if notify_retry is not None:
        setenv["E2E_NOTIFY_RETRY"] = str(notify_retry)
    module = None if direct else module_lines(broker_url, "OS_DEFAULT__TRANSPORT_URL", "rabbit")
    return vhost(name, "oslo_app.wsgi", setenv, group, module, daemon)


def kombu_vhost(name, data_dir, direct, broker_url, group=None):
    """The kombu app: direct (heartbeat 4 with a green heartbeat loop) or
    through the module (heartbeat 0, URL from AMQP_HEARTBEAT_URL)."""
    setenv = {"E2E_VARIANT": name, "E2E_LOG": os.path.join(data_dir, "app.log")}
    if direct:
        setenv.update(E2E_KOMBU_URL=broker_url, E2E_HEARTBEAT=str(DIRECT_HEARTBEAT))
        module = None
    else:
        setenv.update(E2E_KOMBU_URL_ENV="AMQP_HEARTBEAT_URL", E2E_HEARTBEAT="0")
        module = module_lines(broker_url, "AMQP_HEARTBEAT_URL", "amqp")
    return vhost(name, "kombu_app.wsgi", setenv, group, module)


# ---------------------------------------------------------------- HTTP

def get_json(httpd, path, host, timeout=120.0):
    """GET path on httpd (an Httpd, or a base URL) with Host: host ->
    (status, decoded JSON or {'error': text})."""
    base = httpd if isinstance(httpd, str) else httpd.base_url
    req = urllib.request.Request(base + path, headers={"Host": host})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout) as resp:
            status, text = resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode(errors="replace")
    try:
        return status, json.loads(text)
    except ValueError:
        return status, {"error": text[:2000]}


def hit_all(httpd, path, host, n, timeout=120.0):
    """Concurrent GETs until n distinct pids answered (path should hold
    the request a little, so one process cannot take the whole batch):
    {pid: answer}. Any non-200 answer fails."""
    seen = {}
    deadline = time.time() + timeout
    with ThreadPoolExecutor(n) as pool:
        while len(seen) < n:
            assert time.time() < deadline, "only pids %s answered %s" % (sorted(seen), host)
            for status, body in pool.map(lambda _: get_json(httpd, path, host), range(n)):
                base = httpd if isinstance(httpd, str) else httpd.error_log_tail()
                assert status == 200, "%s: %s\n%s" % (host, body, base)
                seen.setdefault(body["pid"], body)
    return seen


# ---------------------------------------------------------------- broker

def connections(node):
    """The broker's connections: dicts with name, peer_port, timeout (the
    negotiated heartbeat), state, connected_at (ms) and connection_name
    (the client-provided name, or None)."""
    return node.list_connections()


_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)\+00:00 \[(\w+)\] (<[\d.]+>) (.*)$")
_CLOSING = re.compile(r"closing AMQP connection <[\d.]+> \(127\.0\.0\.1:(\d+) -> [^ ]+?(?: - ([^,)]*))?"
                      r"(?:, vhost: '[^']*', user: '[^']*')?\)(:?)\s*$")


def log_time(stamp):
    """'2026-11-26 15:22:19.808795' (UTC) -> epoch seconds."""
    return datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f").replace(
        tzinfo=datetime.timezone.utc).timestamp()


def closes(node):
    """Every "closing AMQP connection" of the broker log: dicts with time
    (epoch), level, peer_port, name and reason (None for a close the client
    asked for; else the broker's reason, e.g. "missed heartbeats from
    client, timeout: 4s" or "client unexpectedly closed TCP connection")."""
    out = []
    lines = node.log_text().splitlines()
    for i, line in enumerate(lines):
        m = _LOG_LINE.match(line)
        if not m:
            continue
        c = _CLOSING.search(m.group(4))
        if not c:
            continue
        reason = None
        if c.group(3) == ":" and i + 1 < len(lines):
            n = _LOG_LINE.match(lines[i + 1])
            if n and n.group(3) == m.group(3):
                reason = n.group(4).strip()
        out.append({"time": log_time(m.group(1)), "level": m.group(2), "peer_port": int(c.group(1)),
                    "name": c.group(2), "reason": reason})
    return out


def close_in(entries, peer_port):
    """The last entry of closes() for the connection from peer_port, or
    None."""
    found = [c for c in entries if c["peer_port"] == peer_port]
    return found[-1] if found else None


def close_of(node, peer_port):
    """The broker's log entry for the close of the connection from
    peer_port (the last one), or None."""
    return close_in(closes(node), peer_port)


# ---------------------------------------------------------------- sockets

def _tcp_inodes():
    """{inode: (local_port, remote_port, state)} of IPv4 TCP sockets."""
    out = {}
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    local, remote, state, inode = parts[1], parts[2], parts[3], int(parts[9])
                    out[inode] = (int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16),
                                  int(state, 16))
        except FileNotFoundError:
            pass
    return out


def socket_owners(pids):
    """{local_port: pid} for the TCP sockets held by pids (any state)."""
    inodes = _tcp_inodes()
    out = {}
    for pid in pids:
        for fd in glob.glob("/proc/%d/fd/*" % pid):
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                ino = int(target[8:-1])
                if ino in inodes:
                    out[inodes[ino][0]] = pid
    return out


# ---------------------------------------------------------------- waiting

class Timeline:
    """Polls the broker's connections; remembers, per peer port, when it
    was first and last seen, so a test can say when a connection went."""

    def __init__(self, node):
        self.node = node
        self.seen = {}     # peer_port -> {'first', 'last', 'row'}
        self.polls = []    # (time, set of peer ports)

    def poll(self):
        now = time.time()
        rows = connections(self.node)
        ports = set()
        for r in rows:
            p = r["peer_port"]
            ports.add(p)
            s = self.seen.setdefault(p, {"first": now, "row": r, "names": {}})
            s["last"] = now
            s["row"] = r
            s["names"][now] = r["connection_name"]
        self.polls.append((now, ports))
        return rows

    def present_throughout(self, port, since, until):
        """True when every poll in [since, until] saw port."""
        polls = [ps for t, ps in self.polls if since <= t <= until]
        return bool(polls) and all(port in ps for ps in polls)

    def gone_after(self, port):
        """Time of the first poll that no longer saw port (after it was
        seen), or None."""
        seen = False
        for t, ps in self.polls:
            if port in ps:
                seen = True
            elif seen:
                return t
        return None


# After a SIGKILL: how long the other upstreams are watched, and the bound
# for the victim's to go (the kernel closes its sockets; the broker sees the
# FIN at once unless the machine is very busy).
KILL_WATCH = 6
KILL_BOUND = 20


class KillWatch:
    """SIGKILL `pid` and watch the broker's connections for at least
    KILL_WATCH s, and until `victim_ports` are gone (at most KILL_BOUND s)."""

    def __init__(self, node, pid, victim_ports):
        self.pid = pid
        self.victim_ports = set(victim_ports)
        os.kill(pid, signal.SIGKILL)
        self.killed_at = time.time()
        self.polls = []    # (time, set of peer ports)
        while True:
            ports = {r["peer_port"] for r in connections(node)}
            self.polls.append((time.time(), ports))
            waited = time.time() - self.killed_at
            if waited >= KILL_BOUND or (waited >= KILL_WATCH and not self.victim_ports & ports):
                return
            time.sleep(0.5)

    def check(self, others):
        """Assert: the victim's upstreams went, none of `others` did."""
        last_t, last = self.polls[-1]
        assert not self.victim_ports & last, "%d's upstreams %s are still open after %.0f s" % (
            self.pid, self.victim_ports & last, last_t - self.killed_at)
        for t, ports in self.polls:
            assert set(others) <= ports, "after killing %d, %s went too (+%.1f s)" % (
                self.pid, set(others) - ports, t - self.killed_at)


def wait_until(deadline, step, poll):
    """Call poll() every `step` s until time.time() >= deadline."""
    while True:
        poll()
        left = deadline - time.time()
        if left <= 0:
            return
        time.sleep(min(step, left))
