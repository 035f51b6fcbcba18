# Benchmark app (P3, P4): open N plain kombu connections and keep them,
# idle, across requests. No eventlet, no client heartbeat (heartbeat=0):
# keeping them alive is the relay's job. With the module the URL comes from
# os.environ[AMQP_HEARTBEAT_URL] (published in child_init); without it,
# from SetEnv BENCH_DIRECT_URL (the broker itself, the baseline).
#
#   /open?n=2   open connections until n are held; JSON: pid, held, url kind
#               (&hold=S: then sleep S seconds, so concurrent requests
#               spread over the children)
#   /info       pid and how many are held
import json
import os
import time
import urllib.parse

import kombu

_held = []


def application(environ, start_response):
    path = environ.get('PATH_INFO', '/')
    qs = urllib.parse.parse_qs(environ.get('QUERY_STRING', ''))
    body = {'pid': os.getpid()}
    status = '200 OK'
    try:
        if path == '/open':
            url = os.environ.get('AMQP_HEARTBEAT_URL')
            body['via'] = 'relay'
            if not url:
                url = environ['BENCH_DIRECT_URL']
                body['via'] = 'direct'
            n = int(qs.get('n', ['2'])[0])
            while len(_held) < n:
                c = kombu.Connection(url, heartbeat=0, connect_timeout=10)
                c.connect()
                _held.append(c)
            time.sleep(float(qs.get('hold', ['0'])[0]))
        elif path != '/info':
            status = '404 Not Found'
        body['held'] = len(_held)
    except Exception as e:
        status = '500 Internal Server Error'
        body['error'] = repr(e)
    data = (json.dumps(body) + '\n').encode()
    start_response(status, [('Content-Type', 'application/json'),
                            ('Content-Length', str(len(data)))])
    return [data]
