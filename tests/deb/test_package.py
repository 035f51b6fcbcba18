"""Issue 14: the Debian package (`make deb`) with real dpkg, lintian, the
system apache2 binary and a private RabbitMQ.

The tests run in file order on one installation: install (the maintainer
script enables the module), a2enmod, apache2ctl -t, a relayed client,
reinstall over an edited conffile, remove, purge. The module fixture puts
the machine back as it was: the package's paths (also a `make install`
copy) are saved before and restored after, the package is not left
installed, and a policy-rc.d of its own (saved and restored around it) keeps
the maintainer scripts from starting the system apache2 service, while
recording what they asked for.

The fixture runs `make deb` (unless AMQPHB_DEB names a .deb): about 3 minutes the first time, 7 s when
nothing changed (cargo's cache in target/deb/ is kept between builds).
"""

import fcntl
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib

import pytest

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(TESTS)
E2E = os.path.join(TESTS, "e2e")
for p in (TESTS, E2E):
    if p not in sys.path:
        sys.path.insert(0, p)

from harness import procs  # noqa: E402
from harness.httpd import WSGI_SO  # noqa: E402

import stack  # noqa: E402

PACKAGE = "libapache2-mod-amqp-heartbeat"
MODULE = "amqp_heartbeat"
MODULE_SO = "/usr/lib/apache2/modules/mod_amqp_heartbeat.so"
AVAILABLE = "/etc/apache2/mods-available/"
ENABLED = "/etc/apache2/mods-enabled/"
CONFFILES = [AVAILABLE + MODULE + ".load", AVAILABLE + MODULE + ".conf"]
DOC = "/usr/share/doc/" + PACKAGE
# The script a mod_wsgi daemon group's WSGIImportScript names.
DAEMON_SCRIPT = "/usr/share/mod-amqp-heartbeat/amqp_heartbeat_daemon.py"
# apache2-maintscript-helper's record of who enabled/disabled the module.
STATE_DIR = "/var/lib/apache2/module/"
STATE = [STATE_DIR + d + "/" + MODULE
         for d in ("enabled_by_maint", "enabled_by_admin", "disabled_by_maint", "disabled_by_admin")]
# Every path the package or its scripts may create (restored at the end).
SAVED = [MODULE_SO] + CONFFILES + [ENABLED + MODULE + ".load", ENABLED + MODULE + ".conf"] + STATE
POLICY_RC_D = "/usr/sbin/policy-rc.d"
# flock()ed while the package is on the system: the directory it installs
# into, so that no lock file is left behind (dpkg and apt lock files of
# their own, with fcntl locks, which do not meet flock's).
SYSTEM_LOCK = "/usr/lib/apache2/modules"
SYSTEM_PIDFILE = "/var/run/apache2/apache2.pid"
TMP = os.path.join(os.environ.get("AMQPHB_TMP") or os.path.join(REPO, "tmp"), "deb-%d" % os.getpid())
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C", "DEBIAN_FRONTEND": "noninteractive"}
MARK = "# edited by tests/deb/test_package.py\n"


def run(*cmd, check=True, env=None, timeout=300):
    r = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=timeout,
                       env=dict(ENV, **(env or {})))
    if check and r.returncode != 0:
        pytest.fail("%s exited %d:\n%s%s" % (" ".join(cmd), r.returncode, r.stdout, r.stderr), pytrace=False)
    return r


def dpkg(*args, check=True):
    """dpkg, waiting while another dpkg/apt holds the lock (apt-get runs of
    other test runs or of scripts/install-deps.sh)."""
    deadline = time.monotonic() + 120
    while True:
        r = run("dpkg", *args, check=False)
        if r.returncode == 0 or "lock" not in r.stderr or time.monotonic() > deadline:
            break
        time.sleep(1)
    if check and r.returncode != 0:
        pytest.fail("dpkg %s exited %d:\n%s%s" % (" ".join(args), r.returncode, r.stdout, r.stderr), pytrace=False)
    return r


def package_status():
    r = run("dpkg-query", "-W", "-f", "${Status} ${Version}", PACKAGE, check=False)
    return r.stdout.strip() if r.returncode == 0 else "not-installed"


def cargo_version():
    with open(os.path.join(REPO, "Cargo.toml"), "rb") as f:
        return tomllib.load(f)["package"]["version"]


def deb_path():
    arch = run("dpkg", "--print-architecture").stdout.strip()
    return os.path.join(REPO, "target", "deb", "%s_%s_%s.deb" % (PACKAGE, cargo_version(), arch))


