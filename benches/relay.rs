//! P1 throughput and P2 latency: the relay versus a direct connection and
//! versus haproxy (the anchor: the best general TCP proxy, measured the same
//! way), same client, same broker, one run (issues 5 and 13). P6 compares the
//! relay with haproxy: throughput, added latency and CPU per GiB forwarded.
//! P7 (benches/relay/flood.rs): what a local flood of refused connections
//! from another user costs the app and the relay (issue 11).
//!
//! The client is a raw-frame AMQP 0-9-1 client over blocking sockets: the
//! frames of a publish are encoded once and written in large batches, so the
//! client is never what is measured. The relay runs in this process (it only
//! accepts clients of its own process), on its own native thread, exactly as
//! in an httpd child.
//!
//! ```text
//! cargo bench --bench relay -- [--broker-port PORT] [--quick] [--rounds N]
//!                               [--no-haproxy] [--flood-only] [--latency-only]
//! ```
//!
//! `--latency-only` runs P2 (and its P6 lines) alone: no throughput, no
//! flood, for comparing builds on per-message latency.
//!
//! Without `--broker-port` a private RabbitMQ node is started with
//! `tests/harness/rabbit.py` and stopped at the end. haproxy (Debian's
//! package, `make deps` installs it) is started on a free loopback port in
//! `mode tcp` with `option splice-auto` and one thread, like the relay's
//! one thread per child; `--no-haproxy` leaves it out. Each figure is
//! printed as `bench: NAME relay=X direct=Y haproxy=H ratio=Z unit=U goal=G`,
//! then a table.

use mod_amqp_heartbeat::config::{Directive, ServerConfig};
use mod_amqp_heartbeat::relay::{EventLog, Level, RelayListener, io_buffers};
use mod_amqp_heartbeat::relay_thread::RelayThread;
use mod_amqp_heartbeat::status::counting::CountingLog;
use mod_amqp_heartbeat::status::layout::Slot;
use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

type Res<T> = Result<T, String>;

#[path = "relay/cpu.rs"]
mod cpu;
#[path = "relay/flood.rs"]
mod flood;
#[path = "relay/haproxy.rs"]
mod haproxy;

// ------------------------------------------------------------------ frames

const FRAME_METHOD: u8 = 1;
const FRAME_HEADER: u8 = 2;
const FRAME_BODY: u8 = 3;
const FRAME_HEARTBEAT: u8 = 8;
const FRAME_MAX: u32 = 131_072;

use mod_amqp_heartbeat::relay::frame::encode as frame;

fn method(channel: u16, class: u16, id: u16, args: &[u8], out: &mut Vec<u8>) {
    let mut p = Vec::with_capacity(4 + args.len());
    p.extend_from_slice(&class.to_be_bytes());
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(args);
    frame(FRAME_METHOD, channel, &p, out);
}

fn shortstr(s: &str, out: &mut Vec<u8>) {
    out.push(s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}

fn longstr(s: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s);
}

/// Basic.Publish + content header + body frames of one message to the
/// default exchange with routing key `queue`.
fn publish_frames(queue: &str, body: &[u8], out: &mut Vec<u8>) {
    let mut args = vec![0, 0];
    shortstr("", &mut args);
    shortstr(queue, &mut args);
    args.push(0);
    method(1, 60, 40, &args, out);
    let mut header = Vec::with_capacity(14);
    header.extend_from_slice(&60u16.to_be_bytes());
    header.extend_from_slice(&0u16.to_be_bytes());
    header.extend_from_slice(&(body.len() as u64).to_be_bytes());
    header.extend_from_slice(&0u16.to_be_bytes());
    frame(FRAME_HEADER, 1, &header, out);
    let chunk = FRAME_MAX as usize - 8;
    for part in body.chunks(chunk) {
        frame(FRAME_BODY, 1, part, out);
    }
}

struct Frame {
    kind: u8,
    payload: Vec<u8>,
}

impl Frame {
    fn method_id(&self) -> Option<(u16, u16)> {
        if self.kind != FRAME_METHOD || self.payload.len() < 4 {
            return None;
        }
        let p = &self.payload;
        Some((
            u16::from_be_bytes([p[0], p[1]]),
            u16::from_be_bytes([p[2], p[3]]),
        ))
    }
}

