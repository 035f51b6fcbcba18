//! The AMQP 0-9-1 heartbeat relay (its rules: R1 to R14 in
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
pub mod methods;
pub mod peer;
pub mod quiet;
pub mod server;
pub mod session;
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
        self.event(listener, event.level(), &event.to_string());
    }
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
}

impl RelayListener {
    /// Bind an ephemeral port on 127.0.0.1 (close-on-exec, as every socket
    /// std opens).
    pub fn bind_loopback(settings: Arc<RelaySettings>) -> std::io::Result<RelayListener> {
        let listener = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))?;
        // std listens with a backlog of 128; a burst of connects beyond it
        // would wait a whole SYN retry (1 s). Linux caps this at somaxconn.
        nix::sys::socket::listen(&listener, nix::sys::socket::Backlog::MAXCONN)?;
        listener.set_nonblocking(true)?;
        Ok(RelayListener { listener, settings })
    }

    pub fn try_clone(&self) -> std::io::Result<RelayListener> {
        Ok(RelayListener {
            listener: self.listener.try_clone()?,
            settings: Arc::clone(&self.settings),
        })
    }
}
