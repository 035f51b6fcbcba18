"""Issue 2: `apache2 -t` accepts a good configuration and rejects bad ones
with a message naming the directive (and the bad value)."""

import os
import subprocess

import pytest

from harness import certs

GOOD = """
AMQPHeartbeatBroker amqp://guest:guest@127.0.0.1:5672/ amqp://guest:guest@[::1]:5673/%2F
AMQPHeartbeatInterval 5
AMQPHeartbeatConnectTimeout 3
AMQPHeartbeatMaxConnections 8
AMQPHeartbeatEnv AMQP_HEARTBEAT_URL
AMQPHeartbeatEnv OS_DEFAULT__TRANSPORT_URL rabbit
AMQPHeartbeatChildRelay Off
<VirtualHost 127.0.0.1:@PORT@>
    ServerName api.test
    AMQPHeartbeatBroker amqps://nova:s%40cret@localhost:5671/nova
    AMQPHeartbeatTLSCACertificateFile @CA@
    AMQPHeartbeatEnv NOVA_URL pyamqp
    AMQPHeartbeatInterval 3600
</VirtualHost>
"""

B = "AMQPHeartbeatBroker"

# (id, config body, substrings the output must contain)
BAD = [
    ("scheme", B + " ftp://127.0.0.1/", [B, "unsupported scheme 'ftp'"]),
    ("not-a-url", B + " rabbit1:5672", [B, "is not a URL"]),
    ("host", B + " amqp://bad_host/", [B, "'bad_host' is not a valid host name"]),
    ("ipv4", B + " amqp://1.2.3.256/", [B, "not a valid IPv4"]),
    ("ipv6-brackets", B + " amqp://::1/", [B, "brackets"]),
    ("port-0", B + " amqp://h:0/", [B, "port '0' is out of range"]),
    ("port-70000", B + " amqp://h:70000/", [B, "port '70000' is out of range"]),
    ("port-abc", B + " amqp://h:abc/", [B, "is not a port number", "amqp://h:***/"]),
    ("second-url-bad", B + " amqp://h/ amqp://h:99999/", [B, "99999"]),
    ("vhosts-differ", B + " amqp://h/nova amqp://h2/", [B, "must name the same vhost", "'nova'"]),
    ("user-percent", B + " amqp://u:p%zz@h/", [B, "bad password"]),
    ("vhost-percent", B + " amqp://h/v%4", [B, "bad vhost 'v%4'"]),
    ("vhost-at", B + " amqp://h/a@b", [B, "an '@' after the first '/'", "%40"]),
    ("vhost-slash", B + " amqp://h/a/b", [B, "contains '/'"]),
    ("query", B + " amqp://h/?heartbeat=5", [B, "query"]),
    ("broker-no-args", B, [B]),
    ("broker-twice", B + " amqp://a/\n" + B + " amqp://b/", [B, "given twice"]),
    ("interval-0", "AMQPHeartbeatInterval 0", ["AMQPHeartbeatInterval", "0 is out of range"]),
    ("interval-3601", "AMQPHeartbeatInterval 3601", ["AMQPHeartbeatInterval", "3601 is out of range"]),
    ("interval-abc", "AMQPHeartbeatInterval abc", ["AMQPHeartbeatInterval", "'abc' is not a whole number"]),
    ("interval-negative", "AMQPHeartbeatInterval -1", ["AMQPHeartbeatInterval", "'-1'"]),
    ("interval-2-args", "AMQPHeartbeatInterval 5 6", ["AMQPHeartbeatInterval"]),
    ("connect-timeout-0", "AMQPHeartbeatConnectTimeout 0", ["AMQPHeartbeatConnectTimeout", "0 is out of range"]),
    ("max-connections-0", "AMQPHeartbeatMaxConnections 0", ["AMQPHeartbeatMaxConnections", "0 is out of range"]),
    ("max-connections-abc", "AMQPHeartbeatMaxConnections abc",
     ["AMQPHeartbeatMaxConnections", "'abc' is not a whole number"]),
    ("env-name", "AMQPHeartbeatEnv 1BAD", ["AMQPHeartbeatEnv", "'1BAD' is not a valid environment variable name"]),
    ("env-name-dash", "AMQPHeartbeatEnv A-B", ["AMQPHeartbeatEnv", "'A-B'"]),
    ("env-reserved-ld", "AMQPHeartbeatEnv LD_PRELOAD", ["AMQPHeartbeatEnv", "'LD_PRELOAD' is reserved"]),
    ("env-reserved-cgi", "AMQPHeartbeatEnv REMOTE_USER rabbit", ["AMQPHeartbeatEnv", "'REMOTE_USER' is reserved"]),
    ("env-reserved-python", "AMQPHeartbeatEnv PythonHome", ["AMQPHeartbeatEnv", "'PythonHome' is reserved"]),
    ("env-scheme", "AMQPHeartbeatEnv X amqps", ["AMQPHeartbeatEnv", "unknown scheme 'amqps'"]),
    ("env-3-args", "AMQPHeartbeatEnv A amqp extra", ["AMQPHeartbeatEnv"]),
    ("env-twice", "AMQPHeartbeatEnv A\nAMQPHeartbeatEnv A", ["AMQPHeartbeatEnv", "A is already published"]),
    ("ca-missing", "AMQPHeartbeatTLSCACertificateFile @WORKDIR@/no-such-ca.pem",
     ["AMQPHeartbeatTLSCACertificateFile", "cannot read CA file", "no-such-ca.pem"]),
    ("ca-directory", "AMQPHeartbeatTLSCACertificateFile @WORKDIR@",
     ["AMQPHeartbeatTLSCACertificateFile", "cannot read CA file"]),
    ("ca-no-certificate", "AMQPHeartbeatTLSCACertificateFile @NOTCERT@",
     ["AMQPHeartbeatTLSCACertificateFile", "holds no PEM certificate"]),
    ("child-relay-value", "AMQPHeartbeatChildRelay maybe", ["AMQPHeartbeatChildRelay", "On or Off"]),
    ("child-relay-in-vhost",
     "<VirtualHost 127.0.0.1:@PORT@>\nServerName v.test\nAMQPHeartbeatChildRelay Off\n</VirtualHost>",
     ["AMQPHeartbeatChildRelay", "cannot occur within <VirtualHost> section"]),
    ("bad-value-in-vhost",
     "<VirtualHost 127.0.0.1:@PORT@>\nServerName v.test\nAMQPHeartbeatInterval 0\n</VirtualHost>",
     ["AMQPHeartbeatInterval", "0 is out of range"]),
]


