//! A one-shot deadline on a Linux timerfd: the relay thread's one timer,
//! armed for the earliest deadline of its connections (rule R17,
//! `relay::thread_timer`).
//!
//! Why not `tokio::time`: tokio's timer wheel files a timer by the highest
//! bit in which its deadline differs from the wheel's clock, in levels of
//! 64 ms, 4.096 s, 262 s slots. A heartbeat deadline 3 s ahead that crosses
//! a 4.096 s boundary lands in the coarse level, and the wheel wakes the
//! thread at that boundary to move it down, although the broker's next
//! heartbeat re-arms it before it is due: extra wakeups on an idle
//! connection (the figures: docs/BENCHMARKS.md, "Timers"). A timerfd is an
//! exact kernel timer: the thread wakes only when the deadline is really
//! due, and re-arming it is one syscall on a wakeup that happens anyway
//! (rule R4).

use crate::os::timerfd::AsyncTimerFd;
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{Expiration, TimerSetTimeFlags};
use std::io;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

pub struct Deadline {
    fd: AsyncTimerFd,
    armed: Option<Instant>,
}

impl Deadline {
    /// A disarmed deadline. Must run inside the relay's runtime (the fd is
    /// registered with its reactor).
    pub fn new() -> io::Result<Deadline> {
        Ok(Deadline {
            fd: AsyncTimerFd::new()?,
            armed: None,
        })
    }

    /// Arm for `at`, or disarm with None; a no-op when nothing changes, so
    /// the caller may set it on every pass of its loop.
    pub fn set(&mut self, at: Option<Instant>) -> io::Result<()> {
        if at == self.armed {
            return Ok(());
        }
        match at {
            Some(at) => {
                // Relative: std does not expose an Instant's raw clock value.
                // A zero value would disarm the timer, hence the 1 ns floor.
                let left = at
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_nanos(1));
                self.fd.timer().set(
                    Expiration::OneShot(TimeSpec::from_duration(left)),
                    TimerSetTimeFlags::empty(),
                )?;
            }
            None => self.fd.timer().unset()?,
        }
        self.armed = at;
        Ok(())
    }

    /// Ready once the armed deadline has passed; Pending (with the waker
    /// registered) before, and forever while disarmed.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.armed {
            None => Poll::Pending,
            Some(at) if Instant::now() >= at => Poll::Ready(Ok(())),
            Some(_) => self.fd.poll_expiry(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .expect("runtime")
    }

    #[test]
    fn fires_at_the_deadline_not_before() {
        runtime().block_on(async {
            let mut d = Deadline::new().expect("timerfd");
            let start = Instant::now();
            d.set(Some(start + Duration::from_millis(50))).expect("set");
            poll_fn(|cx| d.poll_expired(cx)).await.expect("expired");
            let took = start.elapsed();
            assert!(took >= Duration::from_millis(50), "fired after {took:?}");
            assert!(took < Duration::from_millis(500), "fired after {took:?}");
        });
    }

    #[test]
    fn moving_the_deadline_later_delays_it() {
        runtime().block_on(async {
            let mut d = Deadline::new().expect("timerfd");
            let start = Instant::now();
            d.set(Some(start + Duration::from_millis(20))).expect("set");
            d.set(Some(start + Duration::from_millis(120)))
                .expect("reset");
            poll_fn(|cx| d.poll_expired(cx)).await.expect("expired");
            assert!(start.elapsed() >= Duration::from_millis(120));
        });
    }

    #[test]
    fn a_past_deadline_is_ready_at_once_and_disarmed_never() {
        runtime().block_on(async {
            let mut d = Deadline::new().expect("timerfd");
            d.set(Some(Instant::now())).expect("set");
            assert!(
                poll_fn(|cx| Poll::Ready(d.poll_expired(cx)))
                    .await
                    .is_ready()
            );
            d.set(None).expect("unset");
            assert!(
                poll_fn(|cx| Poll::Ready(d.poll_expired(cx)))
                    .await
                    .is_pending()
            );
        });
    }
}
