//! Every relay rule (docs/DESIGN.md, R1 to R10) against the session alone:
//! scripted bytes, a fake clock (instants built from one `t0`), no
//! sockets. The real-broker tests in tests/relay prove the driver.

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
    let mut f = vec![kind];
    f.extend_from_slice(&channel.to_be_bytes());
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f.push(0xCE);
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
    // frame_max 0 ("no limit") is capped.
    let mut sim = Sim::new(true);
    sim.feed(Side::Client, &tune(31, 0, 30), 0.0).unwrap();
    assert_eq!(sim.take(Side::Broker, 0.0), tune(31, 0, INTERVAL as u16));
    assert_eq!(sim.s.phase().frame_max(), UNLIMITED_FRAME_MAX);
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

// R4: the relay heartbeats the broker on its own after 5/8 x interval of
// silence; not before TuneOk, and a write restarts the timer.
#[test]
fn r4_own_timer_sends_after_five_eighths_of_the_interval() {
    let mut sim = Sim::new(true);
    sim.round(100.0, false, None).unwrap();
    assert!(
        sim.take(Side::Broker, 100.0).is_empty(),
        "nothing before TuneOk"
    );
    assert_eq!(sim.sleep(100.0), None);

    let mut sim = Sim::tuned(true, 0);
    assert_eq!(sim.sleep(0.0), Some(sim.at(5.0)));
    sim.round(4.9, false, None).unwrap();
    assert!(sim.take(Side::Broker, 4.9).is_empty());
    sim.round(5.0, false, None).unwrap();
    assert_eq!(sim.take(Side::Broker, 5.0), HEARTBEAT_FRAME);
    // Queued bytes go first: no heartbeat while the queue is not empty.
    sim.feed(Side::Client, &frame(FRAME_BODY, 1, b"x"), 6.0)
        .unwrap();
    sim.round(11.0, false, None).unwrap();
    assert_eq!(sim.s.outbound(Side::Broker).out().len(), 1);
}

// R5: awake anyway (something was read), a heartbeat rides along once
// interval/4 has passed since the last write.
#[test]
fn r5_a_heartbeat_rides_along_when_the_relay_is_awake_anyway() {
    let mut sim = Sim::tuned(true, 0);
    sim.feed(Side::Broker, &HEARTBEAT_FRAME, 1.9).unwrap();
    sim.round(1.9, true, None).unwrap();
    assert!(sim.take(Side::Broker, 1.9).is_empty(), "before interval/4");
    sim.round(2.0, false, None).unwrap();
    assert!(sim.take(Side::Broker, 2.0).is_empty(), "not awake anyway");
    sim.feed(Side::Broker, &HEARTBEAT_FRAME, 2.0).unwrap();
    sim.round(2.0, true, None).unwrap();
    assert_eq!(sim.take(Side::Broker, 2.0), HEARTBEAT_FRAME);
}

// R6: idle for interval/2 with nothing pending, the mark is raised; any
// frame other than a heartbeat lowers it; raised, the own timer moves to
// 5/4 x interval.
#[test]
fn r6_quiet_mark_is_raised_when_idle_and_lowered_by_traffic() {
    let mut sim = Sim::tuned(true, 0);
    assert_eq!(
        sim.s.before_sleep(sim.at(3.9)),
        Action::ArmTimer(Some(sim.at(5.0)))
    );
    assert_eq!(
        sim.s.before_sleep(sim.at(4.0)),
        Action::SetQuietMark { raised: true }
    );
    sim.s.on_quiet_mark(true, Ok(())).unwrap();
    assert!(sim.s.liveness().quiet_raised());
    assert_eq!(
        sim.sleep(4.0),
        Some(sim.at(10.0)),
        "own timer at 5/4 x interval"
    );
    // A heartbeat from the broker is not traffic.
    sim.feed(Side::Broker, &HEARTBEAT_FRAME, 8.0).unwrap();
    assert_eq!(
        sim.s.before_sleep(sim.at(8.0)),
        Action::ArmTimer(Some(sim.at(10.0)))
    );
    // A frame is.
    sim.feed(Side::Broker, &frame(FRAME_BODY, 1, b"x"), 9.0)
        .unwrap();
    sim.take(Side::Client, 9.0);
    assert_eq!(
        sim.s.before_sleep(sim.at(9.0)),
        Action::SetQuietMark { raised: false }
    );
}

#[test]
fn r6_no_quiet_mark_with_bytes_pending_before_tune_or_under_tls() {
    let mut sim = Sim::tuned(true, 0);
    sim.feed(Side::Broker, &HEARTBEAT_FRAME[..3], 0.0).unwrap();
    assert!(matches!(
        sim.s.before_sleep(sim.at(6.0)),
        Action::ArmTimer(_)
    ));
    let sim = Sim::new(true);
    assert_eq!(sim.s.before_sleep(sim.at(60.0)), Action::ArmTimer(None));
    let sim = Sim::tuned(false, 0);
    assert!(matches!(
        sim.s.before_sleep(sim.at(60.0)),
        Action::ArmTimer(_)
    ));
}

