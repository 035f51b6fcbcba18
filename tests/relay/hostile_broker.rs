//! A hostile broker (issue 11, item 3), scripted because a real one never
//! sends garbage: after its Connection.Start it sends a frame of an unknown
//! type, then zeros as fast as loopback takes them. The relay closes the
//! upstream on the bad frame and waits for the broker's CloseOk; bytes that
//! are not frames must end that wait at once, so the relay's memory stays
//! within its per-connection bound (DESIGN.md R8, R10) whatever the broker
//! sends, and the broker sees its socket closed well before the close
//! deadline.

use crate::Env;
use crate::support::amqp::{Client, PROTOCOL_HEADER};
use crate::support::relay::{Relay, Settings, peak_rss_bytes, reset_peak_rss, rss_bytes};
use std::io::Write;
use std::net::TcpListener;
use std::time::{Duration, Instant};

/// The most the relay may hold for one connection: a partial frame of the
/// largest size it accepts (1 MiB) and a read's worth, with room for the
/// allocator; the bug this guards grew by hundreds of MiB a second.
const BOUND: usize = 16 << 20;
const FLOOD_FOR: Duration = Duration::from_secs(3);

pub fn garbage_after_a_bad_frame_is_not_buffered(_env: &Env) -> Result<(), String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    let url = format!(
        "amqp://127.0.0.1:{}/",
        listener.local_addr().map_err(|e| e.to_string())?.port()
    );
    let relay = Relay::start("hostile", Settings::new(&[&url]).interval(2).build())?;
    relay.explain((|| {
        reset_peak_rss()?;
        let before = rss_bytes()?;
        let broker = std::thread::spawn(move || -> Result<(usize, Duration), String> {
            let (stream, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
            let mut b = Client::from_stream(stream)?;
            b.greet_as_broker()?;
            std::thread::sleep(Duration::from_millis(200));
            let mut s = b.stream().try_clone().map_err(|e| e.to_string())?;
            s.write_all(&[9, 0, 0, 0, 0, 0, 0]).map_err(|e| e.to_string())?;
            let zeros = vec![0u8; 64 * 1024];
            let started = Instant::now();
            let mut sent = 0usize;
            while started.elapsed() < FLOOD_FOR {
                match s.write(&zeros) {
                    Ok(n) => sent += n,
                    // The relay closed the upstream: what the fix does.
                    Err(_) => return Ok((sent, started.elapsed())),
                }
            }
            Ok((sent, started.elapsed()))
        });
        let mut c = Client::connect(relay.addr)?;
        c.send_raw(PROTOCOL_HEADER)?;
        let (sent, flooded) = broker
            .join()
            .map_err(|_| "the scripted broker panicked".to_string())??;
        let peak = peak_rss_bytes()?;
        let grew = peak.saturating_sub(before);
        eprintln!(
            "hostile broker: sent {} MiB of zeros for {flooded:.2?}; relay process peak RSS +{} KiB",
            sent >> 20,
            grew >> 10
        );
        ensure!(
            grew <= BOUND,
            "the relay's memory grew by {} MiB while a broker sent {} MiB of garbage (bound {} MiB)",
            grew >> 20,
            sent >> 20,
            BOUND >> 20
        );
        ensure!(
            flooded < Duration::from_secs(1),
            "the relay kept reading garbage for {flooded:.2?} instead of closing the upstream"
        );
        Ok(())
    })())
}

/// A broker that stops in the middle of the handshake (Start, then the
/// client's StartOk, then half a Tune and silence): before TuneOk no
/// heartbeat rule runs, so only the handshake's own bound (R12) ends the
/// connection; the client is told why, the broker's socket is closed. The
/// bound is shortened to 2 s on this listener (test-hooks) instead of 60.
pub fn a_broker_that_stalls_in_the_handshake_is_given_up(env: &Env) -> Result<(), String> {
    #[cfg(feature = "test-hooks")]
    return stalled_handshake(env);
    #[cfg(not(feature = "test-hooks"))]
    {
        let _ = env;
        Err("the relay tests were built without the test-hooks feature, which shortens the \
             handshake bound: run them as make test does (cargo test --release --features test-hooks)"
            .into())
    }
}

#[cfg(feature = "test-hooks")]
fn stalled_handshake(_env: &Env) -> Result<(), String> {
    use crate::support::amqp::{Ending, method};
    use amq_protocol::protocol::{AMQPClass, connection};
    use amq_protocol::types::{FieldTable, LongString};
    use mod_amqp_heartbeat::relay::test_hooks;

    const BOUND: Duration = Duration::from_secs(2);
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    let url = format!(
        "amqp://127.0.0.1:{}/",
        listener.local_addr().map_err(|e| e.to_string())?.port()
    );
    let relay = Relay::start(
        "stalled-handshake",
        Settings::new(&[&url]).interval(1).build(),
    )?;
    test_hooks::shorten_handshake(relay.addr.port(), BOUND);
    relay.explain((|| {
        let broker = std::thread::spawn(move || -> Result<(Ending, Instant), String> {
            let (stream, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
            let mut b = Client::from_stream(stream)?;
            b.greet_as_broker()?;
            match b.expect_method(0, Duration::from_secs(5))? {
                AMQPClass::Connection(connection::AMQPMethod::StartOk(_)) => {}
                other => return Err(format!("the broker expected StartOk, got {other:?}")),
            }
            let tune = method(
                0,
                AMQPClass::Connection(connection::AMQPMethod::Tune(connection::Tune {
                    channel_max: 2047,
                    frame_max: 131_072,
                    heartbeat: 60,
                })),
            );
            b.send_raw(&tune[..10])?;
            let ending = b.read_ending(BOUND * 4)?;
            Ok((ending, Instant::now()))
        });
        let mut c = Client::connect(relay.addr)?;
        // The relay's clock starts once it has the broker's Start, between
        // these two instants: the lower bound is measured from the first,
        // the upper from the second, so a slow wake-up fails neither.
        let before_header = Instant::now();
        c.send_raw(PROTOCOL_HEADER)?;
        match c.expect_method(0, Duration::from_secs(5))? {
            AMQPClass::Connection(connection::AMQPMethod::Start(_)) => {}
            other => return Err(format!("expected Connection.Start, got {other:?}")),
        }
        let started = Instant::now();
        c.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: FieldTable::default(),
                mechanism: "PLAIN".into(),
                response: LongString::from("\0guest\0guest"),
                locale: "en_US".into(),
            })),
        )?;
        let (code, text) = c.expect_close(BOUND * 5)?;
        let took = started.elapsed();
        let took_at_most = before_header.elapsed();
        let (broker_ending, broker_ended) = broker
            .join()
            .map_err(|_| "the scripted broker panicked".to_string())??;
        eprintln!(
            "stalled handshake: client got Close {code} after {took:.2?}; the broker's socket: {broker_ending:?} {:.2?} after",
            broker_ended.saturating_duration_since(started)
        );
        ensure!(
            code == 320
                && text == "relay: AMQP handshake not complete after 2 s (waiting for the broker)",
            "the client got Close {code} {text:?}"
        );
        ensure!(
            took_at_most >= BOUND - Duration::from_millis(100)
                && took < BOUND + Duration::from_secs(3),
            "the relay gave up after {took:.2?} to {took_at_most:.2?} (bound {BOUND:?})"
        );
        ensure!(
            broker_ending == Ending::Eof,
            "the broker's socket ended with {broker_ending:?}"
        );
        Ok(())
    })())
}
