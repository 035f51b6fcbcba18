# Reports what the module published to this httpd child, as JSON:
#   pid, ppid, uid, application_group,
#   env: {NAME: {"os.environ", "getenv" (libc), "wsgi" (the WSGI environ)}}
# Query: name=NAME (repeatable; default AMQP_HEARTBEAT_URL), sleep=SECONDS
# (hold the child, so concurrent requests spread over children),
# connect=1 (open a TCP connection from this child to each URL's host:port),
# handshake=1 (send each URL's host:port AMQP 0-9-1's protocol header and
# report what came back before the end of stream, as hex).
import ctypes
import json
import os
import socket
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


def try_connect(url):
    if not url:
        return None
    try:
        netloc = urllib.parse.urlsplit(url)
        with socket.create_connection((netloc.hostname, netloc.port), timeout=5):
            return "ok"
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
    body = {"pid": os.getpid(), "ppid": os.getppid(), "uid": os.getuid(),
            "application_group": GROUP, "server_name": environ.get("SERVER_NAME"),
            "home": os.environ.get("HOME"), "env": env}
    data = (json.dumps(body) + "\n").encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]
