"""Fixtures of the end-to-end tests: one private RabbitMQ node for the whole
session, a work dir per test module, and a check that every dependency is
there (a missing one is a failure that says what to install, never a skip).

Each test module runs one scenario (one httpd with several vhosts, so the
variants wait in parallel), and its tests read the recorded facts. The
scenarios of all modules run at the same time (see Scenarios), except one
that restarts the shared broker. A scenario that failed to run fails every
test of its module with the same message.
"""

import importlib.util
import os
import shutil
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

E2E = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(E2E)
REPO = os.path.dirname(TESTS)
for p in (TESTS, E2E):
    if p not in sys.path:
        sys.path.insert(0, p)

from harness import procs  # noqa: E402
from harness.httpd import WSGI_SO, HttpdError, module_path  # noqa: E402
from harness.rabbit import RabbitNode  # noqa: E402

import stack  # noqa: E402

TMP_ROOT = os.environ.get("AMQPHB_TMP") or os.path.join(REPO, "tmp", "pytest-%d" % os.getpid())
# The broker's own heartbeat suggestion; the clients ask for theirs.
BROKER_HEARTBEAT = 6


def _missing():
    out = []
    if sys.executable != "/usr/bin/python3" and not sys.executable.startswith("/usr/bin/python3"):
        out.append("run with Debian's /usr/bin/python3 (this is %s)" % sys.executable)
    for mod, pkg in (("eventlet", "python3-eventlet"), ("kombu", "python3-kombu"),
                     ("oslo_messaging", "python3-oslo.messaging")):
        if importlib.util.find_spec(mod) is None:
            out.append("python module %s is missing (apt-get install %s)" % (mod, pkg))
    if not os.path.exists(WSGI_SO):
        out.append("%s is missing (apt-get install libapache2-mod-wsgi-py3)" % WSGI_SO)
    if not os.path.exists("/usr/sbin/apache2"):
        out.append("/usr/sbin/apache2 is missing (apt-get install apache2)")
    try:
        module_path()
    except HttpdError as e:
        out.append(str(e))
    return out


@pytest.fixture(scope="session")
def deps():
    missing = _missing()
    if missing:
        pytest.fail("end-to-end tests cannot run:\n  " + "\n  ".join(missing)
                    + "\n(make deps && make build installs and builds all of it)", pytrace=False)


def _mkdir(path):
    os.makedirs(path, exist_ok=True)
    os.chmod(path, 0o755)
    p = os.path.dirname(path)
    while p.startswith(REPO) and p != REPO:
        os.chmod(p, 0o755)   # httpd children (www-data) reach their dirs
        p = os.path.dirname(p)
    return path


@pytest.fixture(scope="session")
def rabbit(deps):
    """One private RabbitMQ node for the session (tests tell their
    connections apart by the client-provided connection name)."""
    d = _mkdir(os.path.join(TMP_ROOT, "e2e-rabbit"))
    node = RabbitNode(d, name="e2e-%d" % os.getpid(), heartbeat=BROKER_HEARTBEAT)
    node.start()
    yield node
    node.stop()
    shutil.rmtree(d, ignore_errors=True)


class Scenarios:
    """Runs the scenario of every e2e test module of this session. A module
    defines `run_scenario(rabbit, workdir)` (returns what its tests read) and
    may set `PARALLEL = False` (it restarts the shared broker). The
    parallel ones all start together, in threads, when the first is asked
    for, so their idle waits overlap; the others run alone afterwards."""

    def __init__(self, session, rabbit):
        self.rabbit = rabbit
        self.modules = []
        for item in session.items:
            mod = getattr(item, "module", None)
            if mod is not None and hasattr(mod, "run_scenario") and mod not in self.modules:
                self.modules.append(mod)
        self.futures = {}
        self.lock = threading.Lock()
        self.pool = None

    @staticmethod
    def _name(mod):
        return mod.__name__.rsplit(".", 1)[-1]

    def _run(self, mod):
        path = _mkdir(os.path.join(TMP_ROOT, "e2e-" + self._name(mod)))
        try:
            return mod.run_scenario(self.rabbit, path)
        finally:
            left = procs.kill_leftovers(path)
            if left:
                raise RuntimeError("processes of scenario %s were still running and were killed: %s"
                                   % (self._name(mod), left))

    def result(self, mod):
        parallel = [m for m in self.modules if getattr(m, "PARALLEL", True)]
        with self.lock:
            if self.pool is None and parallel:
                self.pool = ThreadPoolExecutor(len(parallel), thread_name_prefix="scenario")
                for m in parallel:
                    self.futures[m] = self.pool.submit(self._run, m)
        if mod in self.futures:
            return self.futures[mod].result()
        for f in self.futures.values():
            f.exception()   # wait; each module reports its own failure
        return self._run(mod)

    def close(self):
        if self.pool is not None:
            self.pool.shutdown(wait=True)


@pytest.fixture(scope="session")
def scenarios(request, rabbit):
    sc = Scenarios(request.session, rabbit)
    failed_before = request.session.testsfailed
    yield sc
    sc.close()
    if request.session.testsfailed == failed_before:
        for mod in sc.modules:
            shutil.rmtree(os.path.join(TMP_ROOT, "e2e-" + sc._name(mod)), ignore_errors=True)


@pytest.fixture(scope="module")
def scenario(request, scenarios):
    """What this module's scenario recorded (run once per module)."""
    return scenarios.result(request.module)

def pytest_terminal_summary(terminalreporter):
    if stack.MEASUREMENTS:
        terminalreporter.section("e2e measurements")
        for line in stack.MEASUREMENTS:
            terminalreporter.write_line(line)
