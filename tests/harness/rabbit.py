"""A private RabbitMQ node on loopback, from Debian's rabbitmq-server.

Everything is private to the node's work dir and on 127.0.0.1: node name,
AMQP / TLS / distribution / epmd ports, mnesia and log dirs, config files,
HOME with its own .erlang.cookie. The system service is never used.

    with RabbitNode(workdir, tls=True, heartbeat=4) as node:
        node.url, node.amqp_port, node.tls_port, node.ca_path
        node.list_connections(); node.kill(); node.restart()

CLI for tests not written in Python (the Rust relay tests):

    python3 tests/harness/rabbit.py start WORKDIR [--tls] [--heartbeat N]
        -> one JSON line: nodename, amqp_port, tls_port, ca_path, beam_pid,
           url, workdir; the node keeps running after the command exits.
    python3 tests/harness/rabbit.py stop WORKDIR
    python3 tests/harness/rabbit.py ctl WORKDIR ARGS...     (rabbitmqctl)
    python3 tests/harness/rabbit.py connections WORKDIR     (JSON list)
    python3 tests/harness/rabbit.py kill|sigstop|sigcont|restart|info WORKDIR

What stop needs is kept in WORKDIR/node.json.
"""

import glob
import itertools
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time

if __package__ in (None, ""):
    # Run as a script: make the `harness` package importable.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from harness import certs, ports, procs  # noqa: E402
from harness.broker_probe import ConnectionProbe, ProbeError  # noqa: E402

START_TIMEOUT = 60.0
_counter = itertools.count(1)


def _sbin():
    found = sorted(glob.glob("/usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin"))
    if not found:
        raise RabbitError("rabbitmq-server is not installed (no /usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin); "
                          "run scripts/install-deps.sh")
    return found[-1]


class RabbitError(Exception):
    pass


