//! Quiet upstream: one wakeup per heartbeat interval on an idle connection
//! instead of two.
//!
//! RabbitMQ sends a heartbeat every interval/2, and each one used to wake
//! the relay thread although a heartbeat only proves the broker alive. On
//! an idle plain-TCP upstream the relay raises the socket's receive
//! low-water mark (SO_RCVLOWAT) to 9 bytes: a lone 8-byte heartbeat frame
//! then stays queued without waking anyone, the next one (16 bytes) wakes
//! the relay, and any other frame (a method frame is at least 12 bytes, a
//! body frame at least 9) wakes it at once, so nothing the client waits
//! for is delayed.
//!
//! The mark is raised only when nothing is half-read (the tail of a
//! partial frame may be shorter than 9 bytes) and the connection has been
//! idle for interval/2, so a busy connection never pays the setsockopt.
//! Before the relay declares the broker silent it reads what a raised mark
//! may have hidden (`read_hidden`). TLS records carry a heartbeat in more
//! than 9 bytes, so a TLS upstream never goes quiet.

use crate::os::rcvlowat;
use bytes::BytesMut;
use nix::errno::Errno;
use nix::sys::socket::{MsgFlags, recv};
use std::io;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

/// One byte more than a heartbeat frame (7-byte header + frame end).
const QUIET_LOW_WATER: u32 = 9;

pub struct QuietUpstream {
    /// The upstream TCP socket. Owned by the pump's broker stream, which
    /// outlives this (both are fields of the same pump).
    fd: RawFd,
    idle_after: Duration,
    last_busy: Instant,
    raised: bool,
}

impl QuietUpstream {
    pub fn new(fd: RawFd, interval: Duration, now: Instant) -> QuietUpstream {
        QuietUpstream {
            fd,
            idle_after: interval / 2,
            last_busy: now,
            raised: false,
        }
    }

    /// Frames other than heartbeats moved: the connection is in use.
    pub fn on_busy(&mut self, now: Instant) {
        self.last_busy = now;
    }

    pub fn raised(&self) -> bool {
        self.raised
    }

    /// Before the relay sleeps: raise the mark when that is safe
    /// (`nothing_pending`: no partial frame read, nothing queued either
    /// way) and the connection has been idle long enough; lower it
    /// otherwise. A syscall only when the state changes.
    pub fn settle(&mut self, nothing_pending: bool, now: Instant) -> io::Result<()> {
        let want = nothing_pending && now >= self.last_busy + self.idle_after;
        if want != self.raised {
            rcvlowat::set(self.fd, if want { QUIET_LOW_WATER } else { 1 })?;
            self.raised = want;
        }
        Ok(())
    }

    /// Read, without waiting, the bytes a raised mark kept from waking
    /// the relay (at most one heartbeat's worth, or the start of a frame
    /// still arriving). Ok(None): nothing was there; Ok(Some(0)): the
    /// broker closed the connection. The read bypasses tokio's readiness,
    /// which never saw these bytes.
    pub fn read_hidden(&self, into: &mut BytesMut) -> io::Result<Option<usize>> {
        let mut buf = [0u8; 64];
        match recv(self.fd, &mut buf, MsgFlags::MSG_DONTWAIT) {
            Ok(n) => {
                into.extend_from_slice(&buf[..n]);
                Ok(Some(n))
            }
            Err(Errno::EAGAIN) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::os::rcvlowat::loopback_pair as pair;
    use std::io::Write;
    use std::os::fd::AsRawFd;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn raises_only_when_idle_and_nothing_is_pending() {
        let (_w, r) = pair();
        let t0 = Instant::now();
        let mut q = QuietUpstream::new(r.as_raw_fd(), 4 * S, t0);
        q.settle(true, t0 + S).unwrap();
        assert!(!q.raised(), "busy until interval/2 has passed");
        q.settle(false, t0 + 3 * S).unwrap();
        assert!(!q.raised(), "a partial frame keeps the mark at 1");
        q.settle(true, t0 + 2 * S).unwrap();
        assert!(q.raised());
        q.on_busy(t0 + 5 * S);
        q.settle(true, t0 + 6 * S).unwrap();
        assert!(!q.raised(), "traffic lowers it again");
    }

    #[test]
    fn reads_a_hidden_heartbeat_and_sees_eof() {
        let (mut w, r) = pair();
        let t0 = Instant::now();
        let mut q = QuietUpstream::new(r.as_raw_fd(), 2 * S, t0);
        q.settle(true, t0 + S).unwrap();
        let mut buf = BytesMut::new();
        assert_eq!(q.read_hidden(&mut buf).unwrap(), None);
        w.write_all(&[8, 0, 0, 0, 0, 0, 0, 0xce]).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(q.read_hidden(&mut buf).unwrap(), Some(8));
        assert_eq!(&buf[..], &[8, 0, 0, 0, 0, 0, 0, 0xce]);
        drop(w);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(q.read_hidden(&mut buf).unwrap(), Some(0));
    }
}
