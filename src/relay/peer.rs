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
//! descriptors, for the socket's inode. Without sock_diag (a kernel or a
//! sandbox without it) every descriptor is asked for its two addresses
//! ([`client_is_this_process`]). Either walk is bounded by this process's
//! size; the kernel's socket tables (/proc/net/tcp) would need a walk of
//! the whole machine's TCP hash on every accept.

use crate::os::sock_diag::{Owner, SockDiag};
use crate::os::socket_kind;
use nix::sys::socket::{SockaddrStorage, getpeername, getsockname};
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
                // Another user's, closed or not: a flood of connect-and-
                // close is a flood of refusals (rate-limited), not of
                // early closes.
                Ok(Some(Owner { uid, .. })) if uid != self.uid => {
                    return Ok(Holder::OtherUser(uid));
                }
                Ok(None) | Ok(Some(Owner { inode: 0, .. })) => return Ok(Holder::Gone),
                Ok(Some(Owner { inode, .. })) => {
                    return Ok(if holds_socket(inode)? {
                        Holder::ThisProcess
                    } else {
                        Holder::OtherProcess
                    });
                }
                // The walk below still answers.
                Err(_) => {}
            }
        }
        Ok(if client_is_this_process(client, relay)? {
            Holder::ThisProcess
        } else {
            Holder::OtherProcess
        })
    }
}

/// True when one of this process's descriptors is socket `inode`.
fn holds_socket(inode: u32) -> io::Result<bool> {
    let wanted = format!("socket:[{inode}]");
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let Ok(entry) = entry else { continue };
        // A descriptor closed meanwhile just fails to match.
        if std::fs::read_link(entry.path())
            .is_ok_and(|target| target.as_os_str() == wanted.as_str())
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// True when the socket whose local address is `client` and remote address
/// is `relay` is an open descriptor of this process.
pub fn client_is_this_process(client: SocketAddr, relay: SocketAddr) -> io::Result<bool> {
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let Ok(entry) = entry else { continue };
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<RawFd>().ok())
        else {
            continue;
        };
        // Read-only queries: a descriptor that is not a socket, or that
        // another thread closes meanwhile, just fails to match.
        if getsockname::<SockaddrStorage>(fd)
            .ok()
            .and_then(|a| to_std(&a))
            != Some(client)
        {
            continue;
        }
        // The same addresses on a UDP socket would be another socket.
        if getpeername::<SockaddrStorage>(fd)
            .ok()
            .and_then(|a| to_std(&a))
            == Some(relay)
            && socket_kind::is_tcp_stream(fd)
        {
            return Ok(true);
        }
    }
    Ok(false)
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

    #[test]
    fn own_socket_is_found() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server_side, peer) = listener.accept().unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        assert!(client_is_this_process(peer, server_side.local_addr().unwrap()).unwrap());
        // A made-up peer is nobody's.
        let nobody: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert!(!client_is_this_process(nobody, server_side.local_addr().unwrap()).unwrap());
    }

    /// A client socket of family AF_INET6 reaching the IPv4 listener
    /// through `::ffff:127.0.0.1` (what a client resolving "localhost" on a
    /// dual-stack socket does) is still this process's.
    #[test]
    fn own_v4_mapped_ipv6_socket_is_found() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = TcpStream::connect(format!("[::ffff:127.0.0.1]:{port}")).unwrap();
        assert!(client.local_addr().unwrap().is_ipv6());
        let (server_side, peer) = listener.accept().unwrap();
        assert!(peer.is_ipv4());
        let relay = server_side.local_addr().unwrap();
        assert!(client_is_this_process(peer, relay).unwrap());
        assert_eq!(
            PeerCheck::new().holder(peer, relay).unwrap(),
            Holder::ThisProcess
        );
    }

    /// A UDP socket of this process with the same two addresses is not the
    /// client: only a TCP stream socket is.
    #[test]
    fn a_udp_socket_with_the_same_addresses_is_not_the_client() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let relay = listener.local_addr().unwrap();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        udp.connect(relay).unwrap();
        assert!(!client_is_this_process(udp.local_addr().unwrap(), relay).unwrap());
    }

    /// Both ways of asking agree on a socket of this process, on one that
    /// is gone and on a made-up one.
    #[test]
    fn holder_with_and_without_sock_diag() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let relay = listener.local_addr().unwrap();
        let client = TcpStream::connect(relay).unwrap();
        let (_server_side, peer) = listener.accept().unwrap();
        let mut with = PeerCheck::new();
        assert!(with.diag.is_some(), "sock_diag is not available");
        let mut without = PeerCheck::without_sock_diag();
        assert_eq!(with.holder(peer, relay).unwrap(), Holder::ThisProcess);
        assert_eq!(without.holder(peer, relay).unwrap(), Holder::ThisProcess);
        drop(client);
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(with.holder(peer, relay).unwrap(), Holder::Gone);
        let nobody: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(with.holder(nobody, relay).unwrap(), Holder::Gone);
        assert_eq!(without.holder(nobody, relay).unwrap(), Holder::OtherProcess);
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
