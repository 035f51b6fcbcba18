//! The Apache layer: the only `unsafe` code of the crate.
//!
//! The C shim (`apache/mod_amqp_heartbeat.c`) holds the module record, the
//! directive table and hook registration, and calls the `amqphb_*` entry
//! points defined here, as `apache/amqphb.h` declares them ([`contract`]
//! checks each definition against that header at compile time):
//!
//! - [`server_config`]: per-server config create/merge (boxed
//!   [`server_config::ModuleConfig`], freed by a pool cleanup) and the one
//!   directive handler, a translation to [`crate::config::ServerConfig::apply`].
//! - [`check`]: the cross-server check run by `check_config` (both for
//!   `httpd -t` and for every start).
//! - [`child`]: `child_init` binds the loopback listeners, publishes the
//!   relay URLs (process environment, then per request in `fixups`), starts
//!   the relay thread and registers its stop on the child pool.
//! - [`daemon`]: the entry points a mod_wsgi daemon process calls (through
//!   `apache/amqp_heartbeat_daemon.py`) to start and stop its own relay
//!   with [`child`]'s start.
//! - [`wsgi_routing`]: which requests mod_wsgi ships to a daemon process
//!   (they get no URL from the child, see `fixups`).
//! - [`status`]: the status page's shared table (made at post_config),
//!   each relay's slot, the `amqp-heartbeat-status` handler and
//!   mod_status's `status_hook`.
//! - [`ffi`]: the small helpers every entry uses: the panic boundary, C
//!   strings, the `server_rec` handle and the log bridge.
//!
//! Every entry point runs its body inside [`ffi::boundary`], so a panic is
//! logged and turned into a safe return value instead of unwinding into C.

mod bindings;
mod check;
mod child;
mod contract;
mod daemon;
mod ffi;
mod server_config;
mod status;
mod wsgi_routing;