class RabbitNode:
    """One private RabbitMQ node. `tls=True` adds a TLS listener with a test
    CA (ca_path); `heartbeat=N` sets the server-suggested heartbeat."""

    def __init__(self, workdir, name=None, tls=None, heartbeat=None, _state=None):
        self.workdir = os.path.abspath(workdir)
        self._probe = None
        self._probe_lock = threading.Lock()
        if _state is not None:
            self.__dict__.update(_state)
            self._proc = None
            return
        if name is None:
            name = "amqphb-%d-%d" % (os.getpid(), next(_counter))
        self.nodename = name if "@" in name else name + "@localhost"
        self.tls = bool(tls)
        self.heartbeat = heartbeat
        self.amqp_port, self.dist_port, self.epmd_port = ports.free_ports(3)
        self.tls_port = ports.free_port() if self.tls else None
        self.ca_path = None
        self.beam_pid = None
        self.wrapper_pid = None
        self.start_seconds = None
        self._proc = None

    # ------------------------------------------------------------ paths/env
    def _p(self, *parts):
        return os.path.join(self.workdir, *parts)

    @property
    def url(self):
        return "amqp://guest:guest@127.0.0.1:%d/" % self.amqp_port

    @property
    def tls_url(self):
        return None if self.tls_port is None else "amqps://guest:guest@localhost:%d/" % self.tls_port

    @property
    def log_path(self):
        return self._p("log", self.nodename + ".log")

    def _env(self):
        loopback = "-kernel inet_dist_use_interface {127,0,0,1}"
        return {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "HOME": self._p("home"),
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_MNESIA_BASE": self._p("mnesia"),
            "RABBITMQ_LOG_BASE": self._p("log"),
            "RABBITMQ_CONFIG_FILE": self._p("rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": self._p("advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": self._p("enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": self._p("rabbitmq-env.conf"),
            "RABBITMQ_PID_FILE": self._p("rabbit.pid"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": loopback,
            # The CLI is an Erlang node too: loopback, any free port (the
            # default range 35672..35682 would collide between nodes).
            "RABBITMQ_CTL_ERL_ARGS": loopback,
            "RABBITMQ_CTL_DIST_PORT_MIN": "0",
            "RABBITMQ_CTL_DIST_PORT_MAX": "0",
        }

    def _write_files(self):
        for d in ("home", "mnesia", "log"):
            os.makedirs(self._p(d), exist_ok=True)
        cookie = self._p("home", ".erlang.cookie")
        if not os.path.exists(cookie):
            with open(cookie, "w") as f:
                f.write("amqphb" + secrets.token_hex(16))
            os.chmod(cookie, 0o400)
        open(self._p("rabbitmq-env.conf"), "w").close()
        for f in ("advanced.config", "enabled_plugins"):
            with open(self._p(f), "w") as fh:
                fh.write("[].\n")
        conf = [
            "listeners.tcp.default = 127.0.0.1:%d" % self.amqp_port,
            "loopback_users.guest = true",
            "log.file.level = info",
            "log.console = false",
        ]
        if self.heartbeat is not None:
            conf.append("heartbeat = %d" % int(self.heartbeat))
        if self.tls:
            pki = certs.make_pki(self._p("pki"))
            self.ca_path = pki["ca"]
            conf += [
                "listeners.ssl.default = 127.0.0.1:%d" % self.tls_port,
                "ssl_options.cacertfile = %s" % pki["ca"],
                "ssl_options.certfile = %s" % pki["cert"],
                "ssl_options.keyfile = %s" % pki["key"],
                "ssl_options.verify = verify_none",
                "ssl_options.fail_if_no_peer_cert = false",
            ]
        with open(self._p("rabbitmq.conf"), "w") as f:
            f.write("\n".join(conf) + "\n")

    def _save(self):
        state = {k: v for k, v in self.__dict__.items() if not k.startswith("_")}
        tmp = self._p("node.json.tmp")
        with open(tmp, "w") as f:
            json.dump(state, f, indent=1)
        os.replace(tmp, self._p("node.json"))

    @classmethod
    def from_workdir(cls, workdir):
        """The node described by WORKDIR/node.json (written by start)."""
        path = os.path.join(os.path.abspath(workdir), "node.json")
        try:
            with open(path) as f:
                state = json.load(f)
        except FileNotFoundError:
            raise RabbitError("%s not found: no node was started in %s" % (path, workdir)) from None
        state.pop("workdir", None)
        return cls(workdir, _state=state)

    def info(self):
        return {"nodename": self.nodename, "amqp_port": self.amqp_port, "tls_port": self.tls_port,
                "ca_path": self.ca_path, "beam_pid": self.beam_pid, "url": self.url,
                "tls_url": self.tls_url, "workdir": self.workdir, "log_path": self.log_path,
                "start_seconds": self.start_seconds}

    # ------------------------------------------------------------ lifecycle
    def start(self, timeout=START_TIMEOUT):
        """Start the node and wait until it is fully booted. On the first
        start, a port taken meanwhile by someone else (the ports are free
        when picked, not reserved) means new ports and one more try; a
        restart keeps its ports."""
        first = self.start_seconds is None
        try:
            return self._start(timeout)
        except RabbitError as e:
            if not (first and "eaddrinuse" in str(e)):
                raise
        self.amqp_port, self.dist_port, self.epmd_port = ports.free_ports(3)
        self.tls_port = ports.free_port() if self.tls else None
        return self._start(timeout)

    def _start(self, timeout):
        if self.beam_pid and procs.alive(self.beam_pid):
            raise RabbitError("node %s is already running (beam pid %d)" % (self.nodename, self.beam_pid))
        os.makedirs(self.workdir, exist_ok=True)
        self._write_files()
        for f in ("rabbit.pid",):
            if os.path.exists(self._p(f)):
                os.unlink(self._p(f))
        log_start = len(self.log_text())
        t0 = time.monotonic()
        out = open(self._p("server.stdout"), "ab")
        try:
            self._proc = subprocess.Popen(
                [os.path.join(_sbin(), "rabbitmq-server")], env=self._env(), cwd=self.workdir,
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)
        finally:
            out.close()
        self.wrapper_pid = self._proc.pid
        self.beam_pid = None
        self._save()
        try:
            deadline = t0 + timeout
            wanted = {self.amqp_port} | ({self.tls_port} if self.tls else set())
            # Ready when OUR beam listens on every port (someone else on
            # the port must not pass for the node).
            while True:
                if self._proc.poll() is not None:
                    raise RabbitError("rabbitmq-server exited with %s during start" % self._proc.returncode)
                beam = self._find_beam()
                if beam and wanted <= set(procs.listening_ports(beam)):
                    break
                if "eaddrinuse" in self.log_text()[log_start:]:
                    raise RabbitError("a port of %s is taken (eaddrinuse)" % sorted(wanted))
                if time.monotonic() > deadline:
                    raise RabbitError("port(s) %s not listened on by beam after %.0f s" % (sorted(wanted), timeout))
                time.sleep(0.2)
            self.beam_pid = beam
            self._save()
            left = max(5.0, deadline - time.monotonic())
            self.ctl("await_startup", timeout=left)
        except Exception as e:
            tail = self.diagnostics()
            try:
                self.stop(graceful=False)
            except Exception as stop_error:  # keep the first error
                tail += "\n(stop after failed start: %s)" % stop_error
            raise RabbitError("RabbitMQ node %s did not start: %s\n%s" % (self.nodename, e, tail)) from e
        self.start_seconds = round(time.monotonic() - t0, 2)
        self._save()
        return self

    def _find_beam(self):
        """The node's beam pid, or None while it is not there yet."""
        try:
            with open(self._p("rabbit.pid")) as f:
                pid = int(f.read().strip())
            if procs.alive(pid):
                return pid
        except (FileNotFoundError, ValueError):
            pass
        for p in procs.children(self.wrapper_pid):
            if (procs.comm(p) or "").startswith("beam"):
                return p
        return None

    def _epmd_pids(self):
        out = []
        for p in procs.all_pids():
            if procs.comm(p) == "epmd" and procs.environ(p).get("ERL_EPMD_PORT") == str(self.epmd_port):
                out.append(p)
        return out

    def stop(self, timeout=30.0, graceful=True):
        """Shut the node down (rabbitmqctl shutdown; SIGTERM when not
        graceful), then make sure nothing of it is left: beam, its helpers,
        its private epmd. Returns the seconds it took."""
        t0 = time.monotonic()
        with self._probe_lock:
            if self._probe is not None:
                self._probe.close()
                self._probe = None
        if not self.beam_pid and self.wrapper_pid and procs.alive(self.wrapper_pid):
            self.beam_pid = self._find_beam()  # a start that failed early
        if self.beam_pid and procs.alive(self.beam_pid):
            self.sigcont()
            try:
                if graceful:
                    self.ctl("shutdown", timeout=timeout)
            except RabbitError:
                pass
            if procs.wait_gone([self.beam_pid], 5.0):
                procs.kill([self.beam_pid], signal.SIGTERM)
                if procs.wait_gone([self.beam_pid], 10.0):
                    procs.kill([self.beam_pid], signal.SIGKILL)
        self._reap_wrapper()
        epmd = self._epmd_pids()
        procs.kill(epmd, signal.SIGTERM)
        procs.kill(procs.wait_gone(epmd, 2.0), signal.SIGKILL)
        procs.wait_gone(epmd, 2.0)
        left = procs.kill_leftovers(self.workdir)
        self.beam_pid = None
        self._save()
        if left:
            raise RabbitError("processes of node %s were still running and were killed: %s"
                              % (self.nodename, left))
        return round(time.monotonic() - t0, 2)

    def _reap_wrapper(self):
        if self._proc is not None:
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        elif self.wrapper_pid and procs.alive(self.wrapper_pid):
            if procs.wait_gone([self.wrapper_pid], 10.0):
                procs.kill([self.wrapper_pid])

    def kill(self):
        """SIGKILL the beam (a broker crash). The private epmd stays."""
        if self.beam_pid:
            self.sigcont()
            procs.kill([self.beam_pid], signal.SIGKILL)
            procs.wait_gone([self.beam_pid], 10.0)
            self._reap_wrapper()
            self.beam_pid = None
            self._save()

    def sigstop(self):
        """Freeze the broker: TCP stays open, nothing is answered."""
        os.kill(self._beam(), signal.SIGSTOP)

    def sigcont(self):
        if self.beam_pid and procs.alive(self.beam_pid):
            os.kill(self.beam_pid, signal.SIGCONT)

    def restart(self, timeout=START_TIMEOUT):
        """Stop (if running) and start again: same node name, ports, data."""
        if self.beam_pid and procs.alive(self.beam_pid):
            self.stop()
        return self.start(timeout)

    def _beam(self):
        if not self.beam_pid or not procs.alive(self.beam_pid):
            raise RabbitError("node %s is not running" % self.nodename)
        return self.beam_pid

    # ------------------------------------------------------------ queries
    def ctl(self, *args, timeout=60.0):
        """Run rabbitmqctl against this node; returns its stdout."""
        cmd = [os.path.join(_sbin(), "rabbitmqctl"), "-n", self.nodename] + [str(a) for a in args]
        try:
            r = subprocess.run(cmd, env=self._env(), cwd=self.workdir, stdin=subprocess.DEVNULL,
                               capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RabbitError("rabbitmqctl %s timed out after %.0f s" % (" ".join(map(str, args)), timeout)) from None
        if r.returncode != 0:
            raise RabbitError("rabbitmqctl %s failed (%d): %s%s"
                              % (" ".join(map(str, args)), r.returncode, r.stderr.strip(), r.stdout.strip()))
        return r.stdout

    def list_connections(self, timeout=30.0):
        """The broker's client connections: dicts with name, peer_port,
        timeout (the negotiated heartbeat), state, user, connected_at (ms)
        and connection_name (the client-provided name, or None). Asked of
        a probe node that stays up (see broker_probe.py), not rabbitmqctl,
        so polling is cheap."""
        with self._probe_lock:
            if self._probe is None:
                self._probe = ConnectionProbe(self.nodename, self._env(), self.workdir)
        try:
            return self._probe.connections(timeout)
        except ProbeError as e:
            raise RabbitError(str(e)) from None

    def log_text(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def diagnostics(self, lines=40):
        """The tail of the node's log and stdout, for error messages."""
        parts = []
        for label, path in (("log", self.log_path), ("stdout", self._p("server.stdout"))):
            try:
                with open(path, errors="replace") as f:
                    tail = f.read().splitlines()[-lines:]
                parts.append("--- %s %s:\n%s" % (label, path, "\n".join(tail)))
            except FileNotFoundError:
                parts.append("--- %s %s: (missing)" % (label, path))
        return "\n".join(parts)

    # ------------------------------------------------------------ context
    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False


def main(argv):
    import argparse

    ap = argparse.ArgumentParser(prog="rabbit.py", description="private RabbitMQ node for tests")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("start")
    s.add_argument("workdir")
    s.add_argument("--tls", action="store_true")
    s.add_argument("--heartbeat", type=int)
    s.add_argument("--name")
    for c in ("stop", "kill", "sigstop", "sigcont", "restart", "connections", "info"):
        sub.add_parser(c).add_argument("workdir")
    c = sub.add_parser("ctl")
    c.add_argument("workdir")
    c.add_argument("args", nargs=argparse.REMAINDER)
    a = ap.parse_args(argv)
    try:
        if a.cmd == "start":
            node = RabbitNode(a.workdir, name=a.name, tls=a.tls, heartbeat=a.heartbeat).start()
            print(json.dumps(node.info()), flush=True)
            return 0
        node = RabbitNode.from_workdir(a.workdir)
        if a.cmd == "stop":
            print(json.dumps({"stopped": node.nodename, "seconds": node.stop()}))
        elif a.cmd == "ctl":
            sys.stdout.write(node.ctl(*a.args))
        elif a.cmd == "connections":
            print(json.dumps(node.list_connections()))
        elif a.cmd == "restart":
            print(json.dumps(node.restart().info()))
        elif a.cmd == "info":
            print(json.dumps(node.info()))
        else:
            getattr(node, a.cmd)()
        return 0
    except RabbitError as e:
        print("rabbit.py %s: %s" % (a.cmd, e), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
