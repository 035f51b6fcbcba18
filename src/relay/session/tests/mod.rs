//! Every session rule (docs/DESIGN.md: R1 to R10, R14, R17; R11 to R13,
//! R15, R16 and R18 live outside the session) against the session alone:
//! scripted bytes, a fake clock (instants built from one `t0`), no
//! sockets. The real-broker tests in tests/relay prove the driver.
//! Here: the helpers, frames and buffers (R1 to R3, R8, R9); `liveness`:
//! R4 to R7 and R17's drain; `closing`: R10 and the events; `login`: R14.

mod closing;
mod liveness;
mod login;
mod traffic;

use super::close_plan::{CLOSE_TIMEOUT, CloseOkWait, ClosePlan, Ending, SideClose, close_ok_scan};
use super::events::{EndKind, Event, Side};
use super::liveness::HiddenRead;
use super::phase::{Phase, Said};
use super::*;
use crate::relay::frame::{
    CONNECTION_FORCED, FRAME_BODY, FRAME_ERROR, FRAME_METHOD, HEARTBEAT_FRAME, INTERNAL_ERROR,
    REPLY_SUCCESS, SYNTAX_ERROR, UNEXPECTED_FRAME,
};
use crate::relay::methods;

const INTERVAL: u64 = 8;

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

fn frame(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    crate::relay::frame::encode(kind, channel, payload, &mut f);
    f
}

/// Connection.Tune (method 30) or TuneOk (31).
fn tune(method: u16, frame_max: u32, heartbeat: u16) -> Vec<u8> {
    let mut p = vec![0, 10];
    p.extend_from_slice(&method.to_be_bytes());
    p.extend_from_slice(&2047u16.to_be_bytes());
    p.extend_from_slice(&frame_max.to_be_bytes());
    p.extend_from_slice(&heartbeat.to_be_bytes());
    frame(FRAME_METHOD, 0, &p)
}

fn connection_start() -> Vec<u8> {
    frame(FRAME_METHOD, 0, &[0, 10, 0, 10, 0, 9, 0, 0, 0, 0])
}

/// The reply code and text of the Close frame in `bytes`.
fn close_of(bytes: &[u8]) -> (u16, String) {
    methods::close_reason(&bytes[7..bytes.len() - 1]).expect("a Connection.Close")
}

struct Sim {
    s: Session,
    t0: Instant,
}

impl Sim {
    fn new(quiet_capable: bool) -> Sim {
        let t0 = Instant::now();
        let config = SessionConfig {
            id: 7,
            relay_heartbeat: Duration::from_secs(INTERVAL),
            quiet_capable,
            login: None,
            handshake_timeout: HANDSHAKE_TIMEOUT,
        };
        Sim {
            s: Session::new(config, t0, BytesMut::new(), BytesMut::new()),
            t0,
        }
    }

    /// Tuned at t0 with the client's TuneOk asking for `client_heartbeat`.
    fn tuned(quiet_capable: bool, client_heartbeat: u16) -> Sim {
        let mut sim = Sim::new(quiet_capable);
        sim.feed(Side::Client, &tune(31, 131_072, client_heartbeat), 0.0)
            .unwrap();
        sim.take(Side::Broker, 0.0);
        sim
    }

    fn at(&self, s: f64) -> Instant {
        self.t0 + secs(s)
    }

    /// `bytes` read from `side` at time `t`, then processed.
    fn feed(&mut self, side: Side, bytes: &[u8], t: f64) -> Result<(), Ending> {
        let now = self.at(t);
        self.s.inbound(side).inbuf.extend_from_slice(bytes);
        self.s.on_read(side, bytes.len(), now);
        self.s.process(side, now)
    }

    /// Everything queued for `side`, written at time `t`.
    fn take(&mut self, side: Side, t: f64) -> Vec<u8> {
        let now = self.at(t);
        let out = self.s.outbound(side).take_out();
        let bytes: Vec<u8> = out.iter().flat_map(|b| b.iter().copied()).collect();
        if !bytes.is_empty() {
            self.s.on_written(side, bytes.len(), now);
        }
        bytes
    }

    /// The driver's round after its reads: verdict, then heartbeats.
    /// `hidden`: what the hidden read finds, if the session asks for one.
    fn round(&mut self, t: f64, awake: bool, hidden: Option<HiddenRead>) -> Result<(), Ending> {
        let now = self.at(t);
        if self.s.judge_broker(now)? {
            let read = hidden.expect("the session asked for a hidden read");
            if let HiddenRead::Bytes(n) = read {
                self.s
                    .inbound(Side::Broker)
                    .inbuf
                    .extend_from_slice(&HEARTBEAT_FRAME[..n]);
            }
            self.s.after_hidden_read(read, now)?;
        }
        self.s.queue_heartbeats(now, awake);
        Ok(())
    }

    /// The driver going to sleep: mark changes applied (Ok), then the timer.
    fn sleep(&mut self, t: f64) -> Option<Instant> {
        loop {
            match self.s.before_sleep(self.at(t)) {
                Action::SetQuietMark { raised } => self.s.on_quiet_mark(raised, Ok(())).unwrap(),
                Action::ArmTimer(at) => return at,
            }
        }
    }

