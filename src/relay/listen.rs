//! The relay's loopback port, held for the whole life of the process.
//!
//! The URL published to the app names `127.0.0.1:PORT`. If the port were
//! freed while the app still runs (the relay failed to start, gave up, or
//! stopped at child exit while the interpreter tears down), any local user
//! could bind it and receive the app's next connection, credentials and
//! all. So a relay that is not running *refuses* connections on its port
//! without freeing it:
//!
//! - The listener is bound to an explicit port. The kernel keeps an
//!   explicitly bound port when the socket stops listening (it frees an
//!   ephemeral one, bound as port 0): so a first socket asks for an
//!   ephemeral port, the listener binds that port by number, and the first
//!   socket goes. Both have SO_REUSEADDR for that step only (neither
//!   listens, so the kernel allows it); the listener then clears it, so no
//!   other socket can share the port, listening or not.
//! - [`refuse_from_now`] stops listening (shutdown(SHUT_RD) on a listening
//!   socket): connects get a reset (ECONNREFUSED) and the port stays bound.
//! - [`HeldPorts`] keeps a duplicate of each listening socket, never
//!   closed, so whatever happens to the relay's own descriptors, the
//!   socket outlives it until the process exits.

use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, bind, getsockname, listen, setsockopt,
    shutdown, socket, sockopt,
};
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

/// How many fresh ports [`bind_loopback`] tries before it gives up.
const BIND_ATTEMPTS: usize = 16;

/// A non-blocking listener on an ephemeral port of 127.0.0.1, bound so that
/// it keeps its port after it stops listening (see the module comment).
pub fn bind_loopback() -> io::Result<TcpListener> {
    bind_loopback_racing(|_| ())
}

/// [`bind_loopback`], with `between_binds` run in the window where another
/// process can take the port (tests use it to take it).
///
/// While only the first socket holds the port, with SO_REUSEADDR and not
/// listening, another socket with SO_REUSEADDR may bind that same port and
/// listen on it: a server handed the number by a "free port" picker that
/// closed its own probe, as test harnesses and some daemons do. The
/// listener's bind or listen then fails with EADDRINUSE; the port is that
/// server's, so the listener starts over on a fresh one.
fn bind_loopback_racing(mut between_binds: impl FnMut(u16)) -> io::Result<TcpListener> {
    let mut attempt = 1;
    loop {
        match bind_once(&mut between_binds) {
            Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) && attempt < BIND_ATTEMPTS => {
                attempt += 1;
            }
            bound => return bound,
        }
    }
}

fn bind_once(between_binds: &mut impl FnMut(u16)) -> io::Result<TcpListener> {
    let ephemeral = reusable_socket()?;
    bind(
        ephemeral.as_raw_fd(),
        &SockaddrIn::from(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)),
    )?;
    let port = getsockname::<SockaddrIn>(ephemeral.as_raw_fd())?.port();
    between_binds(port);
    let held = reusable_socket()?;
    bind(
        held.as_raw_fd(),
        &SockaddrIn::from(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)),
    )?;
    drop(ephemeral);
    setsockopt(&held, sockopt::ReuseAddr, &false)?;
    // A burst of connects beyond std's usual backlog of 128 would wait a
    // whole SYN retry (1 s). Linux caps this at somaxconn.
    listen(&held, Backlog::MAXCONN)?;
    let listener = TcpListener::from(held);
    listener.set_nonblocking(true)?;
    Ok(listener)
}

fn reusable_socket() -> io::Result<OwnedFd> {
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    Ok(fd)
}

/// Stop listening on `listener`'s socket (shared by all its duplicates):
/// new connects are refused, the port stays bound.
pub fn refuse_from_now(listener: &impl AsFd) -> io::Result<()> {
    shutdown(
        listener.as_fd().as_raw_fd(),
        nix::sys::socket::Shutdown::Read,
    )?;
    Ok(())
}

/// Duplicates of the relay's listening sockets, kept apart from the relay
/// and never closed: the ports stay bound until the process exits (a
/// process forked from this one holds them too), whatever the relay does.
#[derive(Clone, Copy)]
pub struct HeldPorts(&'static [TcpListener]);

impl HeldPorts {
    pub fn hold(listeners: &[&TcpListener]) -> io::Result<HeldPorts> {
        let copies: io::Result<Vec<TcpListener>> =
            listeners.iter().map(|l| l.try_clone()).collect();
        // Leaked on purpose: a few descriptors per process, for its life.
        Ok(HeldPorts(Box::leak(copies?.into_boxed_slice())))
    }

    /// The relay is stopping or not running any more: refuse connects from
    /// now on (and reset those queued); the ports stay bound. Again is
    /// harmless.
    pub fn refuse(self) {
        for listener in self.0 {
            let _ = refuse_from_now(listener);
        }
    }
}

/// What the port looks like to another process: bound (any bind fails,
/// with or without SO_REUSEADDR) and refusing.
#[cfg(test)]
pub fn assert_held_and_refusing(port: u16) {
    for reuse in [false, true] {
        let other = reusable_socket().unwrap();
        setsockopt(&other, sockopt::ReuseAddr, &reuse).unwrap();
        let bound = bind(
            other.as_raw_fd(),
            &SockaddrIn::from(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)),
        );
        assert_eq!(
            bound,
            Err(nix::errno::Errno::EADDRINUSE),
            "another socket could bind the relay's port {port} (SO_REUSEADDR {reuse})"
        );
    }
    let connect = std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port));
    assert_eq!(
        connect.map(|_| ()).map_err(|e| e.kind()),
        Err(io::ErrorKind::ConnectionRefused)
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpStream;

    #[test]
    fn a_listener_that_stops_listening_keeps_its_port() {
        let listener = bind_loopback().unwrap();
        let port = listener.local_addr().unwrap().port();
        TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
        // While it listens, nobody else binds the port either.
        let other = reusable_socket().unwrap();
        assert!(
            bind(
                other.as_raw_fd(),
                &SockaddrIn::from(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)),
            )
            .is_err()
        );
        let held = HeldPorts::hold(&[&listener]).unwrap();
        drop(listener);
        held.refuse();
        assert_held_and_refusing(port);
    }

    /// What a server handed the port number does: bind it with
    /// SO_REUSEADDR and listen.
    fn serve_on(port: u16) -> OwnedFd {
        let server = reusable_socket().unwrap();
        bind(
            server.as_raw_fd(),
            &SockaddrIn::from(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)),
        )
        .unwrap();
        listen(&server, Backlog::new(1).unwrap()).unwrap();
        server
    }

    /// Seen in CI: a RabbitMQ node given a port number by the harness bound
    /// it with SO_REUSEADDR while only the relay's first socket held it, and
    /// the relay failed to start with EADDRINUSE.
    #[test]
    fn a_port_taken_between_the_binds_is_given_up_for_a_fresh_one() {
        let mut taken = Vec::new();
        let listener = bind_loopback_racing(|port| {
            if taken.len() < 3 {
                taken.push((port, serve_on(port)));
            }
        })
        .unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(taken.len(), 3);
        assert!(taken.iter().all(|(p, _)| *p != port));
        TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
    }

    #[test]
    fn a_port_race_lost_every_time_is_an_error() {
        let mut servers = Vec::new();
        let err = bind_loopback_racing(|port| servers.push(serve_on(port))).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EADDRINUSE));
        assert_eq!(servers.len(), BIND_ATTEMPTS);
    }
}
