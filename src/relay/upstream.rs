//! Dialing the broker: the URLs in order, each try bounded by the connect
//! timeout (DNS + TCP + TLS + the broker's Connection.Start), TLS with
//! rustls and certificate verification.
//!
//! A try only counts as answered once the broker has sent its first frame:
//! a host that takes the TCP connection but never speaks AMQP (a hung
//! broker, a wrong port) then fails over like an unreachable one, while the
//! client has not yet seen anything it would have to unlearn.
//!
//! Everything here is async on the relay's event loop, so a slow dial never
//! delays the other connections' heartbeats. Host names that are not IP
//! literals are resolved by resolve.rs (a helper process, on a short-lived
//! blocking thread), without reading this process's environment; IP
//! literals need none.

use crate::broker_url::BrokerUrl;
use crate::config::RelaySettings;
use crate::relay::frame::{PROTOCOL_HEADER, Scan, scan};
use crate::relay::resolve;
use crate::relay::session::HANDSHAKE_FRAME_MAX;
use bytes::BytesMut;
use rustls::pki_types::ServerName;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// A byte stream to the broker, plain or TLS.
pub trait BrokerIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> BrokerIo for T {}

pub struct Dialed {
    pub stream: Box<dyn BrokerIo>,
    /// Which URL of the list answered.
    pub broker: usize,
    /// The relay's own address on the upstream socket (the broker's
    /// "peer port" in rabbitmqctl list_connections).
    pub local: Option<SocketAddr>,
    /// What the broker sent so far: its first frame (Connection.Start),
    /// maybe more. The protocol header has already gone up.
    pub first_bytes: BytesMut,
    /// The socket under `stream` when it is plain TCP (for quiet.rs);
    /// None under TLS. Valid as long as `stream` lives.
    pub plain_fd: Option<RawFd>,
}

/// A connected upstream, before the AMQP protocol header.
struct Connected {
    stream: Box<dyn BrokerIo>,
    local: Option<SocketAddr>,
    plain_fd: Option<RawFd>,
}

