//! "Only this process": is a loopback client socket held by this process?
//!
//! The relay listens on loopback, where any local user could connect and
//! borrow the app's broker connection. The client's end of the connection
//! has the relay's peer address as its own address and the relay's address
//! as its peer; if one of this process's descriptors is that socket, the
//! client is this process.
//!
//! [`PeerCheck`] first asks the kernel who owns that socket (one
//! NETLINK_SOCK_DIAG query, os/sock_diag.rs): a socket of another uid is
//! refused at once, whatever this process holds, so a flood from another
//! user costs one query per connection; a socket nobody holds any more is a
//! client that closed at once. Only a socket of this process's own uid
//! (another httpd child, or this one) needs a look at this process's
//! descriptors, for the socket's inode (then confirmed by the descriptor's
//! two addresses). Without sock_diag (a kernel or a sandbox without it)
//! every descriptor is asked for its two addresses. Either walk is bounded by this process's
//! size; the kernel's socket tables (/proc/net/tcp) would need a walk of
//! the whole machine's TCP hash on every accept.

use crate::os::sock_diag::{Owner, SockDiag};
use crate::os::socket_kind;
use nix::dir::Dir;
use nix::fcntl::{OFlag, readlinkat};
use nix::sys::socket::{SockaddrStorage, getpeername, getsockname};
use nix::sys::stat::Mode;
use std::io;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// Who holds a client's socket.
#[derive(Debug, PartialEq, Eq)]
pub enum Holder {
    ThisProcess,
    /// Nobody: the client closed its end (or it was reset) already.
    Gone,
    /// A socket of another user (its uid).
    OtherUser(u32),
    /// A socket of this process's user held by another process, or (no
    /// sock_diag) a socket this process does not hold.
    OtherProcess,
}

/// The peer check of one acceptor.
pub struct PeerCheck {
    /// `None` when sock_diag is not available: then every descriptor of
    /// this process is asked for its addresses.
    diag: Option<SockDiag>,
    uid: u32,
    fds: OwnFds,
}

impl Default for PeerCheck {
    fn default() -> Self {
        Self::new()
    }
}

impl PeerCheck {
    pub fn new() -> PeerCheck {
        PeerCheck {
            diag: SockDiag::open().ok(),
            uid: nix::unistd::geteuid().as_raw(),
            fds: OwnFds::open(),
        }
    }

    /// Without the kernel's help, as on a kernel without sock_diag.
    pub fn without_sock_diag() -> PeerCheck {
        PeerCheck {
            diag: None,
            ..PeerCheck::new()
        }
    }

    /// Who holds the socket whose own address is `client` and whose peer
    /// is `relay`.
    pub fn holder(&mut self, client: SocketAddr, relay: SocketAddr) -> io::Result<Holder> {
        if let Some(diag) = &mut self.diag {
            match diag.tcp_owner(client, relay) {
                // Nobody holds it (a closing or time-wait socket, which
                // the kernel reports as uid 0): the client went already,
                // whoever it was. A flood of these is rate-limited too.
                Ok(None) | Ok(Some(Owner { inode: 0, .. })) => return Ok(Holder::Gone),
                Ok(Some(Owner { uid, .. })) if uid != self.uid => {
                    return Ok(Holder::OtherUser(uid));
                }
                Ok(Some(Owner { inode, .. })) => {
                    return Ok(if self.fds.holds(inode, client, relay)? {
                        Holder::ThisProcess
                    } else {
                        Holder::OtherProcess
                    });
                }
                // The walk below still answers.
                Err(_) => {}
            }
        }
        Ok(if self.fds.any_is_client(client, relay)? {
            Holder::ThisProcess
        } else {
            Holder::OtherProcess
        })
    }
}

/// This process's descriptors (/proc/self/fd), opened once: a check must
/// not need a descriptor of its own, or a flood that brings the process
/// near RLIMIT_NOFILE would make the app's own connection fail its check.
struct OwnFds(Option<Dir>);

impl OwnFds {
    fn open() -> OwnFds {
        OwnFds(open_fd_dir().ok())
    }

