//! mod_status's `status_hook` lines: `Key: value` for
//! `server-status?auto` (what apache_exporter reads), else a small HTML
//! block on the server-status page.

use super::health;
use crate::status::view::ProcessView;
use std::fmt::Write;

/// mod_status's lines: `Key: value` for `server-status?auto` (what
/// apache_exporter reads), else a small HTML block.
pub fn summary(processes: &[ProcessView], now_ms: u64, short: bool) -> String {
    let sum = |f: fn(&ProcessView) -> u64| processes.iter().map(f).sum::<u64>();
    let lines: [(&str, u64); 10] = [
        ("AMQPHeartbeatRelays", processes.len() as u64),
        (
            "AMQPHeartbeatConnections",
            sum(|p| p.connections.len() as u64),
        ),
        (
            "AMQPHeartbeatConnectionsTotal",
            sum(|p| p.counters.connections),
        ),
        ("AMQPHeartbeatFailoversTotal", sum(|p| p.counters.failovers)),
        (
            "AMQPHeartbeatDialFailuresTotal",
            sum(|p| p.counters.dial_failures),
        ),
        (
            "AMQPHeartbeatBrokerDeadTotal",
            sum(|p| p.counters.broker_dead),
        ),
        (
            "AMQPHeartbeatRefusalsTotal",
            sum(|p| p.counters.refusals.iter().sum()),
        ),
        ("AMQPHeartbeatRestartsTotal", sum(|p| p.counters.restarts)),
        (
            "AMQPHeartbeatBytesToBroker",
            sum(|p| p.connections.iter().map(|c| c.bytes_to_broker).sum()),
        ),
        (
            "AMQPHeartbeatBytesToClient",
            sum(|p| p.connections.iter().map(|c| c.bytes_to_client).sum()),
        ),
    ];
    let healthy = u8::from(health(processes, now_ms).is_ok());
    let mut out = String::new();
    if short {
        for (key, value) in lines {
            let _ = writeln!(out, "{key}: {value}");
        }
        let _ = writeln!(out, "AMQPHeartbeatHealthy: {healthy}");
    } else {
        out.push_str("<hr>\n<h2>AMQP heartbeat relays</h2>\n<dl>\n");
        for (key, value) in lines {
            let _ = writeln!(out, "<dt>{key}: {value}</dt>");
        }
        let _ = writeln!(out, "<dt>AMQPHeartbeatHealthy: {healthy}</dt>\n</dl>");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::render::fixture::{NOW, process};

    #[test]
    fn summary_lines_are_key_value_for_auto() {
        let text = summary(&[process(1, 0), process(2, 0)], NOW, true);
        assert!(text.contains("AMQPHeartbeatRelays: 2\n"));
        assert!(text.contains("AMQPHeartbeatConnections: 2\n"));
        assert!(text.contains("AMQPHeartbeatConnectionsTotal: 6\n"));
        assert!(text.contains("AMQPHeartbeatHealthy: 1\n"));
        assert!(summary(&[], NOW, false).starts_with("<hr>"));
    }
}
