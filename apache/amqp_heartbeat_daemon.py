# mod_amqp_heartbeat in a mod_wsgi daemon process (WSGIDaemonProcess).
#
# mod_wsgi forks its daemon processes from the httpd parent, so they never
# run httpd's child_init and get no relay of their own. One line per daemon
# group gives them one, and changes nothing in the app:
#
#   WSGIImportScript /usr/share/mod-amqp-heartbeat/amqp_heartbeat_daemon.py \
#       process-group=GROUP application-group=%{GLOBAL}
#
# mod_wsgi runs this file in every process of GROUP when it starts, before
# the app is loaded and before the process starts its request threads. It
#   - finds this process's mapped mod_amqp_heartbeat (through /proc/self/maps;
#     no path is hard-coded) and calls its entry point, which starts a relay
#     from the configuration the process inherited (the same servers,
#     AMQPHeartbeatEnv names and rules as in httpd's own children);
#   - puts the published NAME=URL pairs into os.environ (and so the C
#     environment), where oslo.messaging's OS_DEFAULT__TRANSPORT_URL and
#     getenv() find them;
#   - gives requests of this interpreter the daemon's own URL in the WSGI
#     environ (mod_wsgi's request_started event);
#   - stops the relay when the daemon shuts down, Connection.Close on every
#     upstream, at mod_wsgi's process_stopping event (see
#     _stop_on_process_stopping); Python's atexit and the module's C atexit
#     handler are the fallbacks (mod_wsgi's reaper ends a stuck shutdown
#     with exit(-1)); a second stop does nothing.
#
# Without an AMQPHeartbeatBroker anywhere, the module logs one line and this
# does nothing. Every failure is one line in the error log (stderr there),
# never an exception: the daemon serves its app without a relay.

import atexit
import ctypes
import os
import sys
import time

_START = "amqp_heartbeat_daemon_start"
_STOP = "amqp_heartbeat_daemon_stop"
# amqp_heartbeat_daemon_start's results (src/apache/daemon.rs).
_STARTED, _NOT_CONFIGURED = 0, 1
# How long the relay waits at shutdown for running requests (httpd SIGKILLs
# a daemon 3 s after it asked it to stop for a restart).
REQUESTS_GRACE = 2.0
# Taken before the app runs: eventlet.monkey_patch() makes time.sleep green,
# and the shutdown callback runs outside any green thread.
_sleep = time.sleep
_now = time.monotonic


def _say(message):
    sys.stderr.write("mod_amqp_heartbeat (pid %d): %s\n" % (os.getpid(), message))
    sys.stderr.flush()


def _mapped_files():
    """Paths of the files mapped in this process, in map order."""
    seen = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            parts = line.split(None, 5)
            if len(parts) == 6 and parts[5].startswith("/"):
                path = parts[5].rstrip("\n")
                if path not in seen:
                    seen.append(path)
    return seen


def _find_module():
    """The mapped library exporting the entry point, opened without
    loading anything (RTLD_NOLOAD), or None."""
    paths = _mapped_files()
    # Ours first (any name the operator gave it), then everything mapped.
    paths.sort(key=lambda p: "amqp_heartbeat" not in os.path.basename(p))
    for path in paths:
        try:
            lib = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_NOW)
        except OSError:
            continue
        if hasattr(lib, _START) and hasattr(lib, _STOP):
            return lib
    # A module file replaced on disk since httpd loaded it is mapped as
    # "PATH (deleted)", which no dlopen finds; httpd loads modules
    # RTLD_GLOBAL, so the process's global scope still has the entries.
    lib = ctypes.CDLL(None)
    if hasattr(lib, _START) and hasattr(lib, _STOP):
        return lib
    return None


def _start():
    lib = _find_module()
    if lib is None:
        _say("the module is not loaded in this process (LoadModule amqp_heartbeat_module); no relay")
        return None
    start = getattr(lib, _START)
    start.argtypes = [ctypes.POINTER(ctypes.c_char_p)]
    start.restype = ctypes.c_int
    stop = getattr(lib, _STOP)
    stop.argtypes = []
    stop.restype = ctypes.c_int
    report = ctypes.c_char_p()
    code = start(ctypes.byref(report))
    text = (report.value or b"").decode("utf-8", "replace")
    if code == _NOT_CONFIGURED:
        return None          # the module logged why
    if code != _STARTED:
        _say("no relay in this daemon process: %s" % text)
        return None
    published = []
    for line in text.splitlines():
        name, sep, url = line.partition("=")
        if sep:
            published.append((name, url))
            os.environ[name] = url    # os.putenv too: the C environment
    _stop_on_process_stopping(stop)
    atexit.register(stop)
    return published


def _stop_on_process_stopping(stop):
    """Stop the relay when mod_wsgi starts the daemon's shutdown: its
    process_stopping event, in the daemon's main thread, before it joins
    the request threads and tears the interpreters down. Later is too late
    for an eventlet app: tearing its interpreter down waits in
    threading._shutdown for green threads that never end (measured: mod_wsgi
    4.9.4, eventlet 0.33, Python 3.11), until httpd SIGKILLs the daemon 3 s
    after a restart, or mod_wsgi's reaper calls exit(-1) after
    shutdown-timeout; Python's atexit never runs. Requests still running get
    up to REQUESTS_GRACE to finish with their connections (mod_wsgi's
    graceful paths, maximum-requests and graceful-timeout, only signal the
    shutdown once no request runs)."""
    try:
        import mod_wsgi
        metrics = mod_wsgi.process_metrics
        subscribe = mod_wsgi.subscribe_shutdown
    except (ImportError, AttributeError):
        return

    def on_stopping(*_name, **_event):
        deadline = _now() + REQUESTS_GRACE
        try:
            while metrics().get("active_requests", 0) > 0 and _now() < deadline:
                _sleep(0.05)
        except Exception as e:      # never keep the daemon from stopping
            _say("cannot count active requests: %r" % (e,))
        stop()

    subscribe(on_stopping)


def _subscribe(published):
    """The WSGI environ of this interpreter's requests gets the daemon's
    own URLs (an httpd child never sends its own for daemon requests, but
    an explicit SetEnv of the same name would be overridden too)."""
    try:
        import mod_wsgi
    except ImportError:
        return

    def own_urls(name, **event):
        if name == "request_started":
            environ = event.get("request_environ")
            if environ is not None:
                environ.update(published)

    mod_wsgi.subscribe_events(own_urls)


try:
    _published = _start()
    if _published:
        _subscribe(_published)
except Exception as e:      # the daemon serves its app without a relay
    _say("no relay in this daemon process: %r" % (e,))
