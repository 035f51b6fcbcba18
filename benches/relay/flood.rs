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

/// `samples` connect-to-Start times through the relay and as many straight
/// to the broker, alternated so that both see the same machine.
fn connects_to_start(
    relay: SocketAddr,
    broker: SocketAddr,
    samples: usize,
) -> Res<(Vec<f64>, Vec<f64>)> {
    let (mut through, mut direct) = (Vec::new(), Vec::new());
    for _ in 0..samples {
        through.push(connect_to_start(relay)?);
        direct.push(connect_to_start(broker)?);
    }
    through.sort_by(|a, b| a.total_cmp(b));
    direct.sort_by(|a, b| a.total_cmp(b));
    Ok((through, direct))
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
pub fn refusal_flood(relay: SocketAddr, broker: SocketAddr, quick: bool) -> Res<Vec<Figure>> {
    let samples = if quick { 100 } else { 400 };
    let seconds = if quick { 3.0 } else { 10.0 };
    connects_to_start(relay, broker, samples / 10)?; // warm-up
    let (quiet, quiet_direct) = connects_to_start(relay, broker, samples)?;
    let cpu_before = cpu::own_threads_ns("amqp-heartbeat")?;
    let flooder = flood(relay.port(), seconds)?;
    std::thread::sleep(Duration::from_millis(300));
    let (flooded, flooded_direct) = connects_to_start(relay, broker, samples)?;
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
         (with {samples} app connections); connect-to-Start p50 alone / flooded: \
         relay {:.0} / {:.0} us, direct {:.0} / {:.0} us",
        percentile(&quiet, 50.0),
        percentile(&flooded, 50.0),
        percentile(&quiet_direct, 50.0),
        percentile(&flooded_direct, 50.0),
    );
    let (q99, f99) = (percentile(&quiet, 99.0), percentile(&flooded, 99.0));
    let (dq99, df99) = (
        percentile(&quiet_direct, 99.0),
        percentile(&flooded_direct, 99.0),
    );
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
        // The same flood's effect on connections that do not go through
        // the relay: what the machine itself adds (2 cores shared by the
        // flooder, the relay, the broker and the app).
        Figure {
            name: "P7_direct_start_p99_flooded".into(),
            relay: df99,
            direct: dq99,
            haproxy: None,
            ratio: df99 / dq99,
            unit: "us",
            goal: format!("none(added={:.2}ms)", (df99 - dq99) / 1000.0),
            met: true,
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
