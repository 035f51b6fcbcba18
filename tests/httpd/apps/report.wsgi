# Reports what the module published to this httpd child, as JSON:
#   pid, ppid, uid, application_group,
#   env: {NAME: {"os.environ", "getenv" (libc), "wsgi" (the WSGI environ)}}
# Query: name=NAME (repeatable; default AMQP_HEARTBEAT_URL), sleep=SECONDS
# (hold the child, so concurrent requests spread over children),
# connect=1 (open a TCP connection from this child to each URL's host:port),
# dump=1 (every variable of the process environment, the WSGI environ and a
# subprocess's environment), publish=1 (publish one message through the first
# name's URL and read it back: "ok" or the error as the client raised it),
# client=kombu|pika (for publish; default kombu), hold=N (for publish: hold N
# other connections open meanwhile).
# handshake=1 (send each URL's host:port AMQP 0-9-1's protocol header and
# report what came back before the end of stream, as hex).
# setenv=NAME=VALUE (repeatable; first of all: os.environ, so the C
# environment, as an app changing it after start), probe=NAME (libc's getenv
# of NAME from a native thread named "amqphb-probe", to show an LD_PRELOAD
# getenv watcher sees this process's threads).
import ctypes
import json
import os
import socket
import subprocess
import threading
import time
import urllib.parse

_libc = ctypes.CDLL(None)
_libc.getenv.restype = ctypes.c_char_p

try:
    import mod_wsgi
    GROUP = mod_wsgi.application_group
except ImportError:  # pragma: no cover
    GROUP = None


def c_getenv(name):
    v = _libc.getenv(name.encode())
    return v.decode() if v is not None else None


def getenv_from_named_thread(name, thread_name=b"amqphb-probe"):
    def run():
        _libc.prctl(15, ctypes.c_char_p(thread_name), 0, 0, 0)  # PR_SET_NAME
        c_getenv(name)
    t = threading.Thread(target=run)
    t.start()
    t.join()


def try_connect(url):
    if not url:
        return None
    try:
        netloc = urllib.parse.urlsplit(url)
        with socket.create_connection((netloc.hostname, netloc.port), timeout=5):
            return "ok"
    except Exception as e:
        return "error: %r" % (e,)


def _kombu_round_trip(url, hold):
    import kombu
    held = []
    try:
        for _ in range(hold):
            c = kombu.Connection(url, connect_timeout=5, heartbeat=0)
            c.connect()
            held.append(c)
        with kombu.Connection(url, connect_timeout=5, heartbeat=0) as conn:
            conn.connect()  # one try: kombu's default would retry for ever
            queue = conn.SimpleQueue("report.publish")
            queue.put("through the relay")
            message = queue.get(timeout=5)
            message.ack()
            queue.close()
            return message.payload
    finally:
        for c in held:
            c.release()


def _pika_round_trip(url, hold):
    import pika
    params = pika.URLParameters(url)
    params.heartbeat = 0
    params.connection_attempts = 1
    held = [pika.BlockingConnection(params) for _ in range(hold)]
    try:
        conn = pika.BlockingConnection(params)
        try:
            ch = conn.channel()
            ch.queue_declare("report.publish")
            ch.basic_publish("", "report.publish", b"through the relay")
            for _ in range(50):
                method, _props, body = ch.basic_get("report.publish", auto_ack=True)
                if method:
                    return body.decode()
                time.sleep(0.1)
            return None
        finally:
            conn.close()
    finally:
        for c in held:
            c.close()


def publish_and_get(url, client="kombu", hold=0):
    """Publish one message through url and read it back: "ok", or the
    error as the client raised it (what the app would log)."""
    if not url:
        return "no URL"
    try:
        trip = _pika_round_trip if client == "pika" else _kombu_round_trip
        payload = trip(url, hold)
        return "ok" if payload == "through the relay" else "wrong payload %r" % (payload,)
    except Exception as e:
        return "error: %r" % (e,)


def try_handshake(url):
    if not url:
        return None
    try:
        netloc = urllib.parse.urlsplit(url)
        with socket.create_connection((netloc.hostname, netloc.port), timeout=10) as s:
            s.sendall(b"AMQP\x00\x00\x09\x01")
            got = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    return got.hex()
                got += chunk
    except Exception as e:
        return "error: %r" % (e,)


def application(environ, start_response):
    q = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
    for pair in q.get("setenv", []):
        name, _, value = pair.partition("=")
        os.environ[name] = value
    for name in q.get("probe", []):
        getenv_from_named_thread(name)
    names = q.get("name") or ["AMQP_HEARTBEAT_URL"]
    if "sleep" in q:
        time.sleep(float(q["sleep"][0]))
    env = {}
    for n in names:
        env[n] = {"os.environ": os.environ.get(n), "getenv": c_getenv(n), "wsgi": environ.get(n)}
        if q.get("connect") == ["1"]:
            env[n]["connect"] = try_connect(env[n]["os.environ"] or env[n]["getenv"])
        if q.get("handshake") == ["1"]:
            env[n]["handshake"] = try_handshake(env[n]["os.environ"] or env[n]["getenv"])
    extra = {}
    if q.get("dump") == ["1"]:
        extra["process_environ"] = dict(os.environ)
        extra["wsgi_environ"] = {k: str(v) for k, v in environ.items()}
        extra["subprocess_environ"] = subprocess.run(["/usr/bin/env"], capture_output=True, text=True).stdout
    if q.get("publish") == ["1"]:
        extra["publish"] = publish_and_get(os.environ.get(names[0]), q.get("client", ["kombu"])[0],
                                           int(q.get("hold", ["0"])[0]))
    body = {"pid": os.getpid(), "ppid": os.getppid(), "uid": os.getuid(),
            "application_group": GROUP, "server_name": environ.get("SERVER_NAME"),
            "home": os.environ.get("HOME"), "env": env, **extra}
    data = (json.dumps(body) + "\n").encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]
