//! A gate in front of httpd's error log for the relay thread.
//!
//! When the relay thread outlives its stop (the grace period ran out), the
//! child goes on exiting and frees its pools, the error log's among them,
//! while the thread may still be about to log. A flag the thread reads
//! before logging is not enough: a log call that read "open" just before
//! the flag was set would still be running inside `ap_log_error` while the
//! pools go away. So every log call holds the gate for its whole duration,
//! and [`LogGate::close`] refuses new calls and then waits (bounded) until
//! the calls already inside have left.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct LogGate {
    state: Mutex<State>,
    left: Condvar,
}

#[derive(Default)]
struct State {
    closed: bool,
    /// Log calls inside the gate now.
    inside: usize,
}

impl LogGate {
    pub fn new() -> LogGate {
        LogGate::default()
    }

    /// Run `log` unless the gate is closed; the gate cannot finish closing
    /// while it runs. Returns whether it ran.
    pub fn pass(&self, log: impl FnOnce()) -> bool {
        {
            let mut state = self.lock();
            if state.closed {
                return false;
            }
            state.inside += 1;
        }
        // Leaves the gate however `log` ends (it does not unwind across
        // FFI, but a panic in formatting must not keep the gate held).
        struct Leave<'a>(&'a LogGate);
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                let mut state = self.0.lock();
                state.inside -= 1;
                if state.inside == 0 {
                    self.0.left.notify_all();
                }
            }
        }
        let _leave = Leave(self);
        log();
        true
    }

    /// Refuse every later call, then wait at most `limit` for the calls
    /// inside to leave. True when none is left inside.
    pub fn close(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut state = self.lock();
        state.closed = true;
        while state.inside > 0 {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = match self.left.wait_timeout(state, deadline - now) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        true
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is two plain fields, consistent after any panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A log call in progress when the gate closes finishes before close
    /// returns; none starts afterwards.
    #[test]
    fn close_waits_for_the_call_inside() {
        let gate = Arc::new(LogGate::new());
        let finished = Arc::new(AtomicBool::new(false));
        let (entered_tx, entered) = std::sync::mpsc::channel();
        let logger = {
            let (gate, finished) = (Arc::clone(&gate), Arc::clone(&finished));
            std::thread::spawn(move || {
                gate.pass(|| {
                    entered_tx.send(()).unwrap();
                    std::thread::sleep(Duration::from_millis(200));
                    finished.store(true, Ordering::SeqCst);
                })
            })
        };
        entered.recv().unwrap();
        assert!(gate.close(Duration::from_secs(5)));
        assert!(
            finished.load(Ordering::SeqCst),
            "close returned while a log call was running"
        );
        assert!(logger.join().unwrap());
        assert!(!gate.pass(|| panic!("a closed gate let a log call in")));
    }

    #[test]
    fn close_gives_up_after_its_limit() {
        let gate = Arc::new(LogGate::new());
        let (entered_tx, entered) = std::sync::mpsc::channel();
        let (release_tx, release) = std::sync::mpsc::channel::<()>();
        let logger = {
            let gate = Arc::clone(&gate);
            std::thread::spawn(move || {
                gate.pass(|| {
                    entered_tx.send(()).unwrap();
                    let _ = release.recv();
                })
            })
        };
        entered.recv().unwrap();
        let started = Instant::now();
        assert!(!gate.close(Duration::from_millis(100)));
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(100) && waited < Duration::from_secs(5));
        release_tx.send(()).unwrap();
        assert!(logger.join().unwrap());
        assert!(gate.close(Duration::ZERO));
    }

    #[test]
    fn an_open_gate_runs_calls_and_a_panic_leaves_it() {
        let gate = LogGate::new();
        let mut ran = false;
        assert!(gate.pass(|| ran = true));
        assert!(ran);
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            gate.pass(|| panic!("in a log call"));
        }));
        assert!(panicked.is_err());
        assert!(gate.close(Duration::ZERO), "the panicking call left");
    }
}
