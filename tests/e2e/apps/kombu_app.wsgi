# A plain kombu app under eventlet.monkey_patch(): one consumer connection
# and one producer connection, both kept across requests.
#
# SetEnv in the vhost:
#   E2E_VARIANT       name of the variant (state is kept per variant)
#   E2E_KOMBU_URL     broker URL (direct variants), or
#   E2E_KOMBU_URL_ENV name of the process env variable holding the URL (the
#                     module publishes the relay URL there)
#   E2E_HEARTBEAT     client heartbeat in seconds (4 direct, 0 via the relay)
#   E2E_LOG           file the app logs to (debug aid)
#
# With a heartbeat, a green thread per connection calls heartbeat_check()
# and reads the broker's frames, as oslo.messaging does. It only runs while
# a request runs: the bug this project exists for.
#
# Endpoints (JSON out):
#   /send   publish one message, then wait up to 3 s for the consumer to
#           get it; report whether either connection had to be re-opened
#   /env    what the app sees of the relay URL
import eventlet
eventlet.monkey_patch()
import eventlet.semaphore

import json
import logging
import os
import socket
import time
import uuid

import kombu

try:
    import mod_wsgi
    APP_GROUP = mod_wsgi.application_group
except Exception:
    APP_GROUP = None

logging.getLogger('amqp').setLevel(logging.INFO)
_root = logging.getLogger()
_root.setLevel(logging.INFO)
LOG = logging.getLogger('e2e.kombu')
_logfile = {}
_state = {}


def _setup_logfile(path):
    if path and path not in _logfile:
        h = logging.FileHandler(path)
        h.setFormatter(logging.Formatter(
            '%(asctime)s pid=%(process)d %(name)s %(levelname)s: %(message)s'))
        _root.addHandler(h)
        _logfile[path] = h


def _hb_loop(st, role):
    # Green: runs only while some request gives the hub a chance.
    while True:
        conn = st['conns'][role]
        try:
            with st['lock']:
                conn.heartbeat_check(rate=2)
                try:
                    conn.drain_events(timeout=0.01)
                except socket.timeout:
                    pass
        except Exception as e:
            st['hb_errors'].append('%s: %r' % (role, e))
            if st['conns'][role] is conn:
                st['broken'].add(role)
            eventlet.sleep(2)
        eventlet.sleep(1)


def _local_port(conn):
    try:
        return conn._connection.sock.getsockname()[1]
    except Exception:
        return None


def _connect(st, role):
    conn = kombu.Connection(st['url'], heartbeat=st['heartbeat'],
                            connect_timeout=5, transport_options={
                                # Confirms make a publish on a dead
                                # connection fail instead of vanishing.
                                'confirm_publish': role == 'producer',
                                'client_properties': {'connection_name': '%s-%s-pid%d' % (
                                    st['name'], role, os.getpid())}})
    conn.connect()
    st['conns'][role] = conn
    st['broken'].discard(role)
    st['local_ports'][role] = _local_port(conn)
    if role == 'consumer':
        consumer = conn.Consumer([st['queue']], callbacks=[
            lambda body, message: (st['received'].append(body), message.ack())])
        consumer.consume()
        st['consumer'] = consumer
    return conn


def _variant_state(environ):
    name = environ.get('E2E_VARIANT', 'kombu')
    st = _state.get(name)
    if st is not None:
        return st
    url = environ.get('E2E_KOMBU_URL')
    url_from = 'E2E_KOMBU_URL (SetEnv)'
    if not url:
        var = environ['E2E_KOMBU_URL_ENV']
        url, url_from = os.environ.get(var), 'os.environ[%s]' % var
        if not url:
            raise RuntimeError('%s is not in os.environ: the module did not '
                               'publish the relay URL' % var)
    exchange = kombu.Exchange('e2e_kombu_' + name, 'direct', durable=False)
    st = {'name': name, 'url': url, 'url_from': url_from,
          'heartbeat': int(environ.get('E2E_HEARTBEAT', '4')),
          'lock': eventlet.semaphore.Semaphore(1),
          'queue': kombu.Queue('e2e_kombu_' + name, exchange=exchange,
                               routing_key=name, durable=False),
          'conns': {}, 'broken': set(), 'received': [], 'hb_errors': [], 'local_ports': {}, 'n': 0,
          'reconnects': 0}
    with st['lock']:
        _connect(st, 'consumer')
        _connect(st, 'producer')
    if st['heartbeat']:
        for role in ('consumer', 'producer'):
            eventlet.spawn(_hb_loop, st, role)
    _state[name] = st
    return st


