//! A Linux timerfd registered with the current tokio reactor.
//!
//! tokio registers a foreign fd only through `AsyncFd::register`, which is
//! unsafe (the fd must stay open and the same while registered); its safe
//! constructors are deprecated for that reason. Here the timerfd is owned
//! by the registration and never handed out mutably, which is what makes
//! the one `unsafe` block sound.

use nix::sys::timerfd::{ClockId, TimerFd, TimerFlags};
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::task::{Context, Poll};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Owns the timerfd inside the registration; private, so nobody can swap
/// or close the fd while the reactor watches it.
struct Owned(TimerFd);

impl AsRawFd for Owned {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

pub struct AsyncTimerFd {
    fd: AsyncFd<Owned>,
}

impl AsyncTimerFd {
    /// A disarmed CLOCK_MONOTONIC timer (the clock of std's `Instant` on
    /// Linux). Must be called inside a tokio runtime with I/O enabled.
    pub fn new() -> io::Result<AsyncTimerFd> {
        let timer = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )?;
        // SAFETY: `register_with_interest` requires the fd to stay open and
        // to be the same fd for as long as the AsyncFd lives. `Owned` holds
        // the TimerFd (an OwnedFd) by value and moves into the AsyncFd; this
        // module never exposes `&mut Owned` (no get_mut, no into_inner), so
        // the fd can neither be replaced nor closed early. It is closed only
        // when the AsyncFd drops `Owned`, after deregistering it.
        let fd = unsafe { AsyncFd::register_with_interest(Owned(timer), Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(AsyncTimerFd { fd })
    }

    /// The timer, to arm or disarm it.
    pub fn timer(&self) -> &TimerFd {
        &self.fd.get_ref().0
    }

    /// Ready once the timer has expired, consuming the expiry.
    pub fn poll_expiry(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut ready = match self.fd.poll_read_ready(cx) {
                Poll::Ready(r) => r?,
                Poll::Pending => return Poll::Pending,
            };
            // EAGAIN (the timer was re-armed after the readiness was seen)
            // clears the readiness, so the next round waits again.
            match ready.try_io(|fd| fd.get_ref().0.wait().map_err(io::Error::from)) {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }
}
