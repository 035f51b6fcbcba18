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

async fn connect(
    broker: &BrokerUrl,
    tls: Option<&TlsConnector>,
    limit: std::time::Duration,
) -> Result<Connected, String> {
    let addrs: Vec<SocketAddr> = match broker.host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, broker.port)],
        Err(_) => resolve::resolve(&broker.host, broker.port, limit).await?,
    };
    let mut last_error = format!("{} resolved to no address", broker.host);
    let mut connected = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => {
                connected = Some(s);
                break;
            }
            Err(e) => last_error = format!("connect to {addr}: {e}"),
        }
    }
    let tcp = connected.ok_or(last_error)?;
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
