//! Close paths, as the broker sees them: every upstream ends with a
//! Connection.Close (RabbitMQ logs "closing AMQP connection"), never with a
//! vanished socket ("client unexpectedly closed TCP connection").

use crate::Env;
use crate::support::amqp::{Client, Ending, Tuning};
use crate::support::rabbit::Node;
use crate::support::relay::{Relay, Settings};
use amq_protocol::protocol::{AMQPClass, channel};
use mod_amqp_heartbeat::relay::Event;
use mod_amqp_heartbeat::relay::session::events::EndKind;
use mod_amqp_heartbeat::relay_thread::StopOutcome;
use std::time::{Duration, Instant};

fn closed_cleanly(node: &Node, port: u16, what: &str) -> Result<String, String> {
    node.wait_clean_close(port)
        .map_err(|e| format!("{what}: {e}"))
}

/// Client Close/CloseOk pass through: the client gets CloseOk and a closed
/// socket, the broker logs a normal close.
pub fn client_close_is_clean(env: &Env) -> Result<(), String> {
    let node = env.node()?;
    let relay = Relay::start(
        "client-close",
        Settings::new(&[&node.url()]).interval(2).build(),
    )?;
    relay.explain((|| {
        let c = Client::open(relay.addr, Tuning::default())?;
        let upstream = relay.upstream_port(c.local_port())?;
        let ending = c.close_ending()?;
        ensure!(
            ending == Ending::Eof,
            "after CloseOk and the client's FIN the relay's side ended with {ending:?}"
        );
        closed_cleanly(node, upstream, "client Close")?;
        relay.log.wait_for_event(
            "Closed ClosedByClient",
            |e| {
                matches!(
                    e,
                    Event::Closed {
                        kind: EndKind::ClosedByClient,
                        ..
                    }
                )
            },
            Duration::from_secs(3),
        )?;
        Ok(())
    })())
}

/// Broker Close/CloseOk pass through: a connection error the broker
/// detects (a second channel.open on channel 1, 504 CHANNEL_ERROR) reaches
/// the client as the broker's own Close, the client's CloseOk goes back,
/// and both sockets close.
pub fn broker_close_is_forwarded(env: &Env) -> Result<(), String> {
    let node = env.node()?;
    let relay = Relay::start(
        "broker-close",
        Settings::new(&[&node.url()]).interval(2).build(),
    )?;
    relay.explain((|| {
        let mut c = Client::open(relay.addr, Tuning::default())?;
        let upstream = relay.upstream_port(c.local_port())?;
        c.send(
            1,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        )?;
        let (code, text) = c.expect_close(Duration::from_secs(5))?;
        ensure!(
            code == 504 && text.contains("channel.open"),
            "expected the broker's Close 504 about channel.open, got {code} '{text}'"
        );
        let ending = c.read_ending(Duration::from_secs(5))?;
        ensure!(
            ending == Ending::Eof,
            "after the broker's Close and our CloseOk the socket ended with {ending:?}"
        );
        let entry = node.wait_log_entry(
            &["127.0.0.1:", &format!("{upstream} ->"), "channel_error"],
            Duration::from_secs(20),
        )?;
        ensure!(
            !entry.contains("unexpectedly closed"),
            "the broker saw the upstream vanish: {entry}"
        );
        relay.log.wait_for_event(
            "Closed ClosedByBroker",
            |e| {
                matches!(
                    e,
                    Event::Closed {
                        kind: EndKind::ClosedByBroker,
                        ..
                    }
                )
            },
            Duration::from_secs(3),
        )?;
        Ok(())
    })())
}

/// A client that drops its socket without Close: the relay closes upstream
/// with Connection.Close.
pub fn vanished_client_is_closed_upstream(env: &Env) -> Result<(), String> {
    let node = env.node()?;
    let relay = Relay::start(
        "vanished",
        Settings::new(&[&node.url()]).interval(2).build(),
    )?;
    relay.explain((|| {
        let mut c = Client::open(relay.addr, Tuning::default())?;
        c.confirm_select(1)?;
        let upstream = relay.upstream_port(c.local_port())?;
        drop(c);
        closed_cleanly(node, upstream, "vanished client")?;
        relay.log.wait_for_event(
            "Closed ClientGone",
            |e| {
                matches!(
                    e,
                    Event::Closed {
                        kind: EndKind::ClientGone,
                        ..
                    }
                )
            },
            Duration::from_secs(3),
        )?;
        let gone = node.connection(upstream)?;
        ensure!(
            gone.is_none(),
            "the broker still lists the upstream: {gone:?}"
        );
        Ok(())
    })())
}

/// RelayThread::stop(900 ms) with open connections: every upstream gets a
/// Connection.Close within the bound, every client a Close 320, and the
/// thread ends (StopOutcome::Clean).
pub fn stop_closes_every_upstream(env: &Env) -> Result<(), String> {
    let node = env.node()?;
    let relay = Relay::start("stop", Settings::new(&[&node.url()]).interval(2).build())?;
    let log = std::sync::Arc::clone(&relay.log);
    let explain =
        |r: Result<(), String>| r.map_err(|e| format!("{e}\n--- relay events:\n{}", log.text()));
    let mut clients = Vec::new();
    let mut upstreams = Vec::new();
    let setup = (|| {
        for hb in [0u16, 1, 60] {
            let mut c = Client::open(relay.addr, Tuning::heartbeat(hb))?;
            c.confirm_select(1)?;
            upstreams.push(relay.upstream_port(c.local_port())?);
            clients.push(c);
        }
        // One more that is still in its handshake (header sent, nothing else).
        let mut half = Client::connect(relay.addr)?;
        half.send_raw(crate::support::amqp::PROTOCOL_HEADER)?;
        clients.push(half);
        Ok(())
    })();
    explain(setup)?;
    std::thread::sleep(Duration::from_millis(200));

    // The module's own bound (R13), kept here although a loaded machine
    // leaves it little room: the shared broker answers a CloseOk in ms.
    let grace = Duration::from_millis(900);
    let started = Instant::now();
    let outcome = relay.stop(grace);
    let took = started.elapsed();
    explain((|| {
        ensure!(
            outcome == StopOutcome::Clean,
            "stop({grace:?}) returned {outcome:?} after {took:.2?}"
        );
        ensure!(
            // The join after the thread's last word: room for a wake-up.
            took <= grace + Duration::from_millis(300),
            "stop({grace:?}) took {took:.2?}"
        );
        let tuned = clients.len() - 1;
        for (i, c) in clients.iter_mut().enumerate().take(tuned) {
            let (code, text) = c
                .expect_close(Duration::from_secs(2))
                .map_err(|e| format!("client {i}: {e}"))?;
            ensure!(
                code == 320,
                "client {i}: Connection.Close {code} '{text}', expected 320"
            );
            let ending = c.read_ending(Duration::from_secs(2))?;
            ensure!(
                ending == Ending::Eof,
                "client {i}: the socket ended with {ending:?}"
            );
        }
        let half = clients.last_mut().ok_or("no clients")?;
        let ending = half.read_ending(Duration::from_secs(2))?;
        ensure!(
            ending != Ending::Timeout,
            "the connection still in its handshake was left open"
        );
        eprintln!("stop({grace:?}): {outcome:?} after {took:.2?}");
        for (i, port) in upstreams.iter().enumerate() {
            closed_cleanly(node, *port, &format!("upstream {i} at stop"))?;
        }
        Ok(())
    })())
}
