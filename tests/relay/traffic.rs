//! Messages through the relay: every one arrives, in order, byte for byte,
//! bodies larger than frame_max included.

use crate::Env;
use crate::support::amqp::{self, Client, Tuning};
use crate::support::relay::{Relay, Settings};
use amiquip::{Connection, ConsumerMessage, ConsumerOptions, Publish, QueueDeclareOptions};
use std::time::{Duration, Instant};

const FRAME_MAX: usize = 131_072;

/// Body sizes around the frame boundaries (frame_max minus the 8 bytes of
/// frame overhead is the largest body frame) and well past them.
fn sizes() -> Vec<usize> {
    let edge = FRAME_MAX - 8;
    let mut s = vec![
        0,
        1,
        7,
        8,
        100,
        4096,
        edge - 1,
        edge,
        edge + 1,
        2 * edge,
        300 * 1024,
        1024 * 1024 + 3,
    ];
    // Then a run of mixed small and large ones, so frames of different
    // messages follow each other closely.
    for i in 0..40 {
        s.push(if i % 5 == 0 { 300 * 1024 } else { 10 * i + 3 });
    }
    s
}

fn check_message(i: usize, want_len: usize, got: &[u8]) -> Result<(), String> {
    let want = amqp::body(i as u64, want_len);
    ensure!(
        got == &want[..],
        "message {i} ({want_len} bytes) differs: {}{}",
        amqp::first_difference(&want, got),
        if got.len() >= 8 {
            format!(
                " (it carries the index of message {})",
                u64::from_be_bytes(got[..8].try_into().unwrap_or([0; 8]))
            )
        } else {
            String::new()
        }
    );
    Ok(())
}

/// amiquip, an independent client, publishes and consumes through the relay.
pub fn amiquip_through_relay(env: &Env) -> Result<(), String> {
    let node = env.node()?;
    let relay = Relay::start("amiquip", Settings::new(&[&node.url()]).interval(2).build())?;
    relay.explain(amiquip_round_trip(&relay.url()))
}

fn amiquip_round_trip(url: &str) -> Result<(), String> {
    let e = |what: &str| {
        let what = what.to_string();
        move |err: amiquip::Error| format!("amiquip {what}: {err}")
    };
    let mut conn = Connection::insecure_open(url).map_err(e("open"))?;
    let ch = conn.open_channel(None).map_err(e("open_channel"))?;
    let queue = ch
        .queue_declare(
            "",
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
        )
        .map_err(e("queue_declare"))?;
    ch.enable_publisher_confirms()
        .map_err(e("confirm_select"))?;
    let confirms = ch
        .listen_for_publisher_confirms()
        .map_err(e("listen_for_publisher_confirms"))?;
    let sizes = sizes();
    for (i, len) in sizes.iter().enumerate() {
        ch.basic_publish("", Publish::new(&amqp::body(i as u64, *len), queue.name()))
            .map_err(e("basic_publish"))?;
    }
    let mut acked = 0u64;
    while acked < sizes.len() as u64 {
        match confirms.recv_timeout(Duration::from_secs(20)) {
            Ok(amiquip::Confirm::Ack(p)) => acked = acked.max(p.delivery_tag),
            Ok(other) => return Err(format!("publish not confirmed: {other:?}")),
            Err(err) => {
                return Err(format!(
                    "only {acked} of {} publishes confirmed: {err}",
                    sizes.len()
                ));
            }
        }
    }
    let consumer = queue
        .consume(ConsumerOptions {
            no_ack: true,
            ..Default::default()
        })
        .map_err(e("consume"))?;
    for (i, len) in sizes.iter().enumerate() {
        match consumer.receiver().recv_timeout(Duration::from_secs(20)) {
            Ok(ConsumerMessage::Delivery(d)) => check_message(i, *len, &d.body)?,
            Ok(other) => return Err(format!("expected delivery {i}, got {other:?}")),
            Err(err) => {
                return Err(format!(
                    "delivery {i} of {} did not arrive: {err}",
                    sizes.len()
                ));
            }
        }
    }
    match consumer.receiver().recv_timeout(Duration::from_millis(300)) {
        Err(_) => {}
        Ok(extra) => return Err(format!("an extra message arrived: {extra:?}")),
    }
    conn.close().map_err(e("close"))
}

/// The raw client through the relay, checked against amiquip connected
/// straight to the broker, in both directions: what the relay delivers
/// upstream is what the broker stores, and what the broker sends arrives.
pub fn raw_client_through_relay(env: &Env) -> Result<(), String> {
    let node = env.node()?;
    let relay = Relay::start("raw", Settings::new(&[&node.url()]).interval(2).build())?;
    relay.explain(raw_round_trip(env, &relay))
}

