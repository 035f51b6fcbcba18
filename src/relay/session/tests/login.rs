//! R14: relay-side login, against the session alone.

use super::*;
use crate::relay::login::Credentials;
use amq_protocol::protocol::{AMQPClass, connection, parse_class};

fn start_offering(mechanisms: &str) -> Vec<u8> {
    let mut p = vec![0, 10, 0, 10, 0, 9, 0, 0, 0, 0];
    p.extend_from_slice(&(mechanisms.len() as u32).to_be_bytes());
    p.extend_from_slice(mechanisms.as_bytes());
    p.extend_from_slice(&5u32.to_be_bytes());
    p.extend_from_slice(b"en_US");
    frame(FRAME_METHOD, 0, &p)
}

/// A client's StartOk: empty properties, PLAIN guest/guest, locale en_US.
fn client_start_ok() -> Vec<u8> {
    let mut p = vec![0, 10, 0, 11, 0, 0, 0, 0, 5];
    p.extend_from_slice(b"PLAIN");
    p.extend_from_slice(&12u32.to_be_bytes());
    p.extend_from_slice(b"\0guest\0guest");
    p.push(5);
    p.extend_from_slice(b"en_US");
    frame(FRAME_METHOD, 0, &p)
}

fn with_login() -> Sim {
    let t0 = Instant::now();
    let config = SessionConfig {
        id: 7,
        relay_heartbeat: Duration::from_secs(INTERVAL),
        quiet_capable: true,
        login: Some(Credentials::new("nova", "s3cret")),
        handshake_timeout: HANDSHAKE_TIMEOUT,
    };
    Sim {
        s: Session::new(config, t0, BytesMut::new(), BytesMut::new()),
        t0,
    }
}

fn start_ok_of(bytes: &[u8]) -> connection::StartOk {
    match parse_class(&bytes[7..bytes.len() - 1]) {
        Ok((_, AMQPClass::Connection(connection::AMQPMethod::StartOk(ok)))) => ok,
        other => panic!("not a StartOk: {other:?}"),
    }
}

#[test]
fn r14_the_clients_start_ok_is_replaced_by_the_relays_login() {
    let mut sim = with_login();
    sim.feed(Side::Broker, &start_offering("AMQPLAIN PLAIN"), 0.0)
        .unwrap();
    // The Start reaches the client untouched.
    assert_eq!(
        sim.take(Side::Client, 0.0),
        start_offering("AMQPLAIN PLAIN")
    );
    // The StartOk and a heartbeat after it: the StartOk is replaced, in
    // order, and what follows it still passes.
    let mut from_client = client_start_ok();
    from_client.extend(tune(31, 131_072, 0));
    sim.feed(Side::Client, &from_client, 0.1).unwrap();
    let up = sim.take(Side::Broker, 0.1);
    let ok = start_ok_of(&up);
    assert_eq!(ok.mechanism.as_str(), "PLAIN");
    assert_eq!(ok.response.as_bytes(), b"\0nova\0s3cret");
    assert!(up.ends_with(&tune(31, 131_072, INTERVAL as u16)));
}

#[test]
fn r14_without_credentials_the_clients_start_ok_passes_byte_for_byte() {
    let mut sim = Sim::new(true);
    sim.feed(Side::Broker, &start_offering("PLAIN"), 0.0)
        .unwrap();
    sim.feed(Side::Client, &client_start_ok(), 0.1).unwrap();
    assert_eq!(sim.take(Side::Broker, 0.1), client_start_ok());
}

#[test]
fn r14_a_broker_without_plain_or_amqplain_ends_the_connection_with_the_reason() {
    let mut sim = with_login();
    sim.feed(Side::Broker, &start_offering("EXTERNAL"), 0.0)
        .unwrap();
    let ending = sim.feed(Side::Client, &client_start_ok(), 0.1).unwrap_err();
    let plan = sim.close(ending);
    let (code, text) = close_of(plan.client.close_frame().unwrap());
    assert_eq!(code, CONNECTION_FORCED);
    assert!(
        text.contains("no mechanism") && text.contains("EXTERNAL"),
        "{text}"
    );
    // Nothing of the client's StartOk went up.
    assert!(sim.take(Side::Broker, 0.1).is_empty());
}

#[test]
fn r14_a_start_ok_before_the_brokers_start_is_unexpected() {
    let mut sim = with_login();
    let ending = sim.feed(Side::Client, &client_start_ok(), 0.0).unwrap_err();
    assert!(
        matches!(ending, Ending::ClientSentBadFrame { code, .. } if code == UNEXPECTED_FRAME),
        "{ending:?}"
    );
}
