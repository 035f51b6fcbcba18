//! What the relay's unit tests share: a log that keeps every event, and a
//! listener whose broker is nowhere.

use crate::config::{Directive, ServerConfig};
use crate::relay::{EventLog, Level, RelayListener};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Collect(Mutex<Vec<(Level, String)>>);

impl EventLog for Collect {
    fn event(&self, _: usize, level: Level, message: &str) {
        if let Ok(mut v) = self.0.lock() {
            v.push((level, message.to_string()));
        }
    }
}

impl Collect {
    pub fn new() -> Arc<Collect> {
        Arc::new(Collect::default())
    }

    pub fn events(&self) -> Vec<(Level, String)> {
        self.0.lock().unwrap().clone()
    }

    pub fn messages(&self) -> Vec<String> {
        self.events().into_iter().map(|(_, m)| m).collect()
    }

    /// Wait until an event's message contains `needle`; returns it.
    pub fn wait_for(&self, needle: &str, limit: Duration) -> (Level, String) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(found) = self.events().into_iter().find(|(_, m)| m.contains(needle)) {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "no event with {needle:?} in {limit:?}: {:?}",
                self.events()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A relay listener whose broker is nowhere (port 1).
pub fn listener_to_nowhere() -> RelayListener {
    let mut config = ServerConfig::default();
    config
        .apply(Directive::Broker, &["amqp://127.0.0.1:1/"])
        .unwrap();
    RelayListener::bind_loopback(Arc::new(config.relay_settings().unwrap())).unwrap()
}