/// TLS client configuration for one listener: the configured CA bundle, or
/// the system roots. Built once, with the listener, before the relay thread
/// starts (rustls-native-certs reads `SSL_CERT_FILE`/`SSL_CERT_DIR`).
pub fn tls_connector(settings: &RelaySettings) -> Result<Option<TlsConnector>, String> {
    if !settings.brokers.iter().any(|b| b.tls) {
        return Ok(None);
    }
    let mut roots = rustls::RootCertStore::empty();
    match &settings.ca_bundle {
        Some(bundle) => {
            roots.add_parsable_certificates(bundle.certificates.iter().cloned());
        }
        None => {
            let loaded = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(loaded.certs);
            if roots.is_empty() {
                return Err(
                    "no system CA certificates found for amqps:// (install ca-certificates or set AMQPHeartbeatTLSCACertificateFile)"
                        .to_string(),
                );
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Some(TlsConnector::from(Arc::new(config))))
}

/// Try each broker in order; the error lists every failed try.
pub async fn dial(settings: &RelaySettings, tls: Option<&TlsConnector>) -> Result<Dialed, String> {
    let mut failures = Vec::new();
    for (index, broker) in settings.brokers.iter().enumerate() {
        let limit = settings.connect_timeout;
        match tokio::time::timeout(limit, dial_one(broker, tls, limit)).await {
            Ok(Ok((connected, first_bytes))) => {
                return Ok(Dialed {
                    stream: connected.stream,
                    broker: index,
                    local: connected.local,
                    first_bytes,
                    plain_fd: connected.plain_fd,
                });
            }
            Ok(Err(e)) => failures.push(format!("{broker}: {e}")),
            Err(_) => failures.push(format!(
                "{broker}: no AMQP answer within {}s (AMQPHeartbeatConnectTimeout)",
                settings.connect_timeout.as_secs()
            )),
        }
    }
    Err(format!("no broker reachable: {}", failures.join("; ")))
}

async fn dial_one(
    broker: &BrokerUrl,
    tls: Option<&TlsConnector>,
    limit: std::time::Duration,
) -> Result<(Connected, BytesMut), String> {
    let mut connected = connect(broker, tls, limit).await?;
    let stream = &mut connected.stream;
    stream
        .write_all(&PROTOCOL_HEADER)
        .await
        .map_err(|e| format!("sending the protocol header: {e}"))?;
    stream
        .flush()
        .await
        .map_err(|e| format!("sending the protocol header: {e}"))?;
    let mut first = BytesMut::with_capacity(4096);
    loop {
        match scan(&first, HANDSHAKE_FRAME_MAX) {
            Scan::Frame(_) => return Ok((connected, first)),
            Scan::Invalid(_) if first.starts_with(b"AMQP") => {
                return Err(format!(
                    "the broker does not speak AMQP 0-9-1 (it answered with protocol header {:?})",
                    String::from_utf8_lossy(&first[..first.len().min(8)])
                ));
            }
            Scan::Invalid(e) => return Err(format!("the broker's first frame is malformed: {e}")),
            Scan::Incomplete => {}
        }
        match stream.read_buf(&mut first).await {
            Ok(0) => {
                return Err("the broker closed the connection before Connection.Start".to_string());
            }
            Ok(_) => {}
            Err(e) => return Err(format!("waiting for Connection.Start: {e}")),
        }
    }
}

/// Connect to the first of `addrs` that takes the connection by
/// `deadline`. Each address gets an equal share of the time left, the last
/// all of it: one that never answers (an AAAA record with no route, a host
/// that drops SYNs) must not use up the whole try, as a client dialing
/// directly moves on to the next address on its own timeout.
async fn connect_any(
    addrs: &[SocketAddr],
    deadline: tokio::time::Instant,
) -> Result<TcpStream, String> {
    let mut last_error = String::from("no address to connect to");
    for (tried, addr) in addrs.iter().enumerate() {
        let now = tokio::time::Instant::now();
        let left = u32::try_from(addrs.len() - tried).unwrap_or(u32::MAX);
        let share = deadline.saturating_duration_since(now) / left;
        match tokio::time::timeout(share, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) => last_error = format!("connect to {addr}: {e}"),
            Err(_) => {
                last_error = format!(
                    "connect to {addr}: no answer within {:.1}s",
                    share.as_secs_f64()
                )
            }
        }
    }
    Err(last_error)
}

async fn connect(
    broker: &BrokerUrl,
    tls: Option<&TlsConnector>,
    limit: std::time::Duration,
) -> Result<Connected, String> {
    let deadline = tokio::time::Instant::now() + limit;
    let addrs: Vec<SocketAddr> = match broker.host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, broker.port)],
        Err(_) => resolve::resolve(&broker.host, broker.port, limit).await?,
    };
    if addrs.is_empty() {
        return Err(format!("{} resolved to no address", broker.host));
    }
    let tcp = connect_any(&addrs, deadline).await?;
    // Frames are written whole; Nagle would only add latency.
    let _ = tcp.set_nodelay(true);
    let local = tcp.local_addr().ok();
    if !broker.tls {
        let plain_fd = Some(tcp.as_raw_fd());
        return Ok(Connected {
            stream: Box::new(tcp),
            local,
            plain_fd,
        });
    }
    let connector = tls.ok_or("TLS is not set up for this listener")?;
    let name = ServerName::try_from(broker.host.clone())
        .map_err(|e| format!("bad TLS server name {}: {e}", broker.host))?;
    let stream = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake failed: {e}"))?;
    Ok(Connected {
        stream: Box::new(stream),
        local,
        plain_fd: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, bind, listen, socket,
    };
    use std::net::{Ipv4Addr, SocketAddrV4};
    use std::time::Duration;

    /// A listener on `ip` whose accept queue is full: the kernel drops
    /// further SYNs, so a connect to it hangs (what an unrouted address
    /// looks like to the dialer). Returns it, the connection filling it,
    /// and its address.
    fn hanging_address(ip: Ipv4Addr) -> (std::os::fd::OwnedFd, std::net::TcpStream, SocketAddr) {
        let fd = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &SockaddrIn::from(SocketAddrV4::new(ip, 0)),
        )
        .unwrap();
        listen(&fd, Backlog::new(0).unwrap()).unwrap();
        let addr =
            nix::sys::socket::getsockname::<SockaddrIn>(std::os::fd::AsRawFd::as_raw_fd(&fd))
                .unwrap();
        let addr = SocketAddr::V4(SocketAddrV4::from(addr));
        let filler = std::net::TcpStream::connect(addr).unwrap();
        (fd, filler, addr)
    }

    /// A name with two addresses whose first never answers: the second is
    /// still tried within the same connect timeout.
    #[test]
    fn a_first_address_that_never_answers_leaves_time_for_the_next() {
        let (_hanging, _filler, hang) = hanging_address(Ipv4Addr::new(127, 0, 0, 3));
        let good = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let good_addr = good.local_addr().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let started = std::time::Instant::now();
        let connected = runtime.block_on(async {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
            tokio::time::timeout_at(
                deadline + Duration::from_secs(1),
                connect_any(&[hang, good_addr], deadline),
            )
            .await
        });
        let took = started.elapsed();
        let stream = connected
            .expect("the dial did not end by its deadline")
            .unwrap();
        assert_eq!(stream.peer_addr().unwrap(), good_addr);
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(3),
            "{took:?}"
        );
        // Alone, the hanging address fails by the deadline, saying so.
        let err = runtime
            .block_on(connect_any(
                &[hang],
                tokio::time::Instant::now() + Duration::from_millis(300),
            ))
            .unwrap_err();
        // (0.3s, or 0.2s when this thread was held up before the dial.)
        assert!(err.contains("no answer within 0."), "{err}");
    }
}