    fn close(&mut self, ending: Ending) -> ClosePlan {
        let now = self.t0;
        self.s.close(ending, now)
    }
}

fn queued(side: &SideClose) -> Vec<u8> {
    match side {
        SideClose::Finish { queue, .. } => queue.iter().flat_map(|b| b.iter().copied()).collect(),
        SideClose::Drop => panic!("side dropped"),
    }
}

// R1: the client's TuneOk goes up with the relay's interval; the
// connection is tuned with the client's frame_max.
#[test]
fn r1_tune_ok_heartbeat_is_replaced_by_the_relay_interval() {
    let mut sim = Sim::new(true);
    sim.feed(Side::Client, &tune(31, 65_536, 0), 0.0).unwrap();
    assert_eq!(
        sim.take(Side::Broker, 0.0),
        tune(31, 65_536, INTERVAL as u16)
    );
    assert_eq!(sim.s.phase(), Phase::Tuned { frame_max: 65_536 });
}

/// A frame_max proposed, and what it becomes through the relay.
fn frame_max_caps() -> [(u32, u32); 5] {
    let cap = UNLIMITED_FRAME_MAX as u32;
    [
        (0, cap),
        (cap + 1, cap),
        (u32::MAX, cap),
        (cap, cap),
        (4096, 4096),
    ]
}

// R1: the broker sends frames up to the TuneOk's frame_max: one the relay
// would refuse (0, "no limit", or over the cap, from a client that ignored
// the capped Tune) goes up capped; one below AMQP's minimum is refused.
#[test]
fn r1_tune_ok_frame_max_is_capped_at_the_relays() {
    for (client, broker) in frame_max_caps() {
        let mut sim = Sim::new(true);
        sim.feed(Side::Client, &tune(31, client, 30), 0.0).unwrap();
        assert_eq!(
            sim.take(Side::Broker, 0.0),
            tune(31, broker, INTERVAL as u16),
            "client frame_max {client}"
        );
        assert_eq!(sim.s.phase().frame_max(), broker as usize);
    }
    let mut sim = Sim::new(true);
    match sim.feed(Side::Client, &tune(31, 7, 30), 0.0) {
        Err(Ending::ClientSentBadFrame { code: 530, text }) => assert_eq!(
            text,
            "relay: Connection.TuneOk frame_max 7 is below AMQP's minimum of 4096"
        ),
        other => panic!("{other:?}"),
    }
    let mut sim = Sim::new(true);
    match sim.feed(Side::Broker, &tune(30, 4095, 60), 0.0) {
        Err(Ending::BrokerSentBadFrame { code, text }) => {
            assert_eq!(code, SYNTAX_ERROR);
            assert!(text.contains("frame_max 4095 is below"), "{text}");
        }
        other => panic!("{other:?}"),
    }
}

// R2: the broker's Tune reaches the client with heartbeat 0, the rest
// unchanged.
#[test]
fn r2_tune_heartbeat_is_offered_to_the_client_as_zero() {
    let mut sim = Sim::new(true);
    let mut from_broker = connection_start();
    from_broker.extend(tune(30, 131_072, 60));
    sim.feed(Side::Broker, &from_broker, 0.0).unwrap();
    let mut expected = connection_start();
    expected.extend(tune(30, 131_072, 0));
    assert_eq!(sim.take(Side::Client, 0.0), expected);
    assert_eq!(sim.s.phase(), Phase::Handshake);
}

// R2: the broker's frame_max reaches the client capped at what the relay
// accepts; 0 ("no limit") becomes the cap, smaller values pass.
#[test]
fn r2_tune_frame_max_is_capped_at_the_relays() {
    for (broker, client) in frame_max_caps() {
        let mut sim = Sim::new(true);
        sim.feed(Side::Broker, &tune(30, broker, 60), 0.0).unwrap();
        assert_eq!(
            sim.take(Side::Client, 0.0),
            tune(30, client, 0),
            "broker frame_max {broker}"
        );
    }
}

// R3: heartbeats are absorbed both ways; everything else passes byte for
// byte, in order, handed over without a copy.
#[test]
fn r3_heartbeats_are_absorbed_and_other_frames_pass_untouched() {
    let mut sim = Sim::tuned(true, 0);
    let body = frame(FRAME_BODY, 1, b"payload");
    let mut bytes = HEARTBEAT_FRAME.to_vec();
    bytes.extend(&body);
    bytes.extend(HEARTBEAT_FRAME);
    sim.feed(Side::Client, &bytes, 1.0).unwrap();
    assert_eq!(sim.take(Side::Broker, 1.0), body);
    sim.feed(Side::Broker, &bytes, 1.0).unwrap();
    assert_eq!(sim.take(Side::Client, 1.0), body);

    // Zero copy: the queued chunk is the read buffer's own memory.
    sim.s.inbound(Side::Client).inbuf.reserve(64);
    let start = sim.s.inbound(Side::Client).inbuf.as_ptr() as usize;
    sim.feed(Side::Client, &body, 1.0).unwrap();
    let chunk = sim.s.outbound(Side::Broker).out()[0].clone();
    assert_eq!(chunk.as_ptr() as usize, start);
}

