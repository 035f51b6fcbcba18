//! Counting relay events into a process's [`Slot`]: an [`EventLog`]
//! wrapper, so every typed event the relay records is counted on its way
//! to the error log (the relay itself only learns of the slot through
//! [`EventLog::status`], for the per-connection traffic figures).

use crate::relay::session::events::{EndKind, Event, Refusal};
use crate::relay::{EventLog, Level};
use crate::status::layout::{CLOSE_CODES, END_KINDS, REFUSALS, Slot};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{SystemTime, UNIX_EPOCH};

/// Metric and JSON names of [`EndKind`], in the order of `Counters::closes`.
pub const END_KIND_NAMES: [&str; END_KINDS] = [
    "closed_by_client",
    "closed_by_broker",
    "client_gone",
    "broker_lost",
    "broker_silent",
    "client_bad_frame",
    "broker_bad_frame",
    "shutdown",
    "timer_failed",
    "internal_error",
    "handshake_timed_out",
];

/// Names of [`Refusal`], in the order of `Counters::refusals`.
pub const REFUSAL_NAMES: [&str; REFUSALS] = [
    "not_this_process",
    "owner_unknown",
    "too_many",
    "other_user",
];

pub fn end_kind_index(kind: EndKind) -> usize {
    match kind {
        EndKind::ClosedByClient => 0,
        EndKind::ClosedByBroker => 1,
        EndKind::ClientGone => 2,
        EndKind::BrokerLost => 3,
        EndKind::BrokerSilent => 4,
        EndKind::ClientBadFrame => 5,
        EndKind::BrokerBadFrame => 6,
        EndKind::Shutdown => 7,
        EndKind::TimerFailed => 8,
        EndKind::Internal => 9,
        EndKind::HandshakeTimedOut => 10,
    }
}

fn refusal_index(reason: &Refusal) -> usize {
    match reason {
        Refusal::NotThisProcess => 0,
        Refusal::OwnerUnknown(_) => 1,
        Refusal::TooMany { .. } => 2,
        Refusal::OtherUser(_) => 3,
    }
}

/// Index in `Counters::close_codes` (the last one is "other").
pub fn close_code_index(code: u16) -> usize {
    CLOSE_CODES
        .iter()
        .position(|c| *c == code)
        .unwrap_or(CLOSE_CODES.len())
}

pub fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// `host:port` of a broker URL as the relay displays it
/// (`amqp://user:***@host:port/vhost`): no user name either.
pub fn broker_authority(display: &str) -> &str {
    let rest = display.split_once("://").map_or(display, |(_, r)| r);
    let rest = rest.split('/').next().unwrap_or(rest);
    rest.rsplit_once('@').map_or(rest, |(_, host)| host)
}

/// Count `event`, seen on `listener`, into `slot`.
pub fn count(slot: &Slot, listener: usize, event: &Event) {
    let c = &slot.counters;
    match event {
        Event::Relayed {
            id,
            peer,
            broker,
            broker_index,
            upstream,
            ..
        } => {
            c.connections.fetch_add(1, Relaxed);
            if *broker_index > 0 {
                c.failovers.fetch_add(1, Relaxed);
            }
            let Some(entry) = slot.claim_connection() else {
                return;
            };
            entry.listener.store(listener as u32, Relaxed);
            entry.client_port.store(peer.port().into(), Relaxed);
            entry
                .upstream_port
                .store(upstream.map_or(0, |a| a.port().into()), Relaxed);
            entry.broker_index.store(*broker_index as u32, Relaxed);
            entry.broker.set(broker_authority(broker));
            entry.started_unix_ms.store(unix_ms_now(), Relaxed);
            entry.last_broker_unix_ms.store(0, Relaxed);
            entry.update(&Default::default());
            entry.publish(*id);
        }
        Event::Closed { id, kind, .. } => {
            c.closes[end_kind_index(*kind)].fetch_add(1, Relaxed);
            if let Some(entry) = slot.connection(*id) {
                entry.release();
            }
        }
        Event::SentClose { kind, code, .. } => {
            c.close_codes[close_code_index(*code)].fetch_add(1, Relaxed);
            if *kind == EndKind::BrokerSilent {
                c.broker_dead.fetch_add(1, Relaxed);
            }
        }
        Event::Refused { reason, .. } => {
            c.refusals[refusal_index(reason)].fetch_add(1, Relaxed);
        }
        Event::DialFailed { .. } => {
            c.dial_failures.fetch_add(1, Relaxed);
        }
        Event::WrongProtocolHeader { .. } | Event::NoProtocolHeader { .. } => {
            c.bad_headers.fetch_add(1, Relaxed);
        }
        _ => {}
    }
}

