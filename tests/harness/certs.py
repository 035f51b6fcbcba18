"""A throw-away PKI made with the openssl CLI: a CA, a server certificate
for localhost / 127.0.0.1 signed by it, and an unrelated second CA (for
tests that need a verification failure). EC P-256 keys: fast to make.
"""

import os
import subprocess


def _openssl(*args, cwd):
    r = subprocess.run(("openssl",) + args, cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("openssl %s failed: %s" % (" ".join(args), r.stderr.strip()))


def _make_ca(d, name, cn):
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", name + ".key", "-out", name + ".pem", "-days", "3650", "-subj", "/CN=" + cn,
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)


def make_pki(directory):
    """Create (once) the files in directory; returns a dict of absolute paths:
    ca, cert, key (the server's, CN/SAN localhost and IP 127.0.0.1),
    other_ca (signed nothing here)."""
    d = os.path.abspath(directory)
    os.makedirs(d, exist_ok=True)
    paths = {k: os.path.join(d, v) for k, v in
             (("ca", "ca.pem"), ("cert", "server.pem"), ("key", "server.key"), ("other_ca", "other-ca.pem"))}
    if all(os.path.exists(p) for p in paths.values()):
        return paths
    _make_ca(d, "ca", "amqphb test CA")
    _make_ca(d, "other-ca", "amqphb unrelated CA")
    with open(os.path.join(d, "server.ext"), "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                "basicConstraints=critical,CA:FALSE\n"
                "keyUsage=critical,digitalSignature,keyEncipherment\n"
                "extendedKeyUsage=serverAuth\n")
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost", cwd=d)
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.pem", "-days", "3650", "-extfile", "server.ext", cwd=d)
    # beam runs as root here, but keep the key readable for any user.
    os.chmod(paths["key"], 0o644)
    return paths
