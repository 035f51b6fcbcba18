//! Is a descriptor a TCP stream socket? `SO_TYPE` and `SO_PROTOCOL` on a
//! raw descriptor number, which nix only offers through a `BorrowedFd`
//! (itself unsafe to make from a number read out of /proc/self/fd).

use std::os::fd::RawFd;

/// True when `fd` is an open SOCK_STREAM socket of protocol TCP; false for
/// anything else, including a descriptor closed meanwhile.
pub fn is_tcp_stream(fd: RawFd) -> bool {
    option(fd, libc::SO_TYPE) == Some(libc::SOCK_STREAM)
        && option(fd, libc::SO_PROTOCOL) == Some(libc::IPPROTO_TCP)
}

fn option(fd: RawFd, name: libc::c_int) -> Option<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes (the size of `value`, a
    // live c_int on this stack frame) and updates `len`, also live here. A
    // wrong or reused fd number is only an integer to the kernel: it yields
    // EBADF/ENOTSOCK or another socket's option, never memory unsafety.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            name,
            std::ptr::from_mut(&mut value).cast(),
            &mut len,
        )
    };
    (rc == 0 && len as usize == std::mem::size_of::<libc::c_int>()).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn tcp_only() {
        let (writer, _reader) = crate::os::rcvlowat::loopback_pair();
        assert!(is_tcp_stream(writer.as_raw_fd()));
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(!is_tcp_stream(udp.as_raw_fd()));
        let (unix, _other) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(!is_tcp_stream(unix.as_raw_fd()));
        assert!(!is_tcp_stream(-1));
    }
}
