//! The page for people: a summary, then a table per process, the
//! processes with problems first.

use super::{code_label, connection_problem, health, ordered, process_problems};
use crate::status::counting::END_KIND_NAMES;
use crate::status::view::ProcessView;
use std::fmt::Write;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::render::fixture::{NOW, process};

    #[test]
    fn problems_come_first_on_the_page() {
        let page = html(&[process(1, 1_000), process(2, 35_000)], NOW);
        let (first, second) = (page.find("pid 2").unwrap(), page.find("pid 1 ").unwrap());
        assert!(first < second);
        assert!(page.contains("class=\"bad\""));
    }
}
