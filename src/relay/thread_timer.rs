//! The relay thread's one timer (rule R17): a timerfd ([`Deadline`]) armed
//! for the earliest deadline of all its connections, which wakes every
//! connection whose window has opened (`relay::coalesce` decides which).
//! Each connection holds an [`Alarm`]; the timer runs as one task of the
//! thread's runtime.

use crate::relay::coalesce::{Wakeups, Window};
use crate::relay::deadline::Deadline;
use std::future::poll_fn;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

/// What wakes one sleeping connection, and the flag that tells it why.
struct Sleeper {
    waker: Waker,
    rung: Arc<AtomicBool>,
}

#[derive(Default)]
struct Shared {
    wakeups: Wakeups<Sleeper>,
    /// The timer task, to re-arm when a deadline comes earlier.
    timer_task: Option<Waker>,
    armed: Option<Instant>,
    /// The timerfd failed: every connection ends (rule R10, "timer failed").
    failed: Option<(io::ErrorKind, String)>,
}

impl Shared {
    fn ring_open(&mut self, now: Instant) {
        for sleeper in self.wakeups.take_open(now) {
            sleeper.rung.store(true, Ordering::Relaxed);
            sleeper.waker.wake();
        }
        self.rearm_if_changed();
    }

    /// The timer task re-arms the timerfd when the earliest deadline
    /// changed, later as well as earlier: a stale earlier expiry would
    /// wake the thread for nothing. Waking the task costs no wakeup of
    /// the thread, which is running.
    fn rearm_if_changed(&self) {
        if self.wakeups.next_fire() != self.armed {
            if let Some(task) = &self.timer_task {
                task.wake_by_ref();
            }
        }
    }
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // One thread uses it; a panic elsewhere leaves nothing half-done.
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// The thread's timer; [`ThreadTimer::run`] is its task.
pub struct ThreadTimer {
    shared: Arc<Mutex<Shared>>,
    deadline: Deadline,
}

/// A handle that makes alarms for new connections.
#[derive(Clone)]
pub struct Alarms {
    shared: Arc<Mutex<Shared>>,
}

impl ThreadTimer {
    /// Must run inside the relay's runtime (the timerfd is registered with
    /// its reactor).
    pub fn new() -> io::Result<(ThreadTimer, Alarms)> {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let timer = ThreadTimer {
            shared: Arc::clone(&shared),
            deadline: Deadline::new()?,
        };
        Ok((timer, Alarms { shared }))
    }

    /// Fire for as long as the runtime runs; returns only when the timerfd
    /// fails (every connection is told).
    pub async fn run(mut self) {
        poll_fn(|cx| self.poll(cx)).await
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let mut s = lock(&self.shared);
            s.timer_task = Some(cx.waker().clone());
            s.ring_open(Instant::now());
            let next = s.wakeups.next_fire();
            s.armed = next;
            let armed = self.deadline.set(next);
            let polled = match armed {
                Ok(()) => self.deadline.poll_expired(cx),
                Err(e) => Poll::Ready(Err(e)),
            };
            match polled {
                Poll::Ready(Ok(())) => continue,
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => {
                    s.failed = Some((e.kind(), e.to_string()));
                    // Every sleeper, whatever its window: each ends.
                    let far = Instant::now() + std::time::Duration::from_secs(1 << 20);
                    s.ring_open(far);
                    return Poll::Ready(());
                }
            }
        }
    }
}

impl Alarms {
    pub fn alarm(&self, id: u64) -> Alarm {
        Alarm {
            id,
            shared: Arc::clone(&self.shared),
            rung: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// One connection's place on the thread's timer; leaves it when dropped.
pub struct Alarm {
    id: u64,
    shared: Arc<Mutex<Shared>>,
    rung: Arc<AtomicBool>,
}

impl Alarm {
    /// Sleep: wake `cx`'s task by `window.by`, or from `window.from` when
    /// the thread is awake anyway; None: only the sockets wake it.
    pub fn set(&self, window: Option<Window>, cx: &Context<'_>) {
        let mut s = lock(&self.shared);
        let sleeper = Sleeper {
            waker: cx.waker().clone(),
            rung: Arc::clone(&self.rung),
        };
        s.wakeups.set(self.id, window, sleeper);
        s.rearm_if_changed();
    }

    /// The thread is awake at `now` (this connection runs): every other
    /// connection whose window has opened comes along.
    pub fn thread_awake(&self, now: Instant) {
        lock(&self.shared).ring_open(now);
    }

    /// True once after the thread's timer (or another connection's
    /// wakeup) woke this connection on purpose.
    pub fn take_rung(&self) -> bool {
        self.rung.swap(false, Ordering::Relaxed)
    }

    /// The thread's timerfd failed.
    pub fn failure(&self) -> Option<io::Error> {
        lock(&self.shared)
            .failed
            .as_ref()
            .map(|(kind, text)| io::Error::new(*kind, text.clone()))
    }
}

impl Drop for Alarm {
    fn drop(&mut self) {
        let mut s = lock(&self.shared);
        s.wakeups.remove(self.id);
        s.rearm_if_changed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::coalesce::Window;
    use std::time::Duration;

    /// Two connections' tasks on a real timerfd: the earlier deadline
    /// wakes both when the other's window is open, and ring flags say so.
    #[test]
    fn one_firing_wakes_every_open_window() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let (timer, alarms) = ThreadTimer::new().expect("timerfd");
            tokio::spawn(timer.run());
            let start = Instant::now();
            let ms = Duration::from_millis;
            let sleeper = |id: u64, from: u64, by: u64| {
                let alarm = alarms.alarm(id);
                tokio::spawn(async move {
                    let mut set = false;
                    poll_fn(|cx| {
                        if alarm.take_rung() {
                            return Poll::Ready(());
                        }
                        if !set {
                            let w = Window::new(Some(start + ms(from)), start + ms(by), start);
                            alarm.set(Some(w), cx);
                            set = true;
                        }
                        Poll::Pending
                    })
                    .await;
                    start.elapsed()
                })
            };
            // Far apart, so that a loaded machine's late firing (hundreds
            // of ms) cannot make b or c look right or wrong.
            let a = sleeper(1, 50, 100);
            let b = sleeper(2, 80, 1500);
            let c = sleeper(3, 1000, 1500);
            let (a, b) = (a.await.expect("a"), b.await.expect("b"));
            assert!(a >= ms(100) && a < ms(1000), "a woke after {a:?}");
            assert!(b >= ms(100) && b < ms(1000), "b came along: {b:?}");
            let c = c.await.expect("c");
            assert!(c >= ms(1500), "c's window was closed: {c:?}");
        });
    }
}
