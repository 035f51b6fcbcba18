"""Issue 11, item 1: no broker secret in any environment, log or `-t`
output; the relay logs in upstream with the directive's credentials, so an
app whose URL has no userinfo publishes to a broker user with a password.

The broker has no guest user here: a client that reached it with its own
default credentials (guest) would be refused, so a publish that works proves
that the relay logged in.
"""

import json

from harness.httpd import wsgi_body

USER = "shop"
SECRET = "TopS3cret"
# '/' and '@' in the password, percent-encoded: where redaction goes wrong.
SECRET_IN_URL = SECRET + "%2F%40x"
NEEDLES = (SECRET, SECRET_IN_URL)


def _vhosts(broker_port):
    return """
<VirtualHost 127.0.0.1:@PORT@>
    ServerName shop.test
    AMQPHeartbeatBroker amqp://%s:%s@127.0.0.1:%d/
    %s
</VirtualHost>
<VirtualHost 127.0.0.1:@PORT@>
    ServerName plain.test
    %s
</VirtualHost>
""" % (USER, SECRET_IN_URL, broker_port, wsgi_body(group="%{GLOBAL}"), wsgi_body(group="%{GLOBAL}"))


def _assert_no_secret(what, text):
    for needle in NEEDLES:
        assert needle not in text, "%s shows the broker password:\n%s" % (what, text[-3000:])


def test_relay_logs_in_and_no_secret_reaches_any_environment_or_log(module_so, make_httpd, make_rabbit):
    node = make_rabbit()
    node.ctl("add_user", USER, SECRET + "/@x")
    node.ctl("set_permissions", "-p", "/", USER, ".*", ".*", ".*")
    node.ctl("delete_user", "guest")

    h = make_httpd(_vhosts(node.amqp_port), servers=1, wsgi=True, log_level="trace8")
    rc, out = h.configtest()
    assert rc == 0, out
    _assert_no_secret("apache2 -t", out)
    h.start()

    shop = h.get_json("/?dump=1&publish=1", host="shop.test")
    plain = h.get_json("/?dump=1", host="plain.test")
    assert shop["pid"] == plain["pid"], "both vhosts must be served by the one child"
    assert shop["publish"] == "ok", "publishing through the relay without a secret: %s\n%s" % (
        shop["publish"], h.error_log_tail())
    url = shop["env"]["AMQP_HEARTBEAT_URL"]["wsgi"]
    assert url and "@" not in url, url
    for name, answer in (("the configured vhost", shop), ("the vhost without the directive", plain)):
        _assert_no_secret(name + "'s environments", json.dumps(answer))
    _assert_no_secret("the error log at trace8", h.error_log())


def test_without_configured_credentials_the_broker_judges_the_app(module_so, make_httpd, make_rabbit):
    """No userinfo in the directive: the app's own (default guest)
    credentials pass through, and a broker without guest refuses them."""
    node = make_rabbit()
    node.ctl("delete_user", "guest")
    body = "AMQPHeartbeatBroker amqp://127.0.0.1:%d/\n" % node.amqp_port + wsgi_body(group="%{GLOBAL}")
    h = make_httpd(body, servers=1, wsgi=True).start()
    answer = h.get_json("/?publish=1")
    assert answer["publish"] != "ok", "the broker accepted a user it does not have"
