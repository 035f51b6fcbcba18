//! Quiet upstream, the socket half (rule R6 in docs/DESIGN.md): one wakeup
//! per heartbeat interval on an idle connection instead of two.
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
//! When to raise and lower the mark, and when to read what it hides, is
//! decided by the session (`session::liveness`); this file only does the
//! two socket operations. TLS records carry a heartbeat in more than 9
//! bytes, so a TLS upstream never goes quiet.

use crate::os::rcvlowat;
use crate::relay::session::liveness::HiddenRead;
use bytes::BytesMut;
use nix::errno::Errno;
use nix::sys::socket::{MsgFlags, recv};
use std::io;
use std::os::fd::RawFd;

/// One byte more than a heartbeat frame (7-byte header + frame end).
const QUIET_LOW_WATER: u32 = 9;

pub struct QuietSocket {
    /// The upstream TCP socket. Owned by the driver's broker stream, which
    /// outlives this (both are fields of the same pump).
    fd: RawFd,
}

impl QuietSocket {
    pub fn new(fd: RawFd) -> QuietSocket {
        QuietSocket { fd }
    }

    /// Raise the mark to 9 bytes, or lower it back to 1.
    pub fn set_mark(&self, raised: bool) -> io::Result<()> {
        rcvlowat::set(self.fd, if raised { QUIET_LOW_WATER } else { 1 })
    }

    /// Read, without waiting, the bytes a raised mark kept from waking
    /// the relay (at most one heartbeat's worth, or the start of a frame
    /// still arriving). The read bypasses tokio's readiness, which never
    /// saw these bytes.
    pub fn read_hidden(&self, into: &mut BytesMut) -> io::Result<HiddenRead> {
        let mut buf = [0u8; 64];
        match recv(self.fd, &mut buf, MsgFlags::MSG_DONTWAIT) {
            Ok(0) => Ok(HiddenRead::Eof),
            Ok(n) => {
                into.extend_from_slice(&buf[..n]);
                Ok(HiddenRead::Bytes(n))
            }
            Err(Errno::EAGAIN) => Ok(HiddenRead::Nothing),
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
    use std::time::Duration;

    #[test]
    fn reads_a_hidden_heartbeat_and_sees_eof() {
        let (mut w, r) = pair();
        let q = QuietSocket::new(r.as_raw_fd());
        q.set_mark(true).unwrap();
        let mut buf = BytesMut::new();
        assert_eq!(q.read_hidden(&mut buf).unwrap(), HiddenRead::Nothing);
        w.write_all(&[8, 0, 0, 0, 0, 0, 0, 0xce]).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(q.read_hidden(&mut buf).unwrap(), HiddenRead::Bytes(8));
        assert_eq!(&buf[..], &[8, 0, 0, 0, 0, 0, 0, 0xce]);
        drop(w);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(q.read_hidden(&mut buf).unwrap(), HiddenRead::Eof);
    }
}
