//! Test-only triggers (feature `test-hooks`, which `make test` turns on
//! for the relay tests; the module httpd loads is built without it). They
//! let the relay tests make a connection's pump or a listener's acceptor
//! panic on cue, to prove that a panic is caught where it happens
//! (relay::panic_guard) and costs only what it must, and shorten the
//! handshake's bound (rule R12) on one listener, so a trial need not wait
//! a minute for it.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

/// A client that sends these bytes makes its connection's pump panic.
pub const PANIC_MARKER: &[u8] = b"amqp-heartbeat-test-panic";

/// Listener ports whose acceptor panics at its next accept (once).
static PANIC_ACCEPTORS: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

pub fn asks_for_panic(bytes: &[u8]) -> bool {
    bytes.windows(PANIC_MARKER.len()).any(|w| w == PANIC_MARKER)
}

/// Make the acceptor of the listener on `port` panic at its next accept.
pub fn panic_acceptor_once(port: u16) {
    let mut set = PANIC_ACCEPTORS.lock().unwrap_or_else(|p| p.into_inner());
    set.get_or_insert_with(HashSet::new).insert(port);
}

/// Whether the acceptor on `port` is to panic now (the trigger is used up).
pub fn acceptor_should_panic(port: u16) -> bool {
    let mut set = PANIC_ACCEPTORS.lock().unwrap_or_else(|p| p.into_inner());
    set.as_mut().is_some_and(|s| s.remove(&port))
}

/// Listener ports whose connections get a shorter handshake bound.
static HANDSHAKE_TIMEOUTS: Mutex<Option<HashMap<u16, Duration>>> = Mutex::new(None);

/// Give the connections of the listener on `port` this handshake bound.
pub fn shorten_handshake(port: u16, timeout: Duration) {
    let mut map = HANDSHAKE_TIMEOUTS.lock().unwrap_or_else(|p| p.into_inner());
    map.get_or_insert_with(HashMap::new).insert(port, timeout);
}

/// The handshake bound a test set for the listener on `port`, if any.
pub fn handshake_timeout(port: u16) -> Option<Duration> {
    let map = HANDSHAKE_TIMEOUTS.lock().unwrap_or_else(|p| p.into_inner());
    map.as_ref().and_then(|m| m.get(&port).copied())
}
