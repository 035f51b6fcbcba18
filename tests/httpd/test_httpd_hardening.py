"""Issue 11 in a real httpd child: what the relay does there beside the
interpreter."""

import socket
import threading

from harness.httpd import wsgi_body


class HeaderCatcher:
    """A "broker" on loopback that records the first 8 bytes of each
    connection and closes it."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.headers = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                got = b""
                try:
                    while len(got) < 8:
                        chunk = conn.recv(8 - len(got))
                        if not chunk:
                            break
                        got += chunk
                except OSError:
                    pass
                self.headers.append(got)

    def close(self):
        self.sock.close()


def test_broker_name_is_resolved_in_the_child(module_so, make_httpd):
    """A broker named by host name ("localhost") is resolved in the child
    by the relay's helper (getent, src/relay/resolve.rs) after the
    interpreter started, and dialled: the broker gets the protocol header."""
    catcher = HeaderCatcher()
    try:
        body = "AMQPHeartbeatBroker amqp://localhost:%d/\n" % catcher.port + wsgi_body()
        h = make_httpd(body, wsgi=True, servers=1).start()
        answer = h.get_json("/?handshake=1")
        assert catcher.headers == [b"AMQP\x00\x00\x09\x01"], (answer, h.error_log_tail())
        assert not h.log_lines(r"cannot resolve|cannot run"), h.error_log_tail()
    finally:
        catcher.close()
