//! The AMQP 0-9-1 heartbeat relay (its rules: R1 to R18 in
//! docs/DESIGN.md).
//!
//! One current-thread tokio runtime per relay thread; one task per relayed
//! connection. Each connection is a sans-I/O [`session::Session`] (every
//! decision) run by a thin [`driver`] (the sockets, its deadline on the
//! thread's one timerfd, [`thread_timer`]). Frames
//! are found by their boundary and passed on untouched, except
//! connection-class methods on channel 0 and heartbeats, which the relay
//! owns.

pub mod closing;
pub mod coalesce;
pub mod deadline;
pub mod driver;
pub mod frame;
pub mod heartbeat;
pub mod io_buffers;
pub mod listen;
pub mod log_limit;
pub mod login;
pub mod methods;
pub mod panic_guard;
pub mod peer;
pub mod quiet;
pub mod refusal;
pub mod resolve;
pub mod server;
pub mod session;
#[cfg(feature = "test-hooks")]
pub mod test_hooks;
#[cfg(test)]
pub mod test_support;
pub mod thread_timer;
pub mod upstream;

pub use session::events::Event;

use crate::config::RelaySettings;
use std::sync::Arc;

/// Severity of a relay event; the Apache layer maps it to APLOG_*.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error,
    Warn,
    Notice,
    Info,
    Debug,
}

/// Where relay events go. `listener` is the index of the listener (in the
/// order given to the relay) the event concerns, so the Apache layer can log
/// with the right `server_rec`. Messages never contain credentials.
pub trait EventLog: Send + Sync {
    fn event(&self, listener: usize, level: Level, message: &str);

    /// A typed relay event; rendered to text in one place
    /// ([`Event`]'s `Display`). Override to keep the fields.
    fn record(&self, listener: usize, event: &Event) {
        if event.is_logged() {
            self.event(listener, event.level(), &event.to_string());
        }
    }

    /// The process's status block, when the status page is on
    /// (src/status/): the driver publishes each connection's traffic there.
    fn status(&self) -> Option<&'static crate::status::layout::Slot> {
        None
    }

    /// The relay was restarted after a panic.
    fn relay_restarted(&self) {}
}

/// An [`EventLog`] that prints to stderr; for tests and benchmarks.
pub struct StderrLog;

impl EventLog for StderrLog {
    fn event(&self, listener: usize, level: Level, message: &str) {
        eprintln!("[relay {listener} {level:?}] {message}");
    }
}

/// One loopback listener and the upstream settings of the server(s) it
/// serves. The socket is bound by the caller (in child_init, before the URL
/// is published) so the address is connectable as soon as the app reads it.
pub struct RelayListener {
    pub listener: std::net::TcpListener,
    pub settings: Arc<RelaySettings>,
    /// The TLS client set-up for `amqps://` brokers (`None` when there is
    /// none), or why it failed. Built with the listener, before the relay
    /// thread starts: loading the system roots reads the environment
    /// (`SSL_CERT_FILE`, `SSL_CERT_DIR`), which the relay thread never does
    /// (an interpreter may be writing it; see resolve.rs).
    pub tls: Result<Option<tokio_rustls::TlsConnector>, String>,
}

impl RelayListener {
    /// Bind an ephemeral port on 127.0.0.1 (close-on-exec), so that the
    /// port stays bound after the relay stops listening (see listen.rs).
    pub fn bind_loopback(settings: Arc<RelaySettings>) -> std::io::Result<RelayListener> {
        Ok(RelayListener {
            listener: listen::bind_loopback()?,
            tls: upstream::tls_connector(&settings),
            settings,
        })
    }

    pub fn try_clone(&self) -> std::io::Result<RelayListener> {
        Ok(RelayListener {
            listener: self.listener.try_clone()?,
            settings: Arc::clone(&self.settings),
            tls: self.tls.clone(),
        })
    }
}