fn read_frame<R: Read>(r: &mut R) -> Res<Frame> {
    let mut h = [0u8; 7];
    r.read_exact(&mut h).map_err(|e| format!("read: {e}"))?;
    let size = u32::from_be_bytes([h[3], h[4], h[5], h[6]]) as usize;
    let mut payload = vec![0u8; size + 1];
    r.read_exact(&mut payload)
        .map_err(|e| format!("read: {e}"))?;
    if payload.pop() != Some(0xCE) {
        return Err("bad frame end".into());
    }
    Ok(Frame {
        kind: h[0],
        payload,
    })
}

/// Next method frame, which must be `class.id`; heartbeats are skipped, a
/// Close is reported with its text.
fn expect<R: Read>(r: &mut R, class: u16, id: u16) -> Res<Frame> {
    loop {
        let f = read_frame(r)?;
        if f.kind == FRAME_HEARTBEAT {
            continue;
        }
        match f.method_id() {
            Some(m) if m == (class, id) => return Ok(f),
            Some((10, 50)) | Some((20, 40)) => {
                let code = u16::from_be_bytes([f.payload[4], f.payload[5]]);
                let len = f.payload[6] as usize;
                let text = String::from_utf8_lossy(&f.payload[7..7 + len]).to_string();
                return Err(format!("broker closed: {code} {text}"));
            }
            other => return Err(format!("expected {class}.{id}, got {other:?}")),
        }
    }
}

// ------------------------------------------------------------------ client

/// One AMQP connection with channel 1 open.
struct Client {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Res<Client> {
        let s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(|e| e.to_string())?;
        let reader =
            BufReader::with_capacity(256 * 1024, s.try_clone().map_err(|e| e.to_string())?);
        let mut c = Client { writer: s, reader };
        c.send(b"AMQP\x00\x00\x09\x01")?;
        expect(&mut c.reader, 10, 10)?; // Start
        let mut a = Vec::new();
        a.extend_from_slice(&0u32.to_be_bytes()); // client properties
        shortstr("PLAIN", &mut a);
        longstr(b"\0guest\0guest", &mut a);
        shortstr("en_US", &mut a);
        c.method(0, 10, 11, &a)?;
        let tune = expect(&mut c.reader, 10, 30)?;
        let channel_max = u16::from_be_bytes([tune.payload[4], tune.payload[5]]);
        let mut a = Vec::new();
        a.extend_from_slice(&channel_max.to_be_bytes());
        a.extend_from_slice(&FRAME_MAX.to_be_bytes());
        a.extend_from_slice(&0u16.to_be_bytes());
        c.method(0, 10, 31, &a)?;
        let mut a = Vec::new();
        shortstr("/", &mut a);
        shortstr("", &mut a);
        a.push(0);
        c.method(0, 10, 40, &a)?;
        expect(&mut c.reader, 10, 41)?;
        c.method(1, 20, 10, &[0])?;
        expect(&mut c.reader, 20, 11)?;
        Ok(c)
    }

    fn send(&mut self, bytes: &[u8]) -> Res<()> {
        self.writer
            .write_all(bytes)
            .map_err(|e| format!("write: {e}"))
    }

    fn method(&mut self, channel: u16, class: u16, id: u16, args: &[u8]) -> Res<()> {
        let mut out = Vec::new();
        method(channel, class, id, args, &mut out);
        self.send(&out)
    }

    /// Queue.Declare; `max_len` bounds the queue (drop-head) so that a
    /// throughput run measures the path, not the broker's paging. Returns
    /// the message count. With `passive` it is also a round trip that
    /// proves every earlier frame of the channel was handled.
    fn declare(&mut self, queue: &str, passive: bool, max_len: Option<i32>) -> Res<u32> {
        let mut a = vec![0, 0];
        shortstr(queue, &mut a);
        a.push(if passive { 1 } else { 0 });
        let mut table = Vec::new();
        if let Some(n) = max_len {
            shortstr("x-max-length", &mut table);
            table.push(b'I');
            table.extend_from_slice(&n.to_be_bytes());
        }
        longstr(&table, &mut a);
        self.method(1, 50, 10, &a)?;
        let ok = expect(&mut self.reader, 50, 11)?;
        let p = &ok.payload[4..];
        let qlen = p[0] as usize;
        let count = &p[1 + qlen..1 + qlen + 4];
        Ok(u32::from_be_bytes([count[0], count[1], count[2], count[3]]))
    }

