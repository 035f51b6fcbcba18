# Publishes persistent messages with publisher confirms through the relay,
# on one connection per process kept across requests (py-amqp, no eventlet:
# this app is about httpd's restarts and stops under load, not idleness).
#
# SetEnv in the vhost:
#   E2E_QUEUE       durable queue to publish to (default exchange)
#   E2E_RECORD_DIR  where each process appends the id of every message the
#                   broker confirmed: confirmed-PID.log, one "PID-SEQ" line
#                   per message, written only after the broker's ack
# The relay URL comes from os.environ[AMQP_HEARTBEAT_URL] (the module's);
# without the module, from SetEnv E2E_DIRECT_URL (the broker itself: the
# control).
#
#   /publish?n=N&pause=S
#                   publish N messages, each waited for (confirm_publish),
#                   S seconds apart (default 0);
#                   JSON: pid, confirmed, error (after an error the
#                   connection is dropped and the next request reconnects)
import json
import os
import time
import urllib.parse

import amqp

_state = {"conn": None, "chan": None, "seq": 0, "connects": 0, "record": None}


def _open(queue, environ):
    url = urllib.parse.urlsplit(os.environ.get("AMQP_HEARTBEAT_URL") or environ["E2E_DIRECT_URL"])
    conn = amqp.Connection(host="%s:%d" % (url.hostname, url.port), userid=url.username or "guest",
                           password=url.password or "guest", virtual_host="/", heartbeat=0,
                           confirm_publish=True, connect_timeout=5)
    conn.connect()
    chan = conn.channel()
    chan.queue_declare(queue, durable=True, auto_delete=False)
    _state.update(conn=conn, chan=chan, connects=_state["connects"] + 1)


def _drop():
    conn = _state["conn"]
    _state.update(conn=None, chan=None)
    if conn is not None:
        try:
            conn.collect()
        except Exception:
            pass


def _record(environ):
    if _state["record"] is None:
        path = os.path.join(environ["E2E_RECORD_DIR"], "confirmed-%d.log" % os.getpid())
        _state["record"] = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    return _state["record"]


def application(environ, start_response):
    qs = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
    queue = environ["E2E_QUEUE"]
    body = {"pid": os.getpid(), "confirmed": 0, "error": None}
    status = "200 OK"
    if environ.get("PATH_INFO") != "/publish":
        status = "404 Not Found"
    else:
        try:
            if _state["conn"] is None:
                _open(queue, environ)
            record = _record(environ)
            pause = float(qs.get("pause", ["0"])[0])
            for _ in range(int(qs.get("n", ["10"])[0])):
                time.sleep(pause)
                _state["seq"] += 1
                msg_id = "%d-%d" % (os.getpid(), _state["seq"])
                # Returns once the broker acked it (confirm_publish).
                _state["chan"].basic_publish(amqp.Message(msg_id, delivery_mode=2),
                                             exchange="", routing_key=queue)
                os.write(record, (msg_id + "\n").encode())
                body["confirmed"] += 1
        except Exception as e:
            body["error"] = repr(e)
            _drop()
        body["connects"] = _state["connects"]
    data = (json.dumps(body) + "\n").encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]
