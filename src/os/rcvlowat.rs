//! SO_RCVLOWAT on a TCP socket: how many bytes must be queued before the
//! kernel reports the socket readable (epoll, poll). Neither std, nix nor
//! tokio sets it.
//!
//! Lowering it makes the kernel check the queue at once and wake a reader
//! that the new mark satisfies (tcp_set_rcvlowat calls tcp_data_ready,
//! Linux 4.18 and later), so bytes that waited under a higher mark are not
//! stranded.

use std::io;
use std::os::fd::RawFd;

pub fn set(fd: RawFd, bytes: u32) -> io::Result<()> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: setsockopt reads exactly `size_of::<c_int>()` bytes from the
    // pointer, which points at `value`, a live c_int on this stack frame for
    // the whole call. The fd is only an integer to the kernel: a wrong one
    // yields EBADF or ENOTSOCK (or, if reused, sets the option on another
    // socket), never memory unsafety. The caller (relay/quiet.rs) passes
    // the fd of the upstream stream it lives beside in the same pump.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            std::ptr::from_ref(&value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A connected loopback pair (writer, reader), for the tests here and in
/// relay/quiet.rs.
#[cfg(test)]
pub fn loopback_pair() -> (std::net::TcpStream, std::net::TcpStream) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let writer = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (reader, _) = listener.accept().unwrap();
    (writer, reader)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpStream;
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    fn readable(s: &TcpStream) -> bool {
        let mut fds = [libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: one valid pollfd, alive for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, 200) };
        n == 1 && fds[0].revents & libc::POLLIN != 0
    }

    /// A connected pair: the writer, and the reader with a mark of 9.
    fn pair_with_mark_9() -> (TcpStream, TcpStream) {
        let (writer, reader) = loopback_pair();
        set(reader.as_raw_fd(), 9).unwrap();
        (writer, reader)
    }

    #[test]
    fn a_raised_mark_hides_fewer_bytes() {
        let (mut writer, reader) = pair_with_mark_9();
        writer.write_all(&[0u8; 8]).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !readable(&reader),
            "8 bytes under a mark of 9 must not wake"
        );
        writer.write_all(&[0u8; 1]).unwrap();
        assert!(readable(&reader), "9 bytes reach the mark");
    }

    #[test]
    fn lowering_the_mark_shows_what_waited() {
        let (mut writer, reader) = pair_with_mark_9();
        writer.write_all(&[0u8; 8]).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert!(!readable(&reader));
        set(reader.as_raw_fd(), 1).unwrap();
        assert!(readable(&reader));
    }

    #[test]
    fn a_bad_fd_is_an_error() {
        assert!(set(-1, 9).is_err());
    }
}