    fn delete(&mut self, queue: &str) -> Res<()> {
        let mut a = vec![0, 0];
        shortstr(queue, &mut a);
        a.push(0);
        self.method(1, 50, 40, &a)?;
        expect(&mut self.reader, 50, 41).map(|_| ())
    }

    fn close(mut self) -> Res<()> {
        let mut a = Vec::new();
        a.extend_from_slice(&200u16.to_be_bytes());
        shortstr("bye", &mut a);
        a.extend_from_slice(&[0, 0, 0, 0]);
        self.method(0, 10, 50, &a)?;
        loop {
            let f = read_frame(&mut self.reader)?;
            if f.method_id() == Some((10, 51)) {
                return Ok(());
            }
        }
    }
}

// ------------------------------------------------------------------ P1

#[derive(Clone, Copy)]
struct ThroughputCase {
    name: &'static str,
    body: usize,
    count: usize,
    confirms: bool,
}

/// Publish `case.count` messages as fast as the socket takes them; with
/// confirms, at most WINDOW unconfirmed. Returns messages per second, from
/// the first write to the moment the broker has handled (or confirmed) the
/// last one.
fn throughput(addr: SocketAddr, case: ThroughputCase) -> Res<f64> {
    const WINDOW: usize = 512;
    let queue = format!("bench.p1.{}", case.name);
    let mut c = Client::connect(addr)?;
    c.declare(&queue, false, Some(1000))?;
    let body = vec![b'x'; case.body];
    let mut one = Vec::new();
    publish_frames(&queue, &body, &mut one);
    // A batch of about 256 KiB is written per call.
    let per_batch = (256 * 1024 / one.len()).clamp(1, WINDOW);
    let batch: Vec<u8> = one.repeat(per_batch);

    let started;
    if case.confirms {
        c.method(1, 85, 10, &[0])?;
        expect(&mut c.reader, 85, 11)?;
        // Acks are read on a thread of their own; the publisher waits on
        // the condvar only when the window is full.
        let state = Arc::new((Mutex::new((0u64, 0u64)), Condvar::new()));
        let reader_state = Arc::clone(&state);
        let Client { mut writer, reader } = c;
        let mut reader = reader;
        let total = case.count as u64;
        let acker = std::thread::spawn(move || -> Res<BufReader<TcpStream>> {
            let (lock, cv) = &*reader_state;
            loop {
                let f = read_frame(&mut reader)?;
                match f.method_id() {
                    Some((60, 80)) | Some((60, 120)) => {
                        let p = &f.payload[4..];
                        let tag = u64::from_be_bytes(p[0..8].try_into().map_err(|_| "ack")?);
                        let nack = f.method_id() == Some((60, 120));
                        let mut g = lock.lock().map_err(|_| "lock")?;
                        if nack {
                            g.1 += 1;
                        }
                        g.0 = g.0.max(tag);
                        let done = g.0 >= total;
                        cv.notify_all();
                        if done {
                            return Ok(reader);
                        }
                    }
                    Some((10, 50)) | Some((20, 40)) => return Err("broker closed".into()),
                    _ => {}
                }
            }
        });
        started = Instant::now();
        let mut sent = 0usize;
        while sent < case.count {
            let room = {
                let (lock, cv) = &*state;
                let mut g = lock.lock().map_err(|_| "lock")?;
                while sent - g.0 as usize >= WINDOW {
                    g = cv.wait(g).map_err(|_| "lock")?;
                }
                WINDOW - (sent - g.0 as usize)
            };
            let n = room.min(per_batch).min(case.count - sent);
            writer
                .write_all(&batch[..n * one.len()])
                .map_err(|e| format!("write: {e}"))?;
            sent += n;
        }
        let reader = acker.join().map_err(|_| "acker panicked")??;
        let elapsed = started.elapsed();
        let nacks = state.0.lock().map_err(|_| "lock")?.1;
        if nacks > 0 {
            return Err(format!("{nacks} nacks"));
        }
        let mut c = Client { writer, reader };
        let rate = case.count as f64 / elapsed.as_secs_f64();
        c.delete(&queue)?;
        c.close()?;
        return Ok(rate);
    }
    started = Instant::now();
    let mut sent = 0usize;
    while sent < case.count {
        let n = per_batch.min(case.count - sent);
        c.send(&batch[..n * one.len()])?;
        sent += n;
    }
    c.declare(&queue, true, None)?;
    let elapsed = started.elapsed();
    c.delete(&queue)?;
    c.close()?;
    Ok(case.count as f64 / elapsed.as_secs_f64())
}

