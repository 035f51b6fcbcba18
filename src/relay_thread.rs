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
//! - The listening ports outlive the relay: once it is not running (it
//!   failed to start, gave up, or stopped), they refuse connections and
//!   stay bound until the process exits, so nobody else can take the
//!   published address.

use crate::relay::listen::{self, HeldPorts};
use crate::relay::resolve;
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
    held: HeldPorts,
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
        let sockets: Vec<_> = listeners.iter().map(|l| &l.listener).collect();
        let held = HeldPorts::hold(&sockets)
            .map_err(|e| format!("cannot hold the relay's listening sockets: {e}"))?;
        // The thread never reads the environment: what it needs of it is
        // taken now (TLS roots were loaded with the listeners).
        resolve::capture_environment();
        let mut runtime = server::runtime_builder();
        let shutdown = Shutdown::new();
        let thread_shutdown = shutdown.clone();
        let (finished_tx, finished) = mpsc::channel();

        let all = SigSet::all();
        let mut previous = SigSet::empty();
        if let Err(e) = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&all), Some(&mut previous)) {
            held.refuse();
            return Err(format!("cannot block signals for the relay thread: {e}"));
        }
        let spawned = std::thread::Builder::new()
            .name("amqp-heartbeat".to_string())
            .spawn(move || {
                supervise(
                    &listeners,
                    &mut runtime,
                    &thread_shutdown,
                    &log,
                    server::run,
                );
                let _ = finished_tx.send(());
            });
        // Restore the caller's mask whatever happened: this is httpd's thread.
        let restored = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&previous), None);
        let thread = match spawned {
            Ok(thread) => thread,
            Err(e) => {
                held.refuse();
                return Err(format!("cannot start the relay thread: {e}"));
            }
        };
        if let Err(e) = restored {
            held.refuse();
            return Err(format!("cannot restore the signal mask: {e}"));
        }
        Ok(RelayThread {
            shutdown,
            finished,
            thread: Some(thread),
            held,
        })
    }

    /// A handle that starts this thread's stop without waiting for it.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            shutdown: self.shutdown.clone(),
            held: self.held,
        }
    }

    /// Close every relayed connection (Connection.Close upstream) and stop
    /// the thread, waiting at most `grace`. From the start of the stop the
    /// ports refuse connections; they stay bound until the process exits.
    pub fn stop(mut self, grace: Duration) -> StopOutcome {
        self.stop_handle().begin(grace);
        let finished = self.finished.recv_timeout(grace);
        match finished {
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

/// Starts a [`RelayThread`]'s stop from elsewhere, without waiting for it:
/// httpd's child_stopping, which an MPM with worker threads runs before it
/// joins them. [`RelayThread::stop`] still waits for the thread.
#[derive(Clone)]
pub struct StopHandle {
    shutdown: Shutdown,
    held: HeldPorts,
}

impl StopHandle {
    /// Close every relayed connection (Connection.Close 320 to the client,
    /// Connection.Close upstream) within `grace`, and refuse new ones at
    /// once: an app that reconnects is told no at once, rather than left
    /// waiting in the backlog of a relay that no longer accepts. Calling it
    /// again changes nothing.
    pub fn begin(&self, grace: Duration) {
        if !self.shutdown.is_triggered() {
            // The relay uses most of the grace period for closing
            // handshakes and keeps a margin for its own exit.
            self.shutdown.trigger(grace.mul_f32(0.8));
        }
        self.held.refuse();
    }

    /// [`begin`](Self::begin) once `hold` has passed, on a thread of its
    /// own, unless the stop began meanwhile; at once when no thread can be
    /// had. Nothing else happens on that thread (no log: the process may
    /// be taking its pools apart by then).
    pub fn begin_after(&self, hold: Duration, grace: Duration) {
        let handle = self.clone();
        let spawned = std::thread::Builder::new()
            .name("amqphb-stop".to_string())
            // Given, so that std does not read RUST_MIN_STACK from an
            // environment the app's threads may be changing.
            .stack_size(TIMER_STACK)
            .spawn(move || {
                std::thread::sleep(hold);
                handle.begin(grace);
            });
        if spawned.is_err() {
            self.begin(grace);
        }
    }
}

/// The stack of [`StopHandle::begin_after`]'s thread, which only sleeps.
const TIMER_STACK: usize = 64 * 1024;

/// The signature of [`server::run`]; a parameter so the restart logic can
/// be tested with a relay that panics.
type RunRelay = fn(
    &mut tokio::runtime::Builder,
    Vec<RelayListener>,
    Shutdown,
    Arc<dyn EventLog>,
) -> Result<(), String>;

fn supervise(
    listeners: &[RelayListener],
    runtime: &mut tokio::runtime::Builder,
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
                // Nobody accepts any more: refuse, keep the ports.
                for l in listeners {
                    let _ = listen::refuse_from_now(&l.listener);
                }
                log.event(
                    0,
                    Level::Error,
                    &format!(
                        "relay cannot reuse its listening sockets: {e}; relay stopped, its ports refuse connections"
                    ),
                );
                return;
            }
        };
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            run(runtime, copies, shutdown.clone(), Arc::clone(log))
        }));
        match outcome {
            Ok(Ok(())) => return,
            Ok(Err(e)) => log.event(
                0,
                Level::Error,
                &format!("relay stopped with an error: {e}"),
            ),
            Err(panic) => {
                let what = crate::relay::panic_guard::message(panic.as_ref());
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
    use crate::relay::test_support::{Collect, listener_to_nowhere};
    use std::sync::atomic::{AtomicUsize, Ordering};

    static RUNS: AtomicUsize = AtomicUsize::new(0);

    fn panics_twice(
        runtime: &mut tokio::runtime::Builder,
        listeners: Vec<RelayListener>,
        shutdown: Shutdown,
        log: Arc<dyn EventLog>,
    ) -> Result<(), String> {
        if RUNS.fetch_add(1, Ordering::SeqCst) < 2 {
            panic!("test panic");
        }
        server::run(runtime, listeners, shutdown, log)
    }

    /// The relay at `addr` answers a wrong protocol header with AMQP's.
    fn answers_with_protocol_header(addr: impl std::net::ToSocketAddrs) -> std::net::TcpStream {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.write_all(b"HTTP/1.0").unwrap();
        let mut reply = [0u8; 8];
        stream.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"AMQP\x00\x00\x09\x01");
        stream
    }

    /// After the relay stopped (the child's exit, while the interpreter may
    /// still run), its published port is neither free nor served: connects
    /// are refused and no other socket can bind it.
    #[test]
    fn a_stopped_relay_keeps_its_port_and_refuses() {
        let listener = listener_to_nowhere();
        let port = listener.listener.local_addr().unwrap().port();
        let thread = RelayThread::start(vec![listener], Arc::new(crate::relay::StderrLog)).unwrap();
        // Served, and closed by the client first: a socket the relay had
        // accepted and closed first would linger in TIME_WAIT on the port
        // and hold it whatever the listener does.
        drop(answers_with_protocol_header(("127.0.0.1", port)));
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(thread.stop(Duration::from_secs(2)), StopOutcome::Clean);
        crate::relay::listen::assert_held_and_refusing(port);
    }

    #[test]
    fn a_panicking_relay_is_restarted_on_the_same_socket() {
        let listener = listener_to_nowhere();
        let addr = listener.listener.local_addr().unwrap();
        let collect = Collect::new();
        let log: Arc<dyn EventLog> = collect.clone();
        let shutdown = Shutdown::new();
        let thread_shutdown = shutdown.clone();
        let listeners = vec![listener];
        let mut runtime = server::runtime_builder();
        let thread = std::thread::spawn(move || {
            supervise(
                &listeners,
                &mut runtime,
                &thread_shutdown,
                &log,
                panics_twice,
            )
        });
        // After two panics and restarts the relay serves the same address.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while RUNS.load(Ordering::SeqCst) < 3 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(100));
        answers_with_protocol_header(addr);
        shutdown.trigger(Duration::from_millis(100));
        thread.join().unwrap();
        let messages = collect.messages();
        let panics = messages
            .iter()
            .filter(|m| m.contains("relay panicked: test panic"))
            .count();
        assert_eq!(panics, 2, "{messages:?}");
    }
}
