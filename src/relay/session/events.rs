//! What the relay reports, as data: every event has its fields (which
//! connection, ports, broker, bytes, reason, close code) and is rendered
//! to the text of the error log in one place, `Display` below. Tests and
//! counters look at the fields; operators read the text.

use crate::relay::Level;
use crate::relay::log_limit::Limited;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// A side of a relayed connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    Client,
    Broker,
}

impl Side {
    pub fn other(self) -> Side {
        match self {
            Side::Client => Side::Broker,
            Side::Broker => Side::Client,
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Client => "client",
            Side::Broker => "broker",
        })
    }
}

/// How a relayed connection ended (one per row of the close-plan table,
/// rule R10; clean closes by either side are told apart).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EndKind {
    /// The client's Connection.Close went through (either side's EOF after).
    ClosedByClient,
    /// The broker's Connection.Close went through.
    ClosedByBroker,
    /// The client's socket ended or failed without Connection.Close.
    ClientGone,
    /// The broker's socket ended or failed without Connection.Close.
    BrokerLost,
    /// The broker missed heartbeats.
    BrokerSilent,
    ClientBadFrame,
    BrokerBadFrame,
    /// The httpd child is exiting.
    Shutdown,
    /// The heartbeat timer failed.
    TimerFailed,
    /// The relay's own code panicked while serving the connection.
    Internal,
    /// The AMQP handshake did not complete in time.
    HandshakeTimedOut,
}

/// Why a listener refused a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Held by a process of another user (NETLINK_SOCK_DIAG's answer).
    OtherUser(u32),
    NotThisProcess,
    OwnerUnknown(String),
    TooMany {
        active: usize,
        max: usize,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::OtherUser(uid) => write!(
                f,
                "its socket belongs to uid {uid} (only this httpd child's app may use its relay)"
            ),
            Refusal::NotThisProcess => f.write_str(
                "its socket is not held by this process (only this httpd child's app may use its relay)",
            ),
            Refusal::OwnerUnknown(e) => {
                write!(f, "cannot tell which process holds its socket ({e})")
            }
            Refusal::TooMany { active, max } => write!(
                f,
                "{active} connections already relayed (AMQPHeartbeatMaxConnections {max})"
            ),
        }
    }
}

/// One relay event. `id` is the connection's number within the relay.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    WrongProtocolHeader {
        id: u64,
        peer: SocketAddr,
    },
    ClosedBeforeHeader {
        id: u64,
        peer: SocketAddr,
    },
    NoProtocolHeader {
        id: u64,
        peer: SocketAddr,
        waited: Duration,
    },
    DialFailed {
        id: u64,
        peer: SocketAddr,
        error: String,
    },
    Relayed {
        id: u64,
        peer: SocketAddr,
        /// The broker URL as configured, without credentials.
        broker: String,
        /// 0-based index of that URL in the list, and the list's length.
        broker_index: usize,
        brokers: usize,
        /// The relay's own address on the upstream socket.
        upstream: Option<SocketAddr>,
    },
    /// The relay ends the connection and tells `to` why, with
    /// Connection.Close `code`.
    SentClose {
        id: u64,
        kind: EndKind,
        to: Side,
        code: u16,
        reason: String,
    },
    Closed {
        id: u64,
        kind: EndKind,
        reason: String,
        after: Duration,
        bytes_to_broker: u64,
        bytes_to_client: u64,
    },
    /// Every refusal is recorded (the status counters count them all);
    /// only `logged` ones are written to the error log, the others are
    /// summed up by `Counted` (rate limit, relay::log_limit).
    Refused {
        peer: SocketAddr,
        reason: Refusal,
        logged: bool,
    },
    /// Events of one kind in the last interval that were not logged one
    /// by one.
    Counted {
        of: Limited,
        summary: String,
    },
    /// A client closed its connection before it could be checked; only
    /// `logged` ones are written (rate limit).
    ClosedBeforeAccepted {
        peer: SocketAddr,
        logged: bool,
    },
    /// Only `logged` ones are written (rate limit).
    AcceptFailed {
        local: SocketAddr,
        error: String,
        logged: bool,
    },
    ListenerUnusable {
        error: String,
    },
    TlsUnavailable {
        error: String,
    },
    /// A connection task panicked outside its pump (caught; its sockets
    /// were dropped without a Close).
    ConnectionPanicked {
        id: u64,
        message: String,
    },
    /// A listener's acceptor panicked (caught); it accepts again.
    AcceptorPanicked {
        local: SocketAddr,
        message: String,
    },
}

