//! Heartbeats: the relay keeps a silent client's broker connection alive,
//! answers a client's own heartbeat wish, and does not take a client that
//! stops reading for a dead broker.

use crate::Env;
use crate::support::amqp::{self, Client, Ending, Tuning};
use crate::support::relay::{Relay, Settings, rss_bytes};
use mod_amqp_heartbeat::config::Directive;
use mod_amqp_heartbeat::relay::Event;
use mod_amqp_heartbeat::relay::io_buffers::peak_buffered_bytes;
use mod_amqp_heartbeat::relay::session::MIN_BUFFER;
use mod_amqp_heartbeat::relay::session::events::EndKind;
use std::time::{Duration, Instant};

const INTERVAL: u16 = 2;

/// What an idle client received from `from` to the end of its watch.
struct Heartbeats {
    count: usize,
    /// Seconds between `from`, each heartbeat and the end of the watch: a
    /// silence at either end is a gap too.
    gaps: Vec<f64>,
}

impl Heartbeats {
    fn max_gap(&self) -> f64 {
        self.gaps.iter().cloned().fold(0.0, f64::max)
    }
}

/// Read an idle client's heartbeats until `from + watch`; anything else
/// arriving, or the connection ending, is an error.
fn heartbeats(c: &mut Client, from: Instant, watch: Duration) -> Result<Heartbeats, String> {
    let mut times = vec![from];
    loop {
        match c.read_frame_until(from + watch)? {
            Ok(r) if r.frame == amq_protocol::frame::AMQPFrame::Heartbeat => times.push(r.at),
            Ok(r) => return Err(format!("an idle client received {:?}", r.frame)),
            Err(Ending::Timeout) => break,
            Err(e) => return Err(format!("the idle connection ended: {e:?}")),
        }
    }
    let count = times.len() - 1;
    times.push(Instant::now());
    let gaps = times
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect();
    Ok(Heartbeats { count, gaps })
}

/// A client that goes completely silent for 10 x the relay interval keeps
/// its broker connection, which the broker lists with the relay's
/// heartbeat, and publishes afterwards. Two clients: one that asked for no
/// heartbeat, one that asked for 60 s (the relay must not pass that on).
pub fn silent_client_keeps_broker_connection(env: &Env) -> Result<(), String> {
    let node = env.node()?;
    let relay = Relay::start(
        "silent",
        Settings::new(&[&node.url()]).interval(INTERVAL).build(),
    )?;
    relay.explain((|| {
        let mut clients = Vec::new();
        for hb in [0u16, 60] {
            let mut c = Client::open(relay.addr, Tuning::heartbeat(hb))?;
            c.confirm_select(1)?;
            let q = c.declare_private_queue(1)?;
            let upstream = relay.upstream_port(c.local_port())?;
            clients.push((hb, c, q, upstream));
        }
        let silence = Duration::from_secs(10 * u64::from(INTERVAL));
        std::thread::sleep(silence);

        let listed = node.connections()?;
        for (hb, c, q, upstream) in &mut clients {
            let Some(conn) = listed.iter().find(|b| b.peer_port == *upstream) else {
                return Err(format!(
                    "after {silence:?} of silence the broker no longer lists the upstream of the client with heartbeat {hb} \
                     (peer port {upstream}); it lists {listed:?}"
                ));
            };
            ensure!(
                conn.timeout == INTERVAL,
                "the broker lists the upstream with heartbeat timeout {}, not the relay's {INTERVAL}",
                conn.timeout
            );
            let body = format!("after {silence:?} of silence, heartbeat {hb}").into_bytes();
            c.publish_confirmed(1, q, &body)?;
            let got = c.get(1, q)?.ok_or("the message published after the silence is not in the queue")?;
            ensure!(got.body == body, "the message published after the silence came back different");
            if *hb == 0 {
                ensure!(
                    c.heartbeats_seen == 0,
                    "the relay sent {} heartbeat frame(s) to a client that asked for none",
                    c.heartbeats_seen
                );
            }
        }
        ensure!(
            relay.log.events(|e| matches!(e, Event::SentClose { kind: EndKind::BrokerSilent, .. })).is_empty(),
            "the relay reported missed heartbeats"
        );
        for (_, c, _, _) in clients {
            c.close()?;
        }
        Ok(())
    })())
}

