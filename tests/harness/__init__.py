"""Test harness for mod_amqp_heartbeat: private RabbitMQ nodes and private
httpd instances on loopback, started by the tests and always stopped.

- ports: free loopback TCP ports.
- procs: /proc helpers (threads, children, leftovers by work dir).
- certs: a throw-away CA and server certificate (openssl CLI).
- rabbit: RabbitNode, a private RabbitMQ node (also a CLI for Rust tests).
- httpd: Httpd, a private /usr/sbin/apache2 instance.
- dns: Dnsmasq, a private DNS server on loopback, and a private resolver
  configuration for httpd (a mount namespace).

Standard library only; run with Debian's /usr/bin/python3.
"""