def system_apache2():
    """pids of apache2 processes run the system's way (no -f CONF: the
    tests' instances all have one)."""
    return [p for p in procs.all_pids()
            if procs.comm(p) == "apache2" and procs.alive(p) and "-f" not in (procs.cmdline(p) or ["-f"])]


class Saved:
    """Paths as they were (bytes and mode, symlink target, or absent)."""

    def __init__(self, paths):
        self.state = {}
        for p in paths:
            if os.path.islink(p):
                self.state[p] = ("link", os.readlink(p))
            elif os.path.isfile(p):
                with open(p, "rb") as f:
                    self.state[p] = ("file", f.read(), os.stat(p).st_mode & 0o7777)
            else:
                self.state[p] = ("absent",)

    def clear(self):
        for p in self.state:
            if os.path.lexists(p):
                os.unlink(p)

    def restore(self):
        self.clear()
        for p, s in self.state.items():
            if s[0] == "link":
                os.makedirs(os.path.dirname(p), exist_ok=True)
                os.symlink(s[1], p)
            elif s[0] == "file":
                os.makedirs(os.path.dirname(p), exist_ok=True)
                with open(p, "wb") as f:
                    f.write(s[1])
                os.chmod(p, s[2])


@pytest.fixture(scope="module")
def deb():
    """The package file, from `make deb` (cargo rebuilds what changed);
    AMQPHB_DEB=PATH tests that file instead (e.g. a release candidate)."""
    if os.environ.get("AMQPHB_DEB"):
        return os.environ["AMQPHB_DEB"]
    path = deb_path()
    r = subprocess.run(["make", "-C", REPO, "deb"], capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, timeout=1200)
    if r.returncode != 0:
        pytest.fail("make deb failed (%d):\n%s%s" % (r.returncode, r.stdout[-5000:], r.stderr[-5000:]),
                    pytrace=False)
    assert os.path.exists(path), "make deb did not produce %s" % path
    return path


