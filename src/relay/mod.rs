//! The AMQP 0-9-1 heartbeat relay (see DESIGN.md, "Relay rules").
//!
//! One current-thread tokio runtime per relay thread; one task per relayed
//! connection. Frames are found by their boundary and passed on untouched,
//! except connection-class methods on channel 0 and heartbeats, which the
//! relay owns.

pub mod connection;
pub mod deadline;
pub mod frame;
pub mod heartbeat;
pub mod listen;
pub mod methods;
pub mod peer;
pub mod quiet;
pub mod refusals;
pub mod resolve;
pub mod server;
#[cfg(test)]
pub mod test_support;
pub mod upstream;

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
