//! `relay::frame::scan` over arbitrary bytes with an arbitrary frame_max,
//! plus the connection-method decoders on whatever payload it finds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mod_amqp_heartbeat::relay::frame::{Scan, scan};
use mod_amqp_heartbeat::relay::methods;

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let frame_max = usize::from(u16::from_be_bytes([data[0], data[1]])) * 32 + 8;
    let buf = &data[2..];
    match scan(buf, frame_max) {
        Scan::Incomplete => assert!(
            buf.len() < frame_max + 1 || buf.len() < 8 || {
                // Incomplete means the frame announced is longer than what is here.
                let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]) as usize;
                size + 8 > buf.len()
            }
        ),
        Scan::Frame(info) => {
            assert!(info.len >= 8 && info.len <= buf.len() && info.len <= frame_max);
            assert_eq!(buf[info.len - 1], 0xCE);
            let payload = info.payload(&buf[..info.len]);
            assert_eq!(payload.len(), info.len - 8);
            assert_eq!(info.payload_range().len(), payload.len());
            let _ = methods::connection_method(payload);
            let _ = methods::tune_fields(payload);
            let _ = methods::close_reason(payload);
            let mut copy = payload.to_vec();
            let _ = methods::set_tune_heartbeat(&mut copy, 7);
            // Scanning is a function of the bytes of the frame only.
            assert_eq!(scan(&buf[..info.len], frame_max), Scan::Frame(info));
        }
        Scan::Invalid(e) => {
            let _ = e.reply_code();
            let _ = e.to_string();
        }
    }
});
