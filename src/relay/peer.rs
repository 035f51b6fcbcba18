//! "Only this process": is a loopback client socket held by this process?
//!
//! The relay listens on loopback, where any local user could connect and
//! borrow the app's broker connection. On Linux the kernel's socket tables
//! (/proc/net/tcp, /proc/net/tcp6) map the client's end (the relay's peer
//! address, connected to the relay's local address) to a socket inode, and
//! /proc/self/fd lists the sockets this process holds.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// True when the socket whose local address is `client` and remote address
/// is `relay` is an open descriptor of this process.
pub fn client_is_this_process(client: SocketAddr, relay: SocketAddr) -> io::Result<bool> {
    let table = match client {
        SocketAddr::V4(_) => "/proc/net/tcp",
        SocketAddr::V6(_) => "/proc/net/tcp6",
    };
    let text = std::fs::read_to_string(table)?;
    let Some(inode) = find_inode(&text, client, relay) else {
        return Ok(false);
    };
    let wanted = format!("socket:[{inode}]");
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let Ok(entry) = entry else { continue };
        if let Ok(target) = std::fs::read_link(entry.path()) {
            if target.as_os_str() == wanted.as_str() {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// Find the inode of the socket `local -> remote` in a /proc/net/tcp{,6}
/// table.
pub fn find_inode(table: &str, local: SocketAddr, remote: SocketAddr) -> Option<u64> {
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // sl local rem st queues timer retrnsmt uid timeout inode ...
        if fields.len() < 10 {
            return None;
        }
        if parse_endpoint(fields[1])? == local && parse_endpoint(fields[2])? == remote {
            fields[9].parse().ok()
        } else {
            None
        }
    })
}

/// Parse `0100007F:1F90` (IPv4) or 32 hex digits + port (IPv6). The kernel
/// prints each 32-bit word of the address as a native-endian integer.
fn parse_endpoint(text: &str) -> Option<SocketAddr> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let hex = addr.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut octets = [0u8; 16];
            for i in 0..4 {
                octets[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
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

    #[test]
    fn parses_kernel_format() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 20 4 30 10 -1\n";
        let local: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let remote: SocketAddr = "127.0.0.1:54321".parse().unwrap();
        if cfg!(target_endian = "little") {
            assert_eq!(find_inode(table, local, remote), Some(12345));
        }
        assert_eq!(find_inode(table, remote, local), None);
        let v6 = parse_endpoint("00000000000000000000000001000000:0050").unwrap();
        if cfg!(target_endian = "little") {
            assert_eq!(v6, "[::1]:80".parse::<SocketAddr>().unwrap());
        }
    }
}
