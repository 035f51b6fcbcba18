//! `BrokerUrl::parse` on arbitrary text, and everything derived from a URL
//! it accepts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mod_amqp_heartbeat::broker_url::{BrokerUrl, percent_decode, redact};
use mod_amqp_heartbeat::config::published_url;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let redacted = redact(&text);
    let _ = percent_decode(&text);
    match BrokerUrl::parse(&text) {
        Ok(url) => {
            let _ = url.authority();
            let _ = url.vhost_decoded();
            let published = published_url("amqp", ([127, 0, 0, 1], 5672).into(), &url);
            assert!(published.starts_with("amqp://"));
            assert!(!url.host.is_empty());
        }
        Err(message) => {
            // Error messages are shown by `apachectl -t`: never the password.
            if let Some((_, rest)) = text.split_once("://") {
                if let Some((userinfo, _)) = rest.split('/').next().unwrap_or("").rsplit_once('@') {
                    if let Some((_, password)) = userinfo.split_once(':') {
                        if password.len() >= 4 && !redacted.contains(password) {
                            assert!(
                                !message.contains(&format!(":{password}@")),
                                "password in error: {message}"
                            );
                        }
                    }
                }
            }
        }
    }
});