    /// Each descriptor of this process, by number; a walk that cannot
    /// start is an error (the client cannot be told apart).
    fn walk(&mut self, mut visit: impl FnMut(&Dir, RawFd) -> bool) -> io::Result<bool> {
        let mut opened_now;
        let dir = match &mut self.0 {
            Some(dir) => dir,
            None => {
                opened_now = open_fd_dir()?;
                &mut opened_now
            }
        };
        let numbers: Vec<RawFd> = dir
            .iter()
            .filter_map(|entry| entry.ok()?.file_name().to_str().ok()?.parse().ok())
            .collect();
        Ok(numbers.into_iter().any(|fd| visit(dir, fd)))
    }

    /// True when one of this process's descriptors is socket `inode`, and
    /// that descriptor is the client's socket. An inode number alone is
    /// not enough: socket inodes come from a 32-bit counter that wraps,
    /// and another process of this user could create sockets or pipes
    /// until one of its sockets has the number of one this process holds
    /// (its listener, say); the 4-tuple of a TCP connection is unique.
    fn holds(&mut self, inode: u32, client: SocketAddr, relay: SocketAddr) -> io::Result<bool> {
        let wanted = format!("socket:[{inode}]");
        self.walk(|dir, fd| {
            // A descriptor closed meanwhile just fails to match.
            readlinkat(dir, fd.to_string().as_str()).is_ok_and(|target| target == *wanted)
                && fd_is_client(fd, client, relay)
        })
    }

    /// True when the socket whose local address is `client` and remote
    /// address is `relay` is an open descriptor of this process.
    fn any_is_client(&mut self, client: SocketAddr, relay: SocketAddr) -> io::Result<bool> {
        self.walk(|_, fd| fd_is_client(fd, client, relay))
    }
}

