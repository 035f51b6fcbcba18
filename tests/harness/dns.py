"""A private DNS server (dnsmasq, from Debian's dnsmasq-base) on a loopback
address of its own, logging every query, and a resolver configuration
pointing at it for processes started in a mount namespace of their own.

    with Dnsmasq(workdir, {"rabbit.amqphb.test": "127.0.0.1"}) as dns:
        h = Httpd(..., launcher=dns.private_resolver(search="amqphb.test"))
        dns.queries()                    # [("A", "rabbit.amqphb.test"), ...]

glibc's resolver only speaks to port 53, so the server takes port 53 of an
address of 127.53.0.0/16 that nobody uses (as root). It knows only the
given records and the domains under them, forwards nothing, and reads no
configuration of the system's (no /etc/dnsmasq.conf, no /etc/hosts).

The system's /etc/resolv.conf and /etc/nsswitch.conf are never changed:
`private_resolver` gives a command prefix that runs a program in a private
mount namespace (unshare, as root) where private copies are bind-mounted
over them; everything the program starts (an httpd's children, their
helpers) stays in it, and the namespace goes with its last process.
"""

import os
import random
import socket
import subprocess
import time

DNSMASQ = "/usr/sbin/dnsmasq"
START_TIMEOUT = 10.0


class DnsError(Exception):
    pass


def _port_53_free(address):
    """True when nothing holds port 53 of address (UDP and TCP)."""
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind((address, 53))
            except OSError:
                return False
    return True


class Dnsmasq:
    """One dnsmasq answering `records` ({name: IPv4 address}) on
    self.address port 53; every other name under the records' parent
    domains gets NXDOMAIN, any other name REFUSED. Every query is logged
    (queries())."""

    def __init__(self, workdir, records):
        if not os.path.exists(DNSMASQ):
            raise DnsError("%s is missing: install dnsmasq-base (scripts/install-deps.sh)" % DNSMASQ)
        self.workdir = os.path.abspath(workdir)
        self.records = dict(records)
        self.address = None
        self.log_path = os.path.join(self.workdir, "dnsmasq.log")
        self._proc = None

    def start(self):
        os.makedirs(self.workdir, exist_ok=True)
        # Two tries: an address found free may be taken before dnsmasq binds it.
        errors = []
        for _ in range(2):
            try:
                return self._start()
            except DnsError as e:
                errors.append(str(e))
        raise DnsError("; ".join(errors))

    def _start(self):
        rng = random.Random()
        for _ in range(50):
            address = "127.53.%d.%d" % (rng.randrange(256), rng.randrange(1, 255))
            if _port_53_free(address):
                break
        else:
            raise DnsError("no free port 53 on 127.53.0.0/16")
        # dnsmasq drops root after binding; the log must stay writable.
        with open(self.log_path, "w"):
            pass
        os.chmod(self.log_path, 0o666)
        domains = sorted({name.split(".", 1)[1] for name in self.records if "." in name})
        cmd = [DNSMASQ, "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
               "--bind-interfaces", "--listen-address=" + address, "--port=53", "--pid-file=",
               "--log-queries", "--log-facility=" + self.log_path]
        cmd += ["--host-record=%s,%s" % item for item in sorted(self.records.items())]
        cmd += ["--local=/%s/" % d for d in domains]
        self._proc = subprocess.Popen(cmd, cwd=self.workdir, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + START_TIMEOUT
        # "started" is logged once the sockets are bound.
        while "dnsmasq[%d]: started" % self._proc.pid not in self.log_text():
            rc = self._proc.poll()
            if rc is not None:
                err = self._proc.stderr.read().decode(errors="replace").strip()
                self._proc.stderr.close()
                self._proc = None
                raise DnsError("dnsmasq on %s:53 exited with %d: %s" % (address, rc, err))
            if time.monotonic() > deadline:
                self.stop()
                raise DnsError("dnsmasq on %s:53 not started after %.0f s" % (address, START_TIMEOUT))
            time.sleep(0.02)
        self.address = address
        return self

    def stop(self):
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc.stderr.close()
        self._proc = None

    def log_text(self):
        """The query log (made by start)."""
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def queries(self):
        """[(type, name)] of every query received, in order."""
        out = []
        for line in self.log_text().splitlines():
            # "Nov 29 17:25:20 dnsmasq[9457]: query[A] rabbit.amqphb.test from 127.0.0.1"
            _, sep, rest = line.partition(": query[")
            if sep:
                qtype, _, rest = rest.partition("] ")
                out.append((qtype, rest.split(" ")[0]))
        return out

    def private_resolver(self, search):
        """A command prefix (for Httpd's launcher) running its arguments in
        a private mount namespace whose /etc/resolv.conf names only this
        server, with `search` as the search list, and whose
        /etc/nsswitch.conf resolves hosts by files then DNS."""
        if self.address is None:
            raise DnsError("dnsmasq is not started")
        resolv = os.path.join(self.workdir, "resolv.conf")
        with open(resolv, "w") as f:
            f.write("nameserver %s\nsearch %s\noptions attempts:1 timeout:2\n" % (self.address, search))
        nsswitch = os.path.join(self.workdir, "nsswitch.conf")
        with open("/etc/nsswitch.conf") as f:
            lines = [ln for ln in f.read().splitlines() if not ln.startswith("hosts:")]
        with open(nsswitch, "w") as f:
            f.write("\n".join(lines + ["hosts: files dns"]) + "\n")
        for p in (resolv, nsswitch):
            os.chmod(p, 0o644)
        script = 'mount --bind "$1" /etc/resolv.conf && mount --bind "$2" /etc/nsswitch.conf && shift 2 && exec "$@"'
        return ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", script, "sh",
                resolv, nsswitch]

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False
