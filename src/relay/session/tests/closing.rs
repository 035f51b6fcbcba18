//! Rule R10, one test per row of the close-plan table; the events.

use super::*;

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

// R10: bytes that are not frames end the CloseOk wait at once, with
// nothing kept, so a hostile broker cannot make the wait grow memory.
#[test]
fn r10_the_close_ok_wait_gives_up_on_bytes_that_are_not_frames() {
    // A frame of an unknown type, then zeros (what a hostile broker sent).
    let mut buf = BytesMut::from(&[9u8, 0, 0, 0, 0, 0, 0][..]);
    buf.extend_from_slice(&[0u8; 4096]);
    assert_eq!(close_ok_scan(&mut buf), CloseOkWait::GiveUp);
    assert!(buf.is_empty());
    // Zeros after a skipped frame.
    let mut buf = BytesMut::from(&frame(FRAME_BODY, 1, b"late")[..]);
    buf.extend_from_slice(&[0u8; 64]);
    assert_eq!(close_ok_scan(&mut buf), CloseOkWait::GiveUp);
    // A frame announced larger than any the relay accepts is not waited for.
    let mut huge = vec![FRAME_BODY, 0, 1];
    huge.extend_from_slice(&(UNLIMITED_FRAME_MAX as u32 + 1).to_be_bytes());
    let mut buf = BytesMut::from(&huge[..]);
    assert_eq!(close_ok_scan(&mut buf), CloseOkWait::GiveUp);
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

#[test]
fn the_relays_own_closes_are_announced_with_the_level_of_their_cause() {
    use crate::relay::Level;
    let announced = |ending| {
        let mut sim = Sim::tuned(true, 0);
        let plan = sim.close(ending);
        let event = plan.announcement(7).expect("announced");
        (event.level(), event.to_string())
    };
    assert_eq!(
        announced(Ending::BrokerGone(None)),
        (
            Level::Warn,
            "connection #7: connection to the broker lost: the broker closed the TCP connection; sent Connection.Close 320 to the client".to_string()
        )
    );
    assert_eq!(announced(Ending::BrokerSilent(secs(16.0))).0, Level::Error);
    let bad = Ending::bad_frame(
        Side::Broker,
        &crate::relay::frame::FrameError::BadFrameEnd(0),
    );
    let (level, text) = announced(bad);
    assert_eq!(level, Level::Error);
    assert!(
        text.ends_with("sent Connection.Close 501 to the broker"),
        "{text}"
    );
    let bad = Ending::bad_frame(
        Side::Client,
        &crate::relay::frame::FrameError::UnknownType(9),
    );
    assert_eq!(announced(bad).0, Level::Warn);
    // Clean closes and the child's exit are not announced, only summed up.
    let mut sim = Sim::tuned(true, 0);
    assert!(
        sim.close(Ending::Shutdown(secs(1.0)))
            .announcement(7)
            .is_none()
    );
}

#[test]
fn a_client_the_relay_does_not_serve_gets_a_plain_end_of_stream() {
    let plan = close_plan::close_client_silently(Instant::now());
    assert!(queued(&plan.client).is_empty());
    assert!(plan.client.close_frame().is_none());
    assert!(matches!(plan.broker, SideClose::Drop));
}

#[test]
fn the_relayed_line_names_the_broker_and_the_upstream_port() {
    let event = Event::Relayed {
        id: 3,
        peer: "127.0.0.1:40000".parse().unwrap(),
        broker: "amqp://127.0.0.1:5672/".to_string(),
        broker_index: 1,
        brokers: 2,
        upstream: Some("127.0.0.1:41000".parse().unwrap()),
    };
    assert_eq!(
        event.to_string(),
        "connection #3: client 127.0.0.1:40000 relayed to amqp://127.0.0.1:5672/ (broker 2 of 2), upstream from 127.0.0.1:41000"
    );
}