fn open_fd_dir() -> io::Result<Dir> {
    Ok(Dir::open(
        "/proc/self/fd",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?)
}

/// True when descriptor `fd` of this process is the TCP socket whose local
/// address is `client` and whose remote address is `relay`.
fn fd_is_client(fd: RawFd, client: SocketAddr, relay: SocketAddr) -> bool {
    // Read-only queries: a descriptor that is not a socket, or that
    // another thread closes meanwhile, just fails to match.
    getsockname::<SockaddrStorage>(fd)
        .ok()
        .and_then(|a| to_std(&a))
        == Some(client)
        && getpeername::<SockaddrStorage>(fd)
            .ok()
            .and_then(|a| to_std(&a))
            == Some(relay)
        // The same addresses on a UDP socket would be another socket.
        && socket_kind::is_tcp_stream(fd)
}

/// A socket address as the relay's (IPv4) listener sees it: an AF_INET6
/// client socket connected to `::ffff:127.0.0.1` names both ends as
/// v4-mapped addresses, which are the same IPv4 endpoints.
fn to_std(addr: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::from(*v4)));
    }
    if let Some(v6) = addr.as_sockaddr_in6() {
        let v6 = SocketAddrV6::from(*v6);
        return Some(match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, v6.port())),
            None => SocketAddr::V6(v6),
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    fn client_is_this_process(client: SocketAddr, relay: SocketAddr) -> io::Result<bool> {
        OwnFds::open().any_is_client(client, relay)
    }

    /// The inode of the socket behind descriptor `fd` of this process.
    fn inode_of(fd: &impl std::os::fd::AsRawFd) -> u32 {
        let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
        let link = link.to_str().unwrap();
        link.strip_prefix("socket:[")
            .and_then(|l| l.strip_suffix(']'))
            .unwrap()
            .parse()
            .unwrap()
    }

    /// Socket inodes wrap (a 32-bit counter): a client of another process
    /// whose socket has the number of this process's listener is not
    /// this process's, though an inode alone would say it is.
    #[test]
    fn an_inode_this_process_holds_is_not_enough() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let relay = listener.local_addr().unwrap();
        let (child, _server_side, peer) = client_in_another_process(&listener, "pass");
        let mut fds = OwnFds::open();
        assert!(!fds.holds(inode_of(&listener), peer, relay).unwrap());
        end(child);
        // And the client's own inode with its own addresses still is.
        let client = TcpStream::connect(relay).unwrap();
        let (_server_side, peer) = listener.accept().unwrap();
        assert!(fds.holds(inode_of(&client), peer, relay).unwrap());
    }

    /// A client socket that nobody holds any more (here: time-wait) is
    /// reported by the kernel as uid 0: gone, not a socket of root, for a
    /// relay of any uid.
    #[test]
    fn a_closed_client_is_gone_for_a_relay_of_any_uid() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let relay = listener.local_addr().unwrap();
        let client = TcpStream::connect(relay).unwrap();
        let (server_side, peer) = listener.accept().unwrap();
        // The client closes first, so its end goes to time-wait.
        drop(client);
        std::thread::sleep(std::time::Duration::from_millis(50));
        drop(server_side);
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut as_nobody = PeerCheck {
            uid: 65534,
            ..PeerCheck::new()
        };
        assert!(as_nobody.diag.is_some(), "sock_diag is not available");
        assert_eq!(as_nobody.holder(peer, relay).unwrap(), Holder::Gone);
    }

    /// The check needs no descriptor of its own: with the process at
    /// RLIMIT_NOFILE (a flood's sockets can take the rest) the app's own
    /// client is still found. Runs alone in a process of its own (see
    /// `the_check_needs_no_free_descriptor`), as it fills the table.
    #[test]
    #[ignore = "run in a process of its own by the_check_needs_no_free_descriptor"]
    fn check_with_no_free_descriptor() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let relay = listener.local_addr().unwrap();
        let client = TcpStream::connect(relay).unwrap();
        let (_server_side, peer) = listener.accept().unwrap();
        let mut with = PeerCheck::new();
        let mut without = PeerCheck::without_sock_diag();
        let _full = crate::relay::test_support::fill_descriptor_table(&client, 16);
        assert!(TcpStream::connect(relay).is_err(), "the table is not full");
        assert_eq!(with.holder(peer, relay).unwrap(), Holder::ThisProcess);
        assert_eq!(without.holder(peer, relay).unwrap(), Holder::ThisProcess);
    }

    #[test]
    fn the_check_needs_no_free_descriptor() {
        crate::relay::test_support::run_alone("relay::peer::tests::check_with_no_free_descriptor");
    }

    /// A client in a child process (Debian's python3, whose modules user
    /// nobody can read too) that runs `setup` (Python), connects to
    /// `listener` and waits until its stdin closes; with the accepted side.
    fn client_in_another_process(
        listener: &TcpListener,
        setup: &str,
    ) -> (std::process::Child, TcpStream, SocketAddr) {
        let mut child = std::process::Command::new("/usr/bin/python3")
            .arg("-c")
            .arg(format!(
                "import os,socket,sys; {setup}; s=socket.create_connection(('127.0.0.1',{})); print('up',flush=True); sys.stdin.read()",
                listener.local_addr().unwrap().port()
            ))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut up = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
            &mut up,
        )
        .unwrap();
        assert_eq!(up, "up\n", "the client ({setup:?}) did not connect");
        let (server_side, peer) = listener.accept().unwrap();
        (child, server_side, peer)
    }

    fn end(mut child: std::process::Child) {
        drop(child.stdin.take());
        assert!(child.wait().unwrap().success());
    }

    /// A client socket of another user (here: nobody; the test runs as
    /// root) is refused without a look at this process's descriptors; one
    /// of the same user held by another process is told apart from this
    /// process's own.
    #[test]
    fn sockets_of_another_user_or_process_are_told_apart() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let relay = listener.local_addr().unwrap();
        let mut check = PeerCheck::new();
        let (child, _server_side, peer) = client_in_another_process(&listener, "os.setuid(65534)");
        assert_eq!(check.holder(peer, relay).unwrap(), Holder::OtherUser(65534));
        end(child);
        let (child, _server_side, peer) = client_in_another_process(&listener, "pass");
        assert_eq!(check.holder(peer, relay).unwrap(), Holder::OtherProcess);
        end(child);
    }

    #[test]
    fn socket_of_another_process_is_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let (child, server_side, peer) = client_in_another_process(&listener, "pass");
        let owned = client_is_this_process(peer, server_side.local_addr().unwrap()).unwrap();
        end(child);
        assert!(!owned);
    }
}
