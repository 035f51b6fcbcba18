//! A listening socket registered with the current tokio reactor, accepted
//! from with std so that an accepted client is not registered with the
//! reactor until the relay decides to keep it.
//!
//! tokio's own listener registers every accepted socket (an epoll_ctl add,
//! and a delete when it is dropped): under a flood of refused clients that
//! was a sixth of each refusal's cost. Registering the listener itself
//! goes through `AsyncFd::register`, which is unsafe (the fd must stay open
//! and the same while registered); see the one block below.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Owns the listener inside the registration; private, so nobody can swap
/// or close the fd while the reactor watches it.
struct Owned(TcpListener);

impl AsRawFd for Owned {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

pub struct ReadyListener {
    fd: AsyncFd<Owned>,
}

/// What one readiness of the listener gave.
pub enum Accepted {
    /// A client (a blocking socket; `set_nonblocking` before handing it to
    /// tokio).
    Client(TcpStream, SocketAddr),
    /// Nothing more is queued; the next `accept` waits for readiness.
    Drained,
}

impl ReadyListener {
    /// Register `listener` (made non-blocking here). Must be called inside a
    /// tokio runtime with I/O enabled.
    pub fn new(listener: TcpListener) -> io::Result<ReadyListener> {
        listener.set_nonblocking(true)?;
        // SAFETY: `register_with_interest` requires the fd to stay open and
        // to be the same fd for as long as the AsyncFd lives. `Owned` holds
        // the TcpListener (which owns its fd) by value and moves into the
        // AsyncFd; this module never exposes `&mut Owned` (no get_mut, no
        // into_inner), so the fd can neither be replaced nor closed early.
        // It is closed only when the AsyncFd drops `Owned`, after
        // deregistering it.
        let fd = unsafe { AsyncFd::register_with_interest(Owned(listener), Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(ReadyListener { fd })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.fd.get_ref().0.local_addr()
    }

    /// Accept one queued client, waiting for one only while the reactor
    /// has seen none since the last `Drained` (which clears the readiness).
    pub async fn accept(&self) -> io::Result<Accepted> {
        loop {
            let mut ready = self.fd.readable().await?;
            match ready.try_io(|fd| fd.get_ref().0.accept()) {
                Ok(Ok((stream, peer))) => return Ok(Accepted::Client(stream, peer)),
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => return Ok(Accepted::Drained),
            }
        }
    }
}
