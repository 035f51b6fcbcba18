# An nova-api-like WSGI app: eventlet.monkey_patch() at import time, then an
# oslo.messaging notifier and an RPC client kept across requests.
#
# One file serves every variant. The vhost says which one with SetEnv:
#   E2E_VARIANT    name of the variant (state is kept per variant, because
#                  with WSGIApplicationGroup %{GLOBAL} several vhosts share
#                  this module object)
#   E2E_OSLO_CONF  oslo.config file for the variant
#   E2E_OSLO_ENV   "1": let oslo.config read OS_<GROUP>__<OPT> from the
#                  environment (the module publishes OS_DEFAULT__TRANSPORT_URL
#                  in the process env). "0" for the direct variants: the
#                  module's variable is process-wide, so a direct app in the
#                  same child must not pick it up.
#   E2E_LOG        file the app logs to (debug aid)
#   E2E_NOTIFY_RETRY  the notifier's retry (default: forever)
#
# Endpoints (JSON out):
#   /send?ops=notify,cast,call   run the ops, report what the client did
#   /block?mode=sleep|native|cpu&secs=N&ops=...
#                                ops, then block N s (eventlet's time.sleep,
#                                the unpatched sleep, or a CPU loop holding
#                                the GIL), then the ops again (ops_after,
#                                events_after)
#   /env                         what the app sees of the relay URL
#   hold=SECONDS (any op endpoint) sleep (green) before answering, so that
#                                concurrent requests spread over children
#
# What the client did is read from oslo.messaging's own log records (never
# from its internals): "[id] Connected to AMQP server ... client with port
# P" for each new connection, "is unreachable" and "Reconnected" when a
# connection it held was found dead.
import eventlet
eventlet.monkey_patch()

import ctypes
import json
import logging
import os
import sys
import time
import urllib.parse

_libc = ctypes.CDLL(None)
_libc.getenv.restype = ctypes.c_char_p

ENV_NAMES = ('OS_DEFAULT__TRANSPORT_URL', 'AMQP_HEARTBEAT_URL', 'E2E_KOMBU_URL')

try:
    import mod_wsgi
    APP_GROUP = mod_wsgi.application_group
except Exception:  # not under mod_wsgi (a syntax check)
    APP_GROUP = None


class _Capture(logging.Handler):
    """Keeps oslo.messaging's records of the current request."""

    def __init__(self):
        logging.Handler.__init__(self, logging.DEBUG)
        self.records = []

    def emit(self, record):
        if record.name.startswith(('oslo.messaging', 'oslo_messaging')):
            self.records.append(record)


_capture = _Capture()
_root = logging.getLogger()
_root.addHandler(_capture)
_root.setLevel(logging.DEBUG)
# py-amqp's per-frame debug lines are noise here.
logging.getLogger('amqp').setLevel(logging.INFO)
_logfile = {}

_state = {}


def _setup_logfile(path):
    if path and path not in _logfile:
        h = logging.FileHandler(path)
        h.setFormatter(logging.Formatter(
            '%(asctime)s pid=%(process)d %(name)s %(levelname)s: %(message)s'))
        _root.addHandler(h)
        _logfile[path] = h


def _redact(url):
    if not url:
        return url
    p = urllib.parse.urlsplit(url)
    if p.password:
        p = p._replace(netloc='%s:***@%s:%s' % (p.username, p.hostname, p.port))
    return urllib.parse.urlunsplit(p)


def _variant_state(environ):
    name = environ.get('E2E_VARIANT', 'default')
    st = _state.get(name)
    if st is not None:
        return st
    from oslo_config import cfg
    import oslo_messaging
    conf = cfg.ConfigOpts()
    use_env = environ.get('E2E_OSLO_ENV', '1') == '1'
    conf(args=[], project='e2e', use_env=use_env,
         default_config_files=[environ['E2E_OSLO_CONF']])
    try:
        # RPCClient (oslo.messaging 14) reads [oslo_messaging_metrics], which
        # the library registers only on the global cfg.CONF; each variant
        # has its own ConfigOpts here.
        from oslo_messaging._metrics import client as _metrics
        conf.register_opts(_metrics.oslo_messaging_metrics,
                           group='oslo_messaging_metrics')
    except ImportError:
        pass
    ntransport = oslo_messaging.get_notification_transport(conf)
    rtransport = oslo_messaging.get_rpc_transport(conf)
    loc = conf.get_location('transport_url')
    # Notifications retry forever by default; a test of a dead broker wants
    # an answer.
    retry = environ.get('E2E_NOTIFY_RETRY')
    retry = int(retry) if retry else None
    st = {
        'name': name,
        'conf': conf,
        'transport_url': _redact(conf.transport_url),
        'transport_url_from': loc.location.name if loc else None,
        'heartbeat_timeout_threshold':
            conf.oslo_messaging_rabbit.heartbeat_timeout_threshold,
        'notifier': oslo_messaging.Notifier(
            ntransport, publisher_id='e2e-api', driver='messaging',
            topics=['e2e_notifications'], retry=retry),
        'client': oslo_messaging.get_rpc_client(
            rtransport, oslo_messaging.Target(topic='e2e_rpc_nobody'))
            if hasattr(oslo_messaging, 'get_rpc_client') else
            oslo_messaging.RPCClient(
                rtransport, oslo_messaging.Target(topic='e2e_rpc_nobody')),
        'n': 0,
        # connection_id -> {'role', 'client_port'}: every connection the
        # client opened, in order.
        'connections': {},
    }
    _state[name] = st
    return st


