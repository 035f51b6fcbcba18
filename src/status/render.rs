//! The status page's formats, from snapshots ([`ProcessView`]) and the
//! time: HTML for people (problems first), JSON, the Prometheus text
//! exposition format (0.0.4), mod_status's summary lines and the health
//! verdict. Pure functions; no credential can reach them (brokers are
//! host:port only).

use crate::status::counting::{END_KIND_NAMES, REFUSAL_NAMES};
use crate::status::layout::CLOSE_CODES;
use crate::status::view::{ConnectionView, ProcessView};
use std::fmt::Write;

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

fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn age(now_ms: u64, since_ms: u64) -> String {
    if since_ms == 0 {
        return "-".to_string();
    }
    format!("{:.1}s", now_ms.saturating_sub(since_ms) as f64 / 1000.0)
}

fn closes_summary(p: &ProcessView) -> String {
    let mut parts = Vec::new();
    for (name, n) in END_KIND_NAMES.iter().zip(&p.counters.closes) {
        if *n > 0 {
            parts.push(format!("{name} {n}"));
        }
    }
    for (i, n) in p.counters.close_codes.iter().enumerate() {
        if *n > 0 {
            parts.push(format!("sent {} {n}", code_label(i)));
        }
    }
    if parts.is_empty() {
        "-".to_string()
    } else {
        parts.join(", ")
    }
}

fn code_label(index: usize) -> String {
    CLOSE_CODES
        .get(index)
        .map_or("other".to_string(), u16::to_string)
}

