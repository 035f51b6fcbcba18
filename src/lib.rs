//! mod_amqp_heartbeat: an Apache httpd module that runs, in each prefork
//! child, one native thread holding a local AMQP 0-9-1 relay, so the
//! upstream broker connection's heartbeats keep going whatever the embedded
//! interpreter does.
//!
//! Layout and data flow:
//!
//! - [`config`], [`broker_url`] and [`env_name`]: directive parsing,
//!   validation and the Apache-style merge. Safe, unit-tested, no httpd
//!   symbols.
//! - [`relay`]: the relay proper (its rules: docs/DESIGN.md, R1 to R18).
//!   [`relay::session`] is one relayed connection as a sans-I/O state
//!   machine: bytes and the time in, actions out; its parts are
//!   [`relay::session::phase`] (where the connection is),
//!   `relay::session::intercept` (Tune, TuneOk, Close, CloseOk),
//!   [`relay::session::liveness`] (heartbeat timers from
//!   [`relay::heartbeat`], the quiet mark, the broker verdict),
//!   [`relay::session::close_plan`] (ending -> what each side is told) and
//!   [`relay::session::events`] (what is logged, as data).
//!   [`relay::io_buffers`] holds one direction's bytes, [`relay::frame`]
//!   finds frame boundaries, [`relay::methods`] decodes and builds the few
//!   connection-class methods the relay owns. The tokio side:
//!   [`relay::driver`] pumps one connection's sockets for its session,
//!   [`relay::closing`] runs a close plan, [`relay::quiet`] is its
//!   low-water mark; [`relay::thread_timer`] is the thread's one timerfd
//!   ([`relay::deadline`]) shared by all its connections, whose wakeups
//!   [`relay::coalesce`] gathers,
//!   [`relay::upstream`] dials brokers (failover, TLS), [`relay::peer`]
//!   checks that a client socket belongs to this process, and
//!   [`relay::server`] accepts connections and runs the event loop.
//! - [`relay_thread`]: the one native thread per child: signals blocked,
//!   panics caught and the relay restarted, bounded stop; [`log_gate`]
//!   keeps its log calls out of a child that is freeing its pools.
//! - [`status`]: the status page (issue 12): each relay process's block of
//!   atomics in memory shared by all httpd processes, counted from the
//!   relay's typed events and the driver's per-wakeup figures, rendered as
//!   HTML, JSON, Prometheus text, mod_status lines and a health verdict.
//! - `os`: a timerfd registered with tokio's reactor (one `unsafe` call,
//!   the registration; see relay::deadline for why not tokio's timers) and
//!   `SO_RCVLOWAT`.
//! - `apache` (with `os`, the only `unsafe` code): bindgen bindings, the directive
//!   handlers, the hooks (check_config, child_init, fixups), the entry
//!   points a mod_wsgi daemon process calls to get its own relay, and the
//!   bridge from relay events to `ap_log_error`. The C shim in `apache/` holds the
//!   module record, the command table and the varargs log call.
//!
//! ```text
//! app client --tcp 127.0.0.1:PORT--> [relay thread] ==amqp(s)==> broker
//! ```

// The safe core stays safe and panic-free by construction: `unsafe` is
// allowed only in the Apache/FFI layer (`apache`, and `os` for the one
// kernel interface tokio only offers unsafely), unwrap/expect only in tests.
#![deny(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod broker_url;
pub mod config;
pub mod env_name;
pub mod log_gate;
// The kernel interface below std, nix and tokio (a timerfd for the
// heartbeat timers); see src/os/mod.rs.
#[allow(unsafe_code)]
mod os;
pub mod relay;
pub mod relay_thread;
pub mod status;

#[allow(unsafe_code)]
mod apache;
