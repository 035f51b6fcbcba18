# mod_amqp_heartbeat. `make` builds, `make install` installs the Debian way,
# `make deb` builds the Debian package (target/deb/), `make test` / `make demo` /
# `make bench` install what is missing first.

CARGO      ?= cargo
APXS       ?= apxs
# cargo's output dir: CARGO_TARGET_DIR when set (the package build shares
# the checkout's, see scripts/build-deb.sh), else target/.
CARGO_OUT  := $(or $(CARGO_TARGET_DIR),target)
MODULE_SO  := $(CARGO_OUT)/release/libmod_amqp_heartbeat.so
MODULE     := target/mod_amqp_heartbeat.so
PYTHON     := /usr/bin/python3
# What a WSGIImportScript line names to give a mod_wsgi daemon its relay.
DAEMON_SCRIPT := /usr/share/mod-amqp-heartbeat/amqp_heartbeat_daemon.py

.PHONY: all build install deb deps test test-unit test-relay test-httpd test-e2e demo bench lint clean

all: build

build: $(MODULE)

# cargo decides what is stale; the copy gives the module its httpd name.
# Replace the file by rename, never rewrite it in place: an httpd that has
# it mapped would crash. Unchanged builds leave it alone.
$(MODULE): FORCE
	$(CARGO) build --release
	mkdir -p $(dir $(MODULE))
	cmp -s $(MODULE_SO) $(MODULE) || { cp $(MODULE_SO) $(MODULE).tmp && mv -f $(MODULE).tmp $(MODULE); }

FORCE:

install: build
	install -D -m 644 $(MODULE) $(DESTDIR)$$($(APXS) -q LIBEXECDIR)/mod_amqp_heartbeat.so
	install -D -m 644 apache/amqp_heartbeat.load $(DESTDIR)/etc/apache2/mods-available/amqp_heartbeat.load
	install -D -m 644 apache/amqp_heartbeat.conf $(DESTDIR)/etc/apache2/mods-available/amqp_heartbeat.conf
	install -D -m 644 apache/amqp_heartbeat_daemon.py $(DESTDIR)$(DAEMON_SCRIPT)

# The Debian package, in target/deb/ (scripts/build-deb.sh says how).
deb:
	scripts/build-deb.sh

deps:
	scripts/install-deps.sh

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

test: deps
	scripts/test.sh

# DEMO_MODE=daemon: the apps in mod_wsgi daemon processes (WSGIDaemonProcess).
DEMO_MODE ?= embedded
demo: deps build
	$(PYTHON) demo/demo.py --mode=$(DEMO_MODE)

bench: deps build
	scripts/bench.sh

# P4: 256 children x 2 relayed connections for 10 minutes (not in CI).
.PHONY: soak
soak: deps build
	scripts/soak.sh

clean:
	$(CARGO) clean
