# Publishes persistent messages with publisher confirms through the relay,
# on ONE connection per process kept across requests (py-amqp, embedded
# mod_wsgi under prefork: one request at a time per process, so the
# process-global state needs no lock; no eventlet: this app is about httpd
# restarting and stopping under load, not about idleness).
#
# SetEnv in the vhost:
#   E2E_URL_ENV    name of the process env variable holding the relay URL
#                  (published by the module with AMQPHeartbeatEnv)
#   E2E_QUEUE      durable queue to publish to (default exchange)
#   E2E_DATA       dir (writable by www-data) for this process's records:
#                    published-PID.log  id of every message, before it is sent
#                    confirmed-PID.log  id of every message, after the broker
#                                       acked it (never before)
#                  one "PID-SEQ" line per message, each line one O_APPEND
#                  write, so a line is whole even if the process is killed
#   E2E_CONN_NAME  prefix of the client-provided connection name (the
#                  broker logs it: "PREFIX-PID-N" is this process's Nth
#                  connection), so the test finds every upstream in the log
#
#   /publish?n=N   publish N messages (default 20), each waited for
#                  (confirm_publish). JSON: pid, published, confirmed,
#                  errors, error, connects, reconnects. After an error the
#                  connection is dropped and the next request reconnects.
import json
import os
import urllib.parse

import amqp

# Per publish: a confirm the broker does not send within this is an error
# (the request must not hang the test's client).
CONFIRM_TIMEOUT = 10
CONNECT_TIMEOUT = 5

_state = {"conn": None, "chan": None, "seq": 0, "connects": 0, "files": {}}


def _open(environ):
    var = environ["E2E_URL_ENV"]
    url = os.environ.get(var)
    if not url:
        raise RuntimeError("%s is not in os.environ: the module did not publish the relay URL" % var)
    parts = urllib.parse.urlsplit(url)
    vhost = urllib.parse.unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    name = "%s-%d-%d" % (environ["E2E_CONN_NAME"], os.getpid(), _state["connects"] + 1)
    conn = amqp.Connection(host="%s:%d" % (parts.hostname, parts.port),
                           userid=urllib.parse.unquote(parts.username or "guest"),
                           password=urllib.parse.unquote(parts.password or "guest"),
                           virtual_host=vhost, heartbeat=0, confirm_publish=True,
                           connect_timeout=CONNECT_TIMEOUT,
                           client_properties={"connection_name": name})
    _state["connects"] += 1
    conn.connect()
    chan = conn.channel()
    chan.queue_declare(environ["E2E_QUEUE"], durable=True, auto_delete=False)
    _state.update(conn=conn, chan=chan)


def _drop():
    conn = _state["conn"]
    _state.update(conn=None, chan=None)
    if conn is not None:
        try:
            # Frees the socket without a closing handshake: the connection
            # is broken already (the relay closes its upstream itself).
            conn.collect()
        except Exception:
            pass


def _record(environ, kind, msg_id):
    fd = _state["files"].get(kind)
    if fd is None:
        path = os.path.join(environ["E2E_DATA"], "%s-%d.log" % (kind, os.getpid()))
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        _state["files"][kind] = fd
    # One write per line: a killed process leaves whole lines only.
    os.write(fd, (msg_id + "\n").encode())


def _publish(environ, n, body):
    if _state["conn"] is None:
        _open(environ)
    queue = environ["E2E_QUEUE"]
    for _ in range(n):
        _state["seq"] += 1
        msg_id = "%d-%d" % (os.getpid(), _state["seq"])
        _record(environ, "published", msg_id)
        body["published"] += 1
        # confirm_publish: returns only once the broker acked the message.
        _state["chan"].basic_publish(amqp.Message(msg_id, delivery_mode=2), exchange="",
                                     routing_key=queue, confirm_timeout=CONFIRM_TIMEOUT)
        _record(environ, "confirmed", msg_id)
        body["confirmed"] += 1


def application(environ, start_response):
    status = "200 OK"
    body = {"pid": os.getpid(), "published": 0, "confirmed": 0, "errors": 0, "error": None}
    if environ.get("PATH_INFO") != "/publish":
        status = "404 Not Found"
    else:
        qs = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
        try:
            _publish(environ, int(qs.get("n", ["20"])[0]), body)
        except Exception as e:
            body["errors"] += 1
            body["error"] = repr(e)
            _drop()
    body["connects"] = _state["connects"]
    body["reconnects"] = max(0, _state["connects"] - 1)
    data = (json.dumps(body) + "\n").encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]