#[test]
fn r6_a_mark_that_cannot_be_raised_is_given_up_one_that_cannot_be_lowered_ends() {
    let mut sim = Sim::tuned(true, 0);
    let fail = || Err(std::io::Error::other("setsockopt"));
    sim.s.on_quiet_mark(true, fail()).unwrap();
    assert_eq!(
        sim.s.before_sleep(sim.at(60.0)),
        Action::ArmTimer(Some(sim.at(5.0)))
    );

    let mut sim = Sim::tuned(true, 0);
    assert_eq!(sim.sleep(4.0), Some(sim.at(10.0)));
    let ending = sim.s.on_quiet_mark(false, fail()).unwrap_err();
    assert!(matches!(ending, Ending::BrokerGone(Some(_))));
}

// R7: the broker is dead after 2 x interval with nothing received.
#[test]
fn r7_a_silent_broker_is_declared_dead_after_two_intervals() {
    let mut sim = Sim::tuned(false, 0);
    sim.feed(Side::Broker, &HEARTBEAT_FRAME, 4.0).unwrap();
    sim.round(19.9, false, None).unwrap();
    match sim.round(20.0, false, None) {
        Err(Ending::BrokerSilent(silence)) => assert_eq!(silence, secs(16.0)),
        other => panic!("expected BrokerSilent, got {other:?}"),
    }
}

// R7: while the relay does not read the broker (the client is not taking
// its deliveries), silence does not count; resuming opens a fresh window.
#[test]
fn r7_back_pressure_pauses_the_dead_broker_verdict() {
    let mut sim = Sim::tuned(false, 0);
    let limit = sim.s.buffer_limit();
    let big = frame(FRAME_BODY, 1, &vec![0; 100_000]);
    let mut t = 1.0;
    while sim.s.read_limit(Side::Broker).is_some() {
        sim.feed(Side::Broker, &big, t).unwrap();
        t += 0.001;
    }
    assert!(sim.s.inbound(Side::Broker).held() >= limit);
    sim.round(100.0, false, None).unwrap();
    assert_eq!(
        sim.take(Side::Broker, 100.0),
        HEARTBEAT_FRAME,
        "the broker is still heartbeated"
    );
    assert_eq!(sim.sleep(100.0), Some(sim.at(105.0)), "no death deadline");
    // The client reads it all; the watch resumes with a fresh window.
    sim.take(Side::Client, 100.0);
    sim.round(100.0, false, None).unwrap();
    sim.round(115.9, false, None).unwrap();
    assert!(matches!(
        sim.round(116.0, false, None),
        Err(Ending::BrokerSilent(_))
    ));
}