/// The control: the same silent client connected straight to the broker
/// with heartbeat 2 is closed by the broker, so the test above can fail.
pub fn direct_silent_client_is_dropped_by_broker(env: &Env) -> Result<(), String> {
    let node = env.node()?;
    let c = Client::open(node.addr(), Tuning::heartbeat(INTERVAL))?;
    let port = c.local_port();
    // No rabbitmqctl before the wait: on a loaded machine it takes longer
    // than the broker's 2 x 2 s. The log entry names the timeout.
    let entry = node.wait_log_entry(
        &[
            "missed heartbeats from client",
            &format!("127.0.0.1:{port} ->"),
        ],
        Duration::from_secs(10 * u64::from(INTERVAL)),
    )?;
    ensure!(
        entry.contains(&format!("timeout: {INTERVAL}s")),
        "unexpected heartbeat timeout: {entry}"
    );
    ensure!(
        node.connection(port)?.is_none(),
        "the broker still lists the direct client after: {entry}"
    );
    let mut c = c;
    let ending = c.read_ending(Duration::from_secs(5))?;
    ensure!(
        ending != Ending::Timeout,
        "the broker dropped the connection but the client socket is still open"
    );
    Ok(())
}

/// A client that asks for heartbeat 1 in its TuneOk receives the relay's
/// heartbeats (every half second) while idle, so it never times out.
pub fn client_heartbeat_1_gets_relay_heartbeats(env: &Env) -> Result<(), String> {
    let node = env.node()?;
    let relay = Relay::start(
        "client-hb",
        Settings::new(&[&node.url()]).interval(INTERVAL).build(),
    )?;
    relay.explain((|| {
        let mut c = Client::open(relay.addr, Tuning::heartbeat(1))?;
        let watch = Duration::from_secs(4);
        let beats = heartbeats(&mut c, Instant::now(), watch)?;
        eprintln!(
            "client heartbeat 1: {} heartbeats in {watch:?}, gaps {:.2?}",
            beats.count, beats.gaps
        );
        ensure!(
            beats.count >= 6,
            "{} heartbeats in {watch:?} (expected about 8, one per 0.5 s); gaps {:.2?}",
            beats.count,
            beats.gaps
        );
        let steady = beats.max_gap() < 1.0;
        ensure!(
            steady,
            "a gap of {:.2}s between heartbeats to a client that asked for 1 s: {:.2?}",
            beats.max_gap(),
            beats.gaps
        );
        c.close()
    })())
}

