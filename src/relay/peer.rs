//! "Only this process": is a loopback client socket held by this process?
//!
//! The relay listens on loopback, where any local user could connect and
//! borrow the app's broker connection. The client's end of the connection
//! has the relay's peer address as its own address and the relay's address
//! as its peer; if one of this process's descriptors is that socket, the
//! client is this process.
//!
//! Asking each of our own descriptors (`getsockname`/`getpeername`, a
//! couple of dozen in an httpd child) is cheap and bounded by this
//! process's size. The kernel's socket tables (/proc/net/tcp) would need a
//! walk of the whole machine's TCP hash on every accept, milliseconds that
//! any local user could make the relay thread spend by connecting.

use crate::os::socket_kind;
use nix::sys::socket::{SockaddrStorage, getpeername, getsockname};
use std::io;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

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
        assert!(client_is_this_process(peer, server_side.local_addr().unwrap()).unwrap());
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

    #[test]
    fn socket_of_another_process_is_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // A child process (python3 is on every machine this builds on)
        // connects and waits; its socket is not ours.
        let mut child = std::process::Command::new("python3")
            .arg("-c")
            .arg(format!(
                "import socket,sys,time; s=socket.create_connection(('127.0.0.1',{})); print('up',flush=True); sys.stdin.read()",
                addr.port()
            ))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let (server_side, peer) = listener.accept().unwrap();
        let owned = client_is_this_process(peer, server_side.local_addr().unwrap()).unwrap();
        drop(child.stdin.take());
        child.wait().unwrap();
        assert!(!owned);
    }
}