// R7 with R6: before declaring a quiet broker dead, the relay reads what
// the raised mark may hide; a heartbeat found there counts as at most one
// interval old.
#[test]
fn r7_the_hidden_read_runs_before_the_verdict() {
    let quiet = |sim: &mut Sim| {
        assert_eq!(sim.sleep(4.0), Some(sim.at(10.0)));
        assert!(sim.s.liveness().quiet_raised());
    };
    let mut sim = Sim::tuned(true, 0);
    quiet(&mut sim);
    sim.round(16.0, false, Some(HiddenRead::Bytes(8))).unwrap();
    sim.s.process(Side::Broker, sim.at(16.0)).unwrap();
    assert!(
        sim.take(Side::Client, 16.0).is_empty(),
        "the hidden heartbeat is absorbed"
    );
    // Taken as received at 16 - 8 = 8: dead at 8 + 16 = 24.
    sim.round(23.9, false, Some(HiddenRead::Nothing)).unwrap();
    assert!(matches!(
        sim.round(24.0, false, Some(HiddenRead::Nothing)),
        Err(Ending::BrokerSilent(_))
    ));

    let mut sim = Sim::tuned(true, 0);
    quiet(&mut sim);
    assert!(matches!(
        sim.round(16.0, false, Some(HiddenRead::Nothing)),
        Err(Ending::BrokerSilent(s)) if s == secs(16.0)
    ));

    let mut sim = Sim::tuned(true, 0);
    quiet(&mut sim);
    sim.round(16.0, false, Some(HiddenRead::Eof)).unwrap();
    assert!(matches!(
        sim.s.broker_ended(),
        Some(Ending::BrokerGone(None))
    ));
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

// R10, one test per row of the close-plan table.
#[test]
fn r10_client_gone_without_close_closes_upstream_and_waits_for_close_ok() {
    let mut sim = Sim::tuned(true, 0);
    sim.feed(Side::Client, &frame(FRAME_BODY, 1, b"last"), 1.0)
        .unwrap();
    let plan = sim.close(Ending::ClientGone(None));
    assert_eq!(plan.kind, EndKind::ClientGone);
    assert!(matches!(plan.client, SideClose::Drop));
    let SideClose::Finish {
        queue,
        close,
        await_close_ok,
        ..
    } = &plan.broker
    else {
        panic!("broker dropped");
    };
    assert_eq!(queue.len(), 1, "what the client sent still goes up first");
    assert_eq!(close_of(close.as_ref().unwrap()).0, REPLY_SUCCESS);
    assert!(await_close_ok);
    assert_eq!(plan.deadline, sim.t0 + CLOSE_TIMEOUT);
    assert!(plan.announcement(7).is_none());
}

#[test]
fn r10_client_gone_before_tune_or_after_its_close_sends_no_close() {
    let mut sim = Sim::new(true);
    let plan = sim.close(Ending::ClientGone(None));
    assert!(plan.broker.close_frame().is_none());

    let mut sim = Sim::tuned(true, 0);
    sim.feed(Side::Client, &methods::close_frame(200, "bye"), 1.0)
        .unwrap();
    assert_eq!(sim.s.peer(Side::Client).said, Said::Close);
    let plan = sim.close(Ending::ClientGone(None));
    assert_eq!(plan.kind, EndKind::ClosedByClient);
    assert_eq!(plan.summary, "closed by the client (Connection.Close)");
    let SideClose::Finish {
        close,
        await_close_ok,
        ..
    } = &plan.broker
    else {
        panic!("broker dropped");
    };
    assert!(close.is_none());
    assert!(await_close_ok, "the broker's CloseOk is still awaited");
}

#[test]
fn r10_broker_close_reaches_the_client_as_the_broker_sent_it() {
    let mut sim = Sim::tuned(true, 0);
    let close = methods::close_frame(320, "CONNECTION_FORCED - closed via management plugin");
    sim.feed(Side::Broker, &close, 1.0).unwrap();
    sim.s.on_read(Side::Broker, 0, sim.at(1.0));
    let ending = sim.s.broker_ended().unwrap();
    let plan = sim.close(ending);
    assert_eq!(plan.kind, EndKind::ClosedByBroker);
    assert_eq!(queued(&plan.client), close.to_vec());
    assert!(plan.client.close_frame().is_none());
    assert!(matches!(plan.broker, SideClose::Drop));

    let mut sim = Sim::tuned(true, 0);
    sim.feed(Side::Client, &methods::close_frame(200, "bye"), 1.0)
        .unwrap();
    sim.feed(Side::Broker, &methods::close_ok_frame(), 1.0)
        .unwrap();
    let plan = sim.close(Ending::BrokerGone(None));
    assert_eq!(plan.kind, EndKind::ClosedByClient);
}

#[test]
fn r10_broker_lost_or_silent_tells_the_client_320() {
    for (ending, kind, text) in [
        (
            Ending::BrokerGone(None),
            EndKind::BrokerLost,
            "relay: connection to the broker lost: the broker closed the TCP connection",
        ),
        (
            Ending::BrokerGone(Some(std::io::Error::other("reset"))),
            EndKind::BrokerLost,
            "relay: connection to the broker lost: reset",
        ),
        (
            Ending::BrokerSilent(secs(16.0)),
            EndKind::BrokerSilent,
            "relay: broker missed heartbeats: nothing received for 16.0s (limit 2 x 8s)",
        ),
    ] {
        let mut sim = Sim::tuned(true, 0);
        sim.feed(Side::Broker, &frame(FRAME_BODY, 1, b"delivered"), 1.0)
            .unwrap();
        let plan = sim.close(ending);
        assert_eq!(plan.kind, kind);
        let to_client = queued(&plan.client);
        assert_eq!(
            to_client,
            frame(FRAME_BODY, 1, b"delivered"),
            "queued frames first"
        );
        assert_eq!(
            close_of(plan.client.close_frame().unwrap()),
            (CONNECTION_FORCED, text.to_string())
        );
        assert!(matches!(plan.broker, SideClose::Drop));
        let Some(Event::SentClose {
            to: Side::Client,
            code: 320,
            ..
        }) = plan.announcement(7)
        else {
            panic!("no announcement");
        };
    }
}

#[test]
fn r10_a_bad_client_frame_gets_the_client_a_close_and_the_broker_a_clean_close() {
    let mut sim = Sim::tuned(true, 0);
    sim.feed(Side::Broker, &frame(FRAME_BODY, 1, b"dropped"), 1.0)
        .unwrap();
    let ending = sim
        .feed(Side::Client, &[0x47, 0x45, 0x54], 1.0)
        .unwrap_err();
    let plan = sim.close(ending);
    assert_eq!(plan.kind, EndKind::ClientBadFrame);
    assert!(matches!(&plan.client, SideClose::Finish { queue, .. } if queue.is_empty()));
    let (code, text) = close_of(plan.client.close_frame().unwrap());
    assert_eq!(code, UNEXPECTED_FRAME);
    assert_eq!(
        text,
        "relay: client sent a malformed frame: unknown frame type 71"
    );
    let (code, _) = close_of(plan.broker.close_frame().unwrap());
    assert_eq!(code, REPLY_SUCCESS);
    assert!(matches!(
        plan.broker,
        SideClose::Finish {
            await_close_ok: true,
            ..
        }
    ));
}

#[test]
fn r10_a_bad_broker_frame_gets_the_broker_the_error_and_the_client_320() {
    let mut sim = Sim::tuned(true, 0);
    let ending = sim
        .feed(Side::Broker, &[1, 0, 0, 0, 0, 0, 0, 0x00], 1.0)
        .unwrap_err();
    let plan = sim.close(ending);
    assert_eq!(plan.kind, EndKind::BrokerBadFrame);
    assert_eq!(close_of(plan.broker.close_frame().unwrap()).0, FRAME_ERROR);
    assert_eq!(
        close_of(plan.client.close_frame().unwrap()).0,
        CONNECTION_FORCED
    );
    assert!(
        matches!(&plan.broker, SideClose::Finish { queue, unread, await_close_ok: true, .. } if queue.is_empty() && unread.is_empty())
    );
}

#[test]
fn r10_shutdown_closes_both_sides_within_the_grace_period() {
    let mut sim = Sim::tuned(true, 0);
    let plan = sim.close(Ending::Shutdown(secs(1.0)));
    assert_eq!(plan.deadline, sim.t0 + secs(1.0));
    assert_eq!(
        close_of(plan.client.close_frame().unwrap()),
        (
            CONNECTION_FORCED,
            "relay: httpd child is exiting".to_string()
        )
    );
    assert_eq!(
        close_of(plan.broker.close_frame().unwrap()).0,
        REPLY_SUCCESS
    );
    // Before TuneOk the broker is owed nothing.
    let mut sim = Sim::new(true);
    let plan = sim.close(Ending::Shutdown(secs(1.0)));
    assert!(plan.broker.close_frame().is_none());
    assert!(matches!(
        plan.broker,
        SideClose::Finish {
            await_close_ok: false,
            ..
        }
    ));
}

#[test]
fn r10_a_failed_timer_is_an_internal_error() {
    let mut sim = Sim::tuned(true, 0);
    let plan = sim.close(Ending::TimerFailed(std::io::Error::other("timerfd")));
    assert_eq!(
        close_of(plan.client.close_frame().unwrap()).0,
        INTERNAL_ERROR
    );
    assert_eq!(
        close_of(plan.broker.close_frame().unwrap()).0,
        REPLY_SUCCESS
    );
}

#[test]
fn r10_the_close_ok_wait_answers_a_close_and_skips_other_frames() {
    let mut buf = BytesMut::from(&frame(FRAME_BODY, 1, b"late")[..]);
    assert_eq!(close_ok_scan(&mut buf), CloseOkWait::More);
    buf.extend_from_slice(&methods::close_ok_frame());
    assert_eq!(close_ok_scan(&mut buf), CloseOkWait::Done);
    let mut buf = BytesMut::from(&methods::close_frame(320, "x")[..]);
    assert_eq!(close_ok_scan(&mut buf), CloseOkWait::AnswerCloseOk);
}

// Events carry their fields; the text is rendered in one place.
#[test]
fn events_render_the_log_lines_operators_and_tests_grep() {
    let mut sim = Sim::tuned(true, 0);
    sim.feed(Side::Client, &frame(FRAME_BODY, 1, b"abc"), 1.0)
        .unwrap();
    sim.take(Side::Broker, 1.0);
    let event = sim.s.closed_event(
        EndKind::ClosedByClient,
        "closed by the client (Connection.Close)".into(),
        sim.at(2.5),
    );
    let Event::Closed {
        id: 7,
        bytes_to_broker,
        bytes_to_client: 0,
        after,
        ..
    } = &event
    else {
        panic!("{event:?}");
    };
    assert_eq!(*bytes_to_broker, tune(31, 0, 0).len() as u64 + 11);
    assert_eq!(*after, secs(2.5));
    assert_eq!(
        event.to_string(),
        "connection #7: closed: closed by the client (Connection.Close) (after 2.5s, 31 bytes to the broker, 0 bytes to the client)"
    );
    assert_eq!(event.level(), crate::relay::Level::Info);
}