/// A consumer that sleeps while thousands of deliveries wait: the relay
/// stops reading the broker instead of buffering, does not mistake that
/// for a dead broker, keeps the upstream alive, and everything arrives
/// once the consumer reads again.
pub fn sleeping_consumer_is_not_a_dead_broker(env: &Env) -> Result<(), String> {
    const COUNT: u64 = 2000;
    const SIZE: usize = 64 * 1024;
    // Far below the 125 MiB waiting, far above what a bounded relay holds
    // (2 x 256 KiB per connection) plus other tests running alongside.
    const RSS_BOUND: usize = 48 << 20;
    let node = env.node()?;
    let relay = Relay::start(
        "sleeper",
        Settings::new(&[&node.url()]).interval(INTERVAL).build(),
    )?;
    let queue = format!("amqphb-sleeper-{}", std::process::id());
    relay.explain((|| {
        // Fill the queue directly, with confirms, before the consumer comes.
        let mut publisher = Client::open(node.addr(), Tuning::default())?;
        publisher.declare_queue(1, &queue)?;
        publisher.confirm_select(1)?;
        for i in 0..COUNT {
            publisher.publish(1, &queue, &amqp::body(i, SIZE))?;
            // Confirm in batches: the broker's flow control never sees
            // the whole load at once.
            if i % 200 == 199 && i + 1 < COUNT {
                publisher.wait_acked(1, i + 1)?;
            }
        }
        publisher.wait_acked(1, COUNT)?;

        let mut c = Client::open(relay.addr, Tuning::heartbeat(0))?;
        c.channel_open(2)?;
        c.confirm_select(2)?;
        let rss_before = rss_bytes()?;
        c.consume(1, &queue, true)?;
        let sleep = Duration::from_secs(7);
        let until = Instant::now() + sleep;
        let mut rss_peak = rss_before;
        while Instant::now() < until {
            std::thread::sleep(Duration::from_millis(250));
            rss_peak = rss_peak.max(rss_bytes()?);
        }
        let growth = rss_peak.saturating_sub(rss_before);
        let peak = peak_buffered_bytes();
        for i in 0..COUNT {
            let m = c
                .next_delivery(1, Duration::from_secs(20))
                .map_err(|e| format!("delivery {i} of {COUNT} after the sleep: {e}"))?;
            if m.body != amqp::body(i, SIZE) {
                return Err(format!("delivery {i}: {}", amqp::first_difference(&amqp::body(i, SIZE), &m.body)));
            }
        }
        c.publish_confirmed(2, "nowhere", b"still alive")?;
        ensure!(
            relay
                .log
                .events(|e| matches!(e, Event::SentClose { .. } | Event::Closed { .. }))
                .is_empty(),
            "the relay closed or declared the broker dead while the client slept"
        );
        // The relay's own account of its bound: per direction at most
        // max(256 KiB, 2 x frame_max) held (every connection in this binary
        // negotiates frame_max 131072).
        let bound = MIN_BUFFER.max(2 * 131_072);
        ensure!(
            peak <= bound,
            "the relay held {peak} bytes in one direction while the client slept (bound {bound})"
        );
        ensure!(
            growth < RSS_BOUND,
            "process RSS grew by {} MiB while {COUNT} x {} KiB deliveries waited (bound {} MiB)",
            growth >> 20,
            SIZE >> 10,
            RSS_BOUND >> 20
        );
        eprintln!(
            "sleeping consumer: relay peak {} KiB held in one direction, RSS growth {} KiB, while {} MiB waited",
            peak >> 10,
            growth >> 10,
            (COUNT as usize * SIZE) >> 20
        );
        publisher.delete_queue(1, &queue)?;
        c.close()?;
        publisher.close()
    })())
}

