# Publishes through the relay, for the status page tests: one py-amqp
# connection per process (kept across requests, heartbeat 0), URL from
# AMQP_HEARTBEAT_URL. JSON out: pid, the connection's local port (the
# relay's "client port"), how many messages went out, or the error.
# Query: n=N messages (default 0: only make sure the connection is open),
# sleep=SECONDS afterwards (keeps this child busy); hold=PATH creates PATH
# once the connection is open, then keeps the child busy until the test
# removes PATH (at most 60 s): a test knows the request is in a child.
# wait=PATH instead waits on the broker: it creates PATH, then declares the
# queue (the reply is awaited with no timeout of py-amqp's) and writes what
# happened into PATH ("ok", or the error as py-amqp raised it), then how a
# new TCP connect to the relay went ("; reconnect: ok" or the error).
# mark=PATH creates PATH first of all (the request is in a child).
import json
import os
import socket
import time
import urllib.parse

import amqp

QUEUE = "status-test"
BODY = b"x" * 1000
_conn = {}


def _connection():
    c = _conn.get("c")
    if c is not None:
        return c
    url = urllib.parse.urlsplit(os.environ["AMQP_HEARTBEAT_URL"])
    # The published URL has no userinfo (the relay logs in with the
    # directive's): any user and password do, py-amqp just needs some.
    c = amqp.Connection(host="%s:%d" % (url.hostname, url.port), userid=url.username or "guest",
                        password=url.password or "guest", virtual_host=url.path[1:] or "/", heartbeat=0)
    c.connect()
    ch = c.channel()
    ch.queue_declare(QUEUE, auto_delete=False)
    _conn["c"], _conn["ch"] = c, ch
    return c


def application(environ, start_response):
    q = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
    mark = q.get("mark", [None])[0]
    if mark:
        open(mark, "w").close()
    n = int(q.get("n", ["0"])[0])
    body = {"pid": os.getpid()}
    try:
        c = _connection()
        for _ in range(n):
            _conn["ch"].basic_publish(amqp.Message(BODY), exchange="", routing_key=QUEUE)
        body.update(port=c.sock.getsockname()[1], sent=n)
    except Exception as e:  # the next request reconnects
        _conn.clear()
        body["error"] = repr(e)
    time.sleep(float(q.get("sleep", ["0"])[0]))
    wait = q.get("wait", [None])[0]
    if wait:
        open(wait, "w").close()
        try:
            _conn["ch"].queue_declare(QUEUE, passive=True)
            outcome = "ok"
        except Exception as e:
            outcome = repr(e)
        url = urllib.parse.urlsplit(os.environ["AMQP_HEARTBEAT_URL"])
        try:
            socket.create_connection((url.hostname, url.port), timeout=5).close()
            outcome += "; reconnect: ok"
        except Exception as e:
            outcome += "; reconnect: " + repr(e)
        with open(wait, "w") as f:
            f.write(outcome)
    hold = q.get("hold", [None])[0]
    if hold:
        open(hold, "w").close()
        until = time.monotonic() + 60
        while os.path.exists(hold) and time.monotonic() < until:
            time.sleep(0.05)
    data = (json.dumps(body) + "\n").encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]
