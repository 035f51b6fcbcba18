//! Rules R4 to R7: the relay's own heartbeats, the quiet mark, the
//! broker verdict.

use super::*;

// R4: the relay heartbeats the broker on its own after 5/8 x interval of
// silence; not before TuneOk, and a write restarts the timer.
#[test]
fn r4_own_timer_sends_after_five_eighths_of_the_interval() {
    let mut sim = Sim::new(true);
    sim.round(50.0, false, None).unwrap();
    assert!(
        sim.take(Side::Broker, 50.0).is_empty(),
        "nothing before TuneOk"
    );
    // Only the handshake's own bound (R12) is armed.
    assert_eq!(sim.sleep(50.0), Some(sim.t0 + HANDSHAKE_TIMEOUT));

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
    assert_eq!(
        sim.s.before_sleep(sim.at(30.0)),
        Action::ArmTimer(Some(sim.t0 + HANDSHAKE_TIMEOUT))
    );
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

// R17: a sleeping connection says from when waking it early is worth it
// (a heartbeat would ride along: interval/4 after the last write), so the
// thread can wake it together with others; not for a side with bytes
// queued (no heartbeat can pass them).
#[test]
fn r17_an_early_wakeup_is_worth_it_from_a_quarter_interval_after_the_last_write() {
    let sim = Sim::new(true);
    assert_eq!(sim.s.worth_waking_from(), None, "nothing before TuneOk");
    let mut sim = Sim::tuned(false, 0);
    assert_eq!(sim.sleep(0.0), Some(sim.at(5.0)));
    assert_eq!(sim.s.worth_waking_from(), Some(sim.at(2.0)));
    sim.take(Side::Broker, 1.0);
    sim.feed(Side::Client, &frame(FRAME_BODY, 1, b"x"), 1.0)
        .unwrap();
    sim.take(Side::Broker, 1.0);
    assert_eq!(sim.s.worth_waking_from(), Some(sim.at(3.0)));
    sim.feed(Side::Client, &frame(FRAME_BODY, 1, b"y"), 1.5)
        .unwrap();
    assert_eq!(sim.s.worth_waking_from(), None, "bytes queued upstream");
    // A client that asked for heartbeats (every 4 s) has its own window.
    let sim = Sim::tuned(false, 4);
    assert_eq!(sim.s.worth_waking_from(), Some(sim.at(1.0)));
}

// R17 with R6 and R7: woken on purpose, a quiet connection drains what
// the raised mark hides. Bytes there count as received at the drain (the
// latest they can have arrived), so a live broker is never judged early;
// nothing there is not a verdict; end of stream is the broker gone.
#[test]
fn r17_a_drain_counts_hidden_bytes_as_received_at_the_drain() {
    let mut sim = Sim::tuned(true, 0);
    assert_eq!(sim.sleep(4.0), Some(sim.at(10.0)));
    assert!(sim.s.drain_wanted());
    sim.s
        .inbound(Side::Broker)
        .inbuf
        .extend_from_slice(&HEARTBEAT_FRAME);
    sim.s
        .after_drain(HiddenRead::Bytes(8), sim.at(9.0))
        .unwrap();
    sim.s.process(Side::Broker, sim.at(9.0)).unwrap();
    assert!(sim.take(Side::Client, 9.0).is_empty(), "absorbed");
    // Received at 9: alive until 9 + 16 = 25 (the verdict's hidden read
    // would have counted it at 9 - 8 = 1, dead at 17).
    sim.round(24.9, false, Some(HiddenRead::Nothing)).unwrap();
    assert!(matches!(
        sim.round(25.0, false, Some(HiddenRead::Nothing)),
        Err(Ending::BrokerSilent(s)) if s == secs(16.0)
    ));

    let mut sim = Sim::tuned(true, 0);
    sim.sleep(4.0);
    sim.s
        .after_drain(HiddenRead::Nothing, sim.at(15.9))
        .unwrap();
    assert!(sim.s.broker_ended().is_none());
    sim.s.after_drain(HiddenRead::Eof, sim.at(15.9)).unwrap();
    assert!(matches!(
        sim.s.broker_ended(),
        Some(Ending::BrokerGone(None))
    ));

    let mut sim = Sim::tuned(false, 0);
    sim.sleep(4.0);
    assert!(!sim.s.drain_wanted(), "no mark, nothing hidden");
}

// R12: the handshake is bounded: HANDSHAKE_TIMEOUT from the broker's
// Start to the client's TuneOk, whichever side stalls; the timer is armed
// for it, the client is told why (Close 320), the broker, owed no Close
// before TuneOk, sees the TCP connection end.
#[test]
fn r12_a_stalled_handshake_ends_at_its_timeout() {
    let limit = HANDSHAKE_TIMEOUT.as_secs_f64();
    let start_ok = frame(FRAME_METHOD, 0, &[0, 10, 0, 11]);
    let tune_frame = tune(30, 131_072, 60);
    // A broker that stops in the middle of its Tune; a client that never
    // answers Start.
    for (waiting_for, script) in [
        (
            Side::Broker,
            vec![
                (Side::Client, start_ok.clone()),
                (Side::Broker, tune_frame[..10].to_vec()),
            ],
        ),
        (Side::Client, vec![]),
    ] {
        let mut sim = Sim::new(true);
        sim.feed(Side::Broker, &connection_start(), 0.0).unwrap();
        for (side, bytes) in script {
            sim.feed(side, &bytes, 1.0).unwrap();
        }
        assert_eq!(sim.sleep(1.0), Some(sim.at(limit)));
        sim.round(limit - 0.1, false, None).unwrap();
        let ending = sim.round(limit, false, None).unwrap_err();
        assert!(
            matches!(ending, Ending::HandshakeTimedOut { waiting_for: w, .. } if w == waiting_for),
            "{ending:?}"
        );
        let plan = sim.close(ending);
        assert_eq!(plan.kind, EndKind::HandshakeTimedOut);
        let close = plan.client.close_frame().expect("a Close for the client");
        assert_eq!(
            close_of(close),
            (
                CONNECTION_FORCED,
                format!(
                    "relay: AMQP handshake not complete after 60 s (waiting for the {waiting_for})"
                )
            )
        );
        assert!(matches!(plan.broker, SideClose::Drop));
    }
    // Once tuned, only the heartbeat rules judge the broker.
    let mut sim = Sim::tuned(true, 0);
    sim.feed(Side::Broker, &HEARTBEAT_FRAME, limit - 1.0)
        .unwrap();
    sim.round(limit + 1.0, false, None).unwrap();
}