/// Dials that hang (DNS of "localhost", TCP connect, then a TLS handshake
/// the "broker" never answers) on one listener do not delay heartbeats or
/// traffic of a connection on another listener of the same relay thread;
/// the hanging dials end at AMQPHeartbeatConnectTimeout.
pub fn slow_dials_do_not_delay_other_connections(env: &Env) -> Result<(), String> {
    const CONNECT_TIMEOUT: u64 = 8;
    let node = env.node()?;
    let ca = node
        .ca_path
        .clone()
        .ok_or("the shared node has no test CA")?;
    // Takes TCP connections into its backlog and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    let silent_port = silent.local_addr().map_err(|e| e.to_string())?.port();
    let good = Settings::new(&[&node.url()]).interval(INTERVAL).build();
    let slow = Settings::new(&[&format!("amqps://localhost:{silent_port}/")])
        .interval(INTERVAL)
        .set(Directive::ConnectTimeout, &CONNECT_TIMEOUT.to_string())
        .set(Directive::TlsCaCertificateFile, &ca.to_string_lossy())
        .build();
    let relay = Relay::start_many("slow-dials", vec![good, slow])?;
    relay.explain((|| {
        let mut c = Client::open(relay.addrs[0], Tuning::heartbeat(1))?;
        c.confirm_select(1)?;
        let started = Instant::now();
        let mut hanging = Vec::new();
        for _ in 0..8 {
            let mut h = Client::connect(relay.addrs[1])?;
            h.send_raw(amqp::PROTOCOL_HEADER)?;
            hanging.push(h);
        }
        // Accepting them is connection_burst_does_not_stall_heartbeats's
        // business: watch once they are all waiting for their TLS peer.
        std::thread::sleep(Duration::from_millis(1500));
        let beats = heartbeats(&mut c, Instant::now(), Duration::from_secs(3))?;
        eprintln!(
            "slow dials: heartbeat gaps {:.2?} while {} dials hung",
            beats.gaps,
            hanging.len()
        );
        let steady = beats.max_gap() < 1.0 && beats.count >= 4;
        ensure!(
            steady,
            "heartbeats to the client while {} dials hung: gaps {:.2?}",
            hanging.len(),
            beats.gaps
        );
        let sent = Instant::now();
        c.publish_confirmed(1, "nowhere", b"while dials hang")?;
        let rtt = sent.elapsed();
        ensure!(
            rtt < Duration::from_secs(1),
            "a publish round trip took {rtt:.2?} while dials hung"
        );
        ensure!(
            started.elapsed() < Duration::from_secs(CONNECT_TIMEOUT),
            "the test watched too long to prove anything ({:.2?})",
            started.elapsed()
        );
        // And the hanging dials end at the connect timeout: the relay's own
        // Connection.Start (it would tell them why after their StartOk,
        // which these raw clients never send), then the end of the stream.
        for (i, h) in hanging.iter_mut().enumerate() {
            let (got, _) =
                h.read_raw_until(started + Duration::from_secs(CONNECT_TIMEOUT + 8), 11)?;
            let ending = h.read_ending(Duration::from_secs(5))?;
            ensure!(
                got.starts_with(&[1, 0, 0])
                    && got.get(7..11) == Some(&[0, 10, 0, 10][..])
                    && ending != amqp::Ending::Timeout,
                "hanging dial {i}: got {got:?}, then {ending:?} after {:.2?}",
                started.elapsed()
            );
        }
        relay.log.wait_for(
            &[
                &format!("localhost:{silent_port}"),
                "AMQPHeartbeatConnectTimeout",
            ],
            Duration::from_secs(1),
        )?;
        c.close()
    })())
}

/// A burst of new connections (an app opening many at once, or anybody on
/// the machine connecting to the loopback port) does not stall the relay
/// thread: heartbeats to an established client keep their cadence. Every
/// accepted connection is checked against this process's sockets; that
/// check must not hold up the event loop.
pub fn connection_burst_does_not_stall_heartbeats(env: &Env) -> Result<(), String> {
    const BURST: usize = 200;
    let node = env.node()?;
    let relay = Relay::start(
        "burst",
        Settings::new(&[&node.url()]).interval(INTERVAL).build(),
    )?;
    relay.explain((|| {
        let mut c = Client::open(relay.addr, Tuning::heartbeat(1))?;
        // Let the first heartbeat go, then burst right after it.
        let first = c.read_frame_until(Instant::now() + Duration::from_secs(2))?;
        ensure!(first.is_ok(), "no first heartbeat: {first:?}");
        let burst_at = Instant::now();
        let mut burst = Vec::with_capacity(BURST);
        for _ in 0..BURST {
            burst.push(
                std::net::TcpStream::connect(relay.addr).map_err(|e| format!("burst connect: {e}"))?,
            );
        }
        let beats = heartbeats(&mut c, burst_at, Duration::from_secs(3))?;
        eprintln!("connection burst: heartbeat gaps {:.2?} after {BURST} connects", beats.gaps);
        // Due every 0.5 s (0.65 s when riding along with the broker's);
        // well short of the 1 s the client asked for.
        let steady = beats.max_gap() < 0.9;
        ensure!(
            steady,
            "heartbeats (due about every 0.5 s) stalled for up to {:.2}s after a burst of {BURST} connects: \
             gaps {:.2?} (the relay's accept path blocks its event loop)",
            beats.max_gap(),
            beats.gaps
        );
        drop(burst);
        c.close()
    })())
}
