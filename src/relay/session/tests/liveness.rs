//! Rules R4 to R7: the relay's own heartbeats, the quiet mark, the
//! broker verdict.

use super::*;

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