@pytest.fixture(scope="module")
def system(deb):
    """Saves what the package touches, installs a recording policy-rc.d,
    and at the end removes the package and restores everything. Yields the
    path of the policy log (one line per invoke-rc.d request). Another
    test run on this machine (a second clone's `make test`) waits for this
    one's clean-up: both would install and purge the same package."""
    lock = os.open(SYSTEM_LOCK, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    deadline = time.monotonic() + 1200
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(lock)
                pytest.fail("another test run held %s for 20 minutes" % SYSTEM_LOCK, pytrace=False)
            time.sleep(1)
    try:
        yield from _system_held()
    finally:
        os.close(lock)


def _system_held():
    status = package_status()
    if status.startswith("install ok installed") or "config-files" in status:
        pytest.fail("%s is already on this machine (%s): the test installs and purges it; "
                    "run `dpkg -P %s` first" % (PACKAGE, status, PACKAGE), pytrace=False)
    assert not system_apache2(), "the system apache2 service is running (%s): stop it first" % system_apache2()
    os.makedirs(TMP, exist_ok=True)
    policy_log = os.path.join(TMP, "policy-rc.d.log")
    saved = Saved(SAVED)
    saved_policy = Saved([POLICY_RC_D])
    # A `make install` copy would collide with the package's files.
    saved.clear()
    with open(POLICY_RC_D, "w") as f:
        f.write("#!/bin/sh\n# tests/deb: deny and record\necho \"$*\" >> %s\nexit 101\n" % policy_log)
    os.chmod(POLICY_RC_D, 0o755)
    try:
        yield policy_log
    finally:
        errors = []
        if package_status() != "not-installed":
            r = dpkg("-P", PACKAGE, check=False)
            if r.returncode != 0:
                errors.append("dpkg -P %s failed at clean-up (%d): %s%s" % (PACKAGE, r.returncode, r.stdout,
                                                                          r.stderr))
        saved_policy.restore()
        saved.restore()
        left = system_apache2()
        if left:
            procs.kill(left)
            errors.append("a system apache2 was started during the test (killed): %s" % left)
        shutil.rmtree(TMP, ignore_errors=True)
        if errors:
            pytest.fail("\n".join(errors), pytrace=False)


def test_package_version_is_cargo_toml_version_and_changelog_agrees(deb):
    changelog = run("dpkg-parsechangelog", "-l", os.path.join(REPO, "debian", "changelog"), "-S", "Version")
    fields = run("dpkg-deb", "-f", deb, "Package", "Version")
    assert changelog.stdout.strip() == cargo_version()
    assert fields.stdout.split() == ["Package:", PACKAGE, "Version:", cargo_version()]


def test_copyright_lists_every_statically_linked_crate(deb):
    r = run(os.path.join(REPO, "scripts", "deb-copyright.py"), "--check", check=False,
            env={"PATH": os.environ["PATH"]})
    assert r.returncode == 0, r.stderr
    with open(os.path.join(REPO, "debian", "copyright")) as f:
        text = f.read()
    for crate in ("tokio", "rustls", "ring", "amq-protocol", "nix", "libc", "bytes"):
        assert re.search(r"^Files: crates\.io/%s-[0-9.]+/\*$" % re.escape(crate), text, re.M), crate
    assert re.search(r"^Files: \*\n.*\nLicense: Apache-2.0$", text, re.M)


def test_lintian_reports_no_error_or_warning(deb):
    r = run("lintian", "--fail-on", "error,warning", deb, check=False)
    tags = [ln for ln in r.stdout.splitlines() if re.match(r"^[EW]: ", ln)]
    assert r.returncode == 0 and not tags, "lintian (%d):\n%s%s" % (r.returncode, r.stdout, r.stderr)


def test_depends_on_the_httpd_module_abi(deb):
    depends = run("dpkg-deb", "-f", deb, "Depends").stdout
    assert re.search(r"\bapache2-api-\d{8}\b", depends), depends


def test_packaged_module_is_the_release_build_exporting_only_its_record(deb, workdir):
    """build.rs's version script: httpd's LoadModule symbol and the two
    daemon-mode entry points, nothing else; dh_strip took the line tables
    to the -dbgsym package."""
    run("dpkg-deb", "-x", deb, workdir)
    so = workdir + MODULE_SO
    exported = run("nm", "-D", "--defined-only", so).stdout.split()[2::3]
    assert sorted(exported) == ["amqp_heartbeat_daemon_start", "amqp_heartbeat_daemon_stop",
                                "amqp_heartbeat_module"], exported
    assert ".debug_line" not in run("readelf", "-S", "-W", so).stdout


def test_install_enables_the_module_without_starting_apache2(system, deb):
    r = dpkg("-i", deb)
    assert package_status().startswith("install ok installed"), package_status()
    files = run("dpkg", "-L", PACKAGE).stdout.split()
    for path in [MODULE_SO] + CONFFILES + [DOC + "/README.md.gz", DOC + "/copyright", DOC + "/changelog.gz",
                                           DOC + "/examples/nova-api.conf", DAEMON_SCRIPT]:
        assert path in files and os.path.exists(path), path
    conffiles = run("dpkg-query", "-W", "-f", "${Conffiles}", PACKAGE).stdout.split()
    assert set(CONFFILES) <= set(conffiles), conffiles
    # postinst: apache2-maintscript-helper enabled the module (a2enmod -m).
    assert run("a2query", "-m", MODULE, check=False).returncode == 0, r.stdout + r.stderr
    assert os.readlink(ENABLED + MODULE + ".load") == "../mods-available/%s.load" % MODULE
    # ... then asked invoke-rc.d to restart apache2 (it does after every
    # enable), which policy-rc.d denied here. Without it, invoke-rc.d
    # restarts only a service started in the current runlevel: none in an
    # image build or here, where it passes the action in parentheses.
    assert "restart" in rc_requests(system), rc_requests(system)
    assert not system_apache2()


def rc_requests(policy_log):
    """The actions invoke-rc.d asked policy-rc.d about, for apache2 only."""
    with open(policy_log) as f:
        lines = [ln.split() for ln in f.read().splitlines()]
    assert all(ln[0] == "apache2" for ln in lines), lines
    return [ln[1].strip("()") for ln in lines]


def test_a2enmod_enables_the_packaged_module(system):
    run("a2dismod", "-q", MODULE)
    assert not os.path.lexists(ENABLED + MODULE + ".load")
    run("a2enmod", "-q", MODULE)
    assert os.path.realpath(ENABLED + MODULE + ".load") == CONFFILES[0]
    assert os.path.realpath(ENABLED + MODULE + ".conf") == CONFFILES[1]


# The module loaded the Debian way, through mods-enabled, ahead of mod_wsgi
# (as Debian's alphabetical mods-enabled order puts it).
PACKAGED_LOAD = ("Include {e}{m}.load\nInclude {e}{m}.conf\nLoadModule wsgi_module {w}\n"
                 "LogLevel info {m}:debug\n").format(e=ENABLED, m=MODULE, w=WSGI_SO)


def relay_vhost(broker_url):
    """The e2e kombu app through the module (AMQPHeartbeat* directives),
    logging to the httpd's data dir."""
    return (stack.kombu_vhost("relay", "@WORKDIR@/data", direct=False, broker_url=broker_url)
            + stack.directory_block())


def own_httpd(make_httpd, body):
    """The system apache2 binary with a config of the test's own (harness:
    loopback port, its own ServerRoot, pid and log files), the packaged
    module loaded from mods-enabled."""
    return make_httpd(PACKAGED_LOAD + body, name="pkg", amqp=False, wsgi=False, servers=2)


def apache2ctl_t(conf_path):
    # apache2ctl passes APACHE_ARGUMENTS to apache2: -f makes it test our
    # config, not the machine's /etc/apache2/apache2.conf.
    return run("apache2ctl", "-t", env={"APACHE_ARGUMENTS": "-f " + conf_path}, check=False)


def test_apache2ctl_accepts_a_vhost_with_the_directives(system, make_httpd):
    vhost = relay_vhost("amqp://guest:guest@127.0.0.1:5672/")
    r = apache2ctl_t(own_httpd(make_httpd, vhost).conf_path)
    assert r.returncode == 0 and "Syntax OK" in r.stdout + r.stderr, r.stdout + r.stderr
    # Negative control: the directives are the packaged module's own.
    assert "AMQPHeartbeatInterval 2\n" in vhost
    bad = own_httpd(make_httpd, vhost.replace("AMQPHeartbeatInterval 2", "AMQPHeartbeatInterval 0"))
    r = apache2ctl_t(bad.conf_path)
    assert r.returncode != 0 and "AMQPHeartbeatInterval" in r.stdout + r.stderr, r.stdout + r.stderr


def test_system_apache2_relays_a_client_through_the_packaged_module(system, make_rabbit, make_httpd):
    node = make_rabbit()
    h = own_httpd(make_httpd, relay_vhost(node.url)).start()
    status, answer = stack.get_json(h, "/send", "relay.e2e")
    assert status == 200 and answer.get("received") is True, (answer, h.error_log_tail())
    assert answer["url_from"] == "os.environ[AMQP_HEARTBEAT_URL]", answer
    with open("/proc/%d/maps" % answer["pid"]) as f:
        assert MODULE_SO in f.read(), "the child did not map %s" % MODULE_SO
    assert h.log_lines(r"\[%s:\w+\].*connection #\d+" % MODULE, pid=answer["pid"]), h.error_log_tail()


def test_reinstall_of_the_same_version_keeps_an_edited_conffile(system, deb):
    conf = CONFFILES[1]
    with open(conf) as f:
        edited = f.read() + MARK
    with open(conf, "w") as f:
        f.write(edited)
    # No --force-conf*: stdin is /dev/null, so a conffile prompt would fail.
    dpkg("-i", deb)
    with open(conf) as f:
        assert f.read() == edited
    assert not [p for p in os.listdir(AVAILABLE) if p.startswith(MODULE) and ".dpkg-" in p]
    assert run("a2query", "-m", MODULE, check=False).returncode == 0


def leftovers():
    """What of the package is on disk: its files and anything named after
    it where Debian keeps apache2 modules, their config, state and docs."""
    r = run("find", "/etc/apache2", "/usr/lib/apache2", "/usr/share/doc", "/var/lib/apache2",
            os.path.dirname(DAEMON_SCRIPT),
            "(", "-name", "*%s*" % MODULE, "-o", "-name", "*amqp-heartbeat*", ")", check=False)
    return sorted(set(r.stdout.split()))


def test_remove_disables_the_module_and_purge_leaves_nothing(system):
    files = [p for p in run("dpkg", "-L", PACKAGE).stdout.split() if not os.path.isdir(p)]
    assert MODULE_SO in files and CONFFILES[0] in files
    dpkg("-r", PACKAGE)
    # prerm: a2dismod; the conffiles stay until purge.
    assert not os.path.lexists(ENABLED + MODULE + ".load")
    assert run("a2query", "-m", MODULE, check=False).returncode != 0
    assert package_status().startswith("deinstall ok config-files"), package_status()
    assert sorted(p for p in files if os.path.lexists(p)) == sorted(CONFFILES)
    dpkg("-P", PACKAGE)
    assert package_status() == "not-installed"
    assert [p for p in files if os.path.lexists(p)] == []
    assert leftovers() == [], "left behind by dpkg -P"
    assert set(rc_requests(system)) <= {"restart", "reload"}, rc_requests(system)
    assert not system_apache2()