def _run_op(st, op, events):
    import oslo_messaging
    start = len(_capture.records)
    t0 = time.time()
    result = 'ok'
    try:
        if op == 'notify':
            st['n'] += 1
            st['notifier'].info({}, 'e2e.ping', {'n': st['n'], 'pid': os.getpid()})
        elif op == 'cast':
            st['client'].cast({}, 'ping', n=st['n'])
        elif op == 'call':
            # Nobody serves the topic: the call times out, but it has opened
            # (and keeps) the reply connection.
            try:
                st['client'].prepare(timeout=1).call({}, 'ping', n=st['n'])
                result = 'answered?'
            except oslo_messaging.MessagingTimeout:
                result = 'timeout (expected: no server)'
        else:
            result = 'unknown op'
    except Exception as e:
        logging.getLogger('e2e.app').exception('op %s failed', op)
        result = 'error: %r' % (e,)
    if op == 'notify' and result == 'ok':
        # The notifier logs a failed send instead of raising.
        for rec in _capture.records[start:]:
            if rec.name.startswith('oslo_messaging.notify') and rec.levelno >= logging.ERROR:
                result = 'error: notification not sent: %s' % rec.getMessage()[:200]
    role = 'notifier' if op == 'notify' else ('reply' if op == 'call' else 'rpc')
    for rec in _capture.records[start:]:
        msg = rec.getMessage()
        args = rec.args if isinstance(rec.args, dict) else {}
        kind = None
        if 'Connected to AMQP server' in msg:
            kind = 'connected'
        elif 'Reconnected to AMQP server' in msg:
            kind = 'reconnected'
        elif 'is unreachable' in msg:
            kind = 'unreachable'
        elif rec.levelno >= logging.WARNING:
            kind = 'warning'
        if kind is None:
            continue
        ev = {'op': op, 'kind': kind, 'message': msg[:300]}
        if kind in ('connected', 'reconnected'):
            cid = args.get('connection_id')
            # A connection opened while a call waits is its reply listener.
            ev['connection_id'] = cid
            ev['client_port'] = args.get('client_port')
            ev['server_port'] = args.get('port')
            if kind == 'connected' and cid not in st['connections']:
                st['connections'][cid] = {
                    'role': role, 'client_port': args.get('client_port'),
                    'server_port': args.get('port')}
            elif cid in st['connections']:
                st['connections'][cid]['client_port'] = args.get('client_port')
        events.append(ev)
    return {'op': op, 'result': result, 'seconds': round(time.time() - t0, 3)}


def _env_report(environ):
    out = {}
    for n in ENV_NAMES:
        v = _libc.getenv(n.encode())
        out[n] = {'os.environ': os.environ.get(n),
                  'libc': v.decode() if v else None,
                  'request': environ.get(n)}
    return out


def _block(mode, secs):
    t0 = time.time()
    if mode == 'sleep':
        time.sleep(secs)            # patched: eventlet.sleep, the hub runs
    elif mode == 'native':
        eventlet.patcher.original('time').sleep(secs)   # the hub is stuck
    elif mode == 'cpu':
        # Keep the machine usable for the broker and the relay thread:
        # nice() changes only this thread on Linux.
        try:
            os.nice(10)
        except OSError:
            pass
        x = 0
        while time.time() - t0 < secs:
            for i in range(10000):
                x += i * i
    else:
        raise ValueError('unknown mode %r' % mode)
    return round(time.time() - t0, 3)


def application(environ, start_response):
    _setup_logfile(environ.get('E2E_LOG'))
    path = environ.get('PATH_INFO', '/')
    qs = urllib.parse.parse_qs(environ.get('QUERY_STRING', ''))
    status = '200 OK'
    body = {'pid': os.getpid(), 'variant': environ.get('E2E_VARIANT'),
            'application_group': APP_GROUP}
    try:
        if path in ('/send', '/block'):
            st = _variant_state(environ)
            ops = [o for o in qs.get('ops', ['notify'])[0].split(',') if o]
            events = []
            body['ops'] = [_run_op(st, op, events) for op in ops]
            if path == '/block':
                mode = qs.get('mode', ['sleep'])[0]
                started = time.time()
                body['blocked'] = {'mode': mode, 'started': started, 'seconds': _block(
                    mode, float(qs.get('secs', ['10'])[0]))}
                after = []
                body['ops_after'] = [_run_op(st, op, after) for op in ops]
                body['events_after'] = after
                events += after
            hold = float(qs.get('hold', ['0'])[0])
            if hold:
                time.sleep(hold)    # green: spreads concurrent requests over children
            body['events'] = events
            body['reconnects'] = sum(
                1 for e in events if e['kind'] in ('reconnected', 'unreachable'))
            body['connections'] = st['connections']
            body['transport_url'] = st['transport_url']
            body['transport_url_from'] = st['transport_url_from']
            body['heartbeat_timeout_threshold'] = st['heartbeat_timeout_threshold']
            body['env'] = _env_report(environ)
            if any(o['result'].startswith('error')
                   for o in body['ops'] + body.get('ops_after', [])):
                status = '500 Internal Server Error'
        elif path == '/env':
            body['env'] = _env_report(environ)
            body['python'] = sys.version.split()[0]
        else:
            status = '404 Not Found'
    except Exception as e:
        logging.getLogger('e2e.app').exception('request failed')
        status = '500 Internal Server Error'
        body['error'] = repr(e)
    data = (json.dumps(body, indent=1, default=str) + '\n').encode()
    start_response(status, [('Content-Type', 'application/json'),
                            ('Content-Length', str(len(data)))])
    return [data]
