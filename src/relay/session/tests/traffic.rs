//! What the session reports for the status page (`Session::traffic`):
//! frames and bytes each way, heartbeats sent and absorbed, the last
//! broker bytes, the tuned values and back-pressure.

use super::*;

#[test]
fn traffic_counts_frames_bytes_and_heartbeats_each_way() {
    let mut sim = Sim::new(false);
    assert_eq!(sim.s.traffic().heartbeat_secs, 0, "not tuned yet");
    let tune_ok = tune(31, 65_536, 0);
    sim.feed(Side::Client, &tune_ok, 0.0).unwrap();
    let body = frame(FRAME_BODY, 1, &[7; 100]);
    sim.feed(Side::Client, &body, 0.1).unwrap();
    let up = sim.take(Side::Broker, 0.1);
    sim.feed(Side::Broker, &HEARTBEAT_FRAME, 0.5).unwrap();
    sim.feed(Side::Broker, &body, 0.6).unwrap();
    sim.take(Side::Client, 0.6);
    // Own timer: a heartbeat to the broker after 5/8 x interval of silence.
    sim.round(INTERVAL as f64, false, None).unwrap();
    sim.take(Side::Broker, INTERVAL as f64);

    let t = sim.s.traffic();
    assert_eq!((t.frames_to_broker, t.frames_to_client), (2, 1));
    assert_eq!(t.bytes_to_broker as usize, up.len() + HEARTBEAT_FRAME.len());
    assert_eq!(t.bytes_to_client as usize, body.len());
    assert_eq!((t.heartbeats_to_broker, t.heartbeats_from_broker), (1, 1));
    assert_eq!(t.last_broker_read, Some(secs(0.6)));
    assert_eq!((t.heartbeat_secs, t.frame_max), (INTERVAL as u32, 65_536));
    assert!(!t.paused);
}

#[test]
fn traffic_shows_the_broker_paused_by_back_pressure() {
    let mut sim = Sim::tuned(false, 0);
    let big = frame(FRAME_BODY, 1, &vec![0; 100_000]);
    for i in 0..3 {
        sim.feed(Side::Broker, &big, 0.1 * f64::from(i)).unwrap();
    }
    assert!(sim.s.traffic().paused, "the client took none of it");
    sim.take(Side::Client, 1.0);
    assert!(!sim.s.traffic().paused);
}
