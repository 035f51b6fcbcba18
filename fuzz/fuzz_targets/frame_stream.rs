//! A byte stream cut into arbitrary reads: a reader that buffers and scans
//! after every read must find exactly the frames (or the error) found by
//! scanning the whole stream at once, whatever the cuts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mod_amqp_heartbeat::relay::frame::{FrameInfo, Scan, scan};

const FRAME_MAX: usize = 4096;

#[derive(Debug, PartialEq)]
enum End {
    Clean,
    Incomplete,
    Invalid(String),
}

fn whole(stream: &[u8]) -> (Vec<FrameInfo>, End) {
    let mut frames = Vec::new();
    let mut at = 0;
    loop {
        if at == stream.len() {
            return (frames, End::Clean);
        }
        match scan(&stream[at..], FRAME_MAX) {
            Scan::Frame(f) => {
                at += f.len;
                frames.push(f);
            }
            Scan::Incomplete => return (frames, End::Incomplete),
            Scan::Invalid(e) => return (frames, End::Invalid(e.to_string())),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    // First byte: how many cut lengths follow; then the stream.
    let ncuts = usize::from(data[0] % 16);
    if data.len() < 1 + ncuts {
        return;
    }
    let cuts = &data[1..1 + ncuts];
    let stream = &data[1 + ncuts..];
    let expected = whole(stream);

    let mut buf: Vec<u8> = Vec::new();
    let mut frames = Vec::new();
    let mut fed = 0;
    let mut i = 0;
    let mut invalid = None;
    'feed: while fed < stream.len() {
        let step = if cuts.is_empty() {
            stream.len()
        } else {
            usize::from(cuts[i % cuts.len()]).max(1)
        };
        i += 1;
        let end = (fed + step).min(stream.len());
        buf.extend_from_slice(&stream[fed..end]);
        fed = end;
        loop {
            match scan(&buf, FRAME_MAX) {
                Scan::Frame(f) => {
                    frames.push(f);
                    buf.drain(..f.len);
                }
                Scan::Incomplete => break,
                Scan::Invalid(e) => {
                    invalid = Some(e.to_string());
                    break 'feed;
                }
            }
        }
    }
    let end = match invalid {
        Some(e) => End::Invalid(e),
        None if buf.is_empty() => End::Clean,
        None => End::Incomplete,
    };
    // An invalid header may be reported as soon as its bytes arrive, so
    // with cuts the error can come with the same frames before it.
    assert_eq!(frames, expected.0);
    assert_eq!(end, expected.1);
});
