"""Issue 11, item 12: a client the relay refuses before any broker spoke is
told why in AMQP (the relay's Connection.Start, then Connection.Close with a
code and a text), so the reason reaches the app's own log: pika's and
kombu's exceptions carry the text, where they used to say only "Transport
indicated EOF" or "Connection reset by peer"."""

import pytest

from harness import ports
from harness.httpd import wsgi_body

CLIENTS = ["kombu", "pika"]


@pytest.mark.parametrize("client", CLIENTS)
def test_unreachable_broker_is_named_in_the_clients_error(module_so, make_httpd, client):
    dead = ports.free_port()  # nothing listens there
    body = "AMQPHeartbeatBroker amqp://127.0.0.1:%d/\nAMQPHeartbeatConnectTimeout 2\n" % dead + wsgi_body(
        group="%{GLOBAL}")
    h = make_httpd(body, servers=1, wsgi=True).start()
    answer = h.get_json("/?publish=1&client=" + client)["publish"]
    assert "relay: no broker reachable" in answer and "127.0.0.1:%d" % dead in answer, answer
    assert "320" in answer, answer


@pytest.mark.parametrize("client", CLIENTS)
def test_connection_limit_is_named_in_the_clients_error(module_so, make_httpd, make_rabbit, client):
    node = make_rabbit()
    body = ("AMQPHeartbeatBroker amqp://127.0.0.1:%d/\nAMQPHeartbeatMaxConnections 1\n" % node.amqp_port
            + wsgi_body(group="%{GLOBAL}"))
    h = make_httpd(body, servers=1, wsgi=True).start()
    # The one allowed connection works; a second one, while it is held, is
    # refused with the limit in the text.
    assert h.get_json("/?publish=1&client=" + client)["publish"] == "ok"
    answer = h.get_json("/?publish=1&hold=1&client=" + client)["publish"]
    assert "AMQPHeartbeatMaxConnections 1" in answer and "530" in answer, answer
