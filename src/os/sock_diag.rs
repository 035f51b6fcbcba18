//! Who owns a TCP socket, in one question to the kernel: NETLINK_SOCK_DIAG
//! (what `ss` uses) looks a connection up by its two addresses and answers
//! its owner's uid and its inode, without walking any process's
//! descriptors. Any user may ask (`ss` needs no privilege).
//!
//! The request and reply are the kernel's `inet_diag_req_v2` and
//! `inet_diag_msg` (linux/inet_diag.h), which neither libc nor nix
//! defines; they are written and read here byte by byte (host order for
//! the netlink fields, network order for ports and addresses), so no
//! `unsafe` is needed.

use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, recv, sendto, socket,
};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const HEADER_LEN: usize = 16;
/// `inet_diag_req_v2`: family, protocol, ext, pad, states, sockid (48).
const REQUEST_LEN: usize = 8 + 48;
/// `inet_diag_msg` up to and including `idiag_inode`.
const REPLY_LEN: usize = 72;

/// The owner of a socket as the kernel reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    /// The uid that created the socket.
    pub uid: u32,
    /// The socket's inode (`socket:[INODE]` in /proc/PID/fd); 0 when no
    /// process holds it any more (closed, the kernel finishing the close).
    pub inode: u32,
}

/// One netlink socket for the lookups of one relay thread.
pub struct SockDiag {
    fd: OwnedFd,
    seq: u32,
}

impl SockDiag {
    pub fn open() -> io::Result<SockDiag> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkSockDiag,
        )?;
        Ok(SockDiag { fd, seq: 0 })
    }

    /// The TCP socket whose own address is `local` and whose peer is
    /// `remote`; `None` when the kernel has no such socket. Addresses of
    /// different families (an IPv4 `local`, an IPv6 `remote`) find nothing.
    pub fn tcp_owner(
        &mut self,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> io::Result<Option<Owner>> {
        self.seq = self.seq.wrapping_add(1);
        let request = request(local, remote, self.seq);
        let kernel = NetlinkAddr::new(0, 0);
        sendto(self.fd.as_raw_fd(), &request, &kernel, MsgFlags::empty())?;
        let mut buffer = [0u8; 8192];
        // The kernel answers inside sendto: the reply is queued already.
        loop {
            let n = recv(self.fd.as_raw_fd(), &mut buffer, MsgFlags::MSG_DONTWAIT)?;
            match parse(&buffer[..n], self.seq)? {
                Some(answer) => return Ok(answer),
                // A stale reply to an earlier question: read on.
                None => continue,
            }
        }
    }
}

fn request(local: SocketAddr, remote: SocketAddr, seq: u32) -> Vec<u8> {
    let family = match local.ip() {
        IpAddr::V4(_) => libc::AF_INET as u8,
        IpAddr::V6(_) => libc::AF_INET6 as u8,
    };
    let mut out = Vec::with_capacity(HEADER_LEN + REQUEST_LEN);
    out.extend_from_slice(&((HEADER_LEN + REQUEST_LEN) as u32).to_ne_bytes());
    out.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    out.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    // inet_diag_req_v2
    out.extend_from_slice(&[family, libc::IPPROTO_TCP as u8, 0, 0]);
    out.extend_from_slice(&u32::MAX.to_ne_bytes()); // every TCP state
    // inet_diag_sockid: the socket's own port and address are "src".
    out.extend_from_slice(&local.port().to_be_bytes());
    out.extend_from_slice(&remote.port().to_be_bytes());
    out.extend_from_slice(&address(local.ip()));
    out.extend_from_slice(&address(remote.ip()));
    out.extend_from_slice(&0u32.to_ne_bytes()); // any interface
    out.extend_from_slice(&u32::MAX.to_ne_bytes()); // INET_DIAG_NOCOOKIE
    out.extend_from_slice(&u32::MAX.to_ne_bytes());
    out
}

/// An address as the four big-endian words of `idiag_src`/`idiag_dst`.
fn address(ip: IpAddr) -> [u8; 16] {
    let mut out = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => out[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => out.copy_from_slice(&v6.octets()),
    }
    out
}

/// The answer to question `seq` in `reply`: `Some(Some(owner))`, or
/// `Some(None)` for "no such socket"; `None` when `reply` answers another
/// question.
fn parse(reply: &[u8], seq: u32) -> io::Result<Option<Option<Owner>>> {
    let u32_at = |at: usize| -> io::Result<u32> {
        reply
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_ne_bytes)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "short sock_diag reply"))
    };
    let kind = reply
        .get(4..6)
        .and_then(|b| b.try_into().ok())
        .map(u16::from_ne_bytes)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "short sock_diag reply"))?;
    if u32_at(8)? != seq {
        return Ok(None);
    }
    match kind {
        NLMSG_ERROR => {
            let errno = u32_at(HEADER_LEN)? as i32;
            if errno == -libc::ENOENT {
                Ok(Some(None))
            } else {
                Err(io::Error::from_raw_os_error(-errno))
            }
        }
        SOCK_DIAG_BY_FAMILY if reply.len() >= HEADER_LEN + REPLY_LEN => Ok(Some(Some(Owner {
            uid: u32_at(HEADER_LEN + 64)?,
            inode: u32_at(HEADER_LEN + 68)?,
        }))),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected sock_diag reply of type {kind}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::os::unix::fs::MetadataExt;

    fn inode_of(fd: &impl AsRawFd) -> u32 {
        std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .unwrap()
            .ino() as u32
    }

    #[test]
    fn both_ends_of_a_connection_are_found_with_uid_and_inode() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, peer) = listener.accept().unwrap();
        let mut diag = SockDiag::open().unwrap();
        let uid = nix::unistd::geteuid().as_raw();
        let owner = diag
            .tcp_owner(peer, server.local_addr().unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(
            owner,
            Owner {
                uid,
                inode: inode_of(&client)
            }
        );
        let owner = diag
            .tcp_owner(server.local_addr().unwrap(), peer)
            .unwrap()
            .unwrap();
        assert_eq!(owner.inode, inode_of(&server));
        let nobody: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(
            diag.tcp_owner(nobody, server.local_addr().unwrap())
                .unwrap(),
            None
        );
    }

    /// An AF_INET6 client reaching an IPv4 listener through
    /// ::ffff:127.0.0.1 is found by its IPv4 addresses.
    #[test]
    fn a_v4_mapped_client_is_found_by_its_ipv4_addresses() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = TcpStream::connect(format!("[::ffff:127.0.0.1]:{port}")).unwrap();
        let (server, peer) = listener.accept().unwrap();
        let owner = SockDiag::open()
            .unwrap()
            .tcp_owner(peer, server.local_addr().unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(owner.inode, inode_of(&client));
    }

    #[test]
    fn a_closed_client_has_no_inode() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, peer) = listener.accept().unwrap();
        drop(client);
        let owner = SockDiag::open()
            .unwrap()
            .tcp_owner(peer, server.local_addr().unwrap())
            .unwrap();
        assert!(
            matches!(owner, None | Some(Owner { inode: 0, .. })),
            "{owner:?}"
        );
    }
}