impl Event {
    /// Whether the event goes to the error log (a rate-limited one is
    /// only counted).
    pub fn is_logged(&self) -> bool {
        !matches!(
            self,
            Event::Refused { logged: false, .. }
                | Event::ClosedBeforeAccepted { logged: false, .. }
                | Event::AcceptFailed { logged: false, .. }
        )
    }

    /// Whether a rate-limited event is written (the others always are).
    pub fn set_logged(&mut self, to: bool) {
        if let Event::Refused { logged, .. }
        | Event::ClosedBeforeAccepted { logged, .. }
        | Event::AcceptFailed { logged, .. } = self
        {
            *logged = to;
        }
    }

    pub fn level(&self) -> Level {
        match self {
            Event::ClosedBeforeHeader { .. } => Level::Debug,
            Event::Relayed { .. } | Event::Closed { .. } => Level::Info,
            Event::WrongProtocolHeader { .. }
            | Event::NoProtocolHeader { .. }
            | Event::Refused { .. }
            | Event::Counted {
                of: Limited::Refusals,
                ..
            } => Level::Warn,
            Event::ClosedBeforeAccepted { .. }
            | Event::Counted {
                of: Limited::EarlyCloses,
                ..
            } => Level::Info,
            Event::SentClose { kind, .. } => match kind {
                EndKind::BrokerLost | EndKind::ClientBadFrame => Level::Warn,
                _ => Level::Error,
            },
            Event::DialFailed { .. }
            | Event::AcceptFailed { .. }
            | Event::Counted {
                of: Limited::AcceptFailures,
                ..
            }
            | Event::ListenerUnusable { .. }
            | Event::TlsUnavailable { .. }
            | Event::ConnectionPanicked { .. }
            | Event::AcceptorPanicked { .. } => Level::Error,
        }
    }

    /// The connection the event is about, if any.
    pub fn connection(&self) -> Option<u64> {
        match self {
            Event::WrongProtocolHeader { id, .. }
            | Event::ClosedBeforeHeader { id, .. }
            | Event::NoProtocolHeader { id, .. }
            | Event::DialFailed { id, .. }
            | Event::Relayed { id, .. }
            | Event::SentClose { id, .. }
            | Event::Closed { id, .. }
            | Event::ConnectionPanicked { id, .. } => Some(*id),
            _ => None,
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(id) = self.connection() {
            write!(f, "connection #{id}: ")?;
        }
        match self {
            Event::WrongProtocolHeader { peer, .. } => write!(
                f,
                "client {peer} sent a wrong protocol header; answered with AMQP 0-9-1's and closed"
            ),
            Event::ClosedBeforeHeader { peer, .. } => {
                write!(f, "client {peer} closed before sending a protocol header")
            }
            Event::NoProtocolHeader { peer, waited, .. } => write!(
                f,
                "client {peer} sent no protocol header within {}s; closed",
                waited.as_secs()
            ),
            Event::DialFailed { peer, error, .. } => {
                write!(
                    f,
                    "client {peer}: {error}; told the client (Connection.Close 320)"
                )
            }
            Event::Relayed {
                peer,
                broker,
                broker_index,
                brokers,
                upstream,
                ..
            } => {
                write!(
                    f,
                    "client {peer} relayed to {broker} (broker {} of {brokers}), upstream from ",
                    broker_index + 1
                )?;
                match upstream {
                    Some(a) => write!(f, "{a}"),
                    None => f.write_str("?"),
                }
            }
            Event::SentClose {
                to, code, reason, ..
            } => write!(f, "{reason}; sent Connection.Close {code} to the {to}"),
            Event::Closed {
                reason,
                after,
                bytes_to_broker,
                bytes_to_client,
                ..
            } => write!(
                f,
                "closed: {reason} (after {:.1}s, {bytes_to_broker} bytes to the broker, {bytes_to_client} bytes to the client)",
                after.as_secs_f64()
            ),
            Event::Refused { peer, reason, .. } => write!(f, "refused {peer}: {reason}"),
            Event::Counted { summary, .. } => f.write_str(summary),
            Event::ClosedBeforeAccepted { peer, .. } => {
                write!(
                    f,
                    "client {peer} closed its connection before it was accepted"
                )
            }
            Event::AcceptFailed { local, error, .. } => {
                write!(f, "accept on {local} failed: {error}")
            }
            Event::ListenerUnusable { error } => write!(f, "listener has no address: {error}"),
            Event::TlsUnavailable { error } => {
                write!(f, "{error}; amqps:// brokers of this listener will fail")
            }
            Event::ConnectionPanicked { message, .. } => write!(
                f,
                "internal error in the relay ({message}); the connection's sockets were closed"
            ),
            Event::AcceptorPanicked { local, message } => write!(
                f,
                "internal error in the relay's acceptor on {local} ({message}); it accepts again"
            ),
        }
    }
}
