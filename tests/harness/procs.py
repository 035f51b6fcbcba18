"""Process helpers over /proc: thread counts, children, and leftovers.

Leftovers are found by a marker (a work dir path) in a process's command
line or environment: apache2 has `-f WORKDIR/...` on its command line, beam
has its data dir there, and epmd (started by beam) inherits HOME=WORKDIR/...
So `leftovers(workdir)` finds everything a test started, and nothing else.

CLI (used by scripts/test.sh as a safety net):
    python3 tests/harness/procs.py leftovers DIR [--kill]
"""

import os
import signal
import sys
import time


def _read(path, mode="r"):
    try:
        with open(path, mode) as f:
            return f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None


def stat(pid):
    """(comm, state, ppid, pgid) of pid, or None when it is gone."""
    text = _read("/proc/%d/stat" % pid)
    if text is None:
        return None
    # comm is in parentheses and may hold spaces or ')'.
    lp, rp = text.index("("), text.rindex(")")
    rest = text[rp + 2:].split()
    return text[lp + 1:rp], rest[0], int(rest[1]), int(rest[2])


def alive(pid):
    """True when pid exists and is not a zombie."""
    st = stat(pid)
    return st is not None and st[1] not in ("Z", "X")


def comm(pid):
    st = stat(pid)
    return st[0] if st else None


def threads(pid):
    """Number of threads of pid (entries of /proc/PID/task)."""
    return len(os.listdir("/proc/%d/task" % pid))


def thread_names(pid):
    """Sorted comm of every thread of pid (e.g. "amqp-heartbeat")."""
    return sorted(n for n in (thread_comm(pid, t) for t in tids(pid)) if n is not None)


# Per-thread and memory readings (benches/httpd_bench.py: P3, P4, P5).

def tids(pid):
    return sorted(int(t) for t in os.listdir("/proc/%d/task" % pid))


def thread_comm(pid, tid):
    try:
        with open("/proc/%d/task/%d/comm" % (pid, tid)) as f:
            return f.read().strip()
    except OSError:
        return None


def schedstat(pid, tid):
    """(cpu ns, run slices) of one thread."""
    with open("/proc/%d/task/%d/schedstat" % (pid, tid)) as f:
        run_ns, _wait_ns, slices = f.read().split()
    return int(run_ns), int(slices)


def ctxt(pid, tid):
    """(voluntary, nonvoluntary) context switches of one thread."""
    out = {}
    with open("/proc/%d/task/%d/status" % (pid, tid)) as f:
        for line in f:
            if "ctxt_switches" in line:
                k, v = line.split(":")
                out[k.strip()] = int(v)
    return out.get("voluntary_ctxt_switches", 0), out.get("nonvoluntary_ctxt_switches", 0)


def rollup(pid):
    """/proc/PID/smaps_rollup in KiB: Rss, Pss, Private_Dirty, ..."""
    out = {}
    with open("/proc/%d/smaps_rollup" % pid) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                out[parts[0].rstrip(":")] = int(parts[1])
    return out


def rss_kib(pid):
    return rollup(pid)["Rss"]


def private_kib(pid):
    """Memory only this child has: what each extra child really costs (the
    module's code pages are shared by the parent and every child)."""
    r = rollup(pid)
    return r.get("Private_Dirty", 0) + r.get("Private_Clean", 0)


def all_pids():
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def children(pid, name=None):
    """Live pids whose parent is pid (and whose comm is name, if given)."""
    out = []
    for p in all_pids():
        st = stat(p)
        if st and st[2] == pid and st[1] not in ("Z", "X") and (name is None or st[0] == name):
            out.append(p)
    return sorted(out)


def process_group(pgid):
    """Live pids in process group pgid."""
    out = []
    for p in all_pids():
        st = stat(p)
        if st and st[3] == pgid and st[1] not in ("Z", "X"):
            out.append(p)
    return sorted(out)


def environ(pid):
    """The environment pid started with (not what setenv() changed later)."""
    data = _read("/proc/%d/environ" % pid, "rb")
    if data is None:
        return {}
    env = {}
    for item in data.split(b"\0"):
        if b"=" in item:
            k, v = item.split(b"=", 1)
            env[k.decode(errors="replace")] = v.decode(errors="replace")
    return env


def cmdline(pid):
    data = _read("/proc/%d/cmdline" % pid, "rb")
    return [] if data is None else [a.decode(errors="replace") for a in data.split(b"\0") if a]


def _ancestors():
    out, pid = set(), os.getpid()
    while pid > 1:
        out.add(pid)
        st = stat(pid)
        if st is None:
            break
        pid = st[2]
    return out


def leftovers(marker):
    """Live pids (not this process or its ancestors) whose command line or
    environment mentions marker."""
    marker_b = marker.encode()
    mine = _ancestors()
    out = []
    for p in all_pids():
        if p in mine or not alive(p):
            continue
        for f in ("cmdline", "environ"):
            data = _read("/proc/%d/%s" % (p, f), "rb")
            if data and marker_b in data:
                out.append(p)
                break
    return sorted(out)


def _listen_inodes():
    """{inode: (ip, port)} of listening TCP sockets (IPv4 and IPv6)."""
    out = {}
    for f in ("/proc/net/tcp", "/proc/net/tcp6"):
        text = _read(f) or ""
        for line in text.splitlines()[1:]:
            cols = line.split()
            if len(cols) > 9 and cols[3] == "0A":
                addr, port = cols[1].rsplit(":", 1)
                out[cols[9]] = (addr, int(port, 16))
    return out


def listening_ports(pid):
    """Sorted TCP ports pid holds a listening socket for."""
    inodes = _listen_inodes()
    found = set()
    try:
        fds = os.listdir("/proc/%d/fd" % pid)
    except (FileNotFoundError, PermissionError):
        return []
    for fd in fds:
        try:
            link = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        if link.startswith("socket:["):
            ino = link[8:-1]
            if ino in inodes:
                found.add(inodes[ino][1])
    return sorted(found)


def describe(pids):
    return ", ".join("%d %s" % (p, " ".join(cmdline(p))[:120] or comm(p)) for p in pids)


def wait_gone(pids, timeout):
    """Wait until every pid is gone; returns the pids still alive."""
    deadline = time.monotonic() + timeout
    left = [p for p in pids if alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [p for p in left if alive(p)]
    return left


def kill(pids, sig=signal.SIGKILL):
    for p in pids:
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass


def kill_leftovers(marker, grace=5.0):
    """SIGTERM, then SIGKILL, everything leftovers(marker) finds. Returns
    what was found (empty when nothing was left)."""
    found = leftovers(marker)
    if found:
        kill(found, signal.SIGTERM)
        kill(wait_gone(found, grace), signal.SIGKILL)
        wait_gone(found, 5.0)
    return found


def main(argv):
    if len(argv) >= 2 and argv[0] == "leftovers":
        found = leftovers(argv[1])
        if found:
            print("left running under %s: %s" % (argv[1], describe(found)))
            if "--kill" in argv[2:]:
                kill_leftovers(argv[1])
                print("killed %d process(es)" % len(found))
            return 1
        return 0
    print("usage: procs.py leftovers DIR [--kill]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