def _reopen(st, role, why, events):
    events.append('%s: %s; reconnecting' % (role, why))
    st['reconnects'] += 1
    try:
        st['conns'][role].release()
    except Exception:
        pass
    _connect(st, role)


def _check(st, role, events):
    """Re-open a connection the heartbeat loop found dead, or one kombu
    re-opened on its own when it was used again (that leaves a consumer on
    a dead channel). Called with the lock held."""
    if role in st['broken']:
        _reopen(st, role, 'found dead by the heartbeat loop', events)
    elif _local_port(st['conns'][role]) != st['local_ports'].get(role):
        _reopen(st, role, 'silently re-opened by kombu', events)


def _publish(st, body):
    st['conns']['producer'].Producer().publish(
        body, exchange=st['queue'].exchange, routing_key=st['name'],
        declare=[st['queue']])


def _send(st):
    st['n'] += 1
    n = st['n']
    token = '%d-%d-%s' % (os.getpid(), n, uuid.uuid4().hex)
    events = []
    with st['lock']:
        _check(st, 'producer', events)
        try:
            _publish(st, {'n': n, 'token': token})
        except Exception as e:
            _reopen(st, 'producer', 'publish failed: %r' % (e,), events)
            _publish(st, {'n': n, 'token': token})
    deadline = time.time() + 3
    while time.time() < deadline and not any(m.get('token') == token for m in st['received']):
        with st['lock']:
            _check(st, 'consumer', events)
            try:
                st['conns']['consumer'].drain_events(timeout=0.2)
            except socket.timeout:
                pass
            except Exception as e:
                _reopen(st, 'consumer', 'drain failed: %r' % (e,), events)
        eventlet.sleep(0)
    got = any(m.get('token') == token for m in st['received'])
    return {'n': n, 'received': got, 'events': events}


def application(environ, start_response):
    _setup_logfile(environ.get('E2E_LOG'))
    path = environ.get('PATH_INFO', '/')
    status = '200 OK'
    body = {'pid': os.getpid(), 'variant': environ.get('E2E_VARIANT'),
            'application_group': APP_GROUP}
    try:
        if path == '/send':
            st = _variant_state(environ)
            r0 = st['reconnects']
            t0 = time.time()
            body.update(_send(st))
            body['seconds'] = round(time.time() - t0, 3)
            body['reconnects'] = st['reconnects'] - r0
            body['url_from'] = st['url_from']
            body['heartbeat'] = st['heartbeat']
            body['local_ports'] = st['local_ports']
            body['hb_errors'] = st['hb_errors'][-5:]
            body['connection_names'] = {
                role: '%s-%s-pid%d' % (st['name'], role, os.getpid())
                for role in ('consumer', 'producer')}
            if not body['received']:
                status = '500 Internal Server Error'
        elif path == '/env':
            body['env'] = {n: {'os.environ': os.environ.get(n), 'request': environ.get(n)}
                           for n in ('AMQP_HEARTBEAT_URL', 'OS_DEFAULT__TRANSPORT_URL')}
        else:
            status = '404 Not Found'
    except Exception as e:
        LOG.exception('request failed')
        status = '500 Internal Server Error'
        body['error'] = repr(e)
    data = (json.dumps(body, indent=1, default=str) + '\n').encode()
    start_response(status, [('Content-Type', 'application/json'),
                            ('Content-Length', str(len(data)))])
    return [data]
