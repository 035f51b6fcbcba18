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
                supervise(&listeners, &thread_shutdown, &log, server::run);
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

/// The signature of [`server::run`]; a parameter so the restart logic can
/// be tested with a relay that panics.
type RunRelay = fn(Vec<RelayListener>, Shutdown, Arc<dyn EventLog>) -> Result<(), String>;

fn supervise(
    listeners: &[RelayListener],
    shutdown: &Shutdown,
    log: &Arc<dyn EventLog>,
    run: RunRelay,
) {
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
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            run(copies, shutdown.clone(), Arc::clone(log))
        }));
        match outcome {
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
                log.relay_restarted();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Directive, ServerConfig};
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Collect(Mutex<Vec<String>>);
    impl EventLog for Collect {
        fn event(&self, _: usize, _: Level, message: &str) {
            if let Ok(mut v) = self.0.lock() {
                v.push(message.to_string());
            }
        }
    }

    static RUNS: AtomicUsize = AtomicUsize::new(0);

    fn panics_twice(
        listeners: Vec<RelayListener>,
        shutdown: Shutdown,
        log: Arc<dyn EventLog>,
    ) -> Result<(), String> {
        if RUNS.fetch_add(1, Ordering::SeqCst) < 2 {
            panic!("test panic");
        }
        server::run(listeners, shutdown, log)
    }

    #[test]
    fn a_panicking_relay_is_restarted_on_the_same_socket() {
        let mut config = ServerConfig::default();
        config
            .apply(Directive::Broker, &["amqp://127.0.0.1:1/"])
            .unwrap();
        let listener =
            RelayListener::bind_loopback(Arc::new(config.relay_settings().unwrap())).unwrap();
        let addr = listener.listener.local_addr().unwrap();
        let collect = Arc::new(Collect(Mutex::new(Vec::new())));
        let log: Arc<dyn EventLog> = collect.clone();
        let shutdown = Shutdown::new();
        let thread_shutdown = shutdown.clone();
        let listeners = vec![listener];
        let thread =
            std::thread::spawn(move || supervise(&listeners, &thread_shutdown, &log, panics_twice));
        // After two panics and restarts the relay serves the same address.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while RUNS.load(Ordering::SeqCst) < 3 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(100));
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        use std::io::{Read, Write};
        stream.write_all(b"HTTP/1.0").unwrap();
        let mut reply = [0u8; 8];
        stream.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"AMQP\x00\x00\x09\x01");
        shutdown.trigger(Duration::from_millis(100));
        thread.join().unwrap();
        let messages = collect.0.lock().unwrap();
        let panics = messages
            .iter()
            .filter(|m| m.contains("relay panicked: test panic"))
            .count();
        assert_eq!(panics, 2, "{messages:?}");
    }
}