/// An [`EventLog`] that counts every event into a slot, then passes it on.
pub struct CountingLog {
    inner: Arc<dyn EventLog>,
    slot: &'static Slot,
}

impl CountingLog {
    pub fn new(inner: Arc<dyn EventLog>, slot: &'static Slot) -> CountingLog {
        CountingLog { inner, slot }
    }
}

impl EventLog for CountingLog {
    fn event(&self, listener: usize, level: Level, message: &str) {
        self.inner.event(listener, level, message);
    }

    fn record(&self, listener: usize, event: &Event) {
        count(self.slot, listener, event);
        self.inner.record(listener, event);
    }

    fn status(&self) -> Option<&'static Slot> {
        Some(self.slot)
    }

    fn relay_restarted(&self) {
        self.slot.counters.restarts.fetch_add(1, Relaxed);
        // The restarted relay starts with no connection.
        for e in &self.slot.connections {
            e.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::session::events::Side;
    use std::time::Duration;

    fn leaked_slot() -> &'static Slot {
        Box::leak(Box::default())
    }

    fn relayed(id: u64, index: usize) -> Event {
        Event::Relayed {
            id,
            peer: "127.0.0.1:40001".parse().unwrap(),
            broker: "amqp://nova:***@rabbit2:5673/nova".to_string(),
            broker_index: index,
            brokers: 2,
            upstream: Some("10.0.0.1:50002".parse().unwrap()),
        }
    }

    #[test]
    fn broker_authority_drops_scheme_user_and_vhost() {
        assert_eq!(broker_authority("amqp://u:***@h:5672/v"), "h:5672");
        assert_eq!(broker_authority("amqps://h:5671"), "h:5671");
        assert_eq!(broker_authority("amqp://u@[::1]:5672/"), "[::1]:5672");
    }

    #[test]
    fn a_relayed_connection_is_listed_until_it_closes() {
        let slot = leaked_slot();
        count(slot, 1, &relayed(7, 1));
        let entry = slot.connection(7).unwrap();
        assert_eq!(entry.broker.get(), "rabbit2:5673");
        assert_eq!(entry.client_port.load(Relaxed), 40001);
        assert_eq!(entry.upstream_port.load(Relaxed), 50002);
        assert_eq!(entry.listener.load(Relaxed), 1);
        assert_eq!(slot.counters.connections.load(Relaxed), 1);
        assert_eq!(slot.counters.failovers.load(Relaxed), 1);
        count(
            slot,
            1,
            &Event::SentClose {
                id: 7,
                kind: EndKind::BrokerSilent,
                to: Side::Client,
                code: 320,
                reason: "x".into(),
            },
        );
        count(
            slot,
            1,
            &Event::Closed {
                id: 7,
                kind: EndKind::BrokerSilent,
                reason: "x".into(),
                after: Duration::from_secs(1),
                bytes_to_broker: 1,
                bytes_to_client: 2,
            },
        );
        assert!(slot.connection(7).is_none());
        let c = &slot.counters;
        assert_eq!(c.broker_dead.load(Relaxed), 1);
        assert_eq!(c.close_codes[close_code_index(320)].load(Relaxed), 1);
        assert_eq!(
            c.closes[end_kind_index(EndKind::BrokerSilent)].load(Relaxed),
            1
        );
    }

    #[test]
    fn a_full_table_counts_the_connections_it_cannot_list() {
        let slot = leaked_slot();
        for id in 1..=(crate::status::layout::MAX_CONNECTIONS as u64 + 2) {
            count(slot, 0, &relayed(id, 0));
        }
        assert_eq!(slot.counters.unlisted.load(Relaxed), 2);
        assert_eq!(slot.counters.failovers.load(Relaxed), 0);
    }

    #[test]
    fn refusals_dial_failures_and_restarts_are_counted() {
        let slot = leaked_slot();
        let peer = "127.0.0.1:1".parse().unwrap();
        count(
            slot,
            0,
            &Event::Refused {
                peer,
                reason: Refusal::TooMany { active: 1, max: 1 },
                logged: false,
            },
        );
        count(
            slot,
            0,
            &Event::DialFailed {
                id: 1,
                peer,
                error: "no".into(),
            },
        );
        count(slot, 0, &relayed(3, 0));
        let log = CountingLog::new(Arc::new(crate::relay::StderrLog), slot);
        log.relay_restarted();
        let c = &slot.counters;
        assert_eq!(c.refusals[2].load(Relaxed), 1);
        assert_eq!(c.dial_failures.load(Relaxed), 1);
        assert_eq!(c.restarts.load(Relaxed), 1);
        assert!(
            slot.connection(3).is_none(),
            "a restart drops every connection"
        );
    }
}
