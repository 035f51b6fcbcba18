//! The relay's native thread: one per httpd child.
//!
//! - Every signal is blocked in it (set in the spawning thread around the
//!   spawn, so no signal can land in the gap), leaving httpd's signal
//!   handling to httpd's own threads.
//! - A panic in the relay is caught, logged, and the relay started again on
//!   the same listening sockets, so the URL published to the app stays right.
//! - [`RelayThread::stop`] asks the relay to close every upstream with
//!   Connection.Close and waits at most the given grace period: a child
//!   never hangs on exit.

use crate::relay::server::{self, Shutdown};
use crate::relay::{EventLog, Level, RelayListener};
use nix::sys::signal::{SigSet, SigmaskHow, pthread_sigmask};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

/// Pause between restarts after a panic, so a relay that panics at once
/// does not spin.
const RESTART_BACKOFF: Duration = Duration::from_millis(500);

pub struct RelayThread {
    shutdown: Shutdown,
    finished: mpsc::Receiver<()>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// How [`RelayThread::stop`] ended.
#[derive(Debug, PartialEq, Eq)]
pub enum StopOutcome {
    /// The thread finished within the grace period.
    Clean,
    /// The grace period ran out; the thread is left to die with the process.
    TimedOut,
}

impl RelayThread {
    /// Start the thread. `listeners` must be non-empty.
    pub fn start(
        listeners: Vec<RelayListener>,
        log: Arc<dyn EventLog>,
    ) -> Result<RelayThread, String> {
        let shutdown = Shutdown::new();
        let thread_shutdown = shutdown.clone();
        let (finished_tx, finished) = mpsc::channel();

        let all = SigSet::all();
        let mut previous = SigSet::empty();
        pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&all), Some(&mut previous))
            .map_err(|e| format!("cannot block signals for the relay thread: {e}"))?;
        let spawned = std::thread::Builder::new()
            .name("amqp-heartbeat".to_string())
            .spawn(move || {
                supervise(&listeners, &thread_shutdown, &log);
                let _ = finished_tx.send(());
            });
        // Restore the caller's mask whatever happened: this is httpd's thread.
        let restored = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&previous), None);
        let thread = spawned.map_err(|e| format!("cannot start the relay thread: {e}"))?;
        restored.map_err(|e| format!("cannot restore the signal mask: {e}"))?;
        Ok(RelayThread {
            shutdown,
            finished,
            thread: Some(thread),
        })
    }

    /// Close every relayed connection (Connection.Close upstream) and stop
    /// the thread, waiting at most `grace`.
    pub fn stop(mut self, grace: Duration) -> StopOutcome {
        // The relay uses most of the grace period for closing handshakes and
        // keeps a margin for its own exit.
        self.shutdown.trigger(grace.mul_f32(0.8));
        match self.finished.recv_timeout(grace) {
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                if let Some(t) = self.thread.take() {
                    let _ = t.join();
                }
                StopOutcome::Clean
            }
            Err(mpsc::RecvTimeoutError::Timeout) => StopOutcome::TimedOut,
        }
    }
}

fn supervise(listeners: &[RelayListener], shutdown: &Shutdown, log: &Arc<dyn EventLog>) {
    loop {
        let copies: Result<Vec<RelayListener>, _> =
            listeners.iter().map(RelayListener::try_clone).collect();
        let copies = match copies {
            Ok(c) => c,
            Err(e) => {
                log.event(
                    0,
                    Level::Error,
                    &format!("relay cannot reuse its listening sockets: {e}; relay stopped"),
                );
                return;
            }
        };
        let run = catch_unwind(AssertUnwindSafe(|| {
            server::run(copies, shutdown.clone(), Arc::clone(log))
        }));
        match run {
            Ok(Ok(())) => return,
            Ok(Err(e)) => log.event(
                0,
                Level::Error,
                &format!("relay stopped with an error: {e}"),
            ),
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_string());
                log.event(
                    0,
                    Level::Error,
                    &format!("relay panicked: {what}; its connections were dropped, restarting it"),
                );
            }
        }
        if shutdown.is_triggered() {
            return;
        }
        std::thread::sleep(RESTART_BACKOFF);
        if shutdown.is_triggered() {
            return;
        }
    }
}