fn raw_round_trip(env: &Env, relay: &Relay) -> Result<(), String> {
    let node = env.node()?;
    let tuning = Tuning {
        heartbeat: 30,
        frame_max: FRAME_MAX as u32,
        channel_max: 32,
        ..Tuning::default()
    };
    // Tune: frame_max and channel_max pass through, heartbeat offered as 0.
    let direct = Client::open(node.addr(), tuning)?;
    let mut c = Client::open(relay.addr, tuning)?;
    let (dt, rt) = (direct.tune.clone(), c.tune.clone());
    let (dt, rt) = (dt.ok_or("no Tune (direct)")?, rt.ok_or("no Tune (relay)")?);
    ensure!(
        rt.heartbeat == 0,
        "the relay offered heartbeat {} to the client, not 0",
        rt.heartbeat
    );
    ensure!(
        dt.heartbeat != 0,
        "the broker itself offers heartbeat 0; the test proves nothing"
    );
    ensure!(
        (rt.frame_max, rt.channel_max) == (dt.frame_max, dt.channel_max),
        "Tune through the relay {rt:?} differs from the broker's {dt:?} beyond the heartbeat"
    );
    drop(direct);

    let queue = format!("amqphb-raw-{}", std::process::id());
    c.declare_queue(1, &queue)?;
    c.confirm_select(1)?;
    let sizes = sizes();
    // Pipelined publishes, then one wait for all confirms.
    for (i, len) in sizes.iter().enumerate() {
        c.publish(1, &queue, &amqp::body(i as u64, *len))?;
    }
    c.wait_acked(1, sizes.len() as u64)?;

    // Read them back directly from the broker with amiquip.
    let e = |err: amiquip::Error| format!("amiquip (direct): {err}");
    let mut conn =
        Connection::insecure_open(&format!("amqp://guest:guest@127.0.0.1:{}/", node.amqp_port))
            .map_err(e)?;
    let ch = conn.open_channel(None).map_err(e)?;
    for (i, len) in sizes.iter().enumerate() {
        match ch.basic_get(queue.as_str(), true).map_err(e)? {
            Some(got) => check_message(i, *len, &got.delivery.body)
                .map_err(|m| format!("published via relay: {m}"))?,
            None => {
                return Err(format!(
                    "the broker holds only {i} of {} messages published via the relay",
                    sizes.len()
                ));
            }
        }
    }

    // The other way: amiquip publishes directly, the raw client consumes
    // through the relay (basic.consume, then basic.get).
    let offset = 1000;
    for (i, len) in sizes.iter().enumerate() {
        ch.basic_publish(
            "",
            Publish::new(&amqp::body((offset + i) as u64, *len), queue.as_str()),
        )
        .map_err(e)?;
    }
    // Half through basic.consume (prefetch = half, so nothing more is in
    // flight when the consumer is cancelled), the rest through basic.get.
    let half = sizes.len() / 2;
    c.channel_open(2)?;
    c.qos(2, half as u16)?;
    let tag = c.consume(2, &queue, false)?;
    let mut last_tag = 0;
    for (i, len) in sizes.iter().enumerate().take(half) {
        let m = c.next_delivery(2, Duration::from_secs(20))?;
        check_message(offset + i, *len, &m.body)
            .map_err(|x| format!("delivered via relay: {x}"))?;
        ensure!(
            m.body_frames.iter().all(|f| *f <= FRAME_MAX),
            "a body frame exceeds frame_max: {:?}",
            m.body_frames
        );
        ensure!(
            *len <= FRAME_MAX - 8 || m.body_frames.len() > 1,
            "a {len}-byte body came in {} frame(s)",
            m.body_frames.len()
        );
        last_tag = m.delivery_tag;
    }
    c.cancel(2, &tag)?;
    c.ack(2, last_tag, true)?;
    // amiquip publishes from its own I/O thread: the last (largest)
    // messages may still be on their way to the queue when the consumer
    // is done with the first half. Wait until the broker holds them all.
    let rest = (sizes.len() - half) as u32;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let held = c.declare_queue(1, &queue)?;
        if held >= rest {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the broker holds only {held} of the {rest} messages amiquip published, after 20 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for (i, len) in sizes.iter().enumerate().skip(half) {
        match c.get(1, &queue)? {
            Some(m) => check_message(offset + i, *len, &m.body)
                .map_err(|x| format!("basic.get via relay: {x}"))?,
            None => return Err(format!("basic.get via relay: queue empty at message {i}")),
        }
    }
    ensure!(
        c.get(1, &queue)?.is_none(),
        "the queue holds more messages than were published"
    );
    c.delete_queue(1, &queue)?;
    conn.close().map_err(e)?;
    c.close()
}
