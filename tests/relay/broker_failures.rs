//! The broker freezes, dies, or is not there: the client is told at once
//! (Connection.Close 320) instead of hanging, and the relay moves on.

use crate::Env;
use crate::support::amqp::{Client, Ending, PROTOCOL_HEADER, Tuning};
use crate::support::relay::{Relay, Settings, closed_port};
use mod_amqp_heartbeat::config::Directive;
use std::time::{Duration, Instant};

const INTERVAL: u16 = 2;

/// SIGSTOP the broker under an idle connection: Close 320 within 2.5 x
/// interval + 1 s; SIGCONT: a new connection works. Then SIGKILL it: Close
/// 320 within 1 s. (A freeze during publishing is confirmed_delivery's.)
///
/// Idle for 3 intervals first, so the relay has gone quiet (quiet.rs): the
/// broker's last heartbeat may wait unread under the raised low-water
/// mark, and counts as at most one interval old, hence 2.5 x interval.
pub fn frozen_then_killed_broker(env: &Env) -> Result<(), String> {
    let node = env.own_node("failures")?;
    let relay = Relay::start(
        "failures",
        Settings::new(&[&node.url()]).interval(INTERVAL).build(),
    )?;
    let result = relay.explain((|| {
        let mut c = Client::open(relay.addr, Tuning::heartbeat(0))?;
        c.confirm_select(1)?;
        c.publish_confirmed(1, "nowhere", b"before the freeze")?;
        let frozen_upstream = relay.upstream_port(c.local_port())?;
        std::thread::sleep(Duration::from_secs(3 * u64::from(INTERVAL)));

        node.sigstop()?;
        let frozen = Instant::now();
        let bound = Duration::from_millis(2500 * u64::from(INTERVAL) + 1000);
        let (code, text) = c
            .expect_close(bound + Duration::from_secs(2))
            .map_err(|e| format!("frozen broker: {e}"))?;
        let took = frozen.elapsed();
        ensure!(
            code == 320,
            "frozen broker: Connection.Close {code} '{text}', expected 320"
        );
        ensure!(
            took <= bound,
            "frozen broker: Connection.Close 320 came after {took:.2?}, bound {bound:?}"
        );
        ensure!(
            text.contains("heartbeat"),
            "frozen broker: the reason does not say heartbeats: '{text}'"
        );
        let ending = c.read_ending(Duration::from_secs(3))?;
        ensure!(
            ending == Ending::Eof,
            "frozen broker: after the Close the client socket ended with {ending:?}"
        );
        eprintln!("frozen broker: Close 320 after {took:.2?}: {text}");

        node.sigcont()?;
        let mut c2 = Client::open(relay.addr, Tuning::heartbeat(0))
            .map_err(|e| format!("after SIGCONT: {e}"))?;
        c2.confirm_select(1)?;
        c2.publish_confirmed(1, "nowhere", b"after the thaw")?;
        // The thawed broker finds the old upstream closed and drops it.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let listed = node.connections()?;
            if listed.iter().all(|b| b.peer_port != frozen_upstream) {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "after SIGCONT the broker still lists the frozen connection's upstream (port {frozen_upstream}): {listed:?}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }

        node.kill()?;
        let killed = Instant::now();
        let (code, text) = c2
            .expect_close(Duration::from_secs(6))
            .map_err(|e| format!("killed broker: {e}"))?;
        let took = killed.elapsed();
        ensure!(
            code == 320,
            "killed broker: Connection.Close {code} '{text}', expected 320"
        );
        // Seen on the socket's end, not by heartbeats (2 x INTERVAL at the
        // earliest); the rest is room for a loaded machine.
        ensure!(
            took <= Duration::from_secs(3),
            "killed broker: Connection.Close 320 came after {took:.2?}, bound 3 s"
        );
        eprintln!("killed broker: Close 320 after {took:.2?}: {text}");
        let ending = c2.read_ending(Duration::from_secs(3))?;
        ensure!(
            ending == Ending::Eof,
            "killed broker: after the Close the client socket ended with {ending:?}"
        );
        ensure!(!relay.log.contains("panicked"), "the relay panicked");
        Ok(())
    })());
    let stopped = node.stop();
    result?;
    stopped
}

/// The first broker URL is a closed port: the second is used.
pub fn first_broker_unreachable_second_used(env: &Env) -> Result<(), String> {
    let node = env.node()?;
    let dead = format!("amqp://127.0.0.1:{}/", closed_port());
    let relay = Relay::start(
        "failover",
        Settings::new(&[&dead, &node.url()])
            .interval(INTERVAL)
            .build(),
    )?;
    relay.explain((|| {
        let started = Instant::now();
        let mut c = Client::open(relay.addr, Tuning::heartbeat(0))?;
        let took = started.elapsed();
        let line = relay
            .log
            .wait_for(&["relayed to", "broker 2 of 2"], Duration::from_secs(5))?;
        ensure!(
            line.contains(&node.amqp_port.to_string()),
            "relayed to the wrong broker: {line}"
        );
        // A refused port fails at once: no connect timeout (10 s by
        // default) is waited; the rest is room for a loaded machine.
        ensure!(
            took < Duration::from_secs(5),
            "failing over took {took:.2?}"
        );
        c.confirm_select(1)?;
        c.publish_confirmed(1, "nowhere", b"failed over")?;
        c.close()
    })())
}

/// A broker that completes the TCP handshake but never says a word (a
/// frozen node: the kernel still accepts into its backlog), at connect
/// time. AMQPHeartbeatConnectTimeout is the limit per broker try: alone,
/// the client is closed within it; first in the list, the second broker is
/// used. (Before TuneOk no heartbeat watch runs, so only the connect
/// timeout can catch this.)
pub fn silent_broker_at_connect_time(env: &Env) -> Result<(), String> {
    const CONNECT_TIMEOUT: u64 = 2;
    let node = env.node()?;
    // Listening, never accepting, never writing.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    let silent_url = format!(
        "amqp://127.0.0.1:{}/",
        silent.local_addr().map_err(|e| e.to_string())?.port()
    );
    // The connect timeout, and room for a loaded machine's wake-ups and
    // the second broker's Start (well under the handshake bound, 60 s).
    let bound = Duration::from_secs(CONNECT_TIMEOUT + 3);

    let alone = Relay::start(
        "silent-broker",
        Settings::new(&[&silent_url])
            .interval(INTERVAL)
            .set(Directive::ConnectTimeout, &CONNECT_TIMEOUT.to_string())
            .build(),
    )?;
    alone.explain((|| {
        // No broker answered: the client is told so in AMQP (the relay's
        // Start, then Close 320 with the reason) within the connect timeout.
        let started = Instant::now();
        let told = match Client::open(alone.addr, Tuning::heartbeat(0)) {
            Ok(_) => return Err("a handshake completed with no broker answering".into()),
            Err(e) => e,
        };
        let took = started.elapsed();
        ensure!(
            told.contains("reply_code: 320") && told.contains("relay: no broker reachable") && took <= bound,
            "only broker silent after TCP connect: the client got '{told}' after {took:.2?} \
             (expected Close 320 naming the reason within AMQPHeartbeatConnectTimeout {CONNECT_TIMEOUT}s + 3s)"
        );
        Ok(())
    })())?;

    let failover = Relay::start(
        "silent-broker-failover",
        Settings::new(&[&silent_url, &node.url()])
            .interval(INTERVAL)
            .set(Directive::ConnectTimeout, &CONNECT_TIMEOUT.to_string())
            .build(),
    )?;
    failover.explain((|| {
        let mut c = Client::connect(failover.addr)?;
        let started = Instant::now();
        c.send_raw(PROTOCOL_HEADER)?;
        let first = c.read_frame_until(started + bound + Duration::from_secs(3))?;
        let took = started.elapsed();
        ensure!(
            first.is_ok() && took <= bound,
            "first broker silent after TCP connect: no Connection.Start from the second broker within {bound:?} \
             (got {:?} after {took:.2?})",
            first.map(|r| r.frame)
        );
        failover
            .log
            .wait_for(&["relayed to", "broker 2 of 2"], Duration::from_secs(1))?;
        Ok(())
    })())?;
    drop(silent);
    Ok(())
}
