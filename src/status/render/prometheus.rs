//! `?metrics`: the Prometheus text exposition format (version 0.0.4),
//! written by hand (HELP, TYPE, samples; label values escaped).

use super::{code_label, health};
use crate::status::counting::{END_KIND_NAMES, REFUSAL_NAMES};
use crate::status::layout::CLOSE_CODES;
use crate::status::view::{ConnectionView, ProcessView};
use std::fmt::Write;

/// A label value in the exposition format: backslash, double quote and
/// line feed escaped.
pub fn label_value(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One metric family being written.
struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", label_value(v)))
            .collect();
        if labels.is_empty() {
            let _ = writeln!(self.out, "{name} {value}");
        } else {
            let _ = writeln!(self.out, "{name}{{{}}} {value}", labels.join(","));
        }
    }
}

fn family<'a>(out: &'a mut String, name: &str, kind: &str, help: &str) -> Family<'a> {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    Family { out }
}

/// A per-process metric: name, help, value.
type ProcessMetric = (&'static str, &'static str, fn(&ProcessView) -> u64);
/// A per-process counter split by one label: name, help, the label, its
/// values, the counts in that order.
type SplitMetric = (
    &'static str,
    &'static str,
    &'static str,
    Vec<String>,
    fn(&ProcessView) -> &[u64],
);
/// A per-connection value at a time (Unix ms), as sample text.
type Field = fn(&ConnectionView, u64) -> String;
/// A per-connection metric: name, type, help, and its samples by
/// `direction` label ("": none).
type ConnectionMetric = (
    &'static str,
    &'static str,
    &'static str,
    &'static [(&'static str, Field)],
);