/// The HTML page: a summary, then a table per process, problems first.
pub fn html(processes: &[ProcessView], now_ms: u64) -> String {
    let mut out = String::new();
    let open: usize = processes.iter().map(|p| p.connections.len()).sum();
    let verdict = match health(processes, now_ms) {
        Ok(_) => "healthy".to_string(),
        Err(_) => "<strong>problems</strong>".to_string(),
    };
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>AMQP heartbeat relays</title>\n\
         <style>body{{font-family:sans-serif}}table{{border-collapse:collapse;margin-bottom:1em}}\
         td,th{{border:1px solid #999;padding:2px 6px;text-align:right}}th{{background:#eee}}\
         td.l,th.l{{text-align:left}}.bad{{background:#fdd}}</style></head><body>\n\
         <h1>AMQP heartbeat relays</h1>\n<p>{} relay process(es), {open} open connection(s): {verdict}. \
         Also as <a href=\"?json\">JSON</a>, <a href=\"?metrics\">Prometheus metrics</a>, \
         <a href=\"?health\">health</a>.</p>\n",
        processes.len()
    );
    for p in ordered(processes, now_ms) {
        let problems = process_problems(p, now_ms);
        let c = &p.counters;
        let listeners: Vec<String> = p
            .listeners
            .iter()
            .map(|(s, port)| format!("{} on 127.0.0.1:{port}", html_escape(s)))
            .collect();
        let _ = write!(
            out,
            "<h2{}>pid {} ({}, relay {}{})</h2>\n<p>listeners: {}<br>\n\
             since start: {} connections, {} failovers, {} dial failures, {} dead brokers, \
             {} refusals, {} bad headers, {} restarts; closes: {}</p>\n",
            if problems.is_empty() {
                ""
            } else {
                " class=\"bad\""
            },
            p.pid,
            if p.daemon {
                "daemon process"
            } else {
                "httpd child"
            },
            if p.running { "running" } else { "stopped" },
            if c.restarts > 0 {
                format!(", restarted {} time(s)", c.restarts)
            } else {
                String::new()
            },
            if listeners.is_empty() {
                "-".to_string()
            } else {
                listeners.join(", ")
            },
            c.connections,
            c.failovers,
            c.dial_failures,
            c.broker_dead,
            c.refusals.iter().sum::<u64>(),
            c.bad_headers,
            c.restarts,
            closes_summary(p),
        );
        for problem in &problems {
            let _ = writeln!(out, "<p class=\"bad\">{}</p>", html_escape(problem));
        }
        if p.connections.is_empty() {
            out.push_str("<p>no open connection</p>\n");
            continue;
        }
        out.push_str(
            "<table><tr><th>#</th><th class=\"l\">server</th><th>client port</th>\
             <th class=\"l\">broker</th><th>upstream port</th><th>age</th>\
             <th>bytes to broker</th><th>bytes to client</th><th>frames to broker</th>\
             <th>frames to client</th><th>heartbeats sent</th><th>heartbeats received</th>\
             <th>last broker frame</th><th>heartbeat</th><th>frame_max</th><th>paused</th></tr>\n",
        );
        for conn in &p.connections {
            let bad = connection_problem(conn, now_ms).is_some();
            let _ = writeln!(
                out,
                "<tr{}><td>{}</td><td class=\"l\">{}</td><td>{}</td><td class=\"l\">{} (#{})</td>\
                 <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
                 <td>{}</td><td>{} ago</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                if bad { " class=\"bad\"" } else { "" },
                conn.id,
                html_escape(&conn.server),
                conn.client_port,
                html_escape(&conn.broker),
                conn.broker_index + 1,
                conn.upstream_port,
                age(now_ms, conn.started_unix_ms),
                conn.bytes_to_broker,
                conn.bytes_to_client,
                conn.frames_to_broker,
                conn.frames_to_client,
                conn.heartbeats_to_broker,
                conn.heartbeats_from_broker,
                age(now_ms, conn.last_broker_unix_ms),
                if conn.heartbeat_secs == 0 {
                    "-".to_string()
                } else {
                    format!("{}s", conn.heartbeat_secs)
                },
                conn.frame_max,
                if conn.paused { "yes" } else { "no" },
            );
        }
        out.push_str("</table>\n");
        if c.unlisted > 0 {
            let _ = writeln!(
                out,
                "<p>{} connection(s) since start were not listed (table full)</p>",
                c.unlisted
            );
        }
    }
    out.push_str("</body></html>\n");
    out
}

fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for ch in text.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_counts(names: &[String], values: &[u64]) -> String {
    let fields: Vec<String> = names
        .iter()
        .zip(values)
        .map(|(n, v)| format!("{}:{v}", json_string(n)))
        .collect();
    format!("{{{}}}", fields.join(","))
}

/// The page as JSON: `{"healthy":..,"problems":[..],"processes":[..]}`.
pub fn json(processes: &[ProcessView], now_ms: u64) -> String {
    let problems = match health(processes, now_ms) {
        Ok(_) => Vec::new(),
        Err(text) => text.lines().skip(1).map(json_string).collect(),
    };
    let ends: Vec<String> = END_KIND_NAMES.iter().map(|s| s.to_string()).collect();
    let codes: Vec<String> = (0..=CLOSE_CODES.len()).map(code_label).collect();
    let refusals: Vec<String> = REFUSAL_NAMES.iter().map(|s| s.to_string()).collect();
    let mut procs = Vec::new();
    for p in processes {
        let c = &p.counters;
        let listeners: Vec<String> = p
            .listeners
            .iter()
            .map(|(s, port)| format!("{{\"server\":{},\"port\":{port}}}", json_string(s)))
            .collect();
        let conns: Vec<String> = p
            .connections
            .iter()
            .map(|x| {
                format!(
                    "{{\"id\":{},\"server\":{},\"client_port\":{},\"broker\":{},\"broker_index\":{},\
                     \"upstream_port\":{},\"age_seconds\":{:.3},\"bytes_to_broker\":{},\"bytes_to_client\":{},\
                     \"frames_to_broker\":{},\"frames_to_client\":{},\"heartbeats_to_broker\":{},\
                     \"heartbeats_from_broker\":{},\"last_broker_frame_age_seconds\":{},\
                     \"heartbeat_seconds\":{},\"frame_max\":{},\"paused\":{}}}",
                    x.id,
                    json_string(&x.server),
                    x.client_port,
                    json_string(&x.broker),
                    x.broker_index,
                    x.upstream_port,
                    now_ms.saturating_sub(x.started_unix_ms) as f64 / 1000.0,
                    x.bytes_to_broker,
                    x.bytes_to_client,
                    x.frames_to_broker,
                    x.frames_to_client,
                    x.heartbeats_to_broker,
                    x.heartbeats_from_broker,
                    if x.last_broker_unix_ms == 0 {
                        "null".to_string()
                    } else {
                        format!("{:.3}", now_ms.saturating_sub(x.last_broker_unix_ms) as f64 / 1000.0)
                    },
                    x.heartbeat_secs,
                    x.frame_max,
                    x.paused
                )
            })
            .collect();
        procs.push(format!(
            "{{\"pid\":{},\"kind\":{},\"running\":{},\"started_unix_ms\":{},\"listeners\":[{}],\
             \"counters\":{{\"connections\":{},\"failovers\":{},\"dial_failures\":{},\"broker_dead\":{},\
             \"restarts\":{},\"bad_headers\":{},\"unlisted\":{},\"closes\":{},\"close_codes_sent\":{},\
             \"refusals\":{}}},\"connections\":[{}]}}",
            p.pid,
            json_string(if p.daemon { "daemon" } else { "httpd_child" }),
            p.running,
            p.started_unix_ms,
            listeners.join(","),
            c.connections,
            c.failovers,
            c.dial_failures,
            c.broker_dead,
            c.restarts,
            c.bad_headers,
            c.unlisted,
            json_counts(&ends, &c.closes),
            json_counts(&codes, &c.close_codes),
            json_counts(&refusals, &c.refusals),
            conns.join(",")
        ));
    }
    format!(
        "{{\"healthy\":{},\"problems\":[{}],\"processes\":[{}]}}\n",
        problems.is_empty(),
        problems.join(","),
        procs.join(",")
    )
}

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
            "Connections open now.",
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
                f.sample(name, &[("pid", pid), ("server", server)], port);
            }
        }
    }
    {
        let name = "amqp_heartbeat_closes_total";
        let mut f = family(
            &mut out,
            name,
            "counter",
            "Relayed connections closed, by how they ended.",
        );
        for (p, pid) in processes.iter().zip(&pids) {
            for (reason, n) in END_KIND_NAMES.iter().zip(&p.counters.closes) {
                f.sample(name, &[("pid", pid), ("reason", reason)], n);
            }
        }
    }
    {
        let name = "amqp_heartbeat_close_sent_total";
        let mut f = family(
            &mut out,
            name,
            "counter",
            "Connection.Close sent by the relay, by reply code.",
        );
        for (p, pid) in processes.iter().zip(&pids) {
            for (i, n) in p.counters.close_codes.iter().enumerate() {
                f.sample(name, &[("pid", pid), ("code", &code_label(i))], n);
            }
        }
    }
    {
        let name = "amqp_heartbeat_refusals_total";
        let mut f = family(
            &mut out,
            name,
            "counter",
            "Clients refused by the relay, by reason.",
        );
        for (p, pid) in processes.iter().zip(&pids) {
            for (reason, n) in REFUSAL_NAMES.iter().zip(&p.counters.refusals) {
                f.sample(name, &[("pid", pid), ("reason", reason)], n);
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
    use crate::status::view::CountersView;

    const NOW: u64 = 1_000_000;

    fn process(pid: u32, last_broker_ms_ago: u64) -> ProcessView {
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
    fn problems_come_first_on_the_page() {
        let page = html(&[process(1, 1_000), process(2, 35_000)], NOW);
        let (first, second) = (page.find("pid 2").unwrap(), page.find("pid 1 ").unwrap());
        assert!(first < second);
        assert!(page.contains("class=\"bad\""));
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

    #[test]
    fn summary_lines_are_key_value_for_auto() {
        let text = summary(&[process(1, 0), process(2, 0)], NOW, true);
        assert!(text.contains("AMQPHeartbeatRelays: 2\n"));
        assert!(text.contains("AMQPHeartbeatConnections: 2\n"));
        assert!(text.contains("AMQPHeartbeatConnectionsTotal: 6\n"));
        assert!(text.contains("AMQPHeartbeatHealthy: 1\n"));
        assert!(summary(&[], NOW, false).starts_with("<hr>"));
    }

    #[test]
    fn json_parses() {
        let text = json(&[process(1, 35_000)], NOW);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["healthy"], false);
        assert_eq!(v["processes"][0]["connections"][0]["broker"], "rabbit:5672");
        assert_eq!(v["processes"][0]["counters"]["close_codes_sent"]["320"], 0);
    }
}
