//! P7 (issue 11): what a local flood of refused connections from another
//! user costs the app (connect-to-Connection.Start, alone and flooded) and
//! the relay thread (CPU per 100k refusals). Needs root (the flood runs as
//! user nobody).

use super::{Figure, Res, cpu, expect, percentile};
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

/// Connect to the relay and time until the broker's Connection.Start
/// arrives through it (the relay dials the broker for each client).
fn connect_to_start(relay: SocketAddr) -> Res<f64> {
    let t0 = Instant::now();
    let mut s = TcpStream::connect(relay).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"AMQP\x00\x00\x09\x01")
        .map_err(|e| format!("header: {e}"))?;
    expect(&mut s, 10, 10)?;
    Ok(t0.elapsed().as_secs_f64() * 1e6)
}

fn connects_to_start(relay: SocketAddr, samples: usize) -> Res<Vec<f64>> {
    let mut v = (0..samples)
        .map(|_| connect_to_start(relay))
        .collect::<Res<Vec<f64>>>()?;
    v.sort_by(|a, b| a.total_cmp(b));
    Ok(v)
}

/// A process of user nobody (uid 65534; this bench runs as root) that
/// connects to `port` and closes, as fast as it can, for `seconds`; prints
/// how many times.
fn flood(port: u16, seconds: f64) -> Res<std::process::Child> {
    let script = format!(
        r#"
import os, socket, time
os.setuid(65534)
n, end = 0, time.monotonic() + {seconds}
while time.monotonic() < end:
    s = socket.socket()
    try:
        s.connect(("127.0.0.1", {port}))
    except OSError:
        pass
    s.close()
    n += 1
print(n, flush=True)
"#
    );
    Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("flood: {e}"))
}

/// P7: app connect-to-Connection.Start with and without a concurrent
/// flood from another user, and the relay thread's CPU per 100k refusals.
pub fn refusal_flood(relay: SocketAddr, quick: bool) -> Res<Vec<Figure>> {
    let samples = if quick { 100 } else { 400 };
    let seconds = if quick { 3.0 } else { 10.0 };
    connects_to_start(relay, samples / 10)?; // warm-up
    let quiet = connects_to_start(relay, samples)?;
    let cpu_before = cpu::own_threads_ns("amqp-heartbeat")?;
    let flooder = flood(relay.port(), seconds)?;
    std::thread::sleep(Duration::from_millis(300));
    let flooded = connects_to_start(relay, samples)?;
    let out = flooder
        .wait_with_output()
        .map_err(|e| format!("flood: {e}"))?;
    let cpu = (cpu::own_threads_ns("amqp-heartbeat")? - cpu_before) as f64 / 1e9;
    let refusals: f64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|_| format!("the flood (needs root to setuid) printed no count: {out:?}"))?;
    eprintln!(
        "  P7 {refusals} refused connects from uid 65534 in {seconds} s; relay thread CPU {cpu:.2} s \
         (with {samples} app connections); connect-to-Start p50 {:.0} / {:.0} us",
        percentile(&quiet, 50.0),
        percentile(&flooded, 50.0)
    );
    let (q99, f99) = (percentile(&quiet, 99.0), percentile(&flooded, 99.0));
    let added_ms = (f99 - q99) / 1000.0;
    let per_100k = cpu / refusals * 100_000.0;
    Ok(vec![
        Figure {
            name: "P7_start_p99_flooded".into(),
            relay: f99,
            direct: q99,
            haproxy: None,
            ratio: f99 / q99,
            unit: "us",
            goal: format!("added<=5ms(added={added_ms:.2}ms)"),
            met: added_ms <= 5.0,
        },
        Figure {
            name: "P7_cpu_per_100k_refusals".into(),
            relay: per_100k,
            direct: f64::NAN,
            haproxy: None,
            ratio: f64::NAN,
            unit: "s",
            goal: "none".into(),
            met: true,
        },
    ])
}
