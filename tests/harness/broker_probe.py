"""The broker's connection list, asked of a long-lived hidden Erlang node.

`rabbitmqctl list_connections` boots an Erlang VM per call: about 0.9 s of
CPU and 0.6 s on an idle 2-core machine, and several seconds when the
machine is busy. Tests that poll the broker every second or two, several
scenarios at once, spent most of the machine on those boots, and their
polls came so late that a direct control connection could open and be
dropped between two polls. The probe boots once per node and answers each
poll with one rpc:call to the same function rabbitmqctl ends up in
(rabbit_networking:connection_info_all/1), in milliseconds.

Protocol on the probe's stdin/stdout, one poll at a time: Python writes a
line; the probe answers with one `conn` line per connection (the strings
hex-encoded, so nothing in a name can break a line) and `end`, or with one
`error ...` line when the node cannot be asked (down, restarting).
"""

import os
import select
import subprocess
import threading
import time

# Fields of a `conn` line, in order; hex marks the hex-encoded strings.
_FIELDS = (("peer_port", int), ("timeout", int), ("state", str), ("connected_at", int),
           ("user", "hex"), ("name", "hex"), ("connection_name", "hex"))

# Erlang, run by `erl -eval`: serve polls until stdin closes.
_PROBE = r"""
Target = list_to_atom(os:getenv("AMQPHB_PROBE_TARGET")),
Items = [peer_port, timeout, state, connected_at, user, name, client_properties],
Hex = fun(B) when is_binary(B) -> binary:encode_hex(B); (_) -> <<"-">> end,
Int = fun(I) when is_integer(I) -> I; (_) -> -1 end,
ConnName = fun(Props) when is_list(Props) ->
                   case lists:keyfind(<<"connection_name">>, 1, Props) of
                       {_, longstr, V} -> Hex(V);
                       _ -> <<"-">>
                   end;
              (_) -> <<"-">>
           end,
Line = fun(Info) ->
           G = fun(K) -> proplists:get_value(K, Info) end,
           io:format("conn ~w ~w ~s ~w ~s ~s ~s~n",
                     [Int(G(peer_port)), Int(G(timeout)), atom_to_list(G(state)),
                      Int(G(connected_at)), Hex(G(user)), Hex(G(name)), ConnName(G(client_properties))])
       end,
Serve = fun Loop() ->
            case io:get_line("") of
                eof -> halt(0);
                _ ->
                    case rpc:call(Target, rabbit_networking, connection_info_all, [Items], 20000) of
                        Rows when is_list(Rows) -> lists:foreach(Line, Rows), io:format("end~n");
                        Other -> io:format("error ~0p~n", [Other])
                    end,
                    Loop()
            end
        end,
io:format("ready~n"),
Serve().
"""


class ProbeError(Exception):
    pass


def _decode(value, kind):
    if kind == "hex":
        return None if value == "-" else bytes.fromhex(value).decode(errors="replace")
    if kind is int:
        v = int(value)
        return None if v < 0 else v
    return value


class ConnectionProbe:
    """Lists the connections of the node `nodename`. env must carry what
    the node's CLI tools use: HOME (the cookie), ERL_EPMD_PORT. Thread-safe:
    scenarios poll from several threads."""

    def __init__(self, nodename, env, cwd):
        self.nodename = nodename
        self.env = dict(env, AMQPHB_PROBE_TARGET=nodename)
        self.cwd = cwd
        self._proc = None
        self._lock = threading.Lock()
        self._buf = b""

    def _start(self, timeout):
        short = "amqphb-probe-%d-%d" % (os.getpid(), id(self) % 100000)
        host = self.nodename.split("@", 1)[1]
        self._proc = subprocess.Popen(
            ["erl", "-noshell", "-hidden", "-sname", "%s@%s" % (short, host),
             "-kernel", "inet_dist_use_interface", "{127,0,0,1}", "-eval", _PROBE],
            env=self.env, cwd=self.cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT)
        self._buf = b""
        first = self._line(time.monotonic() + timeout)
        if first != "ready":
            self._kill()
            raise ProbeError("the connection probe did not start: %r" % first)

    def _line(self, deadline):
        """One line of the probe's output, or ProbeError at the deadline."""
        fd = self._proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                self._kill()
                raise ProbeError("the connection probe did not answer in time")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    self._kill()
                    raise ProbeError("the connection probe exited: %r" % self._buf[-500:])
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode(errors="replace").strip()

    def connections(self, timeout=30.0):
        """Dicts with peer_port, timeout (the negotiated heartbeat), state,
        connected_at (ms), user, name and connection_name (the
        client-provided name, or None)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._start(timeout)
            try:
                self._proc.stdin.write(b"poll\n")
                self._proc.stdin.flush()
            except OSError as e:
                self._kill()
                raise ProbeError("the connection probe is gone: %s" % e) from None
            rows = []
            while True:
                line = self._line(deadline)
                if line == "end":
                    return rows
                if line.startswith("error "):
                    raise ProbeError("node %s cannot list its connections: %s" % (self.nodename, line[6:]))
                parts = line.split(" ")
                if parts[0] != "conn" or len(parts) != len(_FIELDS) + 1:
                    self._kill()
                    raise ProbeError("the connection probe said %r" % line)
                rows.append({k: _decode(v, kind) for (k, kind), v in zip(_FIELDS, parts[1:])})

    def _kill(self):
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            for f in (self._proc.stdin, self._proc.stdout):
                f.close()
            self._proc = None

    def close(self):
        """Stop the probe (closing its stdin ends it; kill if it lingers)."""
        with self._lock:
            if self._proc is None:
                return
            try:
                self._proc.stdin.close()
                self._proc.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                pass
            self._kill()
