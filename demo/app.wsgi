# The demo's app, shaped like nova-api: eventlet.monkey_patch() at import,
# then an oslo.messaging notifier that lives across requests. Each request
# sends one notification and says what the client did.
#
# The vhost tells it (SetEnv):
#   DEMO_VARIANT    "direct" or "module" (state is kept per variant)
#   DEMO_OSLO_CONF  the oslo.config file
#   DEMO_USE_ENV    "1": oslo.config reads OS_DEFAULT__TRANSPORT_URL from
#                   the environment, where mod_amqp_heartbeat published the
#                   relay's URL. "0" for the direct variant (the module's
#                   variable is process-wide).
import eventlet
eventlet.monkey_patch()

import json
import logging
import os
import time
import urllib.parse


class _Events(logging.Handler):
    """Collects what oslo.messaging logs about its connections."""

    WANTED = ('Connected to AMQP server', 'Reconnected to AMQP server', 'is unreachable')

    def __init__(self):
        logging.Handler.__init__(self, logging.DEBUG)
        self.records = []

    def emit(self, record):
        if record.name.startswith(('oslo.messaging', 'oslo_messaging')):
            msg = record.getMessage()
            if any(w in msg for w in self.WANTED) or record.levelno >= logging.ERROR:
                self.records.append({'level': record.levelname, 'message': msg[:300],
                                     'args': record.args if isinstance(record.args, dict) else {}})


_events = _Events()
logging.getLogger().addHandler(_events)
logging.getLogger().setLevel(logging.DEBUG)
logging.getLogger('amqp').setLevel(logging.INFO)

_state = {}


def _redact(url):
    p = urllib.parse.urlsplit(url or '')
    if p.password:
        p = p._replace(netloc='%s:***@%s:%s' % (p.username, p.hostname, p.port))
    return urllib.parse.urlunsplit(p)


def _variant(environ):
    name = environ.get('DEMO_VARIANT', 'direct')
    if name not in _state:
        from oslo_config import cfg
        import oslo_messaging
        conf = cfg.ConfigOpts()
        conf(args=[], project='demo', use_env=environ.get('DEMO_USE_ENV') == '1',
             default_config_files=[environ['DEMO_OSLO_CONF']])
        transport = oslo_messaging.get_notification_transport(conf)
        loc = conf.get_location('transport_url')
        _state[name] = {
            'notifier': oslo_messaging.Notifier(transport, publisher_id='demo-api',
                                                driver='messaging', topics=['demo_notifications']),
            'transport_url': _redact(conf.transport_url),
            'transport_url_from': loc.location.name if loc else None,
            'heartbeat_timeout_threshold': conf.oslo_messaging_rabbit.heartbeat_timeout_threshold,
            'connection_ids': [],
            'n': 0,
        }
    return _state[name]


def application(environ, start_response):
    t0 = time.time()
    body = {'pid': os.getpid()}
    status = '200 OK'
    try:
        st = _variant(environ)
        st['n'] += 1
        start = len(_events.records)
        st['notifier'].info({}, 'demo.ping', {'n': st['n'], 'pid': os.getpid()})
        events = _events.records[start:]
        for e in events:
            cid = e['args'].get('connection_id')
            if cid and cid not in st['connection_ids']:
                st['connection_ids'].append(cid)
        body.update({k: st[k] for k in ('transport_url', 'transport_url_from',
                                        'heartbeat_timeout_threshold', 'connection_ids', 'n')})
        body['events'] = [{'level': e['level'], 'message': e['message']} for e in events]
        body['reconnected'] = any('Reconnected' in e['message'] or 'unreachable' in e['message']
                                  for e in events)
        if any(e['level'] == 'ERROR' and 'notification' in e['message'] for e in events):
            status = '500 Internal Server Error'
    except Exception as e:
        logging.getLogger('demo').exception('request failed')
        status = '500 Internal Server Error'
        body['error'] = repr(e)
    body['seconds'] = round(time.time() - t0, 3)
    data = (json.dumps(body, indent=1) + '\n').encode()
    start_response(status, [('Content-Type', 'application/json'), ('Content-Length', str(len(data)))])
    return [data]
