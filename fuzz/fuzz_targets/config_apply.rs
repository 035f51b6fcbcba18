//! `ServerConfig::apply` with arbitrary directives and arguments, then the
//! merge, the relay settings and the cross-server check on the results.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mod_amqp_heartbeat::config::{Directive, NamedServer, ServerConfig, check_env_conflicts};

fuzz_target!(|data: &[u8]| {
    // Lines of "D arg arg ...": D picks the directive, args are split on
    // spaces as httpd would. Two servers: lines go to the vhost after a
    // line starting with '|'.
    let text = String::from_utf8_lossy(data);
    let mut main = ServerConfig::default();
    let mut vhost = ServerConfig::default();
    let mut target_vhost = false;
    for line in text.split('\n') {
        if line.starts_with('|') {
            target_vhost = true;
            continue;
        }
        let mut parts = line.split(' ');
        let Some(d) = parts.next().and_then(|d| d.bytes().next()) else {
            continue;
        };
        let Some(directive) = Directive::from_index(u32::from(d % 7)) else {
            continue;
        };
        if directive == Directive::TlsCaCertificateFile {
            // Reads a file: only ever a path that does not exist.
            let mut c = ServerConfig::default();
            assert!(c.apply(directive, &["/nonexistent/fuzz-ca.pem"]).is_err());
            continue;
        }
        let args: Vec<&str> = parts.collect();
        let cfg = if target_vhost { &mut vhost } else { &mut main };
        let before = cfg.clone();
        match cfg.apply(directive, &args) {
            Ok(()) => {}
            Err(message) => {
                assert!(message.contains(directive.name()), "{message}");
                // A refused directive leaves the record as it was, except
                // for Env lists, which are checked name by name.
                if directive != Directive::Env {
                    assert_eq!(*cfg, before);
                }
            }
        }
    }
    let merged = ServerConfig::merge(&main, &vhost);
    let main_copy = main.clone();
    let _ = ServerConfig::merge(&main, &vhost);
    assert_eq!(main, main_copy);
    if let Some(s) = merged.relay_settings() {
        assert!(!s.brokers.is_empty());
        assert!(s.heartbeat.as_secs() >= 1 && s.heartbeat.as_secs() <= 3600);
        assert!(s.max_connections >= 1);
    }
    assert!(!merged.env_exports().is_empty());
    let servers = [
        NamedServer {
            description: "main".into(),
            config: &main,
        },
        NamedServer {
            description: "vhost".into(),
            config: &merged,
        },
    ];
    let _ = check_env_conflicts(&servers);
});
