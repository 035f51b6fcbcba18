"""Free TCP ports on 127.0.0.1.

The kernel picks a free port (bind to port 0); the port is then closed and
handed to a server that binds it a moment later. Ports handed out by this
process are remembered so two callers in one process never get the same one,
even if the first has not bound it yet.
"""

import socket
import threading

_lock = threading.Lock()
_given = set()


def free_port():
    """One free loopback TCP port not yet handed out by this process."""
    with _lock:
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            if port not in _given:
                _given.add(port)
                return port
    raise RuntimeError("no free loopback port found")


def free_ports(n):
    """`n` distinct free loopback TCP ports."""
    return [free_port() for _ in range(n)]


def is_listening(port, host="127.0.0.1", timeout=0.2):
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