// R3: a client that asked for heartbeats gets relay heartbeats at its
// rate; its own silence is never held against it.
#[test]
fn r3_a_client_that_asked_for_heartbeats_gets_them() {
    let mut sim = Sim::tuned(true, 4);
    assert!(sim.s.liveness().heartbeats_client());
    sim.round(2.4, false, None).unwrap();
    assert!(sim.take(Side::Client, 2.4).is_empty());
    sim.round(2.5, false, None).unwrap();
    assert_eq!(sim.take(Side::Client, 2.5), HEARTBEAT_FRAME);
    // The broker keeps talking; the client says nothing for an hour.
    for t in (3..3600).step_by(4) {
        sim.feed(Side::Broker, &HEARTBEAT_FRAME, t as f64).unwrap();
        sim.round(t as f64, true, None).unwrap();
        sim.take(Side::Client, t as f64);
        sim.take(Side::Broker, t as f64);
    }
    // And one that asked for none gets none.
    let mut sim = Sim::tuned(true, 0);
    sim.feed(Side::Broker, &HEARTBEAT_FRAME, 9.0).unwrap();
    sim.round(10.0, true, None).unwrap();
    assert!(sim.take(Side::Client, 10.0).is_empty());
    assert_eq!(
        sim.s.liveness().next_deadline(false, true),
        Some(sim.at(25.0))
    );
}

// R8: each direction holds at most max(256 KiB, 2 x frame_max) bytes.
#[test]
fn r8_buffers_are_bounded_per_direction() {
    let mut sim = Sim::new(true);
    assert_eq!(sim.s.read_limit(Side::Client), Some(MIN_BUFFER));
    sim.feed(Side::Client, &tune(31, 1 << 20, 0), 0.0).unwrap();
    assert_eq!(sim.s.buffer_limit(), 2 << 20);
    let big = frame(FRAME_BODY, 1, &vec![7; (1 << 20) - 8]);
    sim.feed(Side::Client, &big, 0.0).unwrap();
    assert!(sim.s.read_limit(Side::Client).is_some());
    sim.feed(Side::Client, &big, 0.0).unwrap();
    assert_eq!(sim.s.read_limit(Side::Client), None, "full: stop reading");
    assert!(
        sim.s.read_limit(Side::Broker).is_some(),
        "the other way is not"
    );
    sim.take(Side::Broker, 0.0);
    assert!(sim.s.read_limit(Side::Client).is_some());
}

// R9: malformed client input ends the connection with the code a broker
// would send; a wrong protocol header is answered with the right one.
#[test]
fn r9_bad_client_input_is_a_frame_error_or_an_unexpected_frame() {
    let cases: [(&[u8], u16); 4] = [
        (&[9, 0, 0, 0, 0, 0, 0, 0xCE], UNEXPECTED_FRAME),
        (&[1, 0, 0, 0, 0, 0, 1, 0, 0xAB], FRAME_ERROR),
        (&[3, 0, 1, 0, 0x10, 0, 0], FRAME_ERROR),
        (&[8, 0, 0, 0, 0, 0, 1, 0, 0xCE], FRAME_ERROR),
    ];
    for (bytes, code) in cases {
        let mut sim = Sim::new(true);
        match sim.feed(Side::Client, bytes, 0.0) {
            Err(Ending::ClientSentBadFrame { code: got, .. }) => assert_eq!(got, code, "{bytes:?}"),
            other => panic!("{bytes:?}: {other:?}"),
        }
    }
    let mut sim = Sim::new(true);
    let mut short_tune_ok = tune(31, 0, 0);
    short_tune_ok.remove(short_tune_ok.len() - 2);
    short_tune_ok[6] -= 1;
    assert!(matches!(
        sim.feed(Side::Client, &short_tune_ok, 0.0),
        Err(Ending::ClientSentBadFrame {
            code: SYNTAX_ERROR,
            ..
        })
    ));
}

#[test]
fn r9_the_protocol_header_is_checked_byte_by_byte() {
    assert_eq!(check_protocol_header(b"AMQP"), HeaderCheck::Incomplete);
    assert_eq!(
        check_protocol_header(b"AMQP\x00\x00\x09\x01"),
        HeaderCheck::Ok
    );
    assert_eq!(
        check_protocol_header(b"AMQP\x01\x01\x00\x0A"),
        HeaderCheck::Wrong
    );
    assert_eq!(check_protocol_header(b"GET "), HeaderCheck::Wrong);
    let plan = close_plan::wrong_header(Instant::now());
    assert_eq!(queued(&plan.client), b"AMQP\x00\x00\x09\x01");
    assert!(plan.client.close_frame().is_none());
    assert!(matches!(plan.broker, SideClose::Drop));
}
