# Starts a Python multiprocessing worker forked (no exec) from this httpd
# child and answers its pid as JSON: {"pid": child, "worker": pid}. The
# worker sleeps up to `sleep` seconds (default 60); the test ends it.
import json
import multiprocessing
import os
import time
import urllib.parse


def application(environ, start_response):
    q = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
    seconds = float(q.get("sleep", ["60"])[0])
    worker = multiprocessing.get_context("fork").Process(target=time.sleep, args=(seconds,), daemon=True)
    worker.start()
    data = (json.dumps({"pid": os.getpid(), "worker": worker.pid}) + "\n").encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]
