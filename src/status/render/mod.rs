//! The status page's formats, from snapshots ([`ProcessView`]) and the
//! time: the health verdict and the order of processes (here), HTML for
//! people ([`html`]), JSON ([`json`]), the Prometheus text exposition
//! format ([`prometheus`]) and mod_status's lines ([`mod_status`]). Pure
//! functions; no credential can reach them (brokers are host:port only).

mod html;
mod json;
mod mod_status;
mod prometheus;

pub use html::html;
pub use json::json;
pub use mod_status::summary;
pub use prometheus::{label_value, metrics};

use crate::status::layout::CLOSE_CODES;
use crate::status::view::{ConnectionView, ProcessView};

/// What the status page answers, from its query string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Html,
    Json,
    Metrics,
    Health,
}

/// The format a query asks for: `?json`, `?metrics`, `?health`, also as a
/// key with a value (`?metrics=1`: Prometheus escapes a `?` written into
/// `metrics_path`, so a scrape config passes it in `params:`) or as
/// `?format=metrics`; the first pair that names one wins; HTML otherwise.
pub fn format_of(query: &str) -> Format {
    let named = |name: &str| match name {
        "json" => Some(Format::Json),
        "metrics" => Some(Format::Metrics),
        "health" => Some(Format::Health),
        _ => None,
    };
    query
        .split('&')
        .find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if key == "format" {
                named(value)
            } else {
                named(key)
            }
        })
        .unwrap_or(Format::Html)
}

/// An upstream is not live when nothing came from it for longer than this
/// many heartbeat intervals. The relay itself ends a silent broker's
/// connection at 2 (2.5 when quiet, rule R7), so a connection still listed
/// past 3 means the relay is not doing its job (its thread or process
/// stuck), which is what the health check is for.
const STALE_INTERVALS: u64 = 3;

/// Why a connection's upstream is not live, if it is not: tuned, not
/// paused by back-pressure, and nothing from the broker for more than
/// 3 x interval.
pub fn connection_problem(c: &ConnectionView, now_ms: u64) -> Option<String> {
    if c.heartbeat_secs == 0 || c.paused {
        return None;
    }
    let since = if c.last_broker_unix_ms == 0 {
        c.started_unix_ms
    } else {
        c.last_broker_unix_ms
    };
    let silent_ms = now_ms.saturating_sub(since);
    let limit_ms = STALE_INTERVALS * u64::from(c.heartbeat_secs) * 1000;
    (silent_ms > limit_ms).then(|| {
        format!(
            "connection #{} to {}: nothing from the broker for {:.1}s (heartbeat {}s)",
            c.id,
            c.broker,
            silent_ms as f64 / 1000.0,
            c.heartbeat_secs
        )
    })
}

/// Problems of one process (empty: healthy).
pub fn process_problems(p: &ProcessView, now_ms: u64) -> Vec<String> {
    let mut problems = Vec::new();
    if !p.running && !p.connections.is_empty() {
        problems.push("relay thread not running".to_string());
    }
    problems.extend(
        p.connections
            .iter()
            .filter_map(|c| connection_problem(c, now_ms)),
    );
    problems
}

/// The health check: Ok when every relay that has connections has a live
/// upstream; else the reasons, one per line.
pub fn health(processes: &[ProcessView], now_ms: u64) -> Result<String, String> {
    let problems: Vec<String> = processes
        .iter()
        .flat_map(|p| {
            process_problems(p, now_ms)
                .into_iter()
                .map(move |m| format!("pid {}: {m}", p.pid))
        })
        .collect();
    let open: usize = processes.iter().map(|p| p.connections.len()).sum();
    if problems.is_empty() {
        Ok(format!(
            "OK: {} relay(s), {open} open connection(s), every upstream live\n",
            processes.len()
        ))
    } else {
        Err(format!("FAIL\n{}\n", problems.join("\n")))
    }
}

/// Processes with problems first, then with past trouble (dead brokers,
/// dial failures, restarts), then by pid.
pub fn ordered(processes: &[ProcessView], now_ms: u64) -> Vec<&ProcessView> {
    let mut sorted: Vec<&ProcessView> = processes.iter().collect();
    sorted.sort_by_key(|p| {
        let c = &p.counters;
        let past = c.broker_dead + c.dial_failures + c.restarts;
        (process_problems(p, now_ms).is_empty(), past == 0, p.pid)
    });
    sorted
}

/// A close code's label: the code, or "other".
pub(super) fn code_label(index: usize) -> String {
    CLOSE_CODES
        .get(index)
        .map_or("other".to_string(), u16::to_string)
}

#[cfg(test)]
pub(super) mod fixture {
    use crate::status::view::{ConnectionView, CountersView, ProcessView};

    pub const NOW: u64 = 1_000_000;

    /// A process with one tuned connection whose broker last sent
    /// `last_broker_ms_ago` before [`NOW`].
    pub fn process(pid: u32, last_broker_ms_ago: u64) -> ProcessView {
        ProcessView {
            pid,
            daemon: false,
            started_unix_ms: NOW - 60_000,
            running: true,
            listeners: vec![("www.example.org".to_string(), 41000)],
            counters: CountersView {
                connections: 3,
                ..Default::default()
            },
            connections: vec![ConnectionView {
                id: 1,
                server: "www.example.org".to_string(),
                client_port: 40000,
                upstream_port: 50000,
                broker: "rabbit:5672".to_string(),
                started_unix_ms: NOW - 50_000,
                last_broker_unix_ms: NOW - last_broker_ms_ago,
                heartbeat_secs: 10,
                frame_max: 131072,
                bytes_to_broker: 100,
                ..Default::default()
            }],
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_query_names_the_format() {
        for (query, format) in [
            ("", Format::Html),
            ("json", Format::Json),
            ("metrics", Format::Metrics),
            ("health", Format::Health),
            ("metrics=1", Format::Metrics),
            ("format=json", Format::Json),
            ("&json", Format::Json),
            ("refresh=5&health", Format::Health),
            ("JSON", Format::Html),
            ("format=xml", Format::Html),
            ("metricsx", Format::Html),
        ] {
            assert_eq!(format_of(query), format, "{query:?}");
        }
    }

    use super::fixture::{NOW, process};
    use super::*;

    #[test]
    fn health_fails_on_a_silent_broker_and_names_it() {
        assert!(health(&[process(1, 5_000)], NOW).is_ok());
        let err = health(&[process(1, 5_000), process(2, 35_000)], NOW).unwrap_err();
        assert!(
            err.contains("pid 2: connection #1 to rabbit:5672: nothing from the broker for 35.0s"),
            "{err}"
        );
        assert!(!err.contains("pid 1"), "{err}");
        let mut paused = process(3, 35_000);
        paused.connections[0].paused = true;
        assert!(
            health(&[paused], NOW).is_ok(),
            "back-pressure is not a dead broker"
        );
        assert!(health(&[], NOW).is_ok());
    }

    #[test]
    fn text_is_escaped_in_each_format() {
        let mut p = process(1, 0);
        p.listeners[0].0 = "a\"<b>\\\n".to_string();
        p.connections[0].server = p.listeners[0].0.clone();
        assert!(html(&[p.clone()], NOW).contains("a&quot;&lt;b&gt;"));
        assert!(json(&[p.clone()], NOW).contains(r#""server":"a\"<b>\\\n""#));
        assert!(metrics(&[p], NOW).contains(r#"server="a\"<b>\\\n""#));
    }
}
