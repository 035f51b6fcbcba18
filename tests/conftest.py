"""Shared pytest fixtures for the Python tests (tests/httpd, tests/e2e).

- `harness` is importable (tests/ is put on sys.path).
- Work dirs live under $AMQPHB_TMP/pytest-<pid> (scripts/test.sh sets
  AMQPHB_TMP; default <repo>/tmp): world-traversable, because httpd children run as
  www-data. A passing test's dir is removed; a failing one's is kept.
- Every test checks that nothing it started (apache2, beam, epmd) is still
  running afterwards; leftovers are killed and the test fails.
- A missing dependency (the module not built, a package not installed) is a
  failure with a clear message, never a skip.
"""

import os
import re
import shutil
import sys

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

from harness import httpd as _httpd  # noqa: E402
from harness import procs  # noqa: E402
from harness.httpd import Httpd  # noqa: E402
from harness.rabbit import RabbitNode  # noqa: E402

REPO = os.path.dirname(TESTS)
TMP_ROOT = os.path.join(os.environ.get("AMQPHB_TMP") or os.path.join(REPO, "tmp"), "pytest-%d" % os.getpid())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


def _failed(request):
    return any(getattr(request.node, "rep_" + w, None) is not None and getattr(request.node, "rep_" + w).failed
               for w in ("setup", "call"))


@pytest.fixture
def workdir(request):
    """A fresh work dir for this test (kept when the test fails)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)[:60]
    path = os.path.join(TMP_ROOT, name)
    n = 1
    while os.path.exists(path):
        n += 1
        path = os.path.join(TMP_ROOT, "%s.%d" % (name, n))
    os.makedirs(path)
    os.chmod(path, 0o755)
    p = TMP_ROOT
    while p.startswith(REPO) and p != REPO:
        os.chmod(p, 0o755)
        p = os.path.dirname(p)
    yield path
    left = procs.kill_leftovers(path)
    if left:
        pytest.fail("processes started by this test were still running and were killed: %s" % left)
    if not _failed(request):
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def module_so():
    """The built module; a failure (not a skip) when it is missing."""
    try:
        return _httpd.module_path()
    except _httpd.HttpdError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture
def make_httpd(workdir):
    """Factory: make_httpd(body, name='httpd', **Httpd kwargs) -> Httpd (not
    started). Every instance is stopped at teardown, also on failure."""
    made = []

    def make(body="", name="httpd", **kw):
        d = os.path.join(workdir, "%s%d" % (name, len(made)))
        try:
            h = Httpd(d, body, **kw)
        except _httpd.HttpdError as e:
            pytest.fail(str(e), pytrace=False)
        made.append(h)
        return h

    yield make
    errors = []
    for h in made:
        try:
            h.stop(strict=True)
        except Exception as e:  # report every instance, then fail
            errors.append(str(e))
    if errors:
        pytest.fail("\n".join(errors), pytrace=False)


@pytest.fixture
def make_rabbit(workdir):
    """Factory: make_rabbit(**RabbitNode kwargs) -> started RabbitNode,
    stopped at teardown."""
    made = []

    def make(**kw):
        node = RabbitNode(os.path.join(workdir, "rabbit%d" % len(made)), **kw)
        made.append(node)
        return node.start()

    yield make
    for node in made:
        node.stop()


def pytest_sessionfinish(session, exitstatus):
    if os.path.isdir(TMP_ROOT):
        left = procs.kill_leftovers(TMP_ROOT)
        if left:
            print("\nconftest: killed processes left under %s: %s" % (TMP_ROOT, left), file=sys.stderr)
            session.exitstatus = 1
        try:
            os.rmdir(TMP_ROOT)  # only when every test's dir was removed
        except OSError:
            pass