// ------------------------------------------------------------------ P2

/// Round trips publish -> deliver (a publisher and a consumer connection,
/// both through the same path), in microseconds, sorted.
fn latency(addr: SocketAddr, samples: usize, body: usize) -> Res<Vec<f64>> {
    let queue = "bench.p2";
    let mut publisher = Client::connect(addr)?;
    publisher.declare(queue, false, None)?;
    let mut consumer = Client::connect(addr)?;
    let mut a = vec![0, 0];
    shortstr(queue, &mut a);
    shortstr("", &mut a);
    a.push(2); // no-ack
    longstr(&[], &mut a);
    consumer.method(1, 60, 20, &a)?;
    expect(&mut consumer.reader, 60, 21)?;
    let mut one = Vec::new();
    publish_frames(queue, &vec![b'x'; body], &mut one);
    let warmup = samples / 10 + 100;
    let mut out = Vec::with_capacity(samples);
    for i in 0..warmup + samples {
        let t0 = Instant::now();
        publisher.send(&one)?;
        let mut got = 0usize;
        loop {
            let f = read_frame(&mut consumer.reader)?;
            if f.kind == FRAME_BODY {
                got += f.payload.len();
                if got >= body {
                    break;
                }
            }
        }
        if i >= warmup {
            out.push(t0.elapsed().as_secs_f64() * 1e6);
        }
    }
    consumer.close()?;
    publisher.delete(queue)?;
    publisher.close()?;
    out.sort_by(|a, b| a.total_cmp(b));
    Ok(out)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p / 100.0).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

// ------------------------------------------------------------------ setup

/// Relay events: warnings and errors are printed and counted.
struct BenchLog(AtomicUsize);

impl EventLog for BenchLog {
    fn event(&self, listener: usize, level: Level, message: &str) {
        if level <= Level::Warn {
            self.0.fetch_add(1, Ordering::Relaxed);
            eprintln!("[relay {listener} {level:?}] {message}");
        }
    }
}

/// The tests' RabbitMQ driver: one for tests and benches.
#[allow(dead_code)]
#[path = "../tests/support/rabbit.rs"]
mod rabbit;

/// A node started by this binary (when no --broker-port was given);
/// stopped and its work dir removed on drop, also when a bench fails.
struct OwnNode(rabbit::Node);

impl OwnNode {
    fn start() -> Res<(OwnNode, u16)> {
        let workdir = std::path::PathBuf::from(format!(
            "{}/tmp/bench-relay-{}",
            env!("CARGO_MANIFEST_DIR"),
            std::process::id()
        ));
        let node = rabbit::Node::start(&workdir, false)?;
        let port = node.amqp_port;
        Ok((OwnNode(node), port))
    }
}

impl Drop for OwnNode {
    fn drop(&mut self) {
        if let Err(e) = self.0.stop() {
            eprintln!("bench relay: {e}");
        }
        let _ = std::fs::remove_dir_all(&self.0.workdir);
    }
}

struct Figure {
    name: String,
    relay: f64,
    direct: f64,
    haproxy: Option<f64>,
    ratio: f64,
    unit: &'static str,
    goal: String,
    met: bool,
}

impl Figure {
    fn print(&self) {
        let haproxy = self
            .haproxy
            .map(|h| format!(" haproxy={h:.1}"))
            .unwrap_or_default();
        println!(
            "bench: {} relay={:.1} direct={:.1}{haproxy} ratio={:.3} unit={} goal={} met={}",
            self.name,
            self.relay,
            self.direct,
            self.ratio,
            self.unit,
            self.goal,
            if self.met { "yes" } else { "NO" }
        );
    }
}

/// A P6 figure: the relay against haproxy (issue 13), with the spread of
/// the rounds on each side.
struct AnchorFigure {
    name: String,
    relay: f64,
    haproxy: f64,
    ratio: f64,
    unit: &'static str,
    goal: &'static str,
    met: bool,
    spread: String,
}

impl AnchorFigure {
    fn print(&self) {
        println!(
            "bench: {} relay={:.3} haproxy={:.3} ratio={:.3} unit={} goal={} met={} spread={}",
            self.name,
            self.relay,
            self.haproxy,
            self.ratio,
            self.unit,
            self.goal,
            if self.met { "yes" } else { "NO" },
            self.spread
        );
    }
}

