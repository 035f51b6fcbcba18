//! The page as JSON (`?json`), written by hand: a few dozen fields, no
//! serde in the module.

use super::{code_label, health};
use crate::status::counting::{END_KIND_NAMES, REFUSAL_NAMES};
use crate::status::layout::CLOSE_CODES;
use crate::status::view::ProcessView;
use std::fmt::Write;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::render::fixture::{NOW, process};

    #[test]
    fn json_parses() {
        let text = json(&[process(1, 35_000)], NOW);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["healthy"], false);
        assert_eq!(v["processes"][0]["connections"][0]["broker"], "rabbit:5672");
        assert_eq!(v["processes"][0]["counters"]["close_codes_sent"]["320"], 0);
    }
}