def _files(workdir):
    pki = certs.make_pki(os.path.join(workdir, "pki"))
    notcert = os.path.join(workdir, "not-a-cert.pem")
    with open(notcert, "w") as f:
        f.write("this is not a certificate\n")
    return pki["ca"], notcert


def _configtest(make_httpd, body):
    h = make_httpd(body)
    ca, notcert = _files(h.workdir)
    h.body = body.replace("@CA@", ca).replace("@NOTCERT@", notcert)
    h.write_config()
    return h.configtest()


def test_module_exports_its_record_and_the_daemon_entry_points_only(module_so):
    out = subprocess.run(["nm", "-D", "--defined-only", module_so], capture_output=True, text=True).stdout
    names = sorted(line.split()[-1] for line in out.splitlines() if line.strip())
    assert names == ["amqp_heartbeat_daemon_start", "amqp_heartbeat_daemon_stop", "amqp_heartbeat_module"], out


def test_good_config_main_server_and_vhost(module_so, make_httpd):
    rc, out = _configtest(make_httpd, GOOD)
    assert rc == 0 and "Syntax OK" in out, out


@pytest.mark.parametrize("body,wanted", [pytest.param(b, w, id=i) for i, b, w in BAD])
def test_bad_config_is_refused(module_so, make_httpd, body, wanted):
    rc, out = _configtest(make_httpd, body)
    assert rc != 0, "apache2 -t accepted:\n%s\n---\n%s" % (body, out)
    for w in wanted:
        assert w in out, "%r missing from apache2 -t output:\n%s" % (w, out)


# (id, broker URL with a bad part; every password holds "Secret")
PASSWORD_CASES = [
    ("port", "amqp://nova:topSecret@h:99999/"),
    ("escape-in-password", "amqp://nova:Sup3r%Secret@h/"),
    ("slash-in-password", "amqp://nova:pa/ssSecret@h:5672/nova"),
    ("slash-and-at-in-password", "amqp://nova:p@ss/Secret@h:99999/"),
    ("not-a-url", "nova:Secret@h"),
    ("vhosts-differ", "amqp://nova:topSecret@h/nova amqp://nova:topSecret@h2/"),
    # No '@' left: a space in an unquoted password, or an '@' written %40.
    ("space-in-password", "amqp://nova:top Secret@h/"),
    ("no-at", "amqp://nova:Sup3rSecret/"),
    ("encoded-at", "amqp://nova:Sup3rSecret%40h/"),
]


@pytest.mark.parametrize("url", [pytest.param(u, id=i) for i, u in PASSWORD_CASES])
def test_password_is_not_in_error(module_so, make_httpd, url):
    rc, out = _configtest(make_httpd, B + " " + url)
    assert rc != 0, out
    for fragment in ("Secret", "%Se", "ssS"):
        assert fragment not in out, out
    assert B in out and "***" in out, out


def test_same_env_name_different_brokers_in_two_vhosts(module_so, make_httpd):
    body = """
<VirtualHost 127.0.0.1:@PORT@>
    ServerName first.test
    AMQPHeartbeatBroker amqp://rabbit-a/
</VirtualHost>
<VirtualHost 127.0.0.1:@PORT@>
    ServerName second.test
    AMQPHeartbeatBroker amqp://rabbit-b/
</VirtualHost>
"""
    rc, out = _configtest(make_httpd, body)
    assert rc != 0, out
    for w in ("AMQPHeartbeatEnv", "AMQP_HEARTBEAT_URL", "first.test", "second.test"):
        assert w in out, "%r missing from apache2 -t output:\n%s" % (w, out)


def test_same_env_name_main_server_and_vhost(module_so, make_httpd):
    body = """
AMQPHeartbeatBroker amqp://rabbit-a/
AMQPHeartbeatEnv SHARED_URL
<VirtualHost 127.0.0.1:@PORT@>
    ServerName other.test
    AMQPHeartbeatBroker amqp://rabbit-b/
</VirtualHost>
"""
    rc, out = _configtest(make_httpd, body)
    assert rc != 0, out
    for w in ("SHARED_URL", "main server", "other.test"):
        assert w in out, "%r missing from apache2 -t output:\n%s" % (w, out)


def test_same_env_name_same_broker_is_fine(module_so, make_httpd):
    body = """
AMQPHeartbeatBroker amqp://rabbit-a/
<VirtualHost 127.0.0.1:@PORT@>
    ServerName same.test
</VirtualHost>
<VirtualHost 127.0.0.1:@PORT@>
    ServerName other.test
    AMQPHeartbeatBroker amqp://rabbit-b/
    AMQPHeartbeatEnv OTHER_URL
</VirtualHost>
"""
    rc, out = _configtest(make_httpd, body)
    assert rc == 0 and "Syntax OK" in out, out