/// The Prometheus text exposition format (version 0.0.4). Per process:
/// label `pid`; per listener and connection also `server`, `broker`.
pub fn metrics(processes: &[ProcessView], now_ms: u64) -> String {
    let mut out = String::new();
    let healthy = health(processes, now_ms).is_ok();
    family(
        &mut out,
        "amqp_heartbeat_healthy",
        "gauge",
        "1 when every relay with connections has a live upstream.",
    )
    .sample("amqp_heartbeat_healthy", &[], u8::from(healthy));
    let pids: Vec<String> = processes.iter().map(|p| p.pid.to_string()).collect();

    let per_process: [ProcessMetric; 8] = [
        (
            "amqp_heartbeat_connections_total",
            "Connections relayed since the relay process started.",
            |p| p.counters.connections,
        ),
        (
            "amqp_heartbeat_failovers_total",
            "Connections relayed to a broker other than the first.",
            |p| p.counters.failovers,
        ),
        (
            "amqp_heartbeat_dial_failures_total",
            "Clients closed because no broker answered.",
            |p| p.counters.dial_failures,
        ),
        (
            "amqp_heartbeat_broker_dead_total",
            "Brokers declared dead after missed heartbeats.",
            |p| p.counters.broker_dead,
        ),
        (
            "amqp_heartbeat_relay_restarts_total",
            "Relay thread restarts after a panic.",
            |p| p.counters.restarts,
        ),
        (
            "amqp_heartbeat_bad_protocol_headers_total",
            "Clients that sent a wrong or no protocol header.",
            |p| p.counters.bad_headers,
        ),
        (
            "amqp_heartbeat_unlisted_connections_total",
            "Connections not listed on the page (table full).",
            |p| p.counters.unlisted,
        ),
        (
            "amqp_heartbeat_open_connections",
            "Connections open now and listed (at most 64 per process; see amqp_heartbeat_unlisted_connections_total).",
            |p| p.connections.len() as u64,
        ),
    ];
    for (name, help, value) in per_process {
        let kind = if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        let mut f = family(&mut out, name, kind, help);
        for (p, pid) in processes.iter().zip(&pids) {
            f.sample(name, &[("pid", pid)], value(p));
        }
    }
    {
        let name = "amqp_heartbeat_relay_up";
        let mut f = family(&mut out, name, "gauge", "1 while the relay thread runs.");
        for (p, pid) in processes.iter().zip(&pids) {
            let kind = if p.daemon { "daemon" } else { "httpd_child" };
            f.sample(name, &[("pid", pid), ("kind", kind)], u8::from(p.running));
        }
    }
    {
        let name = "amqp_heartbeat_relay_start_time_seconds";
        let mut f = family(
            &mut out,
            name,
            "gauge",
            "When the relay process started (Unix time).",
        );
        for (p, pid) in processes.iter().zip(&pids) {
            f.sample(name, &[("pid", pid)], p.started_unix_ms as f64 / 1000.0);
        }
    }
    {
        let name = "amqp_heartbeat_listener_port";
        let mut f = family(
            &mut out,
            name,
            "gauge",
            "The loopback port of each relay listener.",
        );
        for (p, pid) in processes.iter().zip(&pids) {
            for (server, port) in &p.listeners {
                // Two listeners may serve one ServerName (a :80 and a :443
                // vhost with different settings): the port keeps their
                // series apart.
                let port_label = port.to_string();
                f.sample(
                    name,
                    &[("pid", pid), ("server", server), ("port", &port_label)],
                    port,
                );
            }
        }
    }
    let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let codes: Vec<String> = (0..=CLOSE_CODES.len()).map(code_label).collect();
    let split: [SplitMetric; 3] = [
        (
            "amqp_heartbeat_closes_total",
            "Relayed connections closed, by how they ended.",
            "reason",
            names(&END_KIND_NAMES),
            |p| &p.counters.closes,
        ),
        (
            "amqp_heartbeat_close_sent_total",
            "Connection.Close sent by the relay, by reply code.",
            "code",
            codes,
            |p| &p.counters.close_codes,
        ),
        (
            "amqp_heartbeat_refusals_total",
            "Clients refused by the relay, by reason.",
            "reason",
            names(&REFUSAL_NAMES),
            |p| &p.counters.refusals,
        ),
    ];
    for (name, help, label, values, counts) in &split {
        let mut f = family(&mut out, name, "counter", help);
        for (p, pid) in processes.iter().zip(&pids) {
            for (value, n) in values.iter().zip(counts(p)) {
                f.sample(name, &[("pid", pid), (label, value)], n);
            }
        }
    }

    let per_connection: [ConnectionMetric; 7] = [
        (
            "amqp_heartbeat_connection_bytes_total",
            "counter",
            "Bytes relayed on an open connection.",
            &[
                ("to_broker", |c, _| c.bytes_to_broker.to_string()),
                ("to_client", |c, _| c.bytes_to_client.to_string()),
            ],
        ),
        (
            "amqp_heartbeat_connection_frames_total",
            "counter",
            "Frames relayed on an open connection (heartbeats not included).",
            &[
                ("to_broker", |c, _| c.frames_to_broker.to_string()),
                ("to_client", |c, _| c.frames_to_client.to_string()),
            ],
        ),
        (
            "amqp_heartbeat_connection_heartbeats_total",
            "counter",
            "Heartbeats the relay sent to and received from the broker.",
            &[
                ("to_broker", |c, _| c.heartbeats_to_broker.to_string()),
                ("from_broker", |c, _| c.heartbeats_from_broker.to_string()),
            ],
        ),
        (
            "amqp_heartbeat_connection_age_seconds",
            "gauge",
            "Age of an open connection.",
            &[("", |c, now| {
                format!(
                    "{:.3}",
                    now.saturating_sub(c.started_unix_ms) as f64 / 1000.0
                )
            })],
        ),
        (
            "amqp_heartbeat_connection_last_broker_frame_age_seconds",
            "gauge",
            "Time since the broker last sent anything (NaN: nothing yet).",
            &[("", |c, now| {
                if c.last_broker_unix_ms == 0 {
                    "NaN".to_string()
                } else {
                    format!(
                        "{:.3}",
                        now.saturating_sub(c.last_broker_unix_ms) as f64 / 1000.0
                    )
                }
            })],
        ),
        (
            "amqp_heartbeat_connection_heartbeat_seconds",
            "gauge",
            "Heartbeat negotiated with the broker (0: not tuned yet).",
            &[("", |c, _| c.heartbeat_secs.to_string())],
        ),
        (
            "amqp_heartbeat_connection_paused",
            "gauge",
            "1 while the broker is not read because the client is not reading.",
            &[("", |c, _| u8::from(c.paused).to_string())],
        ),
    ];
    for (name, kind, help, fields) in per_connection {
        let mut f = family(&mut out, name, kind, help);
        for (p, pid) in processes.iter().zip(&pids) {
            for c in &p.connections {
                let id = c.id.to_string();
                let labels = vec![
                    ("pid", pid.as_str()),
                    ("server", c.server.as_str()),
                    ("broker", c.broker.as_str()),
                    ("connection", id.as_str()),
                ];
                for (direction, value) in fields.iter() {
                    let mut labels = labels.clone();
                    if !direction.is_empty() {
                        labels.push(("direction", direction));
                    }
                    f.sample(name, &labels, value(c, now_ms));
                }
            }
        }
    }
    {
        let name = "amqp_heartbeat_connection_frame_max_bytes";
        let mut f = family(
            &mut out,
            name,
            "gauge",
            "frame_max negotiated (0: not tuned yet).",
        );
        for (p, pid) in processes.iter().zip(&pids) {
            for c in &p.connections {
                let id = c.id.to_string();
                f.sample(
                    name,
                    &[
                        ("pid", pid),
                        ("server", &c.server),
                        ("broker", &c.broker),
                        ("connection", &id),
                    ],
                    c.frame_max,
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::render::fixture::{NOW, process};

    #[test]
    fn metrics_have_help_type_and_the_pid_label() {
        let text = metrics(&[process(7, 1_000)], NOW);
        assert!(text.contains("# TYPE amqp_heartbeat_connections_total counter\n"));
        assert!(text.contains("amqp_heartbeat_connections_total{pid=\"7\"} 3\n"));
        assert!(text.contains(
            "amqp_heartbeat_connection_bytes_total{pid=\"7\",server=\"www.example.org\",broker=\"rabbit:5672\",connection=\"1\",direction=\"to_broker\"} 100\n"
        ));
        assert!(text.contains("amqp_heartbeat_healthy 1\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("amqp_heartbeat_"), "{line}");
        }
    }

    /// Every sample is a series of its own, also when two listeners serve
    /// one ServerName (a :80 and a :443 vhost with different settings).
    #[test]
    fn no_two_samples_share_a_series() {
        let mut p = process(7, 1_000);
        p.listeners.push(("www.example.org".to_string(), 41001));
        let text = metrics(&[p, process(8, 1_000)], NOW);
        let mut series = std::collections::HashSet::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name_and_labels, _) = line.rsplit_once(' ').unwrap();
            assert!(series.insert(name_and_labels.to_string()), "twice: {line}");
        }
        assert!(text.contains(
            "amqp_heartbeat_listener_port{pid=\"7\",server=\"www.example.org\",port=\"41001\"} 41001\n"
        ));
    }
}