/// The paths a client can take to the broker.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Path {
    Direct,
    Relay,
    Haproxy,
}

/// The order of the paths in round `round`: rotated, so that drift (broker
/// GC, page cache, the other core's load) favours no path.
fn order(paths: &[Path], round: usize) -> Vec<Path> {
    let mut v = paths.to_vec();
    v.rotate_left(round % paths.len().max(1));
    v
}

fn spread(v: &[f64]) -> String {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{min:.3}..{max:.3}")
}

/// What one throughput round on one path measured.
struct Round {
    rate: f64,
    /// CPU seconds of the proxy in the path (relay thread or haproxy
    /// process) during the round; 0 for direct.
    proxy_cpu_s: f64,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("bench relay: {e}");
        std::process::exit(1);
    }
}

fn run() -> Res<()> {
    let mut port = None;
    let mut quick = false;
    let mut with_haproxy = true;
    let mut flood_only = false;
    let mut latency_only = false;
    let mut rounds = 3usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--broker-port" => {
                port = Some(
                    args.next()
                        .and_then(|p| p.parse::<u16>().ok())
                        .ok_or("--broker-port needs a port")?,
                )
            }
            "--quick" => quick = true,
            "--no-haproxy" => with_haproxy = false,
            "--flood-only" => flood_only = true,
            "--latency-only" => latency_only = true,
            "--rounds" => {
                rounds = args
                    .next()
                    .and_then(|p| p.parse().ok())
                    .ok_or("--rounds needs a number")?
            }
            "--bench" => {} // passed by `cargo bench`
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let (_node, port) = match port {
        Some(p) => (None, p),
        None => {
            let (n, p) = OwnNode::start()?;
            (Some(n), p)
        }
    };
    let direct: SocketAddr = ([127, 0, 0, 1], port).into();

    let mut config = ServerConfig::default();
    config.apply(
        Directive::Broker,
        &[format!("amqp://127.0.0.1:{port}/").as_str()],
    )?;
    let settings = config.relay_settings().ok_or("no relay settings")?;
    let listener = RelayListener::bind_loopback(Arc::new(settings)).map_err(|e| e.to_string())?;
    let relay: SocketAddr = listener.listener.local_addr().map_err(|e| e.to_string())?;
    let log = Arc::new(BenchLog(AtomicUsize::new(0)));
    // The status page's counting on, as in httpd; AMQPHB_BENCH_STATUS=off
    // measures without it.
    let relay_log: Arc<dyn EventLog> =
        if std::env::var("AMQPHB_BENCH_STATUS").as_deref() == Ok("off") {
            log.clone()
        } else {
            let slot: &'static Slot = Box::leak(Box::default());
            Arc::new(CountingLog::new(log.clone(), slot))
        };
    eprintln!(
        "bench relay: status counting {}",
        if relay_log.status().is_some() {
            "on"
        } else {
            "off"
        }
    );
    let thread = RelayThread::start(vec![listener], relay_log)?;
    let haproxy = if with_haproxy {
        let workdir = format!(
            "{}/tmp/bench-haproxy-{}",
            env!("CARGO_MANIFEST_DIR"),
            std::process::id()
        );
        Some(haproxy::Haproxy::start(direct, workdir)?)
    } else {
        None
    };
    let mut paths = vec![Path::Direct, Path::Relay];
    if haproxy.is_some() {
        paths.push(Path::Haproxy);
    }
    let addr_of = |path: Path| match (path, &haproxy) {
        (Path::Direct, _) => direct,
        (Path::Relay, _) => relay,
        (Path::Haproxy, Some(h)) => h.addr,
        (Path::Haproxy, None) => direct,
    };
    let proxy_cpu_ns = |path: Path| -> Res<u64> {
        match (path, &haproxy) {
            (Path::Relay, _) => cpu::own_threads_ns("amqp-heartbeat"),
            (Path::Haproxy, Some(h)) => cpu::process_ns(h.pid()),
            _ => Ok(0),
        }
    };
    let run_round = |path: Path, case: ThroughputCase| -> Res<Round> {
        let before = proxy_cpu_ns(path)?;
        let rate = throughput(addr_of(path), case)?;
        let after = proxy_cpu_ns(path)?;
        Ok(Round {
            rate,
            proxy_cpu_s: after.saturating_sub(before) as f64 / 1e9,
        })
    };
    eprintln!(
        "bench relay: broker {direct}, relay {relay}, haproxy {}, {rounds} rounds",
        haproxy
            .as_ref()
            .map(|h| h.addr.to_string())
            .unwrap_or_else(|| "off".into())
    );

    let scale = if quick { 10 } else { 1 };
    let cases = [
        ThroughputCase {
            name: "1KiB",
            body: 1024,
            count: 200_000 / scale,
            confirms: false,
        },
        ThroughputCase {
            name: "64KiB",
            body: 65_536,
            count: 8_000 / scale,
            confirms: false,
        },
        ThroughputCase {
            name: "1KiB_confirms",
            body: 1024,
            count: 100_000 / scale,
            confirms: true,
        },
        ThroughputCase {
            name: "64KiB_confirms",
            body: 65_536,
            count: 8_000 / scale,
            confirms: true,
        },
    ];
    let mut figures = Vec::new();
    let mut anchors = Vec::new();
    for case in cases.into_iter().filter(|_| !flood_only && !latency_only) {
        // Warm-up on every path, then rotate which path goes first.
        let warm = ThroughputCase {
            count: case.count / 10,
            ..case
        };
        for &path in &paths {
            throughput(addr_of(path), warm)?;
        }
        let mut results: Vec<(Path, Vec<Round>)> = paths.iter().map(|&p| (p, Vec::new())).collect();
        for round in 0..rounds {
            for path in order(&paths, round) {
                let r = run_round(path, case)?;
                if let Some((_, v)) = results.iter_mut().find(|(p, _)| *p == path) {
                    v.push(r);
                }
            }
        }
        let rates = |path: Path| -> Vec<f64> {
            results
                .iter()
                .find(|(p, _)| *p == path)
                .map(|(_, v)| v.iter().map(|r| r.rate).collect())
                .unwrap_or_default()
        };
        let mib = case.body as f64 / (1024.0 * 1024.0);
        for &path in &paths {
            let v = rates(path);
            eprintln!(
                "  P1 {} {path:?}: {:?} msg/s ({:.0} MiB/s median)",
                case.name,
                v.iter().map(|x| x.round()).collect::<Vec<_>>(),
                median(v.clone()) * mib
            );
        }
        let (r, d, h) = (
            rates(Path::Relay),
            rates(Path::Direct),
            rates(Path::Haproxy),
        );
        let (relay_rate, direct_rate) = (median(r.clone()), median(d));
        let haproxy_rate = (!h.is_empty()).then(|| median(h.clone()));
        let ratio = relay_rate / direct_rate;
        let f = Figure {
            name: format!("P1_publish_{}", case.name),
            relay: relay_rate,
            direct: direct_rate,
            haproxy: haproxy_rate,
            ratio,
            unit: "msg/s",
            goal: "ratio>=0.95".into(),
            met: ratio >= 0.95,
        };
        f.print();
        figures.push(f);
        if let Some(haproxy_rate) = haproxy_rate {
            // Per-round ratios give the spread; the figure is the ratio
            // of the medians.
            let per_round: Vec<f64> = r.iter().zip(&h).map(|(r, h)| r / h).collect();
            let ratio = relay_rate / haproxy_rate;
            let a = AnchorFigure {
                name: format!("P6_publish_{}", case.name),
                relay: relay_rate,
                haproxy: haproxy_rate,
                ratio,
                unit: "msg/s",
                goal: "ratio>=1.0",
                met: ratio >= 1.0,
                spread: format!("ratio_per_round:{}", spread(&per_round)),
            };
            a.print();
            anchors.push(a);
            if case.body >= 65_536 {
                // CPU seconds per GiB forwarded (the message bodies; the
                // few framing bytes are left out on both sides alike).
                let gib = (case.count * case.body) as f64 / (1u64 << 30) as f64;
                let per_gib = |path: Path| -> Vec<f64> {
                    results
                        .iter()
                        .find(|(p, _)| *p == path)
                        .map(|(_, v)| v.iter().map(|r| r.proxy_cpu_s / gib).collect())
                        .unwrap_or_default()
                };
                let (rc, hc) = (per_gib(Path::Relay), per_gib(Path::Haproxy));
                let (rm, hm) = (median(rc.clone()), median(hc.clone()));
                let a = AnchorFigure {
                    name: format!("P6_cpu_per_GiB_{}", case.name),
                    relay: rm,
                    haproxy: hm,
                    ratio: rm / hm,
                    unit: "cpu_s/GiB",
                    goal: "ratio<=1.0",
                    met: rm <= hm,
                    spread: format!("relay:{},haproxy:{}", spread(&rc), spread(&hc)),
                };
                a.print();
                anchors.push(a);
            }
        }
    }

    let samples = if quick { 2_000 } else { 20_000 };
    let mut lat: Vec<(Path, Vec<f64>)> = paths.iter().map(|&p| (p, Vec::new())).collect();
    for round in (0..rounds).filter(|_| !flood_only) {
        for path in order(&paths, round) {
            let v = latency(addr_of(path), samples, 64)?;
            if let Some((_, all)) = lat.iter_mut().find(|(p, _)| *p == path) {
                all.extend(v);
            }
        }
    }
    for (_, v) in lat.iter_mut() {
        v.sort_by(|a, b| a.total_cmp(b));
    }
    let sorted = |path: Path| -> &[f64] {
        lat.iter()
            .find(|(p, _)| *p == path)
            .map(|(_, v)| v.as_slice())
            .unwrap_or(&[])
    };
    let (r, d, h) = (
        sorted(Path::Relay),
        sorted(Path::Direct),
        sorted(Path::Haproxy),
    );
    // --flood-only measured no latency: nothing to take percentiles of.
    let latency_figures = if flood_only {
        &[][..]
    } else {
        &[
            (50.0, "p50", 20.0),
            (99.0, "p99", 100.0),
            (99.9, "p99.9", f64::NAN),
        ][..]
    };
    for &(p, label, budget) in latency_figures {
        let (rv, dv) = (percentile(r, p), percentile(d, p));
        let hv = (!h.is_empty()).then(|| percentile(h, p));
        let added = rv - dv;
        let f = Figure {
            name: format!("P2_rtt_{label}"),
            relay: rv,
            direct: dv,
            haproxy: hv,
            ratio: rv / dv,
            unit: "us",
            goal: if budget.is_nan() {
                "none".into()
            } else {
                format!("added<={budget}us(added={added:.1}us)")
            },
            met: budget.is_nan() || added <= budget,
        };
        f.print();
        figures.push(f);
        if let Some(hv) = hv {
            if !budget.is_nan() {
                // Latency each proxy adds over direct; relay <= haproxy.
                let a = AnchorFigure {
                    name: format!("P6_rtt_added_{label}"),
                    relay: added,
                    haproxy: hv - dv,
                    ratio: added / (hv - dv),
                    unit: "us",
                    goal: "relay<=haproxy",
                    met: added <= hv - dv,
                    spread: format!("samples_per_path:{}", r.len()),
                };
                a.print();
                anchors.push(a);
            }
        }
    }
    if !flood_only {
        eprintln!(
            "  P2 {} samples per path (64-byte body, publisher and consumer connections)",
            r.len()
        );
    }

    let flood = if latency_only {
        Vec::new()
    } else {
        flood::refusal_flood(relay, direct, quick)?
    };
    for f in flood {
        f.print();
        figures.push(f);
    }

    let outcome = thread.stop(Duration::from_secs(3));
    drop(haproxy);
    let warnings = log.0.load(Ordering::Relaxed);
    println!(
        "bench: relay_peak_buffered_bytes={} relay_warnings={} relay_stop={:?}",
        io_buffers::peak_buffered_bytes(),
        warnings,
        outcome
    );
    println!();
    println!(
        "{:<28} {:>14} {:>14} {:>14} {:>7} {:>6}  goal",
        "figure", "relay", "direct", "haproxy", "ratio", "unit"
    );
    for f in &figures {
        println!(
            "{:<28} {:>14.1} {:>14.1} {:>14} {:>7.3} {:>6}  {} {}",
            f.name,
            f.relay,
            f.direct,
            f.haproxy
                .map(|h| format!("{h:.1}"))
                .unwrap_or_else(|| "-".into()),
            f.ratio,
            f.unit,
            f.goal,
            if f.met { "met" } else { "NOT MET" }
        );
    }
    for a in &anchors {
        println!(
            "{:<28} {:>14.3} {:>14} {:>14.3} {:>7.3} {:>6}  {} {} ({})",
            a.name,
            a.relay,
            "-",
            a.haproxy,
            a.ratio,
            a.unit,
            a.goal,
            if a.met { "met" } else { "NOT MET" },
            a.spread
        );
    }
    Ok(())
}
